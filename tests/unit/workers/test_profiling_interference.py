"""Measuring how the tiers of a cluster slow each other on a shared host: a fake two-tier cluster whose
decode steps take longer while a prompt is computed (and prompts while a stream decodes) is measured
back to its factors; the window arithmetic on its own; the CLI's flags."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from orchestrator.profiles import HardwareInfo
from pdserve.cli import main
from workers.engine.base import EngineInfo, EngineOutput
from workers.profiling import (
    ProfileGrid,
    ProfileTarget,
    _Prompts,
    compute_interference,
    measure_interference,
    profile_engine,
)

DECODE_MS, PREFILL_MS_PER_TOKEN = 40.0, 2.0


class EventClock:
    """Time for several concurrent fake requests: `await until(t)` resumes the waiters in time order,
    each once every task has reached its next wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self._waiting: list = []
        self._order = itertools.count()
        self._driver: asyncio.Task | None = None

    def __call__(self) -> float:
        return self.now

    async def until(self, t: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (t, next(self._order), future))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        await future

    async def sleep(self, seconds: float) -> None:
        await self.until(self.now + seconds)

    async def _drive(self) -> None:
        while self._waiting:
            for _ in range(30):  # everyone else reaches their next wait first
                await asyncio.sleep(0)
            t, _, future = heapq.heappop(self._waiting)
            self.now = max(self.now, t)
            future.set_result(None)


class SharedHostCluster:
    """Prefill and decode tiers on one host, seen as one engine (as `ClusterEngine` shows a cluster): a
    prompt takes `PREFILL_MS_PER_TOKEN` per token, `prefill_factor` times that when a stream decodes as
    it starts; a decode step takes `DECODE_MS`, `decode_factor` times that when a prompt is being
    computed as it starts. Requests with max_tokens > 1 are prefilled, then decode."""

    def __init__(self, clock: EventClock, decode_factor: float, prefill_factor: float) -> None:
        self.clock, self.decode_factor, self.prefill_factor = clock, decode_factor, prefill_factor
        self.computing = self.decoding = 0

    async def _prefill(self, length: int) -> None:
        self.computing += 1
        slow = self.prefill_factor if self.decoding else 1.0
        await self.clock.until(self.clock.now + length * PREFILL_MS_PER_TOKEN * slow / 1000.0)
        self.computing -= 1

    async def generate(self, request):
        await self._prefill(len(request.prompt_ids))
        yield EngineOutput([300], request.max_tokens == 1, "length" if request.max_tokens == 1 else None)
        self.decoding += 1
        try:
            for i in range(1, request.max_tokens):
                slow = self.decode_factor if self.computing else 1.0
                await self.clock.until(self.clock.now + DECODE_MS * slow / 1000.0)
                yield EngineOutput([301], i == request.max_tokens - 1, "length" if i == request.max_tokens - 1 else None)
        finally:
            self.decoding -= 1


GRID = ProfileGrid(prompt_lengths=(32, 128, 512), prefill_batches=(), decode_batch_sizes=(1, 2),
                   decode_context_lengths=(32, 64), decode_steps=5, repeats=1,
                   interference_prompt_lengths=(128, 512), interference_rounds=4)


async def test_a_decode_step_beside_a_prompt_is_measured_slower_by_the_hosts_factor():
    clock = EventClock()
    engine = SharedHostCluster(clock, decode_factor=1.5, prefill_factor=1.2)
    point = await measure_interference(engine, _Prompts(), 512, GRID, DECODE_MS, 4096, clock, clock.sleep)
    assert point is not None
    assert point.decode_step_ms_alone == pytest.approx(DECODE_MS)
    assert point.decode_slowdown == pytest.approx(1.5)
    assert point.prefill_ms_alone == pytest.approx(512 * PREFILL_MS_PER_TOKEN)
    assert point.prefill_slowdown == pytest.approx(1.2)
    assert point.decode_steps_during_prefill >= GRID.interference_rounds * 10  # 1.2 s windows of 60 ms steps


async def test_tiers_that_do_not_interfere_measure_factors_of_one():
    clock = EventClock()
    point = await measure_interference(SharedHostCluster(clock, 1.0, 1.0), _Prompts(), 128, GRID, DECODE_MS, 4096, clock, clock.sleep)
    assert point is not None and point.decode_slowdown == pytest.approx(1.0) and point.prefill_slowdown == pytest.approx(1.0)


