"""The local SQLite usage log: the file, its rows, and the background writer.

Callers only put records on a queue. A daemon thread writes them in batches, at most
`BATCH_WINDOW` seconds after they arrive. In a child process (fork or spawn) a call
waits until its record is written, because children leave through `os._exit` or are
terminated, and nothing queued would survive that. At interpreter exit the writer gets
`EXIT_WAIT` seconds; records it still cannot write then (the file locked, unwritable)
go to a side file next to the log, `<log>.pending.jsonl`, which the next writer imports.

When the file cannot be written, records wait in memory up to `MAX_PENDING`; older
ones are then dropped and counted, and writing resumes as soon as the file is usable.
One warning is logged, never one per call.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import sqlite3
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelforge import config, migrations
from modelforge.errors import UsageLogError
from modelforge.money import money_text, to_pico
from modelforge.records import CallRecord

logger = logging.getLogger("modelforge")

# How long the writer lets a burst of records pile up before one transaction writes
# them all; flush() and close() cut it short.
BATCH_WINDOW = 0.05
BATCH_SIZE = 5_000
MAX_PENDING = 100_000
# Records queued beyond this make `submit` wait (up to MAX_WAIT seconds) for the writer:
# a program calling faster than records can be written is slowed a little instead of
# growing memory without bound.
MAX_QUEUED = 5_000
MAX_WAIT = 1.0
BUSY_TIMEOUT_MS = 30_000
RETRY_DELAY = 1.0
# How long interpreter exit waits for the writer; what is left then goes to the side file.
EXIT_WAIT = 5.0
# How long a call in a child process waits for its record to be written.
CHILD_WAIT = 30.0
SIDE_FILE_SUFFIX = ".pending.jsonl"


# --- rows ---------------------------------------------------------------------------


def record_row(record: CallRecord) -> dict[str, Any]:
    """The `calls` row of a record, by column name. Unpriced calls have NULL costs."""
    usage, cost = record.usage, record.cost
    priced = cost.priced

    def money(amount: Any) -> str | None:
        return money_text(amount) if priced else None

    return {
        "ts": record.ts,
        "run_id": record.run_id,
        "parent_run_id": record.parent_run_id,
        "trace_id": record.trace_id,
        "framework": record.framework,
        "operation": record.operation,
        "provider": record.provider,
        "model": record.model,
        "response_model": record.response_model,
        "catalog_model": cost.catalog_model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": money(cost.total),
        "cost_pusd": to_pico(cost.total) if priced else None,
        "cost_input": money(cost.input),
        "cost_cache_read": money(cost.cache_read),
        "cost_cache_write": money(cost.cache_write),
        "cost_output": money(cost.output),
        "cost_reasoning": money(cost.reasoning),
        "cost_audio": money(cost.audio),
        "priced": int(priced),
        "price_source": cost.source,
        "price_flags": json.dumps(list(cost.flags)) if cost.flags else None,
        "estimated": int(usage.estimated),
        "estimate_method": record.estimate_method,
        "cache_hit": int(usage.cache_hit),
        "service_tier": usage.service_tier,
        "status": record.status,
        "error_type": record.error_type,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "agent": record.agent,
        "run_name": record.run_name,
        "tags": json.dumps(list(record.tags), ensure_ascii=False) if record.tags else None,
        "attrs": json.dumps(record.attrs, ensure_ascii=False) if record.attrs else None,
        "anomalies": json.dumps(list(usage.anomalies)) if usage.anomalies else None,
        "context_limit": record.context_limit,
        "context_used": record.context_used,
    }


def insert_rows(conn: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert `calls` rows in one transaction; returns how many were new.

    Only a repeated run_id is skipped: any other refusal raises, and nothing is written.
    Rows may name different columns (a side file saved by an older version): each set
    of columns gets its own INSERT. The hourly rollup is kept by the table's triggers.
    """
    by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(row)
    if not by_columns:
        return 0
    inserted = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for columns, group in by_columns.items():
            sql = (
                f"INSERT INTO calls ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT (run_id) DO NOTHING"
            )
            # The rows of a group name the same columns in the same order.
            inserted += conn.executemany(sql, [tuple(row.values()) for row in group]).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return inserted


# --- opening the file ---------------------------------------------------------------


