"""pdserve's vLLM KV connector: push a prompt's KV from the prefill engine to the decode engine.

Loaded by vLLM from `KVTransferConfig(kv_connector="PdserveConnector",
kv_connector_module_path="workers.kv.connector", kv_role="kv_both",
kv_load_failure_policy="recompute", kv_connector_extra_config={...})`. vLLM makes two instances per
engine: one on the scheduler side (decides what moves, builds per-step metadata) and one on the worker
side (moves bytes). On the CPU build both live in the EngineCore process.

Per request, `SamplingParams.extra_args["kv_transfer_params"]["pdserve"]` says what to do:
- `{"role": "push", "transfer_id", "endpoint", "num_prompt_tokens"[, "fault"]}` on the prefill engine: every
  forward step that computes prompt tokens sends, layer by layer from inside the forward pass
  (`save_kv_layer`), the blocks covering the newly computed tokens (all prompt blocks from token 0 the
  first time, so blocks from the prefill engine's own prefix cache travel too).
- `{"role": "receive", "transfer_id", "num_prompt_tokens"}` on the decode engine: the scheduler is told
  those tokens load asynchronously; their blocks are allocated, the request waits while frames are
  written into them, and runs once every layer has arrived. A checksum mismatch, a sender abort or a
  timeout reports the request in `failed_recving`: vLLM then recomputes the prompt locally (policy
  "recompute"), so the request still succeeds.

Engine-level settings (`kv_connector_extra_config`): `host`, `zmq_port`, `grpc_port` (where this engine
receives; 0: any free port), `zmq_receiver` (`direct` or `libzmq`, see `receiving`), `endpoint_file` and `stats_endpoint_file` (where the worker side's
receiving endpoints and the scheduler side's block-stats endpoint are written as JSON, for the
worker actor that started the engine), `timeout_s`, `max_stash_bytes`, `worker_id`. How a frame travels follows the
receiver's endpoint (`zmq://` or `grpc://`, which the orchestrator picks from `kv.transport`): every
engine receives on both, and sends on whichever its requests name.

Fault injection (chaos tests, like vLLM's): a push's transfer parameters may carry `"fault":
"corrupt"` (one frame's bytes differ from its checksum), `"drop"` (no frame is sent) or `"stall"` (the
sender thread holds the frames `"stall_s"` seconds, see `faults`); the receiver must then recompute (or
take them late), and the request still succeed.

KV plane authentication (`auth`): `auth` (`hmac`, `header` or `none`) and `auth_key_file` (the cluster's
KV secret, written by the engine's adapter into its private directory) in the engine-level settings;
frames are signed on the sender thread and checked by the receivers (see `workers.kv.auth`).

A receive that failed is remembered on the scheduler side: when vLLM reschedules the request to
recompute it, `get_num_new_matched_tokens` then answers 0, so it is computed locally rather than
waiting for a transfer that will not come again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorTransferResults,
)

from workers.kv.assembler import TransferAssembler
from workers.kv.blocks import as_bytes, block_parts, gather_blocks
from workers.kv.auth import KVAuth, make_secret
from workers.kv.receiving import start_receiving
from workers.kv.service import KVTransferService, serve_kv_service
from workers.kv.transport import KVSenders, OutgoingFrame, PendingSends

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

PARAMS_KEY = "pdserve"


@dataclass(frozen=True)
class SendSpec:
    request_id: str  # vLLM's id of the pushed request
    transfer_id: str
    endpoint: str
    block_ids: list[int]  # the blocks covering [token_start, token_end), in prompt order
    token_start: int
    token_end: int
    num_prompt_tokens: int
    fault: str = ""  # fault injection (chaos tests): "corrupt" one frame, "drop" them all, or "stall" them
    stall_s: float = 0.0  # how long a "stall" holds the frames on the sender thread


@dataclass(frozen=True)
class RecvSpec:
    transfer_id: str
    request_id: str
    block_ids: list[int]
    local_tokens: int
    num_prompt_tokens: int


@dataclass
class PdserveConnectorMetadata(KVConnectorMetadata):
    sends: list[SendSpec] = field(default_factory=list)
    recvs: list[RecvSpec] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


@dataclass
class _PushState:
    request_id: str
    transfer_id: str
    endpoint: str
    num_prompt_tokens: int
    block_ids: list[int] = field(default_factory=list)
    sent_until: int = 0
    fault: str = ""
    stall_s: float = 0.0


class _BlockCounts:
    """(free, total) KV blocks of the scheduler's block pool, for its stats service."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __call__(self) -> tuple[int, int]:
        return int(self._pool.get_num_free_blocks()), int(self._pool.num_gpu_blocks) - 1  # block 0: vLLM's null block


