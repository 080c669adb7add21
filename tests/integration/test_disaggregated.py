"""The disaggregated path end to end, on real vLLM-CPU workers with the default model.

A request enters through gRPC (the SDK), is prefilled by one engine, its KV travels to the other
engine over ZeroMQ (or gRPC), which decodes and streams the answer. Greedy outputs must be token for
token those of one plain vLLM engine with the same model and settings, for prompts at and around
block boundaries (32 tokens) and long prompts, over both transports, in the default bfloat16.
(Concurrent requests: `test_token_identity_concurrent.py`.)

A corrupted frame or a dropped transfer must still end in the right answer, through recompute: the
decode worker then computes the prompt and the prefill's first token itself, in one pass, so its
answer is exactly what one plain engine gives for that input. (It may part from the undisturbed
answer after a few tokens: computing the prompt in one pass with the first token instead of before
it changes the floating-point order, and vLLM's kernels are not batch-invariant; vLLM's own
recompute-on-failure behaves the same.)
"""

from __future__ import annotations

import urllib.request

import pytest

from identity_prompts import PASSAGES, build_prompts
from pdserve import Client

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 12

MAX_TOKENS = 12
@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> dict[int, list[int]]:
    return build_prompts(tokenizer)


@pytest.fixture(scope="module")
def expected(reference_engine, prompts) -> dict[int, list[int]]:
    return {length: reference_engine.greedy(prompt, MAX_TOKENS) for length, prompt in prompts.items()}


def _greedy(client: Client, prompt: list[int], max_tokens: int = MAX_TOKENS):
    return client.generate(prompt, max_tokens=max_tokens, temperature=0)


def _mismatches(results: dict[int, list[int]], expected: dict[int, list[int]]) -> list[str]:
    return [f"prompt of {n} tokens: got {results[n]}, expected {expected[n]}" for n in results if results[n] != expected[n]]


def _token_ids(completion) -> list[int]:
    return list(completion.token_ids)


def test_single_requests_are_token_identical_to_one_colocated_engine(serving, prompts, expected):
    results = {}
    with Client(serving.grpc_target) as client:
        for length, prompt in prompts.items():
            answer = _greedy(client, prompt)
            assert answer.usage.prefill_worker and answer.usage.decode_worker, answer.usage
            assert not answer.usage.prefill_skipped
            results[length] = _token_ids(answer)
    assert len(results) >= 30
    assert not _mismatches(results, expected)


@pytest.fixture(scope="module")
def expected_for(reference_engine):
    return lambda prompt: reference_engine.greedy(prompt, MAX_TOKENS)


def test_the_grpc_transport_gives_the_same_tokens(grpc_gateway, prompts, expected_for, tokenizer):
    lengths = [1, 31, 32, 33, 65, 513]
    fresh = {n: tokenizer.encode(" Over gRPC:") + prompts[n] for n in lengths}  # not cached on either engine yet
    results = {}
    with Client(grpc_gateway) as client:
        for n in lengths:
            answer = _greedy(client, fresh[n])
            results[n] = _token_ids(answer)
            assert not answer.usage.kv_recomputed and not answer.usage.prefill_skipped
    assert not _mismatches(results, {n: expected_for(fresh[n]) for n in lengths})


@pytest.fixture(scope="module")
def grpc_gateway(serving):
    """A second gateway on the same workers whose requests move their KV over gRPC streams."""
    from orchestrator.api.servers import start_servers
    from orchestrator.config import with_overrides
    from orchestrator.gateway.service import Gateway

    gateway_box = {}

    async def start():
        cluster = serving.cluster
        config = with_overrides(cluster.config, {"kv.transport": "grpc"})
        gateway = Gateway(cluster.controller, config, cluster.gateway.tokenizer, cluster.gateway.model_id)
        await gateway.start()
        gateway_box["servers"] = await start_servers(gateway, config.server)
        gateway_box["gateway"] = gateway

    serving.loop.run(start())
    yield gateway_box["servers"].grpc_target
    serving.loop.run(gateway_box["servers"].stop())
    serving.loop.run(gateway_box["gateway"].stop())


@pytest.mark.parametrize("fault, cause", [("corrupt", "checksum"), ("drop", "timeout")])
def test_a_broken_transfer_ends_in_the_right_answer_through_recompute(serving, tokenizer, reference_engine, fault,
                                                                     cause):
    import ray

    prompt = tokenizer.encode(f"Recompute check ({fault}): " + PASSAGES[3])
    before = _metric(serving, f'pdserve_kv_recompute_total{{cause="{cause}"}}')
    ray.get(serving.worker("prefill")["handle"].inject_kv_fault.remote(fault))
    with Client(serving.grpc_target) as client:
        answer = _greedy(client, prompt)
    assert answer.usage.kv_recomputed and answer.finish_reason.value == "length"
    first, *rest = _token_ids(answer)
    assert rest == reference_engine.greedy(prompt + [first], MAX_TOKENS - 1)
    assert _metric(serving, f'pdserve_kv_recompute_total{{cause="{cause}"}}') == before + 1