async def test_a_cluster_profile_carries_its_interference_points():
    clock = EventClock()
    engine = SharedHostCluster(clock, decode_factor=1.25, prefill_factor=1.1)
    info = EngineInfo(max_model_len=4096, block_size=16, num_total_blocks=1000, kv_bytes_per_token=1536)
    profile = await profile_engine(engine, info, ProfileTarget("m", HardwareInfo(name="c", kind="cluster"), 2048, 64),
                                   GRID, clock=clock, sleep=clock.sleep)
    assert [p.prompt_tokens for p in profile.interference] == [128, 512]
    assert profile.decode_slowdown(300) == pytest.approx(1.25) and profile.prefill_slowdown(300) == pytest.approx(1.1)
    without = await profile_engine(engine, info, ProfileTarget("m", HardwareInfo(name="c", kind="cluster"), 2048, 64),
                                   ProfileGrid(**{**GRID.__dict__, "interference_rounds": 0}), clock=clock, sleep=clock.sleep)
    assert without.interference == () and without.decode_slowdown(300) == 1.0


def outputs_every(step_s: float, count: int, start: float = 0.0) -> list[tuple[float, int]]:
    return [(start + i * step_s, 1) for i in range(count)]


def test_gaps_inside_windows_against_gaps_outside_any():
    # 0.1 s steps, except 0.2 s steps within the window [1.0, 2.0]; the gap from 0.95 to 1.05 straddles it.
    times = [0.05 + 0.1 * i for i in range(10)] + [1.05 + 0.2 * i for i in range(5)] + [2.05 + 0.1 * i for i in range(10)]
    point = compute_interference(128, [(t, 1) for t in times], [(1.0, 2.0)], prefill_alone_ms=800.0)
    assert point.decode_step_ms_alone == pytest.approx(100.0)
    assert point.decode_step_ms_during_prefill == pytest.approx(200.0)
    assert point.decode_steps_during_prefill == 4
    assert point.prefill_ms_during_decode == pytest.approx(1000.0) and point.prefill_slowdown == pytest.approx(1.25)


def test_an_output_of_several_tokens_counts_per_token():
    # Inside the window the stream's outputs carry 2 tokens each, 0.2 s apart: 0.1 s per token, as outside.
    outputs = outputs_every(0.1, 10) + [(1.2, 2), (1.4, 2), (1.6, 2), (1.8, 2)] + outputs_every(0.1, 5, start=1.9)
    point = compute_interference(64, outputs, [(1.1, 1.85)], prefill_alone_ms=400.0)
    assert point.decode_step_ms_during_prefill == pytest.approx(100.0) and point.decode_slowdown == pytest.approx(1.0)
    assert point.decode_steps_during_prefill == 3


def test_too_few_gaps_give_no_point():
    assert compute_interference(64, outputs_every(0.1, 20), [], 100.0) is None  # no window
    assert compute_interference(64, outputs_every(0.1, 20), [(0.0, 5.0)], 100.0) is None  # nothing alone


@pytest.mark.parametrize("flags", [["--engine", "timing", "--profile", "x.yaml", "--interference-rounds", "4"],
                                   ["--interference-lengths", "128"],
                                   ["--target", "127.0.0.1:1", "--interference-rounds", "-1"],
                                   ["--target", "127.0.0.1:1", "--interference-lengths", "0,128"]])
def test_cli_refuses_bad_interference_flags(tmp_path, flags, capsys):
    # measured beside a decode stream only through a cluster's API (--target); counts and lengths positive
    assert main(["profile", "--out", str(tmp_path / "o.yaml"), "--no-progress", *flags]) == 2
    assert "error:" in capsys.readouterr().err


def test_through_a_cluster_the_grid_measures_interference_and_warm_decode_steps_by_default():
    import argparse

    from pdserve.cli.profile import _cluster_grid

    unset = argparse.Namespace(decode_steps=None, decode_warmup_steps=None, interference_rounds=None)
    grid = _cluster_grid(ProfileGrid(), unset)
    assert (grid.decode_steps, grid.decode_warmup_steps, grid.interference_rounds) == (32, 32, 6)
    given = argparse.Namespace(decode_steps=8, decode_warmup_steps=0, interference_rounds=0)
    grid = _cluster_grid(ProfileGrid(decode_steps=8), given)
    assert (grid.decode_steps, grid.decode_warmup_steps, grid.interference_rounds) == (8, 0, 0)
    assert ProfileGrid().interference_rounds == 0 and ProfileGrid().decode_warmup_steps == 0  # one engine: off
