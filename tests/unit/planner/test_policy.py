"""The planner policy on recorded observation sequences (SmolLM2-135M CPU profile, TTFT 2 s / ITL 100 ms at p90)."""

import itertools
import re

import numpy as np
import pytest

from planner_scenarios import INTERVAL_S, counts, drive, load, make_config
from orchestrator.config.planner import PlannerConfig
from orchestrator.planner import (
    ACTIONS,
    LengthDistribution,
    Observations,
    PlannerState,
    compute_power_w,
    compute_prefill_estimate,
    decide,
)


def changes(series: list[int]) -> int:
    """How many times the series changed direction or value (0: flat)."""
    return sum(1 for a, b in itertools.pairwise(series) if a != b)


def direction_flips(series: list[int]) -> int:
    steps = [np.sign(b - a) for a, b in itertools.pairwise(series) if b != a]
    return sum(1 for a, b in itertools.pairwise(steps) if a != b)


def test_prompt_heavy_load_grows_prefill_and_leaves_decode(profile):
    loads = [load(2.0, 100 + 100 * i, 32) for i in range(10)]
    decisions = drive(loads, profile, make_config())
    prefill, decode = counts(decisions, "prefill"), counts(decisions, "decode")
    assert prefill[0] == 1 and prefill[-1] >= 3
    assert prefill == sorted(prefill)  # grows, never dips while the load grows
    assert decode == [1] * len(decode)
    assert "scale_up" in {d.prefill_action for d in decisions}


def test_generation_heavy_load_grows_decode_and_leaves_prefill(profile):
    loads = [load(2.0, 100, 32 + 100 * i) for i in range(10)]
    decisions = drive(loads, profile, make_config())
    prefill, decode = counts(decisions, "prefill"), counts(decisions, "decode")
    assert decode[0] == 1 and decode[-1] >= 5
    assert decode == sorted(decode)
    assert prefill == [1] * len(prefill)
    last = decisions[-1]
    assert last.decode_predicted_itl_ms <= 100.0


def test_both_shrink_slowly_after_the_load_falls(profile):
    config = make_config()
    peak = [load(2.0, 1000, 800)] * 3
    quiet = [load(0.2, 100, 32)] * 50
    decisions = drive(peak + quiet, profile, config)
    prefill, decode = counts(decisions, "prefill"), counts(decisions, "decode")
    top_prefill, top_decode = prefill[2], decode[2]
    assert top_prefill >= 3 and top_decode >= 5
    # Nothing shrinks before the stabilization window (30 s = 3 intervals) has passed.
    assert prefill[3:6] == [top_prefill] * 3 and decode[3:6] == [top_decode] * 3
    # Then one worker at a time, at most once per cooldown (30 s), down to the minimum.
    for series in (prefill, decode):
        assert all(a - b in (0, 1) for a, b in itertools.pairwise(series[2:]))
        assert series[-1] == 1
        down_steps = [i for i, (a, b) in enumerate(itertools.pairwise(series)) if b < a]
        assert all(j - i >= config.prefill.scale_down_cooldown_s / INTERVAL_S for i, j in itertools.pairwise(down_steps))
    assert {"stabilizing", "scale_down"} <= {d.decode_action for d in decisions}


def test_noisy_load_near_a_boundary_does_not_flap(profile):
    rng = np.random.default_rng(11)
    rates = 3.0 + rng.normal(0, 0.35, size=60)  # hovers around a 2/3-worker boundary
    decisions = drive([load(max(r, 0.1), 600, 200) for r in rates], profile, make_config())
    for tier in ("prefill", "decode"):
        series = counts(decisions, tier)
        assert direction_flips(series) <= 2, (tier, series)
    # The same noisy series without hysteresis flaps: the test can tell the difference.
    loose = make_config(scale_down_margin=0.0, prefill={"scale_down_window_s": 0, "scale_down_cooldown_s": 0},
                        decode={"scale_down_window_s": 0, "scale_down_cooldown_s": 0})
    loose_series = counts(drive([load(max(r, 0.1), 600, 200) for r in rates], profile, loose), "decode")
    assert direction_flips(loose_series) > 10


