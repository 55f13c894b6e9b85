"""Promises kept under faults (issue: "Keep every promise under faults").

Each section is one numbered item of that issue. Run them alone with
`python -m pytest tests/test_faults.py`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge import CallRecord, Usage, UsageLogError, migrations, price, recorder, report, store
from modelforge.cli import cli as main
from modelforge.store import UsageLog, open_db


def _record(run_id: str, ts: str | None = None, **tokens: int) -> CallRecord:
    usage = Usage.model_validate({"input_tokens": 1000, "output_tokens": 100} | tokens)
    record = CallRecord(run_id=run_id, usage=usage, cost=price("gpt-4o", usage))
    if ts:
        record.ts = ts
    return record


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


def _totals(path: Path, **filters: Any) -> dict[str, Any]:
    conn = open_db(path, create=False)
    try:
        return report.usage_report(conn, [], report.Filters(**filters)).totals
    finally:
        conn.close()


# --- 1. Records made in child processes are not lost --------------------------------


def _child_calls(path: str, prefix: str, count: int) -> None:
    for i in range(count):
        recorder.deliver(_record(f"{prefix}-{i}"), db=path)


def _pool_call(args: tuple[str, str]) -> int:
    path, run_id = args
    recorder.deliver(_record(run_id), db=path)
    return 1


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_fork_children_and_the_parent_lose_no_record(tmp_path: Path) -> None:
    path = str(tmp_path / "usage.db")
    _child_calls(path, "parent-before", 50)
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_child_calls, args=(path, f"child{n}", 1000)) for n in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [c.exitcode for c in children] == [0, 0, 0, 0]
    _child_calls(path, "parent-after", 50)
    assert store.flush()
    assert _count(Path(path)) == 4 * 1000 + 100


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_that_is_terminated_loses_no_record(tmp_path: Path, method: str) -> None:
    path = str(tmp_path / "usage.db")
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(4) as pool:  # leaving the block terminates the workers
        done = pool.map(_pool_call, [(path, f"task-{i}") for i in range(1000)])
    assert sum(done) == 1000
    assert _count(Path(path)) == 1000


# --- 2. A record that cannot be stored fails alone ----------------------------------


def test_a_ten_million_dollar_call_is_written_with_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    log.flush()  # the file exists, so the records below share one batch
    # 1e12 input × $2.50 + 1e12 output × $10 per 1M tokens = $12,500,000
    log.submit(_record("huge", input_tokens=10**12, output_tokens=10**12))
    for i in range(20):
        log.submit(_record(f"normal-{i}"))
    assert log.flush()
    assert _count(path) == 21
    # $12,500,000 + 20 × (1000 × $2.50 + 100 × $10) per 1M tokens = + 20 × $0.0035
    assert _totals(path)["cost_usd"] == Decimal("12500000.07")


# --- 3. Only a repeated run_id is skipped -------------------------------------------


def test_rows_the_table_refuses_stay_pending_and_are_not_counted_as_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    open_db(path).close()
    conn = sqlite3.connect(path)
    # What a NOT NULL column added by someone else does to our INSERT.
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON calls BEGIN "
        "SELECT RAISE(ABORT, 'NOT NULL constraint failed: calls.extra'); END"
    )
    conn.commit()
    log = UsageLog(path)
    for i in range(5):
        log.submit(_record(f"r{i}"))
    log.submit(_record("r0"))  # a true duplicate of a pending record
    assert log.flush(timeout=5) is False
    stats = log.stats()
    assert (stats.written, stats.pending) == (0, 6)
    assert caplog.text.count("refused a record") == 1
    assert _count(path) == 0

    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    log.submit(_record("r5"))
    assert log.flush(timeout=5)
    assert (log.stats().written, log.stats().duplicates) == (6, 1)
    assert _count(path) == 6


# --- 4. Exit with the file locked ----------------------------------------------------

_LOCKED_EXIT = textwrap.dedent(
    """
    import sys, time
    from modelforge import CallRecord, Usage, price
    from modelforge.store import get_log
    usage = Usage(input_tokens=10, output_tokens=1)
    log = get_log(sys.argv[1])
    for i in range(40):
        log.submit(CallRecord(run_id=f"x{i}", usage=usage, cost=price("gpt-4o", usage)))
    time.sleep(0.5)
    print("queued", flush=True)
    """
)


def test_exit_with_the_file_locked_saves_records_for_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    open_db(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        run = subprocess.run(
            [sys.executable, "-c", _LOCKED_EXIT, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run.returncode == 0, run.stderr
    assert "40 records could not be written" in run.stderr
    side = store.side_file(path)
    assert side.exists() and side.stat().st_mode & 0o777 == 0o600
    assert _count(path) == 0

    log = UsageLog(path)  # the next writer imports them
    log.submit(_record("later"))
    assert log.flush()
    assert _count(path) == 41
    assert not side.exists()


# --- 5. flush() tells the truth ------------------------------------------------------


def test_flush_is_false_while_records_wait_and_stats_say_how_many(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log's directory should be")
    log = UsageLog(blocker / "usage.db")
    log.submit(_record("r1"))
    assert log.flush(timeout=3) is False
    assert log.stats().pending == 1
    blocker.unlink()
    blocker.mkdir()
    assert log.flush(timeout=5)  # the writer retries once the directory can be made
    assert (log.stats().pending, log.stats().written) == (0, 1)


# --- 6. A new log's first record is written without a slow import -------------------


def test_writing_a_new_log_imports_neither_sqlite_utils_nor_pandas(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from modelforge import CallRecord, Usage, price
        from modelforge.store import get_log
        usage = Usage(input_tokens=10, output_tokens=1)
        log = get_log(sys.argv[1])
        log.submit(CallRecord(run_id="first", usage=usage, cost=price("gpt-4o", usage)))
        assert log.flush()
        print(sorted(m for m in ("sqlite_utils", "pandas", "numpy") if m in sys.modules))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "new.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# --- 8. Never touch a file that is not ours ------------------------------------------


def test_a_calls_table_without_our_migrations_is_refused_and_left_byte_identical(
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
    result = CliRunner().invoke(main, ["usage", "--db", str(path)])
    assert result.exit_code == 1
    assert "not a model-forge usage log" in result.output
    log = UsageLog(path)
    log.submit(_record("r1"))
    assert log.flush(timeout=2) is False
    log.close(timeout=2)
    assert path.read_bytes() == before
    assert path.stat().st_mode & 0o777 == 0o644  # not ours: not even its mode changes


def test_migrations_we_do_not_know_keep_the_log_from_being_written(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    log.submit(_record("r1"))
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
    assert _totals(path)["calls"] == 1  # reports still read it
    later = UsageLog(path)
    later.submit(_record("r2"))
    assert later.flush(timeout=2) is False
    later.close(timeout=2)
    assert path.read_bytes() == before


# --- 9. Read-only commands never migrate or modify a log -----------------------------


def test_read_only_commands_leave_an_older_log_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.apply(conn, stop_after="m002_hourly_rollup")
    row = store.record_row(_record("r1", "2026-11-01T10:00:00.000000Z"))
    conn.execute(
        f"INSERT INTO calls ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )
    conn.close()
    path.chmod(0o600)
    before = path.read_bytes()
    runner = CliRunner()
    for args in (
        ["usage", "--db", str(path), "--json"],
        ["usage", "--db", str(path), "--by", "model"],
        ["usage", "calls", "--db", str(path)],
        ["usage", "export", "--db", str(path), "-o", str(tmp_path / "out.csv")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert runner.invoke(main, ["telemetry", "status"]).exit_code == 0
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert migrations.applied(conn) == ["m001_create_calls", "m002_hourly_rollup"]
    conn.close()


# --- 10. A log readable by others is made private ------------------------------------


def test_a_log_readable_by_others_is_tightened_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    open_db(path).close()
    path.chmod(0o644)
    open_db(path, create=False).close()
    open_db(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert caplog.text.count("was readable by others") == 1


# --- 11. Money and counts of any size -------------------------------------------------


def test_costs_at_the_token_cap_are_stored_and_summed_exactly_everywhere(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    cap = 10**12  # usage.MAX_TOKENS
    for i in range(1000):  # 1000 × $12.5M: far past 2^63 pico-dollars in any sum
        usage = Usage(input_tokens=cap, output_tokens=cap)
        record = CallRecord(run_id=f"huge-{i}", usage=usage, cost=price("gpt-4o", usage))
        record.ts, record.tags = "2026-11-01T10:00:00.000000Z", ("big",)
        log.submit(record)
    log.submit(_record("small", "2026-11-01T10:00:00.000000Z", cache_read_tokens=1))
    assert log.flush()
    log.close()
    conn = sqlite3.connect(path)
    huge = conn.execute("SELECT cost_usd, priced FROM calls WHERE run_id = 'huge-0'")
    assert huge.fetchone() == ("12500000", 1)
    conn.close()
    # 1000 × (1e12 × $2.50 + 1e12 × $10) per 1M tokens = $12,500,000,000, plus
    # 999 × $2.50 + 1 × $1.25 + 100 × $10 per 1M = $0.00349875 for the small call.
    expected = Decimal("12500000000.00349875")
    assert _totals(path)["cost_usd"] == expected  # the rollup
    assert _totals(path, tag="big")["cost_usd"] == Decimal("12500000000")  # the rows
    assert _totals(path)["unpriced_calls"] == 0
    result = CliRunner().invoke(main, ["usage", "--db", str(path), "--by", "framework", "--json"])
    assert result.exit_code == 0, result.output
    assert '"12500000000.00349875"' in result.output


# --- 12. Runs that never end ---------------------------------------------------------


def _slow_chat_model() -> Any:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class SlowChatModel(BaseChatModel):
        """A model whose answer never comes in time."""

        @property
        def _llm_type(self) -> str:
            return "slow"

        def _generate(self, messages: Any, stop: Any = None, **kwargs: Any) -> ChatResult:
            raise NotImplementedError

        async def _agenerate(self, messages: Any, stop: Any = None, **kwargs: Any) -> ChatResult:
            await asyncio.sleep(30)
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content="late"))])

    return SlowChatModel()


def test_a_timed_out_ainvoke_is_recorded_as_abandoned_and_its_prompt_let_go() -> None:
    from modelforge.estimate import held_chars
    from modelforge.integrations.langchain import UsageCallbackHandler
    from modelforge.session import UsageSession

    model = _slow_chat_model()
    prompt = "word " * 2_000  # 10,000 characters
    session = UsageSession({}, persist=False)
    handler = UsageCallbackHandler(persist=False, abandon_after=0.2, sessions=[session])

    async def timed_out() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(model.ainvoke(prompt, config={"callbacks": [handler]}), 0.05)

    asyncio.run(timed_out())
    assert len(handler._runs) == 1  # LangChain sent no end or error event
    assert held_chars() == len(prompt)
    time.sleep(0.25)
    handler.on_llm_start({}, ["next"], run_id=uuid.uuid4())  # any later start sweeps
    (record,) = [r for r in session.calls if r.status == "abandoned"]
    assert record.estimated and record.estimate_method
    assert record.usage.input_tokens > 0 and record.usage.output_tokens == 0
    assert len(handler._runs) == 1  # only the new run is open
    assert held_chars() == len("next")


@pytest.mark.parametrize("runs", [20_000, pytest.param(200_000, marks=pytest.mark.slow)])
def test_runs_that_never_end_keep_memory_bounded_and_hold_no_prompt(runs: int) -> None:
    import gc

    import psutil
    from langchain_core.outputs import LLMResult

    from modelforge.estimate import MAX_HELD_CHARS, held_chars
    from modelforge.integrations.langchain import UsageCallbackHandler

    handler = UsageCallbackHandler(persist=False, abandon_after=0.5)
    prompt = "x" * 500
    # The first estimate loads a tiktoken encoding (tens of MB, once): not growth.
    handler.on_llm_start({}, [prompt], run_id=uuid.uuid4())
    handler.on_llm_end(LLMResult(generations=[]), run_id=next(iter(handler._runs)))
    gc.collect()
    before = psutil.Process().memory_info().rss
    for _ in range(runs):
        handler.on_llm_start({}, [prompt], run_id=uuid.uuid4())
        assert held_chars() <= MAX_HELD_CHARS
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    assert grown < 50 * 2**20, f"RSS grew {grown / 2**20:.0f} MB"
    time.sleep(0.6)
    handler.on_llm_start({}, [""], run_id=uuid.uuid4())  # abandons every earlier run
    assert len(handler._runs) == 1
    assert held_chars() == 0
