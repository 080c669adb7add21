"""Generated protobuf and gRPC stubs of package pdserve.v1 (do not edit: `python -m orchestrator.api.protogen`)."""
