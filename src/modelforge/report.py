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
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

from modelforge import config
from modelforge.errors import ModelForgeError
from modelforge.money import from_parts
from modelforge.records import format_ts

REPORT_SCHEMA = "modelforge.usage/1"
# The attribute `track_usage(session=...)` records; the log indexes it (m007).
SESSION_ATTR = "session"
SESSION_SQL = "json_extract(calls.attrs, '$.session')"

# group name -> SQL expression over `calls`
TIME_GROUPS = {
    "hour": "substr(calls.ts, 1, 13) || ':00'",
    "day": "substr(calls.ts, 1, 10)",
    "week": "strftime('%Y-W%W', substr(calls.ts, 1, 19))",
    "month": "substr(calls.ts, 1, 7)",
}
# Python formats of the same periods, for periods counted in another time zone.
TIME_FORMATS = {"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "week": "%Y-W%W", "month": "%Y-%m"}
# Quarter-hour slots in UTC: every time zone's offset is a whole number of them.
_QUARTER = (
    "substr(calls.ts, 1, 14) || printf('%02d', CAST(substr(calls.ts, 15, 2) AS INTEGER) / 15 * 15)"
)
COLUMN_GROUPS = {
    # The catalog model a call was priced as, so `gpt-4o`, `GPT-4o` and `openai/gpt-4o`
    # are one row; an unpriced call keeps the name it was logged with.
    "model": "coalesce(nullif(calls.catalog_model, ''), "
    "nullif(coalesce(calls.response_model, calls.model), ''))",
    "requested_model": "calls.model",
    "served_model": "nullif(coalesce(calls.response_model, calls.model), '')",
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
    unpriced: bool = False  # only calls no price layer could price
    hours: tuple[str, ...] = ()  # only these hours of the (UTC) day, "00" to "23"

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
            clauses.append(
                "(calls.catalog_model GLOB ? OR substr(calls.catalog_model, "
                "instr(calls.catalog_model, '/') + 1) GLOB ? "
                "OR coalesce(calls.response_model, calls.model) GLOB ?)"
            )
            params += [self.model] * 3
        if self.provider:
            clauses.append("calls.provider = ?")
            params.append(self.provider)
        if self.agent:
            clauses.append("calls.agent = ?")
            params.append(self.agent)
        if self.tag:
            clauses.append("EXISTS (SELECT 1 FROM json_each(calls.tags) WHERE value = ?)")
            params.append(self.tag)
        if self.hours:
            clauses.append(f"substr(calls.ts, 12, 2) IN ({', '.join('?' * len(self.hours))})")
            params += list(self.hours)
        if self.unpriced:
            # As the rollups decide it (calls_hourly_rows): a cost but no `priced` is priced.
            clauses.append(
                "coalesce(calls.priced, calls.cost_usd IS NOT NULL "
                "OR calls.cost_pusd IS NOT NULL) = 0"
            )
        for key, value in self.where:
            if key == SESSION_ATTR:
                # Literal, so that the index on it (m007) answers.
                clauses.append(f"{SESSION_SQL} = ?")
                params.append(value)
            else:
                clauses.append("json_extract(calls.attrs, ?) = ?")
                params += [attr_path(key), value]
        return (" AND ".join(clauses) or "1"), params

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            k: v for k, v in self.__dict__.items() if v and k not in ("where", "unpriced", "hours")
        }
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
    if name == "quarter":
        return _QUARTER
    if name == "utc_hour":
        return "substr(calls.ts, 1, 13)"
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
    """Rows per group, with `breakdown` (per-model rows) under each when asked for."""

    group_by: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    unpriced: list[dict[str, Any]]
    filters: dict[str, Any]
    tz: str = "UTC"
    breakdown: bool = False

    def as_json(self) -> dict[str, Any]:
        """The documented, stable JSON shape (`schema: modelforge.usage/1`)."""
        return {
            "schema": REPORT_SCHEMA,
            "group_by": [g.removeprefix("attr:") for g in self.group_by],
            "tz": self.tz,
            "filters": self.filters,
            "rows": [_jsonable(r) for r in self.rows],
            "totals": _jsonable(self.totals),
            "unpriced": self.unpriced,
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Money as exact decimal strings (None stays null); nested breakdown rows alike."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            out[key] = str(value)
        elif isinstance(value, list):
            out[key] = [_jsonable(item) for item in value]
        else:
            out[key] = value
    return out


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
_DAILY_SUMS = _sum_columns("calls_daily", "calls_daily.calls")
# Groupings the hourly rollup can answer, as expressions over `calls_hourly`.
ROLLUP_GROUPS = {
    "hour": "hour || ':00'",
    "day": "substr(hour, 1, 10)",
    "week": "strftime('%Y-W%W', substr(hour, 1, 10))",
    "month": "substr(hour, 1, 7)",
    "model": "coalesce(nullif(catalog_model, ''), nullif(model, ''))",
    "served_model": "nullif(model, '')",
    # For periods in other time zones: the rollup's own key, so rows come in its order.
    "utc_hour": "hour",
    "catalog_model": "nullif(catalog_model, '')",
    "provider": "nullif(provider, '')",
    "agent": "nullif(agent, '')",
    "status": "nullif(status, '')",
    "framework": "nullif(framework, '')",
}
# The same, over `calls_daily`, which has no hours.
DAILY_GROUPS = {
    **{g: expr for g, expr in ROLLUP_GROUPS.items() if g not in (*TIME_GROUPS, "utc_hour")},
    "day": "day",
    "week": "strftime('%Y-W%W', day)",
    "month": "substr(day, 1, 7)",
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
    """Whole hours from the rollups; the partial hours at either end from `calls`."""
    since, until = filters.since, filters.until
    first_full = since if since is None or since == _hour_start(since) else _next_hour(since)
    last_full = None if until is None else _hour_start(until)
    if first_full is not None and last_full is not None and first_full >= last_full:
        _raw_groups(conn, groups, filters, into)  # the range is within an hour or two
        return
    _whole_hours(conn, groups, filters, first_full, last_full, into)
    if since and first_full and since != first_full:
        edge = replace(filters, since=since, until=min(first_full, until or first_full))
        _raw_groups(conn, groups, edge, into)
    if until and last_full and until != last_full:
        edge = replace(filters, since=max(last_full, since or last_full), until=until)
        _raw_groups(conn, groups, edge, into)


def _whole_hours(
    conn: sqlite3.Connection,
    groups: Sequence[str],
    filters: Filters,
    start: str | None,
    end: str | None,
    into: Groups,
) -> None:
    """The hours from `start` to `end` (hour starts; None: no bound): whole days from
    `calls_daily`, the hours around them from `calls_hourly`."""
    if "hour" in groups or "utc_hour" in groups or filters.hours:
        _rollup_query(conn, _HOURLY, groups, filters, start, end, into)
        return
    first_day = start if start is None or start == _day_start(start) else _next_day(start)
    last_day = None if end is None else _day_start(end)
    if first_day is not None and last_day is not None and first_day >= last_day:
        _rollup_query(conn, _HOURLY, groups, filters, start, end, into)
        return
    _rollup_query(conn, _DAILY, groups, filters, first_day, last_day, into)
    if start != first_day:
        _rollup_query(conn, _HOURLY, groups, filters, start, first_day, into)
    if end != last_day:
        _rollup_query(conn, _HOURLY, groups, filters, last_day, end, into)


@dataclass(frozen=True)
class _Rollup:
    table: str
    period: str  # its time column
    width: int  # characters of a log timestamp that name one period
    groups: dict[str, str]
    sums: str


_HOURLY = _Rollup("calls_hourly", "hour", 13, ROLLUP_GROUPS, _ROLLUP_SUMS)
_DAILY = _Rollup("calls_daily", "day", 10, DAILY_GROUPS, _DAILY_SUMS)


def _rollup_query(
    conn: sqlite3.Connection,
    rollup: _Rollup,
    groups: Sequence[str],
    filters: Filters,
    start: str | None,
    end: str | None,
    into: Groups,
) -> None:
    where, params = _rollup_where(rollup, filters, start, end)
    keys = [rollup.groups[g] for g in groups]
    group_sql = f" GROUP BY {', '.join(str(i + 1) for i in range(len(groups)))}" if groups else ""
    sql = f"SELECT {', '.join([*keys, rollup.sums])} FROM {rollup.table} WHERE {where}{group_sql}"
    for row in conn.execute(sql, params):
        if row[len(groups)]:
            _add(into, tuple(row[: len(groups)]), row[len(groups) :])


def _rollup_where(
    rollup: _Rollup, filters: Filters, start: str | None, end: str | None
) -> tuple[str, list[Any]]:
    """The rows of `rollup` for periods from `start` to `end` that `filters` pick."""
    clauses, params = ["calls > 0"], []
    if start:
        clauses.append(f"{rollup.period} >= ?")
        params.append(start[: rollup.width])
    if end:
        clauses.append(f"{rollup.period} < ?")
        params.append(end[: rollup.width])
    if filters.model:
        clauses.append(
            "(catalog_model GLOB ? OR substr(catalog_model, instr(catalog_model, '/') + 1) "
            "GLOB ? OR model GLOB ?)"
        )
        params += [filters.model] * 3
    for column in ("provider", "agent"):
        value = getattr(filters, column)
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if filters.unpriced:
        clauses.append("priced = 0")
    if filters.hours:
        clauses.append(f"substr(hour, 12, 2) IN ({', '.join('?' * len(filters.hours))})")
        params += list(filters.hours)
    return " AND ".join(clauses), params


def _day_start(ts: str) -> str:
    return ts[:10] + "T00:00:00.000000Z"


def _next_day(ts: str) -> str:
    day = datetime.strptime(ts[:10], "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return format_ts(day + timedelta(days=1))


def aggregate(
    conn: sqlite3.Connection, groups: Sequence[str], filters: Filters, tz: str | None = None
) -> Groups:
    """Sums per group key, from the hourly rollup where it can answer, else from `calls`.

    With `tz`, periods (hour, day, week, month) are counted in that time zone.
    """
    zone = time_zone(tz)
    if zone is not None and any(g in TIME_GROUPS for g in groups):
        return _local_groups(conn, groups, filters, zone)
    result: Groups = {}
    if _rollup_usable(groups, filters):
        _rollup_groups(conn, groups, filters, result)
    else:
        _raw_groups(conn, groups, filters, result)
    return result


def time_zone(name: str | None) -> tzinfo | None:
    """The zone named `name` (IANA, e.g. Europe/Paris); None for UTC, which needs no
    conversion."""
    if name is None or name.upper() in ("UTC", "Z", "ETC/UTC"):
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(
            "--tz", f"unknown time zone {name!r}; use an IANA name such as Europe/Paris"
        ) from None


def _local_groups(
    conn: sqlite3.Connection, groups: Sequence[str], filters: Filters, zone: tzinfo
) -> Groups:
    """Periods in `zone`, from the UTC rollups.

    Days, weeks and months start from UTC days: each UTC day's sums go to the local
    period most of it falls in, and the few hours of it that belong elsewhere (the last
    hour of each UTC day in Paris) are read from the hourly rollup and moved. A UTC
    hour that a local period boundary cuts in two (local midnight falls at :30 in
    India, at :45 in Nepal) is split from its calls, by quarter hour. Hours are read
    from the hourly rollup, or from the calls in such zones.
    """
    others = [g for g in groups if g not in TIME_GROUPS]
    periods = [g for g in groups if g in TIME_GROUPS]
    names = _LocalNames(zone, periods)
    if "hour" in periods:
        slots = aggregate(conn, ["utc_hour", *others], filters)
        if any(names.cut(key[0]) for key in slots):
            slots = {}
            _raw_groups(conn, ["quarter", *others], filters, slots)
        result: Groups = {}
        for key, sums in slots.items():
            _add(result, names.key(key[0], key[1:], groups), sums)
        return result
    days = aggregate(conn, ["day", *others], filters)
    home = {day: names.of(day + "T12") for day in {key[0] for key in days}}
    moved = {
        f"{day}T{h:02d}"
        for day, local in home.items()
        for h in range(24)
        if names.cut(f"{day}T{h:02d}") or names.of(f"{day}T{h:02d}") != local
    }
    result = {}
    if moved:
        hours = tuple(sorted({hour[11:13] for hour in moved}))
        found = aggregate(conn, ["utc_hour", *others], replace(filters, hours=hours))
        cut: dict[str, Groups] = {}  # a cut UTC hour -> its sums per other groups
        for key, sums in found.items():
            hour = key[0]
            if hour not in moved:
                continue
            _add(days, (hour[:10], *key[1:]), [-v for v in sums])  # not the day's, after all
            if names.cut(hour):
                _add(cut.setdefault(hour, {}), key[1:], sums)
            else:
                _add(result, names.key(hour, key[1:], groups), sums)
        for hour, whole in cut.items():
            _split(conn, hour, whole, others, groups, filters, names, result)
    for key, sums in days.items():
        if any(sums):
            _add(result, names.key(key[0] + "T12", key[1:], groups, home[key[0]]), sums)
    return result


def _split(
    conn: sqlite3.Connection,
    hour: str,
    whole: Groups,
    others: Sequence[str],
    groups: Sequence[str],
    filters: Filters,
    names: _LocalNames,
    into: Groups,
) -> None:
    """A UTC hour cut by a local period boundary: the calls of its shorter side are read
    from `calls`, and the rest of the hour's sums (`whole`) go to the other side."""
    start = _utc(hour)
    minute = next(m for m in (15, 30, 45) if names.of(f"{hour}:{m}") != names.of(hour))
    boundary = start + timedelta(minutes=minute)
    if minute <= 30:
        side, since, until, other = f"{hour}:00", start, boundary, f"{hour}:{minute}"
    else:
        side, since, until, other = f"{hour}:{minute}", boundary, start + timedelta(hours=1), hour
    part: Groups = {}
    bounded = replace(
        filters,
        since=max(format_ts(since), filters.since or ""),
        until=min(format_ts(until), filters.until or format_ts(until)),
    )
    _raw_groups(conn, others, bounded, part)
    for key, sums in whole.items():
        mine = part.get(key, [0] * len(sums))
        _add(into, names.key(side, key, groups), mine)
        _add(into, names.key(other, key, groups), [a - b for a, b in zip(sums, mine)])


class _LocalNames:
    """The local period names (day, week…) of UTC hours and quarter hours in a zone."""

    def __init__(self, zone: tzinfo, periods: Sequence[str]) -> None:
        self.zone = zone
        self.periods = periods
        self._names: dict[str, dict[str, str]] = {}

    def of(self, slot: str) -> dict[str, str]:
        found = self._names.get(slot)
        if found is None:
            moment = _utc(slot).astimezone(self.zone)
            found = self._names[slot] = {g: moment.strftime(TIME_FORMATS[g]) for g in self.periods}
        return found

    def cut(self, hour: str) -> bool:
        """Whether the UTC hour `hour` falls in two local periods."""
        return _cut(hour, self.periods, self.zone)

    def key(
        self,
        slot: str,
        rest: tuple[Any, ...],
        groups: Sequence[str],
        names: dict[str, str] | None = None,
    ) -> tuple[Any, ...]:
        """The report key of `slot` with the other groups' values `rest`."""
        names = names or self.of(slot)
        others = iter(rest)
        return tuple(names[g] if g in TIME_GROUPS else next(others) for g in groups)


def _cut(hour: str, periods: Sequence[str], zone: tzinfo) -> bool:
    """Whether the UTC hour `hour` falls in two local periods."""
    start = _utc(hour).astimezone(zone)
    last = (_utc(hour) + timedelta(minutes=59, seconds=59, microseconds=999999)).astimezone(zone)
    return any(start.strftime(TIME_FORMATS[g]) != last.strftime(TIME_FORMATS[g]) for g in periods)


def _utc(slot: str) -> datetime:
    """A UTC hour (`2026-11-01T09`) or quarter hour (`2026-11-01T09:45`) as a datetime."""
    return datetime.fromisoformat(slot).replace(tzinfo=timezone.utc)


def totals(conn: sqlite3.Connection, filters: Filters) -> dict[str, Any]:
    """One row of sums (calls, tokens, `cost_usd`…) over the calls `filters` picks, from
    the rollup where it can answer (budgets read their spend this way)."""
    return _as_row(aggregate(conn, [], filters).get((), [0] * len(_SUM_NAMES)))


def _as_row(sums: Sums) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(_SUM_NAMES, sums))
    cost = from_parts(row.pop("cost_whole"), row.pop("cost_micro"), row.pop("cost_pico"))
    # Nothing priced is no amount at all, not $0; a partly priced group sums its priced
    # calls and counts the rest in `unpriced_calls`.
    nothing_priced = row["calls"] > 0 and row["unpriced_calls"] == row["calls"]
    row["cost_usd"] = None if nothing_priced else cost
    inputs = row["input_tokens"]
    row["cache_hit_rate"] = round(row["cache_read_tokens"] / inputs, 4) if inputs else 0.0
    return row


def _cost_order(row: dict[str, Any]) -> tuple[Any, ...]:
    cost = row["cost_usd"]
    return (cost is None, -(cost or 0))


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(v) if v is not None else "") for v in key)


def known_attributes() -> set[str]:
    """Attribute keys that are never a typo: the metadata keys the integrations pick up
    (config `metadata_keys`) and `session`."""
    return {*config.load_settings().metadata_keys, SESSION_ATTR}


def usage_report(
    conn: sqlite3.Connection,
    group_by: Sequence[str] = (),
    filters: Filters | None = None,
    *,
    tz: str | None = None,
    breakdown: bool = False,
) -> UsageReport:
    """Totals per group (in `group_by` order) plus a grand total and unpriced models.

    `tz` counts periods in that time zone (default UTC). `breakdown` puts per-model rows
    under each group, as `row["breakdown"]`; with no `group_by` it groups by day.
    """
    filters = filters or Filters()
    if breakdown:
        group_by = list(group_by) or ["day"]
        if "model" in group_by:
            raise ReportError("--breakdown", "adds model rows itself; drop --by model")
    groups = check_groups(group_by)
    time_zone(tz)  # an unknown zone is an error even when nothing is grouped by time
    known = known_attributes()
    for given, name in zip(group_by, groups):
        # A bare word that is neither built in nor an attribute anywhere is a typo.
        if given == name.removeprefix("attr:") and given not in (*BUILTIN_GROUPS, *known):
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
    names = [g.removeprefix("attr:") for g in groups]
    details: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    if breakdown:
        grouped: Groups = {}
        for key, sums in aggregate(conn, [*groups, "model"], filters, tz).items():
            _add(grouped, key[:-1], sums)
            details.setdefault(key[:-1], []).append({"model": key[-1], **_as_row(sums)})
    else:
        grouped = aggregate(conn, groups, filters, tz) if groups else {}
    rows = []
    for key in sorted(grouped, key=_sort_key):
        row = {**dict(zip(names, key)), **_as_row(grouped[key])}
        if breakdown:
            row["breakdown"] = sorted(details[key], key=lambda r: (*_cost_order(r), r["model"]))
        rows.append(row)
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
        found = aggregate(conn, ["served_model", "provider"], replace(filters, unpriced=True))
        unpriced = [
            {"model": model, "provider": provider, "calls": sums[0]}
            for (model, provider), sums in found.items()
        ]
        unpriced.sort(key=lambda item: (-item["calls"], str(item["model"] or "")))
    zone_name = "UTC" if time_zone(tz) is None else str(tz)
    result = UsageReport(groups, rows, totals, unpriced, filters.as_dict(), zone_name, breakdown)
    if "model" in groups:
        result = add_peak_utilization(conn, result, filters)
    return result


def _query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    for values in cursor:
        yield dict(zip(names, values))


def session_totals(conn: sqlite3.Connection, name: str) -> tuple[list[dict[str, Any]], str | None]:
    """What session `name` recorded: sums per served model, provider and agent (cost as
    the priced calls' exact sum), and the time of its first call."""
    sql = f"""SELECT nullif(r.model, '') AS model, nullif(r.provider, '') AS provider,
    nullif(r.agent, '') AS agent, count(*) AS calls,
    sum(r.input_tokens) AS input_tokens, sum(r.output_tokens) AS output_tokens,
    sum(r.cache_read_tokens) AS cache_read_tokens,
    sum(r.cache_write_tokens) AS cache_write_tokens,
    sum(r.cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(r.reasoning_tokens) AS reasoning_tokens,
    sum(r.input_audio_tokens) AS input_audio_tokens,
    sum(r.output_audio_tokens) AS output_audio_tokens,
    sum(r.cost_usd_whole) AS whole, sum(r.cost_pusd_frac / 1000000) AS micro,
    sum(r.cost_pusd_frac % 1000000) AS pico,
    sum(CASE WHEN r.priced = 0 THEN 1 ELSE 0 END) AS unpriced_calls,
    sum(CASE WHEN r.estimated = 1 THEN 1 ELSE 0 END) AS estimated_calls,
    min(calls.ts) AS first_ts
FROM calls JOIN calls_hourly_rows AS r ON r.id = calls.id
WHERE {SESSION_SQL} = ? GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
    groups = list(_query(conn, sql, [name]))
    for group in groups:
        group["cost_usd"] = from_parts(group.pop("whole"), group.pop("micro"), group.pop("pico"))
    first = min((g.pop("first_ts") for g in groups), default=None)
    return groups, first


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
    group has a known window."""
    peaks = group_peaks(conn, result.group_by, filters)
    names = [g.removeprefix("attr:") for g in result.group_by]
    rows = [
        {**row, "peak_utilization": _share(peaks.get(tuple(row[n] for n in names)))}
        for row in result.rows
    ]
    top = group_peaks(conn, [], filters).get(())
    return replace(result, rows=rows, totals={**result.totals, "peak_utilization": _share(top)})


Peaks = dict[tuple[Any, ...], float | None]


def group_peaks(conn: sqlite3.Connection, groups: Sequence[str], filters: Filters) -> Peaks:
    """The largest context-window share per group key: whole days from `calls_daily`'s
    peaks (m007), the partial days at either end and the days whose peak a delete or an
    update made stale from `calls`."""
    daily = all(g in DAILY_GROUPS for g in groups) and _rollup_usable(groups, filters)
    since, until = filters.since, filters.until
    first_day = since if since is None or since == _day_start(since) else _next_day(since)
    last_day = None if until is None else _day_start(until)
    if not daily or (first_day and last_day and first_day >= last_day):
        return _raw_peaks(conn, groups, filters)
    where, params = _rollup_where(_DAILY, filters, first_day, last_day)
    keys = [DAILY_GROUPS[g] for g in groups]
    group_sql = f" GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    sql = (
        f"SELECT {', '.join([*keys, 'max(peak)'])} FROM calls_daily WHERE {where} "
        f"AND day NOT IN (SELECT day FROM calls_daily_stale){group_sql}"
    )
    peaks: Peaks = {}
    for row in conn.execute(sql, params):
        _max_into(peaks, tuple(row[:-1]), row[-1])
    stale_where, stale_params = ["1"], []
    if first_day:
        stale_where.append("day >= ?")
        stale_params.append(first_day[:10])
    if last_day:
        stale_where.append("day < ?")
        stale_params.append(last_day[:10])
    stale_sql = f"SELECT day FROM calls_daily_stale WHERE {' AND '.join(stale_where)}"
    ranges = [(_day_start(day), _next_day(day)) for (day,) in conn.execute(stale_sql, stale_params)]
    if since and first_day and since != first_day:
        ranges.append((since, min(first_day, until or first_day)))
    if until and last_day and until != last_day:
        ranges.append((max(last_day, since or last_day), until))
    for start, end in ranges:
        for key, peak in _raw_peaks(conn, groups, replace(filters, since=start, until=end)).items():
            _max_into(peaks, key, peak)
    return peaks


def _max_into(peaks: Peaks, key: tuple[Any, ...], peak: float | None) -> None:
    current = peaks.get(key)
    if key not in peaks or (peak is not None and (current is None or peak > current)):
        peaks[key] = peak


def _raw_peaks(conn: sqlite3.Connection, groups: Sequence[str], filters: Filters) -> Peaks:
    where, params = filters.sql()
    keys, key_params, joins = [], [], ""
    for name in groups:
        if name.startswith("attr:"):
            keys.append("json_extract(calls.attrs, ?)")
            key_params.append(attr_path(name[5:]))
        else:
            keys.append(group_expression(name))
            if name == "tag":
                joins = " LEFT JOIN json_each(calls.tags) AS tag_each"
    group_sql = f" GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    sql = f"SELECT {', '.join([*keys, f'max({UTILIZATION})'])} FROM calls{joins} WHERE {where}"
    return {tuple(row[:-1]): row[-1] for row in conn.execute(sql + group_sql, key_params + params)}


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
