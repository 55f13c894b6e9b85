"""The context window at call time: refuse a prompt that cannot fit before it is sent,
and the window a finished call is logged against.

The adapters (`UsageCallbackHandler(guard_context=True)`, `LlamaIndexCallbackHandler`)
call `guard_call()` when a call starts; `CallRecord.context_limit` uses
`recorded_window()`. Limits come from the price catalog; docs/tokens.md gives the rules.

Claude Sonnet 4 and 4.5 have a 200K window in the catalog, and a long-context price
tier above 200K that only Anthropic's 1M-context beta (the `anthropic-beta:
context-1m-…` header) can reach. Whether a call opted in is invisible here (LangChain
keeps `betas` out of its invocation params; a header may sit on an HTTP client), so the
guard holds such a model to the 1M window: a guard that blocks a call the provider
would serve is worse than one that leaves an over-long prompt to the provider's own
error, which costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from modelforge.errors import ContextWindowExceededError

if TYPE_CHECKING:
    from modelforge.pricing.catalog import CatalogEntry

# Anthropic's 1M-context beta ("Context windows: 1M token context window").
LONG_CONTEXT_WINDOW = 1_000_000
# Where frameworks put the most output a call may ask for, most specific first:
# OpenAI's reasoning-era name, the classic name, Gemini's, LlamaIndex's metadata.
MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens", "num_output")


def _catalog_window(entry: CatalogEntry | None) -> int | None:
    # A limit of 0 in a table means "not given": unknown stays None, never 0.
    return entry.context_limit if entry is not None and entry.context_limit else None


def _has_long_context_beta(entry: CatalogEntry, window: int) -> bool:
    """A Claude model priced for prompts its catalog window cannot hold: the 1M beta."""
    from modelforge.pricing.cost import is_anthropic_family

    return is_anthropic_family(entry) and any(tier.size >= window for tier in entry.tiers)


def guard_window(entry: CatalogEntry | None) -> int | None:
    """The most context a call to `entry`'s model may use; None when unknown."""
    window = _catalog_window(entry)
    if entry is None or window is None:
        return None
    return max(window, LONG_CONTEXT_WINDOW) if _has_long_context_beta(entry, window) else window


def recorded_window(entry: CatalogEntry | None, input_tokens: int) -> int | None:
    """The window a finished call is logged against: the catalog's, or the 1M beta
    window when the call's input went past the catalog's (it can only have used it)."""
    window = _catalog_window(entry)
    if entry is None or window is None:
        return None
    if input_tokens > window and _has_long_context_beta(entry, window):
        return max(window, LONG_CONTEXT_WINDOW)
    return window


def max_output_tokens(*sources: Mapping[str, Any] | None) -> int | None:
    """The first positive output cap in `sources` (per-call kwargs before model
    settings), under any of `MAX_OUTPUT_KEYS`; None when no source sets one."""
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for key in MAX_OUTPUT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def guard_call(
    model: str,
    messages: str | Iterable[Any],
    *,
    provider: str | None = None,
    tools: Iterable[Any] | None = None,
    max_output: int | None = None,
) -> None:
    """Raise `ContextWindowExceededError` when `messages` (and `tools`), plus
    `max_output`, exceed `model`'s window; exactly at the window passes. A model with
    no known window is never blocked, and then nothing is counted."""
    from modelforge.pricing.resolve import resolve
    from modelforge.tokens import count_tokens

    window = guard_window(resolve(model, provider))
    if window is None:
        return
    used = count_tokens(model, messages, tools).tokens
    if used + (max_output or 0) > window:
        raise ContextWindowExceededError(model, used, window, max_output or 0)
