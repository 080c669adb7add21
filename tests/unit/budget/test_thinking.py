"""Thinking spans at the token level: counting with multi-token delimiters, forcing close, forcing "Wait"."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.budget import Ban, Force, ThinkingController, ThinkingTracker

from .conftest import END, EOS, FILLER, NEWLINE, START, WAIT, reference_thinking_count

# Delimiter fragments on their own and interleaved, so partial and overlapping matches are frequent.
TOKENS = st.sampled_from(sorted(set(START + END + FILLER + NEWLINE + WAIT)))


def test_multi_token_delimiters_count_only_the_span_between_them():
    tracker = ThinkingTracker(START, END)
    tracker.observe_all([5, *START, 5, 6, 7, *END, 8])
    assert tracker.num_thinking_tokens == 3
    assert not tracker.in_thinking
    assert tracker.num_spans_closed == 1


def test_a_tail_that_may_become_the_end_delimiter_is_pending_not_thinking():
    tracker = ThinkingTracker(START, END, thinking=True)
    tracker.observe_all([5, 6, END[0], END[1]])
    assert (tracker.num_thinking_tokens, tracker.pending) == (2, 2)
    tracker.observe(7)  # not the delimiter after all: the pending tokens were thinking
    assert (tracker.num_thinking_tokens, tracker.pending) == (5, 0)


def test_start_delimiter_tokens_inside_a_span_are_thinking():
    # "<think>" and "</think>" share "think" ">": inside a span only the end delimiter ends it.
    tracker = ThinkingTracker(START, END, thinking=True)
    tracker.observe_all([*START, *END])
    assert tracker.num_thinking_tokens == 3
    assert not tracker.in_thinking


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=60), st.booleans())
def test_tracker_matches_a_plain_scan(tokens, thinking):
    tracker = ThinkingTracker(START, END, thinking=thinking)
    for index, token in enumerate(tokens):
        tracker.observe(token)
        assert tracker.num_thinking_tokens == reference_thinking_count(tokens[: index + 1], thinking=thinking)


def _run(controller, preferred, *, limit=200):
    """A model that wants to emit `preferred` (then filler); the controller's actions win."""
    out = []
    for step in range(limit):
        want = preferred[step] if step < len(preferred) else FILLER[step % len(FILLER)]
        action = controller.next_action(want)
        if isinstance(action, Force):
            token = action.token_id
        elif isinstance(action, Ban) and want in action.token_ids:
            token = FILLER[0]
        else:
            token = want
        if token == EOS:
            break
        controller.observe(token)
        out.append(token)
    return out


def test_at_the_cap_a_newline_then_the_end_delimiter_are_forced_and_the_answer_continues():
    controller = ThinkingController(START, END, max_thinking_tokens=8, close_prefix_ids=NEWLINE, thinking=True)
    out = _run(controller, [5] * 30, limit=20)
    assert out[:11] == [5] * 7 + list(NEWLINE) + list(END)
    assert reference_thinking_count(out, thinking=True) == 8
    assert out[11:] == [5] * 9  # answer tokens after the forced close
    assert controller.num_forced_closes == 1


def test_a_half_written_end_delimiter_at_the_cap_is_completed():
    controller = ThinkingController(START, END, max_thinking_tokens=3, thinking=True)
    out = _run(controller, [5, 6, END[0], 7, 7, 7], limit=8)
    assert out[:5] == [5, 6, *END]
    assert reference_thinking_count(out, thinking=True) == 2


def test_zero_budget_closes_immediately_without_prefix():
    controller = ThinkingController(START, END, max_thinking_tokens=0, close_prefix_ids=NEWLINE, thinking=True)
    assert _run(controller, [], limit=4)[:3] == list(END)


def test_below_the_minimum_an_attempt_to_close_becomes_wait():
    controller = ThinkingController(START, END, min_thinking_tokens=6, wait_ids=WAIT, stop_ids={EOS}, thinking=True)
    out = _run(controller, [5, END[0], END[1], END[2], 6, EOS, 7, 7, *END, 8], limit=12)
    # The close became "Wait" (the model's stray "think" ">" are thinking), and so did the early EOS.
    assert out[:6] == [5, *WAIT, END[1], END[2], 6, *WAIT]
    assert out[8:] == [*END, 8]  # closes once past the minimum
    assert reference_thinking_count(out, thinking=True) >= 6
    assert controller.num_forced_waits == 2  # the early close and the early EOS


def test_without_wait_text_the_early_close_is_banned():
    controller = ThinkingController(START, END, min_thinking_tokens=2, thinking=True)
    assert controller.next_action(END[0]) == Ban(frozenset({END[0]}))


def test_thinking_is_opened_by_the_start_delimiter_in_the_output():
    controller = ThinkingController(START, END, max_thinking_tokens=2)
    out = _run(controller, [7, *START, 5, 5, 5, 5, 5], limit=10)
    assert out[:7] == [7, *START, 5, 5, *END][:7]
    assert reference_thinking_count(out) == 2


@settings(max_examples=300, deadline=None)
@given(
    preferred=st.lists(st.one_of(TOKENS, st.just(EOS)), max_size=80),
    max_thinking=st.one_of(st.none(), st.integers(0, 20)),
    min_thinking=st.integers(0, 20),
    thinking=st.booleans(),
    prefix=st.sampled_from([(), NEWLINE, (198, 198)]),
)
def test_forcing_keeps_every_span_within_min_and_max(preferred, max_thinking, min_thinking, thinking, prefix):
    min_thinking = min(min_thinking, max_thinking) if max_thinking is not None else min_thinking
    controller = ThinkingController(START, END, max_thinking_tokens=max_thinking, min_thinking_tokens=min_thinking,
                                    wait_ids=WAIT, close_prefix_ids=prefix, stop_ids={EOS}, thinking=thinking)
    out = _run(controller, preferred, limit=120)
    tracker = ThinkingTracker(START, END, thinking=thinking)
    for token in out:
        closed_before = tracker.num_spans_closed
        tracker.observe(token)
        if max_thinking is not None:
            assert tracker.num_thinking_tokens <= max_thinking
        if tracker.num_spans_closed > closed_before:
            assert tracker.num_thinking_tokens >= min_thinking  # no span closed below the minimum
