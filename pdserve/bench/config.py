"""The benchmark's settings, from the command line, checked before anything is sent.

`BenchConfig.from_args` raises `ConfigError` (exit 2) with a message naming the flag for every bad
combination, so a run never starts half-configured.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any

from orchestrator.errors import ConfigError
from pdserve.bench import ramp as ramps

DEFAULT_PROMPT_TOKENS = 128
DEFAULT_OUTPUT_TOKENS = 64
ENDPOINT_NAMES = ("grpc", "http")


@dataclass(frozen=True)
class BenchConfig:
    target: str
    out: str
    endpoint: str = "grpc"
    num_requests: int = 100
    rate_per_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    trace: str | None = None
    trace_format: str | None = None
    time_scale: float | None = None
    ramp: bool = False
    ramp_shape: tuple[float, ...] = ramps.DEFAULT_SHAPE
    ramp_lengths: tuple[ramps.PhaseLengths, ...] | None = None
    ramp_tail_s: float = 10.0
    status_target: str | None = None
    poll_interval_s: float = 1.0
    duration_s: float | None = None
    request_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    seed: int = 0
    token_id_low: int = 256
    token_id_high: int = 8192
    block_tokens: int = 512
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    model: str | None = None
    api_key: str | None = None
    temperature: float = 0.0
    compare: str | None = None
    allow_failures: bool = False
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        """Validate parsed flags; raises ConfigError naming the flag at fault."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["ramp_shape"] = _parse(ramps.parse_shape, args.ramp_shape, "--ramp-shape")
        if args.ramp_lengths is not None:
            values["ramp_lengths"] = _parse(ramps.parse_lengths, args.ramp_lengths, "--ramp-lengths",
                                            len(values["ramp_shape"]))
        values["token_id_low"], values["token_id_high"] = _parse_id_range(args.token_id_range)
        values["progress"] = not args.quiet
        config = cls(**values)
        config.check()
        return config

    @property
    def synthetic(self) -> bool:
        return self.trace is None and not self.ramp

    def check(self) -> None:
        """Raise ConfigError for the first bad value or combination."""
        _check_target(self.target, "--target", self.endpoint)
        if self.status_target:
            _check_target(self.status_target, "--status-target", "grpc")
        _positive("--num-requests", self.num_requests)
        for flag, value in (("--rate", self.rate_per_s), ("--time-scale", self.time_scale),
                            ("--duration-s", self.duration_s), ("--request-timeout-s", self.request_timeout_s),
                            ("--block-tokens", self.block_tokens), ("--max-prompt-tokens", self.max_prompt_tokens),
                            ("--max-output-tokens", self.max_output_tokens), ("--slo-ttft-ms", self.slo_ttft_ms),
                            ("--slo-tpot-ms", self.slo_tpot_ms), ("--prompt-tokens", self.prompt_tokens),
                            ("--output-tokens", self.output_tokens), ("--poll-interval-s", self.poll_interval_s)):
            if value is not None:
                _positive(flag, value)
        if self.temperature < 0 or self.ramp_tail_s < 0:
            raise ConfigError("--temperature and --ramp-tail-s must be >= 0")
        self._check_source()

    def _check_source(self) -> None:
        if self.trace is not None:
            if self.prompt_tokens is not None or self.output_tokens is not None:
                raise ConfigError("--trace takes its lengths from the trace: drop --prompt-tokens/--output-tokens")
            if self.ramp:
                raise ConfigError("--ramp drives synthetic load: drop --trace (or drop --ramp to replay the trace)")
            if self.rate_per_s is not None and self.time_scale is not None:
                raise ConfigError("give --rate (mean rate to replay the trace at) or --time-scale, not both")
            return
        if self.time_scale is not None or self.trace_format is not None:
            raise ConfigError("--time-scale and --trace-format apply to --trace only")
        if self.rate_per_s is None:
            raise ConfigError("--rate is required (requests/s, > 0) unless --trace gives the arrival times")
        if self.ramp_lengths is not None and not self.ramp:
            raise ConfigError("--ramp-lengths applies to --ramp only")
        if self.ramp and self.endpoint == "http" and not self.status_target:
            raise ConfigError("--ramp polls the cluster status over gRPC: with --endpoint http, "
                              "give --status-target GRPC_HOST:PORT")

    def lengths(self) -> tuple[int, int]:
        """(prompt, output) tokens of synthetic requests, defaults filled in."""
        return (self.prompt_tokens or DEFAULT_PROMPT_TOKENS, self.output_tokens or DEFAULT_OUTPUT_TOKENS)

    def public_dict(self) -> dict[str, Any]:
        """The config as written into the report: the API key redacted."""
        values = asdict(self)
        values["api_key"] = "<redacted>" if self.api_key else None
        return values


def _parse(parser, text: str, flag: str, *extra):
    try:
        return parser(text, *extra)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _parse_id_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(",")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() or int(low) >= int(high):
        raise ConfigError(f"--token-id-range is LOW,HIGH with 0 <= LOW < HIGH (HIGH exclusive), got {text!r}")
    return int(low), int(high)


def _positive(flag: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{flag} must be > 0, got {value}")


def _check_target(target: str, flag: str, endpoint: str) -> None:
    if endpoint not in ENDPOINT_NAMES:
        raise ConfigError(f"--endpoint must be one of {', '.join(ENDPOINT_NAMES)}, got {endpoint!r}")
    address = target.split("://", 1)[1] if (endpoint == "http" and "://" in target) else target
    host, sep, port = address.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} must be HOST:PORT, got {target!r}")
