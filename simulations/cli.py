"""Arguments shared by `pdserve simulate` and `pdserve plan`, and their conversion to simulator inputs.

Bad input raises ConfigError (the CLI turns it into exit code 2 with the message).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from simulations.config import SimConfig
from simulations.hardware import get_accelerator
from simulations.models import get_model
from simulations.request import SimRequest
from simulations.workloads import (
    BudgetMix,
    apply_budget_mix,
    from_trace,
    parse_mix,
    synthetic,
)


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument("--trace", help="azure_conv, azure_code, mooncake_conversation, mooncake_synthetic, or a .csv/.jsonl path")
    group.add_argument("--workload", default="chat", help="synthetic mix when no --trace: chat, reasoning, summarisation, "
                                                         "or weights like chat=0.7,reasoning=0.3 (default: chat)")
    group.add_argument("--rate", type=float, default=5.0, help="synthetic arrivals per second (default 5)")
    group.add_argument("--duration", type=float, help="seconds of workload (synthetic default 300; traces: whole trace)")
    group.add_argument("--rate-scale", type=float, default=1.0, help="multiply the workload's arrival rate")
    group.add_argument("--limit", type=int, help="use only the first N trace requests")
    group.add_argument("--spread", type=float, default=0.3, help="coefficient of variation of synthetic lengths")
    group.add_argument("--thinking-share", type=float, default=0.0, help="share of requests with a long thinking phase")
    group.add_argument("--thinking-tokens", type=int, default=4096, help="mean thinking tokens of those requests")
    group.add_argument("--thinking-cap", type=int, default=2048, help="the budget's max_thinking_tokens (0: no cap)")
    group.add_argument("--seed", type=int, default=0)


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("step times (default: roofline)")
    group.add_argument("--profile", help="measured profile file from `pdserve profile`")
    group.add_argument("--coefficients", help="six numbers: prefill a,b,c and decode a,b,c (ms)")
    group.add_argument("--kv-tokens", type=int, help="KV capacity per engine in tokens (profile/coefficients timing)")
    group.add_argument("--shared-host", action="store_true",
                       help="the prefill and decode engines share one host (a CPU machine): a step runs slower while "
                            "the other tier computes, by the --profile's measured interference points")


def timing_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The SimConfig fields the step-time flags select (empty: roofline). With --profile, the profile's
    model becomes the default --model. Raises ConfigError on a bad file or bad coefficients."""
    if args.profile and args.coefficients:
        raise ConfigError("give --profile or --coefficients, not both")
    if args.shared_host and not args.profile:
        raise ConfigError("--shared-host slows the tiers by a measured profile's interference points: give --profile")
    if args.kv_tokens is not None and not (args.profile or args.coefficients):
        raise ConfigError("--kv-tokens applies to --profile or --coefficients timing (the roofline sizes the KV cache "
                          "from the model and the accelerator)")
    if args.profile:
        from simulations.models import ALIASES, CATALOGUE
        from simulations.profile import load_profile
        profile = load_profile(args.profile, args.kv_tokens)
        if args.shared_host and not profile.interference:
            raise ConfigError(f"--shared-host: profile {args.profile} has no interference points (measure them with "
                              "`pdserve profile --target HOST:PORT` on a disaggregated cluster)")
        model = ALIASES.get(profile.model, profile.model)
        return {"timing": "profile", "profile": args.profile, "kv_tokens": args.kv_tokens,
                "shared_host": args.shared_host, "default_model": model if model in CATALOGUE else None}
    if args.coefficients:
        try:
            values = tuple(float(v) for v in args.coefficients.replace(",", " ").split())
        except ValueError:
            raise ConfigError(f"--coefficients must be six numbers, got {args.coefficients!r}") from None
        if len(values) != 6:
            raise ConfigError(f"--coefficients needs six numbers (prefill a,b,c, decode a,b,c), got {len(values)}")
        return {"timing": "coefficients", "coefficients": values, "kv_tokens": args.kv_tokens}
    return {}


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster and models")
    group.add_argument("--model", help="model shape (unknown names list the valid ones; default: the --profile's "
                                       "model, else llama-3.1-8b)")
    group.add_argument("--accelerator", default="h100-sxm", help="accelerator from hardware.yaml")
    group.add_argument("--max-num-seqs", type=int, default=256, help="batch limit per engine step")
    group.add_argument("--max-batched-tokens", type=int, default=8192, help="token limit per engine step")
    group.add_argument("--ttft-slo-ms", type=float, default=2000.0, help="TTFT target (ms)")
    group.add_argument("--tpot-slo-ms", type=float, default=100.0, help="time-per-output-token target (ms)")
    group.add_argument("--slo-percentile", type=float, default=90.0, help="percentile the SLOs apply at")
    group.add_argument("--power-cap", type=float, default=1.0, help="GPU power cap as a share of board power")
    group.add_argument("--pue", type=float, default=1.2)
    group.add_argument("--usd-per-kwh", type=float, default=0.08)
    group.add_argument("--gpu-hour-usd", type=float, help="GPU price per hour (default by accelerator)")
    group.add_argument("--transfer-gb-s", type=float, help="KV link bandwidth (default: the GPUs' scale-out NICs)")
    group.add_argument("--compute-efficiency", type=float, default=0.70, help="roofline: share of peak FLOPs")
    group.add_argument("--bandwidth-efficiency", type=float, default=0.90, help="roofline: share of HBM bandwidth")
    group.add_argument("--step-overhead-ms", type=float, default=0.5, help="roofline: fixed cost per step")
    calibration = parser.add_argument_group("serving-path calibration (docs/simulator.md, Accuracy)")
    calibration.add_argument("--request-overhead-ms", type=float, default=0.0,
                             help="client send to the worker's queue, plus the first token's way back (default 0)")
    calibration.add_argument("--transfer-latency-ms", type=float, default=0.5, help="fixed cost of one KV hand-off")
    calibration.add_argument("--decode-kv-load-steps", type=int, default=1,
                             help="engine steps a decode engine takes to load received KV (vLLM: 1)")
    budgets = parser.add_argument_group("budgets (orchestrator.budget)")
    budgets.add_argument("--budgets", choices=("auto", "on", "off"), default="auto",
                         help="admission and per-token charging; auto: on when requests carry budgets or "
                              "--budget-config is given")
    budgets.add_argument("--budget-config", metavar="FILE", help="YAML of the `budget` section (tenants' defaults, "
                                                                 "maximums, quotas, prices), or a pdserve config file")


