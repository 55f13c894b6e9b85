"""How the logged calls use their tokens, what prompt caching saved, and what the same
calls would cost on another model.

Everything comes from the log's token columns. Repricing is exact: calls are grouped by
what decides their price (model, provider, service tier, response-cache hit, and which
long-context tier their prompt size falls in), and each group's summed tokens are
priced at that group's prices, which are linear in the tokens. Savings and repricing use
today's price table; `cost_usd` is what the log recorded.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import ValidationError

from modelforge.money import from_parts, money_text
from modelforge.pricing.catalog import CatalogEntry
from modelforge.pricing.cost import cost_for
from modelforge.pricing.resolve import get_resolver
from modelforge.records import price_call
from modelforge.report import Filters, ReportError, aggregate, group_expression
from modelforge.usage import TOKEN_FIELDS, Usage

EFFICIENCY_SCHEMA = "modelforge.efficiency/1"
BY_CHOICES = ("model", "agent")
DEFAULT_SINCE = "7d"


@dataclass
class Tally:
    """The sums behind one report row: counts and cost as logged (from the rollups),
    savings and repricing from the token columns."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # 5-minute and 1-hour writes
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_calls: int = 0
    cache_savings_usd: Decimal = Decimal(0)
    as_model_usd: Decimal = Decimal(0)
    unrepriced_calls: int = 0  # rows whose token columns contradict each other

    @classmethod
    def of(cls, sums: list[int]) -> Tally:
        """From `report.aggregate`'s sums (calls, input, cache read, cache write, output,
        reasoning, whole, micro, pico, unpriced…)."""
        return cls(
            calls=sums[0],
            input_tokens=sums[1],
            cache_read_tokens=sums[2],
            cache_write_tokens=sums[3],
            output_tokens=sums[4],
            reasoning_tokens=sums[5],
            cost_usd=from_parts(sums[6], sums[7], sums[8]),
            unpriced_calls=sums[9],
        )

    def as_json(self, as_model: bool) -> dict[str, Any]:
        inputs, outputs = self.input_tokens, self.output_tokens
        nothing_priced = self.calls > 0 and self.unpriced_calls == self.calls
        data: dict[str, Any] = {
            "calls": self.calls,
            "input_tokens": inputs,
            "output_tokens": outputs,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "avg_input_tokens": _ratio(inputs, self.calls, 1),
            "avg_output_tokens": _ratio(outputs, self.calls, 1),
            "cache_hit_rate": _ratio(self.cache_read_tokens, inputs, 4),
            "reasoning_share": _ratio(self.reasoning_tokens, outputs, 4),
            "output_input_ratio": _ratio(outputs, inputs, 4),
            "cost_usd": None if nothing_priced else money_text(self.cost_usd),
            "unpriced_calls": self.unpriced_calls,
            "cache_savings_usd": None if nothing_priced else money_text(self.cache_savings_usd),
        }
        if as_model:
            data["as_model_cost_usd"] = money_text(self.as_model_usd)
            data["unrepriced_calls"] = self.unrepriced_calls
        return data


@dataclass(frozen=True)
class TraceCost:
    trace: str
    calls: int
    cost_usd: Decimal
    unpriced_calls: int
    first_ts: str
    models: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "calls": self.calls,
            "cost_usd": money_text(self.cost_usd),
            "unpriced_calls": self.unpriced_calls,
            "first_ts": self.first_ts,
            "models": self.models,
        }


@dataclass
class Efficiency:
    by: str | None
    rows: dict[str | None, Tally]
    totals: Tally
    traces: list[TraceCost]
    as_model: str | None  # the catalog model repriced on
    filters: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        repriced = self.as_model is not None
        return {
            "schema": EFFICIENCY_SCHEMA,
            "by": self.by,
            "as_model": self.as_model,
            "filters": self.filters,
            "rows": [
                {self.by or "group": name, **tally.as_json(repriced)}
                for name, tally in self.rows.items()
            ],
            "totals": self.totals.as_json(repriced),
            "costliest_traces": [t.as_json() for t in self.traces],
        }


