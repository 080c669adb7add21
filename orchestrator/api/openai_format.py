"""OpenAI's JSON shapes <-> internal types: request bodies in, completion objects and SSE chunks out.

Pure functions, used by the HTTP server. A body is read strictly: a field of the wrong type, an
unknown field, or a feature pdserve does not implement (n > 1, logprobs, tools, ...) is an
`InvalidField` naming the field, as OpenAI's own API answers. pdserve's own fields ride under one
extension key, `pdserve`:

    {"model": "...", "prompt": "...", "pdserve": {"request_id": "my-id", "budget": {"max_thinking_tokens": 256,
     "deadline_ms": 2000, "max_cost_usd": 0.01}}}

(with the `openai` package: `extra_body={"pdserve": {...}}`). vLLM's sampling extensions `top_k` and
`ignore_eos` are accepted at the top level, as vLLM does.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any

from orchestrator.api.validation import InvalidField, check_request_id
from orchestrator.request import Budget, ChatMessage, FinishReason, GenerationChunk, Prompt, Request, Sampling, Usage

EXTENSION_KEY = "pdserve"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# Accepted only at their neutral value: anything else asks for a feature pdserve does not implement.
_NEUTRAL = {
    "n": (1,), "best_of": (1,), "echo": (False,), "suffix": ("",), "logprobs": (False, 0),
    "top_logprobs": (0,), "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},),
    "tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (True, False),
    "response_format": ({"type": "text"},), "service_tier": ("auto", "default"),
}
_IGNORED = {"user": str, "store": bool, "metadata": dict}
_SHARED = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
           "ignore_eos", EXTENSION_KEY, *_NEUTRAL, *_IGNORED}
COMPLETION_FIELDS = _SHARED | {"prompt"}
CHAT_FIELDS = _SHARED | {"messages", "max_completion_tokens"}
_BUDGET_INTS = ("max_thinking_tokens", "min_thinking_tokens", "max_output_tokens", "max_total_tokens", "priority")
_BUDGET_FLOATS = ("deadline_ms", "max_cost_usd", "max_energy_j")


@dataclass(frozen=True)
class ResponseOptions:
    """How to answer: `kind` is `text_completion` or `chat.completion`."""

    kind: str
    model: str
    stream: bool = False
    include_usage: bool = False
    created: int = 0


# ---- reading bodies ---------------------------------------------------------------------------------

def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _want(value: Any, param: str, kinds: tuple[type, ...], label: str) -> Any:
    """`value` if it has one of `kinds` (a bool is never a number), else InvalidField."""
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidField(param, f"{param} must be {label}, got a boolean")
    if not isinstance(value, kinds):
        raise InvalidField(param, f"{param} must be {label}, got {_type_name(value)}")
    return value


def _optional(body: dict, name: str, kinds: tuple[type, ...], label: str, param: str | None = None) -> Any:
    value = body.get(name)
    return None if value is None else _want(value, param or name, kinds, label)


def _optional_number(body: dict, name: str, param: str | None = None) -> float | None:
    """A JSON number as a float; an integer too large for one is out of range, not a crash."""
    value = _optional(body, name, (int, float), "a number", param)
    try:
        return None if value is None else float(value)
    except OverflowError:
        raise InvalidField(param or name, f"{param or name} is out of range: send a number of sensible size") from None


def _shown(value: Any) -> str:
    """A JSON value as an error message quotes it, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:36] + "..."


def _check_fields(body: dict, allowed: set[str], where: str = "") -> None:
    for name in body:
        if name not in allowed:
            raise InvalidField(f"{where}{name}", f"unknown field {where}{name!s:.60}: remove it "
                                                 f"(pdserve's own fields go under {EXTENSION_KEY!r})")


def _check_top_level(body: dict, allowed: set[str]) -> None:
    _check_fields(body, allowed)
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and value not in neutral:
            raise InvalidField(name, f"{name}={_shown(value)} is not supported by pdserve: leave it out")
    for name, kind in _IGNORED.items():
        _optional(body, name, (kind,), {str: "a string", bool: "a boolean", dict: "an object"}[kind])


