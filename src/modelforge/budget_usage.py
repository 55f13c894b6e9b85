"""Budgets as the reports show them: how much of each is used, from the log.

`usage watch` draws a bar per budget and `usage forecast` says when each would run
out. Budgets themselves (their config, checks and alerts) belong to `modelforge.budgets`;
when this build has no such module, there is nothing to show and both reports say so
by leaving the section out.

A budget is read by the fields the budgets issue documents: `name`, `usd` and/or
`tokens`, `period` (hour, day, week, month or total, calendar periods in UTC) and
`scope` (model glob, provider, agent, tag, or any attribute).
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from modelforge.money import from_parts
from modelforge.records import format_ts
from modelforge.report import Filters, aggregate

# Functions of `modelforge.budgets` that list the configured budgets, tried in order.
_LISTERS = ("configured_budgets", "load_budgets")


@dataclass(frozen=True)
class BudgetUse:
    name: str
    unit: str  # "usd" or "tokens"
    limit: Decimal
    spent: Decimal
    period_end: datetime | None
    filters: Filters


def configured() -> list[Any] | None:
    """The configured budgets, or None when this build has no budgets module."""
    try:
        budgets = importlib.import_module("modelforge.budgets")
    except ImportError:
        return None
    for name in _LISTERS:
        lister = getattr(budgets, name, None)
        if callable(lister):
            return list(lister())
    return []


def budget_uses(conn: sqlite3.Connection, now: datetime | None = None) -> list[BudgetUse] | None:
    """Each configured budget's limit and spend so far in its current period."""
    budgets = configured()
    if budgets is None:
        return None
    now = now or datetime.now(timezone.utc)
    uses = []
    for budget in budgets:
        start, end = period_bounds(str(getattr(budget, "period", "total")), now)
        scope = scope_filters(getattr(budget, "scope", None) or {})
        sums = aggregate(conn, [], replace(scope, since=format_ts(start) if start else None)).get(
            ()
        )
        sums = sums or [0] * 12
        spent_by_unit = {
            "usd": from_parts(sums[6], sums[7], sums[8]),
            "tokens": Decimal(sums[1] + sums[4]),  # input + output
        }
        for unit, spent in spent_by_unit.items():
            limit = getattr(budget, unit, None)
            if limit is None:
                continue
            name = str(getattr(budget, "name", None) or f"{unit} per {budget.period}")
            uses.append(BudgetUse(name, unit, Decimal(limit), spent, end, scope))
    return uses


def period_bounds(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The current calendar period (UTC) containing `now`: its start and its end."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    if period == "hour":
        return hour, hour + timedelta(hours=1)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=7)
    if period == "month":
        first = day.replace(day=1)
        return first, (first + timedelta(days=32)).replace(day=1)
    return None, None


def scope_filters(scope: Mapping[str, Any]) -> Filters:
    """A budget's scope as report filters: model (a glob), provider, agent and tag are
    columns; any other key is an attribute."""
    filters = Filters()
    for key, value in scope.items():
        if key in ("model", "provider", "agent", "tag"):
            setattr(filters, key, str(value))
        else:
            filters.where.append((str(key), str(value)))
    return filters
