"""Time our `UsageEventHandler` adds to a LlamaIndex `chat`, beside `TokenCountingHandler`.

Run from anywhere: `python bench/bench_llamaindex.py [--calls N] [--rounds N] [--steady N]`.
The LLM is an in-process `CustomLLM` whose `chat` answers at once, so no HTTP is timed:
what is left is LlamaIndex's own work plus the handler's. Every set-up runs on the same
~4k-token prompt, in interleaved rounds of one process; each figure is the best round.
The set-ups without our handler run without the span tracker it adds to LlamaIndex's
root dispatcher, so what the tracker costs counts as ours.

The log is written by a background thread, which takes the GIL in turns with the caller;
with an LLM that answers at once the caller never waits on I/O, so the writer's turns
slow the calls. A longer run after the rounds (`--steady N` calls, best of 3) times the
calls as a program that calls a zero-latency LLM back to back sees them, and says how
many rows were written during the timed calls.

There is no numeric target: the last line, `info`, gives our added time beside
`TokenCountingHandler`'s (which tokenizes the prompt and the answer) from the same run.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import _isolated  # noqa: F401  (before modelforge reads the env)
import tiktoken
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

import modelforge
from modelforge import config, track_usage
from modelforge.integrations.llamaindex_calls import SpanParents
from modelforge.llamaindex import UsageEventHandler, instrument, uninstrument

MODEL = "gpt-4o"
ENCODING = tiktoken.get_encoding("o200k_base")
_WORDS = [
    "the",
    "model",
    "reads",
    "every",
    "document",
    "in",
    "index",
    "and",
    "answers",
    "questions",
    "about",
    "budgets",
    "contracts",
    "invoices",
    "shipping",
    "delays",
    "customer",
    "complaints",
    "quarterly",
    "revenue",
    "forecasts",
    "engineering",
    "roadmaps",
    "security",
    "reviews",
    "hiring",
    "plans",
    "office",
    "moves",
    "supplier",
    "audits",
    "warranty",
    "claims",
    "refunds",
    "onboarding",
    "checklists",
    "incident",
    "reports",
    "latency",
    "regressions",
    "database",
    "migrations",
    "pricing",
    "tiers",
    "discount",
    "codes",
    "marketing",
    "campaigns",
    "survey",
    "results",
]
_rng = random.Random(5)
PROMPT = " ".join(_rng.choice(_WORDS) for _ in range(3600))
ANSWER = "The refund was approved on the third of May, after the supplier audit."
USAGE = {
    "prompt_tokens": 4008,
    "completion_tokens": 17,
    "total_tokens": 4025,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
_ids = itertools.count()


class InProcessLLM(CustomLLM):
    """Answers at once; with `report_usage`, its `raw` is an OpenAI chat completion's."""

    report_usage: bool = True

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=MODEL, is_chat_model=True)

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        raw = None
        if self.report_usage:
            raw = {
                "id": f"chatcmpl-bench{next(_ids)}",
                "object": "chat.completion",
                "model": MODEL,
                "usage": USAGE,
            }
        return ChatResponse(message=ChatMessage(role="assistant", content=ANSWER), raw=raw)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=ANSWER)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        raise NotImplementedError


# 4,008 input tokens at $2.50 and 17 output tokens at $10 per 1M (gpt-4o).
EXPECTED_COST = Decimal("0.01002") + Decimal("0.00017")


def time_calls(llm: InProcessLLM, calls: int) -> float:
    """Microseconds per `chat` over `calls` calls."""
    messages = [ChatMessage(role="user", content=PROMPT)]
    started = time.perf_counter()
    for _ in range(calls):
        llm.chat(messages)
    return (time.perf_counter() - started) / calls * 1e6


def _with_handler(handler: BaseEventHandler, run: Callable[[], float]) -> float:
    root = get_dispatcher()
    root.event_handlers = [*root.event_handlers, handler]
    try:
        return run()
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not handler]


def _bare(run: Callable[[], float]) -> float:
    """`run` as a program without modelforge runs: without our span tracker."""
    root = get_dispatcher()
    handlers = root.span_handlers
    root.span_handlers = [h for h in handlers if not isinstance(h, SpanParents)]
    try:
        return run()
    finally:
        root.span_handlers = handlers


def _instrumented(run: Callable[[], float]) -> float:
    instrument()
    try:
        return run()
    finally:
        uninstrument()


