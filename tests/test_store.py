"""The SQLite usage log: file safety, schema, de-duplication and the background writer."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from modelforge import CallRecord, Usage, UsageLogError, migrations, price, store
from modelforge.money import money_text
from modelforge.store import UsageLog, get_log, open_db


def _record(run_id: str, model: str = "gpt-4o", **tokens: int) -> CallRecord:
    usage = Usage.model_validate({"input_tokens": 1000, "output_tokens": 100} | tokens)
    return CallRecord(run_id=run_id, usage=usage, cost=price(model, usage))


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _count(path: Path) -> int:
    ((count,),) = _query(path, "SELECT COUNT(*) FROM calls")
    return int(count)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_log_is_private_wal_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "usage.db"
    log = get_log(path)
    log.submit(_record("r1"))
    assert log.flush()

    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        assert _mode(wal) == 0o600
    assert _query(path, "PRAGMA journal_mode") == [("wal",)]
    names = [
        name
        for (name,) in _query(
            path,
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'modelforge' ORDER BY id",
        )
    ]
    assert names[0] == "m001_create_calls"
    assert tuple(names) == migrations.MIGRATION_NAMES
    assert _count(path) == 1


def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    log.submit(_record("kept"))
    log.close()
    first = open_db(path)
    schema = first.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    first.close()

    for create in (True, False, True):
        again = open_db(path, create=create)
        assert migrations.pending(again) == []
        assert (
            again.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
            == schema
        )
        again.close()
    ((applied,),) = _query(path, "SELECT COUNT(*) FROM _sqlite_migrations")
    assert applied == len(migrations.MIGRATIONS)
    assert _query(path, "SELECT run_id FROM calls") == [("kept",)]


def test_run_id_is_unique_and_duplicates_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    log.submit(_record("same"))
    log.submit(_record("same"))  # in the same batch: the unique index ignores it
    assert log.flush()
    assert (log.stats().written, log.stats().duplicates) == (1, 1)
    log.submit(_record("same"))  # in a later batch
    assert log.flush()
    assert (log.stats().written, log.stats().duplicates) == (1, 2)

    # Another writer (as another process would be) knows nothing of the first one's
    # run_ids: the unique index turns its copy into an ignored INSERT.
    other = UsageLog(path)
    other.submit(_record("same"))
    other.submit(_record("different"))
    assert other.flush()
    assert (other.stats().written, other.stats().duplicates) == (1, 1)
    log.close()
    other.close()

    assert _query(path, "SELECT run_id FROM calls ORDER BY id") == [("same",), ("different",)]


def test_the_log_keeps_a_record_as_it_was_submitted(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    record = _record("kept", cache_read_tokens=600)
    record.attrs = {"user_id": "alice"}
    log.submit(record)
    # What the caller does with its record afterwards is not what it submitted.
    record.agent, record.attrs["user_id"] = "later", "bob"
    record.usage = Usage(input_tokens=1)
    assert log.flush()
    log.close()
    row = _query(path, "SELECT agent, attrs, input_tokens, cache_read_tokens FROM calls")
    assert row == [(None, '{"user_id": "alice"}', 1000, 600)]


def test_flush_and_close_all_write_everything(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = get_log(path)
    for i in range(2000):
        log.submit(_record(f"a{i}"))
    assert store.flush()
    assert _count(path) == 2000
    assert log.stats().pending == 0

    for i in range(500):
        log.submit(_record(f"b{i}"))
    store.close_all()  # no flush first
    assert _count(path) == 2500
    assert store._logs == {}


def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()

    for create in (True, False):
        with pytest.raises(
            UsageLogError, match="is an SQLite file but not a model-forge usage log"
        ):
            open_db(path, create=create)

    log = UsageLog(path)
    log.submit(_record("r1"))
    assert log.flush() is False  # held in memory, never written into someone else's file
    assert log.stats().errors >= 1
    assert log.stats().pending == 1
    log.close(timeout=2)
    names = _query(path, "SELECT name FROM sqlite_master")
    assert names == [("notes",)]
    assert _query(path, "PRAGMA journal_mode") == [("delete",)]


def test_corrupted_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    path.write_bytes(b"this is not a database " * 200)

    for create in (True, False):
        with pytest.raises(UsageLogError, match=r"is not a usable SQLite file") as raised:
            open_db(path, create=create)
        assert str(path) in str(raised.value)
        assert "move it aside" in str(raised.value)


def test_missing_file_is_not_created_when_only_reading(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(UsageLogError, match="no usage log at"):
        open_db(path, create=False)
    assert not path.exists()


_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    # SQLite's SHARED byte range: busy while another process has the database open in WAL.
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002, 0)
    print("free")
except OSError:
    print("held")
"""


