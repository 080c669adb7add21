"""The KV gRPC service of one engine: frames over gRPC (`Push`), and control (`AbortTransfer`,
`GetTransferStats`) whichever data transport is in use.

Pushed frames and aborts go through the engine's `auth.FrameGate`: a frame without a valid MAC is
dropped (the stream goes on), an abort without one is answered UNAUTHENTICATED; both are counted in
`auth_failures`. `GetTransferStats` is read-only (counters and outcomes) and open to any caller.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc

from orchestrator.api.pb import kv_pb2, kv_pb2_grpc
from workers.kv.assembler import TransferAssembler
from workers.kv.auth import AuthError, FrameGate, KVAuth, peer_host
from workers.kv.transport import SenderCounters, grpc_options


class KVTransferService(kv_pb2_grpc.KVTransferServicer):
    """gRPC data transport and control for one assembler (and, for stats, the local sender)."""

    def __init__(self, assembler: TransferAssembler | None, sender_counters: SenderCounters | None = None,
                 block_counts: Any = None, auth: KVAuth | None = None) -> None:
        """`block_counts()`, if given, returns the engine's (free, total) KV blocks for the stats reply.
        `auth`: the engine's `KVAuth` (shared with its receivers, whose refusals it reports too)."""
        self._assembler = assembler
        self._gate = FrameGate(assembler, auth) if assembler is not None else None
        self._auth = auth
        self._sender_counters = sender_counters
        self._block_counts = block_counts

    def Push(self, request_iterator, context):  # noqa: N802 - gRPC method name
        frames = size = 0
        if self._gate is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this worker does not receive KV")
        peer = peer_host(context.peer())
        for frame in request_iterator:
            self._gate.on_frame(frame.header, memoryview(frame.payload), peer=peer)
            frames += 1
            size += len(frame.payload)
        return kv_pb2.PushResponse(frames=frames, bytes=size)

    def AbortTransfer(self, request, context):  # noqa: N802
        if self._gate is None:
            return kv_pb2.AbortTransferResponse(known=False)
        try:
            known = self._gate.abort(request.transfer_id, request.reason, request.mac, peer=peer_host(context.peer()))
        except AuthError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        return kv_pb2.AbortTransferResponse(known=known)

    def GetTransferStats(self, request, context):  # noqa: N802
        reply = kv_pb2.GetTransferStatsResponse()
        if self._assembler is not None:
            c = self._assembler.counters
            reply.bytes_total, reply.frames_total = c.bytes_total, c.frames_total
            reply.transfers_completed, reply.transfers_recomputed = c.transfers_completed, c.transfers_recomputed
            reply.seconds_total, reply.checksum_failures, reply.timeouts = c.seconds_total, c.checksum_failures, c.timeouts
            for transfer_id in request.transfer_ids:
                outcome = self._assembler.outcome(transfer_id)
                if outcome is not None:
                    reply.outcomes.append(kv_pb2.TransferOutcome(
                        transfer_id=transfer_id, complete=outcome.complete, recomputed=not outcome.complete,
                        failure=outcome.failure or "", bytes=outcome.bytes, seconds=outcome.seconds))
        if self._auth is not None:
            reply.auth_failures = self._auth.failures
        if self._sender_counters is not None:
            counters = getattr(self._sender_counters, "counters", self._sender_counters)  # KVSenders or counters
            reply.bytes_sent_total = counters.bytes_sent
            reply.frames_sent_total = counters.frames_sent
        if self._block_counts is not None:
            reply.num_free_blocks, reply.num_total_blocks = self._block_counts()
        return reply


def serve_kv_service(service: KVTransferService, host: str, port: int) -> tuple[grpc.Server, str]:
    """Start the KV gRPC server; returns it and its endpoint `grpc://host:port`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kv-grpc"),
                         options=grpc_options())
    kv_pb2_grpc.add_KVTransferServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the KV gRPC server on {host}:{port}: the port is in use")
    server.start()
    return server, f"grpc://{host}:{bound}"
