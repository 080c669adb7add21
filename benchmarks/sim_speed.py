"""Simulator speed: simulated requests per wall-clock second on one core.

Runs the one-hour Azure conv trace (19,366 requests) on 32-GPU clusters (disaggregated Llama-3.1-70B and
colocated Llama-3.1-8B), a Mooncake slice with prefix reuse, and the Azure trace again with the live
planner resizing the pools and with every token charged to an `orchestrator.budget` meter, each against
a baseline taken in the same run: the bare event loop pushing and popping as many no-op events as the
simulation processed.

    .venv/bin/python benchmarks/sim_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from orchestrator.errors import ConfigError
from simulations.config import SimConfig
from simulations.events import EventLoop
from simulations.run import simulate
from simulations.workloads import from_trace

CASES = (
    ("azure_conv 1h, llama-3.1-70b 4P(tp2)+6D(tp4) = 32 GPUs", "azure_conv", None,
     dict(model="llama-3.1-70b", num_prefill=4, num_decode=6, prefill_tp=2, decode_tp=4)),
    ("azure_conv 1h, llama-3.1-8b 32C(tp1) = 32 GPUs", "azure_conv", None,
     dict(model="llama-3.1-8b", mode="colocated", num_prefill=0, num_decode=32)),
    ("mooncake_conversation 3000 req, llama-3.1-70b 8P(tp2)+4D(tp4) = 32 GPUs", "mooncake_conversation", 3000,
     dict(model="llama-3.1-70b", num_prefill=8, num_decode=4, prefill_tp=2, decode_tp=4)),
    ("azure_conv 1h, llama-3.1-70b from 4P+6D, --autoscale (planner every 10 s)", "azure_conv", None,
     dict(model="llama-3.1-70b", num_prefill=4, num_decode=6, prefill_tp=2, decode_tp=4, autoscale=True,
          planner={"interval_s": 10.0, "prefill": {"max_replicas": 16}, "decode": {"max_replicas": 16}})),
    ("azure_conv 1h, llama-3.1-70b 4P(tp2)+6D(tp4), budgets on (every token metered)", "azure_conv", None,
     dict(model="llama-3.1-70b", num_prefill=4, num_decode=6, prefill_tp=2, decode_tp=4, budgets="on")),
)


def _noop_loop_s(num_events: int) -> float:
    loop = EventLoop()
    handler = lambda now, payload: None  # noqa: E731
    loop.schedule([(i * 1e-3, handler, None) for i in range(num_events)])
    start = time.perf_counter()
    loop.run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"{'case':<72} {'requests':>8} {'events':>8} {'wall s':>7} {'req/s':>8} {'x bare loop':>11}")
    for name, trace, limit, changes in CASES:
        try:
            workload = from_trace(trace, limit=limit)
        except ConfigError as exc:  # a missing shared trace skips its case, with the reason
            print(f"{name:<72} skipped: {exc}")
            continue
        config = SimConfig(**changes)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            summary, result = simulate(config, workload)
            best = min(best, time.perf_counter() - start)
        bare = _noop_loop_s(result.num_events)
        print(f"{name:<72} {len(workload):>8} {result.num_events:>8} {best:>7.2f} {len(workload) / best:>8.0f} "
              f"{best / bare:>11.1f}")


if __name__ == "__main__":
    main()