def open_db(path: Path | str, *, create: bool = True) -> sqlite3.Connection:
    """Open the log: for writing (`create`: made if missing, private, WAL, migrated), or
    for reading, which never changes the file.

    A log at an older schema is read through a migrated copy in memory. A log written by
    a newer model-forge can be read but not written. Raises UsageLogError with a plain
    explanation for a missing, foreign, newer or corrupted file.
    """
    path = Path(path)
    if not create and not path.exists():
        raise UsageLogError(f"no usage log at {path}")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file ourselves so it is private from the first byte; SQLite gives
        # its -wal and -shm files the same mode.
        _held_fd(path)
    conn = _connect(path)
    try:
        if create:
            # Processes that open a new file at once would race to create the schema.
            with _file_lock(path):
                state = _schema_state(conn, path)
                if state == "newer":
                    raise UsageLogError(_newer_message(conn, path))
                _keep_private(path)
                if state != "current":
                    conn.execute("PRAGMA journal_mode = WAL")
                    migrations.apply(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            _check_unique_run_id(conn, path)
            return conn
        state = _schema_state(conn, path)
        _keep_private(path)
        if state in ("empty", "older"):
            conn = _migrated_copy(conn)
        elif state == "newer":
            config.warn_once(f"newer:{path}", _newer_message(conn, path) + "; reading it only")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise UsageLogError(
                f"{path} is not a usable SQLite file ({exc}); move it aside and a new log "
                "will be created"
            ) from exc
        raise UsageLogError(f"cannot use usage log {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
            isolation_level=None,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise UsageLogError(f"cannot open usage log {path}: {exc}") from exc
    return conn


def _schema_state(conn: sqlite3.Connection, path: Path) -> str:
    """'empty', 'older', 'current' or 'newer'; raises for a file that is not our log."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    ours = {name for name in tables if not name.startswith("sqlite_")}
    if not ours:
        return "empty"
    if migrations.MIGRATIONS_TABLE not in ours:
        raise UsageLogError(
            f"{path} is an SQLite file but not a model-forge usage log (it has tables: "
            f"{', '.join(sorted(ours))}); it was left as it is"
        )
    applied = migrations.applied(conn)
    if not applied:
        raise UsageLogError(
            f"{path} is an SQLite file but not a model-forge usage log (no model-forge "
            "migrations recorded); it was left as it is"
        )
    if set(applied) - set(migrations.MIGRATION_NAMES):
        return "newer"
    return "current" if len(applied) == len(migrations.MIGRATION_NAMES) else "older"


def _newer_message(conn: sqlite3.Connection, path: Path) -> str:
    unknown = sorted(set(migrations.applied(conn)) - set(migrations.MIGRATION_NAMES))
    return (
        f"{path} was written by a newer model-forge (migrations {', '.join(unknown)}); "
        "upgrade model-forge to record into it"
    )


def _migrated_copy(conn: sqlite3.Connection) -> sqlite3.Connection:
    """An in-memory copy of an older log, migrated, so reading never changes the file."""
    copy = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    conn.backup(copy)
    conn.close()
    migrations.apply(copy)
    return copy


def empty_log() -> sqlite3.Connection:
    """A log with no calls, in memory: what reports read when there is no log file yet,
    so they print the same (empty) document as for a log with nothing in range."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    migrations.apply(conn)
    return conn


def _keep_private(path: Path) -> None:
    """Tighten a log file that others can read to 0600, warning once."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
            config.warn_once(
                f"mode:{path}",
                f"usage log {path} was readable by others (mode {mode:04o}); set it to "
                f"{mode & 0o700:04o}",
            )
    except OSError:
        pass  # not ours to change (another user's file): reading it is still fine


def _check_unique_run_id(conn: sqlite3.Connection, path: Path) -> None:
    """Writers rely on the unique run_id index: it keeps a call from counting twice."""
    for _, name, unique, *_ in conn.execute("PRAGMA index_list(calls)"):
        columns = [row[0] for row in conn.execute("SELECT name FROM pragma_index_info(?)", (name,))]
        if unique and columns == ["run_id"]:
            return
    raise UsageLogError(
        f"{path} has lost the unique index on calls.run_id, which keeps a call from being "
        "counted twice; restore it with: CREATE UNIQUE INDEX idx_calls_run_id ON calls (run_id)"
    )


_held_fds: dict[str, int] = {}
_held_fds_lock = threading.Lock()


def _held_fd(path: Path) -> int:
    """A descriptor of the log file (created mode 0600 if missing), kept open for good.

    Closing *any* descriptor of a database file drops every POSIX lock this process holds
    on it, SQLite's included; another process's SQLite may then take this process for
    gone and delete the WAL it is still writing to, losing those records
    (https://www.sqlite.org/howtocorrupt.html, section 2.2). So the descriptors used to
    create and to lock the file are opened once per file and never closed.
    """
    key = str(path.absolute())
    with _held_fds_lock:
        fd = _held_fds.get(key)
        if fd is not None:
            try:
                held, now = os.fstat(fd), os.stat(path)
                if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                    return fd
            except OSError:
                pass
            # The file was moved or deleted: leave the old descriptor open (see above).
        fd = _held_fds[key] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd


_file_lock_mutex = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive across threads (one lock) and processes (flock on the held descriptor,
    which every thread here shares, so flock alone would not exclude them)."""
    with _file_lock_mutex:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: SQLite's own locking must do
            yield
            return
        fd = _held_fd(path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def apply_retention(conn: sqlite3.Connection) -> int:
    """Delete calls older than the configured `retention_days`, if set."""
    days = config.load_settings().retention_days
    if not days:
        return 0
    from datetime import timedelta

    from modelforge.report import prune

    return prune(conn, timedelta(days=days))


# --- the side file: records that could not be written at exit -----------------------


def side_file(path: Path) -> Path:
    return path.with_name(path.name + SIDE_FILE_SUFFIX)


def save_to_side_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Append rows to the log's side file (mode 0600), one JSON object a line."""
    target = side_file(path)
    lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    with _file_lock(path):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(lines)
    return target


def import_side_file(conn: sqlite3.Connection, path: Path) -> int:
    """Write the side file's rows into the log, then remove it; returns rows added."""
    target = side_file(path)
    if not target.exists():
        return 0
    with _file_lock(path):
        rows = [
            json.loads(line)
            for line in target.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        inserted = insert_rows(conn, rows)
        target.unlink()
    logger.warning(
        "modelforge: imported %d records saved in %s when a process could not write them",
        inserted,
        target,
    )
    return inserted


# --- the writer ---------------------------------------------------------------------


@dataclass
class _Flush:
    done: threading.Event
    stop: bool = False


@dataclass(frozen=True)
class LogStats:
    """Counters for one log since this process opened it."""

    path: str
    written: int
    duplicates: int
    dropped: int
    errors: int
    pending: int
    saved: int = 0  # written to the side file at exit, for the next writer to import


class UsageLog:
    """One SQLite usage log file, written by a background thread."""

    def __init__(self, path: Path | str, *, max_pending: int = MAX_PENDING) -> None:
        self.path = Path(path)
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[dict[str, Any] | _Flush] = queue.SimpleQueue()
        self._pending: deque[dict[str, Any]] = deque()
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._room = threading.Event()
        self._start_lock = threading.Lock()
        self._queued = 0  # rows on the queue (markers aside), under _count_lock
        self._count_lock = threading.Lock()
        self._failing = False
        self.written = self.duplicates = self.dropped = self.errors = self.saved = 0

    # The caller's side: cheap, and never blocks on disk outside a child process.
    def submit(self, record: CallRecord) -> None:
        """Queue a record's row, as it is now. A run_id already in the log is skipped
        (and counted) when written."""
        try:
            row = record_row(record)
        except Exception as exc:  # a record we built wrong must not stop the others
            self.errors += 1
            self.dropped += 1
            config.warn_once(f"row:{type(exc).__name__}", f"dropped a bad record: {exc!r}")
            return
        if self._thread is None:
            self._start()
        if self._queue.qsize() >= MAX_QUEUED:
            self._room.clear()
            self._wake.set()
            self._room.wait(MAX_WAIT)
        with self._count_lock:
            self._queued += 1
        self._queue.put(row)
        if _in_child_process():
            self.flush(CHILD_WAIT)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is written.

        False when any record is still pending, or was ever dropped: `stats()` says which.
        """
        if self._thread is not None and self._thread.is_alive():
            marker = _Flush(threading.Event())
            self._queue.put(marker)
            self._wake.set()
            marker.done.wait(timeout)
        return not self._queued and not self._pending and not self.dropped

    def close(self, timeout: float | None = 10.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._thread is not None and self._thread.is_alive():
            deadline = None if timeout is None else time.monotonic() + timeout
            marker = _Flush(threading.Event(), stop=True)
            self._queue.put(marker)
            self._wake.set()
            marker.done.wait(timeout)
            self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def save_unwritten(self) -> int:
        """Put every record not yet written into the side file; returns how many."""
        rows = list(self._pending)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Flush):
                self._taken(1)
                rows.append(item)
        if not rows:
            return 0
        # The writer may still write some of these: the next import skips those run_ids.
        save_to_side_file(self.path, rows)
        self._pending.clear()
        self.saved += len(rows)
        return len(rows)

    def stats(self) -> LogStats:
        return LogStats(
            str(self.path),
            self.written,
            self.duplicates,
            self.dropped,
            self.errors,
            len(self._pending) + self._queued,
            self.saved,
        )

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name=f"modelforge-writer:{self.path.name}", daemon=True
                )
                thread.start()
                self._thread = thread

    # The writer's side.
    def _run(self) -> None:
        # Open (and create or migrate) the file now, while the program runs, rather than
        # with the first batch, which may come only at exit.
        with contextlib.suppress(sqlite3.Error, OSError, UsageLogError):
            self._connect()
        while True:
            try:
                first = self._queue.get(timeout=RETRY_DELAY if self._pending else None)
            except queue.Empty:
                first = None
            if isinstance(first, dict) and self._queue.qsize() < BATCH_SIZE:
                self._wake.wait(BATCH_WINDOW)
            # A marker is queued before its wake-up is set, so clearing here loses none.
            self._wake.clear()
            records: list[dict[str, Any]] = []
            markers: list[_Flush] = []
            item: dict[str, Any] | _Flush | None = first
            while item is not None:
                if isinstance(item, _Flush):
                    markers.append(item)
                else:
                    records.append(item)
                if len(records) >= BATCH_SIZE:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            self._pending.extend(records)
            self._taken(len(records))
            try:
                self._write()
            except Exception as exc:  # a bug here must not end the writer: rows stay pending
                self.errors += 1
                config.warn_once(f"writer:{type(exc).__name__}", f"usage log writer: {exc!r}")
            self._drop_overflow()
            if self._queue.qsize() < MAX_QUEUED // 2:
                self._room.set()
            for marker in markers:
                marker.done.set()
            if any(m.stop for m in markers):
                self._close_db()
                return

    def _taken(self, rows: int) -> None:
        with self._count_lock:
            self._queued -= rows

    def _write(self) -> None:
        if not self._pending:
            return
        with _no_fork_now:
            self._write_pending()

    def _write_pending(self) -> None:
        try:
            conn = self._connect()
            try:
                inserted = insert_rows(conn, self._pending)
                self._counted(inserted, len(self._pending))
                self._pending.clear()
            except (*_UNBINDABLE, *_REFUSED) as exc:
                if _is_file_error(exc):
                    raise
                self._write_one_by_one(conn)
            if self._failing:
                self._failing = False
                logger.warning("modelforge: usage log %s is writable again", self.path)
        except (sqlite3.Error, OSError, UsageLogError) as exc:
            self.errors += 1
            self._close_db()
            if not self._failing:
                self._failing = True
                logger.warning(
                    "modelforge: cannot write usage log %s, set by %s (%s); holding up to %d "
                    "records in memory and retrying; your LLM calls are not affected",
                    self.path,
                    config.db_path_origin(self.path),
                    exc,
                    self.max_pending,
                )

    def _write_one_by_one(self, conn: sqlite3.Connection) -> None:
        """A batch with a row that failed: write each row alone, so that row fails alone.

        A row the table refuses (a constraint) stays pending and is retried, with one
        warning: the table may be mended. A row that cannot be bound at all is dropped.
        """
        refused: deque[dict[str, Any]] = deque()
        try:
            while self._pending:
                row = self._pending[0]
                try:
                    self._counted(insert_rows(conn, [row]), 1)
                except _UNBINDABLE as exc:
                    self.errors += 1
                    self.dropped += 1
                    config.warn_once(
                        f"unbindable:{type(exc).__name__}", f"dropped a record: {exc!r}"
                    )
                except _REFUSED as exc:
                    if _is_file_error(exc):
                        raise
                    self.errors += 1
                    refused.append(row)
                    config.warn_once(
                        f"refused:{self.path}:{exc}",
                        f"usage log {self.path} refused a record ({exc}); it is kept and retried",
                    )
                self._pending.popleft()
        finally:
            self._pending.extendleft(reversed(refused))

    def _counted(self, inserted: int, rows: int) -> None:
        self.written += inserted
        self.duplicates += rows - inserted

    def _drop_overflow(self) -> None:
        """Drop (and count) the oldest pending rows beyond `max_pending`."""
        overflow = len(self._pending) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self.dropped += overflow

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            with _no_fork_now:
                return self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_db(self.path, create=True)
            try:
                import_side_file(self._db, self.path)
            except (sqlite3.Error, OSError, ValueError) as exc:
                # Left in place: a later writer, or a newer model-forge, may import it.
                config.warn_once(
                    f"side:{self.path}", f"cannot import {side_file(self.path)}: {exc}"
                )
            apply_retention(self._db)
        return self._db

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


# Values sqlite3 cannot bind: a record we built wrong, which no retry will mend.
_UNBINDABLE = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    TypeError,
    ValueError,
)
# Rows the table refuses (a constraint, arithmetic in a trigger): the table may be mended.
_REFUSED = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.OperationalError)


def _is_file_error(exc: BaseException) -> bool:
    """An OperationalError about the file (locked, read-only, full), not about a row."""
    return isinstance(exc, sqlite3.OperationalError) and "overflow" not in str(exc)


# --- child processes ----------------------------------------------------------------

_forked = False
# Held by a writer while it uses SQLite, and by `os.fork` around the fork. SQLite keeps
# its lock bookkeeping per process: a child forked mid-transaction believes a lock is
# held that nobody will release, and its own writes wait on it for ever.
_no_fork_now = threading.RLock()
# Logs a child inherits: never closed (closing a copied connection can release locks
# or remove a WAL the parent still uses), only forgotten.
_inherited: list[UsageLog] = []


def _in_child_process() -> bool:
    """Whether this is a forked or multiprocessing child, whose exit skips `atexit`."""
    if _forked:
        return True
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp.parent_process() is not None


# --- the process-wide registry ------------------------------------------------------

_logs: dict[Path, UsageLog] = {}
_logs_lock = threading.Lock()


def get_log(path: Path | str | None = None) -> UsageLog:
    """The shared `UsageLog` for a path (default: `MODELFORGE_DB` or the data dir)."""
    resolved = Path(path).expanduser() if path else config.default_db_path()
    key = resolved.absolute()
    with _logs_lock:
        log = _logs.get(key)
        if log is None:
            log = _logs[key] = UsageLog(resolved)
    return log


def flush(timeout: float | None = 10.0) -> bool:
    """Write every queued record in every open log; False if any is not written."""
    return all([log.flush(timeout) for log in list(_logs.values())])


def stats() -> dict[str, int]:
    """Totals over every log this process has used: written, dropped, errors…"""
    from modelforge import recorder

    totals = {"written": 0, "duplicates": 0, "dropped": 0, "errors": 0, "pending": 0, "saved": 0}
    for log in list(_logs.values()):
        s = log.stats()
        for key in totals:
            totals[key] += getattr(s, key)
    totals["handler_errors"] = recorder.handler_errors()
    totals["anomalies"] = recorder.anomaly_count()
    return totals


def close_all(timeout: float | None = 10.0) -> None:
    """Write what every log has queued (within `timeout`) and stop their writers."""
    with _logs_lock:
        logs = list(_logs.values())
        _logs.clear()
    deadline = None if timeout is None else time.monotonic() + timeout
    for log in logs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        log.close(left)


def _at_exit() -> None:
    """Give the writers `EXIT_WAIT` seconds, then save what is left, saying so."""
    logs = list(_logs.values())
    close_all(EXIT_WAIT)
    for log in logs:
        left = log.stats().pending
        if not left:
            continue
        try:
            left = log.save_unwritten()
            print(
                f"modelforge: {left} records could not be written to {log.path} within "
                f"{EXIT_WAIT:g} s; saved to {side_file(log.path)} for the next run to import",
                file=sys.stderr,
            )
        except OSError as exc:
            print(
                f"modelforge: {left} records could not be written to {log.path} and are "
                f"lost ({exc})",
                file=sys.stderr,
            )


def _before_fork() -> None:
    _no_fork_now.acquire()


def _after_fork_in_parent() -> None:
    _no_fork_now.release()


def _after_fork_in_child() -> None:
    # The parent's writer threads do not exist in the child; start afresh.
    global _logs_lock, _held_fds_lock, _file_lock_mutex, _forked, _no_fork_now
    _forked = True
    _no_fork_now = threading.RLock()
    _inherited.extend(_logs.values())
    _logs.clear()
    # An inherited descriptor shares its flock with the parent: open our own (the
    # inherited ones stay open, for the reason in _held_fd).
    _held_fds.clear()
    _held_fds_lock = threading.Lock()
    _file_lock_mutex = threading.Lock()
    _logs_lock = threading.Lock()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
