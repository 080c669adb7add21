"""Both API servers on loopback sockets over a `FakeGateway`, driven as users drive them.

The gRPC API through the SDK (`Client`, `AsyncClient`) and raw stubs; the HTTP API through the official
`openai` package and raw HTTP. Every kind of bad input gets a client-error status naming what was wrong;
a client that goes away mid-stream cancels its request (the gateway sees its iterator closed); API keys
map to tenants that cannot touch each other's requests; both servers speak TLS. (Generated requests,
fuzzing both APIs of a real cluster: test_api_fuzz.py.)

No timed assertions: waits poll the fake gateway with generous bounds (`BackgroundServers.wait_for`).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import ssl
import time
import zlib
from contextlib import aclosing

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.api.auth import ENV_VAR, ApiKeys
from orchestrator.errors import QuotaExceeded as ServerQuotaExceeded
from orchestrator.errors import Unavailable as ServerUnavailable
from orchestrator.gateway.base import ModelInfo
from orchestrator.request import FinishReason
from pdserve import AsyncClient, Client, RetryPolicy
from pdserve import errors as sdk
from tests.fakes.certs import write_self_signed
from tests.fakes.gateway import MAX_MODEL_LEN, MODEL, STATUS_KEYS, FakeGateway
from tests.fakes.servers import BackgroundServers

CALL_TIMEOUT_S = 15.0  # the bound on any one call here: a hang fails the test instead of the suite
FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff_s=0.01, max_backoff_s=0.05)
KEY_A, KEY_B = "sk-team-a-secret", "sk-team-b-secret"
TOO_LONG = " ".join(["w"] * MAX_MODEL_LEN)


@pytest.fixture
def servers():
    with BackgroundServers() as running:
        yield running


@pytest.fixture
def client(servers):
    with Client(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=FAST_RETRY) as sdk_client:
        yield sdk_client


@pytest.fixture
def http(servers):
    with httpx.Client(base_url=servers.http_url, timeout=CALL_TIMEOUT_S) as http_client:
        yield http_client


@pytest.fixture
def oai(servers):
    with openai.OpenAI(base_url=servers.http_url + "/v1", api_key="unused", max_retries=0,
                       timeout=CALL_TIMEOUT_S) as openai_client:
        yield openai_client


def error_of(response: httpx.Response) -> dict:
    """The OpenAI-shaped error of a response (asserting the shape)."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def sse_events(lines) -> list:
    """The `data:` payloads of an SSE response (or of its `iter_lines()` iterator, to go on reading
    one), JSON-decoded ("[DONE]" kept as is)."""
    events = []
    for line in lines.iter_lines() if isinstance(lines, httpx.Response) else lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---- the SDK: Client ---------------------------------------------------------------------------------

def test_generate_a_whole_answer(client, servers):
    answer = client.generate("a b c", request_id="r-1", temperature=0)
    assert (answer.text, answer.token_ids, answer.finish_reason) == ("a b c ", [0, 1, 2], FinishReason.STOP)
    assert (answer.request_id, answer.usage.prompt_tokens, answer.usage.output_tokens) == ("r-1", 3, 3)
    assert servers.gateway.requests[-1].sampling.temperature == 0


def test_generate_a_stream(client):
    chunks = list(client.generate("one two", stream=True, max_tokens=5, ignore_eos=True))
    assert "".join(c.text for c in chunks) == "one two one two one "
    assert [c.finish_reason for c in chunks[:-1]] == [None] * 4
    assert chunks[-1].finish_reason is FinishReason.LENGTH and chunks[-1].usage.output_tokens == 5


def test_chat(client, servers):
    reply = client.chat([{"role": "system", "content": "be brief"}, ("user", "hi")], max_tokens=3, ignore_eos=True)
    assert reply.text == "system be brief " and reply.finish_reason is FinishReason.LENGTH
    assert servers.gateway.requests[-1].prompt.messages[1].content == "hi"


def test_stop_sequences(client):
    assert client.generate("a b STOP c", stop="STOP").text == "a b "


def test_max_tokens_is_fitted_to_the_context(client):
    answer = client.generate(" ".join(["w"] * (MAX_MODEL_LEN - 2)), max_tokens=100, ignore_eos=True)
    assert answer.usage.output_tokens == 2 and answer.finish_reason is FinishReason.LENGTH


