"""The local SQLite usage log and its background writer.

Callers only put records on a queue. A daemon thread writes them in batches, at most
`BATCH_WINDOW` seconds after they arrive, and everything queued is written at
interpreter exit. When
the file cannot be written (read-only, full disk, corrupted), records wait in memory up
to `MAX_PENDING`, older ones are then dropped and counted, and writing resumes as soon
as the file is usable again. One warning is logged, never one per call.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import Any

from modelforge import config
from modelforge.errors import UsageLogError
from modelforge.records import CallRecord
from modelforge.schema import (
    COST_PART_COLUMNS,
    MIGRATION_NAMES,
    MIGRATIONS_TABLE,
    TOKEN_COLUMNS,
    rollup_batch_sql,
)

logger = logging.getLogger("modelforge")

# How long the writer lets a burst of records pile up before one transaction writes
# them all: waking per record would take the GIL from the callers thousands of times a
# second. Well inside the 200 ms the docs promise; flush() and close() cut it short.
BATCH_WINDOW = 0.05
BATCH_SIZE = 5_000
MAX_PENDING = 100_000
# Records queued for the writer beyond this make `submit` wait (up to MAX_WAIT seconds)
# for the writer to catch up: a program making calls faster than they can be written
# is slowed a little instead of growing memory without bound or losing records.
MAX_QUEUED = 5_000
MAX_WAIT = 1.0
BUSY_TIMEOUT_MS = 30_000
RETRY_DELAY = 1.0

COLUMNS = (
    "ts",
    "run_id",
    "parent_run_id",
    "trace_id",
    "framework",
    "operation",
    "provider",
    "model",
    "response_model",
    "catalog_model",
    *TOKEN_COLUMNS,
    "cost_usd",
    "cost_pusd",
    *COST_PART_COLUMNS,
    "priced",
    "price_source",
    "price_flags",
    "estimated",
    "estimate_method",
    "cache_hit",
    "service_tier",
    "status",
    "error_type",
    "latency_ms",
    "ttft_ms",
    "agent",
    "run_name",
    "tags",
    "attrs",
    "anomalies",
)
# Python's sqlite3 binds None through its adapter lookup, about 0.4 µs a value, and an
# empty string takes 0.14 µs, against 0.03 µs for a small int: with a dozen NULL columns
# in a typical row that was a third of the insert. So a row carries NULL as -1, which no
# nullable column holds (a text column always gets a str), and the INSERT turns it back.
NULL = -1
NULLABLE = frozenset(
    (
        "parent_run_id",
        "trace_id",
        "provider",
        "model",
        "response_model",
        "catalog_model",
        "cost_usd",
        "cost_pusd",
        *COST_PART_COLUMNS,
        "price_source",
        "price_flags",
        "estimate_method",
        "service_tier",
        "error_type",
        "latency_ms",
        "ttft_ms",
        "agent",
        "run_name",
        "tags",
        "attrs",
        "anomalies",
    )
)


def _param(column: str) -> str:
    return f"nullif(?, {NULL})" if column in NULLABLE else "?"


_INSERT = (
    f"INSERT OR IGNORE INTO calls ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(_param(c) for c in COLUMNS)})"
)
# Rows per INSERT statement. sqlite3 lets go of the GIL around every statement, and
# while a CPU-bound caller runs, taking it back waits for the switch interval (5 ms).
# So a batch takes few statements: full chunks, then the rest in one statement
# (executemany would step, and wait, once per row). Each statement size stays prepared,
# and they are large: the sizes up to 256 rows held about 13 MB, those up to 128 about
# 6.6 MB, and 128-row chunks write as fast.
CHUNK_ROWS = 128
_PICO = Decimal(10) ** 12
_INT64 = 2**63
# Errors that say a row's data is wrong, not that the file is unusable.
_BAD_ROW_ERRORS = (
    OverflowError,
    ValueError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
)
_ROLLUP_BATCH = rollup_batch_sql()
# What json.dumps(value, ensure_ascii=False) does, without building an encoder per call.
_json_text = json.JSONEncoder(ensure_ascii=False).encode


@functools.lru_cache(maxsize=4096)
def _tags_json(tags: tuple[str, ...]) -> str:
    # Calls from one chain repeat the same tags and attributes: encode each set once.
    return _json_text(tags)


@functools.lru_cache(maxsize=4096)
def _attrs_json(items: tuple[tuple[str, str], ...]) -> str:
    return _json_text(dict(items))


def money_text(amount: Decimal | None) -> str | None:
    """Exact plain-decimal text without exponent or trailing zeros ('0.0035')."""
    if amount is None:
        return None
    if not amount:  # many cost parts: skip the formatting
        return "0"
    text = str(amount)  # a quarter of format(amount, "f"), but it may use an exponent
    if "E" in text:
        text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def to_pico(amount: Decimal | None) -> int | None:
    """The amount in whole pico-dollars; None when unpriced or past SQLite's 64-bit range
    (over $9.2 million for one call: the exact text in cost_usd still holds it)."""
    if amount is None:
        return None
    pico = int((amount * _PICO).to_integral_value())
    return pico if -_INT64 <= pico < _INT64 else None


def record_fields(record: CallRecord) -> tuple[Any, ...]:
    """A record's values, unformatted, as one flat tuple: what `submit` queues.

    Queued records wait up to a batch window, and the collector counts every container
    alive meanwhile: a CallRecord brings four (itself, its Usage and that model's field
    set, its Cost), this tuple one. Tags and attributes go in as JSON text (cached per
    set), so later changes to the record's dict cannot reach the log; the rest of the
    formatting stays on the writer's side.
    """
    usage, cost = record.usage, record.cost
    return (
        record.ts,
        record.run_id,
        record.parent_run_id,
        record.trace_id,
        record.framework,
        record.operation,
        record.provider,
        record.model,
        record.response_model,
        cost.catalog_model,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
        usage.reasoning_tokens,
        usage.input_audio_tokens,
        usage.output_audio_tokens,
        usage.total_tokens,
        cost.priced,
        cost.total,
        cost.input,
        cost.cache_read,
        cost.cache_write,
        cost.output,
        cost.reasoning,
        cost.audio,
        cost.source,
        cost.flags,
        usage.estimated,
        record.estimate_method,
        usage.cache_hit,
        usage.service_tier,
        record.status,
        record.error_type,
        record.latency_ms,
        record.ttft_ms,
        record.agent,
        record.run_name,
        _tags_json(record.tags) if record.tags else None,
        _attrs_json(tuple(record.attrs.items())) if record.attrs else None,
        usage.anomalies,
    )


def record_row(record: CallRecord) -> tuple[Any, ...]:
    """The parameters of `_INSERT` for a record, in `COLUMNS` order (NULL as `NULL`)."""
    return fields_row(record_fields(record))


def fields_row(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    """The parameters of `_INSERT` for a `record_fields` tuple (None becomes `NULL`)."""
    (
        ts, run_id, parent_run_id, trace_id, framework, operation, provider, model,
        response_model, catalog_model,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
        cache_write_1h_tokens, reasoning_tokens, input_audio_tokens, output_audio_tokens,
        total_tokens,
        priced, total, cost_input, cost_cache_read, cost_cache_write, cost_output,
        cost_reasoning, cost_audio, price_source, price_flags,
        estimated, estimate_method, cache_hit, service_tier, status, error_type,
        latency, ttft, agent, run_name, tags, attrs, anomalies,
    ) = fields  # fmt: skip
    if priced:
        parts: tuple[str | int, ...] = (
            money_text(cost_input) or NULL,
            money_text(cost_cache_read) or NULL,
            money_text(cost_cache_write) or NULL,
            money_text(cost_output) or NULL,
            money_text(cost_reasoning) or NULL,
            money_text(cost_audio) or NULL,
        )
        pico = to_pico(total)
    else:
        parts = _NO_PARTS
        pico = None
    return (
        ts,
        run_id,
        parent_run_id or NULL,
        trace_id or NULL,
        framework,
        operation,
        provider or NULL,
        model or NULL,
        response_model or NULL,
        catalog_model or NULL,
        input_tokens,
        output_tokens,
        cache_read_tokens,
        cache_write_tokens,
        cache_write_1h_tokens,
        reasoning_tokens,
        input_audio_tokens,
        output_audio_tokens,
        total_tokens,
        money_text(total) or NULL,
        NULL if pico is None else pico,
        *parts,
        int(priced),
        price_source or NULL,
        json.dumps(price_flags) if price_flags else NULL,
        int(estimated),
        estimate_method or NULL,
        int(cache_hit),
        service_tier or NULL,
        status,
        error_type or NULL,
        NULL if latency is None else latency,
        NULL if ttft is None else ttft,
        agent or NULL,
        run_name or NULL,
        tags or NULL,
        attrs or NULL,
        json.dumps(anomalies) if anomalies else NULL,
    )


_NO_PARTS = (NULL,) * len(COST_PART_COLUMNS)


# --- opening the file ---------------------------------------------------------------


def open_db(path: Path | str, *, create: bool = True) -> sqlite3.Connection:
    """Open (and with `create`, make) the log: mode 0600, WAL, migrated.

    The connection is in autocommit mode; writers use `insert_rows`. Raises
    UsageLogError with a plain explanation for a missing, foreign or corrupted file.
    """
    path = Path(path)
    if not create and not path.exists():
        raise UsageLogError(f"no usage log at {path}")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file ourselves so it is private from the first byte; SQLite gives
        # its -wal and -shm files the same mode.
        _held_fd(path)
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
            isolation_level=None,
        )
    except sqlite3.Error as exc:
        raise UsageLogError(f"cannot open usage log {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        tables = _table_names(conn)
        if create:
            _refuse_foreign(tables, path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        if (create or "calls" in tables) and _needs_migration(conn, tables):
            _migrate(conn, path)
        _check_schema(conn, path)
        if create:
            _check_unique_run_id(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise UsageLogError(
                f"{path} is not a usable SQLite file ({exc}); move it aside and a new log "
                "will be created"
            ) from exc
        raise UsageLogError(f"cannot use usage log {path}: {exc}") from exc
    except UsageLogError:
        conn.close()
        raise
    return conn


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _needs_migration(conn: sqlite3.Connection, tables: set[str]) -> bool:
    if MIGRATIONS_TABLE not in tables:
        return True
    applied = {
        row[0]
        for row in conn.execute(
            f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = 'modelforge'"
        )
    }
    return not applied.issuperset(MIGRATION_NAMES)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    from sqlite_utils import Database

    from modelforge.migrations import migrations

    db = Database(conn)
    # Processes that open a new file at once would race to create the table.
    with _file_lock(path):
        if migrations.pending(db):
            migrations.apply(db)


def _refuse_foreign(tables: set[str], path: Path) -> None:
    """Only a new, empty file gets our schema: never add tables to someone else's database."""
    if "calls" in tables:
        return
    foreign = [n for n in tables if n != MIGRATIONS_TABLE and not n.startswith("sqlite_")]
    if foreign:
        raise UsageLogError(
            f"{path} is an SQLite file but not a model-forge usage log "
            f"(it has tables: {', '.join(sorted(foreign))})"
        )


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert `calls` rows (duplicate run_ids ignored) and fold them into the hourly
    rollup, in one transaction. Returns how many rows were new."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        inserted, last_new_id = insert_chunks(conn, list(rows))
        if inserted:
            # The write lock is ours and ids count up from the largest, so the new rows
            # are exactly the `inserted` ids ending at the last one.
            conn.execute(_ROLLUP_BATCH, (last_new_id - inserted,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(inserted)


def insert_chunks(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
    """INSERT OR IGNORE `rows` into `calls` in a few multi-row statements, inside the
    caller's transaction. Returns (rows that were new, the id of the last new one)."""
    inserted = last_new_id = 0
    for start, size, statement_rows in _chunks(len(rows), _rows_per_statement(conn)):
        chunk = rows[start : start + size]
        # Padding repeats the chunk's last row: the unique run_id index ignores it.
        chunk.extend([chunk[-1]] * (statement_rows - size))
        cursor = conn.execute(_insert_chunk(statement_rows), tuple(chain.from_iterable(chunk)))
        if cursor.rowcount > 0:
            inserted += cursor.rowcount
            last_new_id = cursor.lastrowid or 0
    return inserted, last_new_id


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """CHUNK_ROWS, or fewer where SQLite allows fewer parameters per statement (999 by
    default before 3.32)."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
    if getlimit is not None:
        limit = int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    else:  # pragma: no cover - Python 3.10
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return min(CHUNK_ROWS, limit // len(COLUMNS))


def _chunks(count: int, largest: int) -> Iterator[tuple[int, int, int]]:
    """(start, rows, statement rows) of the INSERTs for `count` rows: full chunks of
    `largest`, then one statement for the rest, padded up to a power of two (or to
    `largest`), so a few statement texts serve every batch size."""
    start = 0
    while count - start >= largest:
        yield start, largest, largest
        start += largest
    rest = count - start
    if rest:
        yield start, rest, min(1 << (rest - 1).bit_length(), largest)


@functools.lru_cache(maxsize=16)
def _insert_chunk(rows: int) -> str:
    """`_INSERT` with `rows` rows of values."""
    values = _INSERT.partition(" VALUES ")[2]
    return _INSERT + f", {values}" * (rows - 1)


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


_migration_lock = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive across threads (one lock) and processes (flock on the held descriptor,
    which every thread here shares, so flock alone would not exclude them)."""
    with _migration_lock:
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


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
    if not columns:
        raise UsageLogError(f"{path} is an SQLite file but not a model-forge usage log")
    missing = set(COLUMNS) - columns
    if missing:
        raise UsageLogError(
            f"{path} is not a model-forge usage log (missing columns: {', '.join(sorted(missing))})"
        )


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


def apply_retention(conn: sqlite3.Connection) -> int:
    """Delete calls older than the configured `retention_days`, if set."""
    days = config.load_settings().retention_days
    if not days:
        return 0
    from datetime import timedelta

    from modelforge.report import prune

    return prune(conn, timedelta(days=days))


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


class UsageLog:
    """One SQLite usage log file, written by a background thread."""

    def __init__(self, path: Path | str, *, max_pending: int = MAX_PENDING) -> None:
        self.path = Path(path)
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[tuple[Any, ...] | _Flush] = queue.SimpleQueue()
        self._pending: deque[tuple[Any, ...]] = deque()
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._room = threading.Event()
        self._start_lock = threading.Lock()
        self._failing = False
        self._retention_applied = False
        self.written = self.duplicates = self.dropped = self.errors = 0

    # The caller's side: cheap, never blocks on disk.
    def submit(self, record: CallRecord) -> None:
        """Queue a record. A run_id already in the log is ignored (and counted) on write:
        the unique index decides, so checking here too would only slow every call."""
        if self._thread is None:
            self._start()
        if self._queue.qsize() >= MAX_QUEUED:
            self._room.clear()
            self._wake.set()
            self._room.wait(MAX_WAIT)
        self._queue.put(record_fields(record))

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is written; False on timeout or failure."""
        if self._thread is None or not self._thread.is_alive():
            return not self._pending
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        self._wake.set()
        return marker.done.wait(timeout) and not self._pending

    def close(self, timeout: float | None = 10.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._thread is not None and self._thread.is_alive():
            marker = _Flush(threading.Event(), stop=True)
            self._queue.put(marker)
            self._wake.set()
            marker.done.wait(timeout)
            self._thread.join(timeout)

    def stats(self) -> LogStats:
        return LogStats(
            str(self.path),
            self.written,
            self.duplicates,
            self.dropped,
            self.errors,
            len(self._pending) + self._queue.qsize(),
        )

    def _start(self) -> None:
        # A new log is migrated with sqlite-utils, which imports pandas when installed,
        # which imports concurrent.futures.thread, which registers an exit hook: that
        # fails if it first happens while the interpreter exits, so do it now.
        import concurrent.futures.thread  # noqa: F401

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
            if isinstance(first, tuple) and self._queue.qsize() < BATCH_SIZE:
                self._wake.wait(BATCH_WINDOW)
            # A marker is queued before its wake-up is set, so clearing here loses none.
            self._wake.clear()
            records: list[tuple[Any, ...]] = []
            markers: list[_Flush] = []
            item: tuple[Any, ...] | _Flush | None = first
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
            try:
                self._write(records)
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

    def _write(self, records: list[tuple[Any, ...]]) -> None:
        rows = self._pending
        for fields in records:
            try:
                rows.append(fields_row(fields))
            except Exception as exc:  # a record we built wrong must not stop the writer
                self.errors += 1
                config.warn_once(f"row:{type(exc).__name__}", f"skipped a bad record: {exc!r}")
        if not rows:
            return
        try:
            try:
                inserted = insert_rows(self._connect(), rows)
            except _BAD_ROW_ERRORS:
                inserted = self._insert_one_by_one(rows)
            self.written += inserted
            self.duplicates += len(rows) - inserted
            rows.clear()
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
            self._drop_overflow()

    def _drop_overflow(self) -> None:
        """Drop (and count) the oldest pending rows beyond `max_pending`."""
        overflow = len(self._pending) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self.dropped += overflow

    def _insert_one_by_one(self, rows: deque[tuple[Any, ...]]) -> int:
        """A batch that SQLite refused for its data: write row by row, dropping (and
        counting) only the rows it refuses, so one bad record cannot block the log."""
        conn = self._connect()
        inserted = 0
        for row in list(rows):
            try:
                inserted += insert_rows(conn, [row])
            except _BAD_ROW_ERRORS as exc:
                rows.remove(row)
                self.errors += 1
                self.dropped += 1
                config.warn_once(f"bad-row:{type(exc).__name__}", f"dropped a record: {exc!r}")
        return inserted

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_db(self.path, create=True)
            if not self._retention_applied:
                self._retention_applied = True
                apply_retention(self._db)
        return self._db

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


# --- the process-wide registry ------------------------------------------------------

_logs: dict[Path, UsageLog] = {}
_logs_lock = threading.Lock()
# Absolute paths as callers passed them, to their logs: skips building paths per call.
_by_argument: dict[Path | str, UsageLog] = {}


def get_log(path: Path | str | None = None) -> UsageLog:
    """The shared `UsageLog` for a path (default: `MODELFORGE_DB` or the data dir)."""
    if path:
        log = _by_argument.get(path)
        if log is not None:
            return log
    resolved = Path(path).expanduser() if path else config.default_db_path()
    key = resolved.absolute()
    log = _logs.get(key)
    if log is None:
        with _logs_lock:
            log = _logs.get(key)
            if log is None:
                log = _logs[key] = UsageLog(resolved)
    # Only an absolute path without "~" names the same file whatever the cwd or HOME.
    if path and Path(path).is_absolute():
        if len(_by_argument) > 1024:
            _by_argument.clear()
        _by_argument[path] = log
    return log


def flush(timeout: float | None = 10.0) -> bool:
    """Write every queued record in every open log; False if any could not be written."""
    return all([log.flush(timeout) for log in list(_logs.values())])


def stats() -> dict[str, int]:
    """Totals over every log this process has used: written, dropped, errors…"""
    from modelforge import recorder

    totals = {"written": 0, "duplicates": 0, "dropped": 0, "errors": 0, "pending": 0}
    for log in list(_logs.values()):
        s = log.stats()
        for key in totals:
            totals[key] += getattr(s, key)
    totals["handler_errors"] = recorder.handler_errors()
    totals["anomalies"] = recorder.anomaly_count()
    return totals


def close_all(timeout: float | None = 10.0) -> None:
    with _logs_lock:
        logs = list(_logs.values())
        _logs.clear()
        _by_argument.clear()
    deadline = None if timeout is None else time.monotonic() + timeout
    for log in logs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        log.close(left)


def _after_fork_in_child() -> None:
    # The parent's writer threads do not exist in the child; start afresh.
    global _logs_lock, _held_fds_lock
    _logs.clear()
    _by_argument.clear()
    # An inherited descriptor shares its flock with the parent: open our own (the
    # inherited ones stay open, for the reason in _held_fd).
    _held_fds.clear()
    _held_fds_lock = threading.Lock()
    _logs_lock = threading.Lock()


atexit.register(close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
