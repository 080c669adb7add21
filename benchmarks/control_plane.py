"""What the control plane adds per request: the whole serving path with engines that take (almost) no time.

    .venv/bin/python benchmarks/control_plane.py [--requests 300] [--concurrency 32] [--out benchmarks/results/control_plane]

`pdserve up --engine timing` with a profile whose steps take 0.01 ms (a prefill of 32 tokens: 0.01 ms;
a decode step: 0.01 ms), so every millisecond a request takes is the control plane's: the gRPC API,
admission and the budget meter, the router, the Ray calls to the prefill and decode workers, the KV
handoff (real bytes over ZeroMQ, layer by layer), the worker actors' streaming, detokenizing. For the
default 1 prefill + 1 decode cluster and for a colocated one (no prefill call, no KV handoff):
1. Added latency: `--requests` requests one at a time (32-token prompts, 1 and 16 output tokens,
   `ignore_eos`), end-to-end on the client. The engines' predicted time is printed beside it (≈ 0).
2. Requests/s per gateway core: a closed loop of `--concurrency` clients for `--duration-s` (16-token
   outputs); requests/s, and requests per CPU second of the gateway process (`pdserve up`: the APIs,
   gateway, router, budget meter; psutil, user + system) and of the whole tree.
The client runs in this process, on the same cores: at saturation it competes with the server, which
is why the per-core number divides by the gateway's own CPU time rather than by wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import serving  # noqa: E402  (how a benchmark starts and stops `pdserve up`)
from orchestrator.profiles import DecodeCoefficients, EngineProfile, HardwareInfo, PrefillCoefficients  # noqa: E402

STEP_MS = 0.01
PROMPT_TOKENS = 32


def write_profile(path: Path) -> EngineProfile:
    """A profile of an engine that takes `STEP_MS` per step, whatever it computes."""
    profile = EngineProfile.from_coefficients(
        model="smollm2-135m-instruct", hardware=HardwareInfo(name="zero", kind="cpu", description="control-plane benchmark"),
        block_size=32, kv_bytes_per_token=23040, kv_capacity_tokens=46603,
        prefill=PrefillCoefficients(a_ms=STEP_MS, b_ms_per_token=0.0, c_ms_per_token_sq=0.0),
        decode=DecodeCoefficients(a_ms=STEP_MS, b_ms_per_context_token=0.0, c_ms_per_request=0.0), num_layers=30)
    profile.save(path)
    return profile


async def _one(stub, pb, prompt: list[int], max_tokens: int) -> float:
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt),
                                 sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    started = time.perf_counter()
    tokens = 0
    async for reply in stub.Generate(request):
        if reply.error:
            raise RuntimeError(reply.error)
        tokens += len(reply.token_ids)
    if tokens != max_tokens:
        raise RuntimeError(f"{tokens} tokens came back, {max_tokens} asked")
    return (time.perf_counter() - started) * 1e3


async def measure(target: str, server_pid: int, requests: int, concurrency: int, duration_s: float) -> dict:
    import grpc

    from orchestrator.api.pb import inference_pb2 as pb, inference_pb2_grpc

    rng = np.random.default_rng(7)
    prompts = [rng.integers(256, 8192, PROMPT_TOKENS).tolist() for _ in range(requests + 50)]  # no prefix reuse
    result: dict = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for _ in range(20):  # warm-up: connections, Ray's worker leases, the tokenizer
            await _one(stub, pb, prompts.pop(), 1)
        for max_tokens in (1, 16):
            latencies = [await _one(stub, pb, prompts[i], max_tokens) for i in range(requests // 2)]
            prompts = prompts[requests // 2:]
            result[f"e2e_ms_{max_tokens}_tokens"] = {q: round(float(np.percentile(latencies, q)), 2) for q in (50, 90, 99)}
        server = psutil.Process(server_pid)
        tree = [server, *server.children(recursive=True)]

        def cpu(procs) -> float:
            total = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            return total

        counter = {"done": 0}
        stop_at = time.perf_counter() + duration_s
        seeds = iter(range(10**6))

        async def client() -> None:
            local = np.random.default_rng(next(seeds))
            while time.perf_counter() < stop_at:
                await _one(stub, pb, local.integers(256, 8192, PROMPT_TOKENS).tolist(), 16)
                counter["done"] += 1

        gateway_cpu, tree_cpu, started = cpu([server]), cpu(tree), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        gateway_cpu, tree_cpu = cpu([server]) - gateway_cpu, cpu(tree) - tree_cpu
        done = counter["done"]
        result["closed_loop"] = {"concurrency": concurrency, "requests": done, "wall_s": round(wall, 1),
                                 "requests_per_s": round(done / wall, 1),
                                 "gateway_cpu_s": round(gateway_cpu, 1),
                                 "requests_per_gateway_cpu_s": round(done / gateway_cpu, 1) if gateway_cpu else None,
                                 "tree_cpu_s": round(tree_cpu, 1),
                                 "requests_per_tree_cpu_s": round(done / tree_cpu, 1) if tree_cpu else None}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests (half 1-token, half 16-token)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "control_plane")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    profile_path = args.out / "zero-profile.yaml"
    write_profile(profile_path)
    timing = ["--engine", "timing", "--profile", str(profile_path)]
    summary = {}
    for name, extra in (("1P+1D", []), ("colocated", ["--colocated"])):
        workdir = args.out / name.replace("+", "")
        workdir.mkdir(exist_ok=True)
        process, target, _ = serving._start_pdserve([*timing, *extra], workdir)
        try:
            summary[name] = asyncio.run(measure(target, process.pid, args.requests, args.concurrency, args.duration_s))
        finally:
            serving._stop(process)
        print(name, json.dumps(summary[name]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
