"""Schema of the usage log, as plain migrations in order. Never edit a shipped one."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from modelforge.schema import (
    COST_PART_COLUMNS,
    MIGRATIONS_TABLE,
    REPORT_SUMMED,
    ROLLUP_KEYS,
    ROLLUP_SUMS,
    TOKEN_COLUMNS,
    rollup_batch_sql,
    rollup_key_values,
    rollup_sum_values,
)

migrations = Migrations("modelforge")
assert migrations.migrations_table == MIGRATIONS_TABLE


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


@migrations()
def m002_hourly_rollup(db: Database) -> None:
    """Hourly totals, so common reports read thousands of rows, not millions.

    The writer folds each inserted batch in with one statement (a trigger per row cost a
    quarter of the insert time); a trigger handles deletions (`usage prune`), which are
    rare. NULL keys are stored as '' because NULLs never conflict in a unique index.
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
    subtract = ", ".join(
        f"{s} = {s} - ({v})" for s, v in zip(ROLLUP_SUMS, rollup_sum_values("OLD"))
    )
    match = " AND ".join(f"{k} = {v}" for k, v in zip(ROLLUP_KEYS, rollup_key_values("OLD")))
    db.execute(
        f"""CREATE TRIGGER calls_hourly_delete AFTER DELETE ON calls BEGIN
            UPDATE calls_hourly SET {subtract} WHERE {match};
        END"""
    )
    db.execute(rollup_batch_sql(), [0])


@migrations()
def m090_billed(db: Database) -> None:
    """What the providers billed, as `modelforge reconcile` fetched it from their Admin APIs.

    One figure per UTC day, billing model name and line item: a cost (`amount_usd`, exact
    decimal text) or a token count (`tokens`). Each records the endpoint it came from and
    when it was fetched; a later fetch of the same days replaces them.
    """
    db.execute(
        """CREATE TABLE billed (
            provider TEXT NOT NULL,
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            line_item TEXT NOT NULL,
            token_class TEXT NOT NULL,
            service_tier TEXT NOT NULL,
            amount_usd TEXT,
            tokens INTEGER,
            source TEXT NOT NULL,
            fetched_at TEXT NOT NULL,
            PRIMARY KEY (provider, day, model, line_item)
        ) WITHOUT ROWID"""
    )
