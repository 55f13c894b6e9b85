"""Counting speed: `count_tokens` on a ~4k-token chat against tokencost's
`count_message_tokens` on the same messages, in the same run; and how far the
no-encoding fallback (1 token per 4 characters) lands from o200k_base.

Run from anywhere: `python bench/bench_tokens.py`. It needs tiktoken's o200k_base and
cl100k_base on disk (TIKTOKEN_CACHE_DIR; ../shared/tiktoken-cache is used when it
exists) and `pip install tokencost` (in the dev extra).
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIKTOKEN_CACHE = REPO.parent / "shared" / "tiktoken-cache"
TARGET_TOKENS = 4000
# Both counters spend their time in tiktoken's encoder; ours also normalises every
# message and resolves the model in the catalog. Within this factor of tokencost is ok.
TARGET_RATIO = 1.25

_home = tempfile.mkdtemp(prefix="modelforge-bench-")
atexit.register(shutil.rmtree, _home, True)
for _var, _sub in (("CONFIG", "config"), ("CACHE", "cache"), ("DATA", "data")):
    os.environ[f"MODELFORGE_{_var}_DIR"] = os.path.join(_home, _sub)
os.environ.pop("MODELFORGE_PRICES", None)
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))

from modelforge import count_tokens  # noqa: E402
from modelforge.tokens import encoding_on_disk  # noqa: E402

PROSE = (
    "the model reads every token of the prompt before it writes a single word of its "
    "answer so a long history costs more on each turn than the turn before it and a "
    "budget that ignores the context window will be surprised by the invoice at the end "
    "of the month when the agent loops over its tools again and again"
)
WORDS = PROSE.split()


def chat(target: int) -> list[dict[str, str]]:
    """A deterministic conversation of about `target` o200k tokens (1 word ≈ 1 token)."""
    rng = random.Random(24)
    messages = [{"role": "system", "content": "You are a careful assistant. Answer briefly."}]
    words = 0
    while words < target:
        role = "user" if len(messages) % 2 else "assistant"
        length = rng.randint(40, 160)
        messages.append({"role": role, "content": " ".join(rng.choices(WORDS, k=length)) + "."})
        words += length + 4
    return messages


def per_call_ms(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Best of `repeat` runs, in milliseconds per call (the least disturbed run)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e3


def fallback_error(texts: dict[str, str]) -> list[tuple[str, str, str]]:
    """chars/4 against o200k_base (and cl100k_base) on a few kinds of text."""
    import tiktoken

    o200k, cl100k = tiktoken.get_encoding("o200k_base"), tiktoken.get_encoding("cl100k_base")
    rows = []
    for name, text in texts.items():
        exact = len(o200k.encode(text, disallowed_special=()))
        older = len(cl100k.encode(text, disallowed_special=()))
        guess = (len(text) + 3) // 4
        rows.append(
            (
                f"chars/4 vs o200k_base, {name}",
                f"{(guess - exact) / exact:+.0%}",
                f"{len(text) / exact:.2f} chars/token (cl100k_base {len(text) / older:.2f})",
            )
        )
    return rows


def corpora() -> dict[str, str]:
    docs = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md")))
    code = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted((REPO / "src" / "modelforge").rglob("*.py"))
    )
    return {
        "Markdown (docs/*.md)": docs,
        "Python (src/modelforge)": code,
        "the bench chat": "\n".join(m["content"] for m in chat(TARGET_TOKENS)),
    }


def main() -> int:
    if not (encoding_on_disk("o200k_base") and encoding_on_disk("cl100k_base")):
        print("skipped: o200k_base and cl100k_base are not on disk (set TIKTOKEN_CACHE_DIR)")
        return 0
    import logging

    from tokencost import count_message_tokens

    logging.getLogger("tokencost").setLevel(logging.ERROR)
    messages = chat(TARGET_TOKENS)
    ours = count_tokens("gpt-4o", messages)  # warms the encoder, catalog and resolver
    theirs = count_message_tokens(messages, "gpt-4o")
    ours_ms = per_call_ms(lambda: count_tokens("gpt-4o", messages), number=50)
    theirs_ms = per_call_ms(lambda: count_message_tokens(messages, "gpt-4o"), number=50)
    ratio = ours_ms / theirs_ms
    agree = ours.tokens == theirs

    rows: list[tuple[str, str, str]] = [
        ("chat", f"{len(messages)} messages", f"{ours.tokens:,} tokens on gpt-4o"),
        ("count_tokens()", f"{ours_ms:.3f} ms", f"{ours.tokens:,} tokens ({ours.method})"),
        ("tokencost count_message_tokens()", f"{theirs_ms:.3f} ms", f"{theirs:,} tokens"),
        ("ratio ours / tokencost", f"{ratio:.2f}x", f"target ≤ {TARGET_RATIO:g}x"),
        *fallback_error(corpora()),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>12}  {note}")
    verdict = "ok" if agree and ratio <= TARGET_RATIO else "missed"
    why = "counts agree" if agree else f"counts differ: {ours.tokens} vs {theirs}"
    print(f"verdict: {verdict} ({why}; {ratio:.2f}x tokencost's time, target ≤ {TARGET_RATIO:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
