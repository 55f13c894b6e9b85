"""`usage forecast` on a constructed log with a known answer (the method is in
`modelforge.forecast`'s docstring and docs/cli.md).

Every call is gpt-4o, 1000 in / 100 out: 1000 × $2.50 + 100 × $10 per 1M = $0.0035 and
1,100 tokens. Now is 2026-11-20 12:00 UTC; the history is the 4 complete days before:

    day      writer  reviewer  planner   day's cost
    11-10                      1         (before the history)
    11-16    2                           0.007
    11-17    2       2                   0.014
    11-18                                0
    11-19            2                   0.007
    11-20                      1         (today: not in the rate)

Mean 0.028 / 4 = $0.007 a day. Sample sd: deviations 0, 0.007, -0.007, 0, so
s² = 2 × 0.007² / 3 = 0.000098 / 3. To month-end (Dec 1 00:00) is 10.5 days:
projection 0.007 × 10.5 = $0.0735, spread √(s² × 10.5) = √0.000343 = 0.0185203 (to 7
places), range 0.0549797 … 0.0920203. The month so far is 10 calls: $0.035.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge.cli import cli
from modelforge.forecast import forecast
from modelforge.records import CallRecord, format_ts, price_call
from modelforge.report import Filters, ReportError
from modelforge.store import UsageLog, open_db
from modelforge.usage import Usage

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
CALLS = [
    ("2026-11-10T08:00", "planner"),
    ("2026-11-16T09:00", "writer"),
    ("2026-11-16T10:00", "writer"),
    ("2026-11-17T09:00", "writer"),
    ("2026-11-17T10:00", "writer"),
    ("2026-11-17T11:00", "reviewer"),
    ("2026-11-17T23:59", "reviewer"),
    ("2026-11-19T00:00", "reviewer"),
    ("2026-11-19T15:00", "reviewer"),
    ("2026-11-20T09:00", "planner"),
]


def _log(path: Path, calls: list[tuple[str, str]]) -> Path:
    log = UsageLog(path)
    usage = Usage(input_tokens=1000, output_tokens=100)
    for n, (ts, agent) in enumerate(calls):
        log.submit(
            CallRecord(
                run_id=f"c{n}",
                usage=usage,
                cost=price_call(usage, "gpt-4o", None, "openai"),
                ts=f"{ts}:00.000000Z",
                model="gpt-4o",
                agent=agent,
            )
        )
    log.close()
    return path


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    db = open_db(_log(tmp_path / "usage.db", CALLS), create=False)
    yield db
    db.close()


def test_to_month_end(conn: Any) -> None:
    result = forecast(conn, days=4, now=NOW)
    assert result.history == ["2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19"]
    data = result.as_json()
    assert data["until"] == "2026-12-01T00:00:00.000000Z"
    assert data["horizon_hours"] == "252.00"  # 10.5 days
    totals = data["totals"]
    assert totals["daily_usd_mean"] == "0.007"
    assert totals["usd"] == "0.0735"
    assert (totals["usd_low"], totals["usd_high"]) == ("0.05498", "0.09202")
    assert totals["spent_usd"] == "0.035"
    # 0.035 + 0.0735, and the range moved by the same 0.035
    assert (totals["total_usd"], totals["total_usd_low"]) == ("0.1085", "0.08998")
    # Tokens: 2200 a day mean, 23,100 projected, ± 2200 × √(2 × 10.5 / 3) = 2200 × √7
    assert totals["tokens"] == 23100
    assert (totals["tokens_low"], totals["tokens_high"]) == (17279, 28921)


def test_over_the_next_hours_by_agent(conn: Any) -> None:
    result = forecast(conn, hours=24, days=4, by="agent", now=NOW)
    rows = {row.group: row for row in result.rows}
    assert list(rows) == ["planner", "reviewer", "writer"]
    # writer: 0.007, 0.007, 0, 0 → mean 0.0035; reviewer: 0, 0.007, 0, 0.007 → 0.0035
    assert rows["writer"].usd.projected == rows["reviewer"].usd.projected == Decimal("0.0035")
    assert rows["planner"].usd.projected == 0
    data = result.as_json()
    assert data["period_start"] is None and "spent_usd" not in data["totals"]
    # One day ahead: 0.007 ± s, s = √(0.000098 / 3) = 0.0057155 (to 7 places)
    assert (data["totals"]["usd_low"], data["totals"]["usd_high"]) == ("0.001285", "0.012715")


def test_history_starts_at_the_first_call_and_today_alone_is_a_rate(tmp_path: Path) -> None:
    young = open_db(
        _log(tmp_path / "young.db", [("2026-11-19T10:00", "a"), ("2026-11-20T06:00", "a")]),
        create=False,
    )
    assert forecast(young, days=14, now=NOW).history == ["2026-11-19"]
    new = open_db(_log(tmp_path / "new.db", [("2026-11-20T06:00", "a")]), create=False)
    result = forecast(new, hours=24, now=NOW)
    assert result.history == [] and "today so far" in result.basis
    # $0.0035 in the 12 hours of today so far: $0.007 a day, and no range
    assert result.total.usd.projected == Decimal("0.007")
    assert result.total.usd.low == result.total.usd.high == Decimal("0.007")


def test_bad_options(conn: Any) -> None:
    with pytest.raises(ReportError, match="--by"):
        forecast(conn, by="provider", now=NOW)
    with pytest.raises(ReportError, match="not in the future"):
        forecast(conn, until="2026-11-01", now=NOW)
    assert forecast(conn, until="2026-11-21", days=4, now=NOW).as_json()["totals"]["usd"] == (
        "0.0035"  # 0.007 a day × half a day (to 2026-11-21 00:00)
    )
    assert forecast(conn, filters=Filters(agent="nobody"), now=NOW).total.usd.projected == 0


def test_budget_run_out_dates(conn: Any) -> None:
    from modelforge.budgets import Budget, save_budget

    save_budget(Budget(usd="0.05", period="month", name="month-cap"))
    save_budget(Budget(usd="1", period="month", name="roomy"))
    save_budget(Budget(usd="0.003", period="day", name="planner-daily", scope={"agent": "planner"}))
    run_outs = {b.name: b for b in forecast(conn, days=4, now=NOW).budgets}
    # month-cap: 0.05 − 0.035 spent this month = 0.015 left at 0.007 a day: 2 1/7 days
    cap = run_outs["month-cap"]
    assert cap.spent_usd == Decimal("0.035")
    assert cap.runs_out is not None
    assert abs(cap.runs_out - (NOW + timedelta(days=15 / 7))) < timedelta(seconds=1)
    assert run_outs["roomy"].runs_out is None  # lasts past the month's end
    # planner has already spent 0.0035 today of its 0.003: it ran out already
    assert run_outs["planner-daily"].runs_out == NOW
    assert format_ts(run_outs["planner-daily"].period_end) == "2026-11-21T00:00:00.000000Z"


def test_the_command(tmp_path: Path) -> None:
    path = _log(tmp_path / "cli.db", CALLS)
    result = CliRunner().invoke(cli, ["usage", "forecast", "--db", str(path), "--by", "model"])
    assert result.exit_code == 0, result.output
    assert "Forecast to month-end" in result.output and "openai/gpt-4o" in result.output
    result = CliRunner().invoke(
        cli, ["usage", "forecast", "--db", str(path), "--until", "2030-01-01", "--hours", "3"]
    )
    assert result.exit_code == 2 and "not both" in result.output
