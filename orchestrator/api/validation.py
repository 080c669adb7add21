"""Request validation shared by the gRPC and HTTP servers.

Runs after the wire message became a `Request` and before the gateway sees it: every check here is
about the request alone (its prompt, sampling values, model, length against the model's context).
Budgets and quotas are the gateway's admission, not ours. Each refusal is an `InvalidRequest` (or
`ModelNotFound`) whose message says what to change; `InvalidField` also names the offending field,
which the HTTP API reports as OpenAI's `param`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from orchestrator.config.server import ServerConfig
from orchestrator.errors import InvalidRequest, ModelNotFound
from orchestrator.gateway.base import BaseGateway, ModelInfo
from orchestrator.request import Budget, Prompt, Request, Sampling

CHAT_ROLES = frozenset({"system", "user", "assistant"})
INT64_MAX = 2**63 - 1
MAX_REQUEST_ID_CHARS = 128
MAX_TEMPERATURE = 2.0  # OpenAI's range, and vLLM's: the engine refuses more (it was a 500, found by fuzzing)


class InvalidField(InvalidRequest):
    """An `InvalidRequest` caused by one field (`param`, dotted for nested fields)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def validate_request(request: Request, gateway: BaseGateway, config: ServerConfig) -> Request:
    """Check `request` and return it with its model resolved and max_tokens fitted to the context.

    When the prompt plus max_tokens would overflow the model's context, max_tokens is lowered to what
    fits (the stream then ends with finish reason `length`, as vLLM does); a prompt that leaves no room
    for a single output token is refused. Calls `gateway.models()` and `gateway.count_prompt_tokens`
    (on the caller's event loop). Raises InvalidRequest / InvalidField / ModelNotFound.
    """
    model = resolve_model(request.model, gateway.models())
    check_request_id(request.request_id)
    check_prompt(request.prompt)
    check_sampling(request.sampling, config)
    check_budget(request.budget)
    request = replace(request, model=model.id)
    num_prompt_tokens = gateway.count_prompt_tokens(request)
    room = model.max_model_len - num_prompt_tokens
    if room < 1:
        raise InvalidField("prompt", f"the prompt is {num_prompt_tokens} tokens but model {model.id!r} has a context "
                                     f"of {model.max_model_len} tokens (prompt plus output): shorten the prompt")
    if request.sampling.max_tokens > room:
        request = replace(request, sampling=replace(request.sampling, max_tokens=room))
    return request


def resolve_model(name: str | None, served: list[ModelInfo]) -> ModelInfo:
    """The served model `name` refers to (the first one when name is empty)."""
    if not served:
        raise ModelNotFound("this cluster serves no model yet: wait for it to load, then retry")
    if not name:
        return served[0]
    for model in served:
        if model.id == name:
            return model
    names = ", ".join(repr(m.id) for m in served)
    raise ModelNotFound(f"model {name!r} is not served here: use one of {names} (or leave model empty)")


def check_request_id(request_id: str, param: str = "request_id") -> None:
    """A client-chosen id must be short and printable: it shows up in logs, metrics and cancel URLs."""
    if not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidField(param, f"{param} must be 1 to {MAX_REQUEST_ID_CHARS} printable characters "
                                  f"(or leave it out and the server makes one)")


def _shown(value: object) -> str:
    """A value as an error message quotes it: huge numbers cut short."""
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_prompt(prompt: Prompt) -> None:
    given = [kind for kind in ("text", "token_ids", "messages") if getattr(prompt, kind) is not None]
    if len(given) != 1:
        raise InvalidField("prompt", "the request has no prompt: send prompt text, token ids or chat messages")
    if prompt.text is not None and not prompt.text:
        raise InvalidField("prompt", "the prompt is empty: send at least one character")
    if prompt.token_ids is not None:
        if not prompt.token_ids:
            raise InvalidField("prompt", "the prompt has no token ids: send at least one")
        if any(t < 0 or t > INT64_MAX for t in prompt.token_ids):
            raise InvalidField("prompt", "token ids must be non-negative integers")
    if prompt.messages is not None:
        _check_messages(prompt)


