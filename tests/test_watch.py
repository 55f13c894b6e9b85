"""`modelforge usage watch`: frames checked against hand-computed totals, and refreshes
that read only the rows written since the last one.

Prices per 1M tokens: gpt-4o $2.50 in, $10 out; gpt-4o-mini $0.15 in, $0.60 out. Every
call here is 1000 in / 100 out: gpt-4o $0.0035, gpt-4o-mini $0.00021.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from modelforge.cli import cli
from modelforge.records import CallRecord, format_ts, price_call
from modelforge.report import Filters, parse_when
from modelforge.store import UsageLog
from modelforge.usage import Usage
from modelforge.watch import Watcher

NOW = datetime.now(timezone.utc)


def _record(
    run_id: str, model: str, agent: str | None, ago: timedelta, session: str | None = None
) -> CallRecord:
    usage = Usage(input_tokens=1000, output_tokens=100)
    return CallRecord(
        run_id=run_id,
        usage=usage,
        cost=price_call(usage, model, None, "openai"),
        ts=format_ts(NOW - ago),
        model=model,
        provider="openai",
        agent=agent,
        attrs={"session": session} if session else {},
    )


def _write(path: Path, *records: CallRecord) -> None:
    log = UsageLog(path)
    for record in records:
        log.submit(record)
    log.close()


def _team_log(path: Path) -> Path:
    _write(
        path,
        _record("w1", "gpt-4o", "writer", timedelta(minutes=90), "nightly"),
        _record("w2", "gpt-4o", "writer", timedelta(minutes=5), "nightly"),
        _record("r1", "gpt-4o-mini", "reviewer", timedelta(minutes=60)),
        _record("p1", "my-own-model", "planner", timedelta(minutes=30)),
        _record("x1", "gpt-4o", "writer", timedelta(hours=5)),  # before --since 2h
    )
    return path


def _frame(*args: str) -> str:
    result = CliRunner().invoke(cli, ["usage", "watch", "--once", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_one_frame_against_the_hand_computed_totals(tmp_path: Path) -> None:
    out = _frame("--db", str(_team_log(tmp_path / "usage.db")), "--since", "2h")
    lines = out.splitlines()
    # w1 + w2 (gpt-4o) + r1 (gpt-4o-mini) = 0.0035 × 2 + 0.00021 = 0.00721; p1 is unpriced
    assert "Total: 4 calls · 4,000 in / 400 out tokens · $0.00721 + 1 unpriced" in out
    # Burn rate over the last 15 minutes: w2 alone, $0.0035 × 4 = $0.014 per hour
    # (shown in cents), 1,100 tokens ÷ 15 minutes = 73 tokens per minute
    assert "Burn rate (last 15 min): $0.01/h · 73 tokens/min" in out

    def cells(name: str) -> list[str]:
        line = next(line for line in lines if f"│ {name} " in line)
        return [cell.strip() for cell in line.split("│") if cell.strip()]

    # By agent and by model sit side by side: the writer's row, then gpt-4o's.
    assert cells("writer") == [
        "writer",
        "2",
        "2,200",
        "$0.007",
        "openai/gpt-4o",
        "2",
        "2,200",
        "$0.007",
    ]
    assert cells("reviewer")[:4] == ["reviewer", "1", "1,100", "$0.00021"]
    assert cells("planner")[:4] == ["planner", "1", "1,100", "— (1 unpriced)"]
    # The last calls, the last written first
    calls = [line.split("│")[2].strip() for line in lines if line[2:4].isdigit()]
    assert calls == ["my-own-model", "openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4o"]


def test_a_session_frame(tmp_path: Path) -> None:
    path = _team_log(tmp_path / "usage.db")
    out = _frame("--db", str(path), "--session", "nightly")
    assert "session nightly" in out
    assert "Total: 2 calls · 2,000 in / 200 out tokens · $0.007" in out


def test_a_refresh_reads_only_new_rows(tmp_path: Path) -> None:
    path = _team_log(tmp_path / "usage.db")
    watcher = Watcher(path, Filters(since=parse_when("2h")))
    first = watcher.refresh()
    assert (first.totals.calls, first.totals.cost) == (4, Decimal("0.00721"))
    assert watcher._conn is not None
    statements: list[str] = []
    watcher._conn.set_trace_callback(statements.append)

    _write(path, _record("w3", "gpt-4o", "writer", timedelta(0)))
    # A row another tool wrote: a plain sqlite3 INSERT counts too.
    plain = sqlite3.connect(path)
    plain.execute(
        "INSERT INTO calls (ts, run_id, model, provider, agent, input_tokens, output_tokens, "
        "cost_usd, priced, status) VALUES (?, 'plain', 'gpt-4o', 'openai', 'reviewer', 1000, "
        "100, '0.0035', 1, 'ok')",
        [format_ts(NOW)],
    )
    plain.commit()
    plain.close()

    frame = watcher.refresh()
    assert frame.new_rows == 2
    # 0.00721 + 2 × 0.0035
    assert (frame.totals.calls, frame.totals.cost) == (6, Decimal("0.01421"))
    by_agent = dict(frame.by_agent)
    assert (by_agent["writer"].calls, by_agent["reviewer"].cost) == (3, Decimal("0.00371"))
    assert [c.model for c in frame.last_calls[:2]] == ["gpt-4o", "openai/gpt-4o"]  # newest first
    # One query, for rows past the last id seen; the rollup and old rows are not read again.
    assert len(statements) == 1 and "WHERE calls.id > 5 AND" in statements[0]
    assert "calls_hourly " not in statements[0]

    statements.clear()
    assert watcher.refresh().new_rows == 0
    assert len(statements) == 1


def test_a_missing_log_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    watcher = Watcher(path, Filters())
    assert "Waiting for" in _frame("--db", str(path))
    assert watcher.refresh().exists is False
    _write(path, _record("a", "gpt-4o", None, timedelta(0)))
    frame = watcher.refresh()
    assert frame.exists and frame.totals.calls == 1


def test_budget_bars_when_budgets_are_configured(tmp_path: Path) -> None:
    from modelforge.budgets import Budget, save_budget

    path = _team_log(tmp_path / "usage.db")
    assert "Budgets" not in _frame("--db", str(path))  # none configured
    save_budget(Budget(usd="0.02", period="total", name="team-total"))
    line = next(line for line in _frame("--db", str(path)).splitlines() if "team-total" in line)
    # every call so far: gpt-4o 3 × 0.0035 + gpt-4o-mini 0.00021 = 0.01071 of 0.02 (54%)
    assert "$0.01 (54%)" in line and "$0.02" in line
