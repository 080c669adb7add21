"""`pdserve simulate`: run one simulated cluster on a workload, or validate the models against published data.

Examples:
  pdserve simulate --model llama-3.1-70b --prefill 4 --decode 6 --prefill-tp 2 --decode-tp 4 --trace azure_conv --out out/sim
  pdserve simulate --colocated --decode 8 --workload chat=0.7,reasoning=0.3 --rate 20
  pdserve simulate --profile orchestrator/data/profiles/smollm2-135m-cpu.yaml --workload chat --rate 0.5 \
      --prefill 1 --decode 1 --autoscale --ttft-slo-ms 2000 --tpot-slo-ms 150   # the CPU cluster, planner on
  pdserve simulate --workload reasoning --rate 4 --thinking-share 0.5 --thinking-cap 1024 --budget-config budget.yaml
  pdserve simulate --validate
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    from simulations.cli import add_cluster_args, add_timing_args, add_workload_args
    parser = subparsers.add_parser("simulate", help="simulate a cluster on a trace or synthetic workload",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pools = parser.add_argument_group("pools")
    pools.add_argument("--prefill", type=int, default=1, help="prefill engines (default 1)")
    pools.add_argument("--decode", type=int, default=1, help="decode engines, or colocated engines with --colocated")
    pools.add_argument("--prefill-tp", type=int, default=1)
    pools.add_argument("--decode-tp", type=int, default=1)
    pools.add_argument("--colocated", action="store_true", help="one colocated pool (the non-disaggregated baseline)")
    pools.add_argument("--autoscale", action="store_true", help="let the live planner resize the pools")
    pools.add_argument("--max-gpus", type=int, help="GPU budget for the planner (a power budget of that many GPUs)")
    pools.add_argument("--planner-config", metavar="FILE", help="YAML of the `planner` section (limits, cooldowns, "
                                                                "forecaster), or a pdserve config file")
    pools.add_argument("--planner-interval-s", type=float, help="planner tick period (default: the planner config's)")
    pools.add_argument("--max-replicas", type=int, help="most workers per tier the planner asks for")
    pools.add_argument("--worker-start-s", type=float, default=60.0, help="time a new engine takes to be ready")
    add_timing_args(parser)
    add_workload_args(parser)
    add_cluster_args(parser)
    parser.add_argument("--out", help="folder for summary.json, report.md and plots")
    parser.add_argument("--validate", action="store_true", help="compare the models with Splitwise and InferenceMAX data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.validate:
            return _validate(args)
        return _simulate(args)
    except ConfigError as exc:
        print(f"pdserve simulate: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


def _planner_changes(args: argparse.Namespace) -> dict:
    from orchestrator.config import PlannerConfig
    from simulations.cli import load_section
    planner = load_section(args.planner_config, "planner", PlannerConfig) if args.planner_config else PlannerConfig()
    values = planner.model_dump()
    if args.planner_interval_s is not None:
        values["interval_s"] = args.planner_interval_s
    if args.max_replicas is not None:
        for tier in ("prefill", "decode"):
            values[tier]["max_replicas"] = args.max_replicas
            values[tier]["min_replicas"] = min(values[tier]["min_replicas"], args.max_replicas)
    return {"planner": values, "worker_start_s": args.worker_start_s}


def _simulate(args: argparse.Namespace) -> int:
    from simulations.cli import Progress, base_config, build_workload, timing_changes
    from simulations.report import write_simulation
    from simulations.run import simulate

    changes = dict(mode="colocated" if args.colocated else "disaggregated",
                   num_prefill=0 if args.colocated else args.prefill, num_decode=args.decode,
                   prefill_tp=args.prefill_tp, decode_tp=args.decode_tp, autoscale=args.autoscale, max_gpus=args.max_gpus,
                   **timing_changes(args), **_planner_changes(args))
    config = base_config(args, **changes)
    workload, name = build_workload(args)
    progress = Progress(workload[-1].arrival_s, "sim-s", not args.no_progress and len(workload) > 2000)
    try:
        summary, _ = simulate(config, workload, on_progress=progress.to)
    finally:
        progress.close()
    _print_summary(summary, name)
    if args.out:
        for path in write_simulation(Path(args.out), summary, name):
            print(f"wrote {path}")
    return EXIT_OK if summary["num_unfinished"] == 0 else EXIT_FAILED


def _print_summary(summary: dict, name: str) -> None:
    print(f"{summary['label']} on {name}: {summary['num_served']}/{summary['num_requests']} served")
    print(f"  TTFT ms p50/p90/p99: {summary['ttft_ms_p50']:.1f} / {summary['ttft_ms_p90']:.1f} / {summary['ttft_ms_p99']:.1f}")
    print(f"  TPOT ms p50/p90/p99: {summary['tpot_ms_p50']:.2f} / {summary['tpot_ms_p90']:.2f} / {summary['tpot_ms_p99']:.2f}")
    print(f"  tokens/s per MW: {summary['tokens_per_s_per_mw']:,.0f} (input {summary['input_tokens_per_s_per_mw']:,.0f}, "
          f"output {summary['output_tokens_per_s_per_mw']:,.0f})")
    print(f"  $/Mtok {summary['usd_per_million_tokens']:.3f}  J/token {summary['j_per_token']:.3f}  "
          f"goodput {summary['goodput_rps']:.2f} req/s ({summary['slo_attainment']:.1%} within SLO)")
    if summary["num_refused"]:
        print(f"  refused: {', '.join(f'{n} by {who}' for who, n in summary['refused_by'].items())}")
    if summary.get("budgets_enforced"):
        print(f"  budgets: finish reasons {summary['finish_reasons']}; {summary['num_thinking_capped']} thinking spans "
              f"capped ({summary['thinking_tokens']:,} thinking tokens of {summary['thinking_tokens_uncapped']:,} "
              f"uncapped); charged ${summary['budget_cost_usd']:.4f}, {summary['budget_energy_j']:,.0f} J")
    if "planner" in summary:
        planner = summary["planner"]
        print(f"  planner: {planner['num_decisions']} decisions every {planner['interval_s']:g} s, up to "
              f"{planner['max_prefill']} prefill + {planner['max_decode']} decode; actions {planner['actions']}")


def _validate(args: argparse.Namespace) -> int:
    from simulations.validate import out_of_bounds, validate_all, validation_table
    result = validate_all()
    print(validation_table(result))
    failed = out_of_bounds(result)
    if failed:
        print(f"outside the stated bounds: {', '.join(failed)}", file=sys.stderr)
    if args.out:
        from simulations.report import write_json
        path = write_json(Path(args.out) / "validation.json", result)
        print(f"wrote {path}")
    return EXIT_FAILED if failed else EXIT_OK
