"""Measuring how the tiers of a cluster slow each other on a shared host: a fake two-tier cluster whose
decode steps take longer while a prompt is computed (and prompts while a stream decodes) is measured
back to its factors; the window arithmetic on its own; the CLI's flags."""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import statistics

import pytest

from orchestrator.profiles import HardwareInfo
from pdserve.cli import main
from workers.engine.base import EngineInfo, EngineOutput
from workers.profiling import (
    TIER_IDLE_S,
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
    it starts, and `spin_factor` times more when it starts less than `TIER_IDLE_S` after the cluster's
    last output (vLLM's processes busy-wait after their last step); with `drift`, every prompt takes
    that share longer than the one before (a machine whose speed wanders); with `spell` (start, end,
    factor), every prompt and step that starts within it takes `factor` times as long (a slow spell of
    the machine: another tenant, a throttled core). A decode step takes
    `DECODE_MS`, `decode_factor` times that when a prompt is being computed as it starts. Requests with
    max_tokens > 1 are prefilled, then decode. `alone_ms[length]`: prompts computed with no stream
    decoding, in milliseconds."""

    def __init__(self, clock: EventClock, decode_factor: float, prefill_factor: float, spin_factor: float = 1.0,
                 drift: float = 0.0, spell: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> None:
        self.clock, self.decode_factor, self.prefill_factor = clock, decode_factor, prefill_factor
        self.spin_factor, self.drift, self.spell = spin_factor, drift, spell
        self.computing = self.decoding = self.num_prompts = 0
        self.last_output_s = -math.inf
        self.alone_ms: dict[int, list[float]] = {}

    async def _prefill(self, length: int) -> None:
        self.computing += 1
        decoding, spinning = self.decoding > 0, self.clock.now - self.last_output_s < TIER_IDLE_S
        slow = (self.prefill_factor if decoding else 1.0) * (self.spin_factor if spinning else 1.0)
        slow *= (1.0 + self.drift * self.num_prompts) * self._spell()
        self.num_prompts += 1
        started = self.clock.now
        await self.clock.until(self.clock.now + length * PREFILL_MS_PER_TOKEN * slow / 1000.0)
        if not decoding:
            self.alone_ms.setdefault(length, []).append((self.clock.now - started) * 1000.0)
        self.computing -= 1

    def _spell(self) -> float:
        start, end, factor = self.spell
        return factor if start <= self.clock.now < end else 1.0

    def _output(self, token: int, i: int, max_tokens: int) -> EngineOutput:
        self.last_output_s = self.clock.now
        done = i == max_tokens - 1
        return EngineOutput([token], done, "length" if done else None)

    async def generate(self, request):
        await self._prefill(len(request.prompt_ids))
        yield self._output(300, 0, request.max_tokens)
        self.decoding += 1
        try:
            for i in range(1, request.max_tokens):
                slow = (self.decode_factor if self.computing else 1.0) * self._spell()
                await self.clock.until(self.clock.now + DECODE_MS * slow / 1000.0)
                yield self._output(301, i, request.max_tokens)
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


async def test_prompts_alone_and_beside_decoding_interleave():
    # 24 prompts beside decoding (6 s of 256 ms windows), 3 per stream: 8 streams, a lone prompt after
    # the quiet pause before each and after the last.
    class Recording(SharedHostCluster):
        sent: list[tuple[int, int]] = []  # (prompt tokens, max_tokens) in the order sent

        def generate(self, request):
            self.sent.append((len(request.prompt_ids), request.max_tokens))
            return super().generate(request)

    clock = EventClock()
    engine = Recording(clock, decode_factor=1.0, prefill_factor=1.25)
    point = await measure_interference(engine, _Prompts(), 128, GRID, DECODE_MS, 4096, clock, clock.sleep)
    assert point is not None and len(engine.alone_ms[128]) == 9
    order = "".join("s" if max_tokens > 1 else "p" if length == 128 else "?" for length, max_tokens in engine.sent)
    assert order == "psppp" * 8 + "p", order  # p: the 128-token prompt, s: a decode stream


async def test_a_slow_spell_of_the_machine_during_a_third_of_the_measurement_does_not_move_the_factors():
    # The machine runs everything 1.5 times slower for 9 s. Prompts alone and beside decoding interleave,
    # so the spell slows a minority of each, and the medians do not see it.
    clock = EventClock()
    calm = await measure_interference(SharedHostCluster(clock, 1.5, 1.25), _Prompts(), 128, GRID, DECODE_MS, 4096,
                                      clock, clock.sleep)
    clock = EventClock()
    engine = SharedHostCluster(clock, 1.5, 1.25, spell=(4.0, 13.0, 1.5))
    point = await measure_interference(engine, _Prompts(), 128, GRID, DECODE_MS, 4096, clock, clock.sleep)
    assert clock.now > 27.0  # the spell is a third of the measurement
    alone = engine.alone_ms[128]
    assert sum(ms > 1.4 * min(alone) for ms in alone) >= 2  # and slowed some of the lone prompts
    assert point.prefill_slowdown == pytest.approx(calm.prefill_slowdown) == pytest.approx(1.25)
    assert point.decode_slowdown == pytest.approx(calm.decode_slowdown) == pytest.approx(1.5)


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
    point = compute_interference(128, [([(t, 1) for t in times], [(1.0, 2.0)])], prefill_alone_ms=800.0)
    assert point.decode_step_ms_alone == pytest.approx(100.0)
    assert point.decode_step_ms_during_prefill == pytest.approx(200.0)
    assert point.decode_steps_during_prefill == 4
    assert point.prefill_ms_during_decode == pytest.approx(1000.0) and point.prefill_slowdown == pytest.approx(1.25)


def test_an_output_of_several_tokens_counts_per_token():
    # Inside the window the stream's outputs carry 2 tokens each, 0.2 s apart: 0.1 s per token, as outside.
    outputs = outputs_every(0.1, 10) + [(1.2, 2), (1.4, 2), (1.6, 2), (1.8, 2)] + outputs_every(0.1, 5, start=1.9)
    point = compute_interference(64, [(outputs, [(1.1, 1.85)])], prefill_alone_ms=400.0)
    assert point.decode_step_ms_during_prefill == pytest.approx(100.0) and point.decode_slowdown == pytest.approx(1.0)
    assert point.decode_steps_during_prefill == 3


def test_too_few_gaps_give_no_point():
    assert compute_interference(64, [(outputs_every(0.1, 20), [])], 100.0) is None  # no window
    assert compute_interference(64, [(outputs_every(0.1, 20), [(0.0, 5.0)])], 100.0) is None  # nothing alone
    assert compute_interference(64, [], 100.0) is None  # no stream


def test_gaps_are_taken_within_each_stream():
    # Two streams of 0.1 s steps, 10 s apart, a window in each: the 10 s between them is no gap.
    first = outputs_every(0.1, 20)
    second = outputs_every(0.1, 20, start=12.0)
    point = compute_interference(64, [(first, [(0.95, 1.25)]), (second, [(12.95, 13.25)])], prefill_alone_ms=200.0)
    assert point.decode_step_ms_alone == pytest.approx(100.0) and point.decode_slowdown == pytest.approx(1.0)
    assert point.decode_steps_during_prefill == 4 and point.prefill_ms_during_decode == pytest.approx(300.0)


@pytest.mark.parametrize("flags", [["--engine", "timing", "--profile", "x.yaml", "--interference-rounds", "4"],
                                   ["--interference-lengths", "128"],
                                   ["--target", "127.0.0.1:1", "--interference-rounds", "-1"],
                                   ["--target", "127.0.0.1:1", "--interference-lengths", "0,128"],
                                   ["--target", "127.0.0.1:1", "--prefill-idle-s", "-1"]])
def test_cli_refuses_bad_interference_flags(tmp_path, flags, capsys):
    # measured beside a decode stream only through a cluster's API (--target); counts and lengths positive
    assert main(["profile", "--out", str(tmp_path / "o.yaml"), "--no-progress", *flags]) == 2
    assert "error:" in capsys.readouterr().err


def test_through_a_cluster_the_grid_measures_interference_warm_decode_steps_and_quiet_prefills_by_default():
    from pdserve.cli.profile import _cluster_grid

    unset = argparse.Namespace(decode_steps=None, decode_warmup_steps=None, interference_rounds=None,
                               prefill_idle_s=None)
    grid = _cluster_grid(ProfileGrid(), unset)
    assert (grid.decode_steps, grid.decode_warmup_steps, grid.interference_rounds) == (32, 32, 6)
    assert grid.prefill_idle_s == TIER_IDLE_S
    given = argparse.Namespace(decode_steps=8, decode_warmup_steps=0, interference_rounds=0, prefill_idle_s=0.0)
    grid = _cluster_grid(ProfileGrid(decode_steps=8, prefill_idle_s=0.0), given)
    assert (grid.decode_steps, grid.decode_warmup_steps, grid.interference_rounds, grid.prefill_idle_s) == (8, 0, 0, 0.0)
    one_engine = ProfileGrid()  # one engine: off
    assert (one_engine.interference_rounds, one_engine.decode_warmup_steps, one_engine.prefill_idle_s) == (0, 0, 0.0)


# ---- prefill points timed as the interference baseline is --------------------------------------------


QUIET_GRID = ProfileGrid(**{**GRID.__dict__, "prefill_idle_s": TIER_IDLE_S})
INFO = EngineInfo(max_model_len=4096, block_size=16, num_total_blocks=1000, kv_bytes_per_token=1536)
TARGET = ProfileTarget("m", HardwareInfo(name="c", kind="cluster"), 2048, 64)


async def test_through_a_cluster_prefill_points_are_timed_after_the_tiers_went_quiet():
    # A prompt sent within TIER_IDLE_S of the cluster's last output takes 1.4 times as long.
    clock = EventClock()
    profile = await profile_engine(SharedHostCluster(clock, 1.0, 1.25, spin_factor=1.4), INFO, TARGET, QUIET_GRID,
                                   clock=clock, sleep=clock.sleep)
    for point in profile.prefill_points:
        assert point.ttft_ms == pytest.approx(point.prompt_tokens * PREFILL_MS_PER_TOKEN), point
    # the base the interference factor multiplies is its own baseline
    at_128 = next(p for p in profile.interference if p.prompt_tokens == 128)
    assert at_128.prefill_ms_alone == pytest.approx(profile.predict_prefill_ms([128]))
    assert profile.predict_prefill_ms([128]) * at_128.prefill_slowdown == pytest.approx(at_128.prefill_ms_during_decode)


async def test_back_to_back_prefill_points_carry_the_spin_of_the_request_before():
    clock = EventClock()
    grid = ProfileGrid(**{**QUIET_GRID.__dict__, "prefill_idle_s": 0.0})
    profile = await profile_engine(SharedHostCluster(clock, 1.0, 1.25, spin_factor=1.4), INFO, TARGET, grid,
                                   clock=clock, sleep=clock.sleep)
    for point in profile.prefill_points:
        assert point.ttft_ms == pytest.approx(1.4 * point.prompt_tokens * PREFILL_MS_PER_TOKEN), point
    at_128 = next(p for p in profile.interference if p.prompt_tokens == 128)
    assert profile.predict_prefill_ms([128]) > 1.3 * at_128.prefill_ms_alone


async def test_the_grids_quiet_prompts_and_the_interference_baseline_pool_into_one_ttft_alone():
    # The cluster slows down by 1% a prompt: the grid's lone 128-token prompts, measured first, are the
    # fastest of the nine timed after a quiet pause; alone they would be a base below the baseline.
    clock = EventClock()
    cluster = SharedHostCluster(clock, 1.0, 1.25, drift=0.01)
    grid = ProfileGrid(**{**QUIET_GRID.__dict__, "repeats": 3})
    profile = await profile_engine(cluster, INFO, TARGET, grid, clock=clock, sleep=clock.sleep)
    alone = cluster.alone_ms[128]
    assert len(alone) == 12 and alone[:3] == sorted(alone)[:3]  # 3 of the grid, 1 before each of 8 streams, 1 after
    at_128 = next(p for p in profile.interference if p.prompt_tokens == 128)
    point = next(p for p in profile.prefill_points if p.prompt_tokens == 128 and p.batch_size == 1)
    assert point.ttft_ms == at_128.prefill_ms_alone == pytest.approx(statistics.median(alone))
    at_32 = next(p for p in profile.prefill_points if p.prompt_tokens == 32)  # no interference point: its own
    assert at_32.ttft_ms == pytest.approx(statistics.median(cluster.alone_ms[32][3:6]))  # after 3 warm-up requests


async def test_back_to_back_grid_points_are_not_pooled_with_the_baseline():
    clock = EventClock()
    cluster = SharedHostCluster(clock, 1.0, 1.25, drift=0.01)
    grid = ProfileGrid(**{**QUIET_GRID.__dict__, "repeats": 3, "prefill_idle_s": 0.0})
    profile = await profile_engine(cluster, INFO, TARGET, grid, clock=clock, sleep=clock.sleep)
    at_128 = next(p for p in profile.interference if p.prompt_tokens == 128)
    point = next(p for p in profile.prefill_points if p.prompt_tokens == 128 and p.batch_size == 1)
    # the grid's 3 first, then the baseline's: one before each stream and one after the last
    assert at_128.prefill_ms_alone == pytest.approx(statistics.median(cluster.alone_ms[128][3:]))
    assert point.ttft_ms == pytest.approx(statistics.median(cluster.alone_ms[128][:3]))


class QuietWatcher:
    """An engine whose every output takes 10 ms, recording how long it had been quiet (since its last
    output) when each request came."""

    def __init__(self, clock: EventClock) -> None:
        self.clock = clock
        self.last_output_s = -math.inf
        self.quiet_s: list[tuple[int, float]] = []  # (max_tokens, quiet before it)

    async def generate(self, request):
        self.quiet_s.append((request.max_tokens, self.clock.now - self.last_output_s))
        for i in range(request.max_tokens):
            await self.clock.until(self.clock.now + 0.01)
            self.last_output_s = self.clock.now
            yield EngineOutput([300], i == request.max_tokens - 1, "length" if i == request.max_tokens - 1 else None)


async def test_every_prefill_measurement_starts_after_the_quiet_pause():
    clock = EventClock()
    engine = QuietWatcher(clock)
    grid = ProfileGrid(**{**QUIET_GRID.__dict__, "prefill_batches": ((3, 64),), "interference_rounds": 0})
    await profile_engine(engine, INFO, TARGET, grid, clock=clock, sleep=clock.sleep)
    # three lone prompts (repeats 1), then a batch of three sent together (at most two tries)
    prompts = [quiet for max_tokens, quiet in engine.quiet_s if max_tokens == 1]
    assert len(prompts) in (6, 9) and all(quiet >= TIER_IDLE_S for quiet in prompts), prompts
    decode_requests = [quiet for max_tokens, quiet in engine.quiet_s if max_tokens > 1]
    assert min(decode_requests) < TIER_IDLE_S  # warm-up and decode points: no pause asked for
