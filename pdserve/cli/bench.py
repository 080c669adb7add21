"""`pdserve bench`: open-loop serving benchmark against a running cluster (gRPC or HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys

from pdserve.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

EXAMPLES = """examples:
  pdserve bench --target localhost:50051 --num-requests 200 --rate 4 \\
      --prompt-tokens 96 --output-tokens 24 --out runs/disagg.json
  pdserve bench --target localhost:8000 --endpoint http --num-requests 200 --rate 4 \\
      --prompt-tokens 96 --output-tokens 24 --out runs/coloc.json --compare runs/disagg.json
  pdserve bench --target localhost:50051 --trace traces/mooncake_conversation_trace.jsonl \\
      --num-requests 500 --rate 2 --block-tokens 32 --max-prompt-tokens 1536 --out runs/mooncake.json
  pdserve bench --target localhost:50051 --ramp --rate 2 --ramp-shape 0.5,2,4,2,0.5 \\
      --ramp-lengths 1024x8,1024x8,64x256,64x256,64x8 --duration-s 300 --num-requests 5000 --out runs/ramp.json

exit codes: 0 every request succeeded (or --allow-failures), 1 some failed (report still written),
2 bad flags or input files, 3 target unreachable, 130 interrupted."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="open-loop serving benchmark: TTFT, TPOT, throughput, goodput",
                            description="Send requests open-loop (Poisson, a trace's timestamps, or a ramp) to a "
                                        "running pdserve and report latency percentiles, throughput and failures.",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_target_flags(parser)
    _add_load_flags(parser)
    _add_trace_flags(parser)
    _add_ramp_flags(parser)
    _add_report_flags(parser)
    parser.set_defaults(func=run, bench_parser=parser)


def _add_target_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target")
    group.add_argument("--target", required=True, help="HOST:PORT of the gRPC server (or the HTTP server)")
    group.add_argument("--endpoint", choices=["grpc", "http"], default="grpc", help="API to drive (default: grpc)")
    group.add_argument("--model", default=None, help="model id to request (default: the first one the server lists)")
    group.add_argument("--api-key", default=os.environ.get("PDSERVE_API_KEY"),
                       help="API key (default: $PDSERVE_API_KEY); never written to the report")
    group.add_argument("--connect-timeout-s", type=float, default=10.0, help="probe timeout (default: 10)")
    group.add_argument("--request-timeout-s", type=float, default=300.0,
                       help="per-request limit; a request past it counts as failed 'timeout' (default: 300)")


def _add_load_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("load")
    group.add_argument("--num-requests", type=int, default=100, help="requests to send at most (default: 100)")
    group.add_argument("--rate", dest="rate_per_s", type=float, default=None,
                       help="mean arrival rate, requests/s (Poisson; with --trace: replay at this mean rate)")
    group.add_argument("--duration-s", type=float, default=None,
                       help="stop sending after this many seconds (in-flight requests still finish)")
    group.add_argument("--prompt-tokens", type=int, default=None, help="exact prompt length (default: 128)")
    group.add_argument("--output-tokens", type=int, default=None,
                       help="exact output length, with ignore_eos (default: 64)")
    group.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    group.add_argument("--seed", type=int, default=0, help="seed of arrivals and prompt token ids (default: 0)")
    group.add_argument("--token-id-range", default="256,8192",
                       help="prompt token ids are drawn from LOW,HIGH (HIGH exclusive; default: 256,8192)")


def _add_trace_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("trace replay")
    group.add_argument("--trace", default=None, help="Azure CSV or Mooncake JSONL trace to replay")
    group.add_argument("--trace-format", choices=["azure", "mooncake"], default=None,
                       help="trace format (default: from the suffix, .csv or .jsonl)")
    group.add_argument("--time-scale", type=float, default=None,
                       help="multiply the trace's inter-arrival gaps (0.5: twice as fast)")
    group.add_argument("--block-tokens", type=int, default=512,
                       help="tokens per prefix hash block; prompt lengths scale with it/512 (default: 512)")
    group.add_argument("--max-prompt-tokens", type=int, default=None,
                       help="clip trace prompts to this (prompt + output are also clipped to the model context)")
    group.add_argument("--max-output-tokens", type=int, default=None, help="clip trace outputs to this")


