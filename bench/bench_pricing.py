"""Pricing speed: `price()` against genai-prices' `calc_price`, cold start, layer loads.

Run from anywhere: `python bench/bench_pricing.py`. User dirs point at a temporary
folder, so a personal override file or fetched catalog does not skew the figures.

Targets (issue #22 and #20), each printed with `ok` or `missed`:
- a warm `price()` takes at most 5 µs;
- `price()` is at least 20× faster than genai-prices' `calc_price` on the same call;
- a cold `python -c "import modelforge; modelforge.price('gpt-4o', ...)"` takes at most
  250 ms of wall time in all (best of several runs, the least disturbed; the median is
  printed too, with genai-prices' cold start from the same run beside it).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS_DEV = REPO.parent / "shared" / "models-dev" / "api.json"
WARM_TARGET_US = 5.0
RATIO_TARGET = 20.0
COLD_TARGET_MS = 250.0
COLD_RUNS = 7
FRAMEWORKS = ("langchain", "llama_index")
COLD_OURS = (
    "import modelforge; "
    "modelforge.price('gpt-4o', modelforge.Usage(input_tokens=1, output_tokens=1))"
)
COLD_IMPORT_ONLY = "import modelforge; modelforge.Usage(input_tokens=1, output_tokens=1)"
COLD_THEIRS = (
    "from genai_prices import Usage, calc_price; "
    "calc_price(Usage(input_tokens=1, output_tokens=1), 'gpt-4o', provider_id='openai')"
)

_home = tempfile.mkdtemp(prefix="modelforge-bench-")
atexit.register(shutil.rmtree, _home, True)
for _var, _sub in (("CONFIG", "config"), ("CACHE", "cache"), ("DATA", "data")):
    os.environ[f"MODELFORGE_{_var}_DIR"] = os.path.join(_home, _sub)
os.environ.pop("MODELFORGE_PRICES", None)

from modelforge import Usage, price  # noqa: E402
from modelforge.pricing import catalog  # noqa: E402
from modelforge.pricing.catalog import (  # noqa: E402
    Catalog,
    load_json_text,
    parse_api_json,
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


def cold_ms(code: str, runs: int = COLD_RUNS) -> tuple[float, float]:
    """Wall time of `python -c code` in a fresh process: best and median, in ms."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), statistics.median(times)


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
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    # "import time: self [us] | cumulative | imported package"; the last line is modelforge.
    last = [line for line in run.stderr.splitlines() if line.startswith("import time:")][-1]
    match = re.match(r"import time:\s*\d+\s*\|\s*(\d+)\s*\|\s*(\S+)", last)
    if not match or match.group(2) != "modelforge":
        raise RuntimeError(f"unexpected -X importtime line: {last!r}")
    return int(match.group(1)), json.loads(run.stdout)


def verdict(ok: bool) -> str:
    return "ok" if ok else "missed"


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
    ratio = theirs_us / ours_us
    curated_ms = best_ms(catalog.curated_data, repeat=20)
    base_ms = best_ms(catalog.base_data, repeat=10)
    base_bytes = (Path(catalog.__file__).parent / "data" / catalog.BASE_RESOURCE).stat().st_size
    base_models = sum(len(rows) for rows in catalog.base_data().models.values())
    models_dev_ms = best_ms(models_dev_load, repeat=3) if MODELS_DEV.exists() else None
    cold_best, cold_median = cold_ms(COLD_OURS)
    import_best, import_median = cold_ms(COLD_IMPORT_ONLY)
    floor_best, _ = cold_ms("pass")
    peer_best, peer_median = cold_ms(COLD_THEIRS)
    import_us, frameworks = import_time()

    rows: list[tuple[str, str, str]] = [
        (
            "price() per call, warm cache",
            f"{ours_us:.2f} µs",
            f"{verdict(ours_us <= WARM_TARGET_US)} (target ≤ {WARM_TARGET_US:g} µs)",
        ),
        ("genai-prices calc_price(), same call", f"{theirs_us:.2f} µs", ""),
        (
            "speed-up over genai-prices",
            f"{ratio:.1f}x",
            f"{verdict(ratio >= RATIO_TARGET)} (target ≥ {RATIO_TARGET:g}x: "
            f"{theirs_us:.2f} µs / {ours_us:.2f} µs)",
        ),
        (
            "same total",
            f"{our_total} vs {their_total}",
            "ok" if our_total == their_total else "DIFFERS",
        ),
        (
            "cold import + price('gpt-4o'), wall",
            f"{cold_best:.0f} ms",
            f"{verdict(cold_best <= COLD_TARGET_MS)} (target ≤ {COLD_TARGET_MS:g} ms; "
            f"best of {COLD_RUNS}, median {cold_median:.0f} ms)",
        ),
        (
            "  of which: python itself",
            f"{floor_best:.0f} ms",
            "python -c pass",
        ),
        (
            "  of which: import + Usage, no price",
            f"{import_best:.0f} ms",
            f"median {import_median:.0f} ms; pricing adds {cold_best - import_best:.0f} ms",
        ),
        (
            "genai-prices cold import + calc_price",
            f"{peer_best:.0f} ms",
            f"median {peer_median:.0f} ms",
        ),
        ("load curated table", f"{curated_ms:.1f} ms", "read on the first price"),
        (
            "load base layer",
            f"{base_ms:.1f} ms",
            f"{base_bytes / 1024:.0f} KiB, {base_models} models; read on the first miss",
        ),
    ]
    if models_dev_ms is None:
        rows.append(("parse models.dev api.json", "skipped", f"{MODELS_DEV} missing"))
    else:
        rows.append(("parse models.dev api.json", f"{models_dev_ms:.1f} ms", "every row, eagerly"))
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
    ok = (
        ours_us <= WARM_TARGET_US
        and ratio >= RATIO_TARGET
        and cold_best <= COLD_TARGET_MS
        and not frameworks
        and our_total == their_total
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
