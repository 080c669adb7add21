"""Trace readers on small slices of the shipped traces and on hand-written files."""

from pathlib import Path

import pytest

from simulations.traces import (
    TraceError,
    read_azure_csv,
    read_mooncake_jsonl,
    read_trace,
    scale_rate,
    window,
)

DATA = Path(__file__).resolve().parents[3] / "simulations" / "data" / "traces"


def test_azure_slice_is_sorted_and_starts_at_zero():
    requests = read_azure_csv(DATA / "azure2023_conv.csv", limit=200)
    assert len(requests) == 200
    assert requests[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(requests, requests[1:]))
    assert requests[0].prompt_tokens == 374 and requests[0].output_tokens == 44
    assert abs(requests[1].arrival_s - 4.314579) < 1e-5


def test_mooncake_reader_keeps_hash_ids(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 1500, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 2]}\n'
                    '{"timestamp": 500, "input_length": 600, "output_length": 3, "hash_ids": [0, 4]}\n\n')
    requests = read_mooncake_jsonl(path)
    assert [r.arrival_s for r in requests] == [0.0, 1.0]
    assert requests[0].prefix_hash_ids == (0, 4) and requests[1].prompt_tokens == 1100
    assert requests[1].prefix_block_tokens == 512


def test_bad_inputs_raise_trace_errors(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        read_trace(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,3\n")
    with pytest.raises(TraceError, match="missing columns"):
        read_azure_csv(bad)
    worse = tmp_path / "bad.jsonl"
    worse.write_text('{"timestamp": 0, "input_length": -3, "output_length": 1}\n')
    with pytest.raises(TraceError, match="negative"):
        read_mooncake_jsonl(worse)
    with pytest.raises(TraceError, match="unknown trace format"):
        read_trace(tmp_path / "x.parquet")


def test_rate_scaling_and_window():
    requests = read_azure_csv(DATA / "azure2023_code.csv", limit=100)
    faster = scale_rate(requests, 2.0)
    assert faster[-1].arrival_s == pytest.approx(requests[-1].arrival_s / 2)
    cut = window(requests, 10.0, 20.0)
    assert all(0.0 <= r.arrival_s < 20.0 for r in cut)
    assert len(cut) == sum(1 for r in requests if 10.0 <= r.arrival_s < 30.0)