def test_models_and_status(client):
    assert client.models() == [ModelInfo(MODEL, MAX_MODEL_LEN)]
    status = client.status()
    assert set(STATUS_KEYS) <= set(status) and status["pools"]["decode"]["workers"][0]["state"] == "ready"


def test_cancel_a_running_request(client, servers):
    servers.hold()
    chunks = client.generate("a b c", stream=True, request_id="to-cancel")
    assert next(chunks).text == "a "
    assert client.cancel("to-cancel") is True
    assert list(chunks)[-1].finish_reason is FinishReason.CANCELLED
    assert client.cancel("to-cancel") is False  # it already ended


def test_cancel_needs_a_request_id(client):
    with pytest.raises(sdk.InvalidRequest, match="request_id is empty"):
        client.cancel("")


def test_a_timeout_ends_the_call_and_cancels_the_request(client, servers):
    client.models()  # a connected channel: the request surely reaches the server before its deadline
    servers.hold()
    with pytest.raises(sdk.DeadlineExceeded):
        client.generate("a b c", timeout_s=1.0, request_id="slow")
    servers.wait_for(lambda: "slow" in servers.gateway.closed, "the server to cancel the timed-out request")


def test_an_absolute_deadline(client, servers):
    client.models()
    servers.hold()
    with pytest.raises(sdk.DeadlineExceeded):
        list(client.generate("a b c", stream=True, deadline=time.time() + 1.0))
    with pytest.raises(sdk.DeadlineExceeded):
        client.generate("a b c", deadline=time.time() - 1)  # already past: never sent
    servers.wait_for(lambda: len(servers.gateway.closed) == 1, "the held request to be cancelled")
    assert len(servers.gateway.requests) == 1


def test_unavailable_before_the_first_token_is_retried(client, servers):
    servers.gateway.fail_next = [ServerUnavailable("no decode worker ready"), ServerUnavailable("still none")]
    assert client.generate("a b").text == "a b "
    assert servers.gateway.fail_next == [] and len(servers.gateway.requests) == 1


def test_retries_give_up_with_the_servers_reason(servers):
    servers.gateway.fail_next = [ServerUnavailable(f"no decode worker ready ({i})") for i in range(5)]
    with Client(servers.grpc_target, retry=RetryPolicy(max_retries=2, initial_backoff_s=0.01)) as client:
        with pytest.raises(sdk.Unavailable, match=r"no decode worker ready \(2\)"):
            client.generate("a b")
    assert len(servers.gateway.fail_next) == 2  # three attempts


class FailsAfterFirstToken(FakeGateway):
    """Raises Unavailable after one token (as a server going away mid-stream would end the call)."""

    async def _run(self, request):
        async with aclosing(super()._run(request)) as chunks:
            async for chunk in chunks:
                yield chunk
                raise ServerUnavailable("the decode worker went away")


def test_unavailable_after_the_first_token_is_not_retried():
    with BackgroundServers(FailsAfterFirstToken()) as servers, \
            Client(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=FAST_RETRY) as client:
        chunks = client.generate("a b c", stream=True)
        assert next(chunks).text == "a "
        with pytest.raises(sdk.Unavailable, match="went away"):
            next(chunks)
        assert len(servers.gateway.requests) == 1


class CrashesAfterFirstToken(FakeGateway):
    """A gateway with a bug: an unexpected exception after one token."""

    async def _run(self, request):
        async with aclosing(super()._run(request)) as chunks:
            async for chunk in chunks:
                yield chunk
                raise RuntimeError("bug in the gateway")


class EndsWithoutFinishing(FakeGateway):
    """A gateway with a bug: its stream stops after one token, with no finish reason."""

    async def _run(self, request):
        async with aclosing(super()._run(request)) as chunks:
            async for chunk in chunks:
                yield chunk
                return


@pytest.mark.parametrize("gateway, status, wanted", [
    (FailsAfterFirstToken, 503, "the decode worker went away"),
    (CrashesAfterFirstToken, 500, "internal server error (incident "),
    (EndsWithoutFinishing, 500, "without a finish reason"),
])
def test_a_gateway_raising_mid_stream_ends_the_answer_explicitly(gateway, status, wanted):
    with BackgroundServers(gateway()) as servers, httpx.Client(base_url=servers.http_url, timeout=CALL_TIMEOUT_S) as http:
        with http.stream("POST", "/v1/completions", json={"prompt": "a b c", "stream": True}) as response:
            events = sse_events(response)
        assert events[0]["choices"][0]["text"] == "a " and events[-1] == "[DONE]"
        assert wanted in events[-2]["error"]["message"] and events[-2]["error"]["code"] == "stream_error"
        whole = http.post("/v1/completions", json={"prompt": "a b c"})
        assert whole.status_code == status and wanted in error_of(whole)["message"]
        with Client(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=FAST_RETRY) as client:
            with pytest.raises(sdk.PdserveError, match=re.escape(wanted)):
                client.generate("a b c")
        assert servers.gateway.running == {}


