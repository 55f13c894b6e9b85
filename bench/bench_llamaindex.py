"""Time our `UsageEventHandler` adds to a LlamaIndex `chat`, beside `TokenCountingHandler`.

Run from anywhere: `python bench/bench_llamaindex.py [--calls N] [--rounds N] [--steady N]`.
The LLM is an in-process `CustomLLM` whose `chat` answers at once, so no HTTP is timed:
what is left is LlamaIndex's own work plus the handler's. Every set-up runs on the same
~4k-token prompt, in interleaved rounds of one process; each figure is the best round.
The set-ups without our handler run without the span tracker it adds to LlamaIndex's
root dispatcher, so what the tracker costs counts as ours.

The log is written by a background thread, which takes the GIL in turns with the caller;
with an LLM that answers at once the caller never waits on I/O, so the writer's turns
slow the calls (far more than its own work takes: each handover costs the caller). The
writer gathers records for up to 50 ms before it writes, so how much of its work falls
inside a round of a few hundred calls depends on how long the round takes. A longer run
after the rounds (`--steady N` calls, best of 3) times the calls with the writer's share
included: what a program that calls a zero-latency LLM back to back would see.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

TARGET_ADDED_US = 30.0
TARGET_RATIO = 50.0

import _isolated  # noqa: E402, F401  (before modelforge reads the env)
import tiktoken  # noqa: E402
from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback  # noqa: E402
from llama_index.core.llms.custom import CustomLLM  # noqa: E402

import modelforge  # noqa: E402
from modelforge import config  # noqa: E402
from modelforge.integrations.llamaindex import _SpanParents  # noqa: E402
from modelforge.llamaindex import UsageEventHandler, instrument, uninstrument  # noqa: E402

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


def time_calls(llm: InProcessLLM, calls: int) -> float:
    """Microseconds per `chat` over `calls` calls."""
    messages = [ChatMessage(role="user", content=PROMPT)]
    started = time.perf_counter()
    for _ in range(calls):
        llm.chat(messages)
    return (time.perf_counter() - started) / calls * 1e6


def _with_handler(handler: UsageEventHandler, run: Callable[[], float]) -> float:
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
    root.span_handlers = [h for h in handlers if not isinstance(h, _SpanParents)]
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
        "--steady", type=int, default=3000, help="calls in each run with the log writer's work"
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
    for _ in range(3):
        steady["bare"] = min(steady["bare"], _bare(lambda: time_calls(reporting, args.steady)))
        steady["logged"] = min(
            steady["logged"], _instrumented(lambda: time_calls(reporting, args.steady))
        )
        modelforge.flush()

    logged = (args.rounds + 1) * calls * 2 + 3 * args.steady
    rows = _rows()
    assert rows == logged, (rows, logged)
    assert in_memory.errors == 0
    assert counter.total_llm_token_count > 0

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
    print(
        f"{'UsageEventHandler, usage log,':<36}{'yes':>13}{steady['logged']:>10.1f}"
        f"{with_writer:>10.1f}\n  {args.steady:,} calls a run, the log writer's work included"
    )

    # The larger of ours in memory and ours persisting, both as the rounds timed them.
    ours = max(
        added[("UsageEventHandler, usage log", True)],
        added[("UsageEventHandler, persist=False", True)],
    )
    tokenizing = added[("TokenCountingHandler", False)]
    reading = added[("TokenCountingHandler", True)]
    print()
    print(f"TokenCountingHandler tokenizing / ours reading usage: {tokenizing / ours:.1f}x")
    print(f"TokenCountingHandler reading usage / ours reading usage: {reading / ours:.2f}x")
    print(
        f"targets: ours <= {TARGET_ADDED_US:.0f} µs added, in memory and persisting: "
        f"{'met' if ours <= TARGET_ADDED_US else 'MISSED'}; "
        f">= {TARGET_RATIO:.0f}x less than a tokenizing TokenCountingHandler: "
        f"{'met' if tokenizing / ours >= TARGET_RATIO else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
