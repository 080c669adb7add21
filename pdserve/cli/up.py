"""`pdserve up`: start a serving cluster and its APIs; Ctrl-C or SIGTERM stops everything it started.

Life of the command: 1. the config (file, then flags) is validated; 2. the model is resolved, pulled
first when it is the default catalogue model and missing; 3. `orchestrator.cluster.ServingCluster`
starts Ray (embedded unless `--address`), the pools, the gateway and the servers; 4. the endpoints
are printed (and written as JSON with `--ready-file`, for scripts); 5. on SIGINT/SIGTERM the servers
stop taking requests, in-flight ones get the grace period, and the workers, their engines and the
embedded Ray cluster are stopped: no process is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pdserve.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE

EXAMPLES = """examples:
  pdserve up                                   # default model, 1 prefill + 1 decode worker, local Ray
  pdserve up --prefill 2 --decode 2 --model ~/models/my-llama
  pdserve up --colocated --decode 2            # the non-disaggregated baseline
  pdserve up --kv-transport grpc               # KV over one gRPC stream per peer (one open port)
  pdserve up --engine timing --profile profile.yaml --prefill 4 --decode 8 --autoscale
  pdserve up --address auto --config /etc/pdserve/config.yaml   # join a running Ray cluster (KubeRay head)

exit codes: 0 stopped cleanly, 1 failed to start or crashed, 2 bad flags or config"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("up", help="start a serving cluster (embedded Ray by default)",
                            description="Start prefill and decode worker pools on Ray, the gateway, and the gRPC "
                                        "and OpenAI-compatible HTTP APIs. Runs until Ctrl-C or SIGTERM.",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (flags override it)")
    parser.add_argument("--model", metavar="DIR|NAME", help="a local Hugging Face model directory or a catalogue name")
    parser.add_argument("--prefill", type=int, metavar="N", help="prefill workers (default 1)")
    parser.add_argument("--decode", type=int, metavar="M", help="decode workers (default 1)")
    parser.add_argument("--colocated", action="store_true", help="ordinary non-disaggregated workers (the baseline)")
    parser.add_argument("--host", help="address the APIs bind (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, metavar="P", help="gRPC API port (default 50051; 0: any free port)")
    parser.add_argument("--http-port", type=int, metavar="P", help="HTTP API port (default 8000; 0: any free port)")
    parser.add_argument("--address", metavar="RAY_ADDRESS", help="join this Ray cluster instead of starting one")
    parser.add_argument("--kv-transport", choices=["zmq", "grpc"], help="how KV travels between workers")
    parser.add_argument("--engine", choices=["vllm", "timing"], help="worker engine (timing: tests and benchmarks)")
    parser.add_argument("--profile", metavar="FILE", help="engine profile (`pdserve profile`): the timing engine's step "
                                                          "times, and admission's prefill-time prediction")
    parser.add_argument("--autoscale", action="store_true", help="run the planner: size each pool on its latency target")
    parser.add_argument("--ttft-ms", type=float, metavar="MS", help="planner TTFT target")
    parser.add_argument("--itl-ms", type=float, metavar="MS", help="planner inter-token latency target")
    parser.add_argument("--max-model-len", type=int, metavar="N", help="context length (prompt + output tokens)")
    parser.add_argument("--ready-file", metavar="FILE", help="write the endpoints here as JSON once serving")
    parser.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config keys for the flags that were given."""
    pairs = {
        "model.name": args.model, "pools.num_prefill": args.prefill, "pools.num_decode": args.decode,
        "server.host": args.host, "server.grpc_port": args.grpc_port, "server.http_port": args.http_port,
        "ray_address": args.address, "kv.transport": args.kv_transport, "engine.kind": args.engine,
        "engine.profile": args.profile, "planner.slo.ttft_ms": args.ttft_ms, "planner.slo.itl_ms": args.itl_ms,
        "model.max_model_len": args.max_model_len,
    }
    overrides = {key: value for key, value in pairs.items() if value is not None}
    if args.colocated:
        overrides["pools.colocated"] = True
    if args.autoscale:
        overrides["planner.enabled"] = True
    return overrides


def run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.errors import PdserveError

    try:
        config = load_config(args.config, overrides_from_args(args))
        model_dir = _resolve_model(config)
    except PdserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.caller else EXIT_FAILED
    try:
        return asyncio.run(_serve(config, model_dir, args))
    except PdserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.caller else EXIT_FAILED


def _resolve_model(config: Any) -> str:
    if config.engine.kind == "timing":
        return config.model.name  # no weights: the name only labels the model
    from workers import modelstore

    return str(modelstore.resolve(config.model.name, pull_missing=config.model.name == modelstore.DEFAULT_NAME,
                                  progress=sys.stderr.isatty()))


async def _serve(config: Any, model_dir: str, args: argparse.Namespace) -> int:
    import logging

    from orchestrator.cluster import ServingCluster

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    mode = "colocated" if config.pools.colocated else "disaggregated"
    print(f"starting {mode} cluster: model {config.model.name}, "
          f"{'' if config.pools.colocated else f'{config.pools.num_prefill} prefill + '}{config.pools.num_decode} "
          f"{'colocated' if config.pools.colocated else 'decode'} workers ({config.engine.kind}) ...",
          file=sys.stderr, flush=True)
    start = asyncio.ensure_future(ServingCluster.start(config, model_dir, log_to_driver=verbose))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():  # interrupted while starting: wait for the start to unwind, then stop
        print("stopping ...", file=sys.stderr, flush=True)
        cluster = await _finish_start(start)
        if cluster is not None:
            await cluster.stop()
        return EXIT_OK
    cluster = start.result()
    for signum in (signal.SIGINT, signal.SIGTERM):  # ray.init replaced SIGTERM's handler with a sys.exit
        loop.add_signal_handler(signum, stop.set)
    _announce(cluster, args.ready_file)
    await stopped
    print("stopping ...", file=sys.stderr, flush=True)
    await cluster.stop()
    print("stopped", file=sys.stderr, flush=True)
    return EXIT_OK


async def _finish_start(start: asyncio.Future) -> Any:
    try:
        return await start
    except Exception:  # the start failed anyway; it already cleaned up after itself
        return None


def _announce(cluster: Any, ready_file: str | None) -> None:
    servers = cluster.servers
    from orchestrator.gateway.status import engine_dtype

    endpoints = {"grpc": servers.grpc_target, "http": servers.http_url, "model": cluster.gateway.model_id,
                 "mode": "colocated" if cluster.config.pools.colocated else "disaggregated",
                 "dtype": engine_dtype(cluster.gateway.views())}
    dtype = f", {endpoints['dtype']}" if endpoints["dtype"] else ""
    print(f"pdserve is serving {endpoints['model']} ({endpoints['mode']}{dtype})\n"
          f"  gRPC:    {servers.grpc_target}\n"
          f"  HTTP:    {servers.http_url}/v1 (OpenAI-compatible), {servers.http_url}/health, {servers.http_url}/metrics\n"
          f"  try:     pdserve generate \"The capital of France is\" --target {servers.grpc_target}\n"
          f"Ctrl-C to stop.", flush=True)
    if ready_file:
        path = Path(ready_file)
        path.write_text(json.dumps(endpoints))


__all__ = ["EXIT_FAILED", "EXIT_OK", "register", "run"]
