"""Report speed on a 1,000,000-row usage log (targets: ≤ 1.0 s per report, export ≤ 100 MB RSS).

    python bench/bench_report.py [--rows N] [--db PATH]

Times the real `modelforge` command as a subprocess (interpreter start included) and
the SQL aggregation alone, then `usage export` of every row with its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
]
AGENTS = ["writer", "reviewer", "planner", "router", None]


def build(path: Path, rows: int) -> float:
    started = time.perf_counter()
    db = open_db(path)
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    templates = []
    for model, provider in MODELS:
        usage = Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=300)
        templates.append((model, provider, usage, price(model, usage, provider)))
    batch = []
    for i in range(rows):
        model, provider, usage, cost = templates[i % len(templates)]
        record = CallRecord(
            run_id=f"bench-{i}",
            usage=usage,
            cost=cost,
            ts=format_ts(now - timedelta(seconds=rng.randrange(60 * 86400))),
            provider=provider,
            model=model,
            agent=AGENTS[i % len(AGENTS)],
            tags=("bench",),
            attrs={"project": f"p{i % 7}"},
        )
        batch.append(record_row(record))
        if len(batch) == 50_000:
            insert_rows(db, batch)
            batch.clear()
    if batch:
        insert_rows(db, batch)
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - started


def timed_command(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `modelforge …` subprocess.

    The peak is sampled from the child itself: RUSAGE_CHILDREN would also count the
    pages a forked child shares with this (large) benchmark process before it execs.
    """
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "modelforge", *args],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    watched = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"modelforge {' '.join(args)} failed with {child.returncode}")
    return elapsed, peak // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="modelforge-bench-"))
    path = args.db or workdir / "usage.db"
    if not path.exists():
        print(f"building {args.rows:,} rows … {build(path, args.rows):.1f} s")
    conn = open_db(path, create=False)
    rows = conn.execute("SELECT count(*) FROM calls").fetchone()[0]

    results = []
    for label, group, since in (
        ("usage --by model --since 30d", ["model"], "30d"),
        ("usage --by day", ["day"], None),
        ("usage --by day --by model", ["day", "model"], None),
    ):
        filters = report.Filters(since=report.parse_when(since) if since else None)
        started = time.perf_counter()
        report.usage_report(conn, group, filters)
        sql_s = time.perf_counter() - started
        cli_args = ["usage", "--db", str(path), "--json"]
        for g in group:
            cli_args += ["--by", g]
        if since:
            cli_args += ["--since", since]
        cli_s, _ = timed_command(cli_args)
        results.append((label, sql_s, cli_s))

    export_target = workdir / "export.jsonl"
    export_s, export_kib = timed_command(
        ["usage", "export", "--db", str(path), "--format", "jsonl", "-o", str(export_target)]
    )
    exported = sum(1 for _ in export_target.open())

    print(f"\nlog: {path} ({rows:,} rows, {path.stat().st_size / 1e6:.0f} MB)")
    print(f"{'command':<32} {'SQL only':>10} {'whole command':>14} {'target':>8}")
    for label, sql_s, cli_s in results:
        print(f"{label:<32} {sql_s:>9.3f}s {cli_s:>13.3f}s {'≤ 1.0s':>8}")
    print(
        f"{'usage export --format jsonl':<32} {'':>10} {export_s:>13.3f}s "
        f"  peak RSS {export_kib / 1024:.0f} MB (target ≤ 100 MB), {exported:,} rows written"
    )
    print()
    for label, _, cli_s in results:
        verdict = "ok" if cli_s <= 1.0 else "missed"
        print(f"{verdict}: modelforge {label} on {rows:,} rows in {cli_s:.3f} s (target ≤ 1 s)")
    verdict = "ok" if export_kib <= 100 * 1024 else "missed"
    print(f"{verdict}: usage export peak RSS {export_kib / 1024:.0f} MB (target ≤ 100 MB)")


if __name__ == "__main__":
    main()