def _sqlite_lock(path: Path) -> str:
    run = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True)
    return run.stdout.strip()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX advisory locks")
def test_opening_the_log_again_keeps_the_writers_locks(tmp_path: Path) -> None:
    # Closing any descriptor of the file drops all of this process's POSIX locks on it,
    # after which another process may delete the WAL that the writer still appends to.
    path = tmp_path / "usage.db"
    log = get_log(path)
    log.submit(_record("r1"))
    assert log.flush()
    assert _sqlite_lock(path) == "held"

    open_db(path).close()
    open_db(path, create=False).close()
    log.submit(_record("r2"))
    assert log.flush()
    assert _sqlite_lock(path) == "held"
    assert _count(path) == 2


def _submit_many(path: str, prefix: str, count: int, barrier: Any) -> None:
    """Runs in a spawned process: one writer of several on the same file."""
    barrier.wait(timeout=60)
    log = get_log(path)
    for i in range(count):
        log.submit(_record(f"{prefix}-{i}"))
    if not log.flush(timeout=60):
        raise SystemExit(f"{prefix}: flush failed: {log.stats()}")


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    processes = [
        ctx.Process(target=_submit_many, args=(str(path), f"p{n}", 500, barrier)) for n in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]

    assert _count(path) == 1500
    ((distinct,),) = _query(path, "SELECT COUNT(DISTINCT run_id) FROM calls")
    assert distinct == 1500
    for n in range(3):
        ((mine,),) = _query(path, f"SELECT COUNT(*) FROM calls WHERE run_id LIKE 'p{n}-%'")
        assert mine == 500
    assert _mode(path) == 0o600


