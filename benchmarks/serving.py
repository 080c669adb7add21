"""Disaggregated vs colocated at equal worker counts, and vLLM's own server, on the same workloads.

    .venv/bin/python benchmarks/serving.py [--requests 120] [--out benchmarks/results/serving]

For each workload, one after the other on this machine (nothing else should run meanwhile):
1. `pdserve up` (1 prefill + 1 decode vLLM-CPU worker, one core each, KV over ZeroMQ);
2. `pdserve up --colocated --decode 2` (two ordinary vLLM workers, one core each: the same two workers);
   and `pdserve up` with `kv.zmq_receiver: libzmq` (the decode worker receives KV with libzmq's PULL
   socket and copies it into the cache, instead of pdserve's direct receiver);
3. vLLM's own OpenAI server, one engine on both cores (`python -m vllm.entrypoints.openai.api_server`, float32 like pdserve's CPU default):
   what a user would run instead of pdserve on this machine;
4. `pdserve up --colocated --decode 1` (one engine on one core: issue 21's colocated baseline), and `pdserve
   up` with `router.conditional_prefill: true` (conditional disaggregation);
each driven by `pdserve bench` (open-loop Poisson arrivals, exact token-id prompts, `ignore_eos` outputs)
with the same seed, so every system gets the same requests at the same times; the `streams-*` workload
instead runs `streams.py` (closed-loop chat streams over the OpenAI API, prompts as text). Writes each
report, `summary.json` and `summary.md` (TTFT and TPOT p50/p90/p99, ITL p50/p99 as the gaps between
messages as they arrived, the longest gap, throughput, failures) under `--out`. The default model; the
bench prompts are random token ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PDSERVE = [str(Path(PYTHON).with_name("pdserve"))]
WORKLOADS = {
    # (prompt tokens, output tokens, requests/s): ENVIRONMENT.md's baseline workload, and a prompt-heavy one.
    "chat-96x24": (96, 24, 4.0),
    "long-prompt-768x32": (768, 32, 1.0),
}
# Closed-loop chat streams through the OpenAI API (`streams.py`): issue 21's smoothness workload.
STREAM_WORKLOADS = {"streams-4x230x64": dict(streams=4, stagger_ms=150.0, rounds=8, prompt_words=170, output_tokens=64)}
START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_pdserve(extra: list[str], workdir: Path) -> tuple[subprocess.Popen, str, list[str]]:
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen([*PDSERVE, "up", "--grpc-port", "0", "--http-port", "0", "--ready-file", str(ready), *extra],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pdserve up {' '.join(extra)} did not start; see {workdir / 'server.log'}")
        time.sleep(1)
    endpoints = json.loads(ready.read_text())
    return process, endpoints["grpc"], ["--endpoint", "grpc"]


def _libzmq_config(workdir: Path) -> Path:
    path = workdir / "config.yaml"
    path.write_text("kv:\n  zmq_receiver: libzmq\n")
    return path


def _conditional_config(workdir: Path) -> Path:
    path = workdir / "config.yaml"
    path.write_text("router:\n  conditional_prefill: true\n")
    return path


def _start_vllm(model_dir: str, workdir: Path) -> tuple[subprocess.Popen, str, list[str]]:
    port = _free_port()
    log = open(workdir / "server.log", "w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen(
        [PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name",
         "smollm2-135m-instruct", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len",
         "2048", "--block-size", "32", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM's server did not start; see {workdir / 'server.log'}") from None
            time.sleep(1)
    time.sleep(5)  # the port opens a little before the model is loaded
    return process, f"127.0.0.1:{port}", ["--endpoint", "http"]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _bench(target: str, endpoint: list[str], workload: tuple[int, int, float], requests: int, out: Path) -> dict:
    prompt, output, rate = workload
    command = [*PDSERVE, "bench", "--target", target, *endpoint, "--num-requests", str(requests), "--rate", str(rate),
               "--prompt-tokens", str(prompt), "--output-tokens", str(output), "--seed", "7", "--out", str(out),
               "--quiet", "--allow-failures"]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def _row(report: dict) -> dict:
    """The numbers the summary compares, from a bench report's `summary` (fields: docs/bench.md). ITL here
    is the gap between messages as they arrived (`gap_ms`): bursts show, where `itl_ms` evens them out."""
    summary = report["summary"]
    row = {f"{metric}_{q}": (summary.get(metric) or {}).get(q) for metric in ("ttft_ms", "tpot_ms")
           for q in ("p50", "p90", "p99")}
    row.update(itl_ms_p50=summary["gap_ms"]["p50"], itl_ms_p99=summary["gap_ms"]["p99"],
               longest_gap_ms=summary["longest_gap_ms"]["max"], requests_per_s=summary["throughput"]["requests_per_s"],
               output_tokens_per_s=summary["throughput"]["output_tokens_per_s"], failed=summary["num_failed"])
    return row


def _http_url(target: str, workdir: Path) -> str:
    """The OpenAI API's base URL of a started system: pdserve's from its ready file, vLLM's is its target."""
    ready = workdir / "ready.json"
    return json.loads(ready.read_text())["http"] if ready.exists() else f"http://{target}"


