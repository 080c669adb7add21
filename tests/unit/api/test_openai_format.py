"""Reading OpenAI request bodies strictly and writing OpenAI's answer shapes (`openai_format`)."""

from __future__ import annotations

import pytest

from orchestrator.api import openai_format as oai
from orchestrator.api.validation import InvalidField
from orchestrator.request import Budget, ChatMessage, FinishReason, GenerationChunk, Prompt, Usage


def completion(**fields):
    return oai.parse_completion({"prompt": "a b c", **fields}, "team-a")


def chat(**fields):
    return oai.parse_chat({"messages": [{"role": "user", "content": "hi"}], **fields}, "team-a")


def refused(parse, body) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        parse(body, "team-a")
    return caught.value


# ---- completions -------------------------------------------------------------------------------------

def test_a_minimal_completion_takes_openai_defaults():
    request, options = completion()
    assert request.prompt == Prompt(text="a b c")
    assert request.sampling.max_tokens == oai.COMPLETIONS_DEFAULT_MAX_TOKENS
    assert request.tenant == "team-a" and request.model is None
    assert request.request_id.startswith("cmpl-")
    assert (options.kind, options.stream, options.include_usage) == ("text_completion", False, False)


def test_sampling_fields_reach_the_request():
    request, _ = completion(max_tokens=5, temperature=0, top_p=0.5, top_k=40, seed=7, stop="END", ignore_eos=True,
                            model="m")
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed) == (5, 0, 0.5, 40, 7)
    assert sampling.stop == ("END",) and sampling.ignore_eos and request.model == "m"
    assert isinstance(sampling.temperature, float)


@pytest.mark.parametrize("prompt, expected", [
    ([1, 2, 3], Prompt(token_ids=(1, 2, 3))),
    (["one prompt"], Prompt(text="one prompt")),  # a batch of one
    ([[4, 5]], Prompt(token_ids=(4, 5))),
])
def test_prompts_as_token_ids_or_a_batch_of_one(prompt, expected):
    assert completion(prompt=prompt)[0].prompt == expected


@pytest.mark.parametrize("prompt", [5, ["a", "b"], [1, "b"], [True], {"text": "x"}, [[1], [2]]])
def test_a_prompt_of_another_shape_is_refused(prompt):
    error = refused(oai.parse_completion, {"prompt": prompt})
    assert error.param == "prompt" and "string or an array of token ids" in error.message


def test_a_missing_prompt_says_so():
    error = refused(oai.parse_completion, {"model": "m"})
    assert error.param == "prompt" and "missing" in error.message


@pytest.mark.parametrize("field, value, wanted", [
    ("max_tokens", "16", "an integer"),
    ("max_tokens", 1.5, "an integer"),
    ("max_tokens", True, "an integer, got a boolean"),
    ("temperature", "hot", "a number, got string"),
    ("temperature", False, "a number, got a boolean"),
    ("top_p", [1], "a number, got array"),
    ("top_k", 2.5, "an integer"),
    ("seed", "7", "an integer"),
    ("stop", 5, "a string or an array of strings"),
    ("stop", ["a", 1], "a string or an array of strings"),
    ("stream", "yes", "a boolean"),
    ("stream_options", [], "an object"),
    ("ignore_eos", 1, "a boolean"),
    ("model", 3, "a string"),
    ("user", 5, "a string"),
    ("metadata", "x", "an object"),
    ("pdserve", [], "an object"),
])
def test_a_field_of_the_wrong_type_is_named(field, value, wanted):
    error = refused(oai.parse_completion, {"prompt": "x", field: value})
    assert error.param == field and wanted in error.message and error.http_status == 400


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
    ({"prompt": "x", "messages": []}, "messages"),  # a chat field on the completions route
    ({"prompt": "x", "pdserve": {"tenant": "b"}}, "pdserve.tenant"),
    ({"prompt": "x", "pdserve": {"budget": {"max_tokens": 1}}}, "pdserve.budget.max_tokens"),
    ({"prompt": "x", "stream_options": {"chunked": True}}, "stream_options.chunked"),
])
def test_an_unknown_field_is_refused_by_name(body, param):
    error = refused(oai.parse_completion, body)
    assert error.param == param and "unknown field" in error.message and "remove it" in error.message


