"""`modelforge usage watch`: a live view of spend while other processes write the log.

The first frame reads totals from the hourly rollup (or, for a session, through its
index) and remembers the highest row id. Each refresh after that reads only the rows
written since, by row id, and adds them in: it never scans the log again, so a refresh
costs the same on a log of ten rows or ten million. Rows deleted (`usage prune`) or
changed after the first frame are not taken back out until the view restarts.
"""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from modelforge.money import format_usd, from_parts
from modelforge.records import format_ts
from modelforge.report import Filters, aggregate, group_expression

DEFAULT_WINDOW_MINUTES = 15
DEFAULT_LAST = 8
BUDGET_REFRESH = 10.0  # seconds
_MODEL = group_expression("model")
# The columns a refresh reads of each new row; cost as the log's exact whole/pico split.
_ROW_SQL = f"""SELECT calls.id, calls.ts, {_MODEL}, calls.agent, calls.provider,
    r.input_tokens, r.output_tokens, r.cost_usd_whole, r.cost_pusd_frac, r.priced
FROM calls NOT INDEXED JOIN calls_hourly_rows AS r ON r.id = calls.id"""


@dataclass
class Tally:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    unpriced: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, calls: int, inp: int, out: int, cost: Decimal, unpriced: int) -> None:
        self.calls += calls
        self.input_tokens += inp
        self.output_tokens += out
        self.cost += cost
        self.unpriced += unpriced


@dataclass(frozen=True)
class Call:
    ts: str
    model: str | None
    agent: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal | None


@dataclass(frozen=True)
class BudgetBar:
    name: str
    spent: Decimal
    limit: Decimal
    unit: str  # "usd" or "tokens"
    resets: str | None


@dataclass
class Frame:
    """Everything one refresh shows; `render()` draws it."""

    now: datetime
    log: Path
    scope: str
    exists: bool
    totals: Tally
    by_agent: list[tuple[str | None, Tally]]
    by_model: list[tuple[str | None, Tally]]
    window: timedelta
    window_usd: Decimal
    window_tokens: int
    last_calls: list[Call]
    budgets: list[BudgetBar] | None  # None: no budgets module installed
    new_rows: int = 0

    @property
    def usd_per_hour(self) -> Decimal:
        return self.window_usd * 3600 / Decimal(int(self.window.total_seconds()))

    @property
    def tokens_per_minute(self) -> Decimal:
        return Decimal(self.window_tokens) * 60 / Decimal(int(self.window.total_seconds()))