def _streams(url: str, workload: dict, out: Path, grpc_target: str | None) -> dict:
    """The streams workload; for pdserve, also its decode engines' own inter-token gap (`itl_ms` in the
    status: the decode step as the engine timed it), what the clients' ITL p50 is measured against."""
    import streams

    result = asyncio.run(streams.run(url, **workload))
    summary = streams.summarize(result)
    summary["engine_itl_ms"] = None
    if grpc_target:
        from pdserve.client import Client

        with Client(grpc_target) as client:
            pools = client.status(timeout_s=10)["pools"]
        gaps = [w["itl_ms"] for tier in ("decode", "colocated") for w in pools.get(tier, {}).get("workers", [])
                if w.get("itl_ms")]
        summary["engine_itl_ms"] = round(sum(gaps) / len(gaps), 2) if gaps else None
    out.write_text(streams.report(result, summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="requests per workload and system")
    parser.add_argument("--workloads", default=",".join([*WORKLOADS, *STREAM_WORKLOADS]),
                        help="which workloads (comma-separated)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving")
    parser.add_argument("--systems", help="only the systems named (exactly, or else containing) one of these (comma-separated), in that order")
    args = parser.parse_args(argv)
    from workers.modelstore import DEFAULT_NAME, resolve

    model_dir = str(resolve(DEFAULT_NAME, pull_missing=True))
    systems = {
        "pdserve 1P+1D": lambda d: _start_pdserve([], d),
        "pdserve colocated x2": lambda d: _start_pdserve(["--colocated", "--decode", "2"], d),
        "pdserve colocated x1 (1 engine, 1 core)": lambda d: _start_pdserve(["--colocated", "--decode", "1"], d),
        "pdserve 1P+1D, libzmq KV receiver": lambda d: _start_pdserve(["--config", str(_libzmq_config(d))], d),
        "pdserve 1P+1D, conditional prefill": lambda d: _start_pdserve(["--config", str(_conditional_config(d))], d),
        "vLLM server (1 engine, 2 cores)": lambda d: _start_vllm(model_dir, d),
    }
    if args.systems:
        chosen: dict = {}  # in the order asked for, so that a run can measure the same systems the other way round
        for wanted in args.systems.split(","):
            matched = ({name: start for name, start in systems.items() if name == wanted}  # exact first
                       or {name: start for name, start in systems.items() if wanted in name})
            if not matched:
                parser.error(f"--systems: {wanted!r} names none of the systems ({'; '.join(systems)})")
            chosen.update({name: start for name, start in matched.items() if name not in chosen})
        systems = chosen
    summary: dict = {}
    for workload_name in args.workloads.split(","):
        if workload_name not in WORKLOADS and workload_name not in STREAM_WORKLOADS:
            parser.error(f"--workloads: {workload_name!r} is none of {', '.join([*WORKLOADS, *STREAM_WORKLOADS])}")
        summary[workload_name] = {}
        for system, start in systems.items():
            workdir = args.out / workload_name / system.split(" (")[0].replace(" ", "_").replace("+", "").replace(",", "")
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "ready.json").unlink(missing_ok=True)
            process, target, endpoint = start(workdir)
            try:
                if workload_name in STREAM_WORKLOADS:
                    row = _streams(_http_url(target, workdir), STREAM_WORKLOADS[workload_name], workdir / "streams.json",
                                   target if endpoint == ["--endpoint", "grpc"] else None)
                else:
                    row = _row(_bench(target, endpoint, WORKLOADS[workload_name], args.requests, workdir / "bench.json"))
            finally:
                _stop(process)
            summary[workload_name][system] = row
            print(workload_name, system, summary[workload_name][system], flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(_markdown(summary, args.requests))
    print(_markdown(summary, args.requests))
    return 0


def _markdown(summary: dict, requests: int) -> str:
    lines = []
    for workload, rows in summary.items():
        if workload in STREAM_WORKLOADS:
            w = STREAM_WORKLOADS[workload]
            lines += [f"**{workload}**: {w['streams']} chat streams {w['stagger_ms']:g} ms apart, {w['rounds']} rounds each, "
                      f"~230-token prompts, {w['output_tokens']} output tokens, OpenAI streaming API; ITL = gaps "
                      "between chunks as the client received them", "",
                      "| system | TTFT p50 | TTFT p90 | ITL p50 | ITL p99 | longest gap | tokens/chunk | engine ITL | failed |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for system, row in rows.items():
                cells = [_fmt(row.get(k)) for k in ("ttft_ms_p50", "ttft_ms_p90", "itl_ms_p50", "itl_ms_p99", "longest_gap_ms",
                                                    "tokens_per_chunk", "engine_itl_ms", "failed")]
                lines += [f"| {system} | " + " | ".join(cells) + " |"]
            lines.append("")
            continue
        prompt, output, rate = WORKLOADS[workload]
        lines += [f"**{workload}**: {requests} requests, {prompt}-token prompts, {output} output tokens, Poisson "
                  f"{rate:g} req/s", "",
                  "| system | TTFT p50 | TTFT p90 | TTFT p99 | TPOT p50 | TPOT p90 | TPOT p99 | ITL p50 | ITL p99 | longest gap "
                  "| req/s | out tok/s | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for system, row in rows.items():
            cells = [_fmt(row.get(k)) for k in ("ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p90",
                                                "tpot_ms_p99", "itl_ms_p50", "itl_ms_p99", "longest_gap_ms",
                                                "requests_per_s", "output_tokens_per_s", "failed")]
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if isinstance(value, float) and value >= 100 else f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
