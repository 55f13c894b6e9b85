"""The start-of-call budget check on a 1,000,000-row log with three budgets (target ≤ 20 µs).

    python bench/bench_budgets.py [--rows N] [--db PATH]

Times `UsageCallbackHandler._check_budgets`, the whole check LangChain runs in
`on_chat_model_start` (the call's scope read from its metadata, the budgets gathered,
each one's spend compared with its limit), in steady state: nothing is written
meanwhile, so the spend is read from the log once and then served from memory, as it is
between refreshes. Beside it, from the same run: LiteLLM's `BudgetManager.projected_cost`,
its check before a call (it counts the prompt's tokens, prices them and adds the user's
spend, from a JSON file it keeps in memory). Also shown, not targeted: the first check of a
period (the log read: hourly rollup plus partial hours) and an `include_estimate` check,
which counts the prompt as LiteLLM does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import _isolated  # noqa: F401  (before modelforge reads the env)
from bench_report import build

from modelforge.budgets import Budget
from modelforge.integrations.langchain import UsageCallbackHandler

TARGET_US = 20.0
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in three bullet points."}]


def per_call_us(fn: object, calls: int, repeats: int = 15) -> float:
    """The best of `repeats` runs of `calls` calls, in µs per call."""
    assert callable(fn)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return min(runs)


def our_check(db: Path) -> tuple[float, float, float]:
    os.environ["MODELFORGE_DB"] = str(db)
    handler = UsageCallbackHandler(
        budgets=[
            Budget(usd="100000", period="day", action="block", name="daily"),
            Budget(usd="1000000", period="month", scope={"agent": "writer"}, name="writer"),
            Budget(tokens=10**13, period="week", action="block", scope={"model": "gpt-4o*"}),
        ]
    )
    metadata = {"ls_provider": "openai", "ls_model_name": "gpt-4o", "langgraph_node": "writer"}
    kwargs = {"invocation_params": {"model": "gpt-4o", "max_tokens": 256}}

    def check() -> None:
        handler._check_budgets(None, [MESSAGES], ["bench"], metadata, kwargs)

    started = time.perf_counter()
    check()  # the first check of the period reads the log
    first_ms = (time.perf_counter() - started) * 1000
    steady = per_call_us(check, 5_000)
    estimating = UsageCallbackHandler(
        budgets=[Budget(usd="100000", period="day", action="block", include_estimate=True)]
    )
    estimated = per_call_us(
        lambda: estimating._check_budgets(None, [MESSAGES], None, metadata, kwargs), 2_000
    )
    return steady, first_ms, estimated


def litellm_check() -> float | None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        from litellm import BudgetManager
    except Exception:  # not installed, or it could not start offline
        return None
    here = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="litellm-bench-"))  # it keeps user_cost.json in cwd
    try:
        manager = BudgetManager(project_name="bench")
        user = str(uuid4())
        manager.create_budget(total_budget=100.0, user=user)

        def check() -> None:
            manager.projected_cost(model="gpt-4o", messages=MESSAGES, user=user)

        check()
        return per_call_us(check, 2_000)
    finally:
        os.chdir(here)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="reuse (or create) this log")
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="bench-budgets-")) / "usage.db"
    if not db.exists():
        print(f"building a {args.rows:,}-row log at {db} …", flush=True)
        print(f"  built in {build(db, args.rows):.1f} s")
    steady, first_ms, estimated = our_check(db)
    peer = litellm_check()
    print(f"modelforge start-of-call check, 3 budgets, steady state: {steady:.1f} µs")
    print(f"  info: first check of a period (reads the log): {first_ms:.1f} ms")
    print(f"  info: with include_estimate (counts the prompt): {estimated:.1f} µs")
    if peer is None:
        print("LiteLLM BudgetManager.projected_cost: peer unavailable (litellm not importable)")
    else:
        print(f"LiteLLM BudgetManager.projected_cost, 1 budget: {peer:.1f} µs")
    verdict = "ok" if steady <= TARGET_US else "missed"
    ratio = f"; LiteLLM's check takes {peer / steady:.1f}× as long" if peer else ""
    print(f"{verdict}: check {steady:.1f} µs ≤ {TARGET_US:g} µs target{ratio}")


if __name__ == "__main__":
    main()
