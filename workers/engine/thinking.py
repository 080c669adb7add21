"""Engine-side thinking budget: a vLLM V1 logits processor that forces thinking spans closed at their
cap and suppresses an early close below their minimum, per request, inside the engine.

Why not vLLM's own `SamplingParams.thinking_token_budget`: it needs an engine-wide reasoning config
(one set of start/end ids for every request), has no minimum, and does not force a close prefix. This
processor takes everything per request from `SamplingParams.extra_args`, and its decisions come from
`orchestrator.budget.thinking.ThinkingController`, the same tracker the budget meter bills with.

Use:
1. Engine construction: `logits_processors=[THINKING_LOGITS_PROCESSOR]` in the engine args
   (`vllm.LLM(..., logits_processors=[...])` or `AsyncEngineArgs(logits_processors=[...])`).
2. Per request: `SamplingParams(..., extra_args={**other, **thinking_sampling_args(budget, start_ids,
   end_ids, wait_ids, close_prefix_ids=newline_ids)})`, with the delimiter ids from
   `delimiter_token_ids(tokenizer, text)`. A request without thinking limits gets `{}` and is untouched.

Life of a request in the processor (vLLM's engine-core process calls every method; nothing blocks):
1. `update_state(batch_update)` before a step: a newly added request with our key in `extra_args` gets
   a controller, fed with any tokens it already generated (a preempted request comes back with them;
   a request continued on another engine carries them at the end of its prompt, after the first
   `num_prompt_tokens` given to `thinking_sampling_args`);
   removed/moved rows follow vLLM's persistent batch.
2. `apply(logits)` before sampling: each controlled row is fed the tokens generated since the last
   step (the list is vLLM's live reference), asks `next_action(argmax)` and applies it: `Force(t)`
   leaves only token t possible, `Ban(ids)` makes those impossible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from orchestrator.budget.thinking import Ban, Force, ThinkingController, starts_in_thinking
from orchestrator.request import Budget

if TYPE_CHECKING:
    from vllm.config import VllmConfig

EXTRA_ARGS_KEY = "pdserve_thinking"
THINKING_LOGITS_PROCESSOR = "workers.engine.thinking:ThinkingBudgetLogitsProcessor"


def delimiter_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` encoded on its own, without special tokens (how delimiters are matched)."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise ValueError(f"{text!r} encodes to no tokens")
    return ids


def thinking_sampling_args(
    budget: Budget,
    think_start_ids: Sequence[int],
    think_end_ids: Sequence[int],
    wait_ids: Sequence[int],
    *,
    close_prefix_ids: Sequence[int] = (),
    num_prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """The `SamplingParams.extra_args` entries that make the processor enforce `budget`'s thinking limits.

    `budget` is the effective budget (after admission). Empty when it has neither a thinking maximum nor a
    minimum. `close_prefix_ids` (a newline, say) are forced before the end delimiter at the cap and count
    as thinking, inside the budget. With `budget.start_thinking` the prompt must already end inside a span
    (with the start delimiter); a prompt that ends with the start delimiter is detected anyway.
    `num_prompt_tokens`: set when the engine's prompt is the original prompt of that length followed by
    tokens generated elsewhere (a decode continuing after the prefill's first token, a migrated request).
    """
    if budget.max_thinking_tokens is None and budget.min_thinking_tokens is None:
        return {}
    return {EXTRA_ARGS_KEY: {
        "max_thinking_tokens": budget.max_thinking_tokens,
        "min_thinking_tokens": budget.min_thinking_tokens,
        "start_ids": [int(t) for t in think_start_ids],
        "end_ids": [int(t) for t in think_end_ids],
        "wait_ids": [int(t) for t in wait_ids],
        "close_prefix_ids": [int(t) for t in close_prefix_ids],
        "start_thinking": bool(budget.start_thinking),
        "num_prompt_tokens": num_prompt_tokens,
    }}


class _Row:
    """One request's controller and the live list of its generated tokens."""

    def __init__(self, controller: ThinkingController, output_ids: list[int]) -> None:
        self.controller = controller
        self.output_ids = output_ids
        self.num_fed = 0

    def feed(self) -> None:
        for token_id in self.output_ids[self.num_fed:]:
            if token_id < 0:  # async scheduling placeholder: not sampled yet
                break
            self.controller.observe(token_id)
            self.num_fed += 1


def _controller(args: dict[str, Any], prompt_ids: Sequence[int] | None, stop_ids: set[int]) -> ThinkingController:
    return ThinkingController(
        args["start_ids"],
        args["end_ids"],
        max_thinking_tokens=args.get("max_thinking_tokens"),
        min_thinking_tokens=args.get("min_thinking_tokens"),
        wait_ids=args.get("wait_ids", ()),
        close_prefix_ids=args.get("close_prefix_ids", ()),
        stop_ids=stop_ids,
        thinking=starts_in_thinking(prompt_ids, args["start_ids"], bool(args.get("start_thinking"))),
    )


class ThinkingBudgetLogitsProcessor(LogitsProcessor):
    """Per-request thinking budget forcing (see the module docstring). Register by THINKING_LOGITS_PROCESSOR."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, _Row] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse malformed thinking arguments at the engine boundary (vLLM turns ValueError into HTTP 400)."""
        args = (sampling_params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if args is None:
            return
        if not args.get("start_ids") or not args.get("end_ids"):
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] needs non-empty start_ids and end_ids")
        low, high = args.get("min_thinking_tokens"), args.get("max_thinking_tokens")
        if any(v is not None and v < 0 for v in (low, high)) or (low is not None and high is not None and low > high):
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}]: need 0 <= min_thinking_tokens <= max_thinking_tokens")

    def is_argmax_invariant(self) -> bool:
        return False  # forcing and banning change the greedy choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self._rows, batch_update, self._new_row)

    @staticmethod
    def _new_row(params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]) -> _Row | None:
        args = (params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if args is None:
            return None
        stop_ids = set() if params.ignore_eos else set(params.all_stop_token_ids)
        num_prompt = args.get("num_prompt_tokens")
        original = prompt_ids if num_prompt is None or prompt_ids is None else prompt_ids[:num_prompt]
        row = _Row(_controller(args, original, stop_ids), output_ids)
        if num_prompt is not None and prompt_ids is not None:
            for token_id in prompt_ids[num_prompt:]:  # generated on another engine before this one
                row.controller.observe(token_id)
        row.feed()
        return row

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self._rows.items():
            if index >= logits.shape[0]:
                continue
            row.feed()
            controller = row.controller
            if not controller.tracker.in_thinking:
                continue
            action = controller.next_action(int(torch.argmax(logits[index]).item()))
            if isinstance(action, Force):
                logits[index].fill_(float("-inf"))
                logits[index, action.token_id] = 0.0
            elif isinstance(action, Ban):
                logits[index, list(action.token_ids)] = float("-inf")
        return logits
