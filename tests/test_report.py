"""`report.usage_report` directly: periods in a time zone, per-model breakdowns, and the
rollup and the raw rows agreeing.

Each call below is gpt-4o or gpt-4o-mini with 1000 input and 100 output tokens:
gpt-4o: 1000 × $2.50 + 100 × $10 per 1M = $0.0035; gpt-4o-mini: 1000 × $0.15 + 100 ×
$0.60 per 1M = $0.00021.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from modelforge import CallRecord, Usage, price
from modelforge.report import Filters, ReportError, usage_report
from modelforge.store import UsageLog, open_db

GPT4O = Decimal("0.0035")
MINI = Decimal("0.00021")


def _log(path: Path, calls: list[tuple[str, str]]) -> Path:
    log = UsageLog(path)
    for n, (ts, model) in enumerate(calls):
        usage = Usage(input_tokens=1000, output_tokens=100)
        log.submit(
            CallRecord(
                run_id=f"c{n}",
                usage=usage,
                cost=price(model, usage),
                ts=ts,
                model=model,
                provider="openai",
                tags=("t",),
            )
        )
    log.close()
    return path


@pytest.fixture
def around_midnight(tmp_path: Path) -> Path:
    return _log(
        tmp_path / "tz.db",
        [
            ("2026-11-01T18:15:00.000000Z", "gpt-4o"),  # Kolkata 23:45 on Nov 1
            ("2026-11-01T18:45:00.000000Z", "gpt-4o"),  # Kolkata 00:15 on Nov 2
            ("2026-11-01T23:30:00.000000Z", "gpt-4o-mini"),  # Tokyo 08:30 on Nov 2
            ("2026-11-02T00:30:00.000000Z", "gpt-4o"),  # New York 19:30 on Nov 1 (EST)
        ],
    )


def _days(path: Path, tz: str | None, filters: Filters | None = None) -> dict[str, Decimal]:
    conn = open_db(path, create=False)
    try:
        result = usage_report(conn, ["day"], filters, tz=tz)
    finally:
        conn.close()
    return {row["day"]: row["cost_usd"] for row in result.rows}


def test_days_are_counted_in_the_time_zone_asked_for(around_midnight: Path) -> None:
    assert _days(around_midnight, None) == {
        "2026-11-01": GPT4O * 2 + MINI,
        "2026-11-02": GPT4O,
    }
    assert _days(around_midnight, "Asia/Tokyo") == {  # +9
        "2026-11-02": GPT4O * 3 + MINI,
    }
    assert _days(around_midnight, "America/New_York") == {  # -5 after Nov 1's DST end
        "2026-11-01": GPT4O * 3 + MINI,
    }


def test_a_half_hour_zone_splits_an_hour_between_days(around_midnight: Path) -> None:
    # Kolkata is +5:30: the two calls of the 18:00 UTC hour fall on different local days.
    expected = {"2026-11-01": GPT4O, "2026-11-02": GPT4O * 2 + MINI}
    assert _days(around_midnight, "Asia/Kolkata") == expected
    # The raw rows (a tag filter keeps the rollup out) say the same.
    assert _days(around_midnight, "Asia/Kolkata", Filters(tag="t")) == expected


def test_the_report_says_which_zone_applies(around_midnight: Path) -> None:
    conn = open_db(around_midnight, create=False)
    assert usage_report(conn, ["day"]).as_json()["tz"] == "UTC"
    assert usage_report(conn, ["day"], tz="Asia/Tokyo").as_json()["tz"] == "Asia/Tokyo"
    with pytest.raises(ReportError, match="unknown time zone 'Mars/Olympus'"):
        usage_report(conn, [], tz="Mars/Olympus")
    conn.close()


def test_breakdown_puts_model_rows_under_each_period(around_midnight: Path) -> None:
    conn = open_db(around_midnight, create=False)
    result = usage_report(conn, ["day"], breakdown=True)
    conn.close()
    first, second = result.rows
    assert (first["day"], first["calls"], first["cost_usd"]) == ("2026-11-01", 3, GPT4O * 2 + MINI)
    assert [(r["model"], r["calls"], r["cost_usd"]) for r in first["breakdown"]] == [
        ("openai/gpt-4o", 2, GPT4O * 2),  # costliest first
        ("openai/gpt-4o-mini", 1, MINI),
    ]
    assert [(r["model"], r["cost_usd"]) for r in second["breakdown"]] == [("openai/gpt-4o", GPT4O)]
    assert result.as_json()["rows"][0]["breakdown"][1]["cost_usd"] == "0.00021"
    assert result.totals["cost_usd"] == GPT4O * 3 + MINI


def test_breakdown_alone_groups_by_day_and_never_by_model_twice(around_midnight: Path) -> None:
    conn = open_db(around_midnight, create=False)
    assert usage_report(conn, [], breakdown=True).group_by == ["day"]
    with pytest.raises(ReportError, match="--breakdown"):
        usage_report(conn, ["model"], breakdown=True)
    conn.close()


def test_the_table_says_which_zone_and_nests_the_breakdown(around_midnight: Path) -> None:
    from click.testing import CliRunner

    from modelforge.cli import cli

    args = ["usage", "--db", str(around_midnight), "--breakdown", "--tz", "Asia/Tokyo"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Periods are in Asia/Tokyo." in result.output
    lines = result.output.splitlines()
    day = next(n for n, line in enumerate(lines) if "2026-11-02" in line)
    # 3 × 0.0035 + 0.00021 = 0.01071 → $0.01; then the models under it, costliest first
    assert "$0.01" in lines[day]
    assert "└ openai/gpt-4o " in lines[day + 1] and "$0.01" in lines[day + 1]
    assert "└ openai/gpt-4o-mini" in lines[day + 2] and "$0.00021" in lines[day + 2]
