"""`pdserve profile --target`: the session's real cluster measured through its gRPC API, as one engine.

The file it writes must load, name the cluster and its model, carry the engines' KV shape from the
status document, fit step times that grow with the work, and carry the tiers' interference; the cluster
must be idle and whole after.
"""

from __future__ import annotations

import pytest

from clusters import wait_all_blocks_free, wait_idle
from orchestrator.profiles import EngineProfile
from pdserve import Client
from pdserve.cli import main

SMOLLM2_KV_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 4  # layers x KV heads x head dim x (K, V) x float32 (the default)


@pytest.mark.ray
@pytest.mark.vllm
def test_profile_through_a_running_cluster(serving, tmp_path, capsys):
    out = tmp_path / "served.yaml"
    code = main(["profile", "--target", serving.grpc_target, "--out", str(out), "--no-progress",
                 "--prompt-lengths", "16,64,256", "--prefill-batches", "4x32", "--decode-batches", "1,3",
                 "--decode-contexts", "32,128", "--decode-steps", "8", "--decode-warmup-steps", "4", "--repeats", "1",
                 "--interference-lengths", "64", "--interference-rounds", "2", "--description", "test"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    profile = EngineProfile.load(out)
    assert profile.model == "smollm2-135m-instruct"
    assert profile.hardware.kind == "cluster" and profile.hardware.count == 2
    assert serving.grpc_target in profile.hardware.description and "1 prefill, 1 decode" in profile.hardware.description
    with Client(serving.grpc_target) as client:
        status_worker = next(w for w in client.status()["pools"]["decode"]["workers"] if w["state"] == "ready")
    assert profile.kv_bytes_per_token == SMOLLM2_KV_BYTES_PER_TOKEN == status_worker["kv_bytes_per_token"]
    assert profile.block_size == status_worker["block_size"]
    assert profile.kv_capacity_tokens == status_worker["num_total_blocks"] * status_worker["block_size"]
    assert len(profile.prefill_points) >= 3 and len(profile.decode_points) >= 3
    assert profile.predict_prefill_ms([256]) > profile.predict_prefill_ms([16]) > 0
    assert profile.predict_decode_step_ms(3, 3 * 48) >= profile.predict_decode_step_ms(1, 48) > 0
    # the tiers' interference, beside a decode stream (a point is dropped when too few steps fell inside)
    assert [p.prompt_tokens for p in profile.interference] in ([64], [])
    assert all(0.5 < p.decode_slowdown < 3 and 0.5 < p.prefill_slowdown < 3 for p in profile.interference)
    wait_idle(serving)
    counts = wait_all_blocks_free(serving)
    assert all(free == total for free, total in counts.values()), counts


def test_profile_target_refuses_engine_flags_and_a_dead_target(tmp_path, capsys):
    assert main(["profile", "--target", "127.0.0.1:1", "--cpu-cores", "0", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "--cpu-cores" in capsys.readouterr().err
    assert main(["profile", "--target", "127.0.0.1:1", "--out", str(tmp_path / "x.yaml"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cannot read the cluster at 127.0.0.1:1" in err and "Traceback" not in err
