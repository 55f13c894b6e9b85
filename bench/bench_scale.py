"""Scale: ingest rate, handler overhead under threads, and memory over 1M calls.

    python bench/bench_scale.py [--calls N] [--memory-calls N]

Prints one table. Rows:
- ingest: records/s through the background writer (submit → flush), against the peer,
  a plain sqlite-utils `table.insert(row)` per record (target ≥ 100,000 rows/s batched);
  and the writer's rate while the submitting thread keeps the GIL busy;
- what binding and SQLite do with such rows, built before the clock starts and inserted
  as the writer inserts them: into our log, and into a bare table with the same columns
  and only the unique run_id index (no report index, no hourly rollup), which shows how
  much of the gap the schema itself costs;
- each half of the writer's work without the other: the Python that turns records into
  bound rows, storing nothing; and SQLite copying the rows into our log with no Python
  per row. A writer does both, so neither rate is reachable end to end;
- handler overhead per call with 8 threads calling the LangChain handler at once;
- RSS growth over 1,000,000 calls through the handler (target < 20 MB).
The report timings on a 1M-row log are in bench/bench_report.py.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import psutil
import sqlite_utils
from _isolated import HOME as _home
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.utils.uuid import uuid7

import modelforge
from modelforge.langchain import UsageCallbackHandler
from modelforge.pricing.cost import price
from modelforge.records import CallRecord
from modelforge.store import (
    _ROLLUP_BATCH,
    CHUNK_ROWS,
    COLUMNS,
    NULL,
    NULLABLE,
    UsageLog,
    _param,
    fields_row,
    insert_chunks,
    insert_rows,
    open_db,
    record_fields,
    record_row,
)
from modelforge.usage import Usage

USAGE = Usage(input_tokens=1200, cache_read_tokens=1000, output_tokens=300, reasoning_tokens=100)
RESULT = LLMResult(
    generations=[
        [
            ChatGeneration(
                message=AIMessage(
                    content="ok",
                    usage_metadata={
                        "input_tokens": 1200,
                        "output_tokens": 300,
                        "total_tokens": 1500,
                        "input_token_details": {"cache_read": 1000},
                        "output_token_details": {"reasoning": 100},
                    },
                    response_metadata={"model_name": "gpt-4o"},
                )
            )
        ]
    ]
)
METADATA = {"ls_provider": "openai", "ls_model_name": "gpt-4o", "user_id": "u-1"}
MESSAGES = [[HumanMessage("how are you?")]]


def _records(n: int, new_id: Callable[[], uuid.UUID] = uuid7) -> list[CallRecord]:
    """LangChain makes time-ordered uuid7 run ids; LlamaIndex span ids hold a random uuid4."""
    cost = price("gpt-4o", USAGE, "openai")
    return [
        CallRecord(
            run_id=str(new_id()),
            usage=USAGE,
            cost=cost,
            provider="openai",
            model="gpt-4o",
            tags=("bench",),
            attrs={"user_id": "u-1"},
        )
        for _ in range(n)
    ]


def ingest_ours(n: int, new_id: Callable[[], uuid.UUID]) -> float:
    log = UsageLog(Path(_home) / f"ingest-{new_id.__name__}.db")
    log.flush()
    records = _records(n, new_id)
    started = time.perf_counter()
    for record in records:
        log.submit(record)
    assert log.flush(timeout=600)
    elapsed = time.perf_counter() - started
    assert log.stats().written == n
    log.close()
    return n / elapsed


def ingest_beside_busy_caller(n: int) -> float:
    """Rows/s through the writer while the submitting thread keeps the GIL busy in pure
    Python, as a CPU-bound program does: every GIL hand-back costs the writer up to 5 ms."""
    log = UsageLog(Path(_home) / "busy.db")
    log.flush()
    done = threading.Event()
    records = _records(n)
    started = time.perf_counter()
    for record in records:
        log.submit(record)
    threading.Thread(target=lambda: (log.flush(timeout=600), done.set())).start()
    spins = 0
    while not done.is_set():
        spins += 1
    elapsed = time.perf_counter() - started
    assert log.stats().written == n
    log.close()
    return n / elapsed


def sqlite_ceiling(n: int) -> tuple[float, float]:
    """(rows/s into our log, rows/s into a bare table): rows built before the clock starts,
    5,000 per transaction, in statements of CHUNK_ROWS rows, as the writer does."""
    rows = [record_row(r) for r in _records(n)]
    ours = open_db(Path(_home) / "ceiling-ours.db")
    started = time.perf_counter()
    for at in range(0, n, 5_000):
        insert_rows(ours, rows[at : at + 5_000])
    ours_rate = n / (time.perf_counter() - started)
    ours.close()

    bare = sqlite3.connect(Path(_home) / "ceiling-bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode = WAL")
    bare.execute("PRAGMA synchronous = NORMAL")
    bare.execute(f"CREATE TABLE calls (id INTEGER PRIMARY KEY, {', '.join(COLUMNS)})")
    bare.execute("CREATE UNIQUE INDEX idx_run_id ON calls (run_id)")
    # The writer's own statements: the bare table has the same name and columns.
    started = time.perf_counter()
    for at in range(0, n, 5_000):
        bare.execute("BEGIN")
        insert_chunks(bare, rows[at : at + 5_000])
        bare.execute("COMMIT")
    bare_rate = n / (time.perf_counter() - started)
    bare.close()
    return ours_rate, bare_rate


def parts_alone(n: int) -> tuple[float, float]:
    """(rows/s of the writer's Python alone, rows/s of SQLite alone): how far apart the
    two halves of ingest are from 100,000 rows/s, each without the other.

    Python alone: `record_fields` (the caller's side), `fields_row` and binding, all under
    the GIL, with a statement that stores nothing. SQLite alone: the same rows copied
    into our log by `INSERT … SELECT` from an in-memory table, plus the rollup, so no
    Python runs per row.
    """
    records = _records(n)
    conn = sqlite3.connect(":memory:")
    one_row = f"({', '.join('?' * len(COLUMNS))})"
    stores_nothing = f"SELECT count(*) FROM (VALUES {', '.join([one_row] * CHUNK_ROWS)})"
    full = n - n % CHUNK_ROWS
    started = time.perf_counter()
    for at in range(0, full, CHUNK_ROWS):
        rows = [fields_row(record_fields(r)) for r in records[at : at + CHUNK_ROWS]]
        conn.execute(stores_nothing, tuple(chain.from_iterable(rows)))
    python_rate = full / (time.perf_counter() - started)
    conn.close()

    log = open_db(Path(_home) / "sqlite-alone.db")
    log.execute("ATTACH ':memory:' AS staged")
    log.execute(f"CREATE TABLE staged.calls ({', '.join(COLUMNS)})")
    log.executemany(f"INSERT INTO staged.calls VALUES {one_row}", map(record_row, records))
    columns = ", ".join(COLUMNS)
    # The writer's own value expressions (NULL markers back to NULL), reading the staged
    # column where the writer binds a parameter.
    values = ", ".join(_param(c).replace("?", c) for c in COLUMNS)
    copy = (
        f"INSERT OR IGNORE INTO main.calls ({columns}) "
        f"SELECT {values} FROM staged.calls WHERE rowid > ? AND rowid <= ?"
    )
    started = time.perf_counter()
    for at in range(0, n, 5_000):
        log.execute("BEGIN IMMEDIATE")
        cursor = log.execute(copy, (at, at + 5_000))
        log.execute(_ROLLUP_BATCH, (cursor.lastrowid - cursor.rowcount,))
        log.execute("COMMIT")
    sqlite_rate = n / (time.perf_counter() - started)
    assert log.execute("SELECT count(*) FROM main.calls").fetchone()[0] == n
    log.close()
    return python_rate, sqlite_rate


def ingest_peer(n: int) -> float:
    """The peer: sqlite-utils inserting one dict per record, the obvious way."""
    db = sqlite_utils.Database(Path(_home) / "peer.db")
    rows = [
        {c: None if c in NULLABLE and v == NULL else v
         for c, v in zip(COLUMNS, record_row(r), strict=True)}
        for r in _records(n)
    ]  # fmt: skip
    table = db["calls"]
    table.insert(rows[0], pk="id", alter=True)
    started = time.perf_counter()
    for row in rows[1:]:
        table.insert(row)
    return (n - 1) / (time.perf_counter() - started)


def threaded_overhead(threads: int, calls_per_thread: int) -> tuple[float, float]:
    """(µs of handler work per call, calls/s overall) with `threads` threads at once."""
    handler = UsageCallbackHandler(db=Path(_home) / "threads.db")

    def work() -> None:
        for _ in range(calls_per_thread):
            run_id = uuid.uuid4()
            handler.on_chat_model_start({}, MESSAGES, run_id=run_id, metadata=METADATA)
            handler.on_llm_end(RESULT, run_id=run_id)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    handled = time.perf_counter() - started
    assert modelforge.flush(timeout=600)
    total = threads * calls_per_thread
    assert handler.errors == 0
    return handled / total * 1e6, total / (time.perf_counter() - started)


def memory_growth(calls: int) -> tuple[float, float]:
    """(RSS growth in MB over `calls` handler calls after a warm-up, seconds taken)."""
    handler = UsageCallbackHandler(db=Path(_home) / "memory.db")
    process = psutil.Process()

    def run(n: int) -> None:
        for _ in range(n):
            run_id = uuid.uuid4()
            handler.on_chat_model_start({}, MESSAGES, run_id=run_id, metadata=METADATA)
            handler.on_llm_end(RESULT, run_id=run_id)

    run(50_000)  # warm caches, the writer, SQLite's page cache
    assert modelforge.flush(timeout=600)
    before = process.memory_info().rss
    started = time.perf_counter()
    run(calls)
    assert modelforge.flush(timeout=600)
    taken = time.perf_counter() - started
    return (process.memory_info().rss - before) / 1e6, taken


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--memory-calls", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    ours = ingest_ours(args.calls, uuid7)
    ours_random = ingest_ours(args.calls, uuid.uuid4)
    busy = ingest_beside_busy_caller(min(args.calls, 20_000))
    ceiling_ours, ceiling_bare = sqlite_ceiling(args.calls)
    python_alone, sqlite_alone = parts_alone(args.calls)
    peer = ingest_peer(min(args.calls, 20_000))
    per_call_8, rate_8 = threaded_overhead(8, args.calls // 8)
    per_call_1, rate_1 = threaded_overhead(1, args.calls // 8)
    grew, taken = memory_growth(args.memory_calls)
    print()
    print(f"{'measure':<52}{'value':>16}  target")
    print(f"{'ingest: background writer, batched (rows/s)':<52}{ours:>16,.0f}  >= 100,000")
    print(f"{'  the same, random uuid4 run ids (rows/s)':<52}{ours_random:>16,.0f}")
    print(f"{'  the same, beside a CPU-bound caller (rows/s)':<52}{busy:>16,.0f}")
    print(f"{'  rows built beforehand: binding + SQLite (rows/s)':<52}{ceiling_ours:>16,.0f}")
    print(f"{'  the same, bare table, run_id index (rows/s)':<52}{ceiling_bare:>16,.0f}")
    print(f"{'  Python alone: records to bound rows (rows/s)':<52}{python_alone:>16,.0f}")
    print(f"{'  SQLite alone: no Python per row (rows/s)':<52}{sqlite_alone:>16,.0f}")
    print(f"{'ingest: sqlite-utils insert per row, peer (rows/s)':<52}{peer:>16,.0f}")
    print(f"{'  ours / peer':<52}{ours / peer:>15.1f}x")
    print(f"{'handler, 1 thread: µs per call (start + end)':<52}{per_call_1:>16.1f}")
    print(f"{'handler, 8 threads: µs per call (start + end)':<52}{per_call_8:>16.1f}")
    print(f"{'handler, 8 threads: calls/s incl. writing':<52}{rate_8:>16,.0f}")
    print(f"{'handler, 1 thread: calls/s incl. writing':<52}{rate_1:>16,.0f}")
    label = f"RSS growth over {args.memory_calls:,} calls (MB)"
    print(f"{label:<52}{grew:>16.1f}  < 20 MB  ({taken:.0f} s)")


if __name__ == "__main__":
    main()