def _add_ramp_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ramp (autoscaling demonstration)")
    group.add_argument("--ramp", action="store_true",
                       help="offer --rate x each --ramp-shape multiplier in equal phases and poll replicas")
    group.add_argument("--ramp-shape", default="0.5,2,4,2,0.5", help="rate multipliers (default: %(default)s)")
    group.add_argument("--ramp-lengths", default=None,
                       help="PROMPTxOUTPUT tokens per phase, e.g. 1024x8,64x256 (prompt-heavy, generation-heavy)")
    group.add_argument("--ramp-tail-s", type=float, default=10.0,
                       help="keep polling replicas this long after the load ends (default: 10)")
    group.add_argument("--status-target", default=None,
                       help="gRPC HOST:PORT for cluster status (default: --target; required with --endpoint http)")
    group.add_argument("--poll-interval-s", type=float, default=1.0, help="status poll period (default: 1)")


def _add_report_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--out", required=True, help="JSON report path (ramp CSV/PNG go next to it)")
    group.add_argument("--slo-ttft-ms", type=float, default=None, help="TTFT target for goodput")
    group.add_argument("--slo-tpot-ms", type=float, default=None, help="TPOT target for goodput")
    group.add_argument("--compare", default=None, help="a baseline run's JSON: print this run / baseline ratios")
    group.add_argument("--allow-failures", action="store_true", help="exit 0 even when requests failed")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Validate, run, write the report; map errors to exit codes."""
    from orchestrator.errors import ConfigError, Unavailable
    from pdserve.bench.config import BenchConfig

    try:
        config = BenchConfig.from_args(args)
        argv = _redacted_argv(_command_argv(args), config.api_key)
        result = asyncio.run(_run(config, argv))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return _write_outputs(config, result)


async def _run(config, argv):
    from pdserve.bench.runner import run_bench

    return await run_bench(config, shlex.join(argv), argv)


def _write_outputs(config, result) -> int:
    from pathlib import Path

    from pdserve.bench import replicas, report
    from pdserve.bench.runner import ramp_paths

    document = result.document
    report.write_json(document, Path(config.out))
    for note in document["notes"]:
        print(f"note: {note}")
    print(report.format_table(document["summary"]))
    if document["comparison"]:
        print()
        print(report.format_comparison(document["comparison"]["rows"], document["comparison"]["baseline"]))
    if result.ramp_table is not None:
        csv_path, png_path = ramp_paths(config.out)
        replicas.write_csv(result.ramp_table, csv_path)
        replicas.write_plot(result.ramp_table, png_path)
        print(f"replicas over time: {csv_path}, {png_path}")
    print(f"report: {config.out}")
    failed = document["summary"]["num_failed"]
    return EXIT_OK if not failed or config.allow_failures else EXIT_FAILED


def _command_argv(args: argparse.Namespace) -> list[str]:
    """The command line as typed when this process is the `pdserve` CLI; else (called as a library,
    `main([...])`) the equivalent command line rebuilt from the parsed flags."""
    if os.path.basename(sys.argv[0]) == "pdserve" and "bench" in sys.argv[1:]:
        return ["pdserve", *sys.argv[1:]]
    argv = ["pdserve", "bench"]
    for action in args.bench_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value == action.default or value is None or action.dest == "api_key":
            continue
        argv += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return argv


def _redacted_argv(argv: list[str], api_key: str | None) -> list[str]:
    """The command line as typed, with any API key value replaced."""
    if not api_key:
        return list(argv)
    return [arg.replace(api_key, "<redacted>") for arg in argv]
