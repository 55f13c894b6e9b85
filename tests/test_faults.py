"""Promises kept under faults (issue #21): one section per numbered item of the issue.

Each item has tests that failed before its fix; a few more (marked so) guard what
already held. Run them on their own with `python -m pytest tests/test_faults.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from modelforge import (
    UsageLogError,
    config,
    migrations,
    price,
    recorder,
    records,
    report,
    store,
    track_usage,
)
from modelforge.cli import cli
from modelforge.records import CallRecord, clean_attrs, clean_tags, price_call
from modelforge.store import UsageLog, open_db
from modelforge.usage import MAX_TOKENS, Usage
from row_checks import row_for_table


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


# gpt-4o per 1M: 1000×2.5 + 100×10 = 3500 → $0.0035 a call
USAGE = Usage(input_tokens=1000, output_tokens=100)


def _call_record(**fields: Any) -> CallRecord:
    """A priced gpt-4o call; `fields` override what the record says."""
    usage = fields.pop("usage", USAGE)
    return CallRecord(
        run_id=fields.pop("run_id", str(uuid.uuid4())),
        usage=usage,
        cost=price_call(usage, "gpt-4o", None, "openai"),
        provider=fields.pop("provider", "openai"),
        model=fields.pop("model", "gpt-4o"),
        **fields,
    )


def _query_rows(path: Path, sql: str = "SELECT count(*) FROM calls") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _write_config(data: str | bytes) -> Path:
    path = config.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


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


def test_a_side_file_from_an_older_version_is_imported_too(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    open_db(path).close()
    new = store.record_row(_record("new-row"))
    old = {k: v for k, v in store.record_row(_record("old-row")).items() if "context" not in k}
    store.save_to_side_file(path, [old, new])  # rows with different columns
    log = UsageLog(path)
    log.submit(_record("later"))
    assert log.flush()
    assert _count(path) == 3
    assert not store.side_file(path).exists()


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


# --- 7. Opt-out fails closed ----------------------------------------------------------

# Each bad setting that once made the whole file be ignored, and recording come back on.
BAD_OTHER_SETTINGS = {
    "retention_days = 0": "retention_days = 0\n",
    "azure is not a table": 'azure = "prod-chat"\n',
    "a deployment maps to a number": "[azure.deployments]\nprod-chat = 4\n",
    "metadata_keys is a string": 'metadata_keys = "user_id"\n',
}


@pytest.mark.parametrize("bad", BAD_OTHER_SETTINGS.values(), ids=BAD_OTHER_SETTINGS.keys())
def test_telemetry_off_holds_when_another_setting_is_invalid(
    bad: str, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    _write_config("telemetry = false\n" + bad)
    for _ in range(5):
        recorder.deliver(_call_record())
    assert store.flush()
    assert not db_path.exists()
    status = config.telemetry_status()
    assert not status.enabled and status.reason.startswith("telemetry = off in")
    setting = "azure.deployments" if "azure" in bad else bad.split()[0]
    assert _warnings(caplog, f"{config.config_path()}: {setting}: must be") == 1


@pytest.mark.parametrize(
    ("variable", "value"), [("MODELFORGE_TELEMETRY", "0"), ("DO_NOT_TRACK", "1")]
)
def test_environment_opt_out_holds_whatever_the_config_file_holds(
    variable: str, value: str, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Already held: the environment is read before the file. Kept as a guard.
    monkeypatch.setenv(variable, value)
    for text in ("retention_days = 0\n", "telemetry = true\nthis is [not toml\n"):
        _write_config(text)
        recorder.deliver(_call_record())
        assert store.flush()
        assert not db_path.exists()


def test_an_invalid_setting_is_ignored_alone_and_named(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    path = _write_config(
        'retention_days = "ninety"\nmetadata_keys = ["tenant"]\n'
        '[azure.deployments]\n"Prod-Chat" = "gpt-4o"\n'
    )
    settings = config.load_settings()
    assert settings.retention_days is None
    assert settings.metadata_keys == ("tenant",)
    assert settings.azure_deployments == {"prod-chat": "gpt-4o"}
    assert _warnings(caplog, f"{path}: retention_days: must be a positive whole number") == 1
    recorder.deliver(_call_record())
    assert store.flush()
    assert _query_rows(db_path) == [(1,)]  # the bad key leaves telemetry alone: still on


BROKEN_FILES: dict[str, str | bytes] = {
    "not TOML": "telemetry = false\nthis is [not toml\n",
    "not UTF-8": b"telemetry = false\n# caf\xe9\n",
    "nested too deeply": "telemetry = false\nx = " + "[" * 100_000 + "\n",
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_a_config_file_that_cannot_be_parsed_records_nothing_and_warns_once(
    content: str | bytes, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    path = _write_config(content)
    for _ in range(5):
        recorder.deliver(_call_record())
    assert store.flush()
    assert not db_path.exists()
    status = config.telemetry_status()
    assert not status.enabled and f"{path} cannot be read" in status.reason
    assert _warnings(caplog, f"cannot read config file {path}") == 1
    warning = next(r.getMessage() for r in caplog.records if "cannot read" in r.getMessage())
    assert "Nothing is recorded until it is fixed or removed" in warning


def test_a_config_path_that_cannot_be_read_records_nothing(db_path: Path) -> None:
    config.config_path().mkdir(parents=True)  # a directory where the file should be
    recorder.deliver(_call_record())
    assert store.flush()
    assert not db_path.exists()
    assert not config.telemetry_status().enabled
    assert config.load_settings().unreadable == "is a directory"


@pytest.mark.parametrize("switch", ["off", "on"])
def test_telemetry_switch_on_an_unparseable_file_leaves_it_and_says_why(switch: str) -> None:
    broken = b"telemetry = false\n# my notes\nthis is [not toml\n"
    path = _write_config(broken)
    result = _invoke("telemetry", switch)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {path}: cannot change the config file: not valid")
    assert "MODELFORGE_TELEMETRY=" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == broken
    assert not config.telemetry_status().enabled


def test_telemetry_off_on_a_file_with_an_invalid_setting_changes_only_its_line() -> None:
    text = "# written by hand\nretention_days = 0  # oops\n\n[azure.deployments]\nx = 4\n"
    path = _write_config(text)
    result = _invoke("telemetry", "off")
    assert result.exit_code == 0, result.output
    assert path.read_text() == (
        "# written by hand\nretention_days = 0  # oops\n\ntelemetry = false\n"
        "[azure.deployments]\nx = 4\n"
    )
    assert not config.telemetry_status().enabled


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_telemetry_status_explains_a_broken_file(content: str | bytes) -> None:
    path = _write_config(content)
    result = _invoke("telemetry", "status")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert (
        f"Recording: off ({path} cannot be read; nothing is recorded until it is fixed)\n"
        f"Config:    {path} cannot be read: "
    ) in result.output
    assert "modelforge: " not in result.output  # said once, not again as a warning


def test_telemetry_status_names_each_ignored_setting() -> None:
    path = _write_config('telemetry = false\nretention_days = -1\ncolour = "blue"\n')
    result = _invoke("telemetry", "status")
    assert result.exit_code == 0, result.output
    assert f"Recording: off (telemetry = off in {path})" in result.output
    assert f"Config:    {path}: retention_days: must be a positive" in result.output
    assert f"Config:    {path}: colour: unknown setting; ignored" in result.output


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
    result = CliRunner().invoke(cli, ["usage", "--db", str(path)])
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
    row = row_for_table(conn, store.record_row(_record("r1", "2026-11-01T10:00:00.000000Z")))
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
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert runner.invoke(cli, ["telemetry", "status"]).exit_code == 0
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
    result = CliRunner().invoke(cli, ["usage", "--db", str(path), "--by", "framework", "--json"])
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


# --- 14. Every CLI option value gives `Error: …`, never a traceback ------------------


@pytest.fixture
def one_call_log(db_path: Path) -> Path:
    """The default log, holding one gpt-4o call ($0.0035) made now."""
    recorder.deliver(_call_record())
    assert store.flush()
    return db_path


OUT_OF_RANGE_TIMES = [
    "99999999999d",
    "1000000d",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-05:00",
    "9" * 5000 + "d",
]


def _bad_values(tmp_path: Path) -> list[list[str]]:
    missing = tmp_path / "no" / "such" / "dir"
    times = [
        [*command, option, value]
        for command in (["usage"], ["usage", "calls"], ["usage", "export"])
        for option in ("--since", "--until")
        for value in [*OUT_OF_RANGE_TIMES, ""]
    ]
    return [
        *times,
        *(["usage", "prune", "--older-than", value] for value in OUT_OF_RANGE_TIMES),
        ["usage", "calls", "-n", "9223372036854775808"],
        ["usage", "calls", "-n", "-1"],
        ["usage", "export", "-o", str(missing / "x.csv")],
        ["usage", "export", "-o", ""],
        ["usage", "--png", str(missing / "x.png")],
        ["usage", "--png", ""],
        ["usage", "--format", "json", "--csv"],
        ["usage", "--csv", "--format", "json", "calls"],
        ["usage", "--json", "--csv"],
        ["usage", "--format", "table", "--json"],
        ["usage", "--model", ""],
        ["usage", "calls", "--provider", " "],
        ["usage", "export", "--tag", ""],
        ["usage", "--by", ""],
        ["usage", "--by", "attr:"],
        ["usage", "--where", "=x"],
        ["prices", "update", "--url", ""],
        ["prices", "estimate", "gpt-4o", "--input", "1" + "0" * 30, "--output", "1"],
        ["prices", "estimate", "gpt-4o", "--input", "9" * 5000, "--output", "1"],
    ]


def test_every_bad_option_value_is_an_error_line(one_call_log: Path, tmp_path: Path) -> None:
    for args in _bad_values(tmp_path):
        result = _invoke(*args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert "Error: " in result.output and "Traceback" not in result.output, args
    assert not (tmp_path / "no").exists()


def test_conflicting_formats_are_refused_before_any_work(tmp_path: Path) -> None:
    # The log does not exist: were the log opened first, the error would say so.
    result = _invoke("usage", "--db", str(tmp_path / "none.db"), "--format", "json", "--csv")
    assert result.exit_code == 2
    assert "Error: --format json and --csv ask for different formats" in result.output
    result = _invoke("usage", "--db", str(tmp_path / "none.db"), "--csv", "--format", "csv")
    assert "no usage log at" in result.output  # the same format twice is no conflict


def test_output_files_that_cannot_be_written_are_refused_before_any_work(
    one_call_log: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such"
    result = _invoke("usage", "--png", str(missing / "x.png"))
    assert result.exit_code == 2
    assert f"the directory '{missing}' does not exist" in result.output
    assert "Calls" not in result.output  # no report was printed before the error
    result = _invoke("usage", "export", "-o", str(missing / "x.csv"))
    assert result.exit_code == 2 and f"the directory '{missing}' does not exist" in result.output


def test_out_of_range_times_name_the_option_and_the_range(one_call_log: Path) -> None:
    result = _invoke("usage", "--since", "1000000d")
    assert result.exit_code == 2
    assert result.output.endswith(
        "Error: Invalid value for '--since': '1000000d' is out of range: times must fall "
        "in the years 1 to 9999 (UTC)\n"
    )
    result = _invoke("usage", "prune", "--older-than", "1000000d")
    assert result.exit_code == 2
    assert "Error: --older-than: '1000000d' is out of range" in result.output
    assert _query_rows(one_call_log) == [(1,)]


def test_since_before_year_1000_counts_every_call(one_call_log: Path) -> None:
    # strftime wrote year 999 as "999", which sorts after "2026": nothing was counted.
    result = _invoke("usage", "--since", "0999-01-01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["calls"] == 1
    result = _invoke("usage", "calls", "--since", "0001-01-01", "-n", "9223372036854775807")
    assert result.exit_code == 0 and "gpt-4o" in result.output


def test_model_names_print_as_they_are_not_as_markup(db_path: Path) -> None:
    recorder.deliver(_call_record(model="[/]"))  # once a closing tag with nothing to close
    recorder.deliver(_call_record(response_model="[bold]x"))
    assert store.flush()
    for args in (["usage", "--by", "model"], ["usage", "calls"]):
        result = _invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert "[/]" in result.output and "[bold]x" in result.output


def test_the_cli_token_cap_is_the_record_cap() -> None:
    # cli_types repeats the number so that parsing options does not import pydantic.
    from modelforge import cli_types  # here, so the file still runs against older code

    assert cli_types.MAX_TOKENS == MAX_TOKENS


# --- 15. Text from providers is cleaned, never fatal ---------------------------------


class Unprintable:
    """An attribute value whose text cannot be had: `__str__` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Unrepresentable:
    """`__repr__` raises; with no `__str__`, str() goes through it."""

    def __repr__(self) -> str:
        raise ValueError("no repr either")