def test_quota_refusals_carry_the_retry_hint(client, servers):
    servers.gateway.fail_next = ServerQuotaExceeded("team-a is over its decode quota: retry in 3 s", retry_after_s=3)
    with pytest.raises(sdk.QuotaExceeded) as caught:
        client.generate("a b")
    assert caught.value.retry_after_s == 3 and "decode quota" in caught.value.message
    assert caught.value.code == "RESOURCE_EXHAUSTED"


def test_a_generation_failing_mid_stream(client, servers):
    servers.gateway.error_after = 1
    with pytest.raises(sdk.ServerError, match="decode worker lost"):
        client.generate("a b c")
    chunks = list(client.generate("a b c", stream=True))
    assert chunks[0].text == "a " and chunks[-1].finish_reason is FinishReason.ERROR
    assert chunks[-1].error == "decode worker lost"


@pytest.mark.parametrize("prompt, options, kind, wanted", [
    ("", {}, sdk.InvalidRequest, "the prompt is empty"),
    ([], {}, sdk.InvalidRequest, "no token ids"),
    (TOO_LONG, {}, sdk.InvalidRequest, f"context of {MAX_MODEL_LEN} tokens"),
    ("hi", {"model": "gpt-5"}, sdk.NotFound, "'gpt-5' is not served here"),
    ("hi", {"temperature": -1}, sdk.InvalidRequest, "temperature is -1"),
    ("hi", {"top_p": 0}, sdk.InvalidRequest, "top_p is 0"),
    ("hi", {"top_p": 1.5}, sdk.InvalidRequest, "top_p is 1.5"),
    ("hi", {"max_tokens": 0}, sdk.InvalidRequest, "max_tokens is 0"),
    ("hi", {"max_tokens": -3}, sdk.InvalidRequest, "max_tokens is -3"),
    ("hi", {"max_tokens": 10**12}, sdk.InvalidRequest, "above this server's limit"),
    ("hi", {"request_id": "x" * 500}, sdk.InvalidRequest, "request_id must be 1 to 128"),
    ("hi", {"budget": {"deadline_ms": -5}}, sdk.InvalidRequest, "budget.deadline_ms"),
    ("hi", {"stop": [""]}, sdk.InvalidRequest, "stop sequence is empty"),
])
def test_bad_input_over_grpc_raises_a_typed_error_with_the_reason(client, servers, prompt, options, kind, wanted):
    with pytest.raises(kind) as caught:
        client.generate(prompt, **options)
    assert wanted in caught.value.message
    assert servers.gateway.requests == []


def test_a_chat_with_a_bad_role(client):
    with pytest.raises(sdk.InvalidRequest, match="role 'robot'"):
        client.chat([("robot", "beep")])


def test_a_message_over_the_size_limit_over_grpc():
    with BackgroundServers(max_request_bytes=2048) as servers, Client(servers.grpc_target) as client:
        with pytest.raises(sdk.InvalidRequest, match="larger than the server accepts"):
            client.generate("x" * 4096)
        assert client.generate("a b").text == "a b "


def test_bytes_that_are_not_a_request_are_invalid_argument(servers):
    with grpc.insecure_channel(servers.grpc_target) as channel:
        raw = channel.unary_stream("/pdserve.v1.Inference/Generate")
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(b"\x1a\x02\xff\xfe", timeout=CALL_TIMEOUT_S))  # field `text` holding invalid UTF-8
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid pdserve.v1.GenerateRequest" in caught.value.details()


# ---- the SDK: AsyncClient ----------------------------------------------------------------------------

