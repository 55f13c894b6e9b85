"""What the calls a budget covers have spent: one `Meter` per budget scope and log.

A meter's figure for its period is what the log holds (the trigger-kept hourly rollup
for whole hours, `calls` through its `ts` index for a partial first hour; for tags and
attributes, which the rollup lacks, the period once and then only rows added since),
plus this process's calls the log does not have yet (`unwritten`) or will never have
(`kept`: recording off, or `persist=False`), which `budgets.note` hands over as each
call ends.

A meter looks at the log only when it has changed (SQLite's `data_version`), and while
its limit is far, at most every `REFRESH_INTERVAL`. Near the limit (the last tenth, or
twice what the log took in over the last interval) it looks at every check, after
writing this process's pending records, so each caller can pass the limit by at most
the one call it has in flight.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from modelforge import config
from modelforge.errors import UsageLogError
from modelforge.money import PICO, money_text
from modelforge.records import format_ts
from modelforge.report import Filters, totals

if TYPE_CHECKING:
    from modelforge.budgets import Budget
    from modelforge.session import UsageSession

SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
# How stale a meter's figure of the log may be while its limit is far.
REFRESH_INTERVAL = 0.25
# "Near the limit" starts at the last 1/NEAR_SHARE of it (or closer, see `Meter.near`).
NEAR_SHARE = 10
# How long a check near the limit waits for this process's records to be written.
FLUSH_WAIT = 1.0
# After a log cannot be opened, meters count local spend for this long before retrying.
REOPEN_DELAY = 5.0
# Scope keys the hourly rollup has a column for; any other key is read from `calls`.
_ROLLUP_KEYS = frozenset({"model", "provider", "agent"})


class Spend(NamedTuple):
    """Tokens and USD spent, the USD as whole pico-dollars so sums stay exact integers."""

    tokens: int
    pico: int

    def __add__(self, other: object) -> Spend:
        if not isinstance(other, Spend):
            return NotImplemented
        return Spend(self.tokens + other.tokens, self.pico + other.pico)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.tokens - other.tokens, self.pico - other.pico)

    @property
    def usd(self) -> Decimal:
        return _usd(self.pico)


NOTHING = Spend(0, 0)


def in_pico(amount: Decimal | None) -> int:
    """USD as whole pico-dollars (unbounded, unlike the log's 64-bit column)."""
    return 0 if amount is None else int((amount * PICO).to_integral_value(ROUND_CEILING))


def _usd(pico: int) -> Decimal:
    return Decimal(money_text(Decimal(pico).scaleb(-12)) or "0")


# --- periods --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The span a budget counts now: [start, end) in UTC; None ends are open."""

    start: datetime | None
    end: datetime | None
    since: str | None  # `start` as the log's timestamp text

    def holds(self, moment: datetime) -> bool:
        return (self.start is None or self.start <= moment) and (
            self.end is None or moment < self.end
        )


def period_window(period: str, rolling: bool, zone: tzinfo, now: datetime) -> Window:
    """The calendar period (in `zone`) holding `now`, or with `rolling` the last period's
    length up to `now` (its `end` is then None)."""
    if period == "total":
        return Window(None, None, None)
    if rolling:
        start = now - timedelta(seconds=SECONDS[period])
        return Window(start, None, format_ts(start))
    local = now.astimezone(zone)
    if period in ("minute", "hour"):
        # Whole minutes and hours are the same instants in every zone but a few with
        # 30- or 45-minute offsets, which flooring the local time handles too.
        floor = local.replace(second=0, microsecond=0)
        if period == "hour":
            floor = floor.replace(minute=0)
        start = floor.astimezone(timezone.utc)
        return Window(start, start + timedelta(seconds=SECONDS[period]), format_ts(start))
    day = local.date()
    if period == "week":
        first = day - timedelta(days=day.weekday())  # ISO weeks start on Monday
        after = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        first, after = day, day + timedelta(days=1)
    start = _midnight(first, zone)
    return Window(start, _midnight(after, zone), format_ts(start))


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


# --- what a figure depends on -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """What a budget's figure depends on: budgets alike in these share one meter."""

    scope: tuple[tuple[str, str], ...]
    period: str
    rolling: bool
    tz: str
    usd_pico: int | None
    tokens: int | None


# --- the log, as meters read it -------------------------------------------------------------


class _Reader:
    """This process's read connection to one log, shared by its meters."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def version(self) -> int:
        """SQLite's `data_version`: changes whenever another connection has committed."""
        with self.lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])


