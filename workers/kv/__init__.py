"""KV-cache transfer between a prefill worker and a decode worker.

- `wire`: the frame (header + raw bytes), checksums, dtype names.
- `assembler`: the receiving side's bookkeeping, transport-independent: which transfers are
  expected, where their blocks go, what has arrived, what failed (checksum, timeout, abort).
- `transport`: senders and receivers: ZeroMQ (zero-copy frames), gRPC stream (one port), and an
  in-memory loopback twin for tests. Control (abort, stats) is gRPC on the receiver's port.
- `zmtp`: the default ZeroMQ receiver, a ZMTP 3.1 PULL endpoint that reads each payload off the socket
  straight into the blocks allocated for it; `receiving` starts it (or libzmq's) with the assembler.
- `blocks`: moving blocks between an engine's cache and the wire (zero-copy views, gathers, placement).
- `connector`: the vLLM `KVConnectorBase_V1` that plugs all of this into the engines.
"""
