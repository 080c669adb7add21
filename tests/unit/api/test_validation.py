"""Request validation shared by both servers: every refusal names the field and says what to change."""

from __future__ import annotations

import math

import pytest

from orchestrator.api.validation import validate_request
from orchestrator.config.server import ServerConfig
from orchestrator.errors import InvalidRequest, ModelNotFound
from orchestrator.gateway.base import ModelInfo
from orchestrator.request import Budget, ChatMessage, Prompt, Request, Sampling
from tests.fakes.gateway import MAX_MODEL_LEN, MODEL, FakeGateway

CONFIG = ServerConfig(max_output_tokens=1000, max_stop_sequences=2, max_stop_sequence_chars=5)


def validate(prompt: Prompt | None = None, **fields) -> Request:
    request = Request(prompt=prompt or Prompt(text="a b c"), **fields)
    return validate_request(request, FakeGateway(), CONFIG)


def refused(prompt: Prompt | None = None, **fields) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate(prompt, **fields)
    return caught.value


def test_a_good_request_gets_the_served_model():
    request = validate(sampling=Sampling(max_tokens=5))
    assert request.model == MODEL and request.sampling.max_tokens == 5


def test_an_unknown_model_lists_the_served_ones():
    error = refused(model="gpt-5")
    assert isinstance(error, ModelNotFound) and error.http_status == 404 and error.grpc_code == "NOT_FOUND"
    assert "'gpt-5'" in error.message and repr(MODEL) in error.message


def test_no_model_served_yet_says_to_wait():
    gateway = FakeGateway()
    gateway.models = lambda: []
    with pytest.raises(ModelNotFound, match="wait for it to load"):
        validate_request(Request(prompt=Prompt(text="x")), gateway, CONFIG)


def test_a_second_served_model_is_found_by_name():
    gateway = FakeGateway()
    gateway.models = lambda: [ModelInfo("a", 64), ModelInfo("b", 64)]
    assert validate_request(Request(prompt=Prompt(text="x"), model="b"), gateway, CONFIG).model == "b"


@pytest.mark.parametrize("prompt, wanted", [
    (Prompt(), "no prompt"),
    (Prompt(text="", token_ids=(1,)), "no prompt"),
    (Prompt(text=""), "empty"),
    (Prompt(token_ids=()), "no token ids"),
    (Prompt(token_ids=(1, -1)), "non-negative"),
    (Prompt(messages=()), "no messages"),
    (Prompt(messages=(ChatMessage("user", ""), ChatMessage("system", ""))), "every chat message is empty"),
])
def test_empty_or_malformed_prompts(prompt, wanted):
    error = refused(prompt)
    assert wanted in error.message and error.param in ("prompt", "messages")


def test_a_chat_role_outside_the_three_is_named():
    error = refused(Prompt(messages=(ChatMessage("user", "x"), ChatMessage("tool", "y"))))
    assert error.param == "messages.1.role" and "assistant, system, user" in error.message


def test_a_prompt_longer_than_the_context_is_refused():
    error = refused(Prompt(text=" ".join(["w"] * MAX_MODEL_LEN)))
    assert error.param == "prompt" and f"context of {MAX_MODEL_LEN} tokens" in error.message
    assert "shorten the prompt" in error.message


def test_max_tokens_is_fitted_to_the_room_left_in_the_context():
    request = validate(Prompt(text=" ".join(["w"] * (MAX_MODEL_LEN - 4))), sampling=Sampling(max_tokens=100))
    assert request.sampling.max_tokens == 4


@pytest.mark.parametrize("sampling, param, wanted", [
    (Sampling(max_tokens=0), "max_tokens", "at least 1"),
    (Sampling(max_tokens=-5), "max_tokens", "at least 1"),
    (Sampling(max_tokens=1001), "max_tokens", "limit of 1000"),
    (Sampling(max_tokens=10**30), "max_tokens", "limit of 1000"),
    (Sampling(temperature=-0.1), "temperature", "in [0, 2]"),
    (Sampling(temperature=math.nan), "temperature", "in [0, 2]"),
    (Sampling(temperature=math.inf), "temperature", "in [0, 2]"),
    (Sampling(temperature=10**400), "temperature", "in [0, 2]"),
    (Sampling(temperature=2.0001), "temperature", "in [0, 2]"),
    (Sampling(temperature=32769), "temperature", "in [0, 2]"),
    (Sampling(top_p=0), "top_p", "(0, 1]"),
    (Sampling(top_p=1.01), "top_p", "(0, 1]"),
    (Sampling(top_p=-1), "top_p", "(0, 1]"),
    (Sampling(top_p=math.nan), "top_p", "(0, 1]"),
    (Sampling(top_k=-2), "top_k", "0 / -1 for no limit"),
    (Sampling(top_k=2**63), "top_k", "0 / -1 for no limit"),
    (Sampling(seed=2**63), "seed", "64-bit"),
    (Sampling(stop=("a", "b", "c")), "stop", "at most 2"),
    (Sampling(stop=("",)), "stop", "empty"),
    (Sampling(stop=("toolong",)), "stop", "at most 5"),
])
def test_bad_sampling_values(sampling, param, wanted):
    error = refused(sampling=sampling)
    assert error.param == param and wanted in error.message


def test_huge_numbers_are_quoted_short():
    error = refused(sampling=Sampling(max_tokens=10**1000))
    assert len(error.message) < 100


@pytest.mark.parametrize("sampling", [
    Sampling(temperature=0), Sampling(temperature=2), Sampling(top_p=1), Sampling(top_k=-1), Sampling(top_k=0), Sampling(seed=-(2**63)),
    Sampling(max_tokens=1000, stop=("abcde", "x")),
])
def test_edge_values_that_are_fine(sampling):
    validate(sampling=sampling)


@pytest.mark.parametrize("budget, param", [
    (Budget(max_thinking_tokens=-1), "budget.max_thinking_tokens"),
    (Budget(max_output_tokens=0), "budget.max_output_tokens"),
    (Budget(max_total_tokens=2**63), "budget.max_total_tokens"),
    (Budget(deadline_ms=-1.0), "budget.deadline_ms"),
    (Budget(max_cost_usd=math.nan), "budget.max_cost_usd"),
    (Budget(max_energy_j=math.inf), "budget.max_energy_j"),
    (Budget(min_thinking_tokens=10, max_thinking_tokens=5), "budget.min_thinking_tokens"),
    (Budget(priority=2**31), "budget.priority"),
])
def test_bad_budget_shapes(budget, param):
    assert refused(budget=budget).param == param


@pytest.mark.parametrize("request_id", ["", "x" * 129, "line\nbreak"])
def test_a_client_request_id_must_be_short_and_printable(request_id):
    error = refused(request_id=request_id)
    assert error.param == "request_id" and "printable" in error.message