class LogRead:
    """The log as one check sees it, looked at only if some meter is due to: whether
    recording is on, its reader (None when off, or while the log cannot be used), and its
    `data_version`, each found at most once."""

    def __init__(self, path: str, settings: config.Settings | None = None) -> None:
        self.path, self.settings = path, settings
        self._recording: bool | None = None
        self._reader: _Reader | None = None
        self._version: int | None = None

    def recording(self) -> bool:
        if self._recording is None:
            self._recording = config.telemetry_status(self.settings).enabled
        return self._recording

    def reader(self) -> _Reader | None:
        if self._reader is None and self.recording():
            self._reader = _reader(self.path)
        return self._reader

    def version(self) -> int | None:
        if self._version is None:
            reader = self.reader()
            self._version = reader.version() if reader is not None else None
        return self._version


_readers: dict[str, _Reader | float] = {}
_readers_lock = threading.Lock()


def _reader(path: str) -> _Reader | None:
    """The log's reader (the log is created if missing: recording is on), or None while
    the log cannot be used."""
    reader = _readers.get(path)
    if isinstance(reader, _Reader):
        return reader
    if reader is not None and time.monotonic() < reader:
        return None
    from modelforge.store import open_db

    with _readers_lock:
        found = _readers.get(path)
        if isinstance(found, _Reader):
            return found
        try:
            made = _Reader(open_db(path, create=True))
        except (UsageLogError, sqlite3.Error, OSError) as exc:
            config.warn_once(
                f"budgets:{path}", f"budgets cannot read {path} ({exc}); counting this process only"
            )
            _readers[path] = time.monotonic() + REOPEN_DELAY
            return None
        _readers[path] = made
        return made


def log_path(
    db: Path | str | None,
    sessions: Sequence[UsageSession] = (),
    settings: config.Settings | None = None,
) -> str:
    """The log a call's record goes to, as `recorder.deliver` chooses it."""
    if db is None:
        db = next((s.db for s in reversed(sessions) if s.db), None)
    path = Path(db).expanduser() if db else config.default_db_path(settings)
    return str(path) if path.is_absolute() else str(path.absolute())


def _filters(spec: Spec, since: str | None) -> Filters:
    scope = dict(spec.scope)
    return Filters(
        since=since,
        model=scope.pop("model", None),
        provider=scope.pop("provider", None),
        agent=scope.pop("agent", None),
        tag=scope.pop("tag", None),
        where=sorted(scope.items()),
    )


def logged_spend(conn: sqlite3.Connection, spec: Spec, since: str | None) -> Spend:
    """What the log `conn` holds for `spec` since `since` (None: ever)."""
    return _spend_of(totals(conn, _filters(spec, since)))


def _spend_of(row: Mapping[str, Any]) -> Spend:
    return Spend(
        int(row["input_tokens"] or 0) + int(row["output_tokens"] or 0), in_pico(row["cost_usd"])
    )


def _written(conn: sqlite3.Connection, run_ids: Iterable[str]) -> list[str]:
    """Which of `run_ids` the log has."""
    ids, found = list(run_ids), list[str]()
    for at in range(0, len(ids), 500):
        chunk = ids[at : at + 500]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT run_id FROM calls WHERE run_id IN ({marks})"
        found.extend(run_id for (run_id,) in conn.execute(sql, chunk))
    return found


# New rows since the last reading, for scopes the rollup cannot answer (tags, attributes).
_NEW_ROWS = (
    "SELECT sum(r.input_tokens + r.output_tokens), sum(r.cost_usd_whole), "
    "sum(r.cost_pusd_frac / 1000000), sum(r.cost_pusd_frac % 1000000) "
    "FROM calls JOIN calls_hourly_rows AS r ON r.id = calls.id "
    "WHERE calls.id > ? AND calls.id <= ? AND {where}"
)


def _flush_own(path: str) -> None:
    from modelforge.store import get_log

    get_log(path).flush(FLUSH_WAIT)


# --- meters: one budget's figure in one log -------------------------------------------


class Entry(NamedTuple):
    ts: str
    run_id: str
    spend: Spend
    counted: bool  # inside the window, so in the sums