def block_first_view(cache: torch.Tensor, num_blocks: int | None) -> torch.Tensor:
    """A view of one layer's KV cache with the block dimension first (no copy).

    Backends differ: the CPU backend's layout is (num_blocks, heads, block, 2*dim), FlashAttention's
    (2, num_blocks, block, heads, dim). The block dimension is the one sized num_blocks; when several
    are, the first.
    """
    if num_blocks is None or cache.shape[0] == num_blocks:
        return cache
    for dim, size in enumerate(cache.shape):
        if size == num_blocks:
            return cache.movedim(dim, 0)
    raise ValueError(f"no dimension of the KV cache {tuple(cache.shape)} has {num_blocks} blocks")


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def transfer_params(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pdserve part of a request's kv_transfer_params, or None."""
    params = (extra_args or {}).get("kv_transfer_params") or {}
    return params.get(PARAMS_KEY)


class PdserveConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig | None = None):
        super().__init__(vllm_config, role, kv_cache_config)
        self._block_size = vllm_config.cache_config.block_size
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self._extra = extra
        # scheduler side
        self._pushes: dict[str, _PushState] = {}
        self._new_recvs: list[RecvSpec] = []
        self._waiting_recv: set[str] = set()
        self._recompute: set[str] = set()  # receives that failed: computed locally from now on
        self._cancelled: list[str] = []
        # worker side
        self._assembler: TransferAssembler | None = None
        self._layer_index: dict[str, int] = {}
        self._layer_views: list[torch.Tensor] = []
        self._sender = None
        self._receivers: list[Any] = []
        self._sends = PendingSends()

    # ============================== scheduler side ==============================================
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        """Scheduler: a `receive` request loads its prompt's KV asynchronously from the transfer."""
        params = transfer_params(request.sampling_params.extra_args if request.sampling_params else None)
        if not params or params.get("role") != "receive" or request.request_id in self._recompute:
            return 0, False
        count = int(params["num_prompt_tokens"]) - num_computed_tokens
        return (count, True) if count > 0 else (0, False)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        """Scheduler: blocks for a `receive` request exist now; tell the worker side where frames go."""
        if num_external_tokens <= 0:
            return
        params = transfer_params(request.sampling_params.extra_args if request.sampling_params else None)
        if not params or params.get("role") != "receive":
            return
        num_prompt_tokens = int(params["num_prompt_tokens"])
        self._new_recvs.append(RecvSpec(
            transfer_id=params["transfer_id"], request_id=request.request_id,
            block_ids=list(blocks.get_block_ids()[0]), local_tokens=num_prompt_tokens - num_external_tokens,
            num_prompt_tokens=num_prompt_tokens))
        self._waiting_recv.add(request.request_id)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        """Scheduler: this step's sends (per pushed request, the blocks it computes now) and receives."""
        meta = PdserveConnectorMetadata(recvs=self._new_recvs, cancelled=self._cancelled)
        self._new_recvs, self._cancelled = [], []
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            params = transfer_params(new.sampling_params.extra_args if new.sampling_params else None)
            if not params or params.get("role") != "push":
                continue
            state = _PushState(new.req_id, params["transfer_id"], params["endpoint"], int(params["num_prompt_tokens"]),
                               list(new.block_ids[0]), fault=str(params.get("fault", "")),
                               stall_s=float(params.get("stall_s", 0.0)))
            self._pushes[new.req_id] = state
            self._emit(meta, state, new.num_computed_tokens + scheduled.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._pushes.get(req_id)
            if state is None or state.sent_until >= state.num_prompt_tokens:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:  # preempted and resumed: all blocks anew
                state.block_ids, state.sent_until = list(new_blocks[0]) if new_blocks else [], 0
            elif new_blocks:
                state.block_ids.extend(new_blocks[0])
            self._emit(meta, state, cached.num_computed_tokens[i] + scheduled.get(req_id, 0))
        return meta

    def _emit(self, meta: PdserveConnectorMetadata, state: _PushState, computed_end: int) -> None:
        end = min(computed_end, state.num_prompt_tokens)
        if end <= state.sent_until:
            return
        start = (state.sent_until // self._block_size) * self._block_size
        first, last = start // self._block_size, -(-end // self._block_size)
        meta.sends.append(SendSpec(state.request_id, state.transfer_id, state.endpoint, state.block_ids[first:last], start,
                                   end, state.num_prompt_tokens, state.fault, state.stall_s))
        state.sent_until = end

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        """Scheduler: receives that ended leave the waiting set; failed ones are recomputed, never re-awaited."""
        for request_id in connector_output.finished_recving or ():
            self._waiting_recv.discard(request_id)
        self._recompute.update(connector_output.failed_recving or ())

    def bind_gpu_block_pool(self, gpu_block_pool: Any) -> None:
        """Scheduler: serve the block pool's free/total counts (a stats-only KVTransfer service), so the
        worker reads exact counts even while the engine idles (vLLM's own stats move only per step).
        The scheduler and the model run in different processes on the CPU build, hence its own server."""
        host = self._extra.get("host", "127.0.0.1")
        server, endpoint = serve_kv_service(KVTransferService(None, None, _BlockCounts(gpu_block_pool)), host, 0)
        self._receivers.append(server)
        if self._extra.get("stats_endpoint_file"):
            _write_atomically(self._extra["stats_endpoint_file"], json.dumps({"grpc": endpoint}))

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """Scheduler: a pushed request whose frames went out keeps its blocks until the worker side
        reports them sent (`finished_sending`): frames may be zero-copy views of those blocks.

        A `receive` request that ends while still waiting (aborted, deadline) is cancelled on the worker
        side, which reports it finished so that vLLM frees its blocks.
        """
        push = self._pushes.pop(request.request_id, None)
        self._recompute.discard(request.request_id)
        if request.request_id in self._waiting_recv:
            self._waiting_recv.discard(request.request_id)
            self._cancelled.append(request.request_id)
        return push is not None and push.sent_until > 0, None

    # ============================== worker side =================================================
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Worker: remember each layer's block-first view of the cache; start the receivers."""
        num_blocks = self._kv_cache_config.num_blocks if self._kv_cache_config is not None else None
        for index, (name, cache) in enumerate(kv_caches.items()):
            self._layer_index[name] = index
            self._layer_views.append(block_first_view(cache, num_blocks))
        self._start_receivers()

    def _start_receivers(self) -> None:
        host = self._extra.get("host", "127.0.0.1")
        key_file = self._extra.get("auth_key_file")
        auth = KVAuth(str(self._extra.get("auth", "none")), make_secret(key_file) if key_file else None)
        self._assembler, receiver = start_receiving(
            str(self._extra.get("zmq_receiver", "direct")), self._layer_views, host, int(self._extra.get("zmq_port", 0)),
            timeout_s=float(self._extra.get("timeout_s", 10.0)),
            max_stash_bytes=int(self._extra.get("max_stash_bytes", 1 << 30)), auth=auth)
        self._receivers.append(receiver)
        self._sender = KVSenders(auth)
        service = KVTransferService(self._assembler, self._sender, auth=auth)
        server, grpc_endpoint = serve_kv_service(service, host, int(self._extra.get("grpc_port", 0)))
        self._receivers.append(server)
        endpoints = {"zmq": receiver.endpoint, "grpc": grpc_endpoint}
        if self._extra.get("endpoint_file"):
            _write_atomically(self._extra["endpoint_file"], json.dumps(endpoints))
        log.info("pdserve KV connector: %d layers, receiving on %s and %s", len(self._layer_views),
                 endpoints["zmq"], endpoints["grpc"])

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        """Worker: register this step's new receives (frames may already be stashed) and cancellations."""
        if self._assembler is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, PdserveConnectorMetadata)
        for spec in meta.recvs:
            self._assembler.expect(spec.transfer_id, spec.request_id, spec.block_ids, spec.local_tokens,
                                   spec.num_prompt_tokens)
        for request_id in meta.cancelled:
            self._assembler.cancel(request_id)

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Worker: nothing to wait for; receiving requests only run once their KV is complete."""

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        """Worker, inside the forward pass: queue this layer's blocks of each pushed request.

        On the CPU the frame's parts are views into the cache (`blocks.block_parts`): the engine thread
        copies nothing, and the blocks stay allocated until ZeroMQ has sent them (`get_transfer_results`
        reports the request in `finished_sending` then). Elsewhere one gather copies them out. The
        checksum and the network run on the sender thread while later layers compute.
        """
        if self._sender is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, PdserveConnectorMetadata) or not meta.sends:
            return
        layer = self._layer_index.get(layer_name)
        if layer is None:
            return
        view = self._layer_views[layer]  # the block-first view of kv_layer
        for spec in meta.sends:
            self._sends.track(spec.request_id)
            if spec.fault == "drop":
                continue
            payload: Any = block_parts(view, spec.block_ids)
            on_done = None
            if payload is None:
                payload = as_bytes(gather_blocks(view, spec.block_ids))
            else:
                self._sends.add(spec.request_id)
                on_done = functools.partial(self._sends.done, spec.request_id)
            self._sender.send(OutgoingFrame(spec.endpoint, dict(
                transfer_id=spec.transfer_id, layer_index=layer, num_layers=len(self._layer_views),
                token_start=spec.token_start, token_end=spec.token_end, num_prompt_tokens=spec.num_prompt_tokens,
                block_size=self._block_size, dtype=str(view.dtype).removeprefix("torch."),
                shape=(len(spec.block_ids), *view.shape[1:]), source_block_ids=spec.block_ids,
                sender=str(self._extra.get("worker_id", ""))), payload,
                corrupt=spec.fault == "corrupt" and layer == 0, on_done=on_done,
                hold_until_s=time.monotonic() + spec.stall_s if spec.fault == "stall" else 0.0))

    def wait_for_save(self) -> None:
        """Worker: sends are asynchronous; their blocks stay allocated until sent (see save_kv_layer)."""

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        """Worker, every step: pushed requests whose frames are all sent (their blocks may be freed now),
        and receives that completed, failed (recompute) or were cancelled."""
        sent = self._sends.finished(finished_req_ids)
        if self._assembler is None:
            return KVConnectorTransferResults(finished_sending=sent)
        finished, failed = self._assembler.poll()
        return KVConnectorTransferResults(finished_sending=sent, finished_recving=finished, failed_recving=failed)

    def shutdown(self) -> None:
        for receiver in self._receivers:
            if hasattr(receiver, "stop"):
                receiver.stop(grace=0)
            else:
                receiver.close()
        if self._assembler is not None:
            self._assembler.close()
        if self._sender is not None:
            self._sender.close()
