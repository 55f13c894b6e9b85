"""Scale: how fast the log ingests records, beside sqlite-utils, and its memory over many calls.

    python bench/bench_scale.py [--calls N] [--memory-calls N]

- ingest: records/s through the background writer (submit, then flush), against the
  peer: sqlite-utils `insert_all` of the same rows in batches of 5,000 into a WAL file
  with the same schema (our migrations), which is what a careful hand-written logger does;
- RSS growth over `--memory-calls` records through `recorder.deliver`.
There is no speed target here now (a model call takes 100 ms or more); the figures are
printed with the peer's from the same run, and the verdict lines say `info`.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import tempfile
import time
from pathlib import Path

import psutil
import sqlite_utils

from modelforge import CallRecord, Usage, migrations, price, recorder, store


def _records(n: int, prefix: str) -> list[CallRecord]:
    usage = Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=300)
    cost = price("gpt-4o", usage)
    return [
        CallRecord(run_id=f"{prefix}-{i}", usage=usage, cost=cost, agent="bench", tags=("t",))
        for i in range(n)
    ]


def ours(path: Path, records: list[CallRecord]) -> float:
    """Records/s through the writer, file creation and migration excluded."""
    log = store.UsageLog(path)
    log.submit(_records(1, "warm")[0])
    assert log.flush(timeout=60)
    started = time.perf_counter()
    for record in records:
        log.submit(record)
    assert log.flush(timeout=600)
    elapsed = time.perf_counter() - started
    log.close()
    return len(records) / elapsed


def peer(path: Path, records: list[CallRecord]) -> float:
    """Records/s for sqlite-utils insert_all in batches, rows built inside the clock."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    migrations.apply(conn)
    db = sqlite_utils.Database(conn)
    started = time.perf_counter()
    for at in range(0, len(records), 5_000):
        rows = [store.record_row(r) for r in records[at : at + 5_000]]
        with db.conn:
            db["calls"].insert_all(rows, batch_size=5_000)
    elapsed = time.perf_counter() - started
    conn.close()
    return len(records) / elapsed


def memory_growth(path: Path, calls: int) -> float:
    """MB of RSS growth over `calls` records delivered to one log and written."""
    usage = Usage(input_tokens=1000, output_tokens=100)
    cost = price("gpt-4o", usage)
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    for i in range(calls):
        recorder.deliver(CallRecord(run_id=f"m-{i}", usage=usage, cost=cost), db=path)
    assert store.flush(timeout=600)
    gc.collect()
    return (process.memory_info().rss - before) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--memory-calls", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = _records(args.calls, "r")
        ours_rate = ours(Path(tmp) / "ours.db", records)
        peer_rate = peer(Path(tmp) / "peer.db", records)
        growth = memory_growth(Path(tmp) / "memory.db", args.memory_calls)
    print(
        f"ingest, {args.calls:,} records: ours {ours_rate:,.0f} rows/s; "
        f"sqlite-utils insert_all in batches (WAL) {peer_rate:,.0f} rows/s "
        f"({ours_rate / peer_rate:.2f}x)"
    )
    print(f"info: ingest {ours_rate:,.0f} rows/s, {ours_rate / peer_rate:.2f}x the peer's")
    print(f"info: RSS growth over {args.memory_calls:,} delivered records: {growth:.1f} MB")


if __name__ == "__main__":
    main()
