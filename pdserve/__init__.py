"""pdserve: disaggregated LLM serving.

The public facade: the client SDK (`Client`, `AsyncClient`) and the CLI (`pdserve.cli`). Importing
`pdserve` needs only grpcio and protobuf (a client-only install); servers live in `orchestrator`/`workers`.
"""

__version__ = "0.1.0"