@dataclass
class Watcher:
    """Live totals over one log for `filters` (a period, a session, an agent…)."""

    log: Path
    filters: Filters
    window: timedelta = timedelta(minutes=DEFAULT_WINDOW_MINUTES)
    last: int = DEFAULT_LAST
    scope: str = ""
    _conn: sqlite3.Connection | None = None
    _last_id: int = 0
    totals: Tally = field(default_factory=Tally)
    _agents: dict[str | None, Tally] = field(default_factory=dict)
    _models: dict[str | None, Tally] = field(default_factory=dict)
    _recent: deque[tuple[datetime, Decimal, int]] = field(default_factory=deque)
    _calls: deque[Call] = field(default_factory=deque)
    _budgets: list[BudgetBar] | None = None
    _budgets_read: float = float("-inf")

    def refresh(self, now: datetime | None = None) -> Frame:
        """Read what was written since the last refresh (everything, the first time)."""
        now = now or datetime.now(timezone.utc)
        new_rows = 0
        if self._conn is None and self.log.exists():
            self._conn = _open(self.log)
            self._load(self._conn, now)
        elif self._conn is not None:
            new_rows = self._poll(self._conn)
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()
        return Frame(
            now=now,
            log=self.log,
            scope=self.scope,
            exists=self._conn is not None,
            totals=self.totals,
            by_agent=_ranked(self._agents),
            by_model=_ranked(self._models),
            window=self.window,
            window_usd=sum((cost for _, cost, _ in self._recent), Decimal(0)),
            window_tokens=sum(tokens for _, _, tokens in self._recent),
            last_calls=list(reversed(self._calls)),
            budgets=self._budget_bars(),
            new_rows=new_rows,
        )

    def _budget_bars(self) -> list[BudgetBar] | None:
        # Budget spend is a rollup query per budget: read it every few seconds only.
        if time.monotonic() - self._budgets_read >= BUDGET_REFRESH:
            self._budgets = budget_bars(self._conn)
            self._budgets_read = time.monotonic()
        return self._budgets

    def _load(self, conn: sqlite3.Connection, now: datetime) -> None:
        """Totals so far, from one snapshot of the log: the rollup answers, not `calls`."""
        conn.execute("BEGIN")
        try:
            self._last_id = conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()[0]
            for groups, into in ((["agent"], self._agents), (["model"], self._models)):
                for key, sums in aggregate(conn, groups, self.filters).items():
                    into.setdefault(key[0], Tally()).add(*_tally_of(sums))
            for sums in aggregate(conn, [], self.filters).values():
                self.totals.add(*_tally_of(sums))
            recent = replace(self.filters, since=format_ts(now - self.window), until=None)
            for row in self._rows(conn, recent, "ORDER BY calls.ts"):
                self._remember(row)
            for row in self._rows(conn, self.filters, f"ORDER BY calls.id DESC LIMIT {self.last}"):
                self._calls.appendleft(_call_of(row))
        finally:
            conn.execute("COMMIT")

    def _poll(self, conn: sqlite3.Connection) -> int:
        """Add the rows written since the last refresh, found by row id."""
        where, params = self.filters.sql()
        rows = conn.execute(
            f"{_ROW_SQL} WHERE calls.id > ? AND {where} ORDER BY calls.id",
            [self._last_id, *params],
        ).fetchall()
        for row in rows:
            tally = (1, row[5], row[6], from_parts(row[7], 0, row[8]), int(row[9] == 0))
            self.totals.add(*tally)
            self._agents.setdefault(row[3], Tally()).add(*tally)
            self._models.setdefault(row[2], Tally()).add(*tally)
            self._remember(row)
            self._calls.append(_call_of(row))
            if len(self._calls) > self.last:
                self._calls.popleft()
        if rows:
            self._last_id = rows[-1][0]
        return len(rows)

    def _rows(self, conn: sqlite3.Connection, filters: Filters, tail: str) -> list[Any]:
        # Inside the first frame's read transaction: every row it sees is at most
        # `_last_id`, so the time index can answer the filters.
        where, params = filters.sql()
        sql = f"{_ROW_SQL} WHERE {where} {tail}"
        return conn.execute(sql.replace("NOT INDEXED ", ""), params).fetchall()

    def _remember(self, row: Any) -> None:
        moment = datetime.fromisoformat(row[1].replace("Z", "+00:00"))
        self._recent.append((moment, from_parts(row[7], 0, row[8]), row[5] + row[6]))


def _open(path: Path) -> sqlite3.Connection:
    from modelforge.store import open_db

    return open_db(path, create=False)


def _tally_of(sums: list[int]) -> tuple[int, int, int, Decimal, int]:
    # report.aggregate's order: calls, input, cache read, cache write, output, reasoning,
    # whole, micro, pico, unpriced…
    return sums[0], sums[1], sums[4], from_parts(sums[6], sums[7], sums[8]), sums[9]


def _call_of(row: Any) -> Call:
    cost = from_parts(row[7], 0, row[8]) if row[9] else None
    return Call(row[1], row[2], row[3], row[5], row[6], cost)


def _ranked(groups: dict[str | None, Tally]) -> list[tuple[str | None, Tally]]:
    return sorted(groups.items(), key=lambda item: (-item[1].cost, -item[1].calls, str(item[0])))


# --- budgets (shown when this build has modelforge.budgets) ----------------------------


def budget_bars(conn: sqlite3.Connection | None) -> list[BudgetBar] | None:
    """The configured budgets' use, or None when this build has no budgets module."""
    from modelforge.budget_usage import budget_uses

    if conn is None:
        return []
    uses = budget_uses(conn)
    if uses is None:
        return None
    return [
        BudgetBar(
            use.name,
            use.spent,
            use.limit,
            use.unit,
            use.period_end.strftime("%Y-%m-%d %H:%M UTC") if use.period_end else None,
        )
        for use in uses
    ]


# --- drawing -------------------------------------------------------------------------


