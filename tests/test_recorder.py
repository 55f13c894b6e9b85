"""`recorder.deliver`: where a finished record goes (sessions, the usage log, sinks), the
opt-outs, and errors that are counted and never raised.

gpt-4o costs $2.50 per 1M input tokens and $10 per 1M output tokens.
"""

from __future__ import annotations

import logging
import sqlite3
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest

import modelforge
from modelforge import config, recorder, track_usage
from modelforge.records import CallRecord, price_call
from modelforge.usage import Usage

# 1000 * 2.5 + 100 * 10 = 3500 per 1M
CALL_COST = Decimal("0.0035")


def _call(run_id: str | None = None, **attrs: str) -> CallRecord:
    usage = Usage(input_tokens=1000, output_tokens=100)
    return CallRecord(
        run_id=run_id or f"test-{uuid4()}",
        usage=usage,
        cost=price_call(usage, "gpt-4o", None, None),
        model="gpt-4o",
        attrs=dict(attrs),
    )


def _run_ids(path: Path) -> list[str]:
    assert modelforge.flush()
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return [run_id for (run_id,) in conn.execute("SELECT run_id FROM calls ORDER BY id")]
    finally:
        conn.close()


# --- sessions ---------------------------------------------------------------------------


def test_open_blocks_and_given_sessions_each_get_the_record_once() -> None:
    given = modelforge.UsageSession({"team": "given"}, persist=False)
    record = _call(user_id="u-1")
    with track_usage(persist=False, project="block") as block:
        recorder.deliver(record, sessions=[given, block], persist=False)

    assert given.calls == [record]
    assert block.calls == [record]
    # Every session's attributes, then the record's own, which win.
    assert record.attrs == {"team": "given", "project": "block", "user_id": "u-1"}
    assert given.total_cost == block.total_cost == CALL_COST


def test_anomalies_are_counted() -> None:
    before = recorder.anomaly_count()
    usage = Usage(input_tokens=3, anomalies=("prompt_tokens: string '3' parsed", "another"))
    cost = price_call(usage, "gpt-4o", None, None)
    recorder.deliver(CallRecord(run_id=f"odd-{uuid4()}", usage=usage, cost=cost), persist=False)
    assert recorder.anomaly_count() - before == 2


# --- the usage log ------------------------------------------------------------------------


def test_a_record_goes_to_the_default_log(db_path: Path) -> None:
    record = _call()
    recorder.deliver(record)
    assert _run_ids(db_path) == [record.run_id]


@pytest.mark.parametrize(
    "opt_out",
    ["persist=False", "a session with persist=False", "MODELFORGE_TELEMETRY=0", "DO_NOT_TRACK=1",
     "telemetry = false"],
)  # fmt: skip
def test_each_opt_out_keeps_the_log_unwritten_but_sessions_count(
    opt_out: str, db_path: Path, user_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    persist = opt_out != "persist=False"
    if opt_out.startswith(("MODELFORGE_TELEMETRY", "DO_NOT_TRACK")):
        name, _, value = opt_out.partition("=")
        monkeypatch.setenv(name, value)
    elif opt_out == "telemetry = false":
        config.save_setting("telemetry", False)
    with track_usage(persist=opt_out != "a session with persist=False") as session:
        recorder.deliver(_call(), persist=persist)

    assert len(session.calls) == 1
    assert _run_ids(db_path) == []
    assert list(user_dirs.rglob("*.db*")) == []


def test_a_setting_changed_between_calls_applies_to_the_next(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = _call(), _call(), _call()
    recorder.deliver(first)
    config.save_setting("telemetry", False)
    recorder.deliver(second)
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "on")  # beats the config file
    monkeypatch.setenv("MODELFORGE_DB", str(elsewhere))
    recorder.deliver(third)

    assert _run_ids(db_path) == [first.run_id]
    assert _run_ids(elsewhere) == [third.run_id]


def test_which_file_a_record_goes_to(db_path: Path, tmp_path: Path) -> None:
    outer_db, inner_db, given_db = (tmp_path / f"{n}.db" for n in ("outer", "inner", "given"))
    records = [_call() for _ in range(4)]
    with track_usage(db=outer_db):
        recorder.deliver(records[0])
        with track_usage(project="no db of its own"), track_usage(db=inner_db):
            recorder.deliver(records[1])  # the innermost block that names a file
            recorder.deliver(records[2], db=given_db)  # the handler's own db= wins
    recorder.deliver(records[3])

    assert _run_ids(outer_db) == [records[0].run_id]
    assert _run_ids(inner_db) == [records[1].run_id]
    assert _run_ids(given_db) == [records[2].run_id]
    assert _run_ids(db_path) == [records[3].run_id]


def test_the_db_setting_in_the_config_file_moves_the_default_log(tmp_path: Path) -> None:
    configured = tmp_path / "configured.db"
    config.save_setting("db", str(configured))
    record = _call()
    recorder.deliver(record)
    assert _run_ids(configured) == [record.run_id]


# --- sinks and errors -----------------------------------------------------------------------


def test_sinks_see_each_run_once_and_their_errors_never_escape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def broken(record: CallRecord) -> None:
        raise ValueError("sink is down")

    before = recorder.handler_errors()
    recorder.add_sink(broken)
    recorder.add_sink(seen.append)  # type: ignore[arg-type]
    recorder.add_sink(seen.append)  # type: ignore[arg-type]  # added once only
    try:
        record = _call()
        with caplog.at_level(logging.WARNING, logger="modelforge"):
            recorder.deliver(record, persist=False)
            recorder.deliver(record, persist=False)  # a second handler saw the same run
            recorder.deliver(_call(), persist=False)
    finally:
        recorder.remove_sink(broken)
        recorder.remove_sink(seen.append)  # type: ignore[arg-type]
    recorder.deliver(_call(), persist=False)

    assert seen[0] is record and len(seen) == 2
    assert recorder.handler_errors() - before == 2
    # Logged once per kind of failure, not per call.
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "modelforge: sink failed and was skipped (ValueError: sink is down); "
        "the model call itself is unaffected"
    ]


def test_report_error_counts_and_logs_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    before = recorder.handler_errors()
    with caplog.at_level(logging.WARNING, logger="modelforge"):
        for _ in range(3):
            recorder.report_error("Handler.on_end", KeyError("run"))
        recorder.report_error("Handler.on_end", TypeError("other kind"))
    assert recorder.handler_errors() - before == 4
    assert len(caplog.records) == 2
    assert modelforge.stats()["handler_errors"] == recorder.handler_errors()