async def test_async_client_end_to_end(servers):
    async with AsyncClient(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=FAST_RETRY) as client:
        answer = await client.generate("a b c")
        assert answer.text == "a b c " and answer.finish_reason is FinishReason.STOP
        texts = [chunk.text async for chunk in await client.generate("x y", stream=True)]
        assert texts == ["x ", "y ", ""]
        assert (await client.chat([("user", "hi")], max_tokens=2, ignore_eos=True)).text == "user hi "
        assert await client.models() == [ModelInfo(MODEL, MAX_MODEL_LEN)]
        assert (await client.status())["model"] == MODEL
        with pytest.raises(sdk.InvalidRequest, match="temperature"):
            await client.generate("hi", temperature=-0.5)


async def test_async_client_cancel_timeout_and_retry(servers):
    async with AsyncClient(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=FAST_RETRY) as client:
        servers.gateway.fail_next = ServerUnavailable("starting")
        assert (await client.generate("a")).text == "a "
        servers.hold()
        chunks = await client.generate("a b", stream=True, request_id="async-1")
        assert (await anext(chunks)).text == "a "
        assert await client.cancel("async-1")
        assert [c.finish_reason async for c in chunks][-1] is FinishReason.CANCELLED
        with pytest.raises(sdk.DeadlineExceeded):
            await client.generate("a b", timeout_s=1.0, request_id="async-2")
    await asyncio.to_thread(servers.wait_for, lambda: "async-2" in servers.gateway.closed, "the timed-out request")


# ---- the HTTP API through the openai package ---------------------------------------------------------

def test_openai_completions(oai):
    completion = oai.completions.create(model=MODEL, prompt="a b c", max_tokens=2, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert completion.choices[0].text == "a b " and completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 2)
    assert completion.model == MODEL and completion.object == "text_completion"


def test_openai_chat(oai, servers):
    reply = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "user hello there <end> "
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason == "stop"
    assert servers.gateway.requests[-1].request_id == reply.id


def test_openai_streams_with_usage_in_the_final_chunk(oai):
    chunks = list(oai.completions.create(model=MODEL, prompt="a b c", stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b c "
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    chat_chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                   stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices) == "user x <end> "
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert chat_chunks[-1].usage.total_tokens == chat_chunks[-1].usage.prompt_tokens + 3


def test_openai_stream_without_usage(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_the_pdserve_extension_through_extra_body(oai, servers):
    completion = oai.completions.create(model=MODEL, prompt="a b", extra_body={"pdserve": {
        "request_id": "ext-1", "budget": {"max_thinking_tokens": 64, "deadline_ms": 2000, "max_cost_usd": 0.5}}})
    request = servers.gateway.requests[-1]
    assert completion.id == request.request_id == "ext-1"
    assert (request.budget.max_thinking_tokens, request.budget.deadline_ms, request.budget.max_cost_usd) == (64, 2000, 0.5)
    assert completion.usage.model_extra["pdserve"]["finish_reason"] == "stop"


def test_openai_models(oai):
    assert [m.id for m in oai.models.list()] == [MODEL]


def test_openai_errors_carry_the_reason(oai, servers):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=MODEL, prompt="", max_tokens=3)
    assert "the prompt is empty" in caught.value.message and caught.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="n=3 is not supported"):
        oai.completions.create(model=MODEL, prompt="x", n=3)
    servers.gateway.fail_next = ServerQuotaExceeded("over quota: retry in 2 s", retry_after_s=2)
    with pytest.raises(openai.RateLimitError) as caught:
        oai.completions.create(model=MODEL, prompt="x")
    assert caught.value.response.headers["Retry-After"] == "2"


def test_an_error_mid_stream_reaches_the_openai_client(oai, servers):
    servers.gateway.error_after = 1
    with pytest.raises(openai.APIError, match="decode worker lost"):
        list(oai.completions.create(model=MODEL, prompt="a b c", stream=True))


# ---- bad input over HTTP -----------------------------------------------------------------------------

