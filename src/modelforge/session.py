"""`track_usage()`: catch every model call inside a `with` block, in any framework.

One module-level ContextVar holds the stack of open sessions, so nested blocks each see
the calls made inside them, and asyncio tasks and LangChain's thread pools inherit it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modelforge.records import CallRecord, clean_attrs
from modelforge.usage import Usage

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
    calls: int
    usage: Usage
    cost: Decimal
    unpriced: int


class UsageSession:
    """What `track_usage()` yields: the calls made inside the block, with totals."""

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
        for record in self._snapshot():
            total = total + record.usage
        return total

    @property
    def total_cost(self) -> Decimal:
        """The sum over priced calls; see `.unpriced` for calls that could not be priced."""
        return sum((r.cost.total for r in self._snapshot() if r.cost.total is not None), Decimal(0))

    @property
    def unpriced(self) -> int:
        return sum(1 for r in self._snapshot() if not r.cost.priced)

    @property
    def estimated(self) -> int:
        return sum(1 for r in self._snapshot() if r.usage.estimated)

    def by_model(self) -> dict[str, ModelTotals]:
        """Usage and cost per model (the served model where known)."""
        groups: dict[str, list[CallRecord]] = {}
        for record in self._snapshot():
            name = record.response_model or record.model or "unknown"
            groups.setdefault(name, []).append(record)
        result = {}
        for name, records in groups.items():
            usage = Usage()
            for r in records:
                usage = usage + r.usage
            cost = sum((r.cost.total for r in records if r.cost.total is not None), Decimal(0))
            unpriced = sum(1 for r in records if not r.cost.priced)
            result[name] = ModelTotals(len(records), usage, cost, unpriced)
        return result

    def _snapshot(self) -> list[CallRecord]:
        with self._lock:
            return list(self.calls)

    def __repr__(self) -> str:
        return (
            f"<UsageSession calls={len(self.calls)} total_cost={self.total_cost} "
            f"unpriced={self.unpriced} estimated={self.estimated}>"
        )


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
    the model's context window) and `budgets` (`Budget`s checked before every call in
    the block, see docs/budgets.md).

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
        **attrs: Any,
    ) -> None:
        self.session = UsageSession(
            attrs, persist=persist, db=db, guard_context=guard_context, budgets=budgets
        )
        self._llamaindex = llamaindex
        self._token: Token[tuple[UsageSession, ...]] | None = None
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> UsageSession:
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
