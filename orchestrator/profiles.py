"""Engine profiles: how fast one engine computes prompts and decode steps on its hardware.

A profile is a versioned YAML (or JSON) file that `pdserve profile` writes and that the planner, the
simulator and the timing engine read. It holds measured points, or user-given coefficients
(DistServe style), per phase:

```yaml
version: 1
model: smollm2-135m-instruct
hardware: {name: cpu-2core, kind: cpu, count: 2, description: "x86_64, AVX-512"}
block_size: 32
kv_bytes_per_token: 23040
kv_capacity_tokens: 43690          # optional: KV tokens one engine holds
num_layers: 30                     # optional: KV layers (how the timing engine splits a token's KV)
prefill:                           # one of `points` (3 or more) or `coefficients`
  points:
    - {prompt_tokens: 128, batch_size: 1, ttft_ms: 160.0}   # batch_size prompts of this length in one step
decode:
  points:
    - {batch_size: 16, total_context_tokens: 1600, step_ms: 61.0}
```

Step-time models fitted from the points by non-negative least squares (numpy):
- prefill step ms = a + b * sum(len) + c * sum(len^2) over the prompts of the step;
- decode step ms  = a + b * sum(context) + c * batch.

`num_layers` (optional, additive within version 1): how many layers `kv_bytes_per_token` is spread
over; it must divide `kv_bytes_per_token`. When absent, `EngineProfile.num_kv_layers` picks
`DEFAULT_NUM_LAYERS` (32, a typical depth) or the largest count below it that divides the bytes.

`interference` (optional, additive within version 1): how much the two tiers of a disaggregated
cluster slow each other when they share a host, measured by `pdserve profile --target` per prompt
length (`InterferencePoint`):

```yaml
interference:
  points:
    - {prompt_tokens: 128, decode_step_ms_alone: 40.0, decode_step_ms_during_prefill: 46.0,
       decode_steps_during_prefill: 12, prefill_ms_alone: 260.0, prefill_ms_during_decode: 300.0}
```

`EngineProfile.decode_slowdown(prefill_tokens)` and `prefill_slowdown(prompt_tokens)` give the ratios
(during / alone), linear in the prompt length between points and held beyond them; 1.0 without points.

Life of a profile: 1. `pdserve profile` measures points and calls `EngineProfile.from_points(...).save(path)`;
2. readers call `EngineProfile.load(path)`, which validates the file (pydantic) and fits the coefficients
once; 3. the predictors (`predict_prefill_ms`, `predict_decode_step_ms`, ...) are pure.
May import numpy, pydantic, yaml and `orchestrator.errors`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import ConfigError

PROFILE_VERSION = 1
MIN_POINTS = 3
DEFAULT_NUM_LAYERS = 32  # a typical depth, when a profile does not say how many layers its KV spans
EXAMPLE_PROFILE = Path(__file__).resolve().parent / "data" / "profiles" / "smollm2-135m-cpu.yaml"  # measured
# Synthetic SmolLM2-shaped points that stay fixed when the example is re-measured (for tests tuned on them).
SYNTHETIC_PROFILE = EXAMPLE_PROFILE.with_name("smollm2-135m-cpu-synthetic.yaml")


# --- the file format (pydantic: validation and clear errors) -------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HardwareInfo(_Strict):
    """What the profile was measured on."""

    name: str = Field(..., min_length=1, description="Short name, e.g. `h100-sxm` or `cpu-2core`.")
    kind: str = Field(..., min_length=1, description="`cpu`, `gpu` or another accelerator family.")
    count: int = Field(1, ge=1, description="Devices (GPUs, or CPU cores) one engine uses.")
    description: str = Field("", description="Free text: CPU model, driver, engine version.")


class PrefillPoint(_Strict):
    """One measured prefill step: `batch_size` prompts of `prompt_tokens` each, computed together."""

    prompt_tokens: int = Field(..., ge=1, description="Tokens of each prompt.")
    batch_size: int = Field(1, ge=1, description="Prompts in the step (1: time to first token of one request).")
    ttft_ms: float = Field(..., gt=0, description="Time of the step, in milliseconds.")


class DecodePoint(_Strict):
    """One measured decode step."""

    batch_size: int = Field(..., ge=1, description="Requests decoding in the step.")
    total_context_tokens: int = Field(..., ge=0, description="Context tokens of all requests of the step together.")
    step_ms: float = Field(..., gt=0, description="Time of the step, in milliseconds.")


class PrefillCoefficients(_Strict):
    """prefill step ms = a_ms + b_ms_per_token * sum(len) + c_ms_per_token_sq * sum(len^2)."""

    a_ms: float = Field(..., ge=0)
    b_ms_per_token: float = Field(..., ge=0)
    c_ms_per_token_sq: float = Field(..., ge=0)

    @model_validator(mode="after")
    def _positive(self) -> PrefillCoefficients:
        if self.a_ms + self.b_ms_per_token + self.c_ms_per_token_sq <= 0:
            raise ValueError("prefill coefficients are all zero: a prompt would take no time")
        return self


class DecodeCoefficients(_Strict):
    """decode step ms = a_ms + b_ms_per_context_token * sum(context) + c_ms_per_request * batch."""

    a_ms: float = Field(..., ge=0)
    b_ms_per_context_token: float = Field(..., ge=0)
    c_ms_per_request: float = Field(..., ge=0)

    @model_validator(mode="after")
    def _positive(self) -> DecodeCoefficients:
        if self.a_ms + self.c_ms_per_request <= 0:
            raise ValueError("decode coefficients a_ms and c_ms_per_request are both zero: a step would take no time")
        return self


class InterferencePoint(_Strict):
    """The tiers on one host, measured at one prompt length: a decode stream's step with the prefill tier
    idle and while the prefill engine computes a `prompt_tokens` prompt; that prompt's time to first
    token with the decode tier idle and while the decode stream runs."""

    prompt_tokens: int = Field(..., ge=1, description="Tokens of the prompt the prefill tier computed.")
    decode_step_ms_alone: float = Field(..., gt=0, description="Median decode step, the prefill tier idle.")
    decode_step_ms_during_prefill: float = Field(..., gt=0, description="Median decode step of the same stream "
                                                 "while the prefill tier computed the prompt.")
    decode_steps_during_prefill: int = Field(0, ge=0, description="Decode steps that median is taken over.")
    prefill_ms_alone: float = Field(..., gt=0, description="Median time to first token of the prompt, decode idle.")
    prefill_ms_during_decode: float = Field(..., gt=0, description="Median time to first token of the prompt while "
                                            "the decode stream ran.")

    @property
    def decode_slowdown(self) -> float:
        """How many times longer a decode step takes while the prefill tier computes."""
        return self.decode_step_ms_during_prefill / self.decode_step_ms_alone

    @property
    def prefill_slowdown(self) -> float:
        """How many times longer the prompt takes while the decode tier steps."""
        return self.prefill_ms_during_decode / self.prefill_ms_alone


class InterferenceSection(_Strict):
    points: list[InterferencePoint] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _distinct_lengths(self) -> InterferenceSection:
        lengths = [p.prompt_tokens for p in self.points]
        if len(set(lengths)) != len(lengths):
            raise ValueError(f"one interference point per prompt length, got lengths {lengths}")
        return self


class PrefillSection(_Strict):
    points: list[PrefillPoint] = Field(default_factory=list)
    coefficients: PrefillCoefficients | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PrefillSection:
        _check_one_source(self.points, self.coefficients)
        return self


class DecodeSection(_Strict):
    points: list[DecodePoint] = Field(default_factory=list)
    coefficients: DecodeCoefficients | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DecodeSection:
        _check_one_source(self.points, self.coefficients)
        return self


def _check_one_source(points: Sequence[Any], coefficients: Any) -> None:
    if points and coefficients is not None:
        raise ValueError("give either points (measured) or coefficients (user-given), not both")
    if not points and coefficients is None:
        raise ValueError("give points (measured) or coefficients (user-given)")
    if points and len(points) < MIN_POINTS:
        raise ValueError(f"at least {MIN_POINTS} points are needed to fit the step-time model, got {len(points)}")


class ProfileFile(_Strict):
    """The whole file, as validated."""

    version: int = Field(..., description="Format version; this code reads version 1.")
    model: str = Field(..., min_length=1)
    hardware: HardwareInfo
    block_size: int = Field(..., ge=1)
    kv_bytes_per_token: int = Field(..., ge=1, description="KV cache bytes of one token, all layers.")
    kv_capacity_tokens: int | None = Field(None, ge=1, description="KV cache tokens one engine holds.")
    num_layers: int | None = Field(None, ge=1, le=1024, description="Layers the KV of a token spans (must divide "
                                   "kv_bytes_per_token); absent: see `EngineProfile.num_kv_layers`.")
    prefill: PrefillSection
    decode: DecodeSection
    interference: InterferenceSection | None = Field(None, description="How the tiers slow each other on a shared "
                                                     "host (`pdserve profile --target` of a disaggregated cluster).")

    @model_validator(mode="after")
    def _version(self) -> ProfileFile:
        if self.version != PROFILE_VERSION:
            raise ValueError(f"profile version {self.version} is not supported (this pdserve reads version {PROFILE_VERSION})")
        return self

    @model_validator(mode="after")
    def _layers_divide_bytes(self) -> ProfileFile:
        if self.num_layers is not None and self.kv_bytes_per_token % self.num_layers:
            raise ValueError(f"num_layers {self.num_layers} does not divide kv_bytes_per_token {self.kv_bytes_per_token}: "
                             "every layer holds the same share of a token's KV")
        return self


# --- the profile ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineProfile:
    """A validated profile with its fitted step-time coefficients. Build with `load`, `from_points`
    or `from_coefficients`; the predictors are pure."""

    model: str
    hardware: HardwareInfo
    block_size: int
    kv_bytes_per_token: int
    prefill_coefficients: PrefillCoefficients
    decode_coefficients: DecodeCoefficients
    prefill_points: tuple[PrefillPoint, ...] = ()
    decode_points: tuple[DecodePoint, ...] = ()
    kv_capacity_tokens: int | None = None
    version: int = PROFILE_VERSION
    num_layers: int | None = None
    interference: tuple[InterferencePoint, ...] = ()  # sorted by prompt length

    # construction

    @classmethod
    def from_points(
        cls,
        *,
        model: str,
        hardware: HardwareInfo,
        block_size: int,
        kv_bytes_per_token: int,
        prefill_points: Sequence[PrefillPoint],
        decode_points: Sequence[DecodePoint],
        kv_capacity_tokens: int | None = None,
        num_layers: int | None = None,
        interference: Sequence[InterferencePoint] = (),
    ) -> EngineProfile:
        """Validate measured points and fit both step-time models; `interference`, when measured, is kept.

        Returns the profile. Raises ConfigError when the points are too few or cannot determine a fit.
        """
        section = {"prefill": {"points": [p.model_dump() for p in prefill_points]},
                   "decode": {"points": [p.model_dump() for p in decode_points]}}
        if interference:
            section["interference"] = {"points": [p.model_dump() for p in interference]}
        return cls._from_file(_validate(_file_dict(model, hardware, block_size, kv_bytes_per_token,
                                                   kv_capacity_tokens, section, num_layers), "measured points"))

    @classmethod
    def from_coefficients(
        cls,
        *,
        model: str,
        hardware: HardwareInfo,
        block_size: int,
        kv_bytes_per_token: int,
        prefill: PrefillCoefficients,
        decode: DecodeCoefficients,
        kv_capacity_tokens: int | None = None,
        num_layers: int | None = None,
    ) -> EngineProfile:
        """A profile from user-given coefficients (no measured points). Raises ConfigError if invalid."""
        section = {"prefill": {"coefficients": prefill.model_dump()}, "decode": {"coefficients": decode.model_dump()}}
        return cls._from_file(_validate(_file_dict(model, hardware, block_size, kv_bytes_per_token,
                                                   kv_capacity_tokens, section, num_layers), "coefficients"))

    @classmethod
    def load(cls, path: Path | str) -> EngineProfile:
        """Read and validate a profile file (YAML or JSON), fit its points.

        Returns the profile. Raises ConfigError naming the file and every problem in it.
        """
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read profile {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)  # JSON is YAML
        except yaml.YAMLError as exc:
            raise ConfigError(f"profile {path} is neither valid YAML nor JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"profile {path} must hold a mapping at the top level, got {type(data).__name__}")
        return cls._from_file(_validate(data, str(path)), str(path))

    @classmethod
    def _from_file(cls, spec: ProfileFile, source: str = "profile") -> EngineProfile:
        prefill = spec.prefill.coefficients or fit_prefill(spec.prefill.points, source)
        decode = spec.decode.coefficients or fit_decode(spec.decode.points, source)
        return cls(
            model=spec.model, hardware=spec.hardware, block_size=spec.block_size,
            kv_bytes_per_token=spec.kv_bytes_per_token, prefill_coefficients=prefill, decode_coefficients=decode,
            prefill_points=tuple(spec.prefill.points), decode_points=tuple(spec.decode.points),
            kv_capacity_tokens=spec.kv_capacity_tokens, version=spec.version, num_layers=spec.num_layers,
            interference=tuple(sorted(spec.interference.points, key=lambda p: p.prompt_tokens)) if spec.interference else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """The file contents: points when the profile was measured, coefficients when user-given."""
        prefill = ({"points": [p.model_dump() for p in self.prefill_points]} if self.prefill_points
                   else {"coefficients": self.prefill_coefficients.model_dump()})
        decode = ({"points": [p.model_dump() for p in self.decode_points]} if self.decode_points
                  else {"coefficients": self.decode_coefficients.model_dump()})
        sections: dict[str, Any] = {"prefill": prefill, "decode": decode}
        if self.interference:
            sections["interference"] = {"points": [p.model_dump() for p in self.interference]}
        return _file_dict(self.model, self.hardware, self.block_size, self.kv_bytes_per_token,
                          self.kv_capacity_tokens, sections, self.num_layers)

    def save(self, path: Path | str) -> None:
        """Write the profile: JSON when `path` ends in `.json`, YAML otherwise. Raises ConfigError on I/O."""
        path = Path(path)
        data = self.to_dict()
        text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
        try:
            path.write_text(text)
        except OSError as exc:
            raise ConfigError(f"cannot write profile {path}: {exc.strerror}") from None

    @property
    def num_kv_layers(self) -> int:
        """Layers a token's KV spans: `num_layers` from the file, else `DEFAULT_NUM_LAYERS` or the largest
        smaller count that divides `kv_bytes_per_token` (1 at worst)."""
        if self.num_layers is not None:
            return self.num_layers
        return next(n for n in range(DEFAULT_NUM_LAYERS, 0, -1) if self.kv_bytes_per_token % n == 0)

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """KV bytes of one token in one layer."""
        return self.kv_bytes_per_token // self.num_kv_layers

    # prediction

    def predict_prefill_ms(self, prompt_tokens_per_request: Sequence[int]) -> float:
        """Time in ms of one prefill step computing these prompts together (one length per request).

        Returns 0 for an empty step. Raises ValueError on a negative length.
        """
        if not prompt_tokens_per_request:
            return 0.0
        lengths = np.asarray(prompt_tokens_per_request, dtype=float)
        if (lengths < 0).any():
            raise ValueError("prompt lengths must be >= 0")
        k = self.prefill_coefficients
        return k.a_ms + k.b_ms_per_token * float(lengths.sum()) + k.c_ms_per_token_sq * float((lengths**2).sum())

    def predict_decode_step_ms(self, batch_size: int, total_context_tokens: int) -> float:
        """Time in ms of one decode step of `batch_size` requests whose contexts sum to `total_context_tokens`.

        Returns 0 for an empty batch. Raises ValueError on negative arguments.
        """
        if batch_size < 0 or total_context_tokens < 0:
            raise ValueError("batch_size and total_context_tokens must be >= 0")
        if batch_size == 0:
            return 0.0
        k = self.decode_coefficients
        return k.a_ms + k.b_ms_per_context_token * total_context_tokens + k.c_ms_per_request * batch_size

    def prefill_tokens_per_s(self, prompt_len: int) -> float:
        """Prompt tokens per second one engine computes, prompts of `prompt_len` tokens one at a time."""
        if prompt_len < 1:
            raise ValueError("prompt_len must be >= 1")
        return prompt_len * 1000.0 / self.predict_prefill_ms([prompt_len])

    def decode_tokens_per_s(self, batch: int, context: int) -> float:
        """Tokens per second one engine generates with `batch` requests of `context` tokens each."""
        if batch < 1 or context < 0:
            raise ValueError("batch must be >= 1 and context >= 0")
        return batch * 1000.0 / self.predict_decode_step_ms(batch, batch * context)

    def decode_slowdown(self, prefill_tokens: int) -> float:
        """How many times longer a decode step takes while the prefill tier, on the same host, computes a
        prompt of `prefill_tokens` tokens: the measured ratio, linear in the prompt length between the
        interference points and held beyond them. 1.0 when the profile has no interference points."""
        return self._interpolate(prefill_tokens, [p.decode_slowdown for p in self.interference])

    def prefill_slowdown(self, prompt_tokens: int) -> float:
        """How many times longer a prompt of `prompt_tokens` takes while the decode tier, on the same
        host, steps; interpolated as `decode_slowdown`. 1.0 without interference points."""
        return self._interpolate(prompt_tokens, [p.prefill_slowdown for p in self.interference])

    def _interpolate(self, prompt_tokens: int, factors: list[float]) -> float:
        if not factors:
            return 1.0
        return float(np.interp(prompt_tokens, [p.prompt_tokens for p in self.interference], factors))

    def kv_bytes(self, tokens: int) -> int:
        """KV cache bytes of `tokens` tokens, rounded up to whole blocks."""
        blocks = -(-tokens // self.block_size)
        return blocks * self.block_size * self.kv_bytes_per_token


# --- fitting -------------------------------------------------------------------------------------------


def fit_prefill(points: Sequence[PrefillPoint], source: str = "profile") -> PrefillCoefficients:
    """Fit prefill ms = a + b*sum(len) + c*sum(len^2) by non-negative least squares.

    Returns the coefficients. Raises ConfigError when the points cannot determine them.
    """
    rows = [(1.0, p.batch_size * p.prompt_tokens, p.batch_size * p.prompt_tokens**2) for p in points]
    a, b, c = _fit_nonnegative(np.array(rows, float), np.array([p.ttft_ms for p in points]), "prefill", source)
    return PrefillCoefficients(a_ms=a, b_ms_per_token=b, c_ms_per_token_sq=c)


def fit_decode(points: Sequence[DecodePoint], source: str = "profile") -> DecodeCoefficients:
    """Fit decode ms = a + b*sum(context) + c*batch by non-negative least squares.

    Returns the coefficients. Raises ConfigError when the points cannot determine them.
    """
    rows = [(1.0, p.total_context_tokens, p.batch_size) for p in points]
    a, b, c = _fit_nonnegative(np.array(rows, float), np.array([p.step_ms for p in points]), "decode", source)
    return DecodeCoefficients(a_ms=a, b_ms_per_context_token=b, c_ms_per_request=c)


def _fit_nonnegative(x: np.ndarray, y: np.ndarray, phase: str, source: str) -> tuple[float, float, float]:
    """Least squares of the relative error with every coefficient >= 0 (a step never gets faster with
    more work). Relative, because measured times span orders of magnitude: absolute residuals would let
    the longest steps decide the fit and leave short prompts badly predicted.

    With three unknowns the exact answer is the best of the unconstrained fits over every subset of the
    terms that comes out non-negative (the NNLS optimum is such a fit on its support).
    """
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise ConfigError(f"{source}: the {phase} points cannot determine the step-time model "
                          f"(vary {'the prompt length' if phase == 'prefill' else 'both batch size and context'} "
                          f"over at least {MIN_POINTS} distinct values)")
    x, y = x / y[:, None], np.ones_like(y)  # rows weighted by 1/time: relative residuals
    scale = np.abs(x).max(axis=0)  # columns span 1 .. 1e7: scale for a well-conditioned solve
    xs = x / scale
    best: tuple[float, np.ndarray] | None = None
    for size in range(x.shape[1], 0, -1):
        for cols in itertools.combinations(range(x.shape[1]), size):
            coef, *_ = np.linalg.lstsq(xs[:, cols], y, rcond=None)
            if (coef < -1e-12).any():
                continue
            full = np.zeros(x.shape[1])
            full[list(cols)] = np.maximum(coef, 0.0)
            sse = float(((xs @ full - y) ** 2).sum())
            if best is None or sse < best[0] - 1e-12:
                best = (sse, full)
    assert best is not None  # the intercept-only fit of positive times is always non-negative
    a, b, c = (best[1] / scale).tolist()
    return a, b, c


def _file_dict(model: str, hardware: HardwareInfo, block_size: int, kv_bytes_per_token: int,
               kv_capacity_tokens: int | None, sections: dict[str, Any], num_layers: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"version": PROFILE_VERSION, "model": model, "hardware": hardware.model_dump(),
                            "block_size": block_size, "kv_bytes_per_token": kv_bytes_per_token}
    if kv_capacity_tokens is not None:
        data["kv_capacity_tokens"] = kv_capacity_tokens
    if num_layers is not None:
        data["num_layers"] = num_layers
    data.update(sections)
    return data


def _validate(data: dict[str, Any], source: str) -> ProfileFile:
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid profile {source}:\n" + "\n".join(lines)) from None


__all__ = [
    "DEFAULT_NUM_LAYERS",
    "EXAMPLE_PROFILE",
    "PROFILE_VERSION",
    "SYNTHETIC_PROFILE",
    "DecodeCoefficients",
    "DecodePoint",
    "EngineProfile",
    "HardwareInfo",
    "InterferencePoint",
    "PrefillCoefficients",
    "PrefillPoint",
    "ProfileFile",
    "fit_decode",
    "fit_prefill",
]
