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
    calls.create_index(["ts"])
    calls.create_index(["model", "ts"])
    calls.create_index(["provider", "ts"])
    calls.create_index(["agent", "ts"])
