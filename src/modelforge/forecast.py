"""Project spend and tokens from the recent daily rate, with a range from its variation.

The method, in full (docs/cli.md repeats it):

1. History: the last `days` complete UTC days before today, but none before the day of
   the first matching call, so a new log is not diluted by days it did not exist.
2. For each of those days, the priced cost and the tokens (input + output) of the
   matching calls; days without calls count as 0.
3. The daily mean `m` and the sample standard deviation `s` of those values (`s` is 0
   with fewer than two days).
4. Over a horizon of `H` days (fractional: from now to the target), the projection is
   `m × H`, and the range is `m × H ± s × √H`, the spread of a sum of `H` days that vary
   independently as the history did; the low end is never below 0.
5. With no complete day yet, the rate is today's so far (`spent today ÷ hours elapsed`),
   with no range.

For `--until month-end` the month's spend so far is added, to give the month's total.
Amounts are rounded to the micro-dollar: a forecast is an estimate, never a bill.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from modelforge.records import format_ts
from modelforge.report import Filters, ReportError, aggregate, parse_when

FORECAST_SCHEMA = "modelforge.forecast/1"
BY_CHOICES = ("model", "agent")
MICRO = Decimal("0.000001")
_DAY = timedelta(days=1)
# Indices into report.aggregate's sums.
_CALLS, _INPUT, _OUTPUT, _UNPRICED = 0, 1, 4, 9
_WHOLE, _MICRO, _PICO = 6, 7, 8


@dataclass(frozen=True)
class Series:
    """One quantity per history day, and what it projects to over `horizon_days`."""

    daily: list[Decimal]
    mean: Decimal
    sd: Decimal
    projected: Decimal
    low: Decimal
    high: Decimal

    @classmethod
    def of(cls, daily: list[Decimal], horizon_days: Decimal) -> Series:
        n = len(daily)
        mean = sum(daily, Decimal(0)) / n if n else Decimal(0)
        sd = Decimal(0)
        if n >= 2:
            sd = (sum(((v - mean) ** 2 for v in daily), Decimal(0)) / (n - 1)).sqrt()
        projected = mean * horizon_days
        spread = sd * horizon_days.sqrt()
        return cls(
            daily, mean, sd, projected, max(Decimal(0), projected - spread), projected + spread
        )


@dataclass(frozen=True)
class Projection:
    """The forecast for one group (a model, an agent) or for everything (`group` None)."""

    group: str | None
    usd: Series
    tokens: Series
    spent_usd: Decimal  # in the period so far (month-end), else 0
    spent_tokens: int
    unpriced_calls: int  # in the history: their cost is not in the rate

    def as_json(self, so_far: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "daily_usd_mean": _usd(self.usd.mean),
            "daily_usd_sd": _usd(self.usd.sd),
            "usd": _usd(self.usd.projected),
            "usd_low": _usd(self.usd.low),
            "usd_high": _usd(self.usd.high),
            "daily_tokens_mean": _tokens(self.tokens.mean),
            "tokens": _tokens(self.tokens.projected),
            "tokens_low": _tokens(self.tokens.low),
            "tokens_high": _tokens(self.tokens.high),
            "unpriced_calls": self.unpriced_calls,
        }
        if so_far:
            data |= {
                "spent_usd": _usd(self.spent_usd),
                "spent_tokens": self.spent_tokens,
                "total_usd": _usd(self.spent_usd + self.usd.projected),
                "total_usd_low": _usd(self.spent_usd + self.usd.low),
                "total_usd_high": _usd(self.spent_usd + self.usd.high),
            }
        return data


@dataclass(frozen=True)
class BudgetRunOut:
    """When a USD budget would be used up at the forecast rate (None: not this period)."""

    name: str
    limit_usd: Decimal
    spent_usd: Decimal
    period_end: datetime
    runs_out: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit_usd": str(self.limit_usd),
            "spent_usd": str(self.spent_usd),
            "period_end": format_ts(self.period_end),
            "runs_out": format_ts(self.runs_out) if self.runs_out else None,
        }


@dataclass
class Forecast:
    now: datetime
    until: datetime
    target: str  # "month-end", or the --until / --hours asked for
    history: list[str]  # the UTC days the rate comes from; empty: today so far
    by: str | None
    rows: list[Projection]
    total: Projection
    period_start: datetime | None  # month-end: the month's first instant
    filters: dict[str, Any]
    budgets: list[BudgetRunOut] = field(default_factory=list)
    empty: bool = False  # no matching call at all

    @property
    def horizon_hours(self) -> Decimal:
        return _hours(self.until - self.now)

    @property
    def basis(self) -> str:
        if self.empty:
            return "no calls yet"
        if not self.history:
            return "today so far (no complete day in the log yet)"
        first, last = self.history[0], self.history[-1]
        days = len(self.history)
        return f"{days} complete UTC day{'s' if days > 1 else ''}, {first} … {last}"

    def as_json(self) -> dict[str, Any]:
        so_far = self.period_start is not None
        rows = []
        for row in self.rows:
            rows.append({self.by or "group": row.group, **row.as_json(so_far)})
        return {
            "schema": FORECAST_SCHEMA,
            "now": format_ts(self.now),
            "until": format_ts(self.until),
            "target": self.target,
            "horizon_hours": str(self.horizon_hours.quantize(Decimal("0.01"))),
            "history_days": self.history,
            "period_start": format_ts(self.period_start) if self.period_start else None,
            "by": self.by,
            "filters": self.filters,
            "rows": rows,
            "totals": self.total.as_json(so_far),
            "budgets": [b.as_json() for b in self.budgets],
        }


def forecast(
    conn: sqlite3.Connection,
    *,
    until: str = "month-end",
    hours: float | None = None,
    days: int = 14,
    by: str | None = None,
    filters: Filters | None = None,
    now: datetime | None = None,
    with_budgets: bool = True,
) -> Forecast:
    """Project cost and tokens to `until` (`month-end`, or a date or ISO time) or over
    the next `hours`, from the last `days` complete UTC days (see the module doc)."""
    if by is not None and by not in BY_CHOICES:
        raise ReportError("--by", f"forecast groups by {' or '.join(BY_CHOICES)}")
    if days < 1:
        raise ReportError("--days", "must be at least 1")
    now = now or datetime.now(timezone.utc)
    scope = replace(filters or Filters(), since=None, until=None)
    target, end, period_start = _horizon(until, hours, now)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    history, empty = _history_days(conn, scope, today, days)
    groups = ["day", by] if by else ["day"]
    window = replace(scope, since=format_ts(today - _DAY * len(history)), until=format_ts(now))
    sums = aggregate(conn, groups, window)
    spent: dict[tuple[Any, ...], list[int]] = {}
    if period_start is not None:
        month = replace(scope, since=format_ts(period_start), until=format_ts(now))
        spent = aggregate(conn, [by] if by else [], month)
    horizon_days = _hours(end - now) / 24
    names = sorted({key[1] for key in sums} | {key[0] for key in spent}, key=_order) if by else []
    rows = [
        _project(sums, spent, history, today, now, horizon_days, name, by is not None)
        for name in names
    ]
    total = _project(sums, spent, history, today, now, horizon_days, None, False)
    result = Forecast(
        now, end, target, history, by, rows, total, period_start, scope.as_dict(), empty=empty
    )
    if with_budgets:
        result.budgets = _run_outs(conn, now, days)
    return result


def _run_outs(conn: sqlite3.Connection, now: datetime, days: int) -> list[BudgetRunOut]:
    """When each USD budget of a calendar period would be used up at its scope's rate."""
    from modelforge.budget_usage import budget_uses

    run_outs = []
    for use in budget_uses(conn, now) or []:
        if use.unit != "usd" or use.period_end is None:
            continue
        rate = forecast(
            conn, hours=1, days=days, filters=use.filters, now=now, with_budgets=False
        ).total.usd.mean
        left = use.limit - use.spent
        when: datetime | None = now
        if left > 0:
            when = now + timedelta(days=float(left / rate)) if rate > 0 else None
            if when is not None and when >= use.period_end:
                when = None
        run_outs.append(BudgetRunOut(use.name, use.limit, use.spent, use.period_end, when))
    return run_outs


