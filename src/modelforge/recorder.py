"""Where finished records go: the active `track_usage()` sessions, the log, and sinks.

Adapters call `deliver()`; it is the one place that decides what happens to a record,
so every framework gets the same de-duplication, opt-out and attribution rules.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelforge import config
from modelforge.records import CallRecord, clean_attrs
from modelforge.session import current_sessions

if TYPE_CHECKING:
    from modelforge.session import UsageSession
    from modelforge.store import UsageLog

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
    if record.usage.anomalies:
        count_anomalies(len(record.usage.anomalies))
    for session in stack:
        session.add(record)
    if persist and not any(not s.persist for s in stack):
        enabled, default_db = _log_settings()
        if enabled:
            if db is None and stack:
                db = next((s.db for s in reversed(stack) if s.db), None)
            _get_log()(db or default_db).submit(record)
    if _sinks and _first_time(record.run_id):
        for sink in list(_sinks):
            try:
                sink(record)
            except Exception as exc:
                report_error("sink", exc)


# Everything `config.telemetry_status()` and `config.default_db_path()` depend on: the
# environment and the config file. Deriving them afresh on every call costs tens of µs,
# so a call only re-reads the environment, and the config file is stat-ed at most every
# CONFIG_RECHECK seconds (a `config.save_setting` in this process is seen at once).
_SETTINGS_ENV = (
    "MODELFORGE_TELEMETRY",
    "DO_NOT_TRACK",
    "MODELFORGE_DB",
    "MODELFORGE_CONFIG_DIR",
    "MODELFORGE_DATA_DIR",
    # what platformdirs reads when the MODELFORGE_*_DIR variables are unset
    *(("APPDATA", "LOCALAPPDATA") if sys.platform == "win32" else ()),
    *(("XDG_CONFIG_HOME", "XDG_DATA_HOME") if sys.platform.startswith("linux") else ()),
    "HOME",
)
CONFIG_RECHECK = 0.5
_environ_data = getattr(os.environ, "_data", None)
_encode_key = getattr(os.environ, "encodekey", None)
if isinstance(_environ_data, dict) and _encode_key is not None:
    # os.environ.get encodes each key per call; reading its backing dict with keys
    # encoded once is ten times cheaper and sees the same updates.
    _ENCODED_ENV = tuple(_encode_key(name) for name in _SETTINGS_ENV)

    def _settings_env() -> tuple[object, ...]:
        return tuple(map(os.environ._data.get, _ENCODED_ENV))  # type: ignore[attr-defined]

else:  # pragma: no cover - a Python whose os.environ differs

    def _settings_env() -> tuple[object, ...]:
        return tuple([os.environ.get(name) for name in _SETTINGS_ENV])


@dataclass
class _Settings:
    env: tuple[object, ...]
    generation: int
    config_file: str
    stamp: int | None
    checked: float
    answer: tuple[bool, Path]  # (enabled, default_db), returned as is


_settings_memo: _Settings | None = None


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _log_settings() -> tuple[bool, Path]:
    """(whether the usage log may be written, the default log path)."""
    global _settings_memo
    env = _settings_env()
    memo = _settings_memo
    if memo is not None and memo.env == env and memo.generation == config.generation():
        now = time.monotonic()
        if now - memo.checked < CONFIG_RECHECK:
            return memo.answer
        if _mtime(memo.config_file) == memo.stamp:
            memo.checked = now
            return memo.answer
    generation = config.generation()
    config_file = str(config.config_path())
    stamp = _mtime(config_file)  # before reading, so a write during the read is noticed
    answer = (config.telemetry_status().enabled, config.default_db_path())
    _settings_memo = _Settings(env, generation, config_file, stamp, time.monotonic(), answer)
    return answer


def _get_log() -> Callable[[Path | str | None], UsageLog]:
    # Imported on first use: the store pulls in sqlite-utils, which an import of
    # modelforge alone should not pay for.
    global _get_log_fn
    if _get_log_fn is None:
        from modelforge.store import get_log

        _get_log_fn = get_log
    return _get_log_fn


_get_log_fn: Callable[[Path | str | None], UsageLog] | None = None


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