def _rows() -> int:
    assert modelforge.flush(timeout=60)
    conn = sqlite3.connect(config.default_db_path())
    try:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per set-up and round")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument(
        "--steady", type=int, default=3000, help="calls in each longer run with the usage log"
    )
    args = parser.parse_args()
    calls = args.calls

    reporting = InProcessLLM(callback_manager=CallbackManager([]))
    silent = InProcessLLM(callback_manager=CallbackManager([]), report_usage=False)
    counter = TokenCountingHandler(tokenizer=ENCODING.encode)
    counted = InProcessLLM(callback_manager=CallbackManager([counter]))
    counted_silent = InProcessLLM(callback_manager=CallbackManager([counter]), report_usage=False)
    in_memory = UsageEventHandler(persist=False)

    setups: dict[tuple[str, bool], Callable[[], float]] = {
        ("no handler", True): lambda: _bare(lambda: time_calls(reporting, calls)),
        ("UsageEventHandler, usage log", True): lambda: _instrumented(
            lambda: time_calls(reporting, calls)
        ),
        ("UsageEventHandler, persist=False", True): lambda: _with_handler(
            in_memory, lambda: time_calls(reporting, calls)
        ),
        ("TokenCountingHandler", True): lambda: _bare(lambda: time_calls(counted, calls)),
        ("no handler", False): lambda: _bare(lambda: time_calls(silent, calls)),
        ("UsageEventHandler, usage log", False): lambda: _instrumented(
            lambda: time_calls(silent, calls)
        ),
        ("TokenCountingHandler", False): lambda: _bare(lambda: time_calls(counted_silent, calls)),
    }
    for run in setups.values():  # warm up: imports, price table, tiktoken, the log file
        run()
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(args.rounds):
        for key, run in setups.items():
            best[key] = min(best[key], run())
            modelforge.flush()

    steady = {"bare": float("inf"), "logged": float("inf")}
    written_in_loop = 0
    for _ in range(3):
        steady["bare"] = min(steady["bare"], _bare(lambda: time_calls(reporting, args.steady)))
        before = modelforge.stats()["written"]
        steady["logged"] = min(
            steady["logged"], _instrumented(lambda: time_calls(reporting, args.steady))
        )
        written_in_loop += modelforge.stats()["written"] - before
        modelforge.flush()

    logged = (args.rounds + 1) * calls * 2 + 3 * args.steady
    rows = _rows()
    assert rows == logged, (rows, logged)
    assert in_memory.errors == 0
    assert counter.total_llm_token_count > 0
    with track_usage(persist=False, llamaindex=True) as session:
        reporting.chat([ChatMessage(role="user", content=PROMPT)])
    assert session.total_cost == EXPECTED_COST, session.total_cost

    added = {key: us - best[("no handler", key[1])] for key, us in best.items()}
    prompt_tokens = len(ENCODING.encode(PROMPT))
    python = sys.version.split()[0]
    print(f"LlamaIndex chat, {prompt_tokens:,}-token prompt, in-process LLM, python {python}")
    print(f"best of {args.rounds} interleaved rounds x {calls} calls; {rows:,} rows in the log\n")
    print(f"{'set-up':<36}{'usage in raw':>13}{'µs/call':>10}{'added µs':>10}")
    for (name, reported), us in best.items():
        extra = added[(name, reported)]
        shown = "-" if name == "no handler" else f"{extra:.1f}"
        print(f"{name:<36}{'yes' if reported else 'no':>13}{us:>10.1f}{shown:>10}")

    with_writer = steady["logged"] - steady["bare"]
    print(f"\nbest of 3 runs x {args.steady:,} calls, each run then flushed untimed:")
    print(f"{'no handler':<36}{'yes':>13}{steady['bare']:>10.1f}{'-':>10}")
    logged_name = "UsageEventHandler, usage log"
    print(f"{logged_name:<36}{'yes':>13}{steady['logged']:>10.1f}{with_writer:>10.1f}")
    print(f"  rows written during the timed calls: {written_in_loop:,} of {3 * args.steady:,}")

    # The larger of ours in memory and ours persisting, both as the rounds timed them.
    ours = max(
        added[("UsageEventHandler, usage log", True)],
        added[("UsageEventHandler, persist=False", True)],
    )
    tokenizing = added[("TokenCountingHandler", False)]
    print()
    print(
        f"info: UsageEventHandler adds {ours:.1f} µs a call reading reported usage "
        f"({with_writer:.1f} µs back to back with the log); TokenCountingHandler adds "
        f"{tokenizing:.1f} µs tokenizing, {tokenizing / ours:.1f}x ours"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
