"""Names shared by the log's writer, its migrations and its reports.

Kept apart from `migrations.py` so that opening an up-to-date log never imports
sqlite-utils (which imports pandas when it is installed: a third of a second).
"""

from __future__ import annotations

# Every migration, in order; a log whose migrations table lists them all is current.
MIGRATION_NAMES = ("m001_create_calls", "m002_hourly_rollup", "m090_billed")
MIGRATIONS_TABLE = "_sqlite_migrations"

# Token columns, in the order they appear in the table and in CallRecord.usage.
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "total_tokens",
)
COST_PART_COLUMNS = (
    "cost_input",
    "cost_cache_read",
    "cost_cache_write",
    "cost_output",
    "cost_reasoning",
    "cost_audio",
)


# Per-row columns that reports add up.
REPORT_SUMMED = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_pusd",
    "priced",
    "estimated",
)
ROLLUP_KEYS = ("hour", "provider", "model", "agent", "status", "priced", "estimated")
ROLLUP_SUMS = (
    "calls",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_pusd",
)


def rollup_key_values(row: str) -> list[str]:
    return [
        f"substr({row}.ts, 1, 13)",
        f"coalesce({row}.provider, '')",
        f"coalesce({row}.response_model, {row}.model, '')",
        f"coalesce({row}.agent, '')",
        f"coalesce({row}.status, '')",
        f"{row}.priced",
        f"{row}.estimated",
    ]


def rollup_sum_values(row: str) -> list[str]:
    return [
        "1",
        f"{row}.input_tokens",
        f"{row}.cache_read_tokens",
        f"{row}.cache_write_tokens + {row}.cache_write_1h_tokens",
        f"{row}.output_tokens",
        f"{row}.reasoning_tokens",
        f"coalesce({row}.cost_pusd, 0)",
    ]


def rollup_batch_sql() -> str:
    """Fold the rows inserted after id `?` into `calls_hourly` (one statement per batch).

    Run in the inserting transaction, so the ids above the old maximum are exactly the rows
    it added: rows ignored as duplicates are never counted.
    """
    keys = ", ".join(ROLLUP_KEYS)
    key_values = ", ".join(v.replace("NEW.", "") for v in rollup_key_values("NEW"))
    sums = ", ".join(
        "count(*)" if v == "1" else f"sum({v.replace('NEW.', '')})"
        for v in rollup_sum_values("NEW")
    )
    add = ", ".join(f"{s} = {s} + excluded.{s}" for s in ROLLUP_SUMS)
    return (
        f"INSERT INTO calls_hourly ({keys}, {', '.join(ROLLUP_SUMS)}) "
        f"SELECT {key_values}, {sums} FROM calls WHERE id > ? "
        f"GROUP BY {', '.join(str(i + 1) for i in range(len(ROLLUP_KEYS)))} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {add}"
    )
