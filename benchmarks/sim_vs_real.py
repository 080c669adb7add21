"""Simulated vs real: one workload on a real pdserve cluster (CPU, the default model, 1 prefill + 1 decode
vLLM-CPU worker) and in the simulator with that hardware's measured profile; TTFT and TPOT p50/p90 compared.

    .venv/bin/python benchmarks/sim_vs_real.py                    # the whole comparison, into out/sim_vs_real
    .venv/bin/python benchmarks/sim_vs_real.py --measure-profile  # profile this machine first
    .venv/bin/python benchmarks/sim_vs_real.py --replay           # re-simulate the saved reports
    .venv/bin/python benchmarks/sim_vs_real.py --serving-profile  # profile the running cluster itself

Steps:
1. wait until the machine is quiet (other processes under --max-foreign-cores over 10 s; it is shared);
2. with --measure-profile, `pdserve profile --cpu-cores 1` writes OUT/profile.yaml (else --profile, by
   default the shipped SmolLM2 CPU profile);
3. `pdserve up --grpc-port 0 --http-port 0 --ready-file OUT/ready.json`, waited for; with
   --serving-profile, `pdserve profile --target` then measures that cluster through its API into
   OUT/serving_profile.yaml (the whole serving path: the simulation uses it, and no request overhead
   on top, since the profile's times already include it), with its interference points: how much a
   decode step slows while the prefill engine computes, and a prefill while decode steps run (the two
   engines share this machine's two cores); a CPU sampler records the other processes' load meanwhile;
4. calibration phase: `pdserve bench` with a few requests far apart (OUT/calibration.json); the median
   of client TTFT minus the server's queue + prefill time is the request overhead (`request_overhead_ms`);
5. the workload: `pdserve bench` Poisson arrivals at --rate, fixed prompt and output lengths (OUT/bench.json);
6. `pdserve up` gets SIGINT and is waited for;
7. the simulator replays the requests at their actual send times, 1P+1D timed by the profile, with the
   calibration (`simulations.accuracy`) and, when the profile has interference points, the tiers on a
   shared host (`SimConfig.shared_host`; `--no-shared-host` turns it off; the same simulation without it
   is reported beside it); the table is printed and written to OUT/comparison.{json,md}.
The machine is shared: during steps 4-5 a sampler reads /proc every second, and the CPU that processes
outside this run used ("foreign" cores) is recorded; a second table compares only the requests that ran
while it stayed under --quiet-cores (chosen by that measure, never by their latency).
Exit code 0 when every metric is within its bound, 1 when not, 2 on a failed run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.config import load_config
from orchestrator.profiles import EXAMPLE_PROFILE
from simulations import accuracy
from simulations.profile import load_profile
from simulations.report import write_json
from simulations.run import simulate


def pdserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "pdserve.cli", *args]


def wait_for_quiet(max_cores: float, wait_s: float) -> float:
    """Wait (at most `wait_s`) until the machine's other processes use at most `max_cores` cores over
    10 s (measured from /proc/stat, nothing of this run running yet); returns the last measure."""
    deadline = time.monotonic() + wait_s
    while True:
        busy0, ours0, t0 = _machine_busy(), _tree_jiffies(os.getpid()), time.time()
        time.sleep(10)
        busy1, ours1, t1 = _machine_busy(), _tree_jiffies(os.getpid()), time.time()
        cores = max((busy1 - busy0) - (ours1 - ours0), 0.0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
        if cores <= max_cores or time.monotonic() > deadline:
            return cores
        print(f"other processes use {cores:.2f} cores > {max_cores}: waiting", file=sys.stderr, flush=True)


def run(command: list[str], what: str) -> None:
    print("$ " + " ".join(command[2:] if command[:2] == [sys.executable, "-m"] else command), flush=True)
    if subprocess.call(command, cwd=REPO) != 0:
        raise SystemExit(f"{what} failed")


class Cluster:
    """`pdserve up` as a subprocess: started with ports 0 and a ready file, stopped with SIGINT."""

    def __init__(self, out: Path, timeout_s: float) -> None:
        self.ready_file = out / "ready.json"
        self.ready_file.unlink(missing_ok=True)
        self.log = open(out / "up.log", "w")  # noqa: SIM115 (closed in stop)
        command = pdserve("up", "--grpc-port", "0", "--http-port", "0", "--ready-file", str(self.ready_file))
        print("$ pdserve " + " ".join(command[3:]), flush=True)
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"pdserve up did not become ready (see {out / 'up.log'})")
            time.sleep(1)
        time.sleep(0.5)  # the file is written in one go, but give the writer a moment
        self.endpoints = json.loads(self.ready_file.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(timeout=30)
        self.log.close()


class CpuSampler(threading.Thread):
    """Every second: (wall time, the machine's busy jiffies, this process tree's jiffies, of which the
    vLLM engine processes'), from /proc."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            ours, engines = _tree_jiffies(os.getpid(), split_engines=True)
            self.samples.append((time.time(), _machine_busy(), ours, engines))
            self._done.wait(1.0)

    def stop(self) -> list[tuple[float, float, float]]:
        self._done.set()
        self.join()
        return self.samples


def _machine_busy() -> float:
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]  # user nice system irq softirq steal


