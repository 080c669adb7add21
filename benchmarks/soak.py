"""A bounded soak: a mixed workload at 80% of the measured capacity, for 30 minutes, in 1-minute windows.

    PDSERVE_HOME=.pdserve-test .venv/bin/python benchmarks/soak.py [--duration-s 1800] [--window-s 60]
        [--load 0.8] [--target HOST:PORT --pid PID] [--out benchmarks/results/soak]

Life of a soak:
1. `pdserve up` (the default model, 1 prefill + 1 decode vLLM-CPU worker, one core each: the README's
   main command; `--config FILE` passes a config on) is started, or `--target` names a running cluster's
   gRPC API (`--pid`: the root of its process tree, for RSS; without it RSS is not checked).
2. Capacity: a closed loop of `--capacity-concurrency` streams (8), each sending its next request of the
   mix as soon as its last one ended, for `--capacity-s` (60 s); capacity = requests completed in its
   last 3/4 / that time (the first quarter fills the pipeline). `--capacity-rps` skips the measurement.
3. The soak: open-loop Poisson arrivals at `--load` (0.8) x capacity, the mix of `soak_report.MIX`
   (96-token chat turns with 24 and 128 output tokens, 512- and 768-token prompts), windows of
   `--window-s`. Every window sends the same arrival offsets and lengths with prompts of its own, so
   windows differ by what the server does. Each window is one `pdserve bench` load run
   (`pdserve.bench.loadgen.run_load`) starting at the window's boundary whether or not the previous
   window's requests have ended: the load never pauses. A request counts in the window that sent it.
4. RSS of every process under `pdserve up` (psutil), every `--sample-s` and at each window's end,
   summed per group: pdserve up (gateway, API servers), controller, the prefill and decode workers' Ray
   actor processes, their vLLM engines (EngineCore and its worker), Ray's own processes.
5. The rules (`soak_report`: RSS growth < 5% after the `--warmup-windows` (1) warm-up windows, p99
   TTFT and TPOT drift < 10%, 0 failed), a table and the verdict on stdout; `soak.json` (every window,
   RSS sample and rule) and `soak.png` under `--out`. Exit code 0: every bound held; 1: one broke;
   2: bad flags or the cluster did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import psutil  # noqa: E402

import serving  # noqa: E402  (benchmarks/serving.py: how a benchmark starts and stops `pdserve up`)
import soak_report  # noqa: E402
from pdserve.bench.endpoints import ENDPOINTS, RequestFailed  # noqa: E402
from pdserve.bench.loadgen import run_load  # noqa: E402
from pdserve.bench.prompts import PromptBuilder  # noqa: E402
from pdserve.bench.workload import BenchRequest  # noqa: E402

EXIT_PASSED, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2
REQUEST_TIMEOUT_S = 120.0


class RssSampler:
    """RSS of a process tree, summed per `soak_report.process_group`; samples kept for the plot."""

    def __init__(self, root_pid: int | None, kv_ports: dict[int, str], start_s: float) -> None:
        self.root = psutil.Process(root_pid) if root_pid else None
        self.kv_ports, self.start_s = kv_ports, start_s
        self.samples: list[dict] = []
        self._tier_by_pid: dict[int, str] = {}

    def sample(self) -> dict[str, int]:
        """One sample of every live process in the tree (a process gone between listing and reading is
        skipped); {} without a tree. Called in a thread: psutil reads /proc."""
        if self.root is None:
            return {}
        processes = [self.root, *self.root.children(recursive=True)]
        self._find_tiers(processes)
        measured = []
        for process in processes:
            try:
                group = soak_report.process_group(process.pid, process.name(), self.root.pid,
                                                  self._tier_of(process))
                measured.append((group, process.memory_info().rss))
            except psutil.Error:
                continue
        rss = soak_report.rss_by_group(measured)
        self.samples.append({"t_s": round(time.perf_counter() - self.start_s, 3), "rss_bytes": rss})
        return rss

    def _find_tiers(self, processes: list[psutil.Process]) -> None:
        """A worker's tier: its vLLM process listens on the KV port the status gives the worker."""
        for process in processes:
            if process.pid in self._tier_by_pid:
                continue
            try:
                ports = {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
            tier = next((self.kv_ports[p] for p in ports if p in self.kv_ports), None)
            if tier:
                self._tier_by_pid[process.pid] = tier

    def _tier_of(self, process: psutil.Process) -> str | None:
        """The tier of the Ray actor process above a KV listener, for it and everything under it."""
        actor = next((p for p in [process, *process.parents()] if p.name().startswith("ray::Worker")), None)
        if actor is None:
            return None
        under = [actor, *actor.children(recursive=True)]
        return next((self._tier_by_pid[p.pid] for p in under if p.pid in self._tier_by_pid), None)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(interval_s)


async def measure_capacity(endpoint, builder: PromptBuilder, concurrency: int, duration_s: float,
                           seed: int) -> dict:
    """Step 2: closed loop; requests completed in the last 3/4 of `duration_s` per second of it."""
    lengths = iter(soak_report.mix_lengths(100_000, seed + 1))
    indices = iter(range(10**9, 2 * 10**9))
    start_s = time.perf_counter()
    counted_from_s = start_s + duration_s / 4
    outcomes = []

    async def stream() -> None:
        while time.perf_counter() < start_s + duration_s:
            prompt, output = next(lengths)
            request = BenchRequest(next(indices), 0.0, prompt, output)
            result = await run_load([request], endpoint, builder, timeout_s=REQUEST_TIMEOUT_S, progress=False)
            outcomes.extend(result.outcomes)

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    end_s = start_s + duration_s
    completed = [o for o in outcomes if o.ok and counted_from_s <= o.end_s <= end_s]
    return {"method": f"closed loop, {concurrency} streams, {duration_s:g} s, completions in the last 3/4 counted",
            "requests_per_s": round(len(completed) / (end_s - counted_from_s), 4),
            "num_sent": len(outcomes), "num_failed": sum(not o.ok for o in outcomes)}


async def soak(args: argparse.Namespace, target: str, root_pid: int | None) -> dict:
    """Steps 2-4; returns the JSON document (without the verdict)."""
    endpoint = ENDPOINTS["grpc"](target)
    try:
        info = await endpoint.probe(30.0)
        status = await endpoint.cluster_status(30.0)
        builder = PromptBuilder(args.seed)
        if args.capacity_rps:
            capacity = {"method": "given (--capacity-rps)", "requests_per_s": args.capacity_rps, "num_sent": 0,
                        "num_failed": 0}
        else:
            capacity = await measure_capacity(endpoint, builder, args.capacity_concurrency, args.capacity_s, args.seed)
        print(f"capacity: {capacity['requests_per_s']:.3f} req/s ({capacity['method']}); "
              f"soak at {args.load:g} x capacity", flush=True)
        rate = args.load * capacity["requests_per_s"]
        start_s = time.perf_counter()
        sampler = RssSampler(root_pid, _kv_ports(status), start_s)
        sample_task = asyncio.create_task(sampler.run(args.sample_s))
        try:
            rows = await asyncio.gather(*(_window(k, args, rate, endpoint, builder, sampler, start_s)
                                          for k in range(args.num_windows)))
        finally:
            sample_task.cancel()
    finally:
        await endpoint.close()
    return {"model": info.model, "target": target, "root_pid": root_pid, "capacity": capacity, "rate_per_s": round(rate, 4),
            "load": args.load, "window_s": args.window_s, "warmup_windows": args.warmup_windows,
            "mix": [vars(entry) for entry in soak_report.MIX], "windows": list(rows), "rss_samples": sampler.samples}


async def _window(k: int, args, rate: float, endpoint, builder, sampler: RssSampler, start_s: float) -> dict:
    """Window k: its load run from its boundary; RSS sampled at its end; its row printed when its
    requests have all ended."""
    window_start_s = start_s + k * args.window_s
    requests = soak_report.window_requests(k, rate, args.window_s, args.seed)
    load = asyncio.create_task(run_load(requests, endpoint, builder, timeout_s=REQUEST_TIMEOUT_S,
                                        progress=False, start_s=window_start_s))
    await asyncio.sleep(max(0.0, window_start_s + args.window_s - time.perf_counter()))
    try:  # a worker replaced since the start listens on new KV ports
        sampler.kv_ports.update(_kv_ports(await endpoint.cluster_status(10.0)))
    except RequestFailed as exc:
        print(f"window {k}: cluster status unavailable ({exc}); workers keep the tiers seen before", flush=True)
    rss = await asyncio.to_thread(sampler.sample)
    result = await load
    row = soak_report.window_row(k, result.outcomes, rss, len(requests) / args.window_s, k < args.warmup_windows)
    print(f"window {k}: {row['num_sent']} sent, {row['num_failed']} failed {row['failures'] or ''}, TTFT p50/p99 "
          f"{row['ttft_ms']['p50']}/{row['ttft_ms']['p99']} ms, TPOT p50/p99 {row['tpot_ms']['p50']}/"
          f"{row['tpot_ms']['p99']} ms, RSS {rss.get('total', 0) / 2**30:.3f} GiB", flush=True)
    return row


def _kv_ports(status: dict) -> dict[int, str]:
    """KV listening port -> tier, from the status document's workers."""
    ports = {}
    for tier, pool in (status.get("pools") or {}).items():
        for worker in pool.get("workers", []):
            for url in (worker.get("kv_endpoints") or {}).values():
                port = url.rsplit(":", 1)[-1]
                if port.isdigit():
                    ports[int(port)] = tier
    return ports


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=1800.0, help="soak length (default: 1800 = 30 min)")
    parser.add_argument("--window-s", type=float, default=60.0, help="window length (default: 60)")
    parser.add_argument("--warmup-windows", type=int, default=1, help="windows before the rules apply (default: 1)")
    parser.add_argument("--load", type=float, default=0.8, help="offered rate as a fraction of capacity (default: 0.8)")
    parser.add_argument("--capacity-rps", type=float, help="skip the capacity measurement: capacity in req/s")
    parser.add_argument("--capacity-concurrency", type=int, default=8, help="closed-loop streams (default: 8)")
    parser.add_argument("--capacity-s", type=float, default=60.0, help="closed-loop length (default: 60)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval (default: 5)")
    parser.add_argument("--target", help="gRPC HOST:PORT of a running cluster (default: start `pdserve up`)")
    parser.add_argument("--pid", type=int, help="with --target: root process of the cluster (RSS of its tree)")
    parser.add_argument("--config", help="YAML config for the `pdserve up` started here")
    parser.add_argument("--max-rss-growth", type=float, default=soak_report.MAX_RSS_GROWTH)
    parser.add_argument("--max-p99-drift", type=float, default=soak_report.MAX_P99_DRIFT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak")
    args = parser.parse_args(argv)
    args.num_windows = math.ceil(args.duration_s / args.window_s - 1e-9)
    if args.num_windows - args.warmup_windows < 2 or args.warmup_windows < 1:
        parser.error("--duration-s must give at least --warmup-windows (>= 1) + 2 windows of --window-s")
    if not 0 < args.load <= 2 or (args.capacity_rps is not None and args.capacity_rps <= 0):
        parser.error("--load must be in (0, 2] and --capacity-rps > 0")
    if args.pid and not args.target:
        parser.error("--pid goes with --target (without --target the soak measures the `pdserve up` it starts)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    process = None
    if args.target:
        target, root_pid = args.target, args.pid
    else:
        try:
            process, target, _ = serving._start_pdserve(["--config", args.config] if args.config else [], args.out)
        except RuntimeError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return EXIT_USAGE
        root_pid = process.pid
    try:
        document = asyncio.run(soak(args, target, root_pid))
    finally:
        if process is not None:
            serving._stop(process)
    verdict = soak_report.compute_verdict(document["windows"], document["capacity"]["num_failed"],
                                          max_rss_growth=args.max_rss_growth, max_p99_drift=args.max_p99_drift,
                                          rss_measured=root_pid is not None)
    document = {"command": " ".join(sys.argv), **document, "verdict": verdict}
    (args.out / "soak.json").write_text(json.dumps(document, indent=1))
    soak_report.plot(args.out / "soak.png", document["rss_samples"], document["windows"], args.window_s)
    print(soak_report.format_table(document["windows"], verdict))
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return EXIT_PASSED if verdict["passed"] else EXIT_BROKEN


if __name__ == "__main__":
    raise SystemExit(main())
