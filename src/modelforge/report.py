"""Aggregations over the usage log, done in SQL with bound parameters.

Costs are summed exactly: the log splits each call's cost into whole dollars and
pico-dollars (see `money`), so SQL's integer sums are exact and never overflow, and the
halves are joined back into a `Decimal`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from modelforge.errors import ModelForgeError
from modelforge.money import from_parts
from modelforge.records import format_ts

REPORT_SCHEMA = "modelforge.usage/1"

# group name -> SQL expression over `calls`
TIME_GROUPS = {
    "hour": "substr(calls.ts, 1, 13) || ':00'",
    "day": "substr(calls.ts, 1, 10)",
    "week": "strftime('%Y-W%W', substr(calls.ts, 1, 19))",
    "month": "substr(calls.ts, 1, 7)",
}
COLUMN_GROUPS = {
    "model": "coalesce(calls.response_model, calls.model)",
    "catalog_model": "calls.catalog_model",
    "provider": "calls.provider",
    "agent": "calls.agent",
    "trace": "calls.trace_id",
    "status": "calls.status",
    "framework": "calls.framework",
    "operation": "calls.operation",
    "tag": "tag_each.value",
}
BUILTIN_GROUPS = tuple(TIME_GROUPS) + tuple(COLUMN_GROUPS)
_ATTR_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_RELATIVE = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PICO = Decimal(10) ** 12


class ReportError(ModelForgeError, ValueError):
    """A report option has a value we cannot use (bad --by, date, --where…)."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.detail = message
        super().__init__(f"{option}: {message}")


def parse_when(text: str, option: str = "--since", now: datetime | None = None) -> str:
    """`7d`, `24h`, `30m`, `2w`, `2026-11-01` or an ISO timestamp → UTC log timestamp.

    Raises `ReportError` for text it cannot read and for times outside the years 1 to
    9999 once in UTC (`--since 1000000d`, `9999-12-31T23:59:59-05:00`).
    """
    value = text.strip()
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(value.lower())
    if match:
        return _cutoff(now, _age(match, text, option), text, option)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            option,
            f"cannot read {_shown(text)} as a time; use 7d, 24h, 2026-11-01 or an ISO timestamp",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return format_ts(moment)
    except OverflowError:  # the shift to UTC left the years 1 to 9999
        raise ReportError(option, f"{_shown(text)} is {_OUT_OF_RANGE}") from None


def parse_age(text: str, option: str = "--older-than") -> timedelta:
    """`90d`, `12h`, `30m`, `4w` → a timedelta that reaches no further back than year 1."""
    match = _RELATIVE.match(text.strip().lower())
    if not match:
        raise ReportError(option, f"cannot read {_shown(text)} as an age; use e.g. 90d, 12h or 4w")
    age = _age(match, text, option)
    _cutoff(datetime.now(timezone.utc), age, text, option)
    return age


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}… ({len(text)} characters)"


_OUT_OF_RANGE = "out of range: times must fall in the years 1 to 9999 (UTC)"


def _age(match: re.Match[str], text: str, option: str) -> timedelta:
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except (OverflowError, ValueError):  # past timedelta's 999,999,999 days, or int's digits
        raise ReportError(option, f"{_shown(text)} is {_OUT_OF_RANGE}") from None


def _cutoff(now: datetime, age: timedelta, text: str, option: str) -> str:
    try:
        return format_ts(now - age)
    except OverflowError:
        raise ReportError(option, f"{_shown(text)} is {_OUT_OF_RANGE}") from None