@pytest.mark.parametrize("route, body, status, param, wanted", [
    ("completions", {"prompt": ""}, 400, "prompt", "the prompt is empty"),
    ("completions", {"prompt": []}, 400, "prompt", "no token ids"),
    ("chat/completions", {"messages": []}, 400, "messages", "no messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": ""}]}, 400, "messages", "empty"),
    ("completions", {"prompt": TOO_LONG}, 400, "prompt", f"context of {MAX_MODEL_LEN}"),
    ("chat/completions", {"messages": [{"role": "user", "content": TOO_LONG}]}, 400, "messages", "shorten"),
    ("completions", {"prompt": "x", "model": "gpt-5"}, 404, None, "not served here"),
    ("completions", {"prompt": "x", "temperature": -0.01}, 400, "temperature", "in [0, 2]"),
    ("completions", {"prompt": "x", "temperature": 32769}, 400, "temperature", "in [0, 2]"),
    ("completions", {"prompt": "x", "top_p": 0}, 400, "top_p", "(0, 1]"),
    ("completions", {"prompt": "x", "top_p": 1.2}, 400, "top_p", "(0, 1]"),
    ("completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ("completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", "at least 1"),
    ("completions", {"prompt": "x", "max_tokens": 10**30}, 400, "max_tokens", "limit of 32768"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400,
     "max_tokens", "at least 1"),
    ("completions", {"prompt": "x", "max_tokens": "16"}, 400, "max_tokens", "must be an integer, got string"),
    ("completions", {"prompt": "x", "temperature": None, "stream": 1}, 400, "stream", "must be a boolean"),
    ("completions", {"prompt": "x", "temperature": 10**400}, 400, "temperature", "out of range"),
    ("completions", {"prompt": "x", "pdserve": {"budget": {"deadline_ms": -1}}}, 400,
     "pdserve.budget.deadline_ms", "use a number >= 0"),
    ("completions", {"prompt": "x", "bogus": 1}, 400, "bogus", "unknown field bogus"),
    ("chat/completions", {"messages": "hi"}, 400, "messages", "an array"),
    ("completions", ["x"], 400, "body", "a JSON object"),
])
def test_bad_bodies_get_a_client_error_naming_the_field(http, servers, route, body, status, param, wanted):
    response = http.post(f"/v1/{route}", json=body)
    error = error_of(response)
    assert response.status_code == status and wanted in error["message"]
    assert error["param"] == param and error["type"] in ("invalid_request_error",)
    assert servers.gateway.requests == []


