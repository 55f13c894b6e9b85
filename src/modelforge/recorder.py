"""Where finished records go: the active `track_usage()` sessions, the log, and sinks.

Adapters call `deliver()`; it is the one place that decides what happens to a record,
so every framework gets the same de-duplication, opt-out and attribution rules.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from modelforge import budgets, config, hooks
from modelforge.records import CallRecord, clean_attrs
from modelforge.session import current_sessions

if TYPE_CHECKING:
    from modelforge.session import UsageSession

logger = logging.getLogger("modelforge")

Sink = Callable[[CallRecord], None]
_sinks: list[Sink] = []
_sink_seen: dict[str, None] = {}
_lock = threading.Lock()
_handler_errors = 0
_anomalies = 0
_RECENT = 100_000


def add_sink(sink: Sink) -> None:
    """Also send every record (once per run_id) to `sink`, e.g. the OpenTelemetry exporter."""
    with _lock:
        if sink not in _sinks:
            _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    with _lock:
        if sink in _sinks:
            _sinks.remove(sink)


def deliver(
    record: CallRecord,
    *,
    sessions: Iterable[UsageSession] = (),
    persist: bool = True,
    db: Path | str | None = None,
) -> None:
    """Hand one finished call to every session, the usage log and the sinks."""
    stack = _merge(tuple(sessions), current_sessions())
    if stack:
        record.attrs = clean_attrs(*(s.attrs for s in stack), record.attrs)
    if record.agent is None and record.attrs.get("agent"):
        # `track_usage(agent="x")` names the agent of calls that do not name their own
        # (a LangGraph node or `agent` metadata on the call is more specific).
        record.agent = record.attrs["agent"]
    if record.usage.anomalies:
        count_anomalies(len(record.usage.anomalies))
    for session in stack:
        session.add(record)
    db = db or next((s.db for s in reversed(stack) if s.db), None)
    settings = config.load_settings()
    persisted = (
        persist and all(s.persist for s in stack) and config.telemetry_status(settings).enabled
    )
    # Before the log may have it, so no budget counts it twice or not at all.
    around = budgets.applicable((), stack, settings)
    budgets.note(record, db=db, persisted=persisted, budgets=around, settings=settings)
    if persisted:
        _submit(record, db, settings)
    if (_sinks or hooks.active()) and _first_time(record.run_id):
        for sink in list(_sinks):
            try:
                sink(record)
            except Exception as exc:
                report_error("sink", exc)
        if hooks.active():
            hooks.dispatch(record)


def _submit(record: CallRecord, db: Path | str | None, settings: config.Settings) -> None:
    """Queue `record` for its log (`db`, else the configured one)."""
    # Imported here: the store imports sqlite3, which `import modelforge` skips.
    from modelforge.store import get_log

    get_log(db or config.default_db_path(settings)).submit(record)


def _merge(a: tuple[UsageSession, ...], b: tuple[UsageSession, ...]) -> tuple[UsageSession, ...]:
    if not a:
        return b
    if not b:
        return a
    merged = list(a)
    merged.extend(s for s in b if s not in merged)
    return tuple(merged)


def _first_time(run_id: str) -> bool:
    with _lock:
        if run_id in _sink_seen:
            return False
        _sink_seen[run_id] = None
        if len(_sink_seen) > _RECENT:
            for old in list(_sink_seen)[: _RECENT // 2]:
                del _sink_seen[old]
        return True


def report_error(where: str, exc: BaseException) -> None:
    """Count a handler failure and log it once per kind; never raises."""
    global _handler_errors
    with _lock:
        _handler_errors += 1
    config.warn_once(
        f"handler:{where}:{type(exc).__name__}",
        f"{where} failed and was skipped ({type(exc).__name__}: {exc}); "
        "the model call itself is unaffected",
    )


def count_anomalies(n: int) -> None:
    global _anomalies
    with _lock:
        _anomalies += n


def handler_errors() -> int:
    return _handler_errors


def anomaly_count() -> int:
    return _anomalies