class Meter:
    """What the calls of one spec have spent in one log: the log's figure at the last
    refresh, plus this process's calls the log does not have yet (`unwritten`) or will
    never have (`kept`: recording off, or `persist=False`)."""

    def __init__(self, path: str, spec: Spec, zone: tzinfo) -> None:
        self.path, self.spec, self.zone = path, spec, zone
        self.rollup = not ({k for k, _ in spec.scope} - _ROLLUP_KEYS)
        self.limited = spec.usd_pico is not None or spec.tokens is not None
        self.lock = threading.Lock()
        self.budgets: weakref.WeakSet[Budget] = weakref.WeakSet()
        self.window: Window | None = None
        self.shared = NOTHING
        self.version: int | None = None  # the log's data_version at the last refresh
        self.refreshed_at = 0.0
        self.looked_at = 0.0  # when the log's data_version was last compared
        self.last_total: Spend | None = None
        self.recent: Spend | None = None  # spent per REFRESH_INTERVAL, lately
        self.increment: tuple[int, Spend] | None = None  # last row id read, its spend
        self.unwritten: dict[str, Entry] = {}
        self.kept: deque[Entry] = deque()
        self.kept_ids: set[str] = set()
        self.local = NOTHING  # the counted entries of `unwritten` and `kept`
        self.total = NOTHING  # shared + local
        self.fired_period: str | None = None
        self.fired: set[str] = set()

    def view(
        self, now: datetime, log: LogRead | None, *, fresh: bool = False
    ) -> tuple[Spend, Window]:
        """The spend at `now`, re-reading `log` (None: do not) when it is due and has
        changed (see the module doc); `fresh` re-reads it in any case."""
        with self.lock:
            window = self._window_at(now)
            spent = self.total
            if log is None or not self._due(spent, fresh):
                return spent, window
            reader, version = log.reader(), log.version()
            if reader is None or version is None:  # recording is off, or the log unusable
                return spent, window
            if not fresh and version == self.version:
                self.looked_at = time.monotonic()
                if self.recent is None:
                    self.recent = NOTHING  # the log has not grown since it was read
                return spent, window
            if self.unwritten and self.near(spent):
                # Others see this process's spend only once it is written.
                _flush_own(self.path)
            self._refresh(reader, window, version)
            return self.total, window

    def add(self, now: datetime, entry: Entry, persisted: bool) -> None:
        with self.lock:
            window = self._window_at(now)
            inside = window.since is None or entry.ts >= window.since
            entry = entry._replace(counted=inside)
            if persisted:
                if entry.run_id not in self.unwritten:
                    self.unwritten[entry.run_id] = entry
                    if inside:
                        self._count(entry.spend)
            elif inside and entry.run_id not in self.kept_ids:
                # Roughly in time order (calls end out of order): a rolling window may
                # keep a call a little past its age, never drop one too soon.
                self.kept.append(entry)
                self.kept_ids.add(entry.run_id)
                self._count(entry.spend)

    def near(self, spent: Spend) -> bool:
        """Whether the limit is close enough that a stale figure could let calls past it:
        within its last tenth, or within twice what the log spent in the last interval."""
        if not self.limited:
            return False
        recent = self.recent
        if recent is None:
            return True
        spec = self.spec
        if spec.usd_pico is not None and spec.usd_pico - spent.pico <= max(
            spec.usd_pico // NEAR_SHARE, 2 * recent.pico
        ):
            return True
        return spec.tokens is not None and spec.tokens - spent.tokens <= max(
            spec.tokens // NEAR_SHARE, 2 * recent.tokens
        )

    def claim(self, period: str, keys: Iterable[str]) -> list[str]:
        """Of the thresholds `keys`, those this process has not fired this `period` (the
        period's start), now marked fired."""
        with self.lock:
            if period != self.fired_period:
                self.fired_period, self.fired = period, set()
            new = [key for key in keys if key not in self.fired]
            self.fired.update(new)
            return new

    def forget(self) -> None:
        """Start again from the log (in a forked child: the parent's calls are its own)."""
        self.lock = threading.Lock()
        self.window = None
        self.unwritten, self.kept, self.kept_ids = {}, deque(), set()
        self.local = self.total = NOTHING

    # --- internals (the lock held) -------------------------------------------------------

    def _count(self, spend: Spend) -> None:
        local = self.local = self.local + spend
        self.total = self.shared + local

    def _window_at(self, now: datetime) -> Window:
        window = self.window
        if window is not None and not self.spec.rolling and window.holds(now):
            return window
        new = period_window(self.spec.period, self.spec.rolling, self.zone, now)
        if window is not None and self.spec.rolling:
            self.window = new
            self._prune(new.since)
        else:
            self._restart(new)
        return new

    def _restart(self, window: Window) -> None:
        """A new period: nothing read from the log yet; count this process's calls in it."""
        self.window, self.shared, self.version = window, NOTHING, None
        self.last_total = self.recent = self.increment = None
        since = window.since
        self.unwritten = {
            run_id: entry._replace(counted=True)
            for run_id, entry in self.unwritten.items()
            if since is None or entry.ts >= since
        }
        self.kept = deque(e for e in self.kept if since is None or e.ts >= since)
        self.kept_ids = {e.run_id for e in self.kept}
        entries = (*self.unwritten.values(), *self.kept)
        self.local = self.total = sum((e.spend for e in entries), NOTHING)

    def _prune(self, since: str | None) -> None:
        while self.kept and since is not None and self.kept[0].ts < since:
            gone = self.kept.popleft()
            self.kept_ids.discard(gone.run_id)
            self._count(NOTHING - gone.spend)

    def _due(self, spent: Spend, fresh: bool) -> bool:
        """Whether to see if the log changed: always near the limit, else at most every
        `REFRESH_INTERVAL`."""
        if fresh or self.version is None or self.near(spent):
            return True
        return time.monotonic() - self.looked_at >= REFRESH_INTERVAL

    def _refresh(self, reader: _Reader, window: Window, version: int) -> None:
        with reader.lock:
            conn = reader.conn
            conn.execute("BEGIN")  # one snapshot for the figure and the run ids
            try:
                shared = self._log_spend(conn, window)
                written = _written(conn, self.unwritten)
            finally:
                conn.execute("COMMIT")
        for run_id in written:
            entry = self.unwritten.pop(run_id)
            if entry.counted:
                self.local -= entry.spend
        self.shared = shared
        total = self.total = shared + self.local
        moment, last = time.monotonic(), self.last_total
        if last is not None and moment > self.refreshed_at:
            scale = REFRESH_INTERVAL / (moment - self.refreshed_at)
            grew = total - last
            self.recent = Spend(max(0, int(grew.tokens * scale)), max(0, int(grew.pico * scale)))
        self.last_total, self.refreshed_at, self.version = total, moment, version
        self.looked_at = moment

    def _log_spend(self, conn: sqlite3.Connection, window: Window) -> Spend:
        filters = _filters(self.spec, window.since)
        if self.rollup or self.spec.rolling:
            return _spend_of(totals(conn, filters))
        # Tags and attributes are not in the rollup: read the period once, then only
        # the rows added since.
        (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()
        if self.increment is None:
            spent = _spend_of(totals(conn, filters))
        else:
            before, spent = self.increment
            where, params = filters.sql()
            row = conn.execute(_NEW_ROWS.format(where=where), [before, last, *params]).fetchone()
            whole, micro, pico = (int(v or 0) for v in row[1:])
            spent += Spend(int(row[0] or 0), whole * PICO + micro * 10**6 + pico)
        self.increment = (last, spent)
        return spent


_meters: dict[tuple[str, Spec], Meter] = {}
_meters_by_path: dict[str, list[Meter]] = {}
_meters_lock = threading.Lock()


def meters_of(path: str) -> list[Meter]:
    """The meters of one log, in this process."""
    return _meters_by_path.get(path, [])


def any_meters() -> bool:
    """Whether any budget has been used in this process."""
    return bool(_meters)


def meter_for(path: str, spec: Spec, zone: tzinfo) -> Meter:
    key = (path, spec)
    meter = _meters.get(key)
    if meter is None:
        with _meters_lock:
            meter = _meters.get(key)
            if meter is None:
                meter = _meters[key] = Meter(path, spec, zone)
                _meters_by_path.setdefault(path, []).append(meter)
    return meter


def _after_fork_in_child() -> None:
    # The parent's connections are not ours to use, and its pending records are its own.
    global _meters_lock, _readers_lock
    _meters_lock, _readers_lock = threading.Lock(), threading.Lock()
    _readers.clear()
    for meter in _meters.values():
        meter.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