@pytest.mark.parametrize("raw, wanted", [
    (b'{"prompt": "x"', "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"prompt": NaN}', "NaN is not a JSON number"),
    (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", "too many digits"),
    (b'{"prompt": "caf\xe9"}', "not valid UTF-8"),
    (b"[" * 100_000, "nests too deeply"),
])
def test_undecodable_bodies_are_400(http, raw, wanted):
    response = http.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and wanted in error_of(response)["message"]


OK_BODY = b'{"prompt": "a b", "max_tokens": 1}'


@pytest.mark.parametrize("encoding, raw, status, wanted", [
    ("gzip", gzip.compress(OK_BODY), 200, None),
    ("deflate", zlib.compress(OK_BODY), 200, None),
    ("identity", OK_BODY, 200, None),
    ("gzip", b"not gzip at all", 400, "not valid gzip data"),  # was a 500 (found by test_api_fuzz)
    ("deflate", b"xx", 400, "not valid deflate data"),  # was a 500
    ("gzip", gzip.compress(OK_BODY)[:-12], 400, "cut-short gzip data"),
    ("br", b"x", 415, "Content-Encoding 'br' is not supported"),  # was plain text, not OpenAI's shape
    ("bogus", OK_BODY, 415, "Content-Encoding 'bogus' is not supported"),
])
def test_compressed_bodies_are_decoded_or_refused_in_openais_shape(http, encoding, raw, status, wanted):
    response = http.post("/v1/completions", content=raw,
                         headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    assert response.status_code == status, response.text
    if wanted:
        assert wanted in error_of(response)["message"]


def test_a_compressed_body_over_the_size_limit_once_decoded_is_413():
    bomb = gzip.compress(b'{"prompt": "' + b"a" * 100_000 + b'"}')  # 2 kB on the wire
    with BackgroundServers(max_request_bytes=4096) as servers, httpx.Client(base_url=servers.http_url) as http:
        response = http.post("/v1/completions", content=bomb, headers={"Content-Encoding": "gzip"})
        assert len(bomb) < 4096 and response.status_code == 413
        assert "limit of 4096 bytes" in error_of(response)["message"]


def test_a_body_over_the_size_limit_is_413():
    with BackgroundServers(max_request_bytes=2048) as servers, httpx.Client(base_url=servers.http_url) as http:
        response = http.post("/v1/completions", json={"prompt": "x" * 4096})
        assert response.status_code == 413 and "limit of 2048 bytes" in error_of(response)["message"]
        assert http.post("/v1/completions", json={"prompt": "a"}).status_code == 200


def test_unknown_routes_and_methods_answer_in_openais_shape(http):
    response = http.post("/v1/embeddings", json={})
    assert response.status_code == 404 and "/v1/embeddings" in error_of(response)["message"]
    response = http.get("/v1/completions")
    assert response.status_code == 405 and error_of(response)["type"] == "invalid_request_error"


def test_health_and_metrics(http, servers):
    assert http.get("/health").json()["ready"] is True
    with grpc.insecure_channel(servers.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(service="pdserve.v1.Inference"), timeout=CALL_TIMEOUT_S).status \
            == health_pb2.HealthCheckResponse.SERVING
        servers.gateway.ready = False
        assert http.get("/health").status_code == 503
        assert check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status \
            == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "pdserve_api_in_flight_requests" in http.get("/metrics").text


def test_http_cancel_route(http, servers):
    servers.hold()
    with http.stream("POST", "/v1/completions", json={"prompt": "a b c", "stream": True,
                                                      "pdserve": {"request_id": "h-1"}}) as response:
        lines = response.iter_lines()  # keep it: a collected line iterator closes the response
        assert next(lines).startswith("data: ")
        assert http.post("/v1/requests/h-1/cancel").json() == {"id": "h-1", "object": "cancellation", "cancelled": True}
        events = sse_events(lines)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert http.post("/v1/requests/h-1/cancel").json()["cancelled"] is False


# ---- the concurrency limit ---------------------------------------------------------------------------

def test_requests_past_the_concurrency_limit_are_refused_with_a_retry_hint():
    with BackgroundServers(max_concurrent_requests=2, concurrency_retry_after_s=2.5) as servers, \
            Client(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=FAST_RETRY) as client, \
            httpx.Client(base_url=servers.http_url, timeout=CALL_TIMEOUT_S) as http:
        servers.hold()
        held_grpc = client.generate("a b", stream=True)
        next(held_grpc)
        with http.stream("POST", "/v1/completions", json={"prompt": "a b", "stream": True}) as held_http:
            held_lines = held_http.iter_lines()
            next(held_lines)
            with pytest.raises(sdk.QuotaExceeded) as caught:
                client.generate("a b")
            assert caught.value.retry_after_s == 2.5 and "limit of 2 concurrent requests" in caught.value.message
            refused = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
            assert error_of(refused)["type"] == "rate_limit_error"
            servers.release()
            assert list(held_grpc)[-1].finish_reason is FinishReason.STOP
            assert sse_events(held_lines)[-1] == "[DONE]"
        assert client.generate("a b").text == "a b "


# ---- clients that go away ----------------------------------------------------------------------------

def test_closing_a_grpc_stream_cancels_the_request(client, servers):
    servers.hold()
    chunks = client.generate("a b c", stream=True, request_id="left")
    next(chunks)
    chunks.close()
    servers.wait_for(lambda: "left" in servers.gateway.closed, "the gateway iterator to be closed")
    assert servers.gateway.running == {}


async def test_a_grpc_channel_closed_mid_stream_cancels_the_request(servers):
    servers.hold()
    client = AsyncClient(servers.grpc_target, timeout_s=CALL_TIMEOUT_S)
    chunks = await client.generate("a b c", stream=True, request_id="gone")
    await anext(chunks)
    await client.close()
    await asyncio.to_thread(servers.wait_for, lambda: "gone" in servers.gateway.closed, "the request to be cancelled")


def test_an_sse_client_disconnecting_cancels_the_request(http, servers):
    servers.hold()
    with http.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "a b c"}], "stream": True,
            "pdserve": {"request_id": "sse-gone"}}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert servers.gateway.running == {"sse-gone": "default"}
    servers.wait_for(lambda: "sse-gone" in servers.gateway.closed, "the SSE request to be cancelled")


def test_an_http_client_giving_up_on_a_whole_answer_cancels_the_request(servers):
    servers.hold()
    with httpx.Client(base_url=servers.http_url, timeout=1.0) as impatient:
        assert impatient.get("/v1/models").status_code == 200  # connected before the clock starts
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/completions", json={"prompt": "a b c", "pdserve": {"request_id": "whole-gone"}})
    servers.wait_for(lambda: "whole-gone" in servers.gateway.closed, "the request to be cancelled")


# ---- API keys and tenants ----------------------------------------------------------------------------

@pytest.fixture
def keyed_servers():
    with BackgroundServers(api_keys=ApiKeys({KEY_A: "team-a", KEY_B: "team-b"})) as running:
        yield running