def _tree_jiffies(root: int, split_engines: bool = False):
    """CPU jiffies of `root` and its descendants (reaped children's included, through cutime/cstime);
    with `split_engines`, also those of the vLLM engine processes among them (titled `VLLM::...`)."""
    parents, jiffies, engines = {}, {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if split_engines and (entry / "cmdline").read_bytes().startswith(b"VLLM::"):
                engines.add(int(entry.name))
        except OSError:  # it exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
        jiffies[int(entry.name)] = sum(float(v) for v in fields[11:15])  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, engine_total, stack = 0.0, 0.0, [root]
    while stack:
        pid = stack.pop()
        total += jiffies.get(pid, 0.0)
        engine_total += jiffies.get(pid, 0.0) if pid in engines else 0.0
        stack.extend(children.get(pid, ()))
    return (total, engine_total) if split_engines else total


def bench(target: str, out: Path, *, num_requests: int, rate: float, prompt: int, output: int, seed: int) -> dict:
    run(pdserve("bench", "--target", target, "--num-requests", str(num_requests), "--rate", str(rate),
                "--prompt-tokens", str(prompt), "--output-tokens", str(output), "--seed", str(seed),
                "--out", str(out), "--quiet"), f"pdserve bench ({out.name})")
    return json.loads(out.read_text())


def measure_profile(profile_path: str, args_quiet: tuple[float, float]) -> list:
    """Step 2: `pdserve profile --cpu-cores 1`; returns the CPU samples taken meanwhile."""
    print(f"other processes use {wait_for_quiet(*args_quiet):.2f} cores", flush=True)
    sampler = CpuSampler()
    sampler.start()
    try:
        run(pdserve("profile", "--cpu-cores", "1", "--out", profile_path, "--no-progress"), "pdserve profile")
    finally:
        samples = sampler.stop()
    return samples


def serving_profile(target: str, profile_path: str) -> float | None:
    """Step 3's `pdserve profile --target`; returns the mean cores other processes used meanwhile."""
    sampler = CpuSampler()
    sampler.start()
    try:
        run(pdserve("profile", "--target", target, "--out", profile_path, "--no-progress"), "pdserve profile --target")
    finally:
        load = accuracy.foreign_cores(sampler.stop(), os.sysconf("SC_CLK_TCK"))
    return float(np.mean([cores for _, cores in load])) if load else None


def real_run(args: argparse.Namespace, out: Path, profile_path: str, profile_samples: list) -> dict:
    """Steps 3-6: the cluster, the calibration phase, the workload, the stop. Returns run metadata."""
    meta: dict = {"load_average_before": os.getloadavg()[0],
                  "foreign_cores_before": wait_for_quiet(args.max_foreign_cores, args.wait_s)}
    if profile_samples:
        load = accuracy.foreign_cores(profile_samples, os.sysconf("SC_CLK_TCK"))
        meta["profile_foreign_cores_mean"] = float(np.mean([cores for _, cores in load])) if load else None
    cluster = Cluster(out, args.start_timeout_s)
    sampler = CpuSampler()
    try:
        target = cluster.endpoints["grpc"]
        if args.serving_profile:
            meta["profile_foreign_cores_mean"] = serving_profile(target, profile_path)
        sampler.start()
        bench(target, out / "calibration.json", num_requests=args.calibration_requests, rate=args.calibration_rate,
              prompt=args.prompt_tokens, output=args.output_tokens, seed=args.seed + 1)
        bench(target, out / "bench.json", num_requests=args.num_requests, rate=args.rate,
              prompt=args.prompt_tokens, output=args.output_tokens, seed=args.seed)
        meta["cpu_samples"] = sampler.stop()
        status = subprocess.run(pdserve("status", "--target", target, "--json"), cwd=REPO, capture_output=True,
                                text=True, timeout=60, check=False)
        meta["status"] = json.loads(status.stdout) if status.returncode == 0 else None
    finally:
        if sampler.is_alive():
            sampler.stop()
        cluster.stop()
    meta["load_average_after"] = os.getloadavg()[0]
    meta["profile"] = profile_path
    meta["serving_profile"] = bool(args.serving_profile)
    write_json(out / "run.json", meta)
    return meta


def compare(args: argparse.Namespace, out: Path, profile_path: str) -> int:
    """Step 7: simulate the sent requests and compare."""
    report = json.loads((out / "bench.json").read_text())
    calibration_report = json.loads((out / "calibration.json").read_text())
    meta = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    profile = load_profile(profile_path)  # a bad file fails here, with every problem in it
    engine = load_config(None, {}).engine
    base = accuracy.Calibration(
        transfer_gb_s=args.transfer_gb_s, transfer_latency_ms=args.transfer_latency_ms,
        decode_kv_load_steps=args.decode_kv_load_steps,
        sources={"transfer_gb_s": "KV transfer on loopback, measured ~1 GB/s (ZeroMQ, this machine)",
                 "transfer_latency_ms": "assumed, not measured: the decode request's RPC on loopback "
                                        "(Ray actor call, AsyncLLM to EngineCore), about a millisecond",
                 "decode_kv_load_steps": "vLLM's connector loads received KV asynchronously "
                                         "(WAITING_FOR_REMOTE_KVS): the request is scheduled one step later"})
    calibration = accuracy.calibrate(calibration_report, base)
    if meta.get("serving_profile"):  # its prefill times are the client's TTFT: the overhead is in them
        calibration = dataclasses.replace(calibration, request_overhead_ms=0.0, sources={
            **calibration.sources, "request_overhead_ms": "0: the serving profile's prefill times are client TTFTs"})
    config = accuracy.sim_config(profile_path, calibration, max_num_seqs=engine.max_num_seqs,
                                 max_batched_tokens=engine.max_num_batched_tokens,
                                 shared_host=bool(profile.interference) and not args.no_shared_host)
    summary, result = simulate(config, accuracy.workload_from_bench(report))
    rows = accuracy.compare(accuracy.measured_metrics(report), accuracy.predicted_metrics(summary))
    table = accuracy.markdown_table(rows)
    rows_alone = None
    if config.shared_host:  # the same simulation with the tiers on hardware of their own, beside it
        summary_alone, _ = simulate(config.model_copy(update={"shared_host": False}), accuracy.workload_from_bench(report))
        rows_alone = accuracy.compare(accuracy.measured_metrics(report), accuracy.predicted_metrics(summary_alone))
    quiet_rows, quiet_note, foreign = None, "", {}
    if meta.get("cpu_samples"):
        load = accuracy.foreign_cores(meta["cpu_samples"], os.sysconf("SC_CLK_TCK"))
        start = datetime.fromisoformat(report["started_at"]).timestamp()
        foreign = accuracy.foreign_load_per_request(report, start, load)
        chosen = accuracy.quiet(foreign, args.quiet_cores)
        quiet_note = (f"Foreign load (cores used by processes outside this run) per request: median "
                      f"{np.median(list(foreign.values())):.2f}, max {max(foreign.values()):.2f}; "
                      f"{len(chosen)} of {len(foreign)} requests ran at <= {args.quiet_cores:g}")
        split = accuracy.cpu_split(meta["cpu_samples"], os.sysconf("SC_CLK_TCK"))
        if split:
            quiet_note += (f"; during the run the vLLM engine processes used {split['engines']:.2f} cores, the rest of "
                           f"the serving stack and the client {split['stack']:.2f}, other processes {split['foreign']:.2f}")
        if meta.get("profile_foreign_cores_mean") is not None:
            quiet_note += f"; while the profile was measured: {meta['profile_foreign_cores_mean']:.2f} on average"
        if len(chosen) >= 10:
            quiet_rows = accuracy.compare(accuracy.measured_metrics(report, chosen),
                                          accuracy.predicted_metrics_of(result.requests, chosen))
    command = "benchmarks/sim_vs_real.py " + " ".join(sys.argv[1:])
    document = {"command": command, "rows": rows, "all_within": accuracy.all_within(rows),
                "shared_host": config.shared_host, "rows_without_interference": rows_alone,
                "interference": [p.model_dump() for p in profile.interference],
                "quiet_rows": quiet_rows, "quiet_cores": args.quiet_cores, "foreign_note": quiet_note,
                "foreign_cores_per_request": foreign,
                "calibration": calibration.as_dict(), "profile": profile_path,
                "workload": {"num_requests": len(report["requests"]), "rate_per_s": args.rate,
                             "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                             "bench_failures": report["summary"].get("failures")},
                "real_usage": report["summary"].get("usage"), "run": meta,
                "simulated": {k: v for k, v in summary.items() if k != "timeline"}}
    write_json(out / "comparison.json", document)
    text = f"`{command}`\n\nAll {len(report['requests'])} requests{_interference_note(profile, config)}:\n\n{table}\n"
    if rows_alone:
        text += f"\nThe same simulation without the tiers' interference:\n\n{accuracy.markdown_table(rows_alone)}\n"
    if quiet_note:
        text += f"\n{quiet_note}.\n"
    if quiet_rows:
        text += ("\nOnly the requests that ran while the rest of the machine was quiet:\n\n"
                 f"{accuracy.markdown_table(quiet_rows)}\n")
    (out / "comparison.md").write_text(text)
    print(text)
    print(f"calibration: {json.dumps({k: v for k, v in calibration.as_dict().items() if k != 'sources'})}")
    print(f"wrote {out / 'comparison.json'}, {out / 'comparison.md'}")
    return 0 if accuracy.all_within(rows) else 1


def _interference_note(profile, config) -> str:
    """How the simulation modelled the two engines' shared host, for the table's heading."""
    if not config.shared_host:
        return ""
    factors = ", ".join(f"{p.prompt_tokens} tokens: decode x{p.decode_slowdown:.2f}, prefill x{p.prefill_slowdown:.2f}"
                        for p in profile.interference)
    return f", tiers on a shared host (measured interference: {factors})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/sim_vs_real", help="folder for every report (out/ is not tracked)")
    parser.add_argument("--profile", default=str(EXAMPLE_PROFILE), help="profile of this hardware (default: the shipped "
                                                                       "SmolLM2 CPU profile; --replay: the run's)")
    parser.add_argument("--measure-profile", action="store_true", help="measure one first: pdserve profile --cpu-cores 1")
    parser.add_argument("--serving-profile", action="store_true",
                        help="profile the running cluster through its API (pdserve profile --target) and simulate with that")
    parser.add_argument("--replay", action="store_true", help="no real run: re-simulate OUT/bench.json")
    parser.add_argument("--no-shared-host", action="store_true",
                        help="simulate the engines without the profile's measured interference (on by default when "
                             "the profile has interference points)")
    parser.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals per second (default 0.5)")
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-requests", type=int, default=8)
    parser.add_argument("--calibration-rate", type=float, default=0.2, help="far apart: no request queues")
    parser.add_argument("--transfer-gb-s", type=float, default=1.0)
    parser.add_argument("--transfer-latency-ms", type=float, default=1.0)
    parser.add_argument("--decode-kv-load-steps", type=int, default=1)
    parser.add_argument("--quiet-cores", type=float, default=0.25,
                        help="a request ran on a quiet machine when other processes used at most this many cores")
    parser.add_argument("--max-foreign-cores", type=float, default=0.3,
                        help="before profiling and before the cluster, wait until other processes use at most this")
    parser.add_argument("--wait-s", type=float, default=900.0, help="wait at most this long for a quiet machine")
    parser.add_argument("--start-timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.serving_profile and args.measure_profile:
        parser.error("--serving-profile and --measure-profile are two ways to get the profile: pick one")
    profile_path = (str(out / "serving_profile.yaml") if args.serving_profile
                    else str(out / "profile.yaml") if args.measure_profile else args.profile)
    if args.replay and (out / "run.json").exists() and not (args.measure_profile or args.serving_profile):
        profile_path = json.loads((out / "run.json").read_text()).get("profile") or profile_path  # the run's own
    if not args.replay:
        quiet = (args.max_foreign_cores, args.wait_s)
        samples = measure_profile(profile_path, quiet) if args.measure_profile else []
        real_run(args, out, profile_path, samples)
    return compare(args, out, profile_path)


if __name__ == "__main__":
    raise SystemExit(main())