@dataclass
class Filters:
    """Which calls a report covers. Every value is bound as an SQL parameter."""

    since: str | None = None
    until: str | None = None
    model: str | None = None
    provider: str | None = None
    agent: str | None = None
    tag: str | None = None
    where: list[tuple[str, str]] = field(default_factory=list)

    def sql(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since:
            clauses.append("calls.ts >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("calls.ts < ?")
            params.append(self.until)
        if self.model:
            clauses.append("coalesce(calls.response_model, calls.model) GLOB ?")
            params.append(self.model)
        if self.provider:
            clauses.append("calls.provider = ?")
            params.append(self.provider)
        if self.agent:
            clauses.append("calls.agent = ?")
            params.append(self.agent)
        if self.tag:
            clauses.append("EXISTS (SELECT 1 FROM json_each(calls.tags) WHERE value = ?)")
            params.append(self.tag)
        for key, value in self.where:
            clauses.append("json_extract(calls.attrs, ?) = ?")
            params += [attr_path(key), value]
        return (" AND ".join(clauses) or "1"), params

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if v and k != "where"}
        if self.where:
            data["where"] = dict(self.where)
        return data


def attr_path(key: str) -> str:
    # A JSON path with the key quoted; the key itself is still only a bound parameter.
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_where(items: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReportError("--where", f"expected KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value))
    return pairs


def group_expression(name: str) -> str:
    if name in TIME_GROUPS:
        return TIME_GROUPS[name]
    if name in COLUMN_GROUPS:
        return COLUMN_GROUPS[name]
    raise ReportError("--by", f"unknown grouping {name!r}")


def check_groups(names: Sequence[str]) -> list[str]:
    """Validate --by values: built-in names, or `attr:KEY` / a bare attribute key."""
    checked = []
    for name in names:
        if name in BUILTIN_GROUPS:
            checked.append(name)
            continue
        key = name.removeprefix("attr:")
        if not _ATTR_KEY.match(key):
            raise ReportError(
                "--by",
                f"unknown grouping {name!r}; use one of {', '.join(BUILTIN_GROUPS)} or an "
                "attribute key",
            )
        checked.append(f"attr:{key}")
    if len(set(checked)) != len(checked):
        raise ReportError("--by", "each grouping may be given once")
    return checked


@dataclass
class UsageReport:
    group_by: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    unpriced: list[dict[str, Any]]
    filters: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The documented, stable JSON shape (`schema: modelforge.usage/1`)."""
        return {
            "schema": REPORT_SCHEMA,
            "group_by": [g.removeprefix("attr:") for g in self.group_by],
            "filters": self.filters,
            "rows": [_jsonable(r) for r in self.rows],
            "totals": _jsonable(self.totals),
            "unpriced": self.unpriced,
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}


_SUM_NAMES = (
    "calls",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_whole",
    "cost_micro",
    "cost_pico",
    "unpriced_calls",
    "estimated_calls",
    "error_calls",
)


def _sum_columns(source: str, calls: str) -> str:
    """SQL sums, in `_SUM_NAMES` order, over rows of `calls_hourly`'s shape that each
    stand for `calls` calls: the rollup itself, or `calls_hourly_rows` (one row a call).
    One definition of what a call adds, whichever answers. Cache writes of both TTLs are
    one column in reports; pico-dollars are summed in halves so no sum overflows."""
    s = source
    return (
        f"sum({calls}), sum({s}.input_tokens), sum({s}.cache_read_tokens), "
        f"sum({s}.cache_write_tokens + {s}.cache_write_1h_tokens), sum({s}.output_tokens), "
        f"sum({s}.reasoning_tokens), sum({s}.cost_usd_whole), "
        f"sum({s}.cost_pusd_frac / 1000000), sum({s}.cost_pusd_frac % 1000000), "
        f"sum(CASE WHEN {s}.priced = 0 THEN {calls} ELSE 0 END), "
        f"sum(CASE WHEN {s}.estimated = 1 THEN {calls} ELSE 0 END), "
        f"sum(CASE WHEN {s}.status = 'error' THEN {calls} ELSE 0 END)"
    )


_RAW_SUMS = _sum_columns("r", "1")
_ROLLUP_SUMS = _sum_columns("calls_hourly", "calls_hourly.calls")
# Groupings the hourly rollup can answer, as expressions over `calls_hourly`.
ROLLUP_GROUPS = {
    "hour": "hour || ':00'",
    "day": "substr(hour, 1, 10)",
    "week": "strftime('%Y-W%W', substr(hour, 1, 10))",
    "month": "substr(hour, 1, 7)",
    "model": "nullif(model, '')",
    "catalog_model": "nullif(catalog_model, '')",
    "provider": "nullif(provider, '')",
    "agent": "nullif(agent, '')",
    "status": "nullif(status, '')",
    "framework": "nullif(framework, '')",
}
Sums = list[int]
Groups = dict[tuple[Any, ...], Sums]


def _add(into: Groups, key: tuple[Any, ...], sums: Sequence[int]) -> None:
    current = into.get(key)
    if current is None:
        into[key] = [int(v or 0) for v in sums]
    else:
        for i, value in enumerate(sums):
            current[i] += int(value or 0)


def _raw_groups(
    conn: sqlite3.Connection, groups: Sequence[str], filters: Filters, into: Groups
) -> None:
    """Aggregate straight from `calls` (any grouping, any filter)."""
    where, params = filters.sql()
    keys, key_params, joins = [], [], ""
    for i, name in enumerate(groups):
        if name.startswith("attr:"):
            keys.append(f"json_extract(calls.attrs, ?) AS g{i}")
            key_params.append(attr_path(name[5:]))
        else:
            keys.append(f"{group_expression(name)} AS g{i}")
            if name == "tag":
                joins = " LEFT JOIN json_each(calls.tags) AS tag_each"
    group_sql = ""
    if groups:
        group_sql = " GROUP BY " + ", ".join(f"g{i}" for i in range(len(groups)))
    select = ", ".join([*keys, _RAW_SUMS])
    sql = (
        f"SELECT {select} FROM calls JOIN calls_hourly_rows AS r ON r.id = calls.id{joins} "
        f"WHERE {where}{group_sql}"
    )
    for row in conn.execute(sql, key_params + params):
        _add(into, tuple(row[: len(groups)]), row[len(groups) :])


def _rollup_usable(groups: Sequence[str], filters: Filters) -> bool:
    return all(g in ROLLUP_GROUPS for g in groups) and not filters.tag and not filters.where


def _hour_start(ts: str) -> str:
    return ts[:13] + ":00:00.000000Z"


def _next_hour(ts: str) -> str:
    moment = datetime.strptime(ts[:13], "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
    return format_ts(moment + timedelta(hours=1))


def _rollup_groups(
    conn: sqlite3.Connection, groups: Sequence[str], filters: Filters, into: Groups
) -> None:
    """Whole hours from `calls_hourly`; the partial hours at either end from `calls`."""
    since, until = filters.since, filters.until
    first_full = since if since is None or since == _hour_start(since) else _next_hour(since)
    last_full = None if until is None else _hour_start(until)
    if first_full is not None and last_full is not None and first_full >= last_full:
        _raw_groups(conn, groups, filters, into)  # the range is within an hour or two
        return
    clauses, params = [], []
    if first_full:
        clauses.append("hour >= ?")
        params.append(first_full[:13])
    if last_full:
        clauses.append("hour < ?")
        params.append(last_full[:13])
    if filters.model:
        clauses.append("model GLOB ?")
        params.append(filters.model)
    for column in ("provider", "agent"):
        value = getattr(filters, column)
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    keys = [f"{ROLLUP_GROUPS[g]}" for g in groups]
    group_sql = f" GROUP BY {', '.join(str(i + 1) for i in range(len(groups)))}" if groups else ""
    sql = (
        f"SELECT {', '.join([*keys, _ROLLUP_SUMS])} FROM calls_hourly "
        f"WHERE {' AND '.join(clauses) or '1'} AND calls > 0{group_sql}"
    )
    for row in conn.execute(sql, params):
        if row[len(groups)]:
            _add(into, tuple(row[: len(groups)]), row[len(groups) :])
    if since and first_full and since != first_full:
        edge = replace(filters, since=since, until=min(first_full, until or first_full))
        _raw_groups(conn, groups, edge, into)
    if until and last_full and until != last_full:
        edge = replace(filters, since=max(last_full, since or last_full), until=until)
        _raw_groups(conn, groups, edge, into)


def aggregate(conn: sqlite3.Connection, groups: Sequence[str], filters: Filters) -> Groups:
    """Sums per group key, from the hourly rollup where it can answer, else from `calls`."""
    result: Groups = {}
    if _rollup_usable(groups, filters):
        _rollup_groups(conn, groups, filters, result)
    else:
        _raw_groups(conn, groups, filters, result)
    return result


def totals(conn: sqlite3.Connection, filters: Filters) -> dict[str, Any]:
    """One row of sums (calls, tokens, `cost_usd`…) over the calls `filters` picks, from
    the rollup where it can answer (budgets read their spend this way)."""
    return _as_row(aggregate(conn, [], filters).get((), [0] * len(_SUM_NAMES)))


def _as_row(sums: Sums) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(_SUM_NAMES, sums))
    row["cost_usd"] = from_parts(row.pop("cost_whole"), row.pop("cost_micro"), row.pop("cost_pico"))
    inputs = row["input_tokens"]
    row["cache_hit_rate"] = round(row["cache_read_tokens"] / inputs, 4) if inputs else 0.0
    return row


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(v) if v is not None else "") for v in key)


def usage_report(
    conn: sqlite3.Connection, group_by: Sequence[str] = (), filters: Filters | None = None
) -> UsageReport:
    """Totals per group (in `group_by` order) plus a grand total and unpriced models."""
    filters = filters or Filters()
    groups = check_groups(group_by)
    for given, name in zip(group_by, groups):
        # A bare word that is neither built in nor an attribute anywhere is a typo.
        if given == name.removeprefix("attr:") and given not in BUILTIN_GROUPS:
            found = conn.execute(
                "SELECT 1 FROM calls WHERE json_extract(attrs, ?) IS NOT NULL LIMIT 1",
                [attr_path(given)],
            ).fetchone()
            if not found:
                raise ReportError(
                    "--by",
                    f"unknown grouping {given!r}: not one of {', '.join(BUILTIN_GROUPS)} and "
                    "no call in the log has that attribute",
                )
    grouped = aggregate(conn, groups, filters) if groups else {}
    names = [g.removeprefix("attr:") for g in groups]
    rows = []
    for key in sorted(grouped, key=_sort_key):
        rows.append({**dict(zip(names, key)), **_as_row(grouped[key])})
    if groups and "tag" not in groups:
        # Each call is in exactly one group, so the groups add up to the total.
        total: Sums = [0] * len(_SUM_NAMES)
        for sums in grouped.values():
            total = [a + b for a, b in zip(total, sums)]
    else:
        total = aggregate(conn, [], filters).get((), [0] * len(_SUM_NAMES))
    totals = _as_row(total)
    unpriced = []
    if totals["unpriced_calls"]:
        where, params = filters.sql()
        sql = (
            "SELECT coalesce(response_model, model) AS model, provider, count(*) AS calls "
            f"FROM calls WHERE ({where}) AND priced = 0 GROUP BY 1, 2 ORDER BY 3 DESC, 1"
        )
        unpriced = list(_query(conn, sql, params))
    return UsageReport(groups, rows, totals, unpriced, filters.as_dict())


def _query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    for values in cursor:
        yield dict(zip(names, values))


# A call's input as a share of its context window; NULL where the window is unknown.
UTILIZATION = "CAST(calls.context_used AS REAL) / nullif(calls.context_limit, 0)"


CALL_COLUMNS = (
    "ts",
    "run_id",
    "framework",
    "operation",
    "provider",
    "model",
    "response_model",
    "catalog_model",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "priced",
    "estimated",
    "cache_hit",
    "status",
    "error_type",
    "latency_ms",
    "agent",
    "tags",
    "attrs",
    "context_limit",
    "context_used",
)


def recent_calls(
    conn: sqlite3.Connection,
    limit: int = 20,
    filters: Filters | None = None,
    over: float | None = None,
) -> list[dict[str, Any]]:
    """The newest calls first, like `llm logs`; with `over`, only calls whose input
    filled more than that share of their model's context window."""
    where, params = (filters or Filters()).sql()
    if over is not None:
        where = f"({where}) AND calls.context_limit > 0 AND {UTILIZATION} > ?"
        params.append(over)
    sql = (
        f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE {where} ORDER BY ts DESC, id DESC "
        "LIMIT ?"
    )
    return list(_query(conn, sql, [*params, limit]))


def export_rows(
    conn: sqlite3.Connection, filters: Filters | None = None
) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Column names and a lazy cursor over every matching row, oldest first."""
    where, params = (filters or Filters()).sql()
    cursor = conn.execute(f"SELECT * FROM calls WHERE {where} ORDER BY id", params)
    cursor.arraysize = 1000
    names = [d[0] for d in cursor.description]
    return names, iter(cursor)


def prune(conn: sqlite3.Connection, older_than: timedelta) -> int:
    """Delete calls older than `older_than`; returns how many went."""
    cutoff = format_ts(datetime.now(timezone.utc) - older_than)
    with conn:
        cursor = conn.execute("DELETE FROM calls WHERE ts < ?", [cutoff])
    return cursor.rowcount


@dataclass(frozen=True)
class LogSummary:
    rows: int
    first_ts: str | None
    last_ts: str | None


def summary(conn: sqlite3.Connection) -> LogSummary:
    rows, first, last = conn.execute("SELECT count(*), min(ts), max(ts) FROM calls").fetchone()
    return LogSummary(rows, first, last)


# --- billed beside computed (`usage --billed`) ------------------------------------------

BILLED_GROUPS = ("day", "provider")


def check_billed(groups: Sequence[str], filters: Filters) -> None:
    """`--billed` compares whole days: reject groupings and filters billing cannot follow."""
    if "day" not in groups or any(g not in BILLED_GROUPS for g in groups):
        raise ReportError("--billed", "group by day (and optionally provider), e.g. --by day")
    if filters.model or filters.agent or filters.tag or filters.where:
        raise ReportError(
            "--billed",
            "billed figures are per day and provider; drop --model/--agent/--tag/--where",
        )


def add_billed(conn: sqlite3.Connection, result: UsageReport, filters: Filters) -> UsageReport:
    """Put `billed_usd` (stored by `modelforge reconcile`) beside each day's computed cost.

    Days with billed figures but no logged calls get a row of their own; days without
    billed figures show `billed_usd` None.
    """
    check_billed(result.group_by, filters)
    by_provider = "provider" in result.group_by
    billed = _billed_sums(conn, filters, by_provider)
    rows = {(r["day"], r["provider"] if by_provider else None): r for r in result.rows}
    for key in billed.keys() - rows.keys():
        empty = _as_row([0] * len(_SUM_NAMES))
        named = {"day": key[0], **({"provider": key[1]} if by_provider else {})}
        rows[key] = {name: named[name] for name in result.group_by} | empty
    for key, row in rows.items():
        row["billed_usd"] = billed.get(key)
    ordered = [rows[k] for k in sorted(rows, key=_sort_key)]
    total = sum((v for v in billed.values()), Decimal(0)) if billed else None
    totals = {**result.totals, "billed_usd": total}
    return replace(result, rows=ordered, totals=totals)


def _billed_sums(
    conn: sqlite3.Connection, filters: Filters, by_provider: bool
) -> dict[tuple[str, str | None], Decimal]:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'billed'"
    ).fetchone()
    if found is None:
        return {}
    clauses, params = ["amount_usd IS NOT NULL"], []
    if filters.since:
        clauses.append("day >= ?")
        params.append(filters.since[:10])
    if filters.until:
        clauses.append("day < ?")
        params.append(filters.until[:10])
    if filters.provider:
        clauses.append("provider = ?")
        params.append(filters.provider)
    sql = f"SELECT day, provider, amount_usd FROM billed WHERE {' AND '.join(clauses)}"
    sums: dict[tuple[str, str | None], Decimal] = {}
    for day, provider, amount in conn.execute(sql, params):
        key = (day, provider if by_provider else None)
        sums[key] = sums.get(key, Decimal(0)) + Decimal(amount)
    return {key: _trimmed(amount) for key, amount in sums.items()}


def _trimmed(amount: Decimal) -> Decimal:
    """The same amount without trailing zeros (billing APIs send '0.00460000000000000')."""
    normal = amount.normalize()
    return normal if int(normal.as_tuple().exponent) < 0 else amount.quantize(Decimal(1))


# --- context-window utilisation (`usage --by model`) ------------------------------------


def add_peak_utilization(
    conn: sqlite3.Connection, result: UsageReport, filters: Filters
) -> UsageReport:
    """Put `peak_utilization` beside each group and the totals: the largest share of its
    context window any of the group's calls filled (0..1), None when no call of the
    group has a known window. Read from `calls`: the hourly rollup keeps no maximum."""
    where, params = filters.sql()
    keys, key_params, joins = [], [], ""
    for name in result.group_by:
        if name.startswith("attr:"):
            keys.append("json_extract(calls.attrs, ?)")
            key_params.append(attr_path(name[5:]))
        else:
            keys.append(group_expression(name))
            if name == "tag":
                joins = " LEFT JOIN json_each(calls.tags) AS tag_each"
    group_sql = f" GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    sql = f"SELECT {', '.join([*keys, f'max({UTILIZATION})'])} FROM calls{joins} WHERE {where}"
    peaks = {tuple(row[:-1]): row[-1] for row in conn.execute(sql + group_sql, key_params + params)}
    names = [g.removeprefix("attr:") for g in result.group_by]
    rows = [
        {**row, "peak_utilization": _share(peaks.get(tuple(row[n] for n in names)))}
        for row in result.rows
    ]
    (top,) = conn.execute(f"SELECT max({UTILIZATION}) FROM calls WHERE {where}", params).fetchone()
    return replace(result, rows=rows, totals={**result.totals, "peak_utilization": _share(top)})


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