def efficiency(
    conn: sqlite3.Connection,
    filters: Filters | None = None,
    *,
    by: str | None = None,
    as_model: str | None = None,
    top: int = 5,
) -> Efficiency:
    """Efficiency figures per `by` group (model or agent) and in total, the `top`
    costliest traces, and with `as_model` the cost of the same tokens on that model."""
    if by is not None and by not in BY_CHOICES:
        raise ReportError("--by", f"efficiency groups by {' or '.join(BY_CHOICES)}")
    filters = filters or Filters()
    target = _target(as_model)
    groups = [by] if by else []
    rows = {
        key[0] if by else None: Tally.of(sums)
        for key, sums in aggregate(conn, groups, filters).items()
    }
    for name, saved, repriced, unrepriced in _repriced(conn, filters, by, target):
        tally = rows.setdefault(name, Tally())
        tally.cache_savings_usd += saved
        tally.as_model_usd += repriced
        tally.unrepriced_calls += unrepriced
    totals = Tally()
    for tally in rows.values():
        for name in Tally.__dataclass_fields__:
            setattr(totals, name, getattr(totals, name) + getattr(tally, name))
    ordered = dict(sorted(rows.items(), key=lambda item: (-item[1].cost_usd, str(item[0]))))
    if not by:
        ordered = {}
    traces = costliest_traces(conn, filters, top) if top else []
    return Efficiency(
        by, ordered, totals, traces, target.key if target else None, filters.as_dict()
    )


def _target(as_model: str | None) -> CatalogEntry | None:
    if as_model is None:
        return None
    from modelforge.errors import UnknownModelError

    resolver = get_resolver()
    entry = resolver.resolve(as_model, None)
    if entry is None:
        raise UnknownModelError(as_model, None, resolver.close_matches(as_model))
    return entry


def _tier_sizes(entries: list[CatalogEntry | None]) -> set[int]:
    """Every prompt size at which one of `entries` changes to a long-context tier."""
    sizes: set[int] = set()
    for entry in entries:
        if entry is not None:
            sizes.update(t.size for t in entry.tiers)
            for tiers in entry.mode_tiers.values():
                sizes.update(t.size for t in tiers)
    return sizes


def _tier_bucket(sizes: set[int]) -> str:
    """SQL numbering the long-context tiers a prompt size falls in, so calls in one
    bucket share their tier on every model whose sizes are among `sizes`."""
    if not sizes:
        return "0"
    cases = " ".join(
        f"WHEN calls.input_tokens > {size} THEN {n}"
        for n, size in sorted(enumerate(sorted(sizes), 1), reverse=True)
    )
    return f"CASE {cases} ELSE 0 END"


Repriced = list[tuple[str | None, Decimal, Decimal, int]]


def _repriced(
    conn: sqlite3.Connection, filters: Filters, by: str | None, target: CatalogEntry | None
) -> Repriced:
    """(group, saved by caching, cost on `target`, calls not repriced) per group of calls
    that share their prices.

    The groups are cut at the tier sizes of the catalog models the rollup says the
    calls were priced as; a call that resolves to another model today may bring other
    sizes, and then the groups are cut again with those too.
    """
    resolver = get_resolver()
    logged = aggregate(conn, ["catalog_model"], filters)
    sizes = _tier_sizes([target, *(resolver.resolve(key[0]) for key in logged if key[0])])
    while True:
        result, seen = _repriced_at(conn, filters, by, target, sizes)
        if seen <= sizes:
            return result
        sizes |= seen


