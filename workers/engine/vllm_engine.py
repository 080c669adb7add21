"""The vLLM engine adapter: vLLM V1's `AsyncLLM`, with pdserve's KV connector and thinking processor.

Life of the engine in a worker:
1. `start()` builds `AsyncEngineArgs` from the config and creates the `AsyncLLM` in a thread (vLLM
   starts its EngineCore process and loads the weights; ~40 s for SmolLM2 on the CPU). A disaggregated
   worker loads `workers.kv.connector.PdserveConnector` (role `kv_both`: the same engine can push and
   receive; what a request does is in its own transfer parameters), which binds its receivers on free
   ports and writes them to a file this adapter reads back.
2. `generate(request)` turns an `EngineRequest` into `SamplingParams` (token ids out, no detokenizing,
   deltas per step) and yields one `EngineOutput` per step. The first output of a receiving request
   carries the transfer's outcome, read from the connector's stats service.
3. A background task refreshes the exact free-block count (from the connector's scheduler side) and
   the KV counters (from its worker side) every `STATS_REFRESH_S`: vLLM's own stats only move when
   the engine steps, so an aborted request's freed blocks would not show in them.
4. `health()` (polled through the worker's stats): dead once vLLM saw its EngineCore fail, once one of
   the engine's processes (EngineCore, its VLLM::Worker) exited, or when requests are unfinished and no
   step came for the stall timeout (wedged). A step is seen by the stat logger vLLM calls after each one.
5. `shutdown()` stops the EngineCore process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from orchestrator.api.pb import kv_pb2, kv_pb2_grpc
from orchestrator.config import EngineConfig, ModelConfig
from workers.engine.base import (
    BaseEngine,
    EngineError,
    EngineHealth,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    KVOutcome,
)
from workers.engine.vllm_plugin import BUSY_POLL_ENV

log = logging.getLogger(__name__)

STATS_REFRESH_S = 0.5
TOKEN_GAPS_KEPT = 512  # the engine's inter-token gaps its `itl_ms` is the median of
ENDPOINT_WAIT_S = 30.0
SHUTDOWN_TIMEOUT_S = 2.0
CONNECTOR = "PdserveConnector"
CONNECTOR_MODULE = "workers.kv.connector"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def busy_poll(configured: bool | None, *, on_gpu: bool) -> bool:
    """`engine.busy_poll`, with null resolved: vLLM's spinning only where the engine has cores to spare (GPUs)."""
    return on_gpu if configured is None else configured


