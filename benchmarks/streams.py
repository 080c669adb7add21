"""Smooth streams: a few concurrent chat streams, and every gap between the chunks a client receives.

    .venv/bin/python benchmarks/streams.py --target http://127.0.0.1:8000 [--streams 4] [--rounds 8]

The workload of issue 21: `--streams` (4) clients started `--stagger-ms` (150) apart, each sending
`--rounds` (8) chat requests one after the other (closed loop) through the OpenAI streaming API
(`/v1/chat/completions`), ~230-token prompts (a user message of `--prompt-words` words, its own per
request so no prefix cache answers it), `--output-tokens` (64) with `ignore_eos`, greedy. Any
OpenAI-compatible server can be the target: pdserve (either mode) and vLLM's own server alike.

What it measures, client side, as the chunks arrive (`time.perf_counter` on the client's event loop):
- TTFT: from sending to the first content chunk;
- gaps: between consecutive content chunks of one stream, as they arrive (not divided by the tokens a
  chunk carries): a stream that delivers one token per decode step has gaps at the step time; one that
  delivers in bursts has gaps near 0 followed by long ones. ITL p50/p99 here are these gaps;
- the longest gap: the longest a client waited between two chunks of one stream;
(each request is a `pdserve.bench` `Outcome`, one arrival per chunk; percentiles are `pdserve bench`'s);
- tokens per chunk: output tokens (the server's usage) / content chunks.
`serving.py` runs it against every system it compares (workload `streams-4x230x64`); on its own it
prints the row of one target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from pdserve.bench.outcome import Outcome
from pdserve.bench.stats import distribution

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the river city market winter light garden story engine number paper window morning signal "
         "distance mountain harbor question answer letter silver bridge forest quiet music orange table "
         "station cloud summer ocean valley tower machine history village planet canvas thunder lantern").split()
REQUEST_TIMEOUT_S = 300.0


def prompt_text(index: int, num_words: int, seed: int) -> str:
    """A user message of `num_words` words, its own for every `index`."""
    rng = np.random.default_rng([seed, index])
    return f"Request {index}. Continue this list of words with a story: " + " ".join(rng.choice(WORDS, num_words))


async def one_request(session, url: str, model: str, text: str, output_tokens: int, index: int) -> Outcome:
    """Send one streaming chat request: every content chunk's arrival (one entry each, however many tokens it
    carried), the server's usage, or the failure it ended with."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": output_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    outcome = Outcome(index, 0, 0.0, prompt_tokens=0, expected_output_tokens=output_tokens, start_s=time.perf_counter())
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            if response.status != 200:
                outcome.fail(f"http_{response.status}", (await response.text())[:200], time.perf_counter())
                return outcome
            async for raw in response.content:
                now = time.perf_counter()
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("error"):
                    outcome.fail("stream_error", str(chunk["error"])[:200], now)
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    outcome.token_times_s.append(now)
                    outcome.token_counts.append(1)
                if chunk.get("usage"):
                    outcome.usage = {"output_tokens": int(chunk["usage"].get("completion_tokens") or 0)}
                    outcome.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
    except Exception as exc:  # noqa: BLE001 - a benchmark counts every failure by its message
        outcome.fail(type(exc).__name__, str(exc), time.perf_counter())
    outcome.end_s = outcome.end_s or time.perf_counter()
    return outcome


async def run(url: str, *, streams: int = 4, stagger_ms: float = 150.0, rounds: int = 8, prompt_words: int = 170,
              output_tokens: int = 64, seed: int = 7, model: str | None = None) -> list[Outcome]:
    """The workload (see the module docstring) against the OpenAI API at `url`; every request's stream."""
    import aiohttp

    url = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        if model is None:
            async with session.get(f"{url}/v1/models") as response:
                model = (await response.json())["data"][0]["id"]

        async def client(number: int) -> list[Outcome]:
            await asyncio.sleep(number * stagger_ms / 1e3)
            done = []
            for round_ in range(rounds):
                index = number * rounds + round_
                done.append(await one_request(session, url, model, prompt_text(index, prompt_words, seed),
                                              output_tokens, index))
            return done

        results = await asyncio.gather(*(client(n) for n in range(streams)))
    return [outcome for done in results for outcome in done]


def summarize(outcomes: list[Outcome]) -> dict:
    """TTFT p50/p90, gap (ITL, `Outcome.gaps_ms`) p50/p99, the longest gap, tokens per chunk, failures."""
    ok = [o for o in outcomes if o.ok and o.token_times_s]
    ttft = distribution(o.ttft_ms for o in ok)
    gaps = distribution(gap for o in ok for gap in o.gaps_ms)
    chunks = sum(len(o.token_times_s) for o in ok)
    return {"requests": len(outcomes), "failed": len(outcomes) - len(ok),
            "errors": sorted({f"{o.error_reason}: {o.error_message}" for o in outcomes if not o.ok})[:3],
            "prompt_tokens_mean": round(float(np.mean([o.prompt_tokens for o in ok])), 1) if ok else None,
            "ttft_ms_p50": ttft["p50"], "ttft_ms_p90": ttft["p90"],
            "itl_ms_p50": gaps["p50"], "itl_ms_p99": gaps["p99"], "longest_gap_ms": gaps["max"],
            "tokens_per_chunk": round(sum(o.output_tokens for o in ok) / chunks, 3) if chunks else None}


def report(outcomes: list[Outcome], summary: dict) -> str:
    """The JSON file of a run: the summary and every request's chunk times."""
    return json.dumps({"summary": summary, "streams": [
        {"sent_s": o.start_s, "chunk_times_s": o.token_times_s, "output_tokens": o.output_tokens,
         "error": None if o.ok else f"{o.error_reason}: {o.error_message}"} for o in outcomes]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="base URL of an OpenAI-compatible server (http://HOST:PORT)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--stagger-ms", type=float, default=150.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=170, help="words of each user message (~230 tokens)")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, help="write every stream's chunk times and the summary here (JSON)")
    args = parser.parse_args(argv)
    target = args.target if "://" in args.target else f"http://{args.target}"
    outcomes = asyncio.run(run(target, streams=args.streams, stagger_ms=args.stagger_ms, rounds=args.rounds,
                               prompt_words=args.prompt_words, output_tokens=args.output_tokens))
    summary = summarize(outcomes)
    if args.out:
        args.out.write_text(report(outcomes, summary))
    print(json.dumps(summary))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
