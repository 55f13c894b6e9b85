"""The least a batched background writer does, for the benches' "floor" set-ups."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import _isolated  # noqa: F401  (before modelforge reads the env)

from modelforge.store import BATCH_WINDOW, COLUMNS, fields_row, insert_chunks


class BareWriter:
    """Every `BATCH_WINDOW` (50 ms, as ours), or at once on `drain()`, the queued rows
    go into a table with only the unique run_id index a log needs to count a call once
    (no report indexes, no hourly rollup), in one transaction of the writer's own
    multi-row INSERTs (`store.insert_chunks`: a few statement sizes, each prepared once;
    `executemany` would release the GIL once per row and wait for it again each time,
    so a busy caller would starve it). Callers append `record_fields` tuples to
    `queued`, as our writer queues them: they keep the garbage collector's work down."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queued: list[tuple[Any, ...] | threading.Event] = []
        self.written = 0
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="bare-writer", daemon=True).start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Same name and columns as the log's table, so the writer's statements fit it.
        conn.execute(f"CREATE TABLE calls (id INTEGER PRIMARY KEY, {', '.join(COLUMNS)})")
        conn.execute("CREATE UNIQUE INDEX idx_run_id ON calls (run_id)")
        while True:
            self._wake.wait(BATCH_WINDOW)
            self._wake.clear()
            batch = self.queued[:]
            # Only what was copied: the caller may have appended meanwhile.
            del self.queued[: len(batch)]
            rows = [fields for fields in batch if type(fields) is tuple]
            if rows:
                conn.execute("BEGIN")
                insert_chunks(conn, [fields_row(fields) for fields in rows])
                conn.execute("COMMIT")
                self.written += len(rows)
            for marker in batch:
                if type(marker) is threading.Event:
                    marker.set()

    def drain(self, timeout: float = 60.0) -> None:
        """Write everything queued so far now, as `modelforge.flush()` does for ours."""
        done = threading.Event()
        self.queued.append(done)  # set once every row queued before it is written
        self._wake.set()
        assert done.wait(timeout), "the bare writer stopped"
