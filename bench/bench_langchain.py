"""LangChain handler overhead: added latency per `invoke`, and sustained throughput.

(a) A fake chat model whose reply carries `usage_metadata` is invoked with no handler,
    with our `UsageCallbackHandler()` (priced, persisted to a temporary log) and with
    langchain-core's `UsageMetadataCallbackHandler` (in memory), interleaved in one run.
    Each round of ours ends with `modelforge.flush()`, so writing its records is timed.
    The garbage collections each configuration set off are counted and timed too.
(b) 50,000 calls go straight through the handler's callbacks, then `modelforge.flush()`;
    every row must be in the log.
(c) The same model waiting 1 ms on I/O, as a (very fast) network reply would.

Target: the persisting handler's time per invoke is at most 1.6x that of
`UsageMetadataCallbackHandler` (best round of each); the last line says `ok` or `missed`.

Run from anywhere: `python bench/bench_langchain.py`. User dirs point at a temporary
folder, so the real usage log is never touched.
"""

from __future__ import annotations

import gc
import itertools
import os
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

TARGET_RATIO = 1.6
INVOKES = 2_000
ROUNDS = 7
THROUGHPUT_CALLS = 50_000
OURS = "UsageCallbackHandler"
THEIRS = "UsageMetadataCallbackHandler"

from _isolated import HOME as _home  # noqa: E402  (before modelforge reads the env)
from langchain_core.callbacks import (  # noqa: E402
    BaseCallbackHandler,
    UsageMetadataCallbackHandler,
)
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, LLMResult  # noqa: E402

import modelforge  # noqa: E402
from modelforge import config  # noqa: E402
from modelforge.langchain import UsageCallbackHandler  # noqa: E402

USAGE = {
    "input_tokens": 1200,
    "output_tokens": 300,
    "total_tokens": 1500,
    "input_token_details": {"cache_read": 1000},
    "output_token_details": {"reasoning": 100},
}


def _reply() -> AIMessage:
    return AIMessage(
        content="fine, thanks",
        usage_metadata=USAGE,
        response_metadata={"model_name": "gpt-4o"},
    )


def _model() -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=itertools.cycle([_reply()]))


class _NetworkModel(GenericFakeChatModel):
    """The fake model plus a 1 ms wait, as for a (very fast) network reply."""

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.001)
        return super()._generate(*args, **kwargs)


def network_overhead(invokes: int = 1_000) -> dict[str, float]:
    """µs per invoke when the model waits on I/O: the writer works while the caller waits."""
    ours, theirs = UsageCallbackHandler(), UsageMetadataCallbackHandler()
    best = {}
    for name, handler in (("no handler", None), ("UsageCallbackHandler", ours),
                          ("UsageMetadataCallbackHandler", theirs)):  # fmt: skip
        model = _NetworkModel(messages=itertools.cycle([_reply()]))
        run_config: Any = {"callbacks": [handler]} if handler else None
        rounds = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(invokes):
                model.invoke("how are you?", config=run_config)
            rounds.append((time.perf_counter() - start) / invokes * 1e6)
        best[name] = min(rounds)
    assert modelforge.flush()
    return best


