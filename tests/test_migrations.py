"""The log's schema: frozen migrations, the trigger-kept rollup, and logs we must not touch."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from modelforge import CallRecord, Usage, UsageLogError, migrations, price, report, store
from modelforge.store import UsageLog, open_db

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
        store.record_row(_record(f"r{i}", f"2026-11-0{1 + i % 2}T10:00:00.000000Z"))
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


def test_costs_past_64_bits_sum_exactly_in_the_rollup_and_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    cap = 10**12  # usage.MAX_TOKENS
    for i in range(3):
        usage = Usage(input_tokens=cap, output_tokens=cap)
        record = CallRecord(
            run_id=f"huge-{i}", usage=usage, cost=price("gpt-4o", usage), tags=("big",)
        )
        record.ts = "2026-11-01T10:00:00.000000Z"
        log.submit(record)
    small = _record("small", "2026-11-01T10:00:00.000000Z", cache_read_tokens=1)
    log.submit(small)
    assert log.flush()
    log.close()
    # Each huge call: 1e12 × $2.50 + 1e12 × $10 per 1M tokens = $12,500,000.
    # The small one: 999 × $2.50 + 1 × $1.25 + 100 × $10 per 1M = $0.00349875.
    expected = Decimal("37500000.00349875")
    assert _total(path)["cost_usd"] == expected  # from the rollup
    assert _total(path, tag="big")["cost_usd"] == Decimal("37500000")  # from the rows
    conn = open_db(path, create=False)
    assert report.usage_report(conn, ["framework"]).rows[0]["cost_usd"] == expected
    assert conn.execute("SELECT count(*) FROM calls WHERE cost_pusd IS NULL").fetchone() == (3,)


def test_a_log_from_a_newer_model_forge_is_read_but_never_written(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    log.submit(_record("r1", "2026-11-01T10:00:00.000000Z"))
    assert log.flush()
    log.close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('modelforge', 'm999_from_the_future', '2027-01-01')"
    )
    conn.commit()
    conn.close()
    before = path.read_bytes()

    with pytest.raises(UsageLogError, match=r"written by a newer model-forge.*m999"):
        open_db(path)
    assert _total(path)["calls"] == 1  # reports still read it
    later = UsageLog(path)
    later.submit(_record("r2", "2026-11-01T10:00:00.000000Z"))
    assert later.flush(timeout=2) is False
    assert later.stats().pending == 1
    later.close(timeout=2)
    assert path.read_bytes() == before


def test_a_file_with_a_calls_table_but_not_our_migrations_is_refused_untouched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, phone TEXT)")
    conn.execute("INSERT INTO calls (phone) VALUES ('555-0100')")
    conn.commit()
    conn.close()
    path.chmod(0o644)
    before = path.read_bytes()
    for create in (True, False):
        with pytest.raises(UsageLogError, match="not a model-forge usage log"):
            open_db(path, create=create)
    assert path.read_bytes() == before
    assert path.stat().st_mode & 0o777 == 0o644  # not ours: not even its mode changes


def test_reading_an_older_log_never_changes_it(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    conn = _fresh(path, stop_after="m002_hourly_rollup")
    row = store.record_row(_record("r1", "2026-11-01T10:00:00.000000Z"))
    conn.execute(
        f"INSERT INTO calls ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )
    conn.close()
    path.chmod(0o600)
    before = path.read_bytes()
    # 1000 × $2.50 + 100 × $10 per 1M tokens
    assert _total(path)["cost_usd"] == Decimal("0.0035")
    assert path.read_bytes() == before
    assert migrations.applied(sqlite3.connect(path)) == ["m001_create_calls", "m002_hourly_rollup"]


def test_a_log_readable_by_others_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    open_db(path).close()
    path.chmod(0o644)
    open_db(path, create=False).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert caplog.text.count("was readable by others") == 1