def load_section(path: str, name: str, model: type) -> Any:
    """A config section (`budget`, `planner`) from a YAML file holding the section, or a whole pdserve
    config with the section under its name. Raises ConfigError naming the file and the problems."""
    import yaml
    from pydantic import ValidationError
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {name} config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name} config {path} must hold a mapping, got {type(data).__name__}")
    if isinstance(data.get(name), dict):
        data = data[name]
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid {name} config {path}: {problems}") from None


def base_config(args: argparse.Namespace, **changes: Any) -> SimConfig:
    """SimConfig from the shared flags (validated: names, SLOs, efficiencies)."""
    from orchestrator.config import BudgetConfig
    model = args.model or changes.pop("default_model", None) or "llama-3.1-8b"
    changes.pop("default_model", None)
    get_model(model)
    get_accelerator(args.accelerator)
    for name in ("ttft_slo_ms", "tpot_slo_ms"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.slo_percentile <= 100:
        raise ConfigError(f"--slo-percentile must be in (0, 100], got {args.slo_percentile}")
    values = dict(model=model, accelerator=args.accelerator, max_num_seqs=args.max_num_seqs,
                  max_batched_tokens=args.max_batched_tokens, ttft_slo_ms=args.ttft_slo_ms, tpot_slo_ms=args.tpot_slo_ms,
                  slo_percentile=args.slo_percentile, power_cap_fraction=args.power_cap, pue=args.pue,
                  usd_per_kwh=args.usd_per_kwh, usd_per_gpu_hour=args.gpu_hour_usd, transfer_gb_s=args.transfer_gb_s,
                  compute_efficiency=args.compute_efficiency, bandwidth_efficiency=args.bandwidth_efficiency,
                  step_overhead_ms=args.step_overhead_ms, request_overhead_ms=args.request_overhead_ms,
                  transfer_latency_ms=args.transfer_latency_ms, decode_kv_load_steps=args.decode_kv_load_steps,
                  budgets=args.budgets)
    if args.budget_config:
        values["budget"] = load_section(args.budget_config, "budget", BudgetConfig)
        values["budgets"] = "on" if args.budgets == "auto" else args.budgets
    values.update(changes)
    return validated(values)


def validated(values: dict[str, Any]) -> SimConfig:
    from pydantic import ValidationError
    try:
        return SimConfig.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid simulation settings: {problems}") from None


def build_workload(args: argparse.Namespace) -> tuple[list[SimRequest], str]:
    """The requests and a one-line name of the workload."""
    if args.rate_scale <= 0:
        raise ConfigError(f"--rate-scale must be positive, got {args.rate_scale}")
    budget = BudgetMix(args.thinking_share, args.thinking_tokens, args.thinking_cap or None)
    if args.trace:
        requests = from_trace(args.trace, args.rate_scale, args.limit, args.duration)
        requests = apply_budget_mix(requests, budget, args.seed) if budget.thinking_share else requests
        name = f"trace {args.trace}" + (f" x{args.rate_scale:g}" if args.rate_scale != 1 else "")
    else:
        mix = parse_mix(args.workload)
        duration = args.duration or 300.0
        requests = synthetic(mix, args.rate * args.rate_scale, duration, args.spread, budget, args.seed)
        name = f"synthetic {args.workload} at {args.rate * args.rate_scale:g} req/s for {duration:g} s"
    if budget.thinking_share:
        name += f", {budget.thinking_share:.0%} thinking (cap {budget.max_thinking_tokens})"
    if not requests:
        raise ConfigError("the workload has no requests (check --limit, --duration, --rate)")
    return requests, name


class Progress:
    """A tqdm bar over simulated seconds or tasks; silent when disabled."""

    def __init__(self, total: float, unit: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=unit, dynamic_ncols=True, leave=False)
        self._last = 0.0

    def to(self, value: float) -> None:
        if self._bar is not None and value > self._last:
            self._bar.update(value - self._last)
            self._last = value

    def step(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
