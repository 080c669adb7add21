"""Config sections of the serving path: model, engine, worker pools, KV transfer, routing."""

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from orchestrator.config.base import ConfigModel

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelConfig(ConfigModel):
    """Which model to serve and how its text is shaped."""

    name: str = Field(
        DEFAULT_MODEL,
        description="A model name from `pdserve models list` (pulled on demand) or a local Hugging Face model directory.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and KV cache dtype. `auto`: float32 on the CPU (vLLM-CPU's bfloat16 kernels turn "
        "some models' answers into gibberish on some CPUs), the checkpoint's own dtype on GPUs. The resolved dtype is in "
        "`pdserve status` and the startup banner."
    )
    max_model_len: int = Field(2048, ge=16, le=1_048_576, description="Context length limit (prompt + output tokens).")
    think_start: str = Field("<think>", min_length=1, description="Delimiter that opens the model's thinking span.")
    think_end: str = Field("</think>", min_length=1, description="Delimiter that closes the model's thinking span.")


class EngineConfig(ConfigModel):
    """The inference engine each worker hosts."""

    kind: Literal["vllm", "timing"] = Field(
        "vllm", description="`vllm` (real engine) or `timing` (no weights, step times from a profile; tests and benchmarks only)."
    )
    profile: Path | None = Field(None, description="Profile file (from `pdserve profile`) for the timing engine.")
    block_size: int = Field(32, ge=1, le=1024, description="KV cache block size in tokens (the CPU backend needs a multiple of 32).")
    kv_cache_gib: float = Field(1.0, gt=0, le=4096, description="KV cache space per worker in GiB, on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE is ignored); GPUs use gpu_memory_utilization.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use (GPU only).")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="Tensor-parallel degree of each worker's engine.")
    max_num_seqs: int = Field(64, ge=1, le=4096, description="Most sequences one engine step batches.")
    max_num_batched_tokens: int = Field(2048, ge=16, le=1_048_576, description="Most tokens one engine step processes.")
    enforce_eager: bool = Field(True, description="Disable CUDA graphs / compilation (faster start, slower steps).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV of shared prompt prefixes inside each engine.")
    seed: int = Field(0, description="Engine seed, for reproducible sampling.")
    busy_poll: bool | None = Field(
        None, description="Whether vLLM's processes spin (sched_yield) while they wait for each other's next step instead "
        "of sleeping on a notification. null (default): off on the CPU, where the spinners take the cores the engines and "
        "the control plane compute on (tokens then reach clients in bursts); vLLM's own default (on) on GPUs.")

    @model_validator(mode="after")
    def _check_timing_profile(self) -> "EngineConfig":
        if self.kind == "timing" and self.profile is None:
            raise ValueError("engine.kind=timing needs engine.profile: pass --profile FILE (written by `pdserve profile`)")
        return self


class PoolsConfig(ConfigModel):
    """Sizes and placement of the two worker pools."""

    num_prefill: int = Field(1, ge=0, le=1024, description="Prefill workers started with the cluster.")
    num_decode: int = Field(1, ge=1, le=1024, description="Decode workers started with the cluster (colocated workers when colocated).")
    colocated: bool = Field(False, description="Run ordinary non-disaggregated workers (the baseline): no prefill pool.")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="Ray CPUs reserved by each worker actor.")
    gpus_per_worker: float = Field(0.0, ge=0, le=64, description="Ray GPUs reserved by each worker actor (0 on CPU-only machines).")
    bind_cores: bool = Field(True, description="On the CPU, pin each worker's engine threads to its own core(s).")
    start_timeout_s: float = Field(600.0, gt=0, description="How long a worker may take to load its engine before it is declared failed.")
    engine_stall_timeout_s: float = Field(
        30.0, gt=0, le=86_400, description="A worker whose engine holds unfinished requests and has not stepped for this "
        "long is wedged: it is declared failed, replaced, and its requests move elsewhere. Must exceed `kv.timeout_s` and "
        "the longest single prefill step."
    )
    health_timeout_s: float = Field(
        15.0, gt=0, le=3600, description="A worker that answers no health check for this long is declared failed and replaced."
    )

    @model_validator(mode="after")
    def _check_pools(self) -> "PoolsConfig":
        if not self.colocated and self.num_prefill < 1:
            raise ValueError("a disaggregated cluster needs pools.num_prefill >= 1 (or set pools.colocated=true)")
        return self


class KVTransferConfig(ConfigModel):
    """How KV blocks travel from a prefill worker to a decode worker."""

    transport: Literal["zmq", "grpc"] = Field(
        "zmq", description="`zmq`: zero-copy ZeroMQ frames (fast). `grpc`: the same frames over one gRPC stream (one open port)."
    )
    timeout_s: float = Field(
        10.0, gt=0, le=3600, description="A transfer not complete this long after the decode side expects it is abandoned and the prompt recomputed."
    )
    host: str = Field(
        "auto", min_length=1, description="Address the workers' KV receivers listen on and advertise. `auto`: the "
        "address Ray knows the worker's node by (127.0.0.1 in the embedded cluster; each host's own address in a "
        "multi-host one)."
    )
    zmq_receiver: Literal["direct", "libzmq"] = Field(
        "direct", description="How a decode worker receives `zmq` frames. `direct`: its own ZeroMQ (ZMTP 3.1) endpoint "
        "reads each payload straight into the KV blocks allocated for it (one copy fewer). `libzmq`: libzmq's PULL socket, "
        "then a copy into the blocks."
    )
    max_stash_mib: int = Field(
        1024, ge=1, le=1 << 20, description="Host memory a decode worker holds for KV frames that arrive before their "
        "request (the prompt's KV during its prefill); beyond it the oldest are dropped and those prompts recomputed."
    )
    auth: Literal["auto", "hmac", "header", "none"] = Field(
        "auto", description="Who may write into a decode worker's KV cache (or abort its transfers): every frame carries "
        "an HMAC-SHA256 under a per-transfer key from the cluster's KV secret. `auto`: `hmac` when the KV endpoints are "
        "on a network address, `header` on loopback (one machine). `hmac`: over the header and the payload. "
        "`header`: over the header only, which binds the payload's xxh3 checksum (cheaper; stops off-path senders, not an "
        "on-path attacker). `none`: a trusted network. KV crosses the wire in clear either way."
    )
    auth_key_file: Path | None = Field(
        None, description="A file holding the cluster's KV secret (at least 16 bytes), read by the gateway. Unset: 32 "
        "random bytes made at startup. Either way it reaches the workers over Ray, never in logs or the status."
    )


class RouterConfig(ConfigModel):
    """How the router picks a (prefill, decode) pair."""

    prefix_weight: float = Field(
        1.0, ge=0, description="How strongly a decode worker's cached prefix outweighs its load (0: load only)."
    )
    skip_prefill_min_fraction: float = Field(
        0.9, ge=0, le=1.01, description="Skip the prefill tier when the chosen decode worker holds at least this fraction of the prompt (>1 disables)."
    )
    prefix_cache_blocks: int = Field(
        65_536, ge=0, description="Prompt-block hashes remembered per decode worker for prefix-aware routing."
    )
    conditional_prefill: bool = Field(
        False, description="Conditional disaggregation: prefill a prompt on the chosen decode worker itself when the measured "
        "costs say its first token comes sooner there (the prefill pool is backed up, or the prompt is short and the "
        "decode worker idle); false: always the prefill pool."
    )
    max_local_prefill_stall_ms: float = Field(
        100.0, ge=0, description="The longest a local prefill may hold up the streams a decode worker is running (each "
        "waits for it once); a decode worker running none may take any prompt whose first token comes sooner there."
    )
