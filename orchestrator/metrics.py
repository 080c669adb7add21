"""Prometheus metrics of the serving path (prometheus_client default registry; `/metrics` serves it).

Requests and latency (the gateway observes them; `tier` is `prefill` | `decode`):
- `pdserve_requests_total{tier}`: requests dispatched to a tier (a disaggregated request counts once
  on each; a skipped prefill or a colocated request only on decode).
- `pdserve_requests_finished_total{reason}`: requests ended, by finish reason.
- `pdserve_ttft_seconds{tier}`: admission to first token; `tier` is the tier that produced it.
- `pdserve_inter_token_seconds{tier}`: time between two streamed tokens.
- `pdserve_queue_seconds`: admission to dispatch; `pdserve_prefill_seconds{tier}`: prefill call.
- `pdserve_queue_depth`: requests waiting for a worker; `pdserve_in_flight_requests`: running.
KV transfer (observed at the receiver, reported with each request's first decode output):
- `pdserve_kv_transfer_bytes_total`, `pdserve_kv_transfer_seconds` (first to last frame).
- `pdserve_kv_recompute_total{cause}`: transfers that failed (checksum, timeout, aborted, prefill
  worker lost) and were recomputed by the decode worker.
- `pdserve_kv_auth_failures_total`: KV frames and aborts the decode workers refused for a missing or
  wrong MAC (`kv.auth`; from the workers' stats, at most 0.2 s old).
Resilience: `pdserve_migrations_total`: requests moved to another decode worker mid-stream;
`pdserve_workers{tier,state}`: workers per pool and state (`starting`, `ready`, `draining`, `stopping`, `failed`:
failed in the last 5 minutes) as of the gateway's last snapshot (at most 0.2 s old);
`pdserve_worker_failures_total{tier}`: workers declared failed (actor or engine dead, engine wedged,
health checks unanswered); `pdserve_degraded_requests_total`: requests a prefill worker served alone
because no decode worker was ready; `pdserve_controller_restarts_total`: times the controller actor
died and a restarted one took over (`orchestrator.recovery`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TRANSFER_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

requests_total = Counter("pdserve_requests_total", "Requests dispatched to a tier.", ["tier"])
prefill_placement_total = Counter(
    "pdserve_prefill_placement_total",
    "Where requests' prompts were routed to be prefilled: prefill_pool, decode_worker (conditional disaggregation, "
    "or the decode worker held the prefix, or no prefill worker was ready) or colocated.", ["where"])
requests_finished_total = Counter("pdserve_requests_finished_total", "Requests ended, by finish reason.", ["reason"])
ttft_seconds = Histogram("pdserve_ttft_seconds", "Time from admission to the first token.", ["tier"],
                         buckets=LATENCY_BUCKETS_S)
inter_token_seconds = Histogram("pdserve_inter_token_seconds", "Time between two streamed tokens.", ["tier"],
                                buckets=LATENCY_BUCKETS_S)
queue_seconds = Histogram("pdserve_queue_seconds", "Time from admission to dispatch.", buckets=LATENCY_BUCKETS_S)
prefill_seconds = Histogram("pdserve_prefill_seconds", "Duration of the prefill call.", ["tier"],
                            buckets=LATENCY_BUCKETS_S)
queue_depth = Gauge("pdserve_queue_depth", "Requests waiting at the gateway for a worker slot.")
in_flight_requests = Gauge("pdserve_in_flight_requests", "Requests running on the workers.")
kv_transfer_bytes_total = Counter("pdserve_kv_transfer_bytes_total", "KV bytes received by decode workers.")
kv_transfer_seconds = Histogram("pdserve_kv_transfer_seconds", "KV transfer time, first to last frame.",
                                buckets=TRANSFER_BUCKETS_S)
kv_recompute_total = Counter("pdserve_kv_recompute_total",
                             "KV transfers that failed and were recomputed on the decode worker.", ["cause"])
kv_auth_failures_total = Counter("pdserve_kv_auth_failures_total",
                                 "KV frames and aborts refused for a missing or wrong MAC (kv.auth).")
migrations_total = Counter("pdserve_migrations_total", "Requests moved to another decode worker mid-stream.")
workers = Gauge("pdserve_workers", "Workers per pool and state (failed: in the last 5 minutes).", ["tier", "state"])
controller_restarts_total = Counter("pdserve_controller_restarts_total",
                                    "Times the controller died and a restarted controller took over its workers.")
worker_failures_total = Counter("pdserve_worker_failures_total", "Workers declared failed, per pool.", ["tier"])
degraded_requests_total = Counter("pdserve_degraded_requests_total",
                                  "Requests a prefill worker served alone because no decode worker was ready.")
WORKER_STATES = ("starting", "ready", "draining", "stopping", "failed")


def recompute_cause(failure: str) -> str:
    """A short label for a transfer failure message (`checksum mismatch ...` -> `checksum`)."""
    for cause in ("checksum", "timeout", "aborted", "cancelled"):
        if failure.startswith(cause):
            return cause
    return failure.split(":", 1)[0].strip() or "unknown"
