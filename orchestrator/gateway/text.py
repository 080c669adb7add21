"""Text at the gateway: prompts to token ids, token ids back to text, and stop strings.

The gateway tokenizes once (the router hashes the ids, both engines get the same ids) and detokenizes
once for the whole stream, whichever engines produced its tokens (the prefill worker's first token,
the decode worker's rest, a migrated request's continuation): so the text is the same as one engine's.
- `PromptTokenizer`: text, token ids or chat messages -> prompt ids (chat template, start-in-thinking).
- `IncrementalDetokenizer`: new token ids -> new text, holding back an incomplete UTF-8 character.
- `StopMatcher`: cuts the text at the first stop string, holding back what could be the start of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.errors import InvalidRequest
from orchestrator.request import Prompt

DETOKENIZE_CONTEXT_TOKENS = 6  # prompt tokens decoded with the first new ones (leading spaces, merges)


class PromptTokenizer:
    """The model's Hugging Face tokenizer, as the gateway uses it."""

    def __init__(self, model_dir: str, think_start: str = "<think>", think_end: str = "</think>") -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.vocab_size = len(self._tokenizer)
        self.think_start_ids = self.delimiter_ids(think_start)
        self.think_end_ids = self.delimiter_ids(think_end)

    @property
    def hf(self) -> Any:
        return self._tokenizer

    def delimiter_ids(self, text: str) -> tuple[int, ...]:
        """Ids of `text` encoded on its own, without special tokens (how delimiters are matched)."""
        ids = tuple(self._tokenizer.encode(text, add_special_tokens=False))
        if not ids:
            raise ValueError(f"{text!r} encodes to no tokens")
        return ids

    def encode(self, prompt: Prompt, *, start_thinking: bool = False) -> list[int]:
        """The prompt's token ids; with `start_thinking` they end with the start delimiter.

        Raises InvalidRequest for token ids outside the vocabulary or a chat the template refuses."""
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is outside the model's vocabulary of {self.vocab_size}: "
                                     "send ids the model's tokenizer produces")
        elif prompt.messages is not None:
            ids = self._chat(prompt)
        else:
            ids = list(self._tokenizer.encode(prompt.text or ""))
        if start_thinking and ids[-len(self.think_start_ids):] != list(self.think_start_ids):
            ids += self.think_start_ids
        return ids

    def _chat(self, prompt: Prompt) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages or ()]
        try:
            ids = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # jinja2 raises its own errors (TemplateError and others) for refused chats
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}") from None
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)


class IncrementalDetokenizer:
    """New token ids -> the text they add, decoded with a little context (the prefix/read offsets
    method): text that ends in an incomplete UTF-8 sequence is held back until the next token."""

    def __init__(self, tokenizer: PromptTokenizer, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-DETOKENIZE_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, new_ids: Sequence[int]) -> str:
        """The text the new ids complete ('' while a character is still incomplete)."""
        if not new_ids:
            return ""
        self._ids.extend(new_ids)
        before = self._tokenizer.decode(self._ids[self._prefix:self._read])
        after = self._tokenizer.decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is held back, at the end of the stream."""
        before = self._tokenizer.decode(self._ids[self._prefix:self._read])
        after = self._tokenizer.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):] if len(after) > len(before) else ""


class StopMatcher:
    """Finds the first stop string in a stream of text pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that can be sent now; once a stop string appears, the text before it and `stopped`."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[:min(hits)]
        cut = max(len(buffer) - self._hold, 0)
        self._held = buffer[cut:]
        return buffer[:cut]

    def flush(self) -> str:
        """What was held back, when the stream ends without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
