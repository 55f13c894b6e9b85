"""The log's schema: frozen migrations, the trigger-kept rollup, and logs we must not touch."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlite_utils

from modelforge import CallRecord, Usage, migrations, price, report, store
from modelforge.store import open_db
from row_checks import row_for_table

_SCHEMA = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"


def _fresh(path: Path, stop_after: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.apply(conn, stop_after=stop_after)
    return conn


def _record(run_id: str, ts: str, **tokens: int) -> CallRecord:
    usage = Usage.model_validate({"input_tokens": 1000, "output_tokens": 100} | tokens)
    return CallRecord(run_id=run_id, usage=usage, cost=price("gpt-4o", usage), ts=ts)


def _total(path: Path, **filters: Any) -> dict[str, Any]:
    conn = open_db(path, create=False)
    try:
        return report.usage_report(conn, [], report.Filters(**filters)).totals
    finally:
        conn.close()


def _by_model(path: Path) -> list[dict[str, Any]]:
    conn = open_db(path, create=False)
    try:
        return report.usage_report(conn, ["model"], report.Filters()).rows
    finally:
        conn.close()


def test_a_log_made_by_m001_alone_migrates_to_the_fresh_schema(tmp_path: Path) -> None:
    old = _fresh(tmp_path / "old.db", stop_after="m001_create_calls")
    assert migrations.applied(old) == ["m001_create_calls"]
    migrations.apply(old)
    new = _fresh(tmp_path / "new.db")
    assert old.execute(_SCHEMA).fetchall() == new.execute(_SCHEMA).fetchall()
    assert migrations.applied(old) == list(migrations.MIGRATION_NAMES)


def test_m001_and_m002_create_what_they_shipped_with(tmp_path: Path) -> None:
    # The schema sqlite-utils' Migrations made in the release that shipped m001 and m002,
    # as read from such a log: the literal migrations must make it byte for byte.
    conn = _fresh(tmp_path / "usage.db", stop_after="m002_hourly_rollup")
    rows = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    assert rows["calls"].startswith('CREATE TABLE "calls" (\n   "id" INTEGER PRIMARY KEY,\n')
    assert (
        rows["idx_calls_run_id"]
        == 'CREATE UNIQUE INDEX "idx_calls_run_id"\n    ON "calls" ("run_id")'
    )
    assert rows["_sqlite_migrations"] == (
        'CREATE TABLE "_sqlite_migrations" (\n   "id" INTEGER PRIMARY KEY,\n'
        '   "migration_set" TEXT,\n   "name" TEXT,\n   "applied_at" TEXT\n)'
    )
    assert rows["calls_hourly"].startswith("CREATE TABLE calls_hourly (hour TEXT NOT NULL,")
    assert "calls_hourly_delete" in rows
    # The recorded names are what sqlite-utils' Migrations("modelforge") reads back.
    assert sqlite_utils.Database(conn)["_sqlite_migrations"].count == 2


def test_m003_rebuilds_the_rollup_of_an_m002_log_from_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    conn = _fresh(path, stop_after="m002_hourly_rollup")
    rows = [
        row_for_table(
            conn, store.record_row(_record(f"r{i}", f"2026-11-0{1 + i % 2}T10:00:00.000000Z"))
        )
        for i in range(10)
    ]
    columns = list(rows[0])
    conn.executemany(
        f"INSERT INTO calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [tuple(r.values()) for r in rows],
    )
    conn.close()
    open_db(path).close()  # a writer migrates it
    # 10 calls × (1000 × $2.50 + 100 × $10) per 1M tokens = 10 × $0.0035
    assert _total(path)["cost_usd"] == Decimal("0.035")
    assert _total(path, since=report.parse_when("2026-11-02"))["calls"] == 5


def test_rows_written_by_any_tool_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    open_db(path).close()
    # A plain sqlite3 INSERT with only some columns, as a backfill script would write.
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO calls (ts, run_id, provider, model, input_tokens, output_tokens, "
        "cost_usd, status) VALUES ('2026-11-01T10:00:00.000000Z', 'plain-1', 'openai', "
        "'gpt-4o', 2000, 300, '0.008', 'ok')"
    )
    conn.commit()
    conn.close()
    # sqlite-utils, as `sqlite-utils insert` does it.
    sqlite_utils.Database(path)["calls"].insert(
        {
            "ts": "2026-11-01T11:00:00.000000Z",
            "run_id": "su-1",
            "model": "gpt-4o",
            "input_tokens": 1000,
            "output_tokens": 100,
            "cost_usd": "0.0035",
            "cost_pusd": 3_500_000_000,
            "priced": 1,
            "status": "ok",
        }
    )
    totals = _total(path)
    assert (totals["calls"], totals["input_tokens"], totals["output_tokens"]) == (2, 3000, 400)
    # $0.008 + $0.0035
    assert totals["cost_usd"] == Decimal("0.0115")
    assert totals["unpriced_calls"] == 0  # a cost and no `priced` column is priced

    # An update of a summed column and a delete move the rollup with the rows.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE calls SET cost_usd = '0.01', input_tokens = 2500 WHERE run_id = 'plain-1'")
    conn.execute("DELETE FROM calls WHERE run_id = 'su-1'")
    conn.commit()
    conn.close()
    totals = _total(path)
    assert (totals["calls"], totals["input_tokens"], totals["cost_usd"]) == (
        1,
        2500,
        Decimal("0.01"),
    )
    # The rollup answers `--by model`, the raw rows answer a tag filter: they agree.
    assert _by_model(path)[0]["cost_usd"] == Decimal("0.01")
