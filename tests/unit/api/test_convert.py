"""Protobuf <-> internal types: what the SDK writes, the server reads back unchanged (and the reverse)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api import convert
from orchestrator.api.pb import inference_pb2 as pb
from orchestrator.gateway.base import ModelInfo
from orchestrator.request import Budget, ChatMessage, FinishReason, GenerationChunk, Prompt, Request, Sampling, Usage

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # proto strings are UTF-8: no surrogates

PROMPTS = st.one_of(
    st.builds(Prompt, text=TEXT),
    st.builds(Prompt, token_ids=st.tuples(st.integers(0, 2**63 - 1)) | st.lists(INT64, max_size=5).map(tuple)),
    st.builds(Prompt, messages=st.lists(st.builds(ChatMessage, TEXT, TEXT), max_size=3).map(tuple)),
)
SAMPLINGS = st.builds(Sampling, max_tokens=INT64, temperature=FLOATS, top_p=FLOATS, top_k=INT64,
                      seed=st.none() | INT64, stop=st.lists(TEXT, max_size=3).map(tuple), ignore_eos=st.booleans())
OPTIONAL_INT64 = st.none() | INT64
OPTIONAL_FLOAT = st.none() | FLOATS
BUDGETS = st.builds(Budget, max_thinking_tokens=OPTIONAL_INT64, min_thinking_tokens=OPTIONAL_INT64,
                    max_output_tokens=OPTIONAL_INT64, max_total_tokens=OPTIONAL_INT64, deadline_ms=OPTIONAL_FLOAT,
                    max_cost_usd=OPTIONAL_FLOAT, max_energy_j=OPTIONAL_FLOAT,
                    priority=st.integers(-(2**31), 2**31 - 1), start_thinking=st.booleans())


@given(prompt=PROMPTS, sampling=SAMPLINGS, budget=BUDGETS, model=st.none() | st.text(min_size=1, max_size=8),
       request_id=st.text("abc123-", min_size=1, max_size=10))
def test_a_request_survives_the_wire(prompt, sampling, budget, model, request_id):
    sent = Request(prompt=prompt, sampling=sampling, budget=budget, model=model, request_id=request_id)
    wire = pb.GenerateRequest.FromString(convert.request_to_pb(sent).SerializeToString())
    received = convert.request_from_pb(wire, "team-a")
    assert (received.prompt, received.sampling, received.budget) == (prompt, sampling, budget)
    assert (received.model, received.request_id, received.tenant) == (model, request_id, "team-a")


def test_unset_fields_take_the_internal_defaults():
    received = convert.request_from_pb(pb.GenerateRequest(text="hi"), "default")
    assert received.sampling == Sampling() and received.budget == Budget() and received.model is None
    assert received.request_id  # the server made one


def test_an_unset_prompt_is_an_empty_prompt():
    assert convert.request_from_pb(pb.GenerateRequest(), "default").prompt == Prompt()


USAGES = st.builds(Usage, **{name: st.integers(0, 2**40) for name in
                             ("prompt_tokens", "cached_tokens", "thinking_tokens", "output_tokens")},
                   energy_j=FLOATS, cost_usd=FLOATS, prefill_worker=TEXT, kv_recomputed=st.booleans())


@given(token_ids=st.lists(INT64, max_size=4), text=TEXT, reason=st.none() | st.sampled_from(FinishReason),
       usage=st.none() | USAGES, error=st.none() | st.text(min_size=1, max_size=10))
def test_a_chunk_survives_the_wire(token_ids, text, reason, usage, error):
    sent = GenerationChunk("r-1", token_ids, text, reason, usage, error)
    wire = pb.GenerateResponse.FromString(convert.chunk_to_pb(sent).SerializeToString())
    assert convert.chunk_from_pb(wire) == sent


@pytest.mark.parametrize("reason", list(FinishReason))
def test_every_finish_reason_has_a_wire_value(reason):
    value = convert.finish_reason_to_pb(reason)
    assert value != pb.FINISH_REASON_UNSPECIFIED and convert.finish_reason_from_pb(value) is reason


def test_models_survive_the_wire():
    model = ModelInfo("m", 4096, "me")
    assert convert.model_from_pb(convert.model_to_pb(model)) == model
