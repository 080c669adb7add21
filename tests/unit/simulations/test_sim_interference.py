"""Tiers sharing a host (`shared_host`): a decode step overlapping a prefill takes the profile's measured
factor longer, a prefill beside decode steps likewise; without sharing nothing changes; the engine's
stretched clock; the config and CLI refuse what cannot be modelled."""

import dataclasses
import json

import pytest
from pydantic import ValidationError

from orchestrator.errors import ConfigError
from orchestrator.profiles import (
    DecodeCoefficients,
    EngineProfile,
    HardwareInfo,
    InterferencePoint,
    PrefillCoefficients,
)
from pdserve.cli import main
from simulations.config import SimConfig
from simulations.engine import Engine
from simulations.events import EventLoop
from simulations.interference import StretchedClock
from simulations.request import SimRequest
from simulations.run import simulate
from simulations.timing import CoefficientTiming

DECODE_SLOWDOWN, PREFILL_SLOWDOWN = 1.5, 1.2
PREFILL_MS = (10.0, 1.0)  # a + b * tokens
DECODE_STEP_MS = 20.0


def profile_file(tmp_path, interference=True):
    profile = EngineProfile.from_coefficients(
        model="smollm2-135m-instruct", hardware=HardwareInfo(name="cpu", kind="cluster"), block_size=32,
        kv_bytes_per_token=1000, kv_capacity_tokens=100_000,
        prefill=PrefillCoefficients(a_ms=PREFILL_MS[0], b_ms_per_token=PREFILL_MS[1], c_ms_per_token_sq=0.0),
        decode=DecodeCoefficients(a_ms=DECODE_STEP_MS, b_ms_per_context_token=0.0, c_ms_per_request=0.0))
    if interference:  # the same factors at every length
        points = tuple(InterferencePoint(prompt_tokens=n, decode_step_ms_alone=40.0,
                                         decode_step_ms_during_prefill=40.0 * DECODE_SLOWDOWN,
                                         prefill_ms_alone=100.0, prefill_ms_during_decode=100.0 * PREFILL_SLOWDOWN)
                       for n in (128, 1024))
        profile = dataclasses.replace(profile, interference=points)
    path = tmp_path / ("profile.yaml" if interference else "plain.yaml")
    profile.save(path)
    return str(path)


def config(path, **changes):
    values = dict(model="smollm2-135m", timing="profile", profile=path, num_prefill=1, num_decode=1,
                  transfer_gb_s=1000.0, transfer_latency_ms=0.0, decode_kv_load_steps=0, budgets="off")
    return SimConfig(**{**values, **changes})


# A decodes 200 steps (4 s); B, a one-token answer, is computed by the prefill engine while A decodes.
STREAM = SimRequest(0, 0.0, 128, 201)
PROMPT = SimRequest(1, 1.0, 500, 1)


def run_both(path, shared_host):
    _, result = simulate(config(path, shared_host=shared_host), [STREAM, PROMPT])
    return {r.request_id: r for r in result.requests}


def test_a_decode_step_overlapping_a_prefill_takes_the_measured_factor_longer(tmp_path):
    path = profile_file(tmp_path)
    alone, shared = run_both(path, False), run_both(path, True)
    prefill_ms = PREFILL_MS[0] + PREFILL_MS[1] * 500
    # The prefill ran beside decode steps the whole time: the measured factor longer.
    assert alone[1].ttft_s * 1e3 == pytest.approx(prefill_ms)
    assert shared[1].ttft_s * 1e3 == pytest.approx(prefill_ms * PREFILL_SLOWDOWN)
    # Meanwhile A's decode got through 1 / DECODE_SLOWDOWN of the work per second: it ends the rest later.
    overlap_s = shared[1].ttft_s
    assert shared[0].finish_s - alone[0].finish_s == pytest.approx(overlap_s * (1 - 1 / DECODE_SLOWDOWN))
    # A's own prefill ran with the decode tier idle: not slowed.
    assert shared[0].ttft_s == pytest.approx(alone[0].ttft_s)


