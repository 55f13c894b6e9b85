"""Schema of the usage log, as plain migrations in order. Never edit a shipped one."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("modelforge")

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


@migrations()
def m001_create_calls(db: Database) -> None:
    columns: dict[str, type] = {
        "id": int,
        "ts": str,
        "run_id": str,
        "parent_run_id": str,
        "trace_id": str,
        "framework": str,
        "operation": str,
        "provider": str,
        "model": str,
        "response_model": str,
        "catalog_model": str,
    }
    columns.update(dict.fromkeys(TOKEN_COLUMNS, int))
    # Money is exact decimal text. cost_pusd holds the same amount in pico-USD (1e-12) as
    # an integer, so SQL can SUM it exactly: any price with up to 6 decimals per 1M tokens
    # gives a whole number of pico-dollars.
    columns["cost_usd"] = str
    columns["cost_pusd"] = int
    columns.update(dict.fromkeys(COST_PART_COLUMNS, str))
    columns.update(
        {
            "priced": int,
            "price_source": str,
            "price_flags": str,
            "estimated": int,
            "estimate_method": str,
            "cache_hit": int,
            "service_tier": str,
            "status": str,
            "error_type": str,
            "latency_ms": float,
            "ttft_ms": float,
            "agent": str,
            "run_name": str,
            "tags": str,
            "attrs": str,
            "anomalies": str,
        }
    )
    calls = db.table("calls")
    calls.create(columns, pk="id", not_null={"ts", "run_id"})
    calls.create_index(["run_id"], unique=True)
    # Covers every column a report reads, so filtered scans never touch the wide rows.
    calls.create_index(
        ["ts", "provider", "model", "response_model", "agent", *REPORT_SUMMED, "status"],
        index_name="idx_calls_report",
    )
    db.execute(
        "CREATE INDEX idx_calls_unpriced ON calls (response_model, model, provider) "
        "WHERE priced = 0"
    )


def _rollup_key_values(row: str) -> list[str]:
    return [
        f"substr({row}.ts, 1, 13)",
        f"coalesce({row}.provider, '')",
        f"coalesce({row}.response_model, {row}.model, '')",
        f"coalesce({row}.agent, '')",
        f"coalesce({row}.status, '')",
        f"{row}.priced",
        f"{row}.estimated",
    ]


def _rollup_sum_values(row: str) -> list[str]:
    return [
        "1",
        f"{row}.input_tokens",
        f"{row}.cache_read_tokens",
        f"{row}.cache_write_tokens + {row}.cache_write_1h_tokens",
        f"{row}.output_tokens",
        f"{row}.reasoning_tokens",
        f"coalesce({row}.cost_pusd, 0)",
    ]


@migrations()
def m002_hourly_rollup(db: Database) -> None:
    """Hourly totals kept by triggers, so common reports read thousands of rows, not millions.

    Triggers (not the writer) keep it, so rows ignored as duplicates, other processes'
    writes and deletions by `usage prune` all stay consistent. NULL keys are stored as ''
    because NULLs never conflict in a unique index.
    """
    key_columns = ", ".join(
        f"{k} {'INTEGER' if k in ('priced', 'estimated') else 'TEXT'} NOT NULL" for k in ROLLUP_KEYS
    )
    sum_columns = ", ".join(f"{s} INTEGER NOT NULL DEFAULT 0" for s in ROLLUP_SUMS)
    keys = ", ".join(ROLLUP_KEYS)
    db.execute(
        f"CREATE TABLE calls_hourly ({key_columns}, {sum_columns}, PRIMARY KEY ({keys})) "
        "WITHOUT ROWID"
    )
    values = ", ".join(_rollup_key_values("NEW") + _rollup_sum_values("NEW"))
    add = ", ".join(f"{s} = {s} + excluded.{s}" for s in ROLLUP_SUMS)
    db.execute(
        f"""CREATE TRIGGER calls_hourly_insert AFTER INSERT ON calls BEGIN
            INSERT INTO calls_hourly ({keys}, {", ".join(ROLLUP_SUMS)}) VALUES ({values})
            ON CONFLICT ({keys}) DO UPDATE SET {add};
        END"""
    )
    subtract = ", ".join(
        f"{s} = {s} - ({v})" for s, v in zip(ROLLUP_SUMS, _rollup_sum_values("OLD"))
    )
    match = " AND ".join(f"{k} = {v}" for k, v in zip(ROLLUP_KEYS, _rollup_key_values("OLD")))
    db.execute(
        f"""CREATE TRIGGER calls_hourly_delete AFTER DELETE ON calls BEGIN
            UPDATE calls_hourly SET {subtract} WHERE {match};
        END"""
    )