def test_min_and_max_replicas_hold(profile):
    config = make_config(prefill={"min_replicas": 2, "max_replicas": 3}, decode={"min_replicas": 1, "max_replicas": 4})
    loads = [load(0.0, 100, 10)] * 3 + [load(8.0, 2000, 1500)] * 5 + [load(0.0, 100, 10)] * 40
    decisions = drive(loads, profile, config, start=(2, 1))
    prefill, decode = counts(decisions, "prefill"), counts(decisions, "decode")
    assert min(prefill) == 2 and max(prefill) == 3 and min(decode) == 1 and max(decode) == 4
    assert decisions[6].prefill_action == "max_replicas" and decisions[6].prefill_needed > 3
    assert any("capped at max_replicas 3" in r for r in decisions[6].prefill_reasons)
    assert decisions[-1].prefill_action == "min_replicas"


def test_power_budget_is_never_exceeded(profile):
    config = make_config(power_budget_w=6000.0, prefill={"power_per_worker_w": 700.0},
                         decode={"power_per_worker_w": 500.0})
    rng = np.random.default_rng(5)
    loads = [load(float(rng.uniform(0.1, 6.0)), float(rng.choice([100, 800, 2000])), float(rng.choice([32, 400, 1500])))
             for _ in range(80)]
    decisions = drive(loads, profile, config)
    for d in decisions:
        assert d.power_estimate_w <= 6000.0
        assert d.power_estimate_w == compute_power_w(d.num_prefill, d.num_decode, config)
    limited = [d for d in decisions if d.power_limited]
    assert limited, "the load must at times want more than the budget for this test to mean anything"
    for d in limited:
        text = " ".join(d.prefill_reasons + d.decode_reasons)
        wanted_w = float(re.search(r"power budget 6000 W: wanted \d+ prefill \+ \d+ decode = ([\d.]+) W, cut to", text)[1])
        assert wanted_w > 6000.0


def test_power_cut_shares_the_budget_between_tiers(profile):
    config = make_config(power_budget_w=4000.0, prefill={"power_per_worker_w": 500.0}, decode={"power_per_worker_w": 500.0})
    decision = drive([load(4.0, 1500, 1500)], profile, config)[0]
    assert decision.prefill_needed >= 5 and decision.decode_needed >= 5
    assert decision.num_prefill + decision.num_decode == 8  # 4000 W / 500 W, all of it used
    # Both tiers are cut to about the same fraction of what they need.
    wanted = (min(decision.prefill_needed, 16), min(decision.decode_needed, 16))  # after max_replicas
    fractions = (decision.num_prefill / wanted[0], decision.num_decode / wanted[1])
    assert abs(fractions[0] - fractions[1]) < 1 / min(wanted)
    assert decision.prefill_action == decision.decode_action == "power_budget"


def test_power_budget_below_minimums_is_a_config_error():
    with pytest.raises(ValueError, match="below the power of the minimum replicas"):
        make_config(power_budget_w=1000.0, prefill={"min_replicas": 1, "power_per_worker_w": 700.0},
                    decode={"min_replicas": 1, "power_per_worker_w": 700.0})


def test_observed_latency_corrects_the_profile(profile):
    config = make_config(correction_alpha=0.5)
    honest = drive([load(2.0, 700, 32)] * 4, profile, config)
    size = honest[-1].num_prefill
    assert honest[-1].next_state.prefill.correction == 1.0  # nothing observed: the profile is trusted
    predicted = compute_prefill_estimate(size, 2.0, LengthDistribution.constant(700), profile, 90.0).ttft_ms
    # Observed p90 TTFT twice what the profile predicts at that size: the engine is slower than measured.
    slow = drive([load(2.0, 700, 32)] * 4 + [load(2.0, 700, 32, prefill_ttft_ms=2 * predicted)] * 6, profile, config)
    corrections = [d.next_state.prefill.correction for d in slow[4:]]
    assert corrections[0] == pytest.approx(1.5)  # smoothed: halfway to the observed ratio
    assert corrections == sorted(corrections) and corrections[-1] > 1.5
    assert slow[-1].num_prefill > size
    assert any("correction x" in r and "observed p90 TTFT" in r for r in slow[4].prefill_reasons)
    # Faster than predicted: fewer workers than the raw profile asks for.
    fast = drive([load(2.0, 700, 32)] * 4 + [load(2.0, 700, 32, prefill_ttft_ms=0.5 * predicted)] * 10, profile, config)
    assert fast[-1].next_state.prefill.correction < 1.0


