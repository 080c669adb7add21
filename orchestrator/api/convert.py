"""Protobuf <-> internal types, both directions, and nothing else.

The gRPC server reads `GenerateRequest`s into `Request`s and writes `GenerationChunk`s as
`GenerateResponse`s; the client SDK does the reverse. Unset optional proto fields take the defaults
of the internal dataclasses (written once, in `orchestrator.request`). Pure functions: importable from
a client-only install (protobuf and `orchestrator.request`, nothing else).
"""

from __future__ import annotations

from dataclasses import fields

from orchestrator.api.pb import inference_pb2 as pb
from orchestrator.gateway.base import ModelInfo
from orchestrator.request import (
    Budget,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    Prompt,
    Request,
    Sampling,
    Usage,
)

_FINISH_TO_PB = {reason: pb.FinishReason.Value(f"FINISH_REASON_{reason.name}") for reason in FinishReason}
_FINISH_FROM_PB = {value: reason for reason, value in _FINISH_TO_PB.items()}
_SAMPLING_OPTIONAL = ("max_tokens", "temperature", "top_p", "top_k", "seed")
_BUDGET_OPTIONAL = ("max_thinking_tokens", "min_thinking_tokens", "max_output_tokens", "max_total_tokens",
                    "deadline_ms", "max_cost_usd", "max_energy_j")


# ---- proto -> internal (server side) ---------------------------------------------------------------

def prompt_from_pb(message: pb.GenerateRequest) -> Prompt:
    """The request's `prompt` oneof; an unset oneof is an empty prompt (validation refuses it)."""
    kind = message.WhichOneof("prompt")
    if kind == "text":
        return Prompt(text=message.text)
    if kind == "token_ids":
        return Prompt(token_ids=tuple(message.token_ids.ids))
    if kind == "messages":
        return Prompt(messages=tuple(ChatMessage(m.role, m.content) for m in message.messages.messages))
    return Prompt()


def sampling_from_pb(message: pb.SamplingParams) -> Sampling:
    defaults = Sampling()
    values = {name: getattr(message, name) if message.HasField(name) else getattr(defaults, name)
              for name in _SAMPLING_OPTIONAL}
    return Sampling(**values, stop=tuple(message.stop), ignore_eos=message.ignore_eos)


def budget_from_pb(message: pb.Budget) -> Budget:
    values = {name: getattr(message, name) if message.HasField(name) else None for name in _BUDGET_OPTIONAL}
    return Budget(**values, priority=message.priority, start_thinking=message.start_thinking)


def request_from_pb(message: pb.GenerateRequest, tenant: str) -> Request:
    """A wire request -> the internal `Request` of `tenant` (a fresh id when the client sent none)."""
    request = Request(prompt=prompt_from_pb(message), sampling=sampling_from_pb(message.sampling),
                      budget=budget_from_pb(message.budget), tenant=tenant, model=message.model or None)
    return request.with_id(message.request_id) if message.request_id else request


def finish_reason_to_pb(reason: FinishReason | None) -> int:
    return pb.FINISH_REASON_UNSPECIFIED if reason is None else _FINISH_TO_PB[FinishReason(reason)]


def usage_to_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(**{f.name: getattr(usage, f.name) for f in fields(Usage)})


def chunk_to_pb(chunk: GenerationChunk) -> pb.GenerateResponse:
    reply = pb.GenerateResponse(request_id=chunk.request_id, token_ids=chunk.token_ids, text=chunk.text,
                                finish_reason=finish_reason_to_pb(chunk.finish_reason), error=chunk.error or "")
    if chunk.usage is not None:
        reply.usage.CopyFrom(usage_to_pb(chunk.usage))
    return reply


def model_to_pb(model: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(id=model.id, max_model_len=model.max_model_len, owned_by=model.owned_by)


# ---- internal -> proto (client side) ---------------------------------------------------------------

def request_to_pb(request: Request) -> pb.GenerateRequest:
    """An internal `Request` -> the wire message (the tenant travels as the API key, not in the message)."""
    message = pb.GenerateRequest(request_id=request.request_id, model=request.model or "")
    prompt = request.prompt
    if prompt.text is not None:
        message.text = prompt.text
    elif prompt.token_ids is not None:
        message.token_ids.ids.extend(prompt.token_ids)
    elif prompt.messages is not None:
        message.messages.messages.extend(pb.ChatMessage(role=m.role, content=m.content) for m in prompt.messages)
    message.sampling.CopyFrom(sampling_to_pb(request.sampling))
    message.budget.CopyFrom(budget_to_pb(request.budget))
    return message


def sampling_to_pb(sampling: Sampling) -> pb.SamplingParams:
    message = pb.SamplingParams(stop=list(sampling.stop), ignore_eos=sampling.ignore_eos)
    for name in _SAMPLING_OPTIONAL:
        if getattr(sampling, name) is not None:
            setattr(message, name, getattr(sampling, name))
    return message


def budget_to_pb(budget: Budget) -> pb.Budget:
    message = pb.Budget(priority=budget.priority, start_thinking=budget.start_thinking)
    for name in _BUDGET_OPTIONAL:
        if getattr(budget, name) is not None:
            setattr(message, name, getattr(budget, name))
    return message


def finish_reason_from_pb(value: int) -> FinishReason | None:
    return _FINISH_FROM_PB.get(value)


def usage_from_pb(message: pb.Usage) -> Usage:
    return Usage(**{f.name: getattr(message, f.name) for f in fields(Usage)})


def chunk_from_pb(reply: pb.GenerateResponse) -> GenerationChunk:
    return GenerationChunk(
        request_id=reply.request_id, token_ids=list(reply.token_ids), text=reply.text,
        finish_reason=finish_reason_from_pb(reply.finish_reason),
        usage=usage_from_pb(reply.usage) if reply.HasField("usage") else None, error=reply.error or None)


def model_from_pb(message: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(id=message.id, max_model_len=message.max_model_len, owned_by=message.owned_by)