def _repriced_at(
    conn: sqlite3.Connection,
    filters: Filters,
    by: str | None,
    target: CatalogEntry | None,
    sizes: set[int],
) -> tuple[Repriced, set[int]]:
    where, params = filters.sql()
    group = group_expression(by) if by else "NULL"
    tokens = ", ".join(f"sum(coalesce(calls.{name}, 0))" for name in TOKEN_FIELDS)
    sql = f"""SELECT {group}, calls.model, calls.response_model, calls.provider,
    calls.service_tier, coalesce(calls.cache_hit, 0), {_tier_bucket(sizes)},
    min(coalesce(calls.input_tokens, 0)), count(*), {tokens},
    sum(CASE WHEN coalesce(calls.priced, calls.cost_usd IS NOT NULL
        OR calls.cost_pusd IS NOT NULL) = 0 THEN 1 ELSE 0 END)
FROM calls
WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6, 7"""
    result: Repriced = []
    seen: set[int] = set()
    for row in conn.execute(sql, params):
        name, model, served, provider, tier, cache_hit, _, smallest, calls = row[:9]
        sums = row[9 : 9 + len(TOKEN_FIELDS)]
        unpriced = row[-1]
        try:
            usage = Usage.model_validate(
                {"service_tier": tier, **{n: int(v) for n, v in zip(TOKEN_FIELDS, sums)}}
            )
        except ValidationError:
            result.append((name, Decimal(0), Decimal(0), calls))  # parts over their whole
            continue
        size = int(smallest or 0)
        saved = repriced = Decimal(0)
        if not cache_hit:
            entry = price_call(Usage(), model, served, provider).entry
            seen |= _tier_sizes([entry])
            if entry is not None and not unpriced:
                saved = _savings(entry, usage, size)
            if target is not None:
                repriced = _total(cost_for(target, usage, tier_input_tokens=size))
        result.append((name, saved, repriced, 0))
    return result, seen


def _savings(entry: CatalogEntry, usage: Usage, size: int) -> Decimal:
    """The same tokens' cost with no cache reads or writes (all plain input), less their
    cost as they were: what caching saved, negative where writes cost more than reads
    saved."""
    uncached = usage.model_copy(
        update={"cache_read_tokens": 0, "cache_write_tokens": 0, "cache_write_1h_tokens": 0}
    )
    with_cache = cost_for(entry, usage, tier_input_tokens=size)
    without = cost_for(entry, uncached, tier_input_tokens=size)
    return _total(without) - _total(with_cache)


def _total(cost: Any) -> Decimal:
    return cost.total if cost.total is not None else Decimal(0)


def costliest_traces(conn: sqlite3.Connection, filters: Filters, top: int) -> list[TraceCost]:
    """The `top` traces (a call with no trace is its own) by recorded cost."""
    where, params = filters.sql()
    model = group_expression("model")
    # `calls_costed` (m003) is `calls` with each cost split into whole dollars and
    # pico-dollars; read under the name `calls`, the filters apply to it as they are.
    sql = f"""SELECT coalesce(calls.trace_id, calls.run_id), count(*), sum(calls.cost_usd_whole),
    sum(calls.cost_pusd_frac / 1000000), sum(calls.cost_pusd_frac % 1000000),
    sum(CASE WHEN coalesce(calls.priced, calls.cost_usd IS NOT NULL
        OR calls.cost_pusd IS NOT NULL) = 0 THEN 1 ELSE 0 END),
    min(calls.ts), group_concat(DISTINCT {model})
FROM calls_costed AS calls
WHERE {where}
GROUP BY 1
ORDER BY sum(calls.cost_usd_whole) + sum(calls.cost_pusd_frac / 1e12) DESC, 1
LIMIT ?"""
    traces = []
    for trace, calls, whole, micro, pico, unpriced, first, models in conn.execute(
        sql, [*params, top]
    ):
        names = sorted(set(models.split(","))) if models else []
        cost = from_parts(whole, micro, pico)
        traces.append(TraceCost(trace, calls, cost, unpriced, first, names))
    return traces


def _ratio(part: int, whole: int, places: int) -> float:
    if not whole:
        return 0.0
    exact = Decimal(part) / Decimal(whole)
    return float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
