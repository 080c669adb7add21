"""Shared factories of the worker tests (fixtures only: conftest modules of several test folders share
one name): a profile with known coefficients, a fake clock, timing engines that are shut down after."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.config import EngineConfig, ModelConfig
from orchestrator.profiles import DecodeCoefficients, EngineProfile, HardwareInfo, PrefillCoefficients

PREFILL = (20.0, 0.5, 1e-4)  # a_ms, b_ms_per_token, c_ms_per_token_sq
DECODE = (10.0, 0.002, 0.8)  # a_ms, b_ms_per_context_token, c_ms_per_request


def coefficient_profile(*, prefill=PREFILL, decode=DECODE, kv_capacity_tokens: int | None = 8192,
                        kv_bytes_per_token: int = 1536, num_layers: int | None = 4, block_size: int = 16) -> EngineProfile:
    """A profile from known coefficients (small KV: 384 bytes per token and layer, 4 layers)."""
    return EngineProfile.from_coefficients(
        model="test-model", hardware=HardwareInfo(name="test", kind="cpu", count=1), block_size=block_size,
        kv_bytes_per_token=kv_bytes_per_token,
        prefill=PrefillCoefficients(a_ms=prefill[0], b_ms_per_token=prefill[1], c_ms_per_token_sq=prefill[2]),
        decode=DecodeCoefficients(a_ms=decode[0], b_ms_per_context_token=decode[1], c_ms_per_request=decode[2]),
        kv_capacity_tokens=kv_capacity_tokens, num_layers=num_layers)


class FakeClock:
    """Simulated time for the engine's steps: `sleep` lets the loop run, then advances `now` at once.
    `on_sleep(clock)`, if set, runs at every sleep: what the engine looks like in the middle of a step."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep(self)
        self.sleeps.append(seconds)
        for _ in range(3):  # whoever the step before woke reads the time that step ended
            await asyncio.sleep(0)
        self.now += seconds


def engine_config(**changes) -> EngineConfig:
    """An engine config for the timing engine (its profile is passed to the engine directly)."""
    return EngineConfig(kind="timing", profile="unused.yaml", block_size=16, **changes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_profile():
    """`make_profile(**changes)`: a profile from known coefficients (see `coefficient_profile`)."""
    return coefficient_profile


@pytest.fixture
async def make_engine():
    """`await make_engine(profile=None, kv=False, clock=None, model=None, **engine_changes)`: a started
    TimingEngine with `.info` set (kv=True: disaggregated, or a dict of KV settings; clock: a FakeClock,
    by default a fresh one: steps take no real time). Every one is shut down after the test."""
    from workers.engine.timing import TimingEngine

    engines = []

    async def make(*, profile=None, kv=False, clock=None, model=None, worker_id=None, **changes):
        settings = None
        if kv:
            settings = {"transport": "zmq", "host": "127.0.0.1", "timeout_s": 5.0}
            settings.update(kv if isinstance(kv, dict) else {})
        clock = clock or FakeClock()
        engine = TimingEngine(model or ModelConfig(max_model_len=4096), engine_config(**changes),
                              worker_id=worker_id or f"w{len(engines)}", kv=settings,
                              profile=profile or coefficient_profile(), clock=clock, sleep=clock.sleep)
        engines.append(engine)
        engine.info = await engine.start()
        return engine

    yield make
    for engine in engines:
        await engine.shutdown()
