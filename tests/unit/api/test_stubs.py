"""The generated protobuf/gRPC stubs are fresh, and live in a package of ours (not a top-level `proto`)."""

from __future__ import annotations

import pytest


def test_committed_stubs_match_the_proto_sources():
    from orchestrator.api import protogen

    stale = protogen.stale_files()
    assert not stale, f"stale generated stubs {stale}: run `python -m orchestrator.api.protogen`"


def test_the_stubs_are_not_a_top_level_proto_package():
    import orchestrator.api.pb.inference_pb2 as inference

    assert inference.__name__ == "orchestrator.api.pb.inference_pb2"
    assert inference.DESCRIPTOR.package == "pdserve.v1"
    with pytest.raises(ModuleNotFoundError):
        __import__("pdserve.v1")