def test_a_prefill_speeds_up_again_when_the_decode_tier_goes_idle(tmp_path):
    # A decodes 50 steps (1 s of work from 0.138 s); B's prefill starts at 1.0 s, while A has 0.138 s left.
    stream, prompt = SimRequest(0, 0.0, 128, 51), SimRequest(1, 1.0, 500, 1)
    _, result = simulate(config(profile_file(tmp_path), shared_host=True), [stream, prompt])
    a, b = result.requests
    a_left_s = 0.138
    assert a.finish_s == pytest.approx(1.0 + a_left_s * DECODE_SLOWDOWN)
    done_by_then_s = a_left_s * DECODE_SLOWDOWN / PREFILL_SLOWDOWN  # B's work while A still decoded
    expected_ttft_s = a_left_s * DECODE_SLOWDOWN + (0.510 - done_by_then_s)
    assert b.ttft_s == pytest.approx(expected_ttft_s)
    prefill_engine = next(e for e in result.engines if e.tier == "prefill")
    assert prefill_engine.prefill_busy_s == pytest.approx(0.138 + expected_ttft_s)  # each step counted once


def test_without_a_shared_host_the_tiers_do_not_slow_each_other(tmp_path):
    with_points, without_points = profile_file(tmp_path), profile_file(tmp_path, interference=False)
    a, b = run_both(with_points, False), run_both(without_points, False)
    assert [(r.ttft_s, r.finish_s) for r in a.values()] == [(r.ttft_s, r.finish_s) for r in b.values()]
    decode_s = 199 * DECODE_STEP_MS / 1e3  # the first token came from the prefill; 200 more, one per step
    assert a[0].finish_s == pytest.approx(a[0].ttft_s + decode_s + DECODE_STEP_MS / 1e3)


def test_a_colocated_cluster_has_no_other_tier_to_slow_it(tmp_path):
    path = profile_file(tmp_path)
    runs = [simulate(config(path, mode="colocated", num_prefill=0, shared_host=shared), [STREAM, PROMPT])[1]
            for shared in (False, True)]
    assert [r.finish_s for r in runs[0].requests] == [r.finish_s for r in runs[1].requests]


def test_shared_host_needs_a_profile_with_interference_points(tmp_path):
    with pytest.raises(ValidationError, match="timing=profile"):
        SimConfig(shared_host=True)
    with pytest.raises(ConfigError, match="interference points"):
        simulate(config(profile_file(tmp_path, interference=False), shared_host=True), [STREAM])


def test_cli_shared_host(tmp_path, capsys):
    with_points, without_points = profile_file(tmp_path), profile_file(tmp_path, interference=False)
    base = ["simulate", "--workload", "chat", "--rate", "0.2", "--duration", "30", "--no-progress"]
    assert main([*base, "--shared-host"]) == 2
    assert "give --profile" in capsys.readouterr().err
    assert main([*base, "--shared-host", "--profile", without_points]) == 2
    assert "no interference points" in capsys.readouterr().err
    out = tmp_path / "sim"
    assert main([*base, "--shared-host", "--profile", with_points, "--out", str(out)]) in (0, 1)
    assert json.loads((out / "summary.json").read_text())["configuration"]["shared_host"] is True


# ---- the engine's stretched clock ----------------------------------------------------------------------


def test_a_span_slowed_midway_ends_later_and_sped_up_again_sooner():
    finished = []
    engine = Engine("decode-0", "decode", CoefficientTiming(10.0, 0.0, 0.0, 10.0, 0.0, 0.0), 1, 64, 2048,
                    lambda *_: [], lambda now, e, r: finished.append(now) or [])
    request = SimRequest(0, 0.0, 100, 11)
    request.context, request.remaining, request.first_token_s = 101, 10, 0.0  # 10 steps of 10 ms: 100 ms alone
    loop = EventLoop()
    loop.schedule([(0.0, lambda now, r: engine.enqueue_decode(now, r), request),
                   (0.05, lambda now, f: engine.slow_down(now, f), 2.0),  # half done: 50 ms of work left
                   (0.08, lambda now, f: engine.slow_down(now, f), 1.0)])  # 15 ms of work done meanwhile
    loop.run()
    assert finished == [pytest.approx(0.08 + 0.035)]
    assert engine.decode_busy_s == pytest.approx(0.115)


def test_stretched_clock_maps_work_and_wall_time_both_ways():
    clock = StretchedClock()
    assert clock.work_s(3.0) == 3.0 and clock.wall_s(3.0) == 3.0  # unstretched: the same
    clock.set_factor(1.0, 2.0)
    clock.set_factor(3.0, 1.0)  # 1 s of work from wall 1 to 3
    assert clock.work_s(4.0) == pytest.approx(3.0)
    assert clock.wall_s(1.5) == pytest.approx(2.0) and clock.wall_s(2.5) == pytest.approx(3.5)
    clock.forget_before(3.5)
    assert clock.wall_s(2.5) == pytest.approx(3.5) and clock.factor == 1.0
