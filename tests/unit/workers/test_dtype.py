"""`model.dtype: auto` resolves per platform: float32 on the CPU, the checkpoint's own dtype on GPUs."""

import os

from orchestrator.config import ModelConfig
from workers.engine.vllm_engine import resolve_dtype


def test_the_default_is_auto():
    assert ModelConfig().dtype == "auto"


def test_auto_is_float32_on_the_cpu_and_the_checkpoints_dtype_on_gpus():
    assert resolve_dtype("auto", on_gpu=False) == "float32"
    assert resolve_dtype("auto", on_gpu=True) == "auto"  # vLLM reads the checkpoint's torch_dtype


def test_an_explicit_dtype_is_kept_on_either_platform():
    for dtype in ("bfloat16", "float16", "float32"):
        assert resolve_dtype(dtype, on_gpu=False) == dtype
        assert resolve_dtype(dtype, on_gpu=True) == dtype


def test_the_engine_is_given_the_resolved_dtype_and_the_configured_kv_cache_whatever_vllms_variable_says(monkeypatch):
    from orchestrator.config import EngineConfig
    from workers.engine.vllm_engine import VllmEngine

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # vLLM would let it override kv_cache_memory_bytes
    engine = VllmEngine("/models/none", ModelConfig(), EngineConfig(kv_cache_gib=0.5), worker_id="w")
    args = engine._engine_args(None, None)
    assert args["dtype"] == "float32" and args["kv_cache_memory_bytes"] == 1 << 29
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ  # gone before the EngineCore is spawned
