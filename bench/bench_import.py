"""`import modelforge`: how long it takes, and that it imports no framework.

    python bench/bench_import.py

Target: at most 150 ms of wall time for the import (interpreter start excluded), with
neither langchain nor llama_index (nor opentelemetry) imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

TARGET_MS = 150.0
CODE = """
import json, sys, time
started = time.perf_counter()
import modelforge
elapsed = time.perf_counter() - started
frameworks = sorted({m.split(".")[0] for m in sys.modules}
                    & {"langchain_core", "langchain", "llama_index", "opentelemetry"})
print(json.dumps({"ms": elapsed * 1000, "frameworks": frameworks}))
"""


def main() -> None:
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", CODE], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(10)
    ]
    best = min(r["ms"] for r in runs)
    median = sorted(r["ms"] for r in runs)[len(runs) // 2]
    frameworks = sorted({f for r in runs for f in r["frameworks"]})
    print(
        f"import modelforge: best {best:.1f} ms, median {median:.1f} ms of 10; "
        f"frameworks imported: {frameworks or 'none'}"
    )
    verdict = "ok" if median <= TARGET_MS and not frameworks else "missed"
    print(
        f"{verdict}: import modelforge in at most {TARGET_MS:.0f} ms (median {median:.1f} ms), "
        "importing no framework"
    )


if __name__ == "__main__":
    main()
