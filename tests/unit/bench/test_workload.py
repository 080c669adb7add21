from pathlib import Path

import pytest

from pdserve.bench import workload
from pdserve.bench.prompts import PromptBuilder
from simulations.traces import TraceError, TraceRequest

TRACES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "traces"  # ../shared/data beside the repo


def test_synthetic_requests_have_the_asked_lengths_and_sorted_arrivals():
    requests = workload.synthetic(50, 10.0, 96, 24, seed=0)
    assert [r.index for r in requests] == list(range(50))
    assert all((r.prompt_tokens, r.output_tokens) == (96, 24) for r in requests)
    assert all(a.arrival_s < b.arrival_s for a, b in zip(requests, requests[1:]))


def test_limits_clip_to_caps_and_context():
    limits = workload.Limits(max_prompt_tokens=1500, max_output_tokens=600, max_model_len=2048)
    assert limits.fit(100, 10) == (100, 10)
    assert limits.fit(9000, 10) == (1500, 10)
    assert limits.fit(1800, 1000) == (1448, 600)  # output capped first, prompt fills the rest of the context
    assert limits.fit(5, 0) == (5, 1)
    assert workload.Limits(max_model_len=16).fit(100, 100) == (1, 15)


def test_trace_rescaled_clipped_and_block_scaled():
    trace = [TraceRequest(0.0, 1024, 10, (1, 2)), TraceRequest(2.0, 4096, 10, (1, 3, 4, 5, 6, 7, 8, 9)),
             TraceRequest(4.0, 100, 0, (9,))]
    requests, num_clipped = workload.from_trace(trace, workload.Limits(max_prompt_tokens=128), block_tokens=32,
                                                rate_per_s=2.0)
    assert [r.prompt_tokens for r in requests] == [64, 128, 6]  # x 32/512, then clipped at 128
    assert [r.output_tokens for r in requests] == [10, 10, 1]
    assert num_clipped == 1
    assert [r.arrival_s for r in requests] == pytest.approx([0.0, 0.5, 1.0])
    builder = PromptBuilder(block_tokens=32)
    first, second = (builder.build(r.index, r.prompt_tokens, r.prefix_hash_ids) for r in requests[:2])
    assert first[:32] == second[:32] and first[32:64] != second[32:64]


@pytest.mark.skipif(not TRACES.is_dir(), reason="shared traces not present")
def test_real_traces_load_through_the_simulator_readers():
    azure = workload.read_trace(str(TRACES / "azure2023_conv.csv"), None, 20)
    mooncake = workload.read_trace(str(TRACES / "mooncake_conversation_trace.jsonl"), "mooncake", 20)
    assert len(azure) == len(mooncake) == 20
    assert mooncake[0].prefix_hash_ids and not azure[0].prefix_hash_ids
    requests, _ = workload.from_trace(mooncake, workload.Limits(max_model_len=2048), block_tokens=512)
    assert all(r.prompt_tokens + r.output_tokens <= 2048 for r in requests)


def test_unknown_format_and_missing_file_are_input_errors(tmp_path):
    with pytest.raises(TraceError):
        workload.read_trace(str(tmp_path / "missing.csv"), None, 10)
    with pytest.raises(TraceError):
        workload.read_trace(str(tmp_path / "x.parquet"), None, 10)
    with pytest.raises(TraceError):
        workload.read_trace(str(tmp_path / "x.csv"), "sharegpt", 10)
