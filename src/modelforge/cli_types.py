"""Option types for the `modelforge` command: each checks its value while click parses
the command line, so a bad value is an `Error:` line and exit code 2 before any work.

Kept apart from `cli.py` so the commands there stay a list of options and one call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

# The largest count SQLite binds (a signed 64-bit integer), for options like -n.
SQL_INT_MAX = 2**63 - 1
# `modelforge.usage.MAX_TOKENS`, repeated so that parsing options does not import pydantic;
# a test checks the two agree.
MAX_TOKENS = 10**12


class TimeType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """`--since`/`--until`: 7d, 24h, 30m, 2w, a date or an ISO time → a UTC log timestamp."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from modelforge.report import ReportError, parse_when

        try:
            return parse_when(str(value))
        except ReportError as exc:
            self.fail(exc.detail, param, ctx)


class NonEmpty(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """Text that must say something: `--model "$UNSET"` would otherwise filter nothing."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.strip():
            self.fail("must not be empty", param, ctx)
        return text


class OutputPath(click.Path):
    """A file to write: a name, not a directory, in a directory that exists."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, writable=True, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not os.fspath(value):
            self.fail("must not be empty", param, ctx)  # "" would mean the current directory
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        folder = path.absolute().parent
        if not folder.is_dir():
            self.fail(f"{str(path)!r}: the directory {str(folder)!r} does not exist", param, ctx)
        return path


TIME = TimeType()
NON_EMPTY = NonEmpty()
# A token count, up to the most a record holds.
TOKENS = click.IntRange(0, MAX_TOKENS)