def test_records_survive_interpreter_exit_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "exit.db"
    code = (
        "import sys\n"
        "from modelforge import CallRecord, Usage, price\n"
        "from modelforge.store import get_log\n"
        "usage = Usage(input_tokens=10, output_tokens=1)\n"
        "log = get_log(sys.argv[1])\n"
        "for i in range(300):\n"
        "    log.submit(CallRecord(run_id=f'x{i}', usage=usage, cost=price('gpt-4o', usage)))\n"
        "# no flush: the exit hook writes what is queued\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert _count(path) == 300


def test_money_is_exact_text_and_integer_pico_dollars(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = get_log(path)
    # gpt-4o: 1000 * 2.5 + 100 * 10 = 3500 per 1M -> 0.0035
    log.submit(_record("standard"))
    # gpt-5-mini: one cache-read token at 0.025 per 1M -> 0.000000025
    log.submit(
        _record("tiny", model="gpt-5-mini", input_tokens=1, output_tokens=0, cache_read_tokens=1)
    )
    # An unknown model has no price: NULL, never 0.
    log.submit(_record("unpriced", model="no-such-model-xyz"))
    assert log.flush()

    rows = _query(
        path,
        "SELECT run_id, cost_usd, typeof(cost_usd), cost_pusd, typeof(cost_pusd), "
        "cost_input, cost_output, cost_cache_read, priced FROM calls ORDER BY id",
    )
    assert rows == [
        ("standard", "0.0035", "text", 3_500_000_000, "integer", "0.0025", "0.001", "0", 1),
        ("tiny", "0.000000025", "text", 25_000, "integer", "0", "0", "0.000000025", 1),
        ("unpriced", None, "null", None, "null", None, None, None, 0),
    ]
    ((total,),) = _query(path, "SELECT SUM(cost_pusd) FROM calls")
    # 3_500_000_000 + 25_000 pico-dollars
    assert total == 3_500_025_000
    assert Decimal(total).scaleb(-12) == Decimal("0.003500025")


_ROLLUP_FROM_RAW = """
    SELECT substr(ts, 1, 13), framework, coalesce(provider, ''),
           coalesce(response_model, model, ''), coalesce(catalog_model, ''),
           coalesce(agent, ''), status, priced, estimated, count(*), sum(input_tokens),
           sum(cache_read_tokens), sum(cache_write_tokens), sum(cache_write_1h_tokens),
           sum(output_tokens), sum(reasoning_tokens), coalesce(sum(cost_pusd), 0)
    FROM calls GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""
_ROLLUP = """
    SELECT hour, framework, provider, model, catalog_model, agent, status, priced, estimated,
           calls, input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens,
           output_tokens, reasoning_tokens, cost_usd_whole * 1000000000000 + cost_pusd_frac
    FROM calls_hourly ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""


def test_hourly_rollup_matches_the_rows_through_duplicates_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    hours = ["2026-11-01T09:15:00.000000Z", "2026-11-01T09:45:00.000000Z", "2026-11-01T10:05:00Z"]
    first, second = UsageLog(path), UsageLog(path)
    for i in range(30):
        record = _record(f"r{i}", "gpt-4o" if i % 3 else "mystery-model", cache_read_tokens=i)
        record.ts = hours[i % 3]
        record.agent = "writer" if i % 2 else None
        first.submit(record)
        if i % 4 == 0:
            second.submit(record)  # the same run from another writer: ignored by run_id
    first.close()
    second.close()
    assert _count(path) == 30
    assert first.duplicates + second.duplicates == 8
    assert _query(path, _ROLLUP) == _query(path, _ROLLUP_FROM_RAW)
    ((hour_9_calls,),) = _query(path, "SELECT sum(calls) FROM calls_hourly WHERE hour LIKE '%T09'")
    assert hour_9_calls == 20

    conn = open_db(path)
    with conn:
        conn.execute("DELETE FROM calls WHERE ts < '2026-11-01T09:30'")
    conn.close()
    assert _count(path) == 20
    assert _query(path, _ROLLUP) == _query(path, _ROLLUP_FROM_RAW)


@pytest.mark.parametrize("good_rows", [5, 300])
def test_one_unbindable_record_is_dropped_alone(tmp_path: Path, good_rows: int) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    log.flush()  # the file exists, so all records below go in one batch
    good = [_record(f"good-{i}") for i in range(good_rows)]
    bad = _record("bad")
    bad.agent = object()  # type: ignore[assignment]  # sqlite3 cannot bind it
    for record in (*good[:2], bad, *good[2:]):
        log.submit(record)
    assert log.flush() is False  # one record was dropped: flush says so
    stats = log.stats()
    assert (stats.written, stats.dropped, stats.pending) == (good_rows, 1, 0)
    assert _count(path) == good_rows


def test_rows_keep_nulls_zeros_and_text_as_given(tmp_path: Path) -> None:
    records = []
    for i in range(6):
        record = _record(f"r{i}", "gpt-4o" if i % 2 else "no-such-model-xyz", cache_read_tokens=i)
        if i % 3 == 0:
            record.agent, record.latency_ms, record.ttft_ms = "planner", 12.5, 0.0
            record.tags, record.attrs = ("a", "b"), {"user_id": "u"}
        if i == 5:  # text that reads like a number is still text
            record.agent, record.run_name, record.parent_run_id = "-1", "-1.0", "0"
        records.append(record)
    conn = open_db(tmp_path / "usage.db")
    assert store.insert_rows(conn, [store.record_row(r) for r in records]) == 6
    assert store.insert_rows(conn, [store.record_row(r) for r in records]) == 0  # duplicates

    nullable = (
        "parent_run_id, trace_id, response_model, agent, run_name, tags, attrs, anomalies, "
        "error_type, service_tier, estimate_method, price_flags, latency_ms, ttft_ms"
    )
    plain = conn.execute(f"SELECT {nullable} FROM calls WHERE run_id = 'r1'").fetchone()
    assert plain == (None,) * 14
    unpriced = conn.execute(
        "SELECT cost_usd, cost_pusd, cost_input, cost_output, catalog_model, priced "
        "FROM calls WHERE run_id = 'r2'"
    ).fetchone()
    assert unpriced == (None, None, None, None, None, 0)
    # A zero is a value, not a NULL.
    timed = conn.execute(
        "SELECT agent, latency_ms, ttft_ms, tags, attrs, cost_cache_write FROM calls "
        "WHERE run_id = 'r3'"
    ).fetchone()
    assert timed == ("planner", 12.5, 0.0, '["a", "b"]', '{"user_id": "u"}', "0")
    number_like = conn.execute(
        "SELECT agent, run_name, parent_run_id, typeof(agent) FROM calls WHERE run_id = 'r5'"
    ).fetchone()
    assert number_like == ("-1", "-1.0", "0", "text")


def test_a_cost_past_64_bits_keeps_its_exact_text(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    # 1e12 input × $2.50 + 1e12 output × $10 per 1M tokens = $12,500,000
    log.submit(_record("huge", input_tokens=10**12, output_tokens=10**12))
    assert log.flush()
    assert _query(path, "SELECT cost_usd, cost_pusd FROM calls") == [("12500000", None)]


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0.00350", "0.0035"),
        ("1E-7", "0.0000001"),  # str() would give the exponent form
        ("0.000000025", "0.000000025"),
        ("1.2500E+7", "12500000"),
        ("1E+2", "100"),
        ("0E-12", "0"),
        ("7.000", "7"),
    ],
)
def test_money_text_is_plain_decimal_without_exponent(amount: str, text: str) -> None:
    assert money_text(Decimal(amount)) == text


def test_an_unexpected_writer_error_keeps_the_rows_and_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    real_insert = store.insert_rows
    failures = []

    def insert_failing_once(conn: sqlite3.Connection, rows: Any) -> int:
        if not failures:
            failures.append(len(list(rows)))
            raise RuntimeError("injected")
        return real_insert(conn, rows)

    monkeypatch.setattr(store, "insert_rows", insert_failing_once)
    log.submit(_record("r1"))
    assert not log.flush(timeout=5)  # the row is still pending
    assert (log.stats().errors, log.stats().pending, failures) == (1, 1, [1])
    log.submit(_record("r2"))
    assert log.flush(timeout=5)
    assert _query(path, "SELECT run_id FROM calls ORDER BY id") == [("r1",), ("r2",)]


def test_a_log_without_its_unique_run_id_index_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    conn = open_db(path)
    store.insert_rows(conn, [store.record_row(_record("r1"))])
    index = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%UNIQUE%run_id%'"
    ).fetchone()[0]
    conn.execute(f"DROP INDEX [{index}]")
    conn.close()
    with pytest.raises(UsageLogError, match=r"unique index on calls\.run_id"):
        open_db(path)
    reader = open_db(path, create=False)  # reports still read it
    assert reader.execute("SELECT count(*) FROM calls").fetchone() == (1,)


def test_utc_now_is_format_ts_of_the_current_time() -> None:
    from datetime import datetime, timezone

    from modelforge.records import format_ts, utc_now

    now = datetime.now(timezone.utc)
    stamp = utc_now()
    assert len(stamp) == len(format_ts(now)) == 27  # 2026-11-22T15:30:01.317621Z
    taken = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((taken - now).total_seconds()) < 0.5


@pytest.mark.parametrize(
    ("start", "end", "ms"), [(1.0, 1.0123456, 12.346), (2.5, 2.5000004, 0.0), (0.0, None, None)]
)
def test_elapsed_ms_rounds_to_the_microsecond(start: float, end: float | None, ms: float) -> None:
    from modelforge.records import elapsed_ms

    assert elapsed_ms(start, end) == ms