def test_unencodable_text_is_replaced_and_the_record_stored(db_path: Path) -> None:
    record = _call_record(
        model="gpt-4o\ud800",
        response_model="gpt-4o-2024-08-06\udcff",
        usage=Usage(input_tokens=1000, output_tokens=100, service_tier="fl\udc80ex"),
        agent="writer\ud83d",
        tags=("ok", "t\udfff"),
        attrs={"user\ud800": "u\udc00-1", "project": "search"},
    )
    recorder.deliver(record)
    assert store.flush()
    [row] = _query_rows(
        db_path, "SELECT model, response_model, service_tier, agent, tags, attrs FROM calls"
    )
    assert row[:4] == ("gpt-4o\ufffd", "gpt-4o-2024-08-06\ufffd", "fl\ufffdex", "writer\ufffd")
    assert json.loads(row[4]) == ["ok", "t\ufffd"]
    assert json.loads(row[5]) == {"user\ufffd": "u\ufffd-1", "project": "search"}
    assert store.stats()["dropped"] == 0


def test_model_names_are_capped_like_tags(db_path: Path) -> None:
    recorder.deliver(_call_record(model="m" * 1_000_000, response_model="r" * 300))
    assert store.flush()
    [(model, served)] = _query_rows(db_path, "SELECT model, response_model FROM calls")
    assert model == "m" * 256 and served == "r" * 256


