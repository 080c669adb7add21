"""KV-transfer throughput: the real connector data path beside raw pyzmq moving the same bytes.

    .venv/bin/python benchmarks/kv_transfer.py [--tokens 2048] [--transfers 20] [--repeats 5] [--out FILE]

Sender and receiver run in two processes, as a prefill and a decode engine do (each with its own
ZeroMQ I/O thread), over TCP loopback.

The connector path is what a disaggregated request's KV goes through, minus the engines. Sender (this
process): per layer, `blocks.block_parts` (zero-copy views of the request's blocks in a per-layer KV
cache in the CPU backend's layout; with `scattered`, the requests' blocks interleave in runs of 4, as in
a busy engine, and `blocks.gather_blocks` copies them out instead) and the real `ZmqSender` (xxh3
checksum into the header, zero-copy multipart send from its thread, buffers tracked until ZeroMQ lets
go). Receiver (a child process): the decode engine's receiving stack (`receiving.start_receiving`: the
`TransferAssembler` and the ZeroMQ receiver, plus the gRPC server every engine runs), until the
assembler reports every transfer complete. Rows:
- `connector zmq`: the default `direct` receiver; every transfer's blocks are allocated before its
  frames come, so each payload is read off the socket straight into them;
- `connector zmq, frames first`: as served today (the decode request follows the prefill), each
  transfer's blocks are allocated once its frames were all handed to the sender: frames that arrive
  first wait in the stash and are copied into the blocks then (`blocks.write_blocks`, on the
  assembler's placer thread);
- `connector zmq, libzmq receiver` and `..., frames first, libzmq`: the same two orders with libzmq's
  PULL socket (`kv.zmq_receiver: libzmq`): every frame arrives in a libzmq message of its own and is
  copied into the blocks;
- `frames first, engine Python busy` (and `..., libzmq`): as served, with a thread in the receiving
  process that keeps its interpreter busy, as a vLLM worker's Python does: every read of a Python
  receiver thread that lets go of the GIL then costs it a wait to get it back, which is why the direct
  receiver reads about once per message and reads bytes already queued holding the GIL;
- `connector zmq, scattered blocks` and `connector grpc`: for reference.
Every connector row verifies each frame's checksum over the bytes as written into the cache. The
baseline is raw pyzmq PUSH/PULL between the same two processes sending the same frames zero-copy and
receiving them without looking at them; three more raw rows add one of the connector's costs each
(tracked sends, the sender's checksum, the copy into the cache), so the table shows where the gap goes.

Reports GB/s (payload bytes per second, first send to the receiver's last completion), the best and
median of `--repeats`, and the ratio to raw pyzmq measured in the same run; and the CPU time both
processes spent per GB moved (all threads, ZeroMQ's I/O threads and the kernel's copies included): on a
machine whose two cores run sender, receiver and both I/O threads, CPU per byte is what bounds
throughput, and it varies far less from run to run than wall-clock rates on a shared VM.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# SmolLM2-135M on the CPU backend: 30 layers, 3 KV heads, head dim 64, block 32, K and V side by side, in
# the served default's dtype (float32 on the CPU: 46 KB of KV per token).
NUM_LAYERS, HEADS, BLOCK, WIDTH = 30, 3, 32, 128
DTYPE = "float32"
DTYPE_BYTES = 4


def _kv_cache(num_blocks: int) -> list:
    import torch

    return [torch.randn(num_blocks, HEADS, BLOCK, WIDTH).to(getattr(torch, DTYPE)) for _ in range(NUM_LAYERS)]


def _plan(tokens: int, transfers: int, scattered: bool) -> tuple[int, list[list[int]], list[list[int]]]:
    """(blocks per prompt, the sender's block ids per transfer, the receiver's)."""
    per_prompt = -(-tokens // BLOCK)
    receiver_ids = [list(range(1 + i * per_prompt, 1 + (i + 1) * per_prompt)) for i in range(transfers)]
    sender_ids = receiver_ids
    if scattered:
        sender_ids = [[1 + (run * transfers + i) * 4 + k for run in range(-(-per_prompt // 4)) for k in range(4)]
                      [:per_prompt] for i in range(transfers)]
    return per_prompt, sender_ids, receiver_ids


class Measurement(NamedTuple):
    seconds: float  # first send to the receiver's last completion
    bytes: int  # payload bytes moved
    cpu_s: float  # CPU time of both processes (all their threads) over that span


# ---- receivers (child process) --------------------------------------------------------------------

def _python_busy() -> None:
    """A thread that keeps the interpreter busy, as an engine's Python loop does (vLLM's workers poll
    their shared-memory queue): every other thread of the process then waits for the GIL after each
    syscall or switch interval."""
    total = 0
    while True:
        for i in range(1000):
            total += i * i


def _connector_receiver(conn, transport: str, receiver_kind: str, frames_first: bool, tokens: int,
                        receiver_ids: list[list[int]], transfer_ids: list[str], python_busy: bool = False) -> None:
    import threading

    import torch

    if python_busy:
        threading.Thread(target=_python_busy, daemon=True).start()

    from workers.kv.receiving import start_receiving
    from workers.kv.service import KVTransferService, serve_kv_service

    torch.set_num_threads(1)
    cache = _kv_cache(max(max(ids) for ids in receiver_ids) + 1)
    assembler, receiver = start_receiving(receiver_kind, cache, "127.0.0.1", 0, timeout_s=120.0,
                                          max_stash_bytes=8 << 30)
    server, grpc_endpoint = serve_kv_service(KVTransferService(assembler), "127.0.0.1", 0)  # as an engine does
    endpoint = receiver.endpoint if transport == "zmq" else grpc_endpoint
    blocks = dict(zip(transfer_ids, receiver_ids))
    if not frames_first:  # the decode engine allocated every transfer's blocks before the frames come
        for transfer_id, ids in blocks.items():
            assembler.expect(transfer_id, transfer_id, ids, 0, tokens)
    cpu_started = time.process_time()
    conn.send(endpoint)
    done: set[str] = set()
    while len(done) < len(transfer_ids):
        while frames_first and conn.poll():  # as served: the decode request comes once the prefill is done
            transfer_id = conn.recv()
            assembler.expect(transfer_id, transfer_id, blocks[transfer_id], 0, tokens)
        finished, failed = assembler.poll()
        if failed:
            conn.send(("failed", [str(assembler.outcome(t)) for t in failed]))
            return
        done |= finished
        time.sleep(0.002)  # an engine polls its connector once per step (every few ms or more)
    conn.send(("done", assembler.counters.bytes_total, time.process_time() - cpu_started,
               float(cache[NUM_LAYERS - 1][receiver_ids[-1][-1]].float().sum())))
    receiver.close()
    assembler.close()
    server.stop(0)


def _raw_receiver(conn, count: int, receiver_ids: list[list[int]] | None) -> None:
    """Receive `count` messages; with `receiver_ids`, copy each into its blocks of a KV cache (numpy)."""
    import numpy as np
    import torch
    import zmq

    targets = None
    if receiver_ids is not None:
        cache = _kv_cache(max(max(ids) for ids in receiver_ids) + 1)
        targets = [layer.view(torch.uint8).numpy().reshape(layer.shape[0], -1) for layer in cache]
    pull = zmq.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    cpu_started = time.process_time()
    conn.send(f"tcp://127.0.0.1:{port}")
    size = 0
    for index in range(count):
        parts = pull.recv_multipart(copy=False)[1:]
        size += sum(len(part) for part in parts)
        if targets is not None:
            transfer, layer = divmod(index, NUM_LAYERS)
            first = receiver_ids[transfer][0]
            target = targets[layer]
            data = np.frombuffer(parts[0].buffer, dtype=np.uint8).reshape(-1, target.shape[1])
            target[first:first + data.shape[0]] = data
    conn.send(("done", size, time.process_time() - cpu_started))
    pull.close(linger=0)


# ---- senders (this process) -----------------------------------------------------------------------

def connector_path(transport: str, tokens: int, transfers: int, scattered: bool = False, receiver_kind: str = "direct",
                   frames_first: bool = False, python_busy: bool = False) -> Measurement:
    """Time, bytes and CPU to move `transfers` prompts of `tokens` tokens through the real path.
    `frames_first`: as served, each transfer's blocks are allocated (`expect`) only once its prompt's
    frames were all handed to the sender (the decode request follows the prefill), so frames are
    stashed first and placed then; otherwise every transfer's blocks exist before its first frame.
    `python_busy`: the receiving process also runs a thread that keeps its interpreter busy."""
    import torch

    from workers.kv.blocks import as_bytes, block_parts, gather_blocks
    from workers.kv.transport import OutgoingFrame, make_sender

    per_prompt, sender_ids, receiver_ids = _plan(tokens, transfers, scattered)
    source = _kv_cache(max(max(ids) for ids in sender_ids) + 1)
    transfer_ids = [uuid.uuid4().hex for _ in range(transfers)]
    parent, child = mp.Pipe()
    receiver = mp.get_context("spawn").Process(target=_connector_receiver,
                                               args=(child, transport, receiver_kind, frames_first, tokens,
                                                     receiver_ids, transfer_ids, python_busy))
    receiver.start()
    endpoint = parent.recv()
    sender = make_sender(transport)
    time.sleep(0.2)
    started, cpu_started = time.perf_counter(), time.process_time()
    for transfer_id, ids in zip(transfer_ids, sender_ids):
        for layer in range(NUM_LAYERS):
            parts = block_parts(source[layer], ids)  # what the connector sends on the CPU
            if parts is None:
                parts = as_bytes(gather_blocks(source[layer], ids))
            sender.send(OutgoingFrame(endpoint, dict(
                transfer_id=transfer_id, layer_index=layer, num_layers=NUM_LAYERS, token_start=0, token_end=tokens,
                num_prompt_tokens=tokens, block_size=BLOCK, dtype=DTYPE, shape=(per_prompt, HEADS, BLOCK, WIDTH)),
                parts, on_done=lambda: None))
        if frames_first:
            parent.send(transfer_id)
    result = parent.recv()
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    receiver.join(30)
    sender.close()
    if result[0] != "done":
        raise RuntimeError(f"transfers failed: {result[1]}")
    expected = float(source[NUM_LAYERS - 1][sender_ids[-1][-1]].float().sum())
    assert abs(result[3] - expected) < 1e-3 * max(1.0, abs(expected)), "bytes changed in transit"
    del torch
    return Measurement(seconds, result[1], cpu_s + result[2])


def raw_pyzmq(tokens: int, transfers: int, into_cache: bool = False, track: bool = False,
              checksum: bool = False) -> Measurement:
    """Time, bytes and CPU for raw PUSH/PULL moving the same frames, zero-copy; the receiver does nothing
    with them, or (`into_cache`) copies each into its blocks of a KV cache: what any receiver must do.
    `track` (ZeroMQ tracks each message until its buffer is free, as the connector must to release KV
    blocks) and `checksum` (the sender's xxh3 over each frame) add one of the connector's costs each."""
    import numpy as np
    import xxhash
    import zmq

    frame_bytes = -(-tokens // BLOCK) * HEADS * BLOCK * WIDTH * DTYPE_BYTES
    payloads = [np.random.randint(0, 255, frame_bytes, dtype=np.uint8) for _ in range(NUM_LAYERS)]
    receiver_ids = _plan(tokens, transfers, False)[2] if into_cache else None
    parent, child = mp.Pipe()
    receiver = mp.get_context("spawn").Process(target=_raw_receiver, args=(child, transfers * NUM_LAYERS, receiver_ids))
    receiver.start()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(parent.recv())
    time.sleep(0.2)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(transfers):
        for layer in range(NUM_LAYERS):
            if checksum:
                xxhash.xxh3_64_intdigest(payloads[layer])
            push.send_multipart([b"h" * 64, payloads[layer]], copy=False, track=track)
    result = parent.recv()
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    receiver.join(30)
    push.close(linger=0)
    return Measurement(seconds, result[1], cpu_s + result[2])


def summarize(measured: list[Measurement]) -> dict[str, float]:
    """Best and median GB/s, median CPU seconds (both processes) per GB moved."""
    rates = [m.bytes / m.seconds / 1e9 for m in measured]
    return {"gb_per_s_best": max(rates), "gb_per_s_median": statistics.median(rates),
            "gb_per_s_all": rates, "cpu_s_per_gb_median": statistics.median(m.cpu_s / m.bytes * 1e9 for m in measured),
            "bytes_per_measurement": measured[-1].bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="prompt tokens per transfer")
    parser.add_argument("--transfers", type=int, default=20, help="transfers per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per path")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--paths", metavar="TEXT[,TEXT...]",
                        help="only the paths whose names contain one of these (the two raw baselines always run)")
    args = parser.parse_args(argv)
    paths = {
        "raw pyzmq": lambda: raw_pyzmq(args.tokens, args.transfers),
        "raw pyzmq, tracked sends": lambda: raw_pyzmq(args.tokens, args.transfers, track=True),
        "raw pyzmq + sender checksum": lambda: raw_pyzmq(args.tokens, args.transfers, checksum=True),
        "raw pyzmq + copy into the cache": lambda: raw_pyzmq(args.tokens, args.transfers, into_cache=True),
        "connector zmq": lambda: connector_path("zmq", args.tokens, args.transfers),
        "connector zmq, frames first": lambda: connector_path("zmq", args.tokens, args.transfers, frames_first=True),
        "connector zmq, libzmq receiver": lambda: connector_path("zmq", args.tokens, args.transfers,
                                                                 receiver_kind="libzmq"),
        "connector zmq, frames first, libzmq": lambda: connector_path("zmq", args.tokens, args.transfers,
                                                                      receiver_kind="libzmq", frames_first=True),
        "frames first, engine Python busy": lambda: connector_path("zmq", args.tokens, args.transfers,
                                                                   frames_first=True, python_busy=True),
        "frames first, Python busy, libzmq": lambda: connector_path("zmq", args.tokens, args.transfers,
                                                                    receiver_kind="libzmq", frames_first=True,
                                                                    python_busy=True),
        "connector zmq, scattered blocks": lambda: connector_path("zmq", args.tokens, args.transfers, scattered=True),
        "connector grpc": lambda: connector_path("grpc", args.tokens, args.transfers),
    }
    if args.paths:
        wanted = [text.strip() for text in args.paths.split(",") if text.strip()]
        for text in wanted:
            if not any(text in name for name in paths):
                parser.error(f"--paths: {text!r} names none of the paths ({'; '.join(paths)})")
        baselines = ("raw pyzmq", "raw pyzmq + copy into the cache")
        paths = {name: run for name, run in paths.items() if name in baselines or any(text in name for text in wanted)}
    runs: dict[str, list[Measurement]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # interleaved, so a noisy moment hits every path alike
        for name, run in paths.items():
            runs[name].append(run())
    results = {name: summarize(measured) for name, measured in runs.items()}
    baseline, placed = results["raw pyzmq"], results["raw pyzmq + copy into the cache"]
    print(f"KV transfer, {args.tokens}-token prompts x {args.transfers} transfers, {NUM_LAYERS} layers, "
          f"{baseline['bytes_per_measurement'] / 1e6:.0f} MB per measurement, {args.repeats} measurements each, "
          "two processes")
    print(f"{'path':<34} {'GB/s (best)':>12} {'GB/s (median)':>14} {'vs raw':>7} {'vs raw+copy':>12} "
          f"{'CPU s/GB':>9} {'CPU vs raw':>11}")
    for name, row in results.items():
        row["ratio_to_raw_pyzmq"] = row["gb_per_s_median"] / baseline["gb_per_s_median"]
        row["ratio_to_raw_pyzmq_with_copy"] = row["gb_per_s_median"] / placed["gb_per_s_median"]
        row["cpu_ratio_to_raw_pyzmq"] = row["cpu_s_per_gb_median"] / baseline["cpu_s_per_gb_median"]
        print(f"{name:<34} {row['gb_per_s_best']:>12.3f} {row['gb_per_s_median']:>14.3f} "
              f"{row['ratio_to_raw_pyzmq']:>6.0%} {row['ratio_to_raw_pyzmq_with_copy']:>11.0%} "
              f"{row['cpu_s_per_gb_median']:>9.3f} {row['cpu_ratio_to_raw_pyzmq']:>10.0%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"tokens": args.tokens, "transfers": args.transfers, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
