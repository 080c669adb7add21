"""Fan a capacity search out over Ray: one task per configuration, the workload shared once.

Joins the Ray cluster that is already initialised (or `RAY_ADDRESS`); otherwise starts a local one with
`num_cpus=workers` and shuts it down afterwards. Results come back in the order of the configs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from simulations.config import SimConfig
from simulations.request import SimRequest


def _summary_task(config_json: dict[str, Any], workload: Sequence[SimRequest]) -> dict[str, Any]:
    from simulations.search import _safe_summary
    return _safe_summary(SimConfig.model_validate(config_json), workload)


def evaluate_on_ray(configs: Sequence[SimConfig], workload: Sequence[SimRequest], workers: int,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Summaries of `configs`, computed as Ray tasks (one CPU each)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            from orchestrator.cluster import start_embedded_ray

            start_embedded_ray(workers)  # listens on 127.0.0.1 only
    try:
        task = ray.remote(num_cpus=1)(_summary_task)
        workload_ref = ray.put(list(workload))
        pending = {task.remote(c.model_dump(mode="json"), workload_ref): i for i, c in enumerate(configs)}
        results: list[dict[str, Any] | None] = [None] * len(configs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                if progress:
                    progress(1)
        return results  # type: ignore[return-value]
    finally:
        if started_here:
            ray.shutdown()
