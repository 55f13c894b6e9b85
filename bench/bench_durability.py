"""What a SIGKILL can lose, and how soon a new log's first record reaches the file.

A child process records a call every millisecond and reports each one on stdout as it
returns; the parent kills it with SIGKILL at a random moment and reads the log. A lost
record is one the child reported but the log lacks; its age is how long before the kill
its call returned. The docs promise the log loses at most the calls of the last 200 ms.

    python bench/bench_durability.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMISED_LOSS_S = 0.2
PROMISED_FIRST_RECORD_S = 1.0

CHILD = """
import sys, time
from modelforge import CallRecord, Usage, price, recorder
usage = Usage(input_tokens=1000, output_tokens=100)
cost = price("gpt-4o", usage)
i = 0
while True:
    recorder.deliver(CallRecord(run_id=f"r{i}", usage=usage, cost=cost), db=sys.argv[1])
    print(f"r{i} {time.monotonic()}", flush=True)
    i += 1
    time.sleep(0.001)
"""

FIRST = """
import sys, time
from modelforge import CallRecord, Usage, price, recorder
usage = Usage(input_tokens=1000, output_tokens=100)
recorder.deliver(CallRecord(run_id="first", usage=usage, cost=price("gpt-4o", usage)),
                 db=sys.argv[1])
print(time.monotonic(), flush=True)
time.sleep(5)
"""


def one_kill(path: Path) -> tuple[int, int, float]:
    """(calls returned, calls lost, age in seconds of the oldest lost call)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    returned: dict[str, float] = {}
    deadline = time.monotonic() + random.uniform(1.0, 2.0)
    for line in child.stdout:
        run_id, at = line.split()
        returned[run_id] = float(at)
        if time.monotonic() >= deadline:
            break
    killed_at = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    conn = sqlite3.connect(path)
    written = {run_id for (run_id,) in conn.execute("SELECT run_id FROM calls")}
    conn.close()
    lost = [at for run_id, at in returned.items() if run_id not in written]
    return len(returned), len(lost), (killed_at - min(lost)) if lost else 0.0


def first_record_latency(path: Path) -> float:
    """Seconds from a new log's first call returning to its row being in the file."""
    child = subprocess.Popen(
        [sys.executable, "-c", FIRST, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    returned = float(child.stdout.readline())
    try:
        while time.monotonic() - returned < 10:
            if path.exists():
                try:
                    conn = sqlite3.connect(path)
                    found = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
                    conn.close()
                    if found:
                        return time.monotonic() - returned
                except sqlite3.Error:
                    pass
            time.sleep(0.005)
        return float("inf")
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        worst_age, total_lost, total = 0.0, 0, 0
        for n in range(args.rounds):
            calls, lost, age = one_kill(Path(tmp) / f"kill{n}.db")
            total, total_lost, worst_age = total + calls, total_lost + lost, max(worst_age, age)
        latencies = sorted(first_record_latency(Path(tmp) / f"new{n}.db") for n in range(5))
    print(
        f"SIGKILL, {args.rounds} rounds: {total_lost} of {total} returned calls lost; "
        f"oldest lost call returned {worst_age * 1000:.0f} ms before the kill"
    )
    verdict = "ok" if worst_age <= PROMISED_LOSS_S else "missed"
    print(
        f"{verdict}: a SIGKILL loses only calls of the last {PROMISED_LOSS_S * 1000:.0f} ms "
        f"(worst {worst_age * 1000:.0f} ms)"
    )
    worst = latencies[-1]
    verdict = "ok" if worst <= PROMISED_FIRST_RECORD_S else "missed"
    print(
        f"{verdict}: a new log's first record is in the file within "
        f"{PROMISED_FIRST_RECORD_S:g} s (5 runs: "
        f"{', '.join(f'{s * 1000:.0f}' for s in latencies)} ms)"
    )


if __name__ == "__main__":
    main()