def _rows(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


class _GcClock:
    """Garbage collections (per generation) and the time they took, per configuration."""

    def __init__(self) -> None:
        self.active: str | None = None
        self.counts: dict[str, list[int]] = {}
        self.seconds: dict[str, float] = {}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if self.active is None:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.counts.setdefault(self.active, [0, 0, 0])[info["generation"]] += 1
        took = time.perf_counter() - self._started
        self.seconds[self.active] = self.seconds.get(self.active, 0.0) + took


GC_CLOCK = _GcClock()


def invoke_overhead() -> tuple[dict[str, float], list[float]]:
    """Best-of-rounds µs per invoke for each configuration, rounds interleaved; and ours /
    theirs within each round (neighbours in time, so they share the machine's mood)."""
    ours = UsageCallbackHandler()
    theirs = UsageMetadataCallbackHandler()
    setups: dict[str, Callable[[], Any]] = {}
    for name, callbacks in (
        ("no handler", None),
        ("empty BaseCallbackHandler", [BaseCallbackHandler()]),
        ("UsageCallbackHandler(persist=False)", [UsageCallbackHandler(persist=False)]),
        (OURS, [ours]),
        (THEIRS, [theirs]),
    ):
        run_config: Any = {"callbacks": callbacks} if callbacks else None
        setups[name] = partial(_model().invoke, "how are you?", config=run_config)

    def timed_round(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        for _ in range(INVOKES):
            fn()
        # Writing the round's records is part of its cost, not the next round's.
        assert modelforge.flush()
        return (time.perf_counter() - start) / INVOKES * 1e6

    for fn in setups.values():  # warm up imports, the price table and the log file
        timed_round(fn)
    best = dict.fromkeys(setups, float("inf"))
    paired: list[float] = []
    gc.callbacks.append(GC_CLOCK)
    for _ in range(ROUNDS):
        this_round = {}
        for name, fn in setups.items():
            GC_CLOCK.active = name
            this_round[name] = timed_round(fn)
            GC_CLOCK.active = None
            best[name] = min(best[name], this_round[name])
        paired.append(this_round[OURS] / this_round[THEIRS])
    gc.callbacks.remove(GC_CLOCK)
    assert ours.errors == 0
    expected = (ROUNDS + 1) * INVOKES
    written = _rows(str(config.default_db_path()))
    assert written == expected, (written, expected)
    return best, paired


def throughput() -> tuple[float, float, int]:
    """(handler calls/s, rows/s to disk including the final flush, rows found)."""
    path = os.path.join(_home, "throughput.db")
    handler = UsageCallbackHandler(db=path)
    serialized = {"id": ["langchain", "chat_models", "openai", "ChatOpenAI"]}
    messages = [[HumanMessage("how are you?")]]
    params = {"model": "gpt-4o"}
    metadata = {"ls_provider": "openai", "ls_model_name": "gpt-4o", "user_id": "u-1"}
    result = LLMResult(generations=[[ChatGeneration(message=_reply())]])
    run_ids = [uuid.uuid4() for _ in range(THROUGHPUT_CALLS)]

    start = time.perf_counter()
    for run_id in run_ids:
        handler.on_chat_model_start(
            serialized, messages, run_id=run_id, metadata=metadata, invocation_params=params
        )
        handler.on_llm_end(result, run_id=run_id)
    handled = time.perf_counter() - start
    assert modelforge.flush(timeout=120)
    stored = time.perf_counter() - start
    rows = _rows(path)
    assert rows == THROUGHPUT_CALLS, rows
    assert handler.errors == 0
    return THROUGHPUT_CALLS / handled, THROUGHPUT_CALLS / stored, rows


def main() -> int:
    print(f"python {sys.version.split()[0]}; {INVOKES} invokes x best of {ROUNDS} rounds")
    best, paired = invoke_overhead()
    base = best["no handler"]
    print()
    print(f"{'(a) invoke of a fake chat model':<38}{'µs/invoke':>11}{'added µs':>11}")
    for name, us in best.items():
        print(f"{name:<38}{us:>11.1f}{us - base:>11.1f}")
    ours, theirs = best[OURS], best[THEIRS]
    ratio = ours / theirs
    if theirs - base >= 1:
        print(f"ours / theirs added latency only: {(ours - base) / (theirs - base):.2f}x")
    else:  # theirs is within the noise of no handler at all
        print(f"ours adds {ours - base:.1f} µs; theirs adds nothing measurable")
    low, mid, high = min(paired), statistics.median(paired), max(paired)
    print(f"ours / theirs within each round: {low:.3f}x to {high:.3f}x, median {mid:.3f}x")
    # Records wait up to a batch window for the writer, and the collector counts them
    # meanwhile: a handler that keeps nothing triggers no collections at all.
    invokes = ROUNDS * INVOKES
    print()
    print(f"{'garbage collections in those rounds':<38}{'gen 0/1/2':>15}{'µs/invoke':>11}")
    for name in best:
        young, middle, full = GC_CLOCK.counts.get(name, [0, 0, 0])
        spent = GC_CLOCK.seconds.get(name, 0.0) / invokes * 1e6
        print(f"{name:<38}{f'{young}/{middle}/{full}':>15}{spent:>11.2f}")

    network = network_overhead()
    print()
    print(f"{'(c) the same model waiting 1 ms on I/O':<38}{'µs/invoke':>11}{'added µs':>11}")
    for name, us in network.items():
        print(f"{name:<38}{us:>11.1f}{us - network['no handler']:>11.1f}")
    io_ratio = network[OURS] / network[THEIRS]
    print(f"ours / theirs per invoke: {io_ratio:.3f}x")

    calls_per_s, rows_per_s, rows = throughput()
    print()
    print(f"(b) {THROUGHPUT_CALLS:,} calls through the handler callbacks")
    print(f"handler calls/s (start + end):     {calls_per_s:>12,.0f}")
    print(f"rows/s written, incl. final flush: {rows_per_s:>12,.0f}")
    print(f"rows in the log:                   {rows:>12,}")

    met = ratio <= TARGET_RATIO
    print()
    print(
        f"target (a) {OURS} <= {TARGET_RATIO}x {THEIRS} per invoke: "
        f"{'ok' if met else 'missed'} ({ours:.1f} vs {theirs:.1f} µs, {ratio:.3f}x)"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
