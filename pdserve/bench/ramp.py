"""The ramp: an offered rate that rises then falls, in equal phases.

`pdserve bench --ramp --rate R --ramp-shape 0.5,2,4,2,0.5` offers 0.5R, 2R, 4R, 2R, 0.5R requests/s in
five phases of equal length, optionally with each phase's own prompt/output lengths (`--ramp-lengths
1024x8,64x256,...`) so one phase loads the prefill tier and another the decode tier. Pure data: the
status polling during a ramp lives in `replicas`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SHAPE = (0.5, 2.0, 4.0, 2.0, 0.5)


@dataclass(frozen=True)
class PhaseLengths:
    """Prompt and output tokens of every request in one phase."""

    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class RampSchedule:
    """base_rate_per_s times one multiplier per phase, each phase `phase_s` long."""

    base_rate_per_s: float
    multipliers: tuple[float, ...]
    phase_s: float

    def __post_init__(self) -> None:
        if self.base_rate_per_s <= 0 or self.phase_s <= 0 or not self.multipliers:
            raise ValueError("a ramp needs a rate > 0, a phase length > 0 and at least one phase")
        if min(self.multipliers) <= 0:
            raise ValueError(f"ramp multipliers must be > 0, got {self.multipliers}")

    @classmethod
    def fitting(cls, base_rate_per_s: float, multipliers: tuple[float, ...], num_requests: int) -> RampSchedule:
        """The schedule whose expected request count is `num_requests` (when no duration is given)."""
        phase_s = num_requests / (base_rate_per_s * sum(multipliers))
        return cls(base_rate_per_s, multipliers, phase_s)

    @property
    def rates_per_s(self) -> tuple[float, ...]:
        return tuple(self.base_rate_per_s * m for m in self.multipliers)

    @property
    def duration_s(self) -> float:
        return self.phase_s * len(self.multipliers)

    @property
    def expected_requests(self) -> float:
        return sum(self.rates_per_s) * self.phase_s

    def phase_at(self, t_s: float) -> int:
        """The phase running at `t_s` (the last one after the end, the first one before 0)."""
        return min(max(int(t_s // self.phase_s), 0), len(self.multipliers) - 1)

    def rate_at(self, t_s: float) -> float:
        """The offered rate at `t_s`; 0 after the ramp ends."""
        if t_s >= self.duration_s:
            return 0.0
        return self.rates_per_s[self.phase_at(t_s)]


def parse_shape(text: str) -> tuple[float, ...]:
    """'0.5,2,4' -> (0.5, 2.0, 4.0); raises ValueError on anything else."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"ramp shape must be comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"ramp shape multipliers must be > 0, got {text!r}")
    return values


def parse_lengths(text: str, num_phases: int) -> tuple[PhaseLengths, ...]:
    """'1024x8,64x256' -> one PhaseLengths per phase (a single entry applies to every phase)."""
    entries = []
    for part in text.split(","):
        prompt, sep, output = part.strip().lower().partition("x")
        if not sep or not prompt.isdigit() or not output.isdigit() or int(prompt) < 1 or int(output) < 1:
            raise ValueError(f"ramp lengths are PROMPTxOUTPUT token counts >= 1, got {part!r}")
        entries.append(PhaseLengths(int(prompt), int(output)))
    if len(entries) == 1:
        return tuple(entries) * num_phases
    if len(entries) != num_phases:
        raise ValueError(f"{len(entries)} ramp lengths for {num_phases} phases: give one, or one per phase")
    return tuple(entries)
