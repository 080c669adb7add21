"""Readers of the public request traces: Azure LLM inference 2023 (CSV) and Mooncake (JSONL).

Each reader is a pure function from a file path to a list of `TraceRequest`, sorted by arrival, with
arrival times in seconds from the trace's first request. Stdlib only (plus `orchestrator.errors`, itself stdlib only): the simulator and the benchmark
client (`pdserve bench`) both import this module, and the client must not pull numpy or Ray.

Formats:
- Azure (`AzureLLMInferenceTrace_{conv,code}.csv`): `TIMESTAMP,ContextTokens,GeneratedTokens`, the
  timestamp as `YYYY-MM-DD HH:MM:SS.fffffff` (7 fractional digits). No prefix information.
- Mooncake (`FAST25-release/traces/*.jsonl`): one JSON object per line with `timestamp` (ms),
  `input_length`, `output_length` and `hash_ids` (one id per 512-token prompt block; equal ids at the
  same position mean a shared prefix).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.errors import ConfigError  # stdlib-only module

MOONCAKE_BLOCK_TOKENS = 512


class TraceError(ConfigError, ValueError):
    """A trace file is missing, unreadable or malformed (the caller's input: fix the file or the path)."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: when it arrives and how big it is.

    `prefix_hash_ids` identify the prompt's blocks (`prefix_block_tokens` tokens each) when the trace
    carries them (Mooncake); empty otherwise.
    """

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hash_ids: tuple[int, ...] = ()
    prefix_block_tokens: int = MOONCAKE_BLOCK_TOKENS


def read_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace, choosing the reader by suffix (`.csv`: Azure, `.jsonl`: Mooncake)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_azure_csv(path, limit)
    if suffix in (".jsonl", ".json"):
        return read_mooncake_jsonl(path, limit)
    raise TraceError(f"unknown trace format {suffix!r} for {path}: expected an Azure .csv or a Mooncake .jsonl")


def read_azure_csv(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Azure LLM inference trace (2023): the first `limit` rows (all when None)."""
    rows = []
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
        if missing:
            raise TraceError(f"{path} is not an Azure trace: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(rows) >= limit:
                break
            rows.append((_parse_timestamp(row["TIMESTAMP"], path, line),
                         _count(row["ContextTokens"], path, line), _count(row["GeneratedTokens"], path, line)))
    if not rows:
        return []
    start = min(t for t, _, _ in rows)
    requests = [TraceRequest((t - start), prompt, output) for t, prompt, output in rows]
    return sorted(requests, key=lambda r: r.arrival_s)


def read_mooncake_jsonl(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Mooncake trace (JSON lines, timestamps in ms): the first `limit` requests (all when None)."""
    requests = []
    with _open(path) as handle:
        for line, text in enumerate(handle, start=1):
            if limit is not None and len(requests) >= limit:
                break
            if not text.strip():
                continue
            requests.append(_mooncake_request(text, path, line))
    if not requests:
        return []
    start = min(r.arrival_s for r in requests)
    shifted = [TraceRequest(r.arrival_s - start, r.prompt_tokens, r.output_tokens, r.prefix_hash_ids)
               for r in requests]
    return sorted(shifted, key=lambda r: r.arrival_s)


def _mooncake_request(text: str, path: str | Path, line: int) -> TraceRequest:
    try:
        item = json.loads(text)
        hash_ids = tuple(int(h) for h in item.get("hash_ids", ()))
        return TraceRequest(float(item["timestamp"]) / 1000.0, _count(item["input_length"], path, line),
                            _count(item["output_length"], path, line), hash_ids)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(f"{path}:{line}: not a Mooncake trace record ({exc})") from None


def _open(path: str | Path):
    try:
        return open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"trace file not found: {path}") from None
    except OSError as exc:
        raise TraceError(f"cannot read trace file {path}: {exc.strerror}") from None


def _parse_timestamp(text: str, path: str | Path, line: int) -> float:
    """Seconds since the epoch of an Azure timestamp; Python's parser takes at most 6 fractional digits."""
    text = text.strip()
    head, _, fraction = text.partition(".")
    try:
        whole = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        return whole + (float("0." + fraction) if fraction else 0.0)
    except ValueError:
        raise TraceError(f"{path}:{line}: bad timestamp {text!r} (expected YYYY-MM-DD HH:MM:SS.fffffff)") from None


def _count(value: object, path: str | Path, line: int) -> int:
    try:
        count = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{line}: token count {value!r} is not an integer") from None
    if count < 0:
        raise TraceError(f"{path}:{line}: negative token count {count}")
    return count


def scale_rate(requests: list[TraceRequest], factor: float) -> list[TraceRequest]:
    """The same requests arriving `factor` times as fast (factor 2: twice the request rate)."""
    if factor <= 0:
        raise TraceError(f"rate factor must be positive, got {factor}")
    return [TraceRequest(r.arrival_s / factor, r.prompt_tokens, r.output_tokens, r.prefix_hash_ids,
                         r.prefix_block_tokens) for r in requests]


def window(requests: list[TraceRequest], start_s: float, duration_s: float) -> list[TraceRequest]:
    """The requests arriving in [start_s, start_s + duration_s), arrivals shifted to start at 0."""
    return [TraceRequest(r.arrival_s - start_s, r.prompt_tokens, r.output_tokens, r.prefix_hash_ids,
                         r.prefix_block_tokens)
            for r in requests if start_s <= r.arrival_s < start_s + duration_s]
