"""Token estimates for calls whose provider reported no usage (e.g. a stream without
`stream_usage`). An estimate is always labelled: `tiktoken:<encoding>`, or
`chars/4` when no tiktoken encoding is available on this machine.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelforge.usage import Usage

_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
# Per OpenAI's cookbook: each chat message costs a few tokens of framing.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

_lock = threading.Lock()
_encoders: dict[str, Any] = {}


def _cache_dir() -> Path | None:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            value = os.environ[var]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def encoding_on_disk(encoding: str) -> bool:
    """Whether tiktoken can load `encoding` without a download."""
    # tiktoken downloads a missing encoding with no timeout; a user's call must never
    # wait on that, so only encodings already on disk are used.
    directory = _cache_dir()
    if directory is None:
        return False
    name = hashlib.sha1(_URL.format(encoding).encode()).hexdigest()
    return (directory / name).is_file()


def encoding_name_for(model: str | None) -> str:
    name = (model or "").lower()
    if any(name.startswith(p) for p in ("gpt-3.5", "gpt-4-", "gpt-4", "text-embedding")) and (
        not name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5"))
    ):
        return "cl100k_base"
    return "o200k_base"


def _encoder(encoding: str) -> Any | None:
    with _lock:
        if encoding in _encoders:
            return _encoders[encoding]
    encoder = None
    if encoding_on_disk(encoding):
        try:
            import tiktoken

            encoder = tiktoken.get_encoding(encoding)
        except Exception:
            encoder = None
    with _lock:
        _encoders[encoding] = encoder
    return encoder


def count_tokens(texts: Iterable[str], model: str | None = None) -> tuple[int, str]:
    """Token count of `texts` and the method used to get it."""
    wanted = encoding_name_for(model)
    for encoding in dict.fromkeys((wanted, "o200k_base", "cl100k_base")):
        encoder = _encoder(encoding)
        if encoder is not None:
            total = sum(len(encoder.encode(t, disallowed_special=())) for t in texts if t)
            return total, f"tiktoken:{encoding}"
    return sum((len(t) + 3) // 4 for t in texts if t), "chars/4"


def estimate_usage(
    prompt_texts: list[str], output_texts: list[str], model: str | None, *, chat: bool = True
) -> tuple[Usage, str]:
    """A labelled estimate for one call: prompt and output counted separately."""
    prompt, method = count_tokens(prompt_texts, model)
    if chat and prompt_texts:
        prompt += TOKENS_PER_MESSAGE * len(prompt_texts) + TOKENS_PER_REPLY
    output, _ = count_tokens(output_texts, model)
    return Usage(input_tokens=prompt, output_tokens=output, estimated=True), method


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
