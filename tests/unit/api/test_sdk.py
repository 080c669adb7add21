"""The SDK's pure parts: options -> wire request, gRPC statuses -> typed exceptions, backoff."""

from __future__ import annotations

import grpc
import pytest

from orchestrator.request import Budget
from pdserve import AsyncClient, Client, RetryPolicy
from pdserve import errors
from pdserve.client import build_request, chat_prompt, text_prompt


def test_unset_options_stay_unset_on_the_wire():
    message = build_request(text_prompt("hi"), {})
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        assert not message.sampling.HasField(name)
    assert message.text == "hi" and message.request_id == "" and message.model == ""


def test_options_reach_the_wire():
    message = build_request(text_prompt([1, 2]), {"max_tokens": 4, "temperature": 0.0, "stop": ["x", "y"],
                                                  "budget": {"deadline_ms": 500, "start_thinking": True},
                                                  "request_id": "mine", "model": "m"})
    assert list(message.token_ids.ids) == [1, 2] and message.sampling.max_tokens == 4
    assert message.sampling.HasField("temperature") and message.sampling.temperature == 0.0
    assert list(message.sampling.stop) == ["x", "y"]
    assert message.budget.deadline_ms == 500 and message.budget.start_thinking
    assert (message.request_id, message.model) == ("mine", "m")


def test_a_single_stop_string_is_one_stop_sequence():
    assert list(build_request(text_prompt("hi"), {"stop": "END"}).sampling.stop) == ["END"]


def test_a_budget_object_works_like_a_mapping():
    message = build_request(text_prompt("hi"), {"budget": Budget(max_thinking_tokens=8)})
    assert message.budget.max_thinking_tokens == 8


def test_unknown_options_are_a_type_error_listing_the_known_ones():
    with pytest.raises(TypeError, match="max_new_tokens"):
        build_request(text_prompt("hi"), {"max_new_tokens": 3})
    with pytest.raises(TypeError, match="deadline_s"):
        build_request(text_prompt("hi"), {"budget": {"deadline_s": 3}})


def test_chat_messages_as_mappings_or_pairs():
    prompt = chat_prompt([{"role": "system", "content": "Be brief."}, ("user", "hi")])
    assert [(m.role, m.content) for m in prompt.messages] == [("system", "Be brief."), ("user", "hi")]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


@pytest.mark.parametrize("code, kind", [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidRequest),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.InvalidRequest),
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.QuotaExceeded),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
    (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
    (grpc.StatusCode.CANCELLED, errors.Unavailable),
    (grpc.StatusCode.INTERNAL, errors.ServerError),
    (grpc.StatusCode.UNKNOWN, errors.ServerError),
])
def test_status_codes_become_typed_errors_with_the_servers_message(code, kind):
    error = errors.from_rpc_error(FakeRpcError(code, "what the server said"))
    assert type(error) is kind and error.message == "what the server said" and error.code == code.name
    assert isinstance(error, errors.PdserveError)


def test_the_retry_hint_comes_from_the_trailer():
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                                               (("retry-after-s", "2.5"),)))
    assert error.retry_after_s == 2.5
    garbled = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                                                 (("retry-after-s", "soon"),)))
    assert garbled.retry_after_s is None


def test_a_message_over_the_servers_size_limit_is_bad_input_not_a_quota():
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                               "SERVER: Received message larger than max (3003 vs. 2048)"))
    assert isinstance(error, errors.InvalidRequest) and "3003 vs. 2048" in error.message
    assert "shorter prompt" in error.message


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.3, multiplier=2)
    for attempt in range(6):
        assert 0 <= policy.delay_s(attempt) <= min(0.3, 0.1 * 2**attempt)


def test_the_api_key_never_shows_in_a_clients_repr():
    client = Client("127.0.0.1:1", api_key="sk-secret-123")
    try:
        assert "sk-secret" not in repr(client) and "127.0.0.1:1" in repr(client)
    finally:
        client.close()


async def test_the_api_key_never_shows_in_an_async_clients_repr():
    async with AsyncClient("127.0.0.1:1", api_key="sk-secret-123") as client:
        assert "sk-secret" not in repr(client)
