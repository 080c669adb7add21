"""The API layer: gRPC and OpenAI-compatible HTTP servers, and the generated protobuf stubs (`pb/`).

Converts wire messages to `orchestrator.request.Request` and gateway results back; does nothing else.
`pb/` must stay importable from a client-only install (grpcio + protobuf, no Ray/vLLM/torch).
"""
