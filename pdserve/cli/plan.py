"""`pdserve plan`: search cluster configurations for the most tokens/s per MW within the SLOs.

Examples:
  pdserve plan --model llama-3.1-70b --trace azure_conv --accelerators h100-sxm,h200,b200 --gpus 16,32,64 --out out/plan
  pdserve plan --workload reasoning --rate 2 --ttft-slo-ms 1000 --tpot-slo-ms 30 --max-gpus 32 --workers 8
  pdserve plan --trace azure_code --duration 600 --workers 0      # in process, no Ray
  pdserve plan --profile orchestrator/data/profiles/smollm2-135m-cpu.yaml --workload chat --rate 0.5 \
      --gpus 2,4,8 --ttft-slo-ms 2000 --tpot-slo-ms 150 --workers 0  # engines timed by a measured profile

With --profile or --coefficients every engine takes the measured (or given) step times, so the search
varies modes, prefill:decode ratios, batch limits and sizes, not TP degrees (both stay at 1: the
engine as measured); --accelerator still sets the power and the price.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestrator.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    from simulations.cli import add_cluster_args, add_timing_args, add_workload_args
    parser = subparsers.add_parser("plan", help="capacity search: best cluster, Pareto frontier, scaling with load",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    space = parser.add_argument_group("search space")
    space.add_argument("--accelerators", help="comma-separated accelerators (default: --accelerator)")
    space.add_argument("--modes", default="disaggregated,colocated", help="disaggregated and/or colocated")
    space.add_argument("--prefill-tps", help="prefill TP degrees (default 1,2; 1 with --profile/--coefficients)")
    space.add_argument("--decode-tps", help="decode (and colocated) TP degrees (default 1,2,4; 1 with "
                                            "--profile/--coefficients)")
    space.add_argument("--ratios", default="1:1,1:2,1:3,2:1", help="prefill:decode engine ratios")
    space.add_argument("--batch-limits", default="256", help="max_num_seqs values")
    space.add_argument("--gpus", default="8,16,32", help="cluster sizes in GPUs")
    space.add_argument("--max-gpus", type=int, help="GPU budget")
    space.add_argument("--max-mw", type=float, help="provisioned power budget (MW)")
    space.add_argument("--latency", default="tpot", help="latency axis of the frontier: tpot, ttft or e2e")
    space.add_argument("--scales", default="1,2,5,10", help="load multiples for the scaling curve ('' to skip)")
    add_timing_args(parser)
    add_workload_args(parser)
    add_cluster_args(parser)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Ray workers (0: in process, no Ray; default: every core)")
    parser.add_argument("--out", help="folder for summary.json, report.md and plots")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} needs positive integers, got {text!r}")
    return values


def _ratios(text: str) -> tuple[tuple[int, int], ...]:
    ratios = []
    for part in text.split(","):
        p, _, d = part.partition(":")
        ratios.append(_ints(f"{p},{d}", "--ratios") if p and d else None)
        if ratios[-1] is None:
            raise ConfigError(f"--ratios entries look like 1:2, got {part!r}")
    return tuple((a, b) for a, b in ratios)  # type: ignore[misc]


def _tps(args: argparse.Namespace, measured: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The TP axes: the flags, else the defaults; measured step times time one engine as it was measured."""
    prefill = _ints(args.prefill_tps, "--prefill-tps") if args.prefill_tps else ((1,) if measured else (1, 2))
    decode = _ints(args.decode_tps, "--decode-tps") if args.decode_tps else ((1,) if measured else (1, 2, 4))
    if measured and (prefill != (1,) or decode != (1,)):
        raise ConfigError("--profile/--coefficients give the step times of one engine as measured: they do not "
                          "change with a TP degree, so leave --prefill-tps/--decode-tps at 1 (or profile a TP engine "
                          "and search its sizes)")
    return prefill, decode


def _space(args: argparse.Namespace, measured: bool = False):
    from simulations.hardware import get_accelerator
    from simulations.search import SearchSpace
    accelerators = tuple(a.strip() for a in (args.accelerators or args.accelerator).split(",") if a.strip())
    for name in accelerators:
        get_accelerator(name)
    modes = tuple(m.strip() for m in args.modes.split(","))
    if not modes or any(m not in ("disaggregated", "colocated") for m in modes):
        raise ConfigError(f"--modes takes disaggregated and/or colocated, got {args.modes!r}")
    return SearchSpace(accelerators, modes, *_tps(args, measured), _ratios(args.ratios),
                       _ints(args.batch_limits, "--batch-limits"), _ints(args.gpus, "--gpus"), args.max_gpus, args.max_mw)


def run(args: argparse.Namespace) -> int:
    from simulations.cli import Progress, base_config, build_workload, timing_changes
    from simulations.report import write_plan
    from simulations.search import candidates, plan
    try:
        timing = timing_changes(args)
        space = _space(args, measured=bool(timing))
        base = base_config(args, **timing)
        scales = tuple(float(s) for s in args.scales.split(",") if s.strip()) if args.scales else ()
        if args.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {args.workers}")
        workload, name = build_workload(args)
        count = len(candidates(base, space))
        if count == 0:
            raise ConfigError("the search space is empty under the GPU/power budget: widen it or raise the budget")
    except (ConfigError, ValueError) as exc:
        print(f"pdserve plan: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"searching {count} configurations on {name} ({len(workload)} requests)")
    progress = Progress(count, "config", not args.no_progress)
    try:
        result = plan(base, space, workload, args.workers, args.latency, scales, progress=progress.step)
    except ConfigError as exc:
        print(f"pdserve plan: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
    _print(result)
    if args.out:
        for path in write_plan(Path(args.out), result, name):
            print(f"wrote {path}")
    return EXIT_OK if result.best else EXIT_FAILED


def _print(result) -> None:
    if result.best is None:
        print("no configuration met the SLOs; widen the search or relax the SLOs")
    else:
        b = result.best
        print(f"best: {b['label']} ({b['replicas']['gpus']} GPUs): {b['tokens_per_s_per_mw']:,.0f} tokens/s per MW, "
              f"${b['usd_per_million_tokens']:.3f}/Mtok, TTFT p90 {b['ttft_ms_p90']:.0f} ms, TPOT p90 {b['tpot_ms_p90']:.1f} ms")
    print("Pareto frontier:")
    for p in result.frontier:
        print(f"  {p['label']:<42} {p['tokens_per_s_per_mw']:>14,.0f} tok/s/MW  {result.latency_key} {p[result.latency_key]:.1f}")
    for s in result.scaling:
        if s.get("feasible"):
            print(f"  load x{s['rate_scale']:g}: {s['gpus']} GPUs, {s['provisioned_mw']:.4f} MW ({s['label']})")
        else:
            print(f"  load x{s['rate_scale']:g}: no size up to the search limit meets the SLOs")
