"""The budget meter: per-token charges, verdicts, usage; and the property that no request ever
exceeds any dimension of its budget, over many random budgets and token streams."""

from __future__ import annotations

import math

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from orchestrator.budget import AdmissionRequest, Ban, BudgetMeter, Force, ThinkingController, Verdict, admit, charge
from orchestrator.config.budget import TenantConfig
from orchestrator.errors import BudgetRefused
from orchestrator.request import Budget, FinishReason

from .conftest import END, EOS, FILLER, NEWLINE, PRICING, START, WAIT, make_admission, reference_thinking_count


def meter_for(budget=Budget(), **kwargs):
    return BudgetMeter(make_admission(budget, **kwargs), START, END)


def test_length_stop_comes_with_the_last_token_that_fits():
    meter = meter_for(Budget(max_output_tokens=3))
    assert charge(meter, [5, 6], 0.1) == Verdict(2, None, False, 8e-6, 2.0)
    verdict = charge(meter, [7], 0.2)
    assert (verdict.num_accepted, verdict.finish_reason) == (1, FinishReason.LENGTH)
    assert charge(meter, [8], 0.3).num_accepted == 0  # finished: nothing more is accepted
    assert meter.usage.output_tokens == 3


def test_a_chunk_that_overshoots_is_cut_to_what_fits():
    meter = meter_for(Budget(max_total_tokens=14), num_prompt_tokens=10)
    verdict = charge(meter, [5, 6, 7, 8, 9, 10], 0.1)
    assert (verdict.num_accepted, verdict.finish_reason) == (4, FinishReason.TOTAL_BUDGET)
    assert meter.usage.total_tokens == 14


def test_cost_and_energy_stop_before_the_token_that_would_exceed():
    # Prefill: 10 x $1e-6; each decode token $4e-6. $3e-5 leaves room for 5 decode tokens.
    meter = meter_for(Budget(max_cost_usd=3e-5))
    verdict = charge(meter, FILLER * 2, 0.1)
    assert (verdict.num_accepted, verdict.finish_reason) == (5, FinishReason.COST_BUDGET)
    assert meter.usage.cost_usd == pytest.approx(3e-5)
    meter = meter_for(Budget(max_energy_j=4.5))  # prefill 1 J, decode 1 J per token
    assert charge(meter, FILLER * 2, 0.1).num_accepted == 3
    assert meter.finish_reason is FinishReason.COST_BUDGET


def test_deadline_stops_even_without_tokens_and_accepts_nothing_late():
    meter = meter_for(Budget(deadline_ms=500))
    assert not charge(meter, [], 0.4).stop  # queue / prefill / transfer timer tick
    verdict = charge(meter, [5, 6], 0.5)
    assert (verdict.num_accepted, verdict.finish_reason) == (0, FinishReason.DEADLINE)
    assert meter.time_left_s(0.5) == pytest.approx(0.0)


def test_thinking_is_counted_between_multi_token_delimiters_and_is_output():
    meter = meter_for(Budget(start_thinking=True))
    charge(meter, [5, 6, 7, *END, 8, 9], 0.1)
    usage = meter.usage
    assert (usage.thinking_tokens, usage.output_tokens) == (3, 8)


def test_thinking_cap_is_reported_not_a_stop_when_the_engine_closes():
    meter = meter_for(Budget(max_thinking_tokens=4, start_thinking=True))
    verdicts = [charge(meter, [t], 0.1) for t in [5, 6, 7, *NEWLINE, *END, 8]]
    assert [v.thinking_capped for v in verdicts].count(True) == 1
    assert not any(v.stop for v in verdicts)
    assert meter.usage.thinking_tokens == 4


def test_thinking_past_the_cap_is_stopped_when_an_engine_does_not_force():
    meter = meter_for(Budget(max_thinking_tokens=4, start_thinking=True))
    verdict = charge(meter, [5] * 10, 0.1)
    assert (verdict.num_accepted, verdict.finish_reason) == (4, FinishReason.THINKING_BUDGET)


def test_usage_has_phase_times_and_a_cheaper_prefill_for_cached_tokens():
    meter = BudgetMeter(make_admission(Budget(), num_prompt_tokens=100), START, END, now_s=0.0)
    meter.enter("prefill", 0.010)
    meter.observe_cached(60)
    meter.enter("transfer", 0.030)
    meter.enter("decode", 0.035)
    charge(meter, [5, 6], 0.050)
    meter.finish(FinishReason.STOP, 0.060)
    usage = meter.usage
    assert (usage.queue_ms, usage.prefill_ms, usage.transfer_ms, usage.decode_ms) == pytest.approx((10, 20, 5, 25))
    assert usage.cached_tokens == 60
    assert usage.cost_usd == pytest.approx(40 * 1e-6 + 2 * 4e-6)
    assert meter.cost_usd_by_tier == pytest.approx({"prefill": 40e-6, "decode": 8e-6})
    assert meter.tokens_by_tier == {"prefill": 40, "decode": 2}


# -- the property -------------------------------------------------------------------------------

# Mostly ordinary tokens, delimiter fragments often, the stop token rarely (streams run into the limits).
TOKENS = st.sampled_from(list(FILLER) * 6 + sorted(set(START + END + NEWLINE + WAIT)) * 2 + [EOS])
OPTIONAL_INT = lambda low, high: st.one_of(st.none(), st.integers(low, high))  # noqa: E731

