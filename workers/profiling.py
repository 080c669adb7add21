"""Profiling an engine on the hardware it runs on: the measured points of a profile file.

Everything goes through the `BaseEngine` interface, so vLLM and the timing engine are measured alike.
`pdserve profile` (`pdserve.cli.profile`) starts the engine and saves the result. Life of a run
(`profile_engine`):
1. warm-up: a few short requests (vLLM's first steps allocate and warm its kernels);
2. prefill points: the time to first token of one prompt per length (median of `repeats`), then the
   time of one step computing several prompts of one length submitted together (`measure_prefill`: an
   engine may split them over steps; the last step is measured then); with `prefill_idle_s`, each
   measurement after that long without requests (through a cluster: `TIER_IDLE_S`, as the interference
   baseline of step 5 is timed);
3. decode points: per (batch, context), `batch` requests with `context`-token prompts decode together;
   the step time is the median time per token from the moment every one of them decodes (and, with
   `decode_warmup_steps`, that many steps later) until the first one finishes. The point's context is
   the tokens in the KV cache at the start of those steps, summed over the batch and averaged over the
   steps;
4. with `passes` > 1, steps 2 and 3 again, each point keeping its fastest pass (on a shared machine,
   other processes only ever slow a step down);
5. with `interference_rounds` > 0 (a disaggregated cluster measured through its API, whose tiers may
   share a host), per prompt length of `interference_prompt_lengths` (`measure_interference`): decode
   streams about as long as a chat request's decode, beside each of which that prompt is sent
   `PROMPTS_PER_STREAM` times, one at a time, a few decode outputs apart (`interference_rounds` prompts
   in all, more for a short prompt, until their windows add up to `MIN_WINDOW_S`), and before each
   stream and after the last the prompt's TTFT alone (each after `TIER_IDLE_S` without requests); the
   streams' gaps inside a prompt's window (sent to first token) against those outside any window give
   the decode slowdown, the windows against the TTFT alone the prefill slowdown (`InterferencePoint`).
   Alone and beside interleave, so that both sample the same minutes of a machine whose speed wanders.
   When step 2 timed its lone prompts after the same pause, a grid point of that length is the same
   measurement as the TTFT alone: the two are pooled, and the point and the interference point's
   `prefill_ms_alone` both take the median of all of them, so that the base the simulator multiplies by
   the prefill slowdown is the slowdown's own baseline;
6. `EngineProfile.from_points(...)`, with `kv_bytes_per_token` and the KV capacity
   (`num_total_blocks * block_size`) from `EngineInfo`.
Prompts are random word ids, distinct per request, so no prefix cache shortens a prompt. Greedy, EOS
ignored: every request runs exactly its `max_tokens`. Times come from `clock` and pauses from `sleep`
(tests give fake ones); a progress bar goes to stderr.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from pathlib import Path

import numpy as np

from orchestrator.profiles import DecodePoint, EngineProfile, HardwareInfo, InterferencePoint, PrefillPoint
from workers.engine.base import BaseEngine, EngineInfo, EngineRequest

log = logging.getLogger(__name__)

TOKEN_IDS = (256, 8192)  # prompt ids: words of the timing tokenizer, ordinary tokens of real vocabularies
SPLIT_FRACTION = 0.1  # first tokens this close (a share of the time since submission) came from one step
WARMUP_REQUESTS = 3
SETTLE_OUTPUTS = 4  # decode outputs let pass after a stream's hand-off and after each interfering prompt
INTERFERENCE_SLACK = 2.0  # stream tokens per round: enough for a prompt this many times slower than alone
MIN_WINDOW_S = 6.0  # prompts beside the streams for at least this long per length (short prompts: more rounds)
PROMPTS_PER_STREAM = 3  # prompts beside one decode stream: a stream about as long as a chat request's decode
MIN_GAPS = 3  # decode gaps needed inside and outside the prompts' windows
# Pause before a prompt timed alone: vLLM's processes busy-wait for a second after their last step
# (shm_broadcast's busy_loop_s), and on a shared host that slows the other tier as its steps do. Through
# a cluster the grid's prefill points wait as long (`ProfileGrid.prefill_idle_s`), so that the base the
# interference factors multiply is timed as their baseline is (and pooled with it, step 5).
TIER_IDLE_S = 1.5

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# A decode stream's outputs (time, tokens) and the windows (sent, first token) of the prompts beside it.
Stream = tuple[Sequence[tuple[float, int]], Sequence[tuple[float, float]]]


@dataclass(frozen=True)
class ProfileGrid:
    """What to measure. `fitted()` drops what the engine cannot run as asked."""

    prompt_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    prefill_batches: tuple[tuple[int, int], ...] = ((4, 64), (4, 256), (8, 128))  # (prompts, tokens each)
    decode_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    decode_context_lengths: tuple[int, ...] = (64, 256, 1024)
    max_decode_prompt_tokens: int = 4096  # a decode point's prompts together (their prefill is most of its time)
    decode_steps: int = 9  # measured steps of each decode point
    decode_warmup_steps: int = 0  # steps of each decode point let pass before the measured ones
    repeats: int = 3  # prefill measurements per point (the median is kept)
    prefill_idle_s: float = 0.0  # pause without requests before each prefill measurement (0: back to back)
    passes: int = 1  # times the whole grid is measured; each point keeps its fastest pass
    interference_prompt_lengths: tuple[int, ...] = (128, 1024)
    interference_rounds: int = 0  # prompts sent beside decode streams, per length, at least (0: not measured)

    def fitted(self, *, max_model_len: int, max_batched_tokens: int, max_num_seqs: int,
               kv_capacity_tokens: int) -> ProfileGrid:
        """The grid without points the engine cannot run: a prefill point must fit one step, a decode
        point `max_model_len`, the batch limit and the KV cache."""
        longest = min(max_model_len - 1, max_batched_tokens)
        per_request = self.decode_warmup_steps + self.decode_steps + 3  # generated tokens of a decode request
        return replace(
            self,
            prompt_lengths=tuple(n for n in self.prompt_lengths if n <= longest),
            interference_prompt_lengths=tuple(n for n in self.interference_prompt_lengths if n <= longest),
            prefill_batches=tuple((b, n) for b, n in self.prefill_batches
                                  if b <= max_num_seqs and b * n <= max_batched_tokens and n <= longest),
            decode_batch_sizes=tuple(b for b in self.decode_batch_sizes if b <= max_num_seqs),
            decode_context_lengths=tuple(c for c in self.decode_context_lengths if c + per_request <= max_model_len),
            max_decode_prompt_tokens=min(self.max_decode_prompt_tokens, kv_capacity_tokens // 2),
        )

    def decode_points(self) -> list[tuple[int, int]]:
        """(batch, context) pairs within `max_decode_prompt_tokens`."""
        return [(b, c) for b, c in itertools.product(self.decode_batch_sizes, self.decode_context_lengths)
                if b * c <= self.max_decode_prompt_tokens]

    @property
    def num_points(self) -> int:
        """Measurements of all passes, and the interference points."""
        interference = len(self.interference_prompt_lengths) if self.interference_rounds else 0
        return self.passes * (len(self.prompt_lengths) + len(self.prefill_batches) + len(self.decode_points())) + interference


@dataclass(frozen=True)
class ProfileTarget:
    """What the profile says besides the points, and the engine's batch limits."""

    model: str
    hardware: HardwareInfo
    max_batched_tokens: int  # tokens one step of the engine computes at most
    max_num_seqs: int
    num_layers: int | None = None