def _sampling(body: dict, max_tokens_field: str | None, default_max_tokens: int | None) -> Sampling:
    defaults = Sampling()
    max_tokens = _optional(body, "max_tokens", (int,), "an integer")
    if max_tokens_field and max_tokens is None:
        max_tokens = _optional(body, max_tokens_field, (int,), "an integer")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    stop = _want(stop, "stop", (list,), "a string or an array of strings") if stop is not None else []
    for item in stop:
        _want(item, "stop", (str,), "a string or an array of strings")
    values = {
        "max_tokens": max_tokens if max_tokens is not None else (default_max_tokens or defaults.max_tokens),
        "temperature": _optional_number(body, "temperature"),
        "top_p": _optional_number(body, "top_p"),
        "top_k": _optional(body, "top_k", (int,), "an integer"),
        "seed": _optional(body, "seed", (int,), "an integer"),
        "ignore_eos": _optional(body, "ignore_eos", (bool,), "a boolean"),
    }
    values = {name: value for name, value in values.items() if value is not None}
    return Sampling(**values, stop=tuple(stop))


def _extension(body: dict) -> tuple[Budget, str | None]:
    extension = _optional(body, EXTENSION_KEY, (dict,), "an object") or {}
    _check_fields(extension, {"budget", "request_id"}, f"{EXTENSION_KEY}.")
    request_id = _optional(extension, "request_id", (str,), "a string", f"{EXTENSION_KEY}.request_id")
    if request_id is not None:
        check_request_id(request_id, f"{EXTENSION_KEY}.request_id")
    raw = _optional(extension, "budget", (dict,), "an object", f"{EXTENSION_KEY}.budget") or {}
    where = f"{EXTENSION_KEY}.budget."
    _check_fields(raw, {*_BUDGET_INTS, *_BUDGET_FLOATS, "start_thinking"}, where)
    values = {}
    for name in _BUDGET_INTS:
        values[name] = _optional(raw, name, (int,), "an integer", where + name)
    for name in _BUDGET_FLOATS:
        values[name] = _optional_number(raw, name, where + name)
    values["start_thinking"] = _optional(raw, "start_thinking", (bool,), "a boolean", where + "start_thinking")
    values["priority"] = values["priority"] or 0
    values["start_thinking"] = bool(values["start_thinking"])
    return Budget(**values), request_id


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(_optional(body, "stream", (bool,), "a boolean"))
    options = _optional(body, "stream_options", (dict,), "an object") or {}
    _check_fields(options, {"include_usage", "continuous_usage_stats"}, "stream_options.")
    include_usage = _optional(options, "include_usage", (bool,), "a boolean", "stream_options.include_usage")
    return stream, bool(include_usage)


def _prompt(body: dict) -> Prompt:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidField("prompt", "prompt is missing: send a string or an array of token ids")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return Prompt(text=prompt)
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return Prompt(token_ids=tuple(prompt))
    raise InvalidField("prompt", "prompt must be a string or an array of token ids (one prompt per request)")


def _messages(body: dict) -> Prompt:
    if body.get("messages") is None:
        raise InvalidField("messages", "messages is missing: send an array of {\"role\": ..., \"content\": ...}")
    raw = _want(body.get("messages"), "messages", (list,), "an array of messages")
    messages = []
    for i, item in enumerate(raw):
        param = f"messages.{i}"
        _want(item, param, (dict,), "an object with role and content")
        _check_fields(item, {"role", "content", "name"}, f"{param}.")
        role = _want(item.get("role"), f"{param}.role", (str,), "a string")
        _optional(item, "name", (str,), "a string", f"{param}.name")
        messages.append(ChatMessage(role, _content(item.get("content"), f"{param}.content")))
    return Prompt(messages=tuple(messages))


