"""Thinking spans at the token level: counting them, and deciding when to force them closed or open.

Delimiters (`<think>`, `</think>`) are token-id sequences, as the tokenizer encodes the delimiter text
on its own; in models without native think tokens they are several ordinary tokens
(SmolLM2: `</think>` = `</` `think` `>`). A delimiter counts only when its exact id sequence appears.

`ThinkingTracker` counts: feed it every generated token in order. Tokens inside a span are thinking
tokens, except the end delimiter itself; while the tail of a span could still be the start of the end
delimiter, those tokens are "pending" (not counted yet). The budget meter and the engine-side
controller share this tracker, so the number the client is billed for and the number the engine
enforces are the same number.

`ThinkingController` decides, before each token, what the engine must do so that:
- thinking never exceeds `max_thinking_tokens`: when the span has used up its budget, the end
  delimiter is forced, token by token ("budget forcing"), preceded by the close prefix (a newline by
  default, counted as thinking) when that exactly fills the budget; the answer then continues. A
  model half-way through writing the end delimiter at the cap has it completed;
- below `min_thinking_tokens`, the end delimiter (and the stop tokens) are banned; when the model's
  preferred next token would start closing, the wait text ("Wait") is forced instead (s1).
Pure and deterministic: used inside vLLM (`workers/engine/thinking.py`) and by simulated engines.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


def _match_len(tail: Sequence[int], delimiter: Sequence[int], limit: int) -> int:
    """Longest k <= limit such that the last k tokens of `tail` are the first k of `delimiter`."""
    for k in range(min(len(delimiter), len(tail), limit), 0, -1):
        if list(tail[-k:]) == list(delimiter[:k]):
            return k
    return 0


def starts_in_thinking(prompt_ids: Sequence[int] | None, start_ids: Sequence[int], start_thinking: bool) -> bool:
    """Whether generation begins inside a thinking span: the request asked for it (`start_thinking`,
    the prompt then ends with the start delimiter) or the prompt ends with the start delimiter anyway
    (a chat template that opens the span itself)."""
    if start_thinking:
        return True
    return bool(prompt_ids) and len(prompt_ids) >= len(start_ids) and list(prompt_ids[-len(start_ids):]) == list(start_ids)


class ThinkingTracker:
    """Incremental count of thinking tokens over one request's generated tokens."""

    def __init__(self, start_ids: Sequence[int], end_ids: Sequence[int], *, thinking: bool = False) -> None:
        """`thinking`: the prompt already opened a span (it ends with the start delimiter)."""
        if not start_ids or not end_ids:
            raise ValueError("think delimiters must encode to at least one token each")
        self.start_ids = tuple(start_ids)
        self.end_ids = tuple(end_ids)
        self.in_thinking = thinking
        self.num_spans_closed = 0
        self.num_tokens = 0
        self._closed_thinking_tokens = 0
        self._span_tokens = 0  # tokens since the current span opened (end-delimiter prefix included)
        self._since_switch = 0  # tokens since the last delimiter completed
        self._tail: list[int] = []
        self.pending = 0  # length of the delimiter prefix the tail currently matches

    @property
    def num_thinking_tokens(self) -> int:
        """Thinking tokens so far, not counting a tail that may still become the end delimiter."""
        current = self._span_tokens - self.pending if self.in_thinking else 0
        return self._closed_thinking_tokens + current

    @property
    def num_used_tokens(self) -> int:
        """Thinking tokens so far if the pending tail turns out not to be the end delimiter."""
        return self._closed_thinking_tokens + (self._span_tokens if self.in_thinking else 0)

    def observe(self, token_id: int) -> None:
        """Feed one generated token."""
        self.num_tokens += 1
        self._since_switch += 1
        self._tail.append(token_id)
        del self._tail[: -max(len(self.start_ids), len(self.end_ids))]
        if self.in_thinking:
            self._span_tokens += 1
        delimiter = self.end_ids if self.in_thinking else self.start_ids
        self.pending = _match_len(self._tail, delimiter, self._since_switch)
        if self.pending == len(delimiter):
            self._switch()

    def copy(self) -> ThinkingTracker:
        """An independent tracker in the same state (to ask "what if this token came next?")."""
        clone = object.__new__(ThinkingTracker)
        clone.__dict__.update(self.__dict__)
        clone._tail = list(self._tail)
        return clone

    def observe_all(self, token_ids: Iterable[int]) -> None:
        for token_id in token_ids:
            self.observe(token_id)

    def _switch(self) -> None:
        if self.in_thinking:
            self._closed_thinking_tokens += self._span_tokens - len(self.end_ids)
            self.num_spans_closed += 1
        self.in_thinking = not self.in_thinking
        self._span_tokens = 0
        self._since_switch = 0
        self.pending = 0