@dataclass(frozen=True)
class _PrefillMeasure:
    """A prefill point and the measurements whose median it is."""

    point: PrefillPoint
    samples_ms: tuple[float, ...]


class _Prompts:
    """Random prompts, distinct per request."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._count = itertools.count()

    def request(self, length: int, max_tokens: int) -> EngineRequest:
        ids = self._rng.integers(TOKEN_IDS[0], TOKEN_IDS[1], size=length)
        return EngineRequest(request_id=f"profile-{next(self._count)}", prompt_ids=tuple(int(i) for i in ids),
                             max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


async def _arrivals(engine: BaseEngine, request: EngineRequest, clock: Clock) -> list[tuple[float, int]]:
    """(time, number of tokens) of each output of one request that carried tokens."""
    return [(clock(), len(out.token_ids)) async for out in engine.generate(request) if out.token_ids]


async def _together(engine: BaseEngine, requests: Sequence[EngineRequest], clock: Clock) -> list[list[tuple[float, int]]]:
    return list(await asyncio.gather(*(_arrivals(engine, r, clock) for r in requests)))


async def measure_prefill(engine: BaseEngine, prompts: _Prompts, batch: int, length: int,
                          clock: Clock) -> tuple[int, float] | None:
    """(prompts, milliseconds) of one prefill step, from submitting `batch` prompts of `length` tokens.

    When their first tokens arrive together, the step computed all of them and took from submission to
    then. An engine that starts a step as soon as the first request arrives (vLLM) splits them: the
    prompts of the last step were all waiting when it started, so that step is measured from the step
    before it ended. None when that last step computed a single prompt."""
    started = clock()
    streams = await _together(engine, [prompts.request(length, 1) for _ in range(batch)], clock)
    firsts = sorted(stream[0][0] for stream in streams)
    last = firsts[-1]
    tolerance = SPLIT_FRACTION * (last - started)
    if last - firsts[0] <= tolerance:
        return batch, (last - started) * 1000.0
    in_last = [t for t in firsts if last - t <= tolerance]
    before = max(t for t in firsts if last - t > tolerance)
    return (len(in_last), (last - before) * 1000.0) if len(in_last) > 1 else None


async def measure_decode(engine: BaseEngine, prompts: _Prompts, batch: int, context: int, steps: int,
                         clock: Clock, warmup_steps: int = 0) -> DecodePoint | None:
    """One decode point: `batch` requests of `context` prompt tokens, `steps` steps measured once every
    request decodes and `warmup_steps` more have passed; None when too few steps were seen."""
    streams = await _together(engine, [prompts.request(context, warmup_steps + steps + 3) for _ in range(batch)], clock)
    ready = max(stream[0][0] for stream in streams)  # every request decodes from here on
    first_done = min(streams, key=lambda stream: stream[-1][0])
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(first_done)]
    tolerance = statistics.median(gaps) / 4 if gaps else 0.0  # outputs of the step that made `ready`
    window = [(t, n) for t, n in first_done if t > ready + tolerance]
    skipped, measured = 0, []
    for (start, _), (t, n) in itertools.pairwise([(ready, 0), *window]):
        if skipped < warmup_steps:
            skipped += n
        else:
            measured.append((start, t, n))
    in_measured = sum(n for _, _, n in measured)
    if in_measured < 2:
        return None
    # The median step: robust to a step that another process on the machine slowed down.
    step_s = statistics.median((t - start) / n for start, t, n in measured)
    # Before the j-th step of the window a request holds its prompt and g0 + j - 2 generated tokens in
    # the cache (g0: tokens it had when the window opened; the newest one is computed by the step); the
    # measured steps are j = skipped + 1 .. skipped + in_measured.
    mean_j = skipped + (in_measured + 1) / 2
    cached = [context + sum(n for t, n in stream if t <= ready + tolerance) - 2 + mean_j for stream in streams]
    return DecodePoint(batch_size=batch, total_context_tokens=round(sum(cached)), step_ms=step_s * 1000.0)


async def profile_engine(engine: BaseEngine, info: EngineInfo, target: ProfileTarget, grid: ProfileGrid | None = None,
                         *, clock: Clock = time.perf_counter, sleep: Sleep = asyncio.sleep, progress: bool = False,
                         time_limit_s: float | None = None) -> EngineProfile:
    """Measure a started engine (see the module docstring) and return its profile.

    Points left when `time_limit_s` has passed are skipped. Raises ConfigError (from the fit) when too
    few points could be measured."""
    from tqdm import tqdm

    capacity = info.num_total_blocks * info.block_size
    grid = (grid or ProfileGrid()).fitted(max_model_len=info.max_model_len, max_batched_tokens=target.max_batched_tokens,
                                          max_num_seqs=target.max_num_seqs, kv_capacity_tokens=capacity)
    prompts = _Prompts()
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    bar = tqdm(total=grid.num_points, desc="profile", unit="point", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    def due(what: str) -> bool:
        """Whether to measure `what` (False once the time limit has passed)."""
        bar.set_postfix_str(what)
        if deadline is not None and time.monotonic() > deadline:
            log.warning("profiling time limit reached: %s skipped", what)
            return False
        return True

    # Per point (as asked for), its fastest pass: other processes on the machine only ever slow steps down.
    prefill: dict[tuple[int, int], _PrefillMeasure] = {}
    decode: dict[tuple[int, int], DecodePoint] = {}
    with bar:
        for _ in range(WARMUP_REQUESTS):
            await _arrivals(engine, prompts.request(min(32, info.max_model_len - 8), 4), clock)
        for _ in range(grid.passes):
            for key in [(1, n) for n in grid.prompt_lengths] + list(grid.prefill_batches):
                if due(f"prefill {key[0]}x{key[1]}"):
                    measure = await _prefill_point(engine, prompts, *key, grid.repeats, clock,
                                                   sleep, grid.prefill_idle_s)
                    _keep_fastest(prefill, key, measure, lambda m: m.point.ttft_ms)
                bar.update(1)
            for key in grid.decode_points():
                if due(f"decode {key[0]}x{key[1]}"):
                    point = await measure_decode(engine, prompts, *key, grid.decode_steps, clock,
                                                 grid.decode_warmup_steps)
                    _keep_fastest(decode, key, point, lambda p: p.step_ms)
                bar.update(1)
        interference = []
        for length in grid.interference_prompt_lengths if grid.interference_rounds else ():
            if due(f"interference {length}") and decode:
                quiet_ms = prefill[(1, length)].samples_ms if _pooled(grid, prefill, length) else ()
                point = await measure_interference(engine, prompts, length, grid, _step_hint_ms(decode.values()),
                                                   info.max_model_len, clock, sleep, quiet_ms)
                interference += [point] if point is not None else []
            bar.update(1)
    points = {key: measure.point for key, measure in prefill.items()}
    for point in interference:  # the pooled TTFT alone, where the grid's measurements are in it
        if _pooled(grid, prefill, point.prompt_tokens):
            points[(1, point.prompt_tokens)] = PrefillPoint(prompt_tokens=point.prompt_tokens, batch_size=1,
                                                            ttft_ms=point.prefill_ms_alone)
    return EngineProfile.from_points(
        model=target.model, hardware=target.hardware, block_size=info.block_size,
        kv_bytes_per_token=info.kv_bytes_per_token, prefill_points=list(points.values()),
        decode_points=list(decode.values()), kv_capacity_tokens=capacity or None, num_layers=target.num_layers,
        interference=interference)


def _pooled(grid: ProfileGrid, prefill: dict[tuple[int, int], _PrefillMeasure], length: int) -> bool:
    """Whether the grid's lone prompts of `length` were timed as the interference baseline is (after
    `TIER_IDLE_S` of quiet, or longer), so that the two pool into one TTFT alone."""
    return grid.prefill_idle_s >= TIER_IDLE_S and (1, length) in prefill


def _keep_fastest(points: dict, key: tuple[int, int], point: Any, time_of: Callable[[Any], float]) -> None:
    if point is not None and (key not in points or time_of(point) < time_of(points[key])):
        points[key] = point


async def _prefill_point(engine: BaseEngine, prompts: _Prompts, batch: int, length: int, repeats: int,
                         clock: Clock, sleep: Sleep = asyncio.sleep, idle_s: float = 0.0) -> _PrefillMeasure | None:
    """The median of `repeats` measurements of the most frequent step size (at most 2 * repeats tries),
    each after `idle_s` without requests."""
    measured: dict[int, list[float]] = {}
    for _ in range(2 * repeats):
        if idle_s > 0:
            await sleep(idle_s)
        step = await measure_prefill(engine, prompts, batch, length, clock)
        if step is not None:
            measured.setdefault(step[0], []).append(step[1])
        if sum(map(len, measured.values())) == repeats:
            break
    if not measured:
        log.warning("prefill %dx%d: no step computed several of the prompts together; point dropped", batch, length)
        return None
    size, times = max(measured.items(), key=lambda item: (len(item[1]), item[0]))
    return _PrefillMeasure(PrefillPoint(prompt_tokens=length, batch_size=size, ttft_ms=statistics.median(times)),
                           tuple(times))


# ---- how the tiers of a cluster slow each other --------------------------------------------------------


async def measure_interference(engine: BaseEngine, prompts: _Prompts, prompt_tokens: int, grid: ProfileGrid,
                               step_hint_ms: float, max_model_len: int, clock: Clock,
                               sleep: Sleep = asyncio.sleep, quiet_ms: Sequence[float] = ()) -> InterferencePoint | None:
    """One interference point (module docstring, step 5). `grid.interference_rounds` prompts (or as many
    as take `MIN_WINDOW_S` alone) are sent beside decode streams of the grid's shortest context,
    `PROMPTS_PER_STREAM` per stream, one at a time; before each stream and after the last, the same
    prompt alone after `TIER_IDLE_S` of quiet (together at least `2 * grid.repeats`), whose median
    with `quiet_ms` (the same prompt's TTFTs measured so before) is the TTFT alone. Interleaved so, the
    prompts alone and beside decoding sample the same minutes: a slow spell of the machine (another
    tenant, a throttled core) slows a share of both rather than all of one. `step_hint_ms` (a decode
    step measured before) sizes each stream: tokens for its prompts if each took `INTERFERENCE_SLACK`
    times its time alone. Only meaningful where prompts and the streams run on different engines (a
    disaggregated cluster): one engine would compute them in the same steps. Runs on the profiler's
    event loop; None when too few gaps fell inside or outside the windows."""
    async def alone_ms(count: int) -> list[float]:  # lone prompts, each after the tiers' quiet pause
        if count <= 0:
            return []
        measure = await _prefill_point(engine, prompts, 1, prompt_tokens, count, clock, sleep, TIER_IDLE_S)
        return list(measure.samples_ms) if measure is not None else []

    own = [] if quiet_ms else await alone_ms(1)  # sizes the streams when the grid measured none
    if not quiet_ms and not own:
        return None
    sizing_ms = statistics.median([*quiet_ms, *own])
    rounds = max(grid.interference_rounds, math.ceil(MIN_WINDOW_S * 1000.0 / sizing_ms))
    per_round = math.ceil(INTERFERENCE_SLACK * sizing_ms / step_hint_ms) + SETTLE_OUTPUTS
    num_streams = math.ceil(rounds / PROMPTS_PER_STREAM)
    per_pause = max(1, math.ceil(2 * grid.repeats / (num_streams + 1)))  # lone prompts before each stream, and after
    context = min(grid.decode_context_lengths)
    streams: list[Stream] = []
    for i in range(num_streams):
        own += await alone_ms(per_pause if i else per_pause - len(own))  # a sizing prompt is the first pause's
        beside = min(PROMPTS_PER_STREAM, rounds - i * PROMPTS_PER_STREAM)
        max_tokens = min(1 + SETTLE_OUTPUTS + beside * per_round, max_model_len - context - 1)
        streams.append(await _decode_beside_prompts(engine, prompts, prompts.request(context, max_tokens),
                                                    prompt_tokens, beside, clock))
    own += await alone_ms(per_pause)
    point = compute_interference(prompt_tokens, streams, statistics.median([*quiet_ms, *own]))
    if point is None:
        log.warning("interference %d: too few decode steps inside or outside the prompts' windows; point dropped",
                    prompt_tokens)
    return point


async def _window(engine: BaseEngine, request: EngineRequest, clock: Clock) -> tuple[float, float]:
    """(sent, first token) of one request."""
    sent = clock()
    return sent, (await _arrivals(engine, request, clock))[0][0]


async def _decode_beside_prompts(engine: BaseEngine, prompts: _Prompts, stream: EngineRequest, prompt_tokens: int,
                                 rounds: int, clock: Clock) -> Stream:
    """Run `stream`; after its first output and then after each prompt's first token, let
    `SETTLE_OUTPUTS` outputs pass and send the next prompt (at most `rounds`). Returns the stream's
    outputs (time, tokens) and the windows (sent, first token) of the prompts that ended while it ran."""
    outputs: list[tuple[float, int]] = []
    windows: list[tuple[float, float]] = []
    running: asyncio.Task | None = None
    since = -1  # outputs since the stream's first one, or since the last prompt's first token
    async for out in engine.generate(stream):
        if not out.token_ids:
            continue
        outputs.append((clock(), len(out.token_ids)))
        if running is not None and running.done():
            windows.append(running.result())
            running, since = None, 0
        since += 1
        if running is None and len(windows) < rounds and since > SETTLE_OUTPUTS:
            running = asyncio.create_task(_window(engine, prompts.request(prompt_tokens, 1), clock))
    if running is not None:
        window = await running
        windows += [window] if window[1] <= outputs[-1][0] else []  # one the stream outlived only
    return outputs, windows


def compute_interference(prompt_tokens: int, streams: Sequence[Stream], prefill_alone_ms: float) -> InterferencePoint | None:
    """The interference point of decode streams and the prompts computed beside them. A gap between two
    outputs of a stream (per token) is inside when one of its windows holds both ends, alone when it
    overlaps none; gaps that straddle a window's edge, and those of a stream's first `SETTLE_OUTPUTS`
    outputs (the hand-off), count as neither. None with fewer than `MIN_GAPS` of either or no window."""
    inside, alone, durations = [], [], []
    for outputs, windows in streams:
        durations += [(first - sent) * 1000.0 for sent, first in windows]
        for (start, _), (end, tokens) in itertools.pairwise(outputs[SETTLE_OUTPUTS:]):
            gap_ms = (end - start) * 1000.0 / tokens
            if any(sent <= start and end <= first for sent, first in windows):
                inside.append(gap_ms)
            elif all(end <= sent or start >= first for sent, first in windows):
                alone.append(gap_ms)
    if not durations or len(inside) < MIN_GAPS or len(alone) < MIN_GAPS:
        return None
    return InterferencePoint(
        prompt_tokens=prompt_tokens, decode_step_ms_alone=statistics.median(alone),
        decode_step_ms_during_prefill=statistics.median(inside), decode_steps_during_prefill=len(inside),
        prefill_ms_alone=prefill_alone_ms, prefill_ms_during_decode=statistics.median(durations))


def _step_hint_ms(points: Iterable[DecodePoint]) -> float:
    """The measured decode step of the smallest batch (its shortest context first)."""
    return min(points, key=lambda p: (p.batch_size, p.total_context_tokens)).step_ms


# ---- what the profile was measured on ----------------------------------------------------------------


def describe_cpu(cores: Sequence[int], engine: str) -> HardwareInfo:
    """This machine's CPU, for an engine bound to `cores`."""
    model, flags = _cpuinfo()
    features = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_bf16", "BF16"), ("amx_tile", "AMX"))
                if flag in flags]
    description = (f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores on the machine, "
                   f"engine on core(s) {','.join(map(str, cores))}{' (' + ', '.join(features) + ')' if features else ''}; "
                   f"{engine}")
    return HardwareInfo(name=f"cpu-{len(cores)}core", kind="cpu", count=len(cores), description=description)


def describe_gpu(count: int, engine: str) -> HardwareInfo:
    """The first GPU (torch), for an engine on `count` of them."""
    import torch

    name = torch.cuda.get_device_name(0)
    slug = "-".join(part for part in name.lower().replace("nvidia", "").split() if part)
    return HardwareInfo(name=slug or "gpu", kind="gpu", count=count, description=f"{count} x {name}; {engine}")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return model, flags


def parse_cores(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]. Raises ValueError on anything else."""
    cores: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cores.extend(range(int(low), int(high or low) + 1))
    if not cores:
        raise ValueError(f"no cores in {text!r}")
    return cores