def render(frame: Frame) -> Any:
    """The frame as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    head = f"model-forge usage watch · {frame.log} · {frame.scope} · {frame.now:%H:%M:%S} UTC"
    parts.append(Text(head, style="bold"))
    if not frame.exists:
        parts.append(Text(f"Waiting for {frame.log}: nothing recorded there yet."))
        return Group(*parts)
    t = frame.totals
    minutes = int(frame.window.total_seconds() // 60)
    parts.append(
        Text(
            f"Total: {t.calls:,} calls · {t.input_tokens:,} in / {t.output_tokens:,} out "
            f"tokens · {_cost_text(t)}"
        )
    )
    parts.append(
        Text(
            f"Burn rate (last {minutes} min): {format_usd(frame.usd_per_hour)}/h · "
            f"{int(frame.tokens_per_minute):,} tokens/min"
        )
    )
    side = Table.grid(padding=(0, 4))
    side.add_row(_group_table("Agent", frame.by_agent), _group_table("Model", frame.by_model))
    parts.append(side)
    parts.append(_calls_table(frame.last_calls))
    if frame.budgets:
        parts.append(_budget_table(frame.budgets))
    parts.append(Text("q or Ctrl-C to quit", style="dim"))
    return Group(*parts)


def _cost_text(t: Tally) -> str:
    if t.calls and t.unpriced == t.calls:
        return f"— ({t.unpriced} unpriced)"
    extra = f" + {t.unpriced} unpriced" if t.unpriced else ""
    return format_usd(t.cost) + extra


def _group_table(title: str, rows: list[tuple[str | None, Tally]]) -> Any:
    from rich.table import Table

    table = Table(title=f"By {title.lower()}", title_justify="left")
    table.add_column(title)
    for name in ("Calls", "Tokens", "Cost"):
        table.add_column(name, justify="right")
    for group, t in rows:
        table.add_row(group or "—", f"{t.calls:,}", f"{t.tokens:,}", _cost_text(t))
    return table


def _calls_table(calls: list[Call]) -> Any:
    from rich.table import Table

    table = Table(title="Last calls", title_justify="left")
    for name in ("Time (UTC)", "Model", "Agent", "In", "Out", "Cost"):
        table.add_column(name, justify="right" if name in ("In", "Out", "Cost") else "left")
    for call in calls:
        cost = format_usd(call.cost) if call.cost is not None else "unpriced"
        table.add_row(
            call.ts[11:19],
            call.model or "?",
            call.agent or "—",
            f"{call.input_tokens:,}",
            f"{call.output_tokens:,}",
            cost,
        )
    return table


def _budget_table(bars: list[BudgetBar]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(title="Budgets", title_justify="left")
    for name in ("Budget", "Use", "Spent", "Limit", "Resets"):
        table.add_column(name)
    for bar in bars:
        share = float(bar.spent / bar.limit) if bar.limit else 1.0
        shown = format_usd if bar.unit == "usd" else (lambda v: f"{int(v):,} tokens")
        table.add_row(
            bar.name,
            ProgressBar(total=1.0, completed=min(share, 1.0), width=30),
            f"{shown(bar.spent)} ({share:.0%})",
            shown(bar.limit),
            bar.resets or "",
        )
    return table


# --- the loop ------------------------------------------------------------------------


def run(watcher: Watcher, console: Any, interval: float = 1.0) -> None:
    """Redraw every `interval` seconds until q (on a terminal) or Ctrl-C."""
    from rich.live import Live

    with (
        Live(render(watcher.refresh()), console=console, auto_refresh=False) as live,
        _keys() as pressed_q,
    ):
        while not pressed_q(interval):
            live.update(render(watcher.refresh()), refresh=True)


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], bool]]:
    """A function that waits up to its timeout and says whether q was pressed.

    On a terminal, keys are read one at a time (cbreak mode, restored on the way out);
    otherwise it just sleeps.
    """
    stdin = sys.stdin
    try:
        import termios
        import tty

        interactive = stdin is not None and stdin.isatty()
    except ImportError:  # pragma: no cover - Windows
        interactive = False
    if not interactive:

        def sleep(timeout: float) -> bool:
            time.sleep(timeout)
            return False

        yield sleep
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)

        def wait(timeout: float) -> bool:
            ready, _, _ = select.select([fd], [], [], timeout)
            return bool(ready) and os.read(fd, 1) in (b"q", b"Q")

        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
