"""The cluster status document: what `pdserve status` prints and GetClusterStatus / the HTTP API return.

    {"model", "ready", "mode": "disaggregated" | "colocated", "dtype", "health": {/health's detail},
     "pools": {"prefill" | "decode": {"desired_replicas", "actual_replicas", "workers": [
         {"id", "tier", "state" (starting | ready | draining | stopping | failed), "healthy", "error", "num_running", "num_waiting", "kv_usage", "num_free_blocks",
          "num_total_blocks", "itl_ms" (median gap between a request's tokens as the engine made them), "kv_endpoint", "kv_endpoints", "num_handoffs", "block_size",
          "kv_bytes_per_token", "max_model_len", "dtype"}]}},
     "transfers": {"recent_gb_per_s", "transfer_gb_per_s", "bytes_total", "num_completed", "num_recomputed",
                   "auth_failures"},
     "requests": {"in_flight", "queued", "total"},
     "controller": {"reachable", "controller_restarts"},
     "planner": {"enabled", "prefill_replicas", "decode_replicas", "last_reasons"}}

`recent_gb_per_s`: KV bytes received per wall-clock second over the last 30 s; `transfer_gb_per_s`:
bytes per second of transfer time (first to last frame), since start; `auth_failures`: KV frames and
aborts the decode workers refused for a missing or wrong MAC (`kv.auth`), since each worker started. Pure: built from the gateway's view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.gateway.service import Gateway, WorkerView

POOLS = ("prefill", "decode")


def worker_entry(view: WorkerView, transport: str) -> dict[str, Any]:
    engine = view.stats.engine if view.stats is not None else None
    endpoints = dict(view.info.kv_endpoints) if view.info is not None else {}
    return {
        "id": view.worker_id, "tier": view.tier, "state": view.state,
        "healthy": view.state in ("ready", "draining") and (view.stats is None or view.stats.healthy),
        "error": view.error,
        "num_running": engine.num_running if engine else 0, "num_waiting": engine.num_waiting if engine else 0,
        "kv_usage": round(engine.kv_usage, 4) if engine else 0.0,
        "num_free_blocks": engine.num_free_blocks if engine else 0,
        "num_total_blocks": engine.num_total_blocks if engine else 0,
        "itl_ms": engine.itl_ms if engine else 0.0,
        "num_handoffs": view.stats.num_handoffs if view.stats is not None else 0,
        "kv_endpoint": endpoints.get(transport, ""),  # where it receives KV over the configured transport
        "kv_endpoints": endpoints,
        # The engine's shape (what `pdserve profile --target` needs to describe the cluster as a profile).
        "block_size": view.info.block_size if view.info is not None else 0,
        "kv_bytes_per_token": view.info.kv_bytes_per_token if view.info is not None else 0,
        "max_model_len": view.info.max_model_len if view.info is not None else 0,
        "dtype": view.info.dtype if view.info is not None else "",
    }


def engine_dtype(views: list[WorkerView]) -> str:
    """The dtype the engines resolved (`model.dtype: auto` made concrete): one name, or several joined
    with "/" while workers of different dtypes serve; "" before any engine started."""
    return "/".join(sorted({v.info.dtype for v in views if v.info is not None and v.info.dtype}))


def status_document(gateway: Gateway, desired: dict[str, int], planner: dict[str, Any]) -> dict[str, Any]:
    views = gateway.views()
    health = gateway.health()
    pools = {}
    for pool in POOLS:
        members = [v for v in views if v.pool == pool]
        pools[pool] = {"desired_replicas": int(desired.get(pool, len(members))),
                       "actual_replicas": sum(1 for v in members if v.state == "ready"),
                       "workers": [worker_entry(v, gateway.config.kv.transport) for v in sorted(members, key=lambda v: v.worker_id)]}
    stats = [v.stats for v in views if v.stats is not None]
    received = sum(s.kv_received_bytes for s in stats)
    seconds = sum(s.kv_transfer_seconds for s in stats)
    return {
        "model": gateway.model_id,
        "ready": health.ready,
        "health": health.detail,
        "mode": "colocated" if gateway.config.pools.colocated else "disaggregated",
        "dtype": engine_dtype(views),
        "pools": pools,
        "transfers": {
            "recent_gb_per_s": round(gateway.recent_transfer_rate() / 1e9, 6),
            "transfer_gb_per_s": round(received / seconds / 1e9, 6) if seconds > 0 else 0.0,
            "bytes_total": received,
            "num_completed": sum(s.kv_transfers_completed for s in stats),
            "num_recomputed": sum(s.kv_transfers_recomputed for s in stats),
            "auth_failures": sum(s.kv_auth_failures for s in stats),
        },
        "requests": {"in_flight": gateway.num_in_flight, "queued": gateway.queue.depth, "total": gateway.num_requests},
        "controller": {"reachable": "controller" not in health.detail, "controller_restarts": gateway.controller_restarts},
        "planner": {"enabled": gateway.config.planner.enabled, **planner},
    }
