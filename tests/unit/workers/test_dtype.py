"""`model.dtype: auto` resolves per platform: float32 on the CPU, the checkpoint's own dtype on GPUs."""

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
