"""Token estimates for calls whose provider reported no usage (e.g. a stream without
`stream_usage`). An estimate is always labelled: `tiktoken:<encoding>`, or `chars/4`
when no tiktoken encoding is available on this machine.

The counting itself is `modelforge.tokens`'s: the same encodings and the same chat
framing. The handlers only have the texts of a call, so this module counts texts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modelforge.tokens import (
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    chat_framing,
    encoding_name_for,
    encoding_on_disk,
    text_counter,
)
from modelforge.usage import Usage

__all__ = [
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_REPLY",
    "HeldPrompt",
    "count_tokens",
    "encoding_name_for",
    "encoding_on_disk",
    "estimate_usage",
    "text_of",
]

TOKENS_PER_REPLY = REPLY_PRIMING


def count_tokens(texts: Iterable[str], model: str | None = None) -> tuple[int, str]:
    """Token count of `texts` and the method used to get it."""
    counter = text_counter(model)
    return counter.total(texts), counter.label


def estimate_usage(
    prompt_texts: list[str], output_texts: list[str], model: str | None, *, chat: bool = True
) -> tuple[Usage, str]:
    """A labelled estimate for one call: prompt and output counted separately."""
    counter = text_counter(model)
    prompt = counter.total(prompt_texts)
    if chat:
        prompt += chat_framing(len(prompt_texts))
    output = counter.total(output_texts)
    return Usage(input_tokens=prompt, output_tokens=output, estimated=True), counter.label


def text_of(content: Any) -> str:
    """Plain text of a message's content (a string or a list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return ""


# Prompt text held for open runs, in characters, over every handler in the process. A
# run that starts past it keeps only its prompt's estimated token count.
MAX_HELD_CHARS = 4_000_000
_held_chars = 0
_held_lock = threading.RLock()  # reentrant: __del__ may run inside it


@dataclass(slots=True)
class HeldPrompt:
    """An open run's prompt: its texts, held only until the run ends to estimate its
    tokens should the provider report none (never stored), or, past `MAX_HELD_CHARS`,
    only the estimate itself."""

    texts: list[str] | None
    chars: int
    chat: bool
    counted: tuple[int, str] | None = None  # (input tokens, method) when texts are not held

    @classmethod
    def of(cls, texts: list[str], model: str | None, operation: str) -> HeldPrompt:
        global _held_chars
        chat = operation == "chat"
        size = sum(len(text) for text in texts)
        with _held_lock:
            if _held_chars + size <= MAX_HELD_CHARS:
                _held_chars += size
                return cls(texts, size, chat)
        usage, method = estimate_usage(texts, [], model, chat=chat)
        return cls(None, 0, chat, (usage.input_tokens, method))

    def estimate(self, outputs: list[str], model: str | None) -> tuple[Usage, str]:
        """The call's estimated usage, from this prompt and the output texts."""
        if self.counted is None:
            return estimate_usage(self.texts or [], outputs, model, chat=self.chat)
        tokens, method = self.counted
        output, _ = count_tokens(outputs, model)
        return Usage(input_tokens=tokens, output_tokens=output, estimated=True), method

    def release(self) -> None:
        """Let go of the texts; the run is over."""
        global _held_chars
        with _held_lock:
            _held_chars -= self.chars
        self.texts, self.chars = None, 0

    def __del__(self) -> None:
        # A handler dropped with runs still open must not keep their share of the bound.
        if self.chars:
            self.release()


def held_chars() -> int:
    """Characters of prompt text held for open runs in this process, for tests and stats."""
    return _held_chars
