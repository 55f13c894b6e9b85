"""`track_usage()`: catch every model call inside a `with` block, in any framework.

One module-level ContextVar holds the stack of open sessions, so nested blocks each see
the calls made inside them, and asyncio tasks and LangChain's thread pools inherit it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modelforge.errors import ModelForgeError
from modelforge.records import CallRecord, clean_attrs
from modelforge.usage import TOKEN_FIELDS, Usage

if TYPE_CHECKING:
    from modelforge.budgets import Budget

_sessions: ContextVar[tuple[UsageSession, ...]] = ContextVar("modelforge_sessions", default=())


def current_sessions() -> tuple[UsageSession, ...]:
    """The open `track_usage()` sessions in this context, outermost first."""
    return _sessions.get()


def guarding(sessions: tuple[UsageSession, ...]) -> bool:
    """Whether any of `sessions` asked for the context-window guard."""
    return any(s.guard_context for s in sessions)


@dataclass(frozen=True)
class ModelTotals:
    """Calls, tokens and cost of one group (a model, an agent, a provider)."""

    calls: int
    usage: Usage
    cost: Decimal
    unpriced: int


@dataclass(frozen=True)
class BurnRate:
    """Spend per hour and tokens per minute over `window` (priced calls only in USD)."""

    usd_per_hour: Decimal
    tokens_per_minute: float
    calls: int
    window: timedelta


@dataclass(frozen=True)
class PriorGroup:
    """What a resumed session recorded before, per served model, provider and agent."""

    model: str | None
    provider: str | None
    agent: str | None
    totals: ModelTotals
    estimated: int


class ResumeError(ModelForgeError, ValueError):
    """`track_usage(resume=True)` without a `session` name to resume."""


# Rates are estimates; six places are more than any display needs.
_RATE_PLACES = Decimal("0.000001")


class UsageSession:
    """What `track_usage()` yields: the calls made inside the block, with totals.

    A resumed session (`track_usage(session="name", resume=True)`) also counts what that
    session recorded in the log before; `calls` lists only this run's records.
    """

    def __init__(
        self,
        attrs: dict[str, Any],
        *,
        persist: bool = True,
        db: Path | str | None = None,
        guard_context: bool = False,
        budgets: Sequence[Budget] = (),
    ) -> None:
        self.attrs = clean_attrs(attrs)
        self.persist = persist
        self.db = db
        self.guard_context = guard_context
        self.budgets = tuple(budgets)
        self.calls: list[CallRecord] = []
        self.prior: list[PriorGroup] = []
        self.started_at: datetime = datetime.now(timezone.utc)
        self._run_ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, record: CallRecord) -> bool:
        """Keep a record once per run_id; False for a repeat."""
        with self._lock:
            if record.run_id in self._run_ids:
                return False
            self._run_ids.add(record.run_id)
            self.calls.append(record)
            return True

    @property
    def usage(self) -> Usage:
        total = Usage()
        for group in self.prior:
            total = total + group.totals.usage
        for record in self._snapshot():
            total = total + record.usage
        return total

    @property
    def total_cost(self) -> Decimal:
        """The sum over priced calls; see `.unpriced` for calls that could not be priced."""
        prior = sum((g.totals.cost for g in self.prior), Decimal(0))
        return prior + _cost(self._snapshot())

    @property
    def unpriced(self) -> int:
        prior = sum(g.totals.unpriced for g in self.prior)
        return prior + sum(1 for r in self._snapshot() if not r.cost.priced)

    @property
    def estimated(self) -> int:
        prior = sum(g.estimated for g in self.prior)
        return prior + sum(1 for r in self._snapshot() if r.usage.estimated)

    @property
    def elapsed(self) -> timedelta:
        """Time since `started_at`: the block's start, or a resumed session's first call."""
        return datetime.now(timezone.utc) - self.started_at

    def by_model(self) -> dict[str, ModelTotals]:
        """Usage and cost per model (the served model where known)."""
        return self._totals_by(
            lambda r: r.response_model or r.model or "unknown",
            lambda g: g.model or "unknown",
        )

    def by_agent(self) -> dict[str | None, ModelTotals]:
        """Usage and cost per agent (None for calls no agent is named for)."""
        return self._totals_by(lambda r: r.agent, lambda g: g.agent)

    def by_provider(self) -> dict[str | None, ModelTotals]:
        """Usage and cost per provider (None where the provider is unknown)."""
        return self._totals_by(lambda r: r.provider, lambda g: g.provider)

    def burn_rate(self, minutes: float | None = None) -> BurnRate:
        """Spend per hour and tokens per minute, over the last `minutes` of this run's
        calls, or over the whole session (resumed calls included) by default.

        The window is never longer than the session: ten minutes into a session, a rate
        over the last hour is over those ten minutes.

        >>> with track_usage(persist=False) as session:
        ...     pass
        >>> session.burn_rate(15).usd_per_hour == 0
        True
        """
        now = datetime.now(timezone.utc)
        elapsed = max(now - self.started_at, timedelta(seconds=1))
        if minutes is None:
            window, usage, cost, calls = elapsed, self.usage, self.total_cost, self._count()
        else:
            window = min(timedelta(minutes=minutes), elapsed)
            since = now - window
            recent = [r for r in self._snapshot() if _moment(r.ts) >= since]
            usage, cost, calls = _usage(recent), _cost(recent), len(recent)
        hours = Decimal(window.total_seconds()) / 3600
        return BurnRate(
            usd_per_hour=(cost / hours).quantize(_RATE_PLACES),
            tokens_per_minute=round(usage.total_tokens / (window.total_seconds() / 60), 3),
            calls=calls,
            window=window,
        )

    def resume_from_log(self, name: str) -> None:
        """Load what session `name` already recorded in this session's log (`db`, else
        the default log), so totals carry on from it. This run's queued records are
        written first; a log that does not exist yet has nothing to resume."""
        from modelforge import config, report, store

        path = Path(self.db).expanduser() if self.db else config.default_db_path()
        store.flush()
        if not path.exists():
            return
        conn = store.open_db(path, create=False)
        try:
            groups, first_ts = report.session_totals(conn, name)
        finally:
            conn.close()
        self.prior = [
            PriorGroup(
                model=g["model"],
                provider=g["provider"],
                agent=g["agent"],
                totals=ModelTotals(g["calls"], _usage_of(g), g["cost_usd"], g["unpriced_calls"]),
                estimated=g["estimated_calls"],
            )
            for g in groups
        ]
        if first_ts is not None:
            self.started_at = min(self.started_at, _moment(first_ts))

    def _count(self) -> int:
        return sum(g.totals.calls for g in self.prior) + len(self._snapshot())

    def _totals_by(
        self,
        record_key: Callable[[CallRecord], Any],
        prior_key: Callable[[PriorGroup], Any],
    ) -> dict[Any, ModelTotals]:
        result: dict[Any, ModelTotals] = {}

        def add(key: Any, totals: ModelTotals) -> None:
            old = result.get(key)
            if old is not None:
                totals = ModelTotals(
                    old.calls + totals.calls,
                    old.usage + totals.usage,
                    old.cost + totals.cost,
                    old.unpriced + totals.unpriced,
                )
            result[key] = totals

        for group in self.prior:
            add(prior_key(group), group.totals)
        for record in self._snapshot():
            cost = record.cost.total if record.cost.total is not None else Decimal(0)
            add(record_key(record), ModelTotals(1, record.usage, cost, int(not record.cost.priced)))
        return result

    def _snapshot(self) -> list[CallRecord]:
        with self._lock:
            return list(self.calls)

    def __repr__(self) -> str:
        return (
            f"<UsageSession calls={len(self.calls)} total_cost={self.total_cost} "
            f"unpriced={self.unpriced} estimated={self.estimated}>"
        )


def _cost(records: Iterable[CallRecord]) -> Decimal:
    return sum((r.cost.total for r in records if r.cost.total is not None), Decimal(0))


def _usage(records: Iterable[CallRecord]) -> Usage:
    total = Usage()
    for record in records:
        total = total + record.usage
    return total


def _usage_of(sums: dict[str, Any]) -> Usage:
    return Usage.model_validate({name: int(sums[name]) for name in TOKEN_FIELDS})


def _moment(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# Frameworks that need a hook to see runs started inside the block (LangChain's
# configure hook). Each returns an undo function.
Activator = Callable[[tuple[UsageSession, ...]], Callable[[], None]]
_langchain_present: bool | None = None


def _framework_activators(llamaindex: bool) -> list[Activator]:
    global _langchain_present
    if _langchain_present is None:
        try:
            _langchain_present = importlib.util.find_spec("langchain_core") is not None
        except (ImportError, ValueError):  # e.g. sys.modules["langchain_core"] = None
            _langchain_present = False
    activators: list[Activator] = []
    if _langchain_present:
        from modelforge.integrations.langchain import activate_tracking

        activators.append(activate_tracking)
    if llamaindex:
        from modelforge.integrations.llamaindex import activate_tracking as li_activate

        activators.append(li_activate)
    return activators


class track_usage:
    """Record every LLM call made inside the block, in LangChain or LlamaIndex.

    Keyword arguments become attributes on every record (`project="x"`), except:
    `persist` (False keeps records in memory only), `db` (the log file),
    `llamaindex` (True also turns on LlamaIndex instrumentation), `guard_context`
    (True raises `ContextWindowExceededError` before sending a LangChain call, or a
    LlamaIndex call that a `LlamaIndexCallbackHandler` sees, whose prompt cannot fit
    the model's context window), `budgets` (`Budget`s checked before every call in
    the block, see docs/budgets.md) and `resume`.

    Two attributes mean more: `agent="x"` names the agent of every call that does not
    name its own (a LangGraph node does), so `modelforge usage --by agent` sees it; and
    `session="nightly-run"` names a session that can span runs. With `resume=True` the
    block first loads what that session recorded in the log, so its totals carry on
    after a restart.

    >>> from modelforge import track_usage
    >>> with track_usage(project="docs") as session:
    ...     pass  # run chains here
    >>> session.total_cost
    Decimal('0')
    """

    def __init__(
        self,
        *,
        persist: bool = True,
        db: Path | str | None = None,
        llamaindex: bool = False,
        guard_context: bool = False,
        budgets: Sequence[Budget] = (),
        resume: bool = False,
        **attrs: Any,
    ) -> None:
        if resume and not attrs.get("session"):
            raise ResumeError('resume=True needs the session to resume: session="name"')
        self.session = UsageSession(
            attrs, persist=persist, db=db, guard_context=guard_context, budgets=budgets
        )
        self._llamaindex = llamaindex
        self._resume = str(attrs["session"]) if resume else None
        self._token: Token[tuple[UsageSession, ...]] | None = None
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> UsageSession:
        if self._resume is not None:
            self.session.resume_from_log(self._resume)
        stack = (*_sessions.get(), self.session)
        self._token = _sessions.set(stack)
        try:
            for activate in _framework_activators(self._llamaindex):
                self._undo.append(activate(stack))
        except BaseException:
            self._exit()
            raise
        return self.session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    def _exit(self) -> None:
        try:
            while self._undo:
                self._undo.pop()()
        finally:
            if self._token is not None:
                _sessions.reset(self._token)
                self._token = None

    async def __aenter__(self) -> UsageSession:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()