def _content(content: Any, param: str) -> str:
    """A message's content: a string, or OpenAI's array of text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    _want(content, param, (list,), "a string or an array of text parts")
    texts = []
    for part in content:
        _want(part, param, (dict,), "a string or an array of text parts")
        if part.get("type") != "text" or not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
            raise InvalidField(param, f"{param} may hold only text parts ({{\"type\": \"text\", \"text\": ...}})")
        texts.append(part["text"])
    return "".join(texts)


def _request(body: dict, prompt: Prompt, sampling: Sampling, tenant: str,
             prefix: str) -> Request:
    budget, request_id = _extension(body)
    model = _optional(body, "model", (str,), "a string")
    return Request(prompt=prompt, sampling=sampling, budget=budget, tenant=tenant, model=model or None,
                   request_id=request_id or f"{prefix}-{uuid.uuid4().hex}")


def parse_completion(body: Any, tenant: str) -> tuple[Request, ResponseOptions]:
    """A `/v1/completions` body -> (Request, how to answer). Raises InvalidField."""
    _want(body, "body", (dict,), "a JSON object")
    _check_top_level(body, COMPLETION_FIELDS)
    sampling = _sampling(body, None, COMPLETIONS_DEFAULT_MAX_TOKENS)
    request = _request(body, _prompt(body), sampling, tenant, "cmpl")
    stream, include_usage = _stream_options(body)
    return request, ResponseOptions("text_completion", request.model or "", stream, include_usage, int(time.time()))


def parse_chat(body: Any, tenant: str) -> tuple[Request, ResponseOptions]:
    """A `/v1/chat/completions` body -> (Request, how to answer). Raises InvalidField."""
    _want(body, "body", (dict,), "a JSON object")
    _check_top_level(body, CHAT_FIELDS)
    sampling = _sampling(body, "max_completion_tokens", None)
    request = _request(body, _messages(body), sampling, tenant, "chatcmpl")
    stream, include_usage = _stream_options(body)
    return request, ResponseOptions("chat.completion", request.model or "", stream, include_usage, int(time.time()))


def openai_param(param: str, kind: str) -> str:
    """Where a field that `validation` names lives in an OpenAI body (pdserve's own under `pdserve`)."""
    if param.startswith("budget.") or param == "request_id":
        return f"{EXTENSION_KEY}.{param}"
    if param == "prompt" and kind == "chat.completion":
        return "messages"
    return param


# ---- writing answers --------------------------------------------------------------------------------

def openai_finish_reason(reason: FinishReason | None) -> str | None:
    """OpenAI knows `stop` and `length`: every budget limit is a truncation, so `length`.

    The exact pdserve reason is in `usage.pdserve.finish_reason`.
    """
    if reason is None:
        return None
    return "stop" if reason in (FinishReason.STOP, FinishReason.CANCELLED) else "length"


def usage_json(usage: Usage, reason: FinishReason | None) -> dict[str, Any]:
    """OpenAI's usage object, plus pdserve's accounting under `pdserve`."""
    extra = {f.name: getattr(usage, f.name) for f in fields(Usage)}
    extra["finish_reason"] = reason.value if reason else None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
        EXTENSION_KEY: extra,
    }


def _choice(options: ResponseOptions, text: str, reason: FinishReason | None, *, delta: bool,
            first: bool = False) -> dict[str, Any]:
    finish = openai_finish_reason(reason)
    if options.kind == "text_completion":
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if delta:
        message = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        return {"index": 0, "delta": message, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}


def whole_json(request_id: str, options: ResponseOptions, text: str, reason: FinishReason,
               usage: Usage) -> dict[str, Any]:
    """The non-streaming answer object."""
    return {"id": request_id, "object": options.kind, "created": options.created, "model": options.model,
            "choices": [_choice(options, text, reason, delta=False)], "usage": usage_json(usage, reason)}


def stream_chunk_json(options: ResponseOptions, chunk: GenerationChunk, first: bool) -> dict[str, Any]:
    """One SSE event for a gateway chunk (usage travels in its own final event, see `usage_chunk_json`)."""
    choice = _choice(options, chunk.text, chunk.finish_reason, delta=True, first=first)
    if options.kind == "text_completion":
        choice["token_ids"] = list(chunk.token_ids)  # lets clients count tokens when one chunk holds several
    body = {"id": chunk.request_id, "object": _chunk_kind(options), "created": options.created,
            "model": options.model, "choices": [choice]}
    if options.include_usage:
        body["usage"] = None
    return body


def usage_chunk_json(request_id: str, options: ResponseOptions, usage: Usage, reason: FinishReason | None) -> dict:
    return {"id": request_id, "object": _chunk_kind(options), "created": options.created, "model": options.model,
            "choices": [], "usage": usage_json(usage, reason)}


def _chunk_kind(options: ResponseOptions) -> str:
    return "chat.completion.chunk" if options.kind == "chat.completion" else "text_completion"


def error_json(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
