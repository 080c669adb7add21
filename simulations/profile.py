"""Measured step times: a `pdserve profile` file (`orchestrator.profiles.EngineProfile`) as a timing source,
and the profile the planner gets of a simulated engine.

- `load_profile(path, kv_tokens)`: read and validate a profile for the simulator; a bad file, or one
  without a KV capacity when none is given, is a ConfigError that names the file and what to fix.
- `ProfileTiming`: an engine's steps take what the profile predicts (`predict_prefill_ms`,
  `predict_decode_step_ms`: the same predictors the planner and the timing engine use); its KV cache
  holds the profile's `kv_capacity_tokens`.
- `profile_of(timing, ...)`: what `pdserve profile` would measure on a simulated engine (TTFT vs prompt
  length and batch, decode step vs batch and context, KV capacity), as an `EngineProfile` the live
  planner reads. With `ProfileTiming` it is the file's own profile; for roofline or coefficient timing
  it is fitted from points taken on the model, exactly as a measured profile is fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.profiles import DecodePoint, EngineProfile, HardwareInfo, PrefillPoint
from simulations.timing import BaseTiming, Chunk, Line

# The grid `profile_of` measures a simulated engine on (like `pdserve profile`'s defaults, wider).
PROFILE_PROMPT_LENGTHS = (32, 128, 512, 1024, 2048, 4096, 8192)
PROFILE_DECODE_BATCHES = (1, 4, 16, 64, 256)
PROFILE_DECODE_CONTEXTS = (128, 1024, 4096)


def load_profile(path: str | Path, kv_tokens: int | None = None) -> EngineProfile:
    """The profile at `path`, checked for what the simulator needs.

    Raises ConfigError: the file is missing, unreadable, not a valid profile (every problem listed by
    `EngineProfile.load`), or says nothing of the KV capacity while `kv_tokens` is not given either.
    """
    if not Path(path).is_file():
        raise ConfigError(f"profile file not found: {path} (write one with `pdserve profile --out FILE`)")
    profile = EngineProfile.load(path)
    if kv_tokens is None and profile.kv_capacity_tokens is None:
        raise ConfigError(f"profile {path} has no kv_capacity_tokens: add it to the file, or give --kv-tokens "
                          "(KV cache tokens one engine holds)")
    return profile


@dataclass(frozen=True)
class ProfileTiming(BaseTiming):
    """Step times of one engine from a measured profile.

    A chunked-prefill step costs the profile's prefill time of its chunks (each chunk counted by its new
    tokens, as the profile's model is fitted) plus the decode step of the requests decoding in it, with
    the fixed cost counted once: the rule the timing engine follows too.
    """

    profile: EngineProfile
    kv_tokens: int | None = None  # overrides the profile's capacity

    def prefill_ms(self, chunks: Sequence[Chunk]) -> float:
        return self.profile.predict_prefill_ms([new for new, _ in chunks])

    def step_overhead_ms(self) -> float:
        return min(self.profile.prefill_coefficients.a_ms, self.profile.decode_coefficients.a_ms)

    def decode_lines(self, batch: int, sum_context: int) -> tuple[Line, ...]:
        # Each step adds `batch` tokens of context: step j = predict(batch, sum_context) + b * batch * j.
        slope = self.profile.decode_coefficients.b_ms_per_context_token * batch
        return ((self.profile.predict_decode_step_ms(batch, sum_context), slope),)

    def kv_capacity_tokens(self) -> int:
        return self.kv_tokens if self.kv_tokens is not None else int(self.profile.kv_capacity_tokens or 0)


def profile_of(timing: BaseTiming, model: str, kv_bytes_per_token: int, max_num_seqs: int,
               max_batched_tokens: int, hardware: str = "simulated") -> EngineProfile:
    """The profile `pdserve profile` would write for an engine with these step times.

    A `ProfileTiming` engine is its own profile. Otherwise prompts of `PROFILE_PROMPT_LENGTHS` (one at a
    time, and four together) and decode batches of `PROFILE_DECODE_BATCHES` x `PROFILE_DECODE_CONTEXTS`
    are timed, within the engine's batch and token limits and its KV cache, and fitted by
    `EngineProfile.from_points`. Raises ConfigError when the limits leave too few points to fit.
    """
    if isinstance(timing, ProfileTiming):
        return timing.profile
    capacity = timing.kv_capacity_tokens()
    lengths = [n for n in PROFILE_PROMPT_LENGTHS if n <= min(max_batched_tokens, capacity)]
    prefill = [PrefillPoint(prompt_tokens=n, batch_size=1, ttft_ms=timing.prefill_ms([(n, 0)])) for n in lengths]
    prefill += [PrefillPoint(prompt_tokens=n, batch_size=4, ttft_ms=timing.prefill_ms([(n, 0)] * 4))
                for n in lengths if 4 * n <= min(max_batched_tokens, capacity) and max_num_seqs >= 4]
    decode = [DecodePoint(batch_size=b, total_context_tokens=b * c, step_ms=timing.decode_ms(b, b * c))
              for b in PROFILE_DECODE_BATCHES for c in PROFILE_DECODE_CONTEXTS
              if b <= max_num_seqs and b * c <= capacity]
    return EngineProfile.from_points(model=model, hardware=HardwareInfo(name=hardware, kind="simulated"),
                                     block_size=32, kv_bytes_per_token=kv_bytes_per_token,
                                     prefill_points=prefill, decode_points=decode,
                                     kv_capacity_tokens=capacity or None)
