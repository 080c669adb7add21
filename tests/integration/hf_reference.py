"""The answer-quality reference: what the model says in float32 with `transformers`, greedy.

Independent of vLLM: the same weights loaded with `AutoModelForCausalLM` in float32, the same prompt ids
as the gateway's (its own `PromptTokenizer` applies the chat template), one greedy step at a time with a
KV cache, stopping at EOS or after `max_tokens`. Each step records the margin between the top-1 and top-2
logits, so a divergence from it can be told apart from a genuine near-tie (numerical noise).

Life of a reference: `compute_references(model_dir, CHAT_PROMPTS)` loads the model (~0.5 GB), answers
every prompt one by one, frees the model and returns one `ReferenceAnswer` per prompt.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass

MAX_TOKENS = 32

# Short chat prompts of different kinds: facts, arithmetic, instructions, a list, a translation, a definition.
CHAT_PROMPTS = [
    "What is the capital of France?",
    "What is 12 plus 7?",
    "Who wrote the play Romeo and Juliet?",
    "List three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Write one sentence about the sea.",
    "What is the boiling point of water in Celsius?",
    "Give me a short tip for sleeping better.",
    "Explain in one sentence what photosynthesis is.",
    "Name the largest planet in our solar system.",
]


@dataclass(frozen=True)
class ReferenceAnswer:
    """The float32 greedy answer to one single-message chat prompt."""

    prompt: str
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]  # generated, ending with the EOS token when it came (as the engines report them)
    text: str  # decoded without special tokens, as the gateway does
    stopped_at_eos: bool
    margins: tuple[float, ...]  # per token: its logit minus the runner-up's
    runner_up_ids: tuple[int, ...]  # per token: the second most likely token at that step


def compute_references(model_dir: str, prompts: Sequence[str] = CHAT_PROMPTS,
                       max_tokens: int = MAX_TOKENS) -> list[ReferenceAnswer]:
    """Each prompt as the gateway tokenizes it (chat template, one user message), answered greedily."""
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.gateway.text import PromptTokenizer
    from orchestrator.request import ChatMessage, Prompt

    tokenizer = PromptTokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos_ids = _eos_ids(model, tokenizer)
    try:
        answers = []
        for prompt in prompts:
            prompt_ids = tokenizer.encode(Prompt(messages=(ChatMessage("user", prompt),)))
            tokens, stopped, margins, runners_up = _greedy(model, prompt_ids, max_tokens, eos_ids)
            answers.append(ReferenceAnswer(prompt, tuple(prompt_ids), tuple(tokens), tokenizer.decode(tokens),
                                           stopped, tuple(margins), tuple(runners_up)))
        return answers
    finally:
        del model
        gc.collect()


def _eos_ids(model, tokenizer) -> set[int]:
    """The ids that end an answer: the generation config's EOS (as vLLM reads it) and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) - {None}
    if tokenizer.hf.eos_token_id is not None:
        ids.add(tokenizer.hf.eos_token_id)
    return ids


def _greedy(model, prompt_ids: list[int], max_tokens: int, eos_ids: set[int]):
    """(tokens, stopped at EOS, top-1/top-2 margin per token, top-2 token per step)."""
    import torch

    tokens: list[int] = []
    margins: list[float] = []
    runners_up: list[int] = []
    cache = None
    step_ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        for _ in range(max_tokens):
            output = model(input_ids=step_ids, past_key_values=cache, use_cache=True)
            cache = output.past_key_values
            top = torch.topk(output.logits[0, -1].float(), 2)
            token = int(top.indices[0])
            margins.append(float(top.values[0] - top.values[1]))
            runners_up.append(int(top.indices[1]))
            tokens.append(token)
            if token in eos_ids:
                return tokens, True, margins, runners_up
            step_ids = torch.tensor([[token]])
    return tokens, False, margins, runners_up
