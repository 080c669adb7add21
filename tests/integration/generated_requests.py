"""Hypothesis strategies of API requests, valid and not, for the API fuzz tests (test_api_fuzz.py).

Three kinds for each API:
- valid: every field within its documented range, for a tiny answer (max_tokens 1..4): the server must
  answer 200 / OK, so the engines behind it are exercised but do little work;
- one field wrong: a valid request with one field replaced by a wrong type, an out-of-range or huge
  number, an unknown key, ... (the other fields valid, so the bad one is what the server meets; a
  "wrong" value that happens to be valid, such as temperature 2, is allowed to succeed);
- anything: any JSON, any object, any bytes (HTTP); any field values (gRPC).
Counts a client may send are never a small positive number unless valid and tiny, so no generated
request makes an engine produce more than a few tokens (a chat body always carries a count: chat's
default is 256).
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from orchestrator.api.pb import inference_pb2 as pb

MODEL = "smollm2-135m-instruct"
VOCAB_SIZE = 49_152  # the default model's
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)

# ---- JSON values -------------------------------------------------------------------------------------

EXTREME_NUMBERS = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 2**64, 1e308, -1e308, -0.0, 5e-324])
NOT_A_COUNT = st.integers(-(2**70), 0) | st.integers(2**15 + 1, 2**70)  # never a small valid count
JSON_LEAVES = (st.none() | st.booleans() | NOT_A_COUNT | st.floats(allow_nan=False, allow_infinity=False)
               | st.text(max_size=12) | EXTREME_NUMBERS)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
TINY_COUNT = st.integers(1, 4)
STOPS = st.lists(st.text(min_size=1, max_size=4), max_size=3)

# ---- HTTP: valid bodies ------------------------------------------------------------------------------

VALID_BUDGET = st.fixed_dictionaries({}, optional={
    "max_thinking_tokens": st.integers(0, 1000), "max_output_tokens": st.integers(1, 100),
    "max_total_tokens": st.integers(2000, 10**6), "deadline_ms": st.integers(60_000, 10**7) | st.floats(6e4, 1e7),
    "max_cost_usd": st.floats(1, 1e6), "max_energy_j": st.floats(1e6, 1e12), "priority": INT32,
})
VALID_SHARED = {
    "model": st.just(MODEL), "temperature": st.floats(0, 2) | st.integers(0, 2), "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 50), "seed": INT64, "stop": STOPS | st.text(min_size=1, max_size=4),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(), "n": st.just(1), "logprobs": st.sampled_from([False, 0]), "echo": st.just(False),
    "user": st.text(max_size=8), "pdserve": st.fixed_dictionaries({}, optional={
        "budget": VALID_BUDGET, "request_id": st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                      min_size=1, max_size=20)}),
}
VALID_PROMPTS = st.text(min_size=1, max_size=30) | st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=6)
VALID_MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "system", "assistant"]),
    "content": st.text(max_size=20) | st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                       "text": st.text(max_size=8)}), max_size=2)},
    optional={"name": st.text(max_size=6)}), min_size=1, max_size=3).filter(
    lambda messages: any(_text_of(m["content"]) for m in messages))


def _text_of(content) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def _body(own: dict) -> st.SearchStrategy:
    return st.fixed_dictionaries(own, optional=VALID_SHARED)


VALID_COMPLETION = _body({"prompt": VALID_PROMPTS, "max_tokens": TINY_COUNT})
VALID_CHAT = st.one_of(_body({"messages": VALID_MESSAGES, "max_tokens": TINY_COUNT}),
                       _body({"messages": VALID_MESSAGES, "max_completion_tokens": TINY_COUNT}))
VALID_HTTP = st.one_of(st.tuples(st.just("/v1/completions"), VALID_COMPLETION),
                       st.tuples(st.just("/v1/chat/completions"), VALID_CHAT))

# ---- HTTP: one field wrong ---------------------------------------------------------------------------

# Per field, values that are wrong for it (or odd: a few are valid and may succeed).
BAD_FIELD_VALUES = {
    "model": st.sampled_from(["other", "", MODEL.upper()]) | JSON_LEAVES,
    "prompt": st.sampled_from(["", "\ud800", "a\udfffb", [], [VOCAB_SIZE], [-1], [2**63 - 1], [2**63], [2**64], ["a", "b"], [[1], [2]],
                               [True], {"text": "x"}]) | st.lists(st.integers(VOCAB_SIZE, 2**70), min_size=1, max_size=3)
    | JSON_VALUES,
    "messages": st.sampled_from([[], "hi", [{}], [{"role": "user"}], [{"role": "robot", "content": "x"}],
                                 [{"role": "user", "content": ""}], [{"role": "user", "content": [{"type": "image_url"}]}],
                                 [{"role": "user", "content": "\ud83d"}], [{"role": "user\udc00", "content": "x"}],
                                 [{"role": "user", "content": "x", "tool_calls": []}], [None]]) | JSON_VALUES,
    "max_tokens": st.sampled_from([0, -1, 32_769, 2**63, 1.5, "4", True]) | JSON_LEAVES,
    "max_completion_tokens": st.sampled_from([0, -1, 10**30, "2"]) | JSON_LEAVES,
    "temperature": st.sampled_from([-0.01, -1, 10**400, "1", True]) | JSON_LEAVES,
    "top_p": st.sampled_from([0, -0.1, 1.0001, 2, 10**400, "1"]) | JSON_LEAVES,
    "top_k": st.sampled_from([-2, 2**63, -(2**63), 0.5, "5"]) | JSON_LEAVES,
    "seed": st.sampled_from([2**63, -(2**63) - 1, 10**400, 1.5, "1"]) | JSON_LEAVES,
    "stop": st.sampled_from([[""], ["x" * 257], ["a"] * 9, [1], "", [None], {"s": 1}, "\udbff", ["\ud800x"]])
    | JSON_VALUES,
    "stream": st.sampled_from([1, 0, "true", None]) | JSON_LEAVES,
    "stream_options": st.sampled_from([{"include_usage": 1}, {"bogus": True}, [], "yes"]) | JSON_VALUES,
    "ignore_eos": st.sampled_from([1, "false"]) | JSON_LEAVES,
    "n": st.sampled_from([0, 2, -1, 10**9, "1"]) | JSON_LEAVES,
    "logprobs": st.sampled_from([True, 1, 5, -1]) | JSON_LEAVES,
    "top_logprobs": st.integers(-1, 20) | JSON_LEAVES,
    "echo": st.sampled_from([True, 1]) | JSON_LEAVES,
    "best_of": st.integers(-1, 3) | JSON_LEAVES,
    "suffix": st.text(min_size=1, max_size=4) | JSON_LEAVES,
    "presence_penalty": st.floats(-2, 2) | JSON_LEAVES,
    "frequency_penalty": st.floats(-2, 2) | JSON_LEAVES,
    "logit_bias": st.dictionaries(st.text(max_size=3), st.integers(-100, 100), min_size=1, max_size=2) | JSON_VALUES,
    "tools": st.lists(JSON_VALUES, min_size=1, max_size=2) | JSON_LEAVES,
    "tool_choice": st.sampled_from(["auto", "required"]) | JSON_LEAVES,
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text", "x": 1}]) | JSON_VALUES,
    "user": JSON_VALUES, "metadata": JSON_VALUES, "store": JSON_LEAVES,
    "pdserve": st.fixed_dictionaries({}, optional={
        "request_id": st.sampled_from(["", "x" * 129, "a\x00b", "tab\there", "\ud800", "a/b", "../x"]) | JSON_LEAVES,
        "budget": st.dictionaries(
            st.sampled_from(["max_thinking_tokens", "min_thinking_tokens", "max_output_tokens", "max_total_tokens",
                             "deadline_ms", "max_cost_usd", "max_energy_j", "priority", "start_thinking", "bogus"]),
            st.integers(-2, 10) | st.floats(-1, 1) | EXTREME_NUMBERS | JSON_LEAVES, min_size=1, max_size=3) | JSON_LEAVES,
        "bogus": JSON_LEAVES}) | JSON_LEAVES,
}
UNKNOWN_FIELDS = st.text(min_size=1, max_size=10).filter(lambda name: name not in BAD_FIELD_VALUES)


def _with_one_wrong(body: dict, draw) -> dict:
    """`body` with one field replaced (or added) by a wrong value, or with an unknown field."""
    name = draw(st.sampled_from(sorted(BAD_FIELD_VALUES)) | UNKNOWN_FIELDS)
    value = draw(BAD_FIELD_VALUES.get(name, JSON_VALUES))
    return {**body, name: value}


@st.composite
def one_wrong_http(draw) -> tuple[str, dict]:
    route, body = draw(VALID_HTTP)
    return route, _with_one_wrong(body, draw)


def _encode(route_body: tuple[str, object]) -> tuple[str, bytes]:
    return route_body[0], json.dumps(route_body[1]).encode()


ROUTES = st.sampled_from(["/v1/completions", "/v1/chat/completions"])
ANYTHING_HTTP = st.tuples(ROUTES, st.one_of(
    st.dictionaries(st.sampled_from(sorted(BAD_FIELD_VALUES)) | st.text(max_size=8), JSON_VALUES, max_size=5)
    .map(lambda body: json.dumps(body).encode()),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64)))
GENERATED_HTTP = st.one_of(VALID_HTTP.map(_encode), one_wrong_http().map(_encode), one_wrong_http().map(_encode),
                           ANYTHING_HTTP)

# ---- HTTP: methods, paths and headers ----------------------------------------------------------------

PATHS = st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
                         "/v1/requests/x/cancel", "/v1/embeddings", "/v1", "/", "/v1/models/x", "//v1/models",
                         "/v1/completions/", "/v1/requests//cancel", "/v1/requests/%00/cancel",
                         "/v1/requests/%ff%fe/cancel", "/v1/requests/" + "a" * 300 + "/cancel"]) \
    | st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"), max_size=20).map(
        lambda tail: "/" + tail)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.strip)  # sendable
HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                     "application/json; charset=latin-1"]) | HEADER_VALUES,
    "Authorization": st.sampled_from(["Bearer", "Bearer sk-x", "Basic Zm9vOmJhcg==", ""]) | HEADER_VALUES,
    "Accept": st.sampled_from(["text/event-stream", "*/*", "application/xml"]) | HEADER_VALUES,
    "Accept-Encoding": st.sampled_from(["gzip", "br", "identity;q=0", "bogus"]),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "bogus", "identity"]),
    "X-Request-Id": HEADER_VALUES, "OpenAI-Organization": HEADER_VALUES,
})
REQUEST_BODIES = st.one_of(st.just(b""), st.binary(max_size=32), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                           VALID_HTTP.map(lambda route_body: json.dumps(route_body[1]).encode()))

# ---- gRPC: the SDK's messages ------------------------------------------------------------------------

VALID_SAMPLING_PB = st.builds(
    lambda fields, stop, ignore_eos: pb.SamplingParams(**fields, stop=stop, ignore_eos=ignore_eos),
    st.fixed_dictionaries({"max_tokens": TINY_COUNT}, optional={
        "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 50), "seed": INT64}),
    STOPS, st.booleans())
VALID_BUDGET_PB = st.builds(lambda fields: pb.Budget(**fields), VALID_BUDGET.map(
    lambda budget: {name: float(v) if name == "deadline_ms" else v for name, v in budget.items()}))
VALID_PROMPT_PB = st.one_of(
    st.builds(lambda text: {"text": text}, st.text(min_size=1, max_size=40)),
    st.builds(lambda ids: {"token_ids": pb.TokenIds(ids=ids)}, st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1,
                                                                         max_size=6)),
    st.builds(lambda messages: {"messages": pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in messages])},
              VALID_MESSAGES.map(lambda ms: [{"role": m["role"], "content": _text_of(m["content"])} for m in ms]).filter(
                  lambda ms: any(m["content"] for m in ms))),
)
VALID_GRPC = st.builds(lambda prompt, **fields: pb.GenerateRequest(**prompt, **fields), VALID_PROMPT_PB,
                       request_id=st.just("") | st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                        min_size=1, max_size=20),
                       model=st.sampled_from(["", MODEL]), sampling=VALID_SAMPLING_PB, budget=VALID_BUDGET_PB)

# Per field of the message (a path into it), values that are wrong for it.
FLOAT_EDGES = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e308, -1e308])
BAD_PB_VALUES = {
    "text": st.just(""), "token_ids": st.lists(st.integers(VOCAB_SIZE, 2**63 - 1) | st.integers(-(2**63), -1),
                                               min_size=1, max_size=3) | st.just([]),
    "messages": st.lists(st.builds(dict, role=st.sampled_from(["robot", "", "tool", "USER"]) | st.text(max_size=50),
                                   content=st.text(max_size=8)), max_size=3),
    "model": st.sampled_from(["other", MODEL.upper(), " "]) | st.text(min_size=1, max_size=8),
    "request_id": st.sampled_from(["x" * 129, "a\x00b", "tab\there", "\u2028"]) | st.text(min_size=129, max_size=200),
    "sampling.max_tokens": st.sampled_from([0, -1, 32_769, 2**63 - 1, -(2**63)]),
    "sampling.temperature": FLOAT_EDGES | st.floats(max_value=-1e-9),
    "sampling.top_p": FLOAT_EDGES | st.floats(max_value=0) | st.floats(min_value=1.0000001),
    "sampling.top_k": st.integers(-(2**63), -2),
    "sampling.seed": INT64,  # any int64 is valid: the engine must cope with all
    "sampling.stop": st.sampled_from([[""], ["x" * 257], ["a"] * 9]),
    "budget.max_thinking_tokens": INT64, "budget.min_thinking_tokens": INT64, "budget.max_output_tokens": INT64,
    "budget.max_total_tokens": INT64, "budget.deadline_ms": FLOAT_EDGES | st.floats(),
    "budget.max_cost_usd": FLOAT_EDGES | st.floats(), "budget.max_energy_j": FLOAT_EDGES | st.floats(),
    "budget.priority": INT32,
}


@st.composite
def one_wrong_grpc(draw) -> pb.GenerateRequest:
    message = draw(VALID_GRPC)
    field = draw(st.sampled_from(sorted(BAD_PB_VALUES)))
    value = draw(BAD_PB_VALUES[field])
    if field == "token_ids":
        message.token_ids.CopyFrom(pb.TokenIds(ids=value))
    elif field == "messages":
        message.messages.CopyFrom(pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in value]))
    elif "." in field:
        part, name = field.split(".")
        target = getattr(message, part)
        if name == "stop":
            del target.stop[:]
            target.stop.extend(value)
        else:
            setattr(target, name, value)
    else:
        setattr(message, field, value)
    return message


ANY_SAMPLING_PB = st.builds(lambda max_tokens, fields, stop, ignore_eos: pb.SamplingParams(
    max_tokens=max_tokens, **fields, stop=stop, ignore_eos=ignore_eos),
    TINY_COUNT | INT64.filter(lambda count: count <= 0 or count > 2**15),
    st.fixed_dictionaries({}, optional={"temperature": st.floats(), "top_p": st.floats(), "top_k": INT64,
                                        "seed": INT64}),
    st.lists(st.text(max_size=4) | st.text(min_size=250, max_size=300), max_size=10), st.booleans())
ANY_BUDGET_PB = st.builds(lambda fields: pb.Budget(**fields), st.fixed_dictionaries({}, optional={
    "max_thinking_tokens": INT64, "min_thinking_tokens": INT64, "max_output_tokens": INT64,
    "max_total_tokens": INT64, "deadline_ms": st.floats(), "max_cost_usd": st.floats(), "max_energy_j": st.floats(),
    "priority": INT32, "start_thinking": st.booleans()}))
ANY_PROMPT_PB = st.one_of(
    st.fixed_dictionaries({"text": st.text(max_size=40)}),
    st.fixed_dictionaries({"token_ids": st.builds(lambda ids: pb.TokenIds(ids=ids), st.lists(
        st.integers(0, VOCAB_SIZE + 10) | INT64, max_size=6))}),
    st.fixed_dictionaries({"messages": st.builds(lambda ms: pb.ChatMessages(messages=ms), st.lists(st.builds(
        pb.ChatMessage, role=st.sampled_from(["user", "system", "assistant", "robot", ""]),
        content=st.text(max_size=12)), max_size=3))}),
    st.just({}),
)
ANY_GRPC = st.builds(lambda prompt, **fields: pb.GenerateRequest(**prompt, **fields), ANY_PROMPT_PB,
                     request_id=st.text(max_size=10) | st.text(min_size=120, max_size=140),
                     model=st.sampled_from(["", MODEL, "other"]), sampling=ANY_SAMPLING_PB, budget=ANY_BUDGET_PB)
GENERATED_GRPC = st.one_of(VALID_GRPC, one_wrong_grpc(), one_wrong_grpc(), ANY_GRPC)

RPCS = st.sampled_from(["Generate", "Cancel", "ListModels", "GetClusterStatus"])
RAW_MESSAGES = st.binary(max_size=64) | st.builds(lambda rid: pb.CancelRequest(request_id=rid).SerializeToString(),
                                                  st.text(max_size=140))

# Raw bytes on the HTTP port: broken request lines and framing (what no HTTP client library would send).
REQUEST_LINES = st.sampled_from([b"POST /v1/completions HTTP/1.1", b"GET / HTTP/1.1", b"POST /v1/completions HTTP/9.9",
                                 b"BREW /v1/completions HTTP/1.1", b"POST  HTTP/1.1", b"POST /v1/completions",
                                 b"\x00\xff", b""]) | st.binary(max_size=40)
HEADER_LINES = st.lists(st.sampled_from([b"Host: x", b"Content-Length: 5", b"Content-Length: -1",
                                         b"Content-Length: 99999999999999999999", b"Transfer-Encoding: chunked",
                                         b"Transfer-Encoding: gzip, chunked", b"Content-Type: application/json",
                                         b"Content-Encoding: gzip", b"Expect: 100-continue", b"X: \x00",
                                         b"no colon here", b": empty name"]) | st.binary(max_size=30), max_size=5)
RAW_HTTP = st.builds(lambda line, headers, body: line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body,
                     REQUEST_LINES, HEADER_LINES, st.binary(max_size=40) | st.just(b'0\r\n\r\n'))
