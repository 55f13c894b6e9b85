"""report.py directly: the planner that answers from the hourly rollup and the raw rows."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from modelforge import CallRecord, Usage, price, report, store
from modelforge.store import open_db

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
    assert any("FROM calls_hourly" in sql for sql in seen) == whole_hours


def test_filters_the_rollup_cannot_answer_read_the_rows(log: sqlite3.Connection) -> None:
    seen = _queries(log)
    filters = report.Filters(tag="t1")
    result = report.aggregate(log, ["model"], filters)
    assert not any("calls_hourly " in sql for sql in seen)
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
    assert sum(row["cost_usd"] for row in result.rows) == result.totals["cost_usd"]


def test_a_day_boundary_belongs_to_the_day_it_starts(log: sqlite3.Connection) -> None:
    days = {row["day"]: row["calls"] for row in report.usage_report(log, ["day"]).rows}
    assert days == {"2026-11-01": 18, "2026-11-02": 3}
