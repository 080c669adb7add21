"""The timing engine: step times from the profile, continuous batching within its limits, KV blocks
freed, KV handed over real ZeroMQ and gRPC sockets (recompute when a transfer fails), thinking limits,
and its tokenizer. Step times run on a fake clock: no timed assertions."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from orchestrator.budget.thinking import ThinkingTracker
from orchestrator.config import ModelConfig, PdserveConfig
from orchestrator.errors import InvalidRequest
from orchestrator.request import ChatMessage, Prompt
from workers.engine.base import EngineError, EngineRequest, KVPush, KVReceive, ThinkingLimits
from workers.engine.timing import (
    ANSWER_TOKENS,
    EOS_ID,
    FIRST_WORD_ID,
    THINKING_TOKENS,
    VOCAB_SIZE,
    TimingEngine,
    TimingTokenizer,
    step_ms,
)

PROMPT = tuple(range(300, 400))  # 100 word ids
TOKENIZER = TimingTokenizer()


def request(request_id="r", prompt=PROMPT, max_tokens=4, **fields) -> EngineRequest:
    return EngineRequest(request_id=request_id, prompt_ids=tuple(prompt), max_tokens=max_tokens, **fields)


async def run(engine, req, clock=None):
    """Every output of a request, with the (fake) time it arrived."""
    return [(clock() if clock else 0.0, out) async for out in engine.generate(req)]


def tokens(outputs) -> list[int]:
    return [t for _, out in outputs for t in out.token_ids]


# ---- step time ----------------------------------------------------------------------------------------


async def test_a_lone_request_takes_the_profiled_prefill_then_decode_steps(make_engine, make_profile, clock):
    profile = make_profile()
    engine = await make_engine(profile=profile, clock=clock)
    outputs = await run(engine, request(max_tokens=4), clock)
    times = [t for t, _ in outputs]
    assert times[0] == pytest.approx(profile.predict_prefill_ms([100]) / 1000)
    for i in range(1, 4):  # decode step i computes generated token i-1 with the prompt and i-1 tokens cached
        step = profile.predict_decode_step_ms(1, 100 + i - 1) / 1000
        assert times[i] - times[i - 1] == pytest.approx(step)
    assert [out.finish_reason for _, out in outputs] == [None, None, None, "length"]


async def test_prompts_admitted_together_share_one_step(make_engine, make_profile, clock):
    profile = make_profile()
    engine = await make_engine(profile=profile, clock=clock)
    first, second = await asyncio.gather(run(engine, request("a", max_tokens=1), clock),
                                         run(engine, request("b", prompt=range(300, 350), max_tokens=1), clock))
    assert first[0][0] == second[0][0] == pytest.approx(profile.predict_prefill_ms([100, 50]) / 1000)


async def test_a_prompt_joining_a_decode_makes_one_mixed_step(make_engine, make_profile, clock):
    profile = make_profile()
    engine = await make_engine(profile=profile, clock=clock)
    joined = []

    def join_during_second_step(_):
        if len(clock.sleeps) == 1:  # "a" decodes its first token: "b" arrives meanwhile
            joined.append(asyncio.ensure_future(run(engine, request("b", prompt=range(500, 540), max_tokens=1))))

    clock.on_sleep = join_during_second_step
    await run(engine, request("a", max_tokens=4))
    await joined[0]
    fixed = min(profile.prefill_coefficients.a_ms, profile.decode_coefficients.a_ms)  # counted once per step
    mixed_ms = profile.predict_prefill_ms([40]) + profile.predict_decode_step_ms(1, 101) - fixed
    assert clock.sleeps[2] * 1000 == pytest.approx(mixed_ms)
    assert step_ms(profile, [40], 1, 101) == pytest.approx(mixed_ms)
    assert clock.sleeps[3] * 1000 == pytest.approx(profile.predict_decode_step_ms(1, 102))  # "b" is done: "a" alone


async def test_a_long_prompt_is_chunked_by_the_token_budget(make_engine, make_profile, clock):
    profile = make_profile()
    engine = await make_engine(profile=profile, clock=clock, max_num_batched_tokens=64)
    outputs = await run(engine, request(prompt=range(300, 450), max_tokens=1), clock)
    expected = 2 * profile.predict_prefill_ms([64]) + profile.predict_prefill_ms([22])
    assert outputs[0][0] == pytest.approx(expected / 1000)


# ---- batching limits and blocks -------------------------------------------------------------------------


async def test_max_num_seqs_bounds_the_batch_and_stats_are_exact(make_engine, clock):
    engine = await make_engine(clock=clock, max_num_seqs=2)
    seen = []
    clock.on_sleep = lambda _: seen.append(engine.stats())
    prompts = [range(300, 340), range(400, 440), range(500, 540)]
    await asyncio.gather(*(run(engine, request(f"r{i}", prompt=p, max_tokens=3)) for i, p in enumerate(prompts)))
    assert max(s.num_running for s in seen) == 2
    first = seen[0]
    assert (first.num_running, first.num_waiting) == (2, 1)
    # 40 prompt tokens in 16-token blocks: 3 blocks each for the two running requests.
    assert first.num_total_blocks - first.num_free_blocks == 6
    assert first.kv_usage == pytest.approx(6 / first.num_total_blocks)
    done = engine.stats()
    assert (done.num_running, done.num_waiting, done.num_free_blocks) == (0, 0, done.num_total_blocks)


async def test_blocks_are_freed_on_finish_abort_and_close(make_engine, clock):
    engine = await make_engine(clock=clock)
    total = engine.stats().num_total_blocks
    await run(engine, request("done", max_tokens=2))
    assert engine.stats().num_free_blocks == total

    stream = engine.generate(request("aborted", max_tokens=50))
    first = await anext(stream)
    assert first.token_ids and engine.stats().num_free_blocks < total
    await engine.abort("aborted")
    rest = [out async for out in stream]
    assert rest[-1].finished and rest[-1].finish_reason == "abort"
    assert engine.stats().num_free_blocks == total

    stream = engine.generate(request("closed", max_tokens=50))
    await anext(stream)
    await stream.aclose()
    assert engine.stats().num_free_blocks == total and engine.stats().num_running == 0
    await engine.abort("unknown")  # a no-op


async def test_kv_pressure_preempts_and_every_request_still_finishes(make_engine, make_profile, clock):
    # 8 blocks of 16 tokens: two 40-token prompts that grow to 100 tokens cannot both stay.
    engine = await make_engine(profile=make_profile(kv_capacity_tokens=128), clock=clock)
    seen = []
    clock.on_sleep = lambda _: seen.append(engine.stats())
    pressed = await asyncio.gather(*(run(engine, request(f"r{i}", prompt=range(300 + 100 * i, 340 + 100 * i), max_tokens=60))
                                     for i in range(2)))
    both = next(i for i, s in enumerate(seen) if s.num_running == 2)
    assert any(s.num_running == 1 and s.num_waiting == 1 for s in seen[both:])  # the newer one was preempted
    assert engine.stats().num_free_blocks == 8
    roomy = await make_engine(clock=clock)
    for i, outputs in enumerate(pressed):
        alone = await run(roomy, request(f"alone{i}", prompt=range(300 + 100 * i, 340 + 100 * i), max_tokens=60))
        assert tokens(outputs) == tokens(alone)  # preemption recomputes; no token lost or repeated
        assert outputs[-1][1].finish_reason == "length"


async def test_requests_that_can_never_run_are_refused(make_engine, make_profile):
    engine = await make_engine(profile=make_profile(kv_capacity_tokens=128), model=ModelConfig(max_model_len=512))
    with pytest.raises(ValueError, match="KV blocks"):
        engine.generate(request(prompt=range(300, 400), max_tokens=100))
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(request(prompt=[300] * 512))
    with pytest.raises(ValueError, match="empty"):
        engine.generate(request(prompt=()))
    with pytest.raises(ValueError, match="vocabulary|token ids"):
        engine.generate(request(prompt=[VOCAB_SIZE]))
    with pytest.raises(ValueError, match="colocated"):
        engine.generate(request(kv_receive=KVReceive("t", 10)))


async def test_an_engine_without_a_profile_does_not_start(tmp_path):
    from orchestrator.config import EngineConfig

    engine = TimingEngine(ModelConfig(), EngineConfig(kind="timing", profile=tmp_path / "missing.yaml"), worker_id="w")
    with pytest.raises(EngineError, match="missing.yaml"):
        await engine.start()
    with pytest.raises(EngineError, match="not running"):
        engine.generate(request())


def test_the_worker_builds_a_timing_engine(tmp_path, make_profile):
    from workers.actor import build_engine

    path = tmp_path / "p.yaml"
    make_profile().save(path)
    config = PdserveConfig.model_validate({"engine": {"kind": "timing", "profile": str(path)}})
    assert isinstance(build_engine(config, "unused", "decode", "w1", kv_secret=b"k" * 32), TimingEngine)
    with pytest.raises(ValueError, match="needs the cluster's KV secret"):  # kv.auth defaults to hmac
        build_engine(config, "unused", "decode", "w1")


# ---- tokens ---------------------------------------------------------------------------------------------


async def test_tokens_are_deterministic_per_prompt_and_seed(make_engine):
    engine = await make_engine()
    same = [tokens(await run(engine, request(f"s{i}", max_tokens=8, seed=7))) for i in range(2)]
    other_seed = tokens(await run(engine, request("o", max_tokens=8, seed=8)))
    other_prompt = tokens(await run(engine, request("p", prompt=range(301, 401), max_tokens=8, seed=7)))
    assert same[0] == same[1] and same[0] != other_seed and same[0] != other_prompt
    assert all(FIRST_WORD_ID <= t < EOS_ID for t in same[0])
    # A continuation (the prompt plus tokens generated elsewhere) goes on with the same tokens.
    continued = tokens(await run(engine, request("c", prompt=PROMPT + tuple(same[0][:3]), max_tokens=5, seed=7,
                                                 num_original_prompt_tokens=len(PROMPT))))
    assert continued == same[0][3:]


async def test_answers_end_with_eos_unless_it_is_ignored(make_engine):
    engine = await make_engine()
    long = ANSWER_TOKENS[1] + 10
    stopped = await run(engine, request("eos", max_tokens=long))
    assert stopped[-1][1].finish_reason == "stop" and tokens(stopped)[-1] == EOS_ID
    assert ANSWER_TOKENS[0] < len(tokens(stopped)) <= ANSWER_TOKENS[1] + 1
    ignored = await run(engine, request("ignore", max_tokens=long, ignore_eos=True))
    assert ignored[-1][1].finish_reason == "length" and len(tokens(ignored)) == long and EOS_ID not in tokens(ignored)


# ---- thinking limits ------------------------------------------------------------------------------------


def thinking_request(request_id, **limits) -> EngineRequest:
    prompt = TOKENIZER.encode(Prompt(text="user: think\nassistant:"), start_thinking=True)
    return request(request_id, prompt=prompt, max_tokens=400, ignore_eos=True, thinking=ThinkingLimits(
        TOKENIZER.think_start_ids, TOKENIZER.think_end_ids, wait_ids=TOKENIZER.delimiter_ids(" Wait"),
        close_prefix_ids=TOKENIZER.delimiter_ids("\n"), start_thinking=True, **limits))


def thinking_of(generated) -> tuple[int, int]:
    tracker = ThinkingTracker(TOKENIZER.think_start_ids, TOKENIZER.think_end_ids, thinking=True)
    tracker.observe_all(generated)
    return tracker.num_thinking_tokens, tracker.num_spans_closed


async def test_thinking_stops_naturally_and_at_the_cap(make_engine):
    engine = await make_engine()
    natural, closed = thinking_of(tokens(await run(engine, thinking_request("free"))))
    assert THINKING_TOKENS[0] <= natural <= THINKING_TOKENS[1] and closed == 1
    capped = tokens(await run(engine, thinking_request("capped", max_thinking_tokens=10)))
    assert thinking_of(capped) == (10, 1)
    text = TOKENIZER.decode(capped)
    assert "\n</think>" in text  # the close prefix, then the end delimiter, then the answer
    assert not text.endswith("</think>")


async def test_a_thinking_minimum_forces_wait_and_holds_the_span_open(make_engine):
    engine = await make_engine()
    generated = tokens(await run(engine, thinking_request("min", min_thinking_tokens=THINKING_TOKENS[1] + 20)))
    thinking, closed = thinking_of(generated)
    assert closed == 1 and thinking >= THINKING_TOKENS[1] + 20
    assert " Wait" in TOKENIZER.decode(generated)


async def test_thinking_limits_hold_across_a_continuation(make_engine):
    engine = await make_engine()
    whole = tokens(await run(engine, thinking_request("whole", max_thinking_tokens=12)))
    head = thinking_request("head", max_thinking_tokens=12)
    tail_request = EngineRequest(request_id="tail", prompt_ids=head.prompt_ids + tuple(whole[:5]), max_tokens=395,
                                 ignore_eos=True, thinking=head.thinking, num_original_prompt_tokens=len(head.prompt_ids))
    assert whole[:5] + tokens(await run(engine, tail_request)) == whole


# ---- KV over real sockets -------------------------------------------------------------------------------


async def until(predicate, timeout_s=5.0):
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout_s)


async def handoff(prefill, decode, transport, transfer_id, *, push_prompt=PROMPT, fault="", max_tokens=6):
    """Prefill with a push to `decode` over `transport`, then decode from the transfer."""
    endpoint = decode.info.kv_endpoint(transport)
    kv_push = KVPush(transfer_id, endpoint, len(push_prompt), decode.info.kv_control_endpoint, fault=fault)
    first = tokens(await run(prefill, request(f"{transfer_id}-p", prompt=push_prompt, max_tokens=1, kv_push=kv_push)))
    receive = request(f"{transfer_id}-d", prompt=tuple(push_prompt) + tuple(first), max_tokens=max_tokens,
                      num_original_prompt_tokens=len(push_prompt), kv_receive=KVReceive(transfer_id, len(push_prompt)))
    return first, await run(decode, receive)


@pytest.mark.parametrize("transport", ["zmq", "grpc"])
async def test_kv_travels_over_real_sockets_into_the_decode_engines_blocks(make_engine, make_profile, transport):
    profile = make_profile()
    prefill = await make_engine(profile=profile, kv=True)
    decode = await make_engine(profile=profile, kv=True)
    first, outputs = await handoff(prefill, decode, transport, f"t-{transport}")
    outcome = outputs[0][1].kv
    assert outcome is not None and outcome.complete and not outcome.failure
    assert outcome.bytes == math.ceil(100 / 16) * 16 * profile.kv_bytes_per_token  # whole blocks, every layer
    assert all(out.kv is None for _, out in outputs[1:])
    colocated = await make_engine(profile=profile)
    assert first + tokens(outputs) == tokens(await run(colocated, request("alone", max_tokens=7)))
    sent, received = prefill.kv_counters(), decode.kv_counters()
    assert sent["bytes_sent_total"] == received["bytes_total"] == outcome.bytes
    assert received["frames_total"] == profile.num_kv_layers and received["transfers_completed"] == 1
    assert await decode.kv_outcome(f"t-{transport}") == outcome
    for engine in (prefill, decode):
        assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


async def test_chunked_prefill_pushes_every_chunk(make_engine, make_profile):
    profile = make_profile()
    prefill = await make_engine(profile=profile, kv=True, max_num_batched_tokens=40)
    decode = await make_engine(profile=profile, kv=True)
    _, outputs = await handoff(prefill, decode, "zmq", "t-chunks")
    assert outputs[0][1].kv.complete
    # Chunks of 40: frames from tokens 0, 32 (resending the partial block 32-39) and 80.
    assert decode.kv_counters()["frames_total"] == 3 * profile.num_kv_layers


async def test_a_corrupt_frame_ends_in_a_recompute(make_engine, make_profile):
    profile = make_profile()
    prefill = await make_engine(profile=profile, kv=True)
    decode = await make_engine(profile=profile, kv=True)
    first, outputs = await handoff(prefill, decode, "zmq", "t-corrupt", fault="corrupt")
    outcome = outputs[0][1].kv
    assert not outcome.complete and "checksum" in outcome.failure
    counters = decode.kv_counters()
    assert counters["checksum_failures"] == 1 and counters["transfers_recomputed"] == 1
    colocated = await make_engine(profile=profile)
    assert first + tokens(outputs) == tokens(await run(colocated, request("alone", max_tokens=7)))
    assert decode.stats().num_free_blocks == decode.stats().num_total_blocks


async def test_a_missing_transfer_times_out_and_the_prompt_is_recomputed(make_engine, make_profile, clock):
    profile = make_profile()
    prefill = await make_engine(profile=profile, kv=True)
    decode = await make_engine(profile=profile, kv={"timeout_s": 0.2}, clock=clock)
    _, outputs = await handoff(prefill, decode, "zmq", "t-missing", fault="drop", max_tokens=1)
    outcome = outputs[0][1].kv
    assert not outcome.complete and "timeout" in outcome.failure
    assert decode.kv_counters()["timeouts"] == 1
    # The recompute costs the profiled prefill of the whole prompt (100 tokens and the first token).
    assert clock.now == pytest.approx(profile.predict_prefill_ms([101]) / 1000)


async def test_an_abort_while_receiving_frees_the_blocks(make_engine):
    decode = await make_engine(kv=True)
    stream = decode.generate(request("waiting", kv_receive=KVReceive("never", 100)))
    pending = asyncio.ensure_future(anext(stream))
    await until(lambda: decode.stats().num_free_blocks < decode.stats().num_total_blocks)
    assert decode.stats().num_waiting == 1  # waiting for its KV, its blocks allocated
    await decode.abort("waiting")
    assert (await pending).finish_reason == "abort"
    await until(lambda: decode.stats().num_free_blocks == decode.stats().num_total_blocks)  # once the assembler let go
    assert decode.stats().num_waiting == 0


# ---- the tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_round_trips_text_and_renders_chats():
    text = "Hello, wörld! ✓\n"
    ids = TOKENIZER.encode(Prompt(text=text))
    assert TOKENIZER.decode(ids) == text
    chat = Prompt(messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi")))
    assert TOKENIZER.decode(TOKENIZER.encode(chat)) == "system: be brief\nuser: hi\nassistant:"
    assert TOKENIZER.encode(chat) == TOKENIZER.encode(chat)


def test_tokenizer_delimiters_vocabulary_and_special_tokens():
    tokenizer = TimingTokenizer(ModelConfig(think_start="<think>", think_end="</think>"))
    assert len(tokenizer.think_start_ids) > 1 and len(tokenizer.think_end_ids) > 1  # several ids, as in SmolLM2
    assert tokenizer.vocab_size >= 8192
    thinking = tokenizer.encode(Prompt(text="q"), start_thinking=True)
    assert thinking[-len(tokenizer.think_start_ids):] == list(tokenizer.think_start_ids)
    assert tokenizer.encode(Prompt(token_ids=tuple(thinking)), start_thinking=True) == thinking  # not twice
    assert tokenizer.encode(Prompt(token_ids=(256, 8191))) == [256, 8191]  # the ids `pdserve bench` sends
    with pytest.raises(InvalidRequest, match="vocabulary"):
        tokenizer.encode(Prompt(token_ids=(5, VOCAB_SIZE)))
    with pytest.raises(InvalidRequest):
        tokenizer.encode(Prompt(token_ids=(-1,)))
    with pytest.raises(ValueError):
        tokenizer.delimiter_ids("")
    words = tokenizer.decode([FIRST_WORD_ID, 4000, EOS_ID])
    assert words.startswith(" ") and len(words.split()) == 2  # EOS is special: not in the text
    assert tokenizer.decode([0xE2, 0x9C]).endswith("\ufffd")  # an incomplete character, held back by the gateway


@pytest.mark.parametrize("transport", ["zmq", "grpc"])
async def test_signed_kv_is_taken_and_kv_signed_with_another_key_is_refused_and_counted(make_engine, make_profile,
                                                                                       transport):
    profile = make_profile()
    secret = b"s" * 32
    prefill = await make_engine(profile=profile, kv={"auth": "hmac", "secret": secret})
    rogue = await make_engine(profile=profile, kv={"auth": "hmac", "secret": b"r" * 32})
    decode = await make_engine(profile=profile, kv={"auth": "hmac", "secret": secret, "timeout_s": 0.5})
    first, outputs = await handoff(prefill, decode, transport, f"t-signed-{transport}")
    assert outputs[0][1].kv.complete and decode.kv_counters()["auth_failures"] == 0
    _, forged = await handoff(rogue, decode, transport, f"t-rogue-{transport}")
    assert not forged[0][1].kv.complete and "timeout" in forged[0][1].kv.failure  # recomputed, never written
    assert decode.kv_counters()["auth_failures"] == profile.num_kv_layers


async def test_a_stalled_push_arrives_late_and_is_still_used(make_engine, make_profile):
    profile = make_profile()
    prefill = await make_engine(profile=profile, kv=True)
    decode = await make_engine(profile=profile, kv=True)
    endpoint = decode.info.kv_endpoint("zmq")
    started = time.monotonic()
    kv_push = KVPush("t-stall", endpoint, len(PROMPT), decode.info.kv_control_endpoint, fault="stall", stall_s=1.0)
    first = tokens(await run(prefill, request("t-stall-p", max_tokens=1, kv_push=kv_push)))
    assert time.monotonic() - started < 1.0  # the prefill engine was not held
    receive = request("t-stall-d", prompt=tuple(PROMPT) + tuple(first), max_tokens=6, num_original_prompt_tokens=len(PROMPT),
                      kv_receive=KVReceive("t-stall", len(PROMPT)))
    outputs = await run(decode, receive)
    assert outputs[0][1].kv.complete and time.monotonic() - started >= 1.0