def _check_messages(prompt: Prompt) -> None:
    if not prompt.messages:
        raise InvalidField("messages", "the chat has no messages: send at least one")
    for i, message in enumerate(prompt.messages):
        if message.role not in CHAT_ROLES:
            raise InvalidField(f"messages.{i}.role", f"message {i} has role {message.role[:40]!r}: "
                                                     f"use one of {', '.join(sorted(CHAT_ROLES))}")
    if not any(m.content for m in prompt.messages):
        raise InvalidField("messages", "every chat message is empty: send some content")


def check_sampling(sampling: Sampling, config: ServerConfig) -> None:
    if not isinstance(sampling.max_tokens, int) or sampling.max_tokens <= 0:
        raise InvalidField("max_tokens", f"max_tokens is {_shown(sampling.max_tokens)}: ask for at least 1 token")
    if sampling.max_tokens > config.max_output_tokens:
        raise InvalidField("max_tokens", f"max_tokens is {_shown(sampling.max_tokens)}, above this server's limit of "
                                         f"{config.max_output_tokens}: ask for fewer")
    if not _finite(sampling.temperature) or not 0 <= sampling.temperature <= MAX_TEMPERATURE:
        raise InvalidField("temperature", f"temperature is {_shown(sampling.temperature)}: use a number in "
                                          f"[0, {MAX_TEMPERATURE:g}] (0 is greedy)")
    if not _finite(sampling.top_p) or not 0 < sampling.top_p <= 1:
        raise InvalidField("top_p", f"top_p is {_shown(sampling.top_p)}: use a number in (0, 1] (1 keeps every token)")
    if not -1 <= sampling.top_k <= INT64_MAX:
        raise InvalidField("top_k", f"top_k is {_shown(sampling.top_k)}: use a positive number, or 0 / -1 for no limit")
    if sampling.seed is not None and not -(2**63) <= sampling.seed <= INT64_MAX:
        raise InvalidField("seed", "seed must fit in a signed 64-bit integer")
    _check_stop(sampling.stop, config)


def _check_stop(stop: tuple[str, ...], config: ServerConfig) -> None:
    if len(stop) > config.max_stop_sequences:
        raise InvalidField("stop", f"{len(stop)} stop sequences given: send at most {config.max_stop_sequences}")
    for text in stop:
        if not text:
            raise InvalidField("stop", "a stop sequence is empty: remove it")
        if len(text) > config.max_stop_sequence_chars:
            raise InvalidField("stop", f"a stop sequence is {len(text)} characters long: keep each to at most "
                                       f"{config.max_stop_sequence_chars}")


_BUDGET_MINIMUMS = {
    "max_thinking_tokens": 0, "min_thinking_tokens": 0, "max_output_tokens": 1, "max_total_tokens": 1,
    "deadline_ms": 0, "max_cost_usd": 0, "max_energy_j": 0,
}


def check_budget(budget: Budget) -> None:
    """Shape checks only (non-negative, finite, ordered); whether the request fits is admission's job."""
    for name, minimum in _BUDGET_MINIMUMS.items():
        value = getattr(budget, name)
        if value is None:
            continue
        if not _finite(value) or value < minimum or value > INT64_MAX:
            raise InvalidField(f"budget.{name}", f"budget.{name} is {_shown(value)}: use a number >= {minimum}")
    if _thinking_bounds_inverted(budget):
        raise InvalidField("budget.min_thinking_tokens", "budget.min_thinking_tokens is above max_thinking_tokens: "
                                                         "lower the minimum or raise the maximum")
    if not -(2**31) <= budget.priority < 2**31:
        raise InvalidField("budget.priority", "budget.priority must fit in a signed 32-bit integer")


def _thinking_bounds_inverted(budget: Budget) -> bool:
    low, high = budget.min_thinking_tokens, budget.max_thinking_tokens
    return low is not None and high is not None and low > high
