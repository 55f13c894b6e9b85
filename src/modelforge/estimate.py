"""Token estimates for calls whose provider reported no usage (e.g. a stream without
`stream_usage`). An estimate is always labelled: `tiktoken:<encoding>`, or `chars/4`
when no tiktoken encoding is available on this machine.

The counting itself is `modelforge.tokens`'s: the same encodings and the same chat
framing. The handlers only have the texts of a call, so this module counts texts.
"""

from __future__ import annotations

from collections.abc import Iterable
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
