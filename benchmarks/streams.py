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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the river city market winter light garden story engine number paper window morning signal "
         "distance mountain harbor question answer letter silver bridge forest quiet music orange table "
         "station cloud summer ocean valley tower machine history village planet canvas thunder lantern").split()
REQUEST_TIMEOUT_S = 300.0


@dataclass
class Stream:
    """One request's stream as the client saw it."""

    sent_s: float
    chunk_times_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        return (self.chunk_times_s[0] - self.sent_s) * 1e3 if self.chunk_times_s else None

    @property
    def gaps_ms(self) -> list[float]:
        return list(np.diff(self.chunk_times_s) * 1e3)


def prompt_text(index: int, num_words: int, seed: int) -> str:
    """A user message of `num_words` words, its own for every `index`."""
    rng = np.random.default_rng([seed, index])
    return f"Request {index}. Continue this list of words with a story: " + " ".join(rng.choice(WORDS, num_words))


async def one_request(session, url: str, model: str, text: str, output_tokens: int) -> Stream:
    """Send one streaming chat request; its chunk times, or the error it ended with."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": output_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    stream = Stream(sent_s=time.perf_counter())
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            if response.status != 200:
                stream.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return stream
            async for raw in response.content:
                now = time.perf_counter()
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("error"):
                    stream.error = str(chunk["error"])[:200]
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    stream.chunk_times_s.append(now)
                if chunk.get("usage"):
                    stream.output_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                    stream.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
    except Exception as exc:  # noqa: BLE001 - a benchmark counts every failure by its message
        stream.error = f"{type(exc).__name__}: {exc}"
    return stream


async def run(url: str, *, streams: int = 4, stagger_ms: float = 150.0, rounds: int = 8, prompt_words: int = 170,
              output_tokens: int = 64, seed: int = 7, model: str | None = None) -> list[Stream]:
    """The workload (see the module docstring) against the OpenAI API at `url`; every request's stream."""
    import aiohttp

    url = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        if model is None:
            async with session.get(f"{url}/v1/models") as response:
                model = (await response.json())["data"][0]["id"]

        async def client(number: int) -> list[Stream]:
            await asyncio.sleep(number * stagger_ms / 1e3)
            done = []
            for round_ in range(rounds):
                text = prompt_text(number * rounds + round_, prompt_words, seed)
                done.append(await one_request(session, url, model, text, output_tokens))
            return done

        results = await asyncio.gather(*(client(n) for n in range(streams)))
    return [stream for done in results for stream in done]


def summarize(streams: list[Stream]) -> dict:
    """TTFT p50/p90, gap (ITL) p50/p99, the longest gap, tokens per chunk, failures."""
    ok = [s for s in streams if s.error is None and s.chunk_times_s]
    ttft = [s.ttft_ms for s in ok]
    gaps = [g for s in ok for g in s.gaps_ms]
    chunks = sum(len(s.chunk_times_s) for s in ok)

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    return {"requests": len(streams), "failed": len(streams) - len(ok),
            "errors": sorted({s.error for s in streams if s.error})[:3],
            "prompt_tokens_mean": round(float(np.mean([s.prompt_tokens for s in ok])), 1) if ok else None,
            "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p90": pct(ttft, 90),
            "itl_ms_p50": pct(gaps, 50), "itl_ms_p99": pct(gaps, 99),
            "longest_gap_ms": round(float(max(gaps)), 1) if gaps else None,
            "tokens_per_chunk": round(sum(s.output_tokens for s in ok) / chunks, 3) if chunks else None}


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
    streams = asyncio.run(run(target, streams=args.streams, stagger_ms=args.stagger_ms, rounds=args.rounds,
                              prompt_words=args.prompt_words, output_tokens=args.output_tokens))
    summary = summarize(streams)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "streams": [
            {"sent_s": s.sent_s, "chunk_times_s": s.chunk_times_s, "output_tokens": s.output_tokens, "error": s.error}
            for s in streams]}))
    print(json.dumps(summary))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
