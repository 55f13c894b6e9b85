"""report.py directly: the planner that answers from the hourly rollup and the raw rows,
periods in a time zone and per-model breakdowns.

In the time-zone and breakdown tests each call is gpt-4o or gpt-4o-mini with 1000 input
and 100 output tokens: gpt-4o: 1000 × $2.50 + 100 × $10 per 1M = $0.0035; gpt-4o-mini:
1000 × $0.15 + 100 × $0.60 per 1M = $0.00021.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from modelforge import CallRecord, Usage, price, report, store
from modelforge.records import format_ts
from modelforge.report import Filters, ReportError, usage_report
from modelforge.store import UsageLog, open_db

# Calls at these times, three models, two agents: the edges fall inside hours.
TIMES = [
    "2026-11-01T09:10:00.000000Z",
    "2026-11-01T09:50:00.000000Z",
    "2026-11-01T10:00:00.000000Z",
    "2026-11-01T10:30:00.000000Z",
    "2026-11-01T11:59:59.900000Z",
    "2026-11-01T12:00:00.000000Z",
    "2026-11-02T08:15:00.000000Z",
]
MODELS = ["gpt-4o", "gpt-4o-mini", "no-such-model"]


@pytest.fixture
def log(tmp_path: Path) -> sqlite3.Connection:
    conn = open_db(tmp_path / "usage.db")
    rows = []
    for i, ts in enumerate(TIMES * 3):
        model = MODELS[i % 3]
        usage = Usage(input_tokens=1000 + i, cache_read_tokens=i, output_tokens=100)
        record = CallRecord(run_id=f"r{i}", usage=usage, cost=price(model, usage), ts=ts)
        record.model, record.agent, record.tags = model, ("a", "b")[i % 2], (f"t{i % 2}",)
        rows.append(store.record_row(record))
    store.insert_rows(conn, rows)
    return conn


def _queries(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def _rows(groups: report.Groups) -> dict[tuple[object, ...], dict[str, object]]:
    """Sums as reports show them (the money halves joined into one Decimal)."""
    return {key: report._as_row(sums) for key, sums in groups.items()}


def _raw(conn: sqlite3.Connection, groups: list[str], filters: report.Filters) -> report.Groups:
    into: report.Groups = {}
    report._raw_groups(conn, groups, filters, into)
    return into


@pytest.mark.parametrize("groups", [[], ["model"], ["day"], ["hour", "agent"], ["provider"]])
@pytest.mark.parametrize(
    ("since", "until"),
    [
        (None, None),
        ("2026-11-01T09:30:00.000000Z", None),
        (None, "2026-11-01T11:59:59.950000Z"),
        ("2026-11-01T09:30:00.000000Z", "2026-11-01T12:00:00.000000Z"),
        ("2026-11-01T10:00:00.000000Z", "2026-11-01T10:45:00.000000Z"),  # within one hour
    ],
)
def test_the_rollup_and_its_edges_give_what_the_rows_give(
    log: sqlite3.Connection, groups: list[str], since: str | None, until: str | None
) -> None:
    filters = report.Filters(since=since, until=until)
    seen = _queries(log)
    assert _rows(report.aggregate(log, groups, filters)) == _rows(_raw(log, groups, filters))
    whole_hours = since is None or until is None or until[:13] > since[:13]
    rollups = ("FROM calls_hourly", "FROM calls_daily")
    assert any(r in sql for sql in seen for r in rollups) == whole_hours


def test_filters_the_rollup_cannot_answer_read_the_rows(log: sqlite3.Connection) -> None:
    seen = _queries(log)
    filters = report.Filters(tag="t1")
    result = report.aggregate(log, ["model"], filters)
    assert not any("calls_hourly " in sql or "calls_daily " in sql for sql in seen)
    # Odd-numbered calls carry t1: 10 of the 21, gpt-4o-mini / no-such-model / gpt-4o.
    assert sum(sums[0] for sums in result.values()) == 10


def test_totals_are_exact_and_unpriced_calls_are_counted(log: sqlite3.Connection) -> None:
    totals = report.usage_report(log).totals
    assert totals["calls"] == 21
    assert totals["unpriced_calls"] == 7  # every third call is an unknown model
    # gpt-4o (i = 0, 3, …, 18): (1000 + i - i) × $2.50 + i × $1.25 + 100 × $10 per 1M;
    # gpt-4o-mini (i = 1, 4, …, 19): 1000 × $0.15 + i × $0.075 + 100 × $0.60 per 1M.
    gpt_4o = sum(Decimal(1000 * 2.5 + i * 1.25 + 1000) for i in range(0, 21, 3))
    mini = sum(Decimal("150") + Decimal("0.075") * i + Decimal("60") for i in range(1, 21, 3))
    assert totals["cost_usd"] == (gpt_4o + mini) / 10**6


def test_groups_add_up_to_the_total(log: sqlite3.Connection) -> None:
    result = report.usage_report(log, ["day", "model"])
    assert sum(row["calls"] for row in result.rows) == result.totals["calls"]
    # no-such-model's rows have no amount (None), not $0; the priced rows add up.
    priced = [row["cost_usd"] for row in result.rows if row["model"] != "no-such-model"]
    assert sum(priced) == result.totals["cost_usd"]
    assert {row["cost_usd"] for row in result.rows if row["model"] == "no-such-model"} == {None}


def test_a_day_boundary_belongs_to_the_day_it_starts(log: sqlite3.Connection) -> None:
    days = {row["day"]: row["calls"] for row in report.usage_report(log, ["day"]).rows}
    assert days == {"2026-11-01": 18, "2026-11-02": 3}


# --- periods in a time zone, and breakdowns (issue #25) ---------------------------------

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


def test_whole_days_come_from_the_daily_rollup(tmp_path: Path) -> None:
    calls = [(f"2026-11-0{d}T{h:02d}:30:00.000000Z", "gpt-4o") for d in (1, 2, 3) for h in (1, 23)]
    conn = open_db(_log(tmp_path / "days.db", calls), create=False)
    filters = Filters(since="2026-11-01T12:00:00.000000Z")  # mid-day: hours, then days
    seen = _queries(conn)
    rows = _rows(report.aggregate(conn, ["model"], filters))
    assert rows == _rows(_raw(conn, ["model"], filters))
    # the 23:30 call of Nov 1 and the four of Nov 2 and 3: 5 × $0.0035
    assert rows[("openai/gpt-4o",)]["cost_usd"] == GPT4O * 5
    daily = [sql for sql in seen if "FROM calls_daily" in sql]
    assert daily and "day >= '2026-11-02'" in daily[0]
    assert any("FROM calls_hourly" in sql and "hour >= '2026-11-01T12'" in sql for sql in seen)
    seen.clear()
    report.aggregate(conn, ["hour"], filters)  # hours: the daily rollup cannot answer
    assert not any("FROM calls_daily" in sql for sql in seen)


def test_peak_context_from_the_daily_rollup_matches_the_rows(tmp_path: Path) -> None:
    # gpt-4o's window is 128,000 tokens: 32,000 in is 0.25 of it, 96,000 is 0.75.
    log = UsageLog(tmp_path / "peaks.db")
    for n, (ts, model, inputs) in enumerate(
        [
            ("2026-11-01T08:00:00.000000Z", "gpt-4o", 32_000),
            ("2026-11-01T20:00:00.000000Z", "gpt-4o", 96_000),
            ("2026-11-02T08:00:00.000000Z", "gpt-4o", 64_000),
            ("2026-11-03T08:00:00.000000Z", "mystery-model", 5_000),
        ]
    ):
        usage = Usage(input_tokens=inputs, output_tokens=10)
        log.submit(
            CallRecord(run_id=f"p{n}", usage=usage, cost=price(model, usage), ts=ts, model=model)
        )
    log.close()
    conn = open_db(tmp_path / "peaks.db", create=False)

    def both(groups: list[str], filters: Filters) -> report.Peaks:
        seen = _queries(conn)
        peaks = report.group_peaks(conn, groups, filters)
        assert peaks == report._raw_peaks(conn, groups, filters)
        return peaks if any("FROM calls_daily" in sql for sql in seen) else {}

    assert both(["model"], Filters()) == {("openai/gpt-4o",): 0.75, ("mystery-model",): None}
    assert both(["day"], Filters()) == {
        ("2026-11-01",): 0.75,
        ("2026-11-02",): 0.5,
        ("2026-11-03",): None,
    }
    # From mid-day on Nov 1: that day's part from the rows, after the 0.75 call's hour
    assert both([], Filters(since="2026-11-01T21:00:00.000000Z")) == {(): 0.5}
    # Deleting the 0.75 call makes Nov 1 stale: its peak is recounted from the rows.
    writer = open_db(tmp_path / "peaks.db")
    writer.execute("DELETE FROM calls WHERE run_id = 'p1'")
    writer.close()
    conn = open_db(tmp_path / "peaks.db", create=False)
    assert both(["model"], Filters())[("openai/gpt-4o",)] == 0.5


@pytest.mark.parametrize(
    "zone",
    ["Europe/Paris", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Pacific/Kiritimati"],
)
@pytest.mark.parametrize("groups", [["day"], ["week", "model"], ["month"], ["hour"]])
def test_local_periods_equal_each_call_counted_in_its_own_time(
    tmp_path_factory: pytest.TempPathFactory, zone: str, groups: list[str]
) -> None:
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    path = tmp_path_factory.getbasetemp() / "dst.db"
    if not path.exists():
        # A call every 37 minutes across both 2026 DST changes (EU Oct 25, US Nov 1).
        start = datetime(2026, 10, 23, 0, 7, tzinfo=timezone.utc)
        _log(
            path,
            [
                (format_ts(start + timedelta(minutes=37 * n)), ("gpt-4o", "gpt-4o-mini")[n % 2])
                for n in range(500)
            ],
        )
    conn = open_db(path, create=False)
    since = "2026-10-23T05:20:00.000000Z"  # an edge inside an hour, too
    got = report.aggregate(conn, groups, Filters(since=since), tz=zone)
    expected: dict[tuple[object, ...], list[int]] = {}
    rows = conn.execute(
        f"SELECT calls.ts, {report.group_expression('model')} FROM calls WHERE ts >= ?", [since]
    )
    for ts, model in rows:
        local = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(ZoneInfo(zone))
        key = tuple(
            model if g == "model" else local.strftime(report.TIME_FORMATS[g]) for g in groups
        )
        expected.setdefault(key, [0])[0] += 1
    assert {k: v[0] for k, v in got.items() if v[0]} == {k: v[0] for k, v in expected.items()}
    conn.close()