def test_an_attribute_that_cannot_be_read_is_dropped_alone(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    recorder.deliver(
        _call_record(
            run_id="direct",
            attrs={"bad": Unprintable(), "worse": Unrepresentable(), "ok": "yes"},  # type: ignore[dict-item]
            tags=("t1", Unprintable(), "t2"),  # type: ignore[arg-type]
        )
    )
    with track_usage(broken=Unprintable(), project="search"):
        recorder.deliver(_call_record(run_id="session"))
    assert store.flush()
    rows = dict(_query_rows(db_path, "SELECT run_id, attrs FROM calls"))
    assert json.loads(rows["direct"]) == {"ok": "yes"}
    assert json.loads(rows["session"]) == {"project": "search"}
    [(tags,)] = _query_rows(db_path, "SELECT tags FROM calls WHERE run_id = 'direct'")
    assert json.loads(tags) == ["t1", "t2"]
    assert _warnings(caplog, "dropped an attribute that cannot be turned into text") == 2
    assert _warnings(caplog, "dropped a tag that cannot be turned into text") == 1


def test_cleaned_records_keep_their_cost(db_path: Path) -> None:
    recorder.deliver(_call_record(model="gpt-4o\ud800", response_model="gpt-4o"))
    assert store.flush()
    [(cost,)] = _query_rows(db_path, "SELECT cost_usd FROM calls")
    assert Decimal(cost) == Decimal("0.0035")  # 1000×2.5 + 100×10 = 3500 per 1M


# A record's text fields: the first are cut to 256 characters, the ids only cleaned.
CAPPED_FIELDS = (
    "framework",
    "operation",
    "provider",
    "model",
    "response_model",
    "status",
    "error_type",
    "estimate_method",
    "agent",
    "run_name",
)
ID_FIELDS = ("run_id", "parent_run_id", "trace_id")


def test_the_text_fields_here_are_the_records() -> None:
    assert (records._TEXT_FIELDS, records._ID_FIELDS) == (CAPPED_FIELDS, ID_FIELDS)


@pytest.mark.parametrize("name", [*CAPPED_FIELDS, *ID_FIELDS])
def test_each_text_field_is_cleaned_on_its_own(name: str) -> None:
    record = _call_record(**{name: "x\ud800" + "y" * 300})
    text = getattr(record, name)
    text.encode("utf-8")
    assert text == ("x\ufffd" + "y" * 300)[: None if name in ID_FIELDS else 256]


# Any text, lone surrogates included (st.text leaves them out by default), short or long.
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
some_text = st.one_of(st.none(), any_text, st.sampled_from(["gpt-4o", "x" * 256, "y" * 257]))
# Every text field of a record; run_id, framework, operation and status are never None.
record_texts = st.fixed_dictionaries(
    {
        name: any_text if name in ("run_id", "framework", "operation", "status") else some_text
        for name in (*CAPPED_FIELDS, *ID_FIELDS)
    }
)
some_tags = st.lists(any_text, max_size=40).map(tuple)
some_attrs = st.dictionaries(st.text(max_size=80), any_text, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    texts=record_texts,
    tier=some_text,
    tags=st.one_of(some_tags, some_tags.map(clean_tags)),
    attrs=st.one_of(some_attrs, some_attrs.map(clean_attrs)),
)
def test_any_text_comes_out_encodable_capped_and_stays_so(
    texts: dict[str, Any], tier: str | None, tags: tuple[str, ...], attrs: dict[str, str]
) -> None:
    usage = Usage(input_tokens=1, service_tier=tier)
    cost = price_call(usage, "gpt-4o", None, "openai")
    record = CallRecord(usage=usage, cost=cost, tags=tags, attrs=attrs, **texts)
    fields = {name: getattr(record, name) for name in CallRecord.__slots__}
    again = CallRecord(**fields)  # cleaning what is clean changes nothing
    assert {name: getattr(again, name) for name in CallRecord.__slots__} == fields
    for name in (*CAPPED_FIELDS, *ID_FIELDS):
        text = getattr(record, name)
        if text is not None:
            text.encode("utf-8")
            assert name in ID_FIELDS or len(text) <= 256