@pytest.mark.parametrize("field, neutral, other", [
    ("n", 1, 2), ("best_of", 1, 3), ("echo", False, True), ("suffix", "", "tail"), ("logprobs", 0, 5),
    ("presence_penalty", 0, 0.5), ("frequency_penalty", 0, 1), ("logit_bias", {}, {"1": 5}),
    ("tools", [], [{"type": "function"}]), ("tool_choice", "none", "auto"),
    ("response_format", {"type": "text"}, {"type": "json_object"}),
])
def test_unimplemented_features_pass_only_at_their_neutral_value(field, neutral, other):
    completion(**{field: neutral})
    error = refused(oai.parse_completion, {"prompt": "x", field: other})
    assert error.param == field and "not supported by pdserve" in error.message


def test_the_unsupported_value_is_quoted_short():
    error = refused(oai.parse_completion, {"prompt": "x", "n": "1"})
    assert 'n="1"' in error.message  # a string "1" is not the number 1
    error = refused(oai.parse_completion, {"prompt": "x", "logit_bias": {str(i): i for i in range(1000)}})
    assert len(error.message) < 120


def test_ignored_openai_fields_are_accepted():
    completion(user="u-1", store=False, metadata={"k": "v"}, service_tier="auto", parallel_tool_calls=True)


def test_the_pdserve_extension_carries_request_id_and_budget():
    request, _ = completion(pdserve={"request_id": "my-id", "budget": {
        "max_thinking_tokens": 256, "deadline_ms": 2000, "max_cost_usd": 0.01, "priority": 3, "start_thinking": True}})
    assert request.request_id == "my-id"
    assert request.budget == Budget(max_thinking_tokens=256, deadline_ms=2000.0, max_cost_usd=0.01, priority=3,
                                    start_thinking=True)
    assert isinstance(request.budget.deadline_ms, float)


@pytest.mark.parametrize("request_id", ["", "x" * 129, "tab\there"])
def test_a_bad_request_id_is_refused(request_id):
    error = refused(oai.parse_completion, {"prompt": "x", "pdserve": {"request_id": request_id}})
    assert error.param == "pdserve.request_id" and "printable" in error.message


@pytest.mark.parametrize("body, param", [
    ({"temperature": 10**400}, "temperature"),
    ({"top_p": -(10**400)}, "top_p"),
    ({"pdserve": {"budget": {"deadline_ms": 10**400}}}, "pdserve.budget.deadline_ms"),
])
def test_a_number_too_large_for_a_float_is_out_of_range(body, param):
    error = refused(oai.parse_completion, {"prompt": "x", **body})
    assert error.param == param and "out of range" in error.message


def test_a_body_that_is_not_an_object_is_refused():
    for body in ([], "prompt", 3, None):
        assert refused(oai.parse_completion, body).param == "body"
        assert refused(oai.parse_chat, body).param == "body"


def test_stream_options_include_usage():
    _, options = completion(stream=True, stream_options={"include_usage": True})
    assert options.stream and options.include_usage


# ---- chat --------------------------------------------------------------------------------------------

def test_chat_messages_and_text_parts():
    request, options = oai.parse_chat({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}], "name": "u"},
        {"role": "assistant", "content": None},
    ], "max_completion_tokens": 9}, "team-a")
    assert request.prompt.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there"),
                                       ChatMessage("assistant", ""))
    assert request.sampling.max_tokens == 9 and request.request_id.startswith("chatcmpl-")
    assert options.kind == "chat.completion"


def test_chat_has_no_completions_default_for_max_tokens():
    assert chat()[0].sampling.max_tokens == oai.Sampling().max_tokens


