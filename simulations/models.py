"""The model shape catalogue: what the step-time model needs to know about a network.

Shapes come from the models' published configs (Hugging Face `config.json`). Parameter counts are
the published totals; MoE models also give their active parameters per token and the share of
parameters in routed experts (which a decode step reads only for the experts its tokens touch).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError

BYTES_PER_PARAM = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "mxfp4": 4.25 / 8, "fp32": 4.0}


@dataclass(frozen=True)
class ModelShape:
    """A transformer's shape. `kv_elements_per_layer` overrides 2*num_kv_heads*head_dim (MLA caches a latent)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    total_params: float
    active_params: float
    weight_dtype: str = "bf16"
    compute_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    num_experts: int = 0
    experts_per_token: int = 0
    expert_params: float = 0.0  # parameters in all routed experts together
    kv_elements_per_layer: int | None = None
    sliding_window: int | None = None
    num_sliding_layers: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def weight_bytes(self) -> float:
        return self.total_params * BYTES_PER_PARAM[self.weight_dtype]

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes one token occupies across all layers (full-attention layers)."""
        per_layer = self.kv_elements_per_layer or 2 * self.num_kv_heads * self.head_dim
        return per_layer * self.num_layers * BYTES_PER_PARAM[self.kv_dtype]

    @property
    def dense_params(self) -> float:
        """Parameters every token uses (all of them for a dense model; attention, shared experts, embeddings for MoE)."""
        if not self.is_moe:
            return self.total_params
        return self.active_params - self.expert_params * self.experts_per_token / self.num_experts

    def touched_expert_fraction(self, num_tokens: int) -> float:
        """Expected share of routed experts that `num_tokens` tokens touch in a layer (uniform routing)."""
        if not self.is_moe:
            return 0.0
        miss = (1.0 - self.experts_per_token / self.num_experts) ** max(num_tokens, 0)
        return 1.0 - miss

    def weight_bytes_read(self, num_tokens: int) -> float:
        """Bytes of weights a step over `num_tokens` tokens reads from HBM."""
        per_param = BYTES_PER_PARAM[self.weight_dtype]
        if not self.is_moe:
            return self.total_params * per_param
        touched = self.expert_params * self.touched_expert_fraction(num_tokens)
        return (self.dense_params + touched) * per_param


CATALOGUE: dict[str, ModelShape] = {m.name: m for m in (
    ModelShape("smollm2-135m", 30, 576, 9, 3, 64, 134.5e6, 134.5e6),
    ModelShape("llama-3.1-8b", 32, 4096, 32, 8, 128, 8.03e9, 8.03e9),
    ModelShape("llama-3.1-70b", 80, 8192, 64, 8, 128, 70.6e9, 70.6e9),
    ModelShape("qwen3-32b", 64, 5120, 64, 8, 128, 32.8e9, 32.8e9),
    # DeepSeek-V3: MLA caches a 512-dim latent + 64-dim RoPE key per layer; FP8 weights; 256 routed experts, top 8.
    ModelShape("deepseek-v3", 61, 7168, 128, 128, 192, 671e9, 37e9, weight_dtype="fp8", compute_dtype="fp8",
               num_experts=256, experts_per_token=8, expert_params=654e9, kv_elements_per_layer=576),
    # gpt-oss-120b: MXFP4 experts (128, top 4), bf16 attention, every other layer a 128-token sliding window.
    ModelShape("gpt-oss-120b", 36, 2880, 64, 8, 64, 116.8e9, 5.13e9, weight_dtype="mxfp4",
               num_experts=128, experts_per_token=4, expert_params=114.7e9, sliding_window=128, num_sliding_layers=18),
    # The models of the Splitwise measurements (validation).
    ModelShape("llama2-70b", 80, 8192, 64, 8, 128, 69.0e9, 69.0e9),
    ModelShape("bloom-176b", 70, 14336, 112, 112, 128, 176.2e9, 176.2e9),
)}
ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "llama-3.1-8b-instruct": "llama-3.1-8b",
           "llama-3.1-70b-instruct": "llama-3.1-70b", "deepseek-v3-class": "deepseek-v3"}


def get_model(name: str) -> ModelShape:
    """The named shape; ConfigError listing the valid names when unknown."""
    key = name.lower()
    model = CATALOGUE.get(ALIASES.get(key, key))
    if model is None:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(sorted(CATALOGUE))}")
    return model