@dataclass(frozen=True)
class Force:
    """The next token must be `token_id`."""

    token_id: int


@dataclass(frozen=True)
class Ban:
    """The next token must not be any of `token_ids`."""

    token_ids: frozenset[int]


Action = Force | Ban | None


class ThinkingController:
    """Per-request budget forcing over a `ThinkingTracker`.

    Life of a step: the engine calls `observe` for each token it generated, then `next_action(top)`
    with its preferred next token (the argmax), and applies the action to the logits.
    """

    def __init__(
        self,
        start_ids: Sequence[int],
        end_ids: Sequence[int],
        *,
        max_thinking_tokens: int | None = None,
        min_thinking_tokens: int | None = None,
        wait_ids: Sequence[int] = (),
        close_prefix_ids: Sequence[int] = (),
        stop_ids: Collection[int] = (),
        thinking: bool = False,
    ) -> None:
        if max_thinking_tokens is not None and min_thinking_tokens is not None and min_thinking_tokens > max_thinking_tokens:
            raise ValueError(f"min_thinking_tokens={min_thinking_tokens} is above max_thinking_tokens={max_thinking_tokens}")
        self.tracker = ThinkingTracker(start_ids, end_ids, thinking=thinking)
        self.max_thinking_tokens = max_thinking_tokens
        self.min_thinking_tokens = min_thinking_tokens
        self.wait_ids = tuple(wait_ids)
        self.close_prefix_ids = tuple(close_prefix_ids)
        self.stop_ids = frozenset(stop_ids)
        self.num_forced_closes = 0
        self.num_forced_waits = 0
        self._forcing: tuple[int, ...] = ()  # a sequence being forced, and how far it got
        self._forced_pos = 0
        self._forcing_close = False

    def observe(self, token_id: int) -> None:
        """Feed one generated token (forced or sampled)."""
        was_thinking = self.tracker.in_thinking
        self.tracker.observe(token_id)
        if self._forcing:
            if token_id == self._forcing[self._forced_pos]:
                self._forced_pos += 1
            else:  # something else chose the token (another processor): give the sequence up
                self._forcing = ()
            if self._forced_pos >= len(self._forcing):
                self._forcing = ()
        if was_thinking and not self.tracker.in_thinking:
            self._forcing = ()
            self._forcing_close = False

    def next_action(self, top_token_id: int | None = None) -> Action:
        """What the next token must (not) be. `top_token_id`: the engine's preferred token, if known."""
        if not self.tracker.in_thinking:
            return None
        if self._forcing and (self._forcing_close or not self._close_due()):
            return Force(self._forcing[self._forced_pos])
        if self._close_due():
            return self._start(self._close_sequence(), close=True)
        early = self._early_close_tokens()
        if not early:
            return None
        if top_token_id in early and self.wait_ids:
            return self._start(self.wait_ids, close=False)
        return Ban(early)

    def _close_due(self) -> bool:
        """True when the span must close now for thinking to stay within max_thinking_tokens."""
        if self.max_thinking_tokens is None:
            return False
        remaining = self.max_thinking_tokens - self.tracker.num_used_tokens
        if remaining <= 0 or self.tracker.pending:
            return remaining <= 0
        # The close prefix counts as thinking: start it when it exactly fills the budget. A budget
        # smaller than the prefix closes without it, at the cap.
        return remaining == len(self.close_prefix_ids)

    def _close_sequence(self) -> tuple[int, ...]:
        end = self.tracker.end_ids
        if self.tracker.pending:  # the model is half-way through the delimiter: complete it
            return end[self.tracker.pending:]
        remaining = self.max_thinking_tokens - self.tracker.num_used_tokens  # type: ignore[operator]
        if self.close_prefix_ids and remaining == len(self.close_prefix_ids):
            return self.close_prefix_ids + end
        return end

    def _early_close_tokens(self) -> frozenset[int]:
        """Tokens that would end thinking (or the request) below min_thinking_tokens."""
        if self.min_thinking_tokens is None:
            return frozenset()
        if self.tracker.num_used_tokens - self.tracker.pending >= self.min_thinking_tokens:
            return frozenset()
        return self.stop_ids | {self.tracker.end_ids[self.tracker.pending]}

    def _start(self, sequence: tuple[int, ...], *, close: bool) -> Force:
        self._forcing = sequence
        self._forced_pos = 0
        self._forcing_close = close
        if close:
            self.num_forced_closes += 1
        else:
            self.num_forced_waits += 1
        return Force(sequence[0])
