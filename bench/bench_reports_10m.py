"""Every `usage` report that groups by time, model, provider or agent, on a 10,000,000-row
log (about a year of a busy team's calls): each at most 1 s. And `usage watch`: one
refresh at most 50 ms, and at most 5% of one core while idle.

    python bench/bench_reports_10m.py [--rows N] [--db PATH] [--idle-seconds S]

The log is built once (a few minutes; reuse it with --db) from pre-built row tuples
through the real `calls` table, so its triggers keep the hourly rollup as they do for
any writer. Each report is timed as the real `modelforge` command in a subprocess
(interpreter start included). The peer figure is the same grouping computed straight
from `calls`, without the rollup: what the report would cost without it.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import _isolated  # noqa: F401  (before modelforge reads the env)

from modelforge import report
from modelforge.pricing.cost import price
from modelforge.records import CallRecord, format_ts
from modelforge.store import insert_rows, open_db, record_row
from modelforge.usage import Usage

MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-5-mini", "openai"),
    ("claude-sonnet-4-5-20250929", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),
    ("acme-internal-llm", "acme"),  # unpriced
]
AGENTS = ["writer", "reviewer", "planner", "router", "researcher", None]
SHAPES = [
    Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=300),
    Usage(input_tokens=6000, output_tokens=900, reasoning_tokens=400),
    Usage(input_tokens=30000, cache_read_tokens=24000, cache_write_tokens=2000, output_tokens=150),
]
CHUNK = 250_000
REFRESH_TARGET_MS = 50.0
IDLE_TARGET_PCT = 5.0

# (label, args after `modelforge`, the groups the peer computes from calls or None)
REPORTS: list[tuple[str, list[str], list[str] | None]] = [
    ("usage", ["usage"], []),
    ("usage --by day", ["usage", "--by", "day"], ["day"]),
    ("usage --by week", ["usage", "--by", "week"], ["week"]),
    ("usage --by month", ["usage", "--by", "month"], ["month"]),
    ("usage --by hour --since 7d", ["usage", "--by", "hour", "--since", "7d"], ["hour"]),
    ("usage --by model", ["usage", "--by", "model"], ["model"]),
    ("usage --by provider", ["usage", "--by", "provider"], ["provider"]),
    ("usage --by agent", ["usage", "--by", "agent"], ["agent"]),
    ("usage --by served_model", ["usage", "--by", "served_model"], ["served_model"]),
    ("usage --by day --by model", ["usage", "--by", "day", "--by", "model"], ["day", "model"]),
    ("usage --by model --since 30d", ["usage", "--by", "model", "--since", "30d"], ["model"]),
    ("usage --by month --breakdown", ["usage", "--by", "month", "--breakdown"], None),
    ("usage --by day --tz Europe/Paris", ["usage", "--by", "day", "--tz", "Europe/Paris"], None),
    ("usage --by day --tz Asia/Kolkata", ["usage", "--by", "day", "--tz", "Asia/Kolkata"], None),
    ("usage forecast", ["usage", "forecast"], None),
    ("usage forecast --by model", ["usage", "forecast", "--by", "model"], None),
    ("usage forecast --by agent", ["usage", "forecast", "--by", "agent"], None),
    ("usage efficiency (last 7 days)", ["usage", "efficiency"], None),
    ("usage efficiency --by model", ["usage", "efficiency", "--by", "model"], None),
    ("usage efficiency --by agent", ["usage", "efficiency", "--by", "agent"], None),
    ("usage watch --once", ["usage", "watch", "--once"], None),
]


def templates() -> list[tuple[Any, ...]]:
    """One row tuple per model, agent and token shape, ts/run_id/trace/attrs left blank."""
    rows = []
    for model, provider in MODELS:
        for agent in AGENTS:
            for usage in SHAPES:
                record = CallRecord(
                    run_id="",
                    usage=usage,
                    cost=price(model, usage, provider),
                    provider=provider,
                    model=model,
                    agent=agent,
                    framework="langchain",
                )
                rows.append(tuple(record_row(record).values()))
    return rows


def build(path: Path, rows: int) -> float:
    started = time.perf_counter()
    db = open_db(path)
    db.execute("PRAGMA synchronous = OFF")  # a bench log: speed over durability
    columns = list(record_row(CallRecord(run_id="", usage=Usage(), cost=price("x", Usage()))))
    at = {name: columns.index(name) for name in ("ts", "run_id", "trace_id", "attrs")}
    shapes = templates()
    rng = random.Random(7)
    # A year up to the last whole hour, calls evenly spread and written in time order.
    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=365)
    step_us = 365 * 86400 * 1_000_000 // rows
    hours: dict[int, str] = {}
    sql = f"INSERT INTO calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    batch: list[tuple[Any, ...]] = []
    for i in range(rows):
        hour, rest = divmod(i * step_us, 3_600_000_000)
        prefix = hours.get(hour)
        if prefix is None:
            prefix = hours[hour] = format_ts(start + timedelta(hours=hour))[:13]
        minute, rest = divmod(rest, 60_000_000)
        second, micro = divmod(rest, 1_000_000)
        row = list(shapes[rng.randrange(len(shapes))])
        row[at["ts"]] = f"{prefix}:{minute:02d}:{second:02d}.{micro:06d}Z"
        row[at["run_id"]] = f"b{i:x}"
        row[at["trace_id"]] = f"t{i // 4:x}"
        project = f'"project":"p{i % 7}"'
        row[at["attrs"]] = (
            f'{{{project},"session":"nightly-{i // 100_000}"}}'
            if i % 1000 == 0
            else f"{{{project}}}"
        )
        batch.append(tuple(row))
        if len(batch) == CHUNK:
            _insert(db, sql, batch)
            batch.clear()
            print(f"  {i + 1:,} rows, {time.perf_counter() - started:.0f} s", end="\r", flush=True)
    if batch:
        _insert(db, sql, batch)
    db.execute("ANALYZE")
    db.close()
    print()
    return time.perf_counter() - started


def _insert(db: Any, sql: str, batch: list[tuple[Any, ...]]) -> None:
    db.execute("BEGIN")
    db.executemany(sql, batch)
    db.execute("COMMIT")


def timed_command(args: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "modelforge", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"modelforge {' '.join(args)} failed: {result.stderr.decode()}")
    return elapsed


def peer_from_calls(conn: Any, groups: list[str], since: str | None) -> float:
    """The same grouping straight from `calls` (report's raw path), without the rollup."""
    started = time.perf_counter()
    filters = report.Filters(since=report.parse_when(since) if since else None)
    report._raw_groups(conn, groups, filters, {})
    return time.perf_counter() - started


def watch_refreshes(path: Path, rounds: int = 30) -> tuple[float, list[float], float]:
    """First frame, then `rounds` refreshes (drawn) with a few new rows each, in ms; and
    the peer: the by-agent and by-model reports recomputed, as a naive live view would."""
    from rich.console import Console

    from modelforge.watch import Watcher, render

    console = Console(file=io.StringIO(), width=200)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    watcher = Watcher(path, report.Filters(since=format_ts(today)))
    started = time.perf_counter()
    console.print(render(watcher.refresh()))
    first = (time.perf_counter() - started) * 1000
    writer = open_db(path)
    shapes = templates()
    columns = list(record_row(CallRecord(run_id="", usage=Usage(), cost=price("x", Usage()))))
    times = []
    for n in range(rounds):
        new = []
        for k in range(n % 6):
            row = dict(zip(columns, shapes[(n + k) % len(shapes)]))
            row.update(
                ts=format_ts(datetime.now(timezone.utc)), run_id=f"watch-{n}-{k}-{time.time_ns()}"
            )
            new.append(row)
        insert_rows(writer, new)
        started = time.perf_counter()
        console.print(render(watcher.refresh()))
        times.append((time.perf_counter() - started) * 1000)
    writer.close()
    conn = open_db(path, create=False)
    started = time.perf_counter()
    filters = report.Filters(since=format_ts(today))
    report.usage_report(conn, ["agent"], filters)
    report.usage_report(conn, ["model"], filters)
    peer = (time.perf_counter() - started) * 1000
    conn.close()
    return first, times, peer


def idle_cpu(path: Path, seconds: float) -> float:
    """Percent of one core `usage watch` uses over `seconds` once it is up, drawing to a
    terminal (a pseudo-terminal here, read and discarded) as it would for a person."""
    import pty
    import threading

    import psutil

    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "modelforge", "usage", "watch", "--db", str(path)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "160", "LINES": "60"},
    )
    os.close(slave)

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        process = psutil.Process(child.pid)
        time.sleep(3.0)  # start-up and the first frame
        before = process.cpu_times()
        started = time.perf_counter()
        time.sleep(seconds)
        after = process.cpu_times()
        wall = time.perf_counter() - started
    finally:
        child.terminate()
        child.wait()
        os.close(master)
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    path = args.db or Path(tempfile.mkdtemp(prefix="modelforge-bench-")) / "usage.db"
    if not path.exists():
        print(f"building {args.rows:,} rows in {path} …")
        print(f"built in {build(path, args.rows):.0f} s")
    conn = open_db(path, create=False)
    rows = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    print(f"log: {path} ({rows:,} rows, {path.stat().st_size / 1e9:.1f} GB)\n")

    results = []
    for label, cli_args, peer_groups in REPORTS:
        output = [] if "watch" in cli_args else ["--json"]
        ours = timed_command([*cli_args, "--db", str(path), *output])
        since = cli_args[cli_args.index("--since") + 1] if "--since" in cli_args else None
        peer = peer_from_calls(conn, peer_groups, since) if peer_groups is not None else None
        results.append((label, ours, peer))
        peer_text = f"{peer:7.2f} s" if peer is not None else "      —"
        print(f"{label:<36} {ours:7.3f} s   from calls: {peer_text}", flush=True)
    conn.close()

    first, refreshes, naive = watch_refreshes(path)
    idle = idle_cpu(path, args.idle_seconds)

    print()
    for label, ours, peer in results:
        verdict = "ok" if ours <= 1.0 else "missed"
        peer_text = f"; the same from calls {peer:.2f} s" if peer is not None else ""
        print(
            f"{verdict}: modelforge {label} on {rows:,} rows in {ours:.3f} s "
            f"(target ≤ 1 s{peer_text})"
        )
    worst = max(refreshes)
    verdict = "ok" if worst <= REFRESH_TARGET_MS else "missed"
    print(
        f"{verdict}: usage watch refresh with new rows, drawn: median "
        f"{statistics.median(refreshes):.1f} ms, worst {worst:.1f} ms of {len(refreshes)} "
        f"(target ≤ {REFRESH_TARGET_MS:.0f} ms; first frame {first:.0f} ms; a naive view "
        f"recomputing its two reports: {naive:.0f} ms a refresh)"
    )
    verdict = "ok" if idle <= IDLE_TARGET_PCT else "missed"
    print(
        f"{verdict}: usage watch idle on {rows:,} rows: {idle:.1f}% of one core over "
        f"{args.idle_seconds:.0f} s (target ≤ {IDLE_TARGET_PCT:.0f}%)"
    )


if __name__ == "__main__":
    main()