BUDGETS = st.builds(
    Budget,
    max_thinking_tokens=OPTIONAL_INT(0, 30),
    min_thinking_tokens=st.none(),
    max_output_tokens=OPTIONAL_INT(1, 80),
    max_total_tokens=OPTIONAL_INT(20, 160),
    deadline_ms=st.one_of(st.none(), st.floats(1, 2000)),
    max_cost_usd=st.one_of(st.none(), st.floats(1e-6, 5e-4)),
    max_energy_j=st.one_of(st.none(), st.floats(0.5, 150)),
    start_thinking=st.booleans(),
)


def simulate(admission, preferred, *, step_s, prefill_s, chunk, engine_forces, min_thinking):
    """A simulated engine loop: the model wants `preferred`; the thinking controller (when the engine
    enforces) forces or bans; tokens reach the meter in chunks of `chunk`, one step apart."""
    budget = admission.budget
    controller = ThinkingController(START, END, max_thinking_tokens=budget.max_thinking_tokens,
                                    min_thinking_tokens=min_thinking, wait_ids=WAIT, close_prefix_ids=NEWLINE,
                                    stop_ids={EOS}, thinking=budget.start_thinking)
    meter = BudgetMeter(admission, START, END, now_s=0.0)
    now, delivered, times, pending = 0.0, [], [], []
    verdict = charge(meter, [], now)
    if not verdict.stop:
        now = prefill_s
        verdict = charge(meter, [], now)
    for want in preferred:
        if verdict.stop:
            break
        action = controller.next_action(want) if engine_forces else None
        token = action.token_id if isinstance(action, Force) else want
        if isinstance(action, Ban) and token in action.token_ids:
            token = FILLER[0]
        if token == EOS:
            break
        controller.observe(token)
        pending.append(token)
        now += step_s
        if len(pending) == chunk:
            verdict = charge(meter, pending, now)
            delivered += pending[: verdict.num_accepted]
            times += [now] * verdict.num_accepted
            pending = []
    if not verdict.stop:
        verdict = charge(meter, pending, now)
        delivered += pending[: verdict.num_accepted]
        times += [now] * verdict.num_accepted
        meter.finish(FinishReason.STOP, now)
    return meter, delivered, times, now


@settings(max_examples=400, deadline=None)
@given(
    budget=BUDGETS,
    num_prompt_tokens=st.integers(1, 60),
    max_tokens=OPTIONAL_INT(1, 100),
    preferred=st.integers(0, 120).flatmap(lambda n: st.lists(TOKENS, min_size=n, max_size=n)),
    step_ms=st.floats(1, 100),
    prefill_ms=st.floats(0, 300),
    chunk=st.integers(1, 4),
    engine_forces=st.booleans(),
    min_fraction=st.one_of(st.none(), st.floats(0, 1)),
)
def test_no_request_exceeds_any_dimension_of_its_budget(budget, num_prompt_tokens, max_tokens, preferred, step_ms,
                                                        prefill_ms, chunk, engine_forces, min_fraction):
    try:
        admission = admit(AdmissionRequest("t", num_prompt_tokens, max_tokens=max_tokens), budget, TenantConfig(),
                          PRICING, now_s=0.0, predicted_prefill_ms=prefill_ms)
    except BudgetRefused:
        event("refused")
        return  # refusals are the admission tests' subject
    min_thinking = None
    if min_fraction is not None and budget.max_thinking_tokens is not None:
        min_thinking = int(min_fraction * budget.max_thinking_tokens)
    meter, delivered, times, end_s = simulate(admission, preferred, step_s=step_ms / 1000, prefill_s=prefill_ms / 1000,
                                              chunk=chunk, engine_forces=engine_forces, min_thinking=min_thinking)
    usage = meter.usage
    effective = admission.budget
    assert usage.output_tokens == len(delivered)
    if max_tokens is not None:
        assert usage.output_tokens <= max_tokens
    if effective.max_output_tokens is not None:
        assert usage.output_tokens <= effective.max_output_tokens
    if effective.max_total_tokens is not None:
        assert usage.prompt_tokens + usage.output_tokens <= effective.max_total_tokens
    if effective.max_cost_usd is not None:
        assert usage.cost_usd <= effective.max_cost_usd * (1 + 1e-9)
    if effective.max_energy_j is not None:
        assert usage.energy_j <= effective.max_energy_j * (1 + 1e-9)
    thinking = reference_thinking_count(delivered, thinking=effective.start_thinking)
    assert usage.thinking_tokens == thinking
    if effective.max_thinking_tokens is not None:
        assert thinking <= effective.max_thinking_tokens
        if engine_forces:
            assert meter.finish_reason is not FinishReason.THINKING_BUDGET  # forcing, not stopping
    if admission.deadline_s != math.inf:
        assert all(t < admission.deadline_s for t in times)  # nothing delivered late
        if meter.finish_reason is FinishReason.DEADLINE:
            assert end_s <= admission.deadline_s + max(step_ms / 1000 * chunk, prefill_ms / 1000)
    assert meter.finished
    event(f"finish={meter.finish_reason.value} forces={engine_forces}")


def test_a_prompt_ending_with_the_start_delimiter_starts_in_thinking_as_in_the_engine():
    meter = BudgetMeter(make_admission(Budget()), START, END, prompt_ids=[1, 2, *START])
    charge(meter, [5, 6, *END, 7], 0.1)
    assert meter.usage.thinking_tokens == 2
    meter = BudgetMeter(make_admission(Budget()), START, END, prompt_ids=[1, 2, START[0]])
    charge(meter, [5, 6, *END, 7], 0.1)
    assert meter.usage.thinking_tokens == 0