def test_correction_is_clamped_and_ignored_while_resizing(profile):
    config = make_config(correction_alpha=1.0, correction_max=2.0)
    absurd = drive([load(2.0, 700, 200, prefill_ttft_ms=1e6, decode_itl_ms=1e6)] * 3, profile, config)
    assert absurd[-1].next_state.prefill.correction == 2.0
    assert absurd[-1].next_state.decode.correction == 2.0
    # A pool that is not yet at the size last asked for (workers warming up) teaches nothing.
    state = PlannerState.initial(4, 1)
    obs = Observations(now_s=0, arrival_rate_per_s=2.0, prompt_tokens=LengthDistribution.constant(700),
                       output_tokens=LengthDistribution.constant(32), num_prefill=2, num_decode=1, prefill_ttft_ms=1e6)
    decision = decide(obs, profile, config.slo, state, config)
    assert decision.next_state.prefill.correction == 1.0
    assert any("still resizing" in r for r in decision.prefill_reasons)


def test_queued_requests_add_load(profile):
    config = make_config()
    base = dict(now_s=0, arrival_rate_per_s=1.0, prompt_tokens=LengthDistribution.constant(500),
                output_tokens=LengthDistribution.constant(100), num_prefill=1, num_decode=1)
    calm = decide(Observations(**base), profile, config.slo, None, config)
    backlog = decide(Observations(**base, prefill_queue_depth=60, decode_queue_depth=200), profile, config.slo, None, config)
    assert backlog.num_prefill > calm.num_prefill and backlog.num_decode > calm.num_decode
    assert any("60 prompts queued" in r for r in backlog.prefill_reasons)


def test_full_kv_cache_keeps_decode_workers(profile):
    config = make_config()
    obs = Observations(now_s=0, arrival_rate_per_s=0.5, prompt_tokens=LengthDistribution.constant(100),
                       output_tokens=LengthDistribution.constant(32), num_prefill=1, num_decode=3, decode_kv_usage=0.95)
    decision = decide(obs, profile, config.slo, PlannerState.initial(1, 3), config)
    assert decision.decode_needed == 4 and decision.num_decode == 4
    assert any("KV cache 95% full" in r for r in decision.decode_reasons)


def test_every_decision_explains_itself(profile):
    decisions = drive([load(2.0, 100 + 200 * i, 32 + 100 * i) for i in range(6)], profile, make_config())
    for d in decisions:
        assert d.prefill_action in ACTIONS and d.decode_action in ACTIONS
        assert d.prefill_reasons and d.decode_reasons
        assert d.prefill_reasons[0].startswith("plan for")
        assert "prefill:" in d.describe() and "decode:" in d.describe()


def test_forecast_scales_up_before_the_load_arrives(profile):
    ramp = [load(0.5 + 0.25 * i, 600, 32) for i in range(12)]
    constant = drive(ramp, profile, make_config(forecaster="constant"))
    holt = drive(ramp, profile, make_config(forecaster="holt", forecast_horizon_s=30.0))
    assert sum(counts(holt, "prefill")) > sum(counts(constant, "prefill"))
    assert all(h >= c for h, c in zip(counts(holt, "prefill"), counts(constant, "prefill"), strict=True))
    assert holt[-1].planned_rate_per_s > ramp[-1].rate_per_s


def test_no_load_goes_to_the_minimum(profile):
    config = make_config(prefill={"scale_down_window_s": 0, "scale_down_cooldown_s": 0, "scale_down_max_step": 16},
                         decode={"scale_down_window_s": 0, "scale_down_cooldown_s": 0, "scale_down_max_step": 16})
    decisions = drive([load(0.0, 100, 10)], profile, config, start=(5, 5))
    assert (decisions[0].num_prefill, decisions[0].num_decode) == (1, 1)
    assert isinstance(config, PlannerConfig)
