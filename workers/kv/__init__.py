"""KV-cache transfer between a prefill worker and a decode worker.

- `wire`: the frame (header + raw bytes), checksums, dtype names.
- `assembler`: the receiving side's bookkeeping, transport-independent: which transfers are
  expected, where their blocks go, what has arrived, what failed (checksum, timeout, abort).
- `transport`: senders and receivers: ZeroMQ (zero-copy frames), gRPC stream (one port), and an
  in-memory loopback twin for tests. Control (abort, stats) is gRPC on the receiver's port.
- `connector`: the vLLM `KVConnectorBase_V1` that plugs all of this into the engines.
"""
