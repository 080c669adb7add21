"""Replicas over time during a ramp: poll the cluster status, write a CSV table and a PNG plot.

Life of a poll loop: every `interval_s` from the run's start, 1. ask the endpoint for the cluster status
document (gRPC `GetClusterStatus`), 2. read each pool's desired and actual replicas, 3. append a row with
the ramp's offered rate at that instant. A failed poll is a row with its error, never the end of the run.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pdserve.bench.endpoints import BaseEndpoint, RequestFailed
from pdserve.bench.outcome import Outcome
from pdserve.bench.ramp import RampSchedule

DESIRED_KEYS = ("desired_replicas", "desired", "num_desired", "target_replicas")
ACTUAL_KEYS = ("actual_replicas", "replicas", "actual", "num_replicas", "num_workers", "ready_replicas")


def replicas_by_tier(status: dict[str, Any]) -> dict[str, dict[str, int | None]]:
    """{tier: {"desired": n, "actual": m}} from a status document's `pools` (a dict by tier or a list)."""
    pools = status.get("pools") or {}
    if isinstance(pools, list):
        pools = {str(p.get("tier") or p.get("name") or i): p for i, p in enumerate(pools) if isinstance(p, dict)}
    result = {}
    for tier, pool in pools.items():
        if not isinstance(pool, dict):
            continue
        actual = _first(pool, ACTUAL_KEYS)
        if actual is None and isinstance(pool.get("workers"), list):
            actual = len(pool["workers"])
        result[str(tier)] = {"desired": _first(pool, DESIRED_KEYS), "actual": actual}
    return result


def _first(pool: dict[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        if isinstance(pool.get(key), (int, float)) and not isinstance(pool.get(key), bool):
            return int(pool[key])
    return None


class ReplicaPoller:
    """Polls `endpoint.cluster_status` every `interval_s` into `rows` until cancelled."""

    def __init__(self, endpoint: BaseEndpoint, schedule: RampSchedule, start_s: float,
                 interval_s: float = 1.0) -> None:
        self.endpoint, self.schedule, self.start_s, self.interval_s = endpoint, schedule, start_s, interval_s
        self.rows: list[dict[str, Any]] = []

    async def run(self) -> None:
        """The poll loop (run as a task; cancel it to stop)."""
        tick = 0
        while True:
            await self.poll_once()
            tick += 1
            delay_s = self.start_s + tick * self.interval_s - time.perf_counter()
            await asyncio.sleep(max(delay_s, 0.0))

    async def poll_once(self) -> dict[str, Any]:
        t_s = time.perf_counter() - self.start_s
        row: dict[str, Any] = {"t_s": round(t_s, 3), "phase": self.schedule.phase_at(t_s),
                               "offered_rate_per_s": round(self.schedule.rate_at(t_s), 4), "error": ""}
        try:
            status = await self.endpoint.cluster_status(timeout_s=max(self.interval_s, 1.0))
            row["tiers"] = replicas_by_tier(status)
        except RequestFailed as exc:
            row["tiers"], row["error"] = {}, f"{exc.reason}: {exc.message}"
        self.rows.append(row)
        return row


def flatten_rows(rows: Sequence[dict[str, Any]], outcomes: Sequence[Outcome], start_s: float,
                 interval_s: float = 1.0) -> list[dict[str, Any]]:
    """Table rows: time, phase, offered rate, sent rate (requests sent in the `interval_s` window centred
    on the row's time), desired/actual replicas per tier, poll error."""
    tiers = sorted({tier for row in rows for tier in row["tiers"]})
    sent_s = sorted(o.start_s - start_s for o in outcomes if o.start_s)
    table = []
    for row in rows:
        flat = {k: row[k] for k in ("t_s", "phase", "offered_rate_per_s")}
        low_s, high_s = row["t_s"] - interval_s / 2, row["t_s"] + interval_s / 2
        flat["sent_rate_per_s"] = round(sum(low_s <= s < high_s for s in sent_s) / interval_s, 4)
        for tier in tiers:
            counts = row["tiers"].get(tier, {})
            flat[f"{tier}_desired"] = counts.get("desired")
            flat[f"{tier}_actual"] = counts.get("actual")
        flat["error"] = row["error"]
        table.append(flat)
    return table


def write_csv(table: Sequence[dict[str, Any]], path: Path) -> None:
    """The replicas-over-time table as CSV (empty cells where a value was not reported)."""
    fields = list(table[0]) if table else ["t_s", "phase", "offered_rate_per_s", "sent_rate_per_s", "error"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


def write_plot(table: Sequence[dict[str, Any]], path: Path, title: str = "pdserve bench --ramp") -> None:
    """PNG: replicas per tier (actual solid, desired dashed) and offered/sent rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [row["t_s"] for row in table]
    tiers = sorted({key.rsplit("_", 1)[0] for row in table for key in row if key.endswith("_actual")})
    fig, replicas_ax = plt.subplots(figsize=(9, 4.5))
    for i, tier in enumerate(tiers):
        color = f"C{i}"
        replicas_ax.step(times, [_nan(row.get(f"{tier}_actual")) for row in table], where="post", color=color,
                         label=f"{tier} actual")
        replicas_ax.step(times, [_nan(row.get(f"{tier}_desired")) for row in table], where="post", color=color,
                         linestyle="--", label=f"{tier} desired")
    replicas_ax.set_xlabel("time (s)")
    replicas_ax.set_ylabel("replicas")
    rate_ax = replicas_ax.twinx()
    rate_ax.step(times, [row["offered_rate_per_s"] for row in table], where="post", color="gray", alpha=0.6,
                 label="offered rate")
    rate_ax.plot(times, [row["sent_rate_per_s"] for row in table], color="gray", alpha=0.35, linestyle=":",
                 label="sent rate")
    rate_ax.set_ylabel("requests/s")
    handles = replicas_ax.get_legend_handles_labels()[0] + rate_ax.get_legend_handles_labels()[0]
    replicas_ax.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize="small")
    replicas_ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nan(value: int | None) -> float:
    return float("nan") if value is None else float(value)