def test_with_keys_the_grpc_api_wants_one(keyed_servers):
    target = keyed_servers.grpc_target
    for api_key in (None, "sk-wrong"):
        with Client(target, api_key=api_key, retry=FAST_RETRY) as client:
            for call in (lambda: client.generate("a"), client.models, client.status, lambda: client.cancel("x")):
                with pytest.raises(sdk.Unauthenticated) as caught:
                    call()
                assert "sk-" not in caught.value.message
    with Client(target, api_key=KEY_A) as client:
        assert client.generate("a b").text == "a b "
    assert keyed_servers.gateway.requests[-1].tenant == "team-a"


def test_with_keys_the_http_api_wants_one(keyed_servers):
    with httpx.Client(base_url=keyed_servers.http_url, timeout=CALL_TIMEOUT_S) as http:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY_A}):
            response = http.post("/v1/completions", json={"prompt": "x"}, headers=headers)
            assert response.status_code == 401 and error_of(response)["type"] == "authentication_error"
            assert http.get("/v1/models", headers=headers).status_code == 401
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
    with openai.OpenAI(base_url=keyed_servers.http_url + "/v1", api_key=KEY_B, max_retries=0) as oai:
        assert oai.completions.create(model=MODEL, prompt="a").choices[0].text == "a "
    with openai.OpenAI(base_url=keyed_servers.http_url + "/v1", api_key="sk-nope", max_retries=0) as oai:
        with pytest.raises(openai.AuthenticationError, match="not valid"):
            oai.completions.create(model=MODEL, prompt="a")
    assert keyed_servers.gateway.requests[-1].tenant == "team-b"


def test_a_tenant_cannot_cancel_another_tenants_request(keyed_servers):
    keyed_servers.hold()
    with Client(keyed_servers.grpc_target, api_key=KEY_B) as owner, \
            Client(keyed_servers.grpc_target, api_key=KEY_A) as other, \
            httpx.Client(base_url=keyed_servers.http_url, timeout=CALL_TIMEOUT_S) as http:
        chunks = owner.generate("a b c", stream=True, request_id="b-1")
        next(chunks)
        with pytest.raises(sdk.PermissionDenied, match="another tenant"):
            other.cancel("b-1")
        response = http.post("/v1/requests/b-1/cancel", headers={"Authorization": f"Bearer {KEY_A}"})
        assert response.status_code == 403 and error_of(response)["type"] == "permission_error"
        assert keyed_servers.gateway.running == {"b-1": "team-b"}
        assert owner.cancel("b-1") is True
        assert list(chunks)[-1].finish_reason is FinishReason.CANCELLED


def test_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f"{KEY_A}=team-env")
    with BackgroundServers(api_keys=None) as servers:
        with Client(servers.grpc_target) as client, pytest.raises(sdk.Unauthenticated):
            client.generate("a")
        with Client(servers.grpc_target, api_key=KEY_A) as client:
            client.generate("a")
        assert servers.gateway.requests[-1].tenant == "team-env"


def test_without_keys_any_key_is_the_default_tenant(client, servers):
    with Client(servers.grpc_target, api_key="sk-whatever") as keyed:
        keyed.generate("a")
    client.generate("b")
    assert [r.tenant for r in servers.gateway.requests] == ["default", "default"]


# ---- TLS ---------------------------------------------------------------------------------------------

def test_both_servers_speak_tls(tmp_path):
    cert, key = write_self_signed(tmp_path)
    with BackgroundServers(tls_cert=cert, tls_key=key) as servers:
        assert servers.http_url.startswith("https://")
        with Client(servers.grpc_target, root_certificates=cert, timeout_s=CALL_TIMEOUT_S) as client:
            assert client.generate("a b").text == "a b "
        with Client(servers.grpc_target, timeout_s=CALL_TIMEOUT_S, retry=RetryPolicy(max_retries=0)) as plain, \
                pytest.raises(sdk.Unavailable):
            plain.generate("a b")  # plaintext against a TLS port
        verified = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(cert)))
        with openai.OpenAI(base_url=servers.http_url + "/v1", api_key="unused", max_retries=0,
                           http_client=verified) as oai:
            assert oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}]).choices
        with httpx.Client(timeout=CALL_TIMEOUT_S) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(servers.http_url + "/health")  # the system roots do not know our CA
