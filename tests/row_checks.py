"""Checks on `calls` rows that several test modules share."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

from modelforge.usage import MAX_TOKENS

COUNT_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "reasoning_tokens",
    "output_audio_tokens",
)


def assert_row_consistent(row: dict[str, Any]) -> None:
    """A row's totals agree with its parts, and its money columns with each other."""
    for name in COUNT_COLUMNS:
        assert 0 <= row[name] <= MAX_TOKENS
    assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"]
    parts = row["cache_read_tokens"] + row["cache_write_tokens"] + row["cache_write_1h_tokens"]
    assert parts + row["input_audio_tokens"] <= row["input_tokens"]
    assert row["reasoning_tokens"] + row["output_audio_tokens"] <= row["output_tokens"]
    if row["cost_usd"] is not None:
        total = Decimal(row["cost_usd"])
        assert total >= 0
        if row["cost_pusd"] is not None:  # NULL only past $9.2M for one call
            assert total * 10**12 == row["cost_pusd"]
        columns = ("input", "cache_read", "cache_write", "output", "reasoning", "audio")
        assert sum(Decimal(row[f"cost_{c}"]) for c in columns) == total


def assert_anthropic_cache_costs(row: dict[str, Any]) -> None:
    """The wire server's Anthropic reply with cache reads and 5-minute and 1-hour writes,
    on claude-sonnet-4-5 ($3 in, $0.30 read, $3.75 5m write, $6 1h write, $15 out)."""
    assert row["provider"] == "anthropic"
    # Anthropic's input_tokens excludes the cache: 10 + 200 read + 300 written = 510.
    assert row["input_tokens"] == 510
    assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (200, 100)
    assert (row["cache_write_1h_tokens"], row["output_tokens"]) == (200, 7)
    # input 10 * 3 = 30; read 200 * 0.3 = 60; 5m write 100 * 3.75 = 375;
    # 1h write 200 * 6 = 1200; output 7 * 15 = 105 -> 1770 per 1M
    assert row["cost_input"] == "0.00003"
    assert row["cost_cache_read"] == "0.00006"
    assert row["cost_cache_write"] == "0.001575"
    assert row["cost_output"] == "0.000105"
    assert row["cost_usd"] == "0.00177"
    assert row["cost_pusd"] == 1_770_000_000
    assert_row_consistent(row)


def row_for_table(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The part of a current `record_row` that an older log's `calls` table has columns
    for: a row as the model-forge of that schema would have written it."""
    columns = {name for _, name, *_ in conn.execute("PRAGMA table_info(calls)")}
    return {key: value for key, value in row.items() if key in columns}
