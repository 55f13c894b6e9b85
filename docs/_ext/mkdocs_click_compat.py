"""MkDocs hook: two fixes to mkdocs-click 0.9's rendering of our commands.

- click >= 8.3 marks "no default" with a `Sentinel.UNSET` object, which mkdocs-click
  prints verbatim in the options table (mkdocs/mkdocs-click#95). Render it as click
  did before: `False` for a flag, otherwise nothing.
- click keeps a paragraph that follows a `\\b` line as it is (our example blocks);
  mkdocs-click drops the marker and Markdown then joins the lines into one. Render
  those paragraphs as code blocks.

Both patches are skipped if mkdocs-click's internals have moved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import click

try:
    from mkdocs_click import _docs
except ImportError:  # pragma: no cover - the extension is not installed
    _docs = None  # type: ignore[assignment]


def _is_unset(value: Any) -> bool:
    return type(value).__name__ == "Sentinel" and getattr(value, "name", "") == "UNSET"


def _fix_defaults(original: Callable[[click.Option], str]) -> Callable[[click.Option], str]:
    def row(option: click.Option) -> str:
        if _is_unset(option.default):
            option = copy.copy(option)
            option.default = False if option.is_flag else None
        return original(option)

    return row


def _fence_verbatim(original: Callable[..., Iterator[str]]) -> Callable[..., Iterator[str]]:
    def description(ctx: click.Context, *args: Any, **kwargs: Any) -> Iterator[str]:
        state = "prose"  # "marked" right after a \b line, "open" inside a fence
        for line in original(ctx, *args, **kwargs):
            if line.strip() == "\b":
                state = "marked"
                continue
            if state == "marked" and line.strip():
                if line.rstrip().endswith(":") and not line.startswith(" "):
                    yield line  # an "Examples:" heading stays prose
                    yield ""
                    line = None
                yield "```text"
                state = "open"
                if line is None:
                    continue
            elif state == "open" and not line.strip():
                yield "```"
                state = "prose"
            yield line
        if state == "open":
            yield "```"

    return description


def on_config(config: Any) -> Any:
    if _docs is None or getattr(_docs, "_modelforge_patched", False):
        return config
    if hasattr(_docs, "_format_table_option_row"):
        _docs._format_table_option_row = _fix_defaults(_docs._format_table_option_row)
    if hasattr(_docs, "_make_description"):
        _docs._make_description = _fence_verbatim(_docs._make_description)
    _docs._modelforge_patched = True
    return config