def _horizon(
    until: str, hours: float | None, now: datetime
) -> tuple[str, datetime, datetime | None]:
    if hours is not None:
        if hours <= 0:
            raise ReportError("--hours", "must be more than 0")
        return f"next {hours:g} hours", now + timedelta(hours=hours), None
    if until == "month-end":
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        return "month-end", next_month, month_start
    end = datetime.fromisoformat(parse_when(until, "--until").replace("Z", "+00:00"))
    if end <= now:
        raise ReportError("--until", f"{until!r} is not in the future")
    return until, end, None


def _history_days(
    conn: sqlite3.Connection, scope: Filters, today: datetime, days: int
) -> tuple[list[str], bool]:
    """The complete days the rate comes from, and whether no call matches at all."""
    where, params = scope.sql()
    first = conn.execute(f"SELECT min(calls.ts) FROM calls WHERE {where}", params).fetchone()[0]
    if first is None:
        return [], True
    first_day = datetime.fromisoformat(first[:10]).replace(tzinfo=timezone.utc)
    start = max(today - _DAY * days, first_day)
    count = max(0, (today - start).days)
    return [(start + _DAY * i).strftime("%Y-%m-%d") for i in range(count)], False


def _project(
    sums: dict[tuple[Any, ...], list[int]],
    spent: dict[tuple[Any, ...], list[int]],
    history: list[str],
    today: datetime,
    now: datetime,
    horizon_days: Decimal,
    name: str | None,
    grouped: bool,
) -> Projection:
    def matches(key: tuple[Any, ...]) -> bool:
        return not grouped or key[1] == name

    today_text = today.strftime("%Y-%m-%d")
    daily_usd = dict.fromkeys(history, Decimal(0))
    daily_tokens = dict.fromkeys(history, Decimal(0))
    unpriced = 0
    for key, values in sums.items():
        if not matches(key):
            continue
        day = key[0]
        if history and day not in daily_usd:
            continue  # today's partial day: not part of a complete-day rate
        if not history and day != today_text:
            continue
        daily_usd[day] = daily_usd.get(day, Decimal(0)) + _cost(values)
        daily_tokens[day] = daily_tokens.get(day, Decimal(0)) + values[_INPUT] + values[_OUTPUT]
        unpriced += values[_UNPRICED]
    usd_values, token_values = list(daily_usd.values()), list(daily_tokens.values())
    if not history:
        # Only today: its spend so far, scaled to a whole day.
        elapsed = _hours(now - today) or Decimal(1)
        usd_values = [v * 24 / elapsed for v in usd_values]
        token_values = [v * 24 / elapsed for v in token_values]
    spent_values = [int(v or 0) for v in spent.get((name,) if grouped else (), [0] * 12)]
    return Projection(
        group=name,
        usd=Series.of(usd_values, horizon_days),
        tokens=Series.of(token_values, horizon_days),
        spent_usd=_cost(spent_values),
        spent_tokens=spent_values[_INPUT] + spent_values[_OUTPUT],
        unpriced_calls=unpriced,
    )


def _cost(values: list[int]) -> Decimal:
    from modelforge.money import from_parts

    return from_parts(values[_WHOLE], values[_MICRO], values[_PICO])


def _hours(delta: timedelta) -> Decimal:
    return Decimal(int(delta.total_seconds() * 1_000_000)) / Decimal(3_600_000_000)


def _usd(amount: Decimal) -> str:
    from modelforge.money import money_text

    return money_text(amount.quantize(MICRO, rounding=ROUND_HALF_UP)) or "0"


def _tokens(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _order(name: Any) -> tuple[bool, str]:
    return (name is None, str(name or ""))
