"""The Python examples of docs/api.md run as written against live servers (addresses swapped in)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fakes.servers import BackgroundServers

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


@pytest.fixture(scope="module")
def servers():
    with BackgroundServers() as running:
        yield running


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_an_example_runs(servers, code, capsys):
    code = code.replace("127.0.0.1:50051", servers.grpc_target).replace("http://127.0.0.1:8000", servers.http_url)
    exec(compile(code, str(DOC), "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip()
