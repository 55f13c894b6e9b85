"""Pricing speed: `price()` per call against genai-prices, table load times, import time.

Run from anywhere: `python bench/bench_pricing.py`. User dirs point at a temporary
folder, so a personal override file or models.dev cache does not skew the figures.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS_DEV = REPO.parent / "shared" / "models-dev" / "api.json"
TARGET_US = 5.0
FRAMEWORKS = ("langchain", "llama_index")

_home = tempfile.mkdtemp(prefix="modelforge-bench-")
atexit.register(shutil.rmtree, _home, True)
for _var, _sub in (("CONFIG", "config"), ("CACHE", "cache"), ("DATA", "data")):
    os.environ[f"MODELFORGE_{_var}_DIR"] = os.path.join(_home, _sub)
os.environ.pop("MODELFORGE_PRICES", None)

from modelforge import Usage, price  # noqa: E402
from modelforge.pricing.catalog import (  # noqa: E402
    Catalog,
    get_catalog,
    load_json_text,
    parse_api_json,
    set_catalog,
)


def per_call_us(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best of `repeat` runs, in microseconds per call (the least disturbed run)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def bundled_load() -> None:
    set_catalog(None)
    get_catalog()


def models_dev_load() -> None:
    entries, _ = parse_api_json(load_json_text(MODELS_DEV.read_bytes(), "api.json"), "api.json")
    Catalog(entries)


def import_time() -> tuple[int, list[str]]:
    """`-X importtime` cumulative µs for `import modelforge`, and any framework it loaded."""
    code = (
        "import json, sys, modelforge; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({FRAMEWORKS!r}))))"
    )
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    # "import time: self [us] | cumulative | imported package"; the last line is modelforge.
    last = [line for line in run.stderr.splitlines() if line.startswith("import time:")][-1]
    match = re.match(r"import time:\s*\d+\s*\|\s*(\d+)\s*\|\s*(\S+)", last)
    if not match or match.group(2) != "modelforge":
        raise RuntimeError(f"unexpected -X importtime line: {last!r}")
    return int(match.group(1)), json.loads(run.stdout)


def main() -> int:
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    # The same call for both: gpt-4o, 1000 input tokens of which 800 cache reads, 100 output.
    ours = Usage(input_tokens=1000, cache_read_tokens=800, output_tokens=100)
    theirs = GUsage(input_tokens=1000, cache_read_tokens=800, output_tokens=100)
    our_total = price("gpt-4o", ours).total  # warms the catalog and the resolver cache
    their_total = calc_price(theirs, "gpt-4o", provider_id="openai").total_price

    ours_us = per_call_us(lambda: price("gpt-4o", ours), number=200_000)
    theirs_us = per_call_us(
        lambda: calc_price(theirs, "gpt-4o", provider_id="openai"), number=2_000
    )
    bundled_ms = best_ms(bundled_load, repeat=20)
    models_dev_ms = best_ms(models_dev_load, repeat=5) if MODELS_DEV.exists() else None
    import_us, frameworks = import_time()

    rows: list[tuple[str, str, str]] = [
        ("price() per call, warm cache", f"{ours_us:.2f} µs", f"target ≤ {TARGET_US:g} µs"),
        ("genai-prices calc_price(), same call", f"{theirs_us:.2f} µs", ""),
        ("ratio genai-prices / price()", f"{theirs_us / ours_us:.1f}x", ""),
        (
            "same total",
            f"{our_total} vs {their_total}",
            "ok" if our_total == their_total else "DIFFERS",
        ),
        ("load bundled table", f"{bundled_ms:.1f} ms", f"{len(get_catalog())} models"),
    ]
    if models_dev_ms is None:
        rows.append(("load models.dev api.json", "skipped", f"{MODELS_DEV} missing"))
    else:
        rows.append(("load models.dev api.json", f"{models_dev_ms:.1f} ms", str(MODELS_DEV.name)))
    rows += [
        (
            "import modelforge (-X importtime)",
            f"{import_us / 1000:.1f} ms",
            f"{import_us} µs cumulative",
        ),
        ("frameworks imported", ", ".join(frameworks) or "none", "langchain / llama_index"),
    ]

    width = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"python {sys.version.split()[0]} on {sys.platform}")
    for row in rows:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip())
    ok = ours_us <= TARGET_US and not frameworks and our_total == their_total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