@pytest.mark.parametrize("messages, param, wanted", [
    (None, "messages", "missing"),
    ("hi", "messages", "an array of messages"),
    (["hi"], "messages.0", "an object with role and content"),
    ([{"role": 1, "content": "x"}], "messages.0.role", "a string"),
    ([{"role": "user", "content": 5}], "messages.0.content", "a string or an array of text parts"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}], "messages.0.content", "only text parts"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "messages.0.tool_calls", "unknown field"),
])
def test_bad_messages_name_the_message(messages, param, wanted):
    body = {} if messages is None else {"messages": messages}
    error = refused(oai.parse_chat, body)
    assert error.param == param and wanted in error.message


def test_chat_refuses_the_completions_prompt_field():
    assert refused(oai.parse_chat, {"messages": [{"role": "user", "content": "x"}], "prompt": "x"}).param == "prompt"


# ---- answers -----------------------------------------------------------------------------------------

USAGE = Usage(prompt_tokens=3, cached_tokens=1, thinking_tokens=2, output_tokens=5, energy_j=0.5)


@pytest.mark.parametrize("reason, openai_reason", [
    (FinishReason.STOP, "stop"), (FinishReason.CANCELLED, "stop"), (FinishReason.LENGTH, "length"),
    (FinishReason.THINKING_BUDGET, "length"), (FinishReason.DEADLINE, "length"), (None, None),
])
def test_finish_reasons_map_onto_openais_two(reason, openai_reason):
    assert oai.openai_finish_reason(reason) == openai_reason


def test_usage_carries_pdserve_accounting_and_exact_reason():
    usage = oai.usage_json(USAGE, FinishReason.DEADLINE)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 5, 8)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert usage["pdserve"]["finish_reason"] == "deadline" and usage["pdserve"]["energy_j"] == 0.5


def test_whole_answers_of_both_kinds():
    text = oai.whole_json("id-1", oai.ResponseOptions("text_completion", "m", created=9), "out", FinishReason.STOP, USAGE)
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "out"
    assert (text["id"], text["model"], text["created"]) == ("id-1", "m", 9)
    reply = oai.whole_json("id-2", oai.ResponseOptions("chat.completion", "m"), "hi", FinishReason.LENGTH, USAGE)
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert reply["choices"][0]["finish_reason"] == "length"


def test_stream_chunks_of_chat_open_with_the_role():
    options = oai.ResponseOptions("chat.completion", "m", stream=True, include_usage=True)
    first = oai.stream_chunk_json(options, GenerationChunk("r", [1], "a"), True)
    later = oai.stream_chunk_json(options, GenerationChunk("r", [2], "b"), False)
    last = oai.stream_chunk_json(options, GenerationChunk("r", [], "", FinishReason.STOP, USAGE), False)
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert later["choices"][0]["delta"] == {"content": "b"}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    final = oai.usage_chunk_json("r", options, USAGE, FinishReason.STOP)
    assert final["choices"] == [] and final["usage"]["total_tokens"] == 8


def test_completion_stream_chunks_carry_token_ids():
    options = oai.ResponseOptions("text_completion", "m", stream=True)
    body = oai.stream_chunk_json(options, GenerationChunk("r", [7, 8], "ab"), True)
    assert body["choices"][0]["token_ids"] == [7, 8] and "usage" not in body


def test_error_shape():
    assert oai.error_json("bad", "invalid_request_error", "prompt", "invalid_argument") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "prompt", "code": "invalid_argument"}}


@pytest.mark.parametrize("param, kind, expected", [
    ("budget.deadline_ms", "text_completion", "pdserve.budget.deadline_ms"),
    ("request_id", "chat.completion", "pdserve.request_id"),
    ("prompt", "chat.completion", "messages"),
    ("prompt", "text_completion", "prompt"),
    ("temperature", "chat.completion", "temperature"),
])
def test_validation_params_map_to_where_the_field_is_in_the_body(param, kind, expected):
    assert oai.openai_param(param, kind) == expected