class VllmEngine(BaseEngine):
    """One vLLM engine. `kv` set: disaggregated (connector loaded); None: an ordinary engine."""

    def __init__(self, model_dir: str, model: ModelConfig, engine: EngineConfig, *, worker_id: str,
                 kv: dict[str, Any] | None = None) -> None:
        """`kv`: the connector's engine-level settings (`host`, `timeout_s`; `transport` is the one the
        orchestrator uses, kept for the record: the engine receives on every transport)."""
        self._model_dir = model_dir
        self._model = model
        self._config = engine
        self._worker_id = worker_id
        self._kv = {k: v for k, v in kv.items() if k != "secret"} if kv is not None else None
        self._kv_secret: bytes | None = kv.get("secret") if kv is not None else None  # never in vLLM's config
        self._llm: Any = None
        self._info: EngineInfo | None = None
        self._latest: Any = None  # vLLM SchedulerStats of the last step
        self._exact_blocks: tuple[int, int] | None = None
        self._counters: dict[str, float] = {}
        self._control: Any = None  # kv_pb2_grpc.KVTransferStub of the receiver (worker side of the connector)
        self._block_stats: Any = None  # ... of the scheduler side: the block pool's counts
        self._channels: list[grpc.aio.Channel] = []
        self._refresh_task: asyncio.Task | None = None
        self._processes: list[tuple[Any, str]] = []  # (psutil.Process, name) of the engine's own processes
        self._num_unfinished = 0  # requests whose generate() has not ended
        self._last_progress_s = time.monotonic()  # the last engine step, or the last request's arrival
        self._unhealthy = False  # health() found it dead or wedged once: shut down by force
        self._token_gaps_s: deque[float] = deque(maxlen=TOKEN_GAPS_KEPT)  # for `EngineStats.itl_ms`

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        endpoint_file = stats_file = key_file = None
        if self._kv is not None:
            directory = Path(tempfile.mkdtemp(prefix="pdserve-kv-"))  # private (0700)
            endpoint_file, stats_file = directory / "endpoints.json", directory / "stats.json"
            key_file = _write_key(directory / "kv.key", self._kv_secret)
        args = AsyncEngineArgs(**self._engine_args(endpoint_file, stats_file, key_file))
        # Read by pdserve's vLLM plugin in the EngineCore and worker processes this start spawns (they inherit it).
        os.environ[BUSY_POLL_ENV] = "1" if busy_poll(self._config.busy_poll, on_gpu=_on_gpu()) else "0"
        try:
            try:
                self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=[self._stats_sink])
            except Exception as exc:  # vLLM raises many kinds; the worker needs one, with the cause
                raise EngineError(f"vLLM could not start {self._model_dir}: {exc}") from exc
            self._processes = _engine_processes()
            endpoints = await self._read_endpoints(endpoint_file) if endpoint_file else {}
        finally:  # the connector read the key before it reported its endpoints
            if key_file is not None:
                with contextlib.suppress(OSError):
                    key_file.unlink()
                    key_file.parent.rmdir()
        if endpoints:
            self._control = self._stub(endpoints["grpc"])
            self._block_stats = self._stub((await self._read_endpoints(stats_file))["grpc"])
            self._refresh_task = asyncio.create_task(self._refresh_blocks(), name="pdserve-engine-stats")
        cache = self._llm.vllm_config.cache_config
        self._info = EngineInfo(
            max_model_len=self._llm.vllm_config.model_config.max_model_len,
            block_size=cache.block_size,
            num_total_blocks=max(int(cache.num_gpu_blocks or 0) - 1, 0),
            kv_bytes_per_token=self._kv_bytes_per_token(),
            kv_endpoints=endpoints,
            kv_control_endpoint=endpoints.get("grpc"),
            dtype=str(self._llm.vllm_config.model_config.dtype).removeprefix("torch."),
        )
        return self._info

    def _stub(self, endpoint: str) -> kv_pb2_grpc.KVTransferStub:
        channel = grpc.aio.insecure_channel(endpoint.removeprefix("grpc://"))
        self._channels.append(channel)
        return kv_pb2_grpc.KVTransferStub(channel)

    def _engine_args(self, endpoint_file: Path | None, stats_file: Path | None,
                     key_file: Path | None = None) -> dict[str, Any]:
        from vllm.config import KVTransferConfig

        from workers.engine.thinking import THINKING_LOGITS_PROCESSOR

        config = self._config
        args: dict[str, Any] = dict(
            model=self._model_dir, dtype=resolve_dtype(self._model.dtype, on_gpu=_on_gpu()), max_model_len=self._model.max_model_len,
            block_size=config.block_size, enforce_eager=config.enforce_eager,
            enable_prefix_caching=config.enable_prefix_caching, seed=config.seed, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=max(config.max_num_batched_tokens, self._model.max_model_len),
            tensor_parallel_size=config.tensor_parallel_size, logits_processors=[THINKING_LOGITS_PROCESSOR],
            disable_log_stats=False,
        )
        if _on_gpu():
            args["gpu_memory_utilization"] = config.gpu_memory_utilization
        else:
            args["kv_cache_memory_bytes"] = int(config.kv_cache_gib * (1 << 30))
            legacy = os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # vLLM would let it override the line above
            if legacy:
                log.warning("ignoring VLLM_CPU_KVCACHE_SPACE=%s: engine.kv_cache_gib (%g) sizes the KV cache",
                            legacy, config.kv_cache_gib)
        if self._kv is not None:
            args["kv_transfer_config"] = KVTransferConfig(
                kv_connector=CONNECTOR, kv_connector_module_path=CONNECTOR_MODULE, kv_role="kv_both",
                kv_load_failure_policy="recompute",
                kv_connector_extra_config={**self._kv, "worker_id": self._worker_id, "endpoint_file": str(endpoint_file),
                                           "stats_endpoint_file": str(stats_file), "zmq_port": 0, "grpc_port": 0,
                                           **({"auth_key_file": str(key_file)} if key_file else {})})
        return args

    async def _read_endpoints(self, path: Path) -> dict[str, str]:
        deadline = time.monotonic() + ENDPOINT_WAIT_S
        while not path.exists():
            if time.monotonic() > deadline:
                raise EngineError(f"the KV connector did not report its endpoints within {ENDPOINT_WAIT_S:.0f} s")
            await asyncio.sleep(0.05)
        endpoints = json.loads(path.read_text())
        with contextlib.suppress(OSError):
            path.unlink()
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
        return endpoints

    def _kv_bytes_per_token(self) -> int:
        config = self._llm.vllm_config
        model, parallel = config.model_config, config.parallel_config
        per_layer = 2 * model.get_num_kv_heads(parallel) * model.get_head_size()
        dtype = str(config.cache_config.cache_dtype)
        size = DTYPE_BYTES.get(str(model.dtype).removeprefix("torch."), 2) if dtype == "auto" else 1 if "fp8" in dtype else 2
        return per_layer * model.get_num_layers(parallel) * size

    async def shutdown(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for channel in self._channels:
            await channel.close()
        if self._unhealthy:  # a wedged process would not stop when asked (and a dead one cannot be asked)
            _kill_all(self._processes)
        if self._llm is not None:
            # Stop reading outputs first: the output handler would log the engine's exit as a crash.
            if self._llm.output_handler is not None:
                self._llm.output_handler.cancel()
            await asyncio.to_thread(self._llm.shutdown, SHUTDOWN_TIMEOUT_S)
            self._llm = None
        _kill_all(self._processes)  # whatever did not stop within vLLM's shutdown timeout

    # ---- requests --------------------------------------------------------------------------------

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self._llm is None:
            raise EngineError("the engine is not running")
        return self._generate(request)

    async def _generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from vllm.inputs import TokensPrompt

        params = self._sampling_params(request)
        first = True
        finished = False
        self._num_unfinished += 1
        self._last_progress_s = time.monotonic()
        try:
            async for output in self._llm.generate(TokensPrompt(prompt_token_ids=list(request.prompt_ids)), params,
                                                   request.request_id):
                completion = output.outputs[0]
                result = EngineOutput(list(completion.token_ids), output.finished,
                                      _finish_reason(completion.finish_reason) if output.finished else None,
                                      int(output.num_cached_tokens or 0))
                if first and request.kv_receive is not None:
                    result.kv = await self.kv_outcome(request.kv_receive.transfer_id)
                first = False
                finished = output.finished
                yield result
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if _engine_dead(exc):
                raise EngineError(f"the vLLM engine died: {exc}") from exc
            raise
        finally:
            self._num_unfinished -= 1
            if not finished:
                await self.abort(request.request_id)

    def _sampling_params(self, request: EngineRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from workers.engine.thinking import thinking_sampling_args
        from workers.kv.connector import PARAMS_KEY

        extra: dict[str, Any] = {}
        limits = request.thinking
        if limits is not None:
            from orchestrator.request import Budget

            budget = Budget(max_thinking_tokens=limits.max_thinking_tokens, min_thinking_tokens=limits.min_thinking_tokens,
                            start_thinking=limits.start_thinking)
            extra.update(thinking_sampling_args(budget, limits.start_ids, limits.end_ids, limits.wait_ids,
                                                close_prefix_ids=limits.close_prefix_ids,
                                                num_prompt_tokens=request.num_original_prompt_tokens))
        transfer = _transfer_params(request)
        if transfer is not None:
            extra["kv_transfer_params"] = {PARAMS_KEY: transfer}
        return SamplingParams(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            top_k=request.top_k if request.top_k > 0 else 0, seed=request.seed, ignore_eos=request.ignore_eos,
            detokenize=False, output_kind=RequestOutputKind.DELTA, extra_args=extra or None)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def kv_outcome(self, transfer_id: str) -> KVOutcome | None:
        if self._control is None:
            return None
        try:
            reply = await self._control.GetTransferStats(kv_pb2.GetTransferStatsRequest(transfer_ids=[transfer_id]),
                                                         timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            log.warning("KV stats of transfer %s unavailable: %s", transfer_id, exc.code())
            return None
        for outcome in reply.outcomes:
            return KVOutcome(outcome.complete, outcome.bytes, outcome.seconds, outcome.failure)
        return None

    # ---- health and stats --------------------------------------------------------------------------

    def health(self, stall_timeout_s: float) -> EngineHealth:
        health = self._health(stall_timeout_s)
        self._unhealthy = self._unhealthy or (not health.alive and self._llm is not None)
        return health

    def _health(self, stall_timeout_s: float) -> EngineHealth:
        if self._llm is None:
            return EngineHealth(False, "the vLLM engine is not running")
        for process, name in self._processes:
            if not _alive(process):
                return EngineHealth(False, f"the engine process {name} (pid {process.pid}) exited")
        if self._llm.errored:
            return EngineHealth(False, "the vLLM engine failed (its EngineCore stopped)")
        quiet_s = time.monotonic() - self._last_progress_s
        if self._num_unfinished and quiet_s > stall_timeout_s:
            return EngineHealth(False, f"the engine is wedged: no step for {quiet_s:.0f} s with "
                                       f"{self._num_unfinished} requests unfinished")
        return EngineHealth()

    def stats(self) -> EngineStats:
        latest = self._latest
        total = self._info.num_total_blocks if self._info else 0
        usage = float(getattr(latest, "kv_cache_usage", 0.0) or 0.0)
        free = self._exact_blocks[0] if self._exact_blocks else total - round(usage * total)
        if self._exact_blocks and self._exact_blocks[1]:
            total = self._exact_blocks[1]
            usage = 1.0 - free / total
        running = int(getattr(latest, "num_running_reqs", 0) or 0)
        waiting = int(getattr(latest, "num_waiting_reqs", 0) or 0) + int(getattr(latest, "num_skipped_waiting_reqs", 0) or 0)
        itl_ms = float(np.median(self._token_gaps_s)) * 1e3 if self._token_gaps_s else 0.0
        return EngineStats(running, waiting, usage, free, total, round(itl_ms, 3))

    async def _refresh_blocks(self) -> None:
        while True:
            try:
                reply = await self._control.GetTransferStats(kv_pb2.GetTransferStatsRequest(), timeout=2.0)
                self._counters = {field.name: value for field, value in reply.ListFields() if field.name != "outcomes"}
                blocks = await self._block_stats.GetTransferStats(kv_pb2.GetTransferStatsRequest(), timeout=2.0)
                if blocks.num_total_blocks:
                    self._exact_blocks = (int(blocks.num_free_blocks), int(blocks.num_total_blocks))
            except grpc.aio.AioRpcError:
                self._exact_blocks = None
            await asyncio.sleep(STATS_REFRESH_S)

    def kv_counters(self) -> dict[str, float]:
        return dict(self._counters)

    def _stats_sink(self, vllm_config: Any, engine_index: int = 0) -> Any:
        """A vLLM stat-logger factory: the logger keeps the newest scheduler stats on this adapter."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        adapter = self

        class _Sink(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                adapter._last_progress_s = time.monotonic()  # called once per engine step
                if iteration_stats is not None:  # gaps between tokens by the EngineCore's own clock
                    adapter._token_gaps_s.extend(iteration_stats.inter_token_latencies_iter)
                if scheduler_stats is not None:
                    adapter._latest = scheduler_stats

            def log_engine_initialized(self) -> None:
                pass

        return _Sink(vllm_config, engine_index)


def resolve_dtype(dtype: str, *, on_gpu: bool) -> str:
    """The dtype handed to vLLM for `model.dtype`: `auto` is float32 on the CPU, where vLLM-CPU's bfloat16
    kernels give wrong text for SmolLM2 on some processors (and are not batch-invariant), and vLLM's own
    `auto` (the checkpoint's dtype) on GPUs. An explicit dtype is passed as it is."""
    if dtype != "auto":
        return dtype
    return "auto" if on_gpu else "float32"


def _write_key(path: Path, secret: bytes | None) -> Path | None:
    """The cluster's KV secret in a file only this user reads, for the connector (None: no secret)."""
    if not secret:
        return None
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret)
    return path


def _transfer_params(request: EngineRequest) -> dict[str, Any] | None:
    if request.kv_push is not None:
        push = request.kv_push
        params = {"role": "push", "transfer_id": push.transfer_id, "endpoint": push.endpoint,
                  "num_prompt_tokens": push.num_prompt_tokens}
        if push.fault:
            params["fault"] = push.fault
        if push.fault == "stall":
            params["stall_s"] = push.stall_s
        return params
    if request.kv_receive is not None:
        receive = request.kv_receive
        return {"role": "receive", "transfer_id": receive.transfer_id, "num_prompt_tokens": receive.num_prompt_tokens}
    return None


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "abort"


def _engine_dead(exc: Exception) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, EngineDeadError)


def _engine_processes() -> list[tuple[Any, str]]:
    """The processes vLLM started for this engine (it names them VLLM::EngineCore, VLLM::Worker, ...)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            name = child.name()
        except psutil.Error:
            continue
        if name.startswith("VLLM::"):
            found.append((child, name))
    return found


def _kill_all(processes: list[tuple[Any, str]]) -> None:
    """SIGKILL those of the engine's processes that still run (SIGKILL also ends a stopped process)."""
    import psutil

    for process, name in processes:
        if _alive(process):
            log.warning("killing the engine process %s (pid %d)", name, process.pid)
            with contextlib.suppress(psutil.Error):
                process.kill()


def _alive(process: Any) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _on_gpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cuda_alike()
