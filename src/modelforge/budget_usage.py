"""Budgets as the reports show them: how much of each is used, and its scope as filters.

`usage watch` draws a bar per budget and `usage forecast` says when each would run out.
The budgets themselves (config, spend, checks, alerts) belong to `modelforge.budgets`:
this reads its `configured()` budgets and their `status(conn, budgets, now)`. A build
without that module has no budgets, and both reports leave the section out.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from modelforge.report import Filters


@dataclass(frozen=True)
class BudgetUse:
    name: str
    unit: str  # "usd" or "tokens"
    limit: Decimal
    spent: Decimal
    period_end: datetime | None  # when the period resets; None for a total budget
    filters: Filters  # the calls the budget counts


def budget_uses(conn: sqlite3.Connection, now: datetime | None = None) -> list[BudgetUse] | None:
    """One line per limit of each configured budget (a budget with a USD and a token
    limit gives two), or None when this build has no budgets module."""
    try:
        budgets = importlib.import_module("modelforge.budgets")
    except ImportError:
        return None
    configured = getattr(budgets, "configured", None)
    status = getattr(budgets, "status", None)
    if not callable(configured) or not callable(status):
        return None
    now = now or datetime.now(timezone.utc)
    uses = []
    for standing in status(conn, configured(), now):
        budget = standing.budget
        scope = scope_filters(budget.scope or {})
        spent = {"usd": Decimal(standing.spent_usd), "tokens": Decimal(standing.spent_tokens)}
        for unit in ("usd", "tokens"):
            limit = getattr(budget, unit, None)
            if limit is not None:
                uses.append(
                    BudgetUse(
                        str(budget.name),
                        unit,
                        Decimal(limit),
                        spent[unit],
                        standing.resets_at,
                        scope,
                    )
                )
    return uses


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