def test_a_prompt_the_decode_worker_holds_skips_the_prefill_tier(serving, tokenizer, reference_engine):
    prompt = tokenizer.encode("Prefix reuse: " + " ".join(PASSAGES * 2))[:321]  # 10 full blocks: 99.7% reusable
    with Client(serving.grpc_target) as client:
        first = _greedy(client, prompt)
        second = _greedy(client, prompt)
    assert not first.usage.prefill_skipped and second.usage.prefill_skipped
    assert second.usage.prefill_worker == "" and second.usage.cached_tokens == 320
    # The decode worker computed the last token over its cached 320: as a plain engine does on a repeat.
    assert _token_ids(first) == reference_engine.greedy(prompt, MAX_TOKENS)
    assert _token_ids(second) == reference_engine.greedy(prompt, MAX_TOKENS)


def test_blocks_are_free_on_both_tiers_once_requests_end(serving):
    import time

    deadline = time.monotonic() + 30
    while True:
        engines = {w["tier"]: w["stats"].engine for w in serving.workers() if w["state"] == "ready"}
        if all(e.num_free_blocks == e.num_total_blocks > 0 for e in engines.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {t: (e.num_free_blocks, e.num_total_blocks) for t, e in engines.items()} == \
        {t: (e.num_total_blocks, e.num_total_blocks) for t, e in engines.items()}


def test_health_and_metrics_report_the_pools_and_transfers(serving):
    with urllib.request.urlopen(f"{serving.http_url}/health", timeout=10) as response:
        assert response.status == 200
    text = _metrics_text(serving)
    for name in ("pdserve_requests_total{tier=\"prefill\"}", "pdserve_requests_total{tier=\"decode\"}",
                 "pdserve_kv_transfer_bytes_total", "pdserve_kv_transfer_seconds_count", "pdserve_ttft_seconds_count",
                 "pdserve_inter_token_seconds_count"):
        assert name in text, name
    assert _metric(serving, "pdserve_kv_transfer_bytes_total") > 0


def test_status_shows_both_pools_and_transfer_rates(serving, tokenizer):
    import time

    with Client(serving.grpc_target) as client:
        _greedy(client, tokenizer.encode("Status check: " + PASSAGES[0]), max_tokens=8)
        deadline = time.monotonic() + 15  # the gateway's snapshot of the workers' stats refreshes on its own
        while (status := client.status())["pools"]["decode"]["workers"][0]["itl_ms"] <= 0 and time.monotonic() < deadline:
            time.sleep(0.5)
    assert status["ready"] and status["mode"] == "disaggregated"
    for pool in ("prefill", "decode"):
        assert status["pools"][pool]["actual_replicas"] == 1
        worker = status["pools"][pool]["workers"][0]
        assert worker["state"] == "ready" and worker["num_total_blocks"] > 0
    # The decode engine's own gap between tokens (its step, by the EngineCore's clock): what a client's ITL
    # is compared with; a prefill engine makes one token per request, so it has none.
    assert 1 < status["pools"]["decode"]["workers"][0]["itl_ms"] < 5000
    assert status["transfers"]["bytes_total"] > 0 and status["transfers"]["num_completed"] > 0


def _metrics_text(serving) -> str:
    with urllib.request.urlopen(f"{serving.http_url}/metrics", timeout=10) as response:
        return response.read().decode()


def _metric(serving, name: str) -> float:
    for line in _metrics_text(serving).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_one_trace_per_request_spans_the_gateway_and_both_workers(serving, trace_collector, tokenizer):
    import time

    from orchestrator import tracing

    # The tracer provider is process-wide: a cluster that other tests started in this process since the
    # session's (test_autoscale's, exporting nothing) replaced it. Put the session gateway's back.
    tracing.setup_from_config("pdserve-gateway", serving.cluster.config.tracing)
    prompt = tokenizer.encode("Tracing check: " + PASSAGES[1])
    with Client(serving.grpc_target) as client:
        answer = _greedy(client, prompt, max_tokens=4)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = trace_collector.trace(answer.request_id)
        if {"request", "queue", "prefill", "kv_transfer", "decode"} <= {s.name for _, s in spans}:
            break
        time.sleep(0.5)
    by_name = {span.name: (service, span) for service, span in spans}
    assert set(by_name) >= {"request", "queue", "prefill", "kv_transfer", "decode"}, sorted(by_name)
    assert by_name["request"][0] == "pdserve-gateway"
    assert by_name["prefill"][0] == "pdserve-prefill" and by_name["decode"][0] == "pdserve-decode"
    root = by_name["request"][1]
    assert all(span.parent_span_id == root.span_id for name, (_, span) in by_name.items() if name != "request")


def test_a_request_that_ends_with_its_first_token_moves_no_kv(serving, tokenizer):
    """The prefill's first token is the whole answer: no decode worker will claim KV, so none is pushed."""
    import time

    with Client(serving.grpc_target) as client:
        time.sleep(2)  # the counters of earlier tests' transfers settle (engine and gateway refreshes)
        before = client.status()["transfers"]["bytes_total"]
        answer = client.generate(tokenizer.encode("One token: " + PASSAGES[2]), max_tokens=1, temperature=0)
        time.sleep(2)
        after = client.status()["transfers"]["bytes_total"]
    assert answer.usage.prefill_worker and answer.usage.output_tokens == 1 and len(answer.token_ids) == 1
    assert after == before
