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
after the rounds (`--steady N` calls, best of 3) times the calls as a program that calls
a zero-latency LLM back to back sees them. Such a caller starves the writer: each SQLite
statement gives the GIL away, and getting it back takes at least the caller's switch
interval (5 ms). A LlamaIndex chat also drops the GIL for an instant at each `uuid4()`
(`os.urandom`), and each drop restarts that wait, so a statement can wait 20-230 ms.
Most rows are written only once the loop ends, or when the writer's queue is full and
the caller waits for it. The bench prints how many were written during the timed calls.

Two "floor" set-ups show the least a handler can add here. The bare handler does only
what a record needs: it reads the reported usage, prices it in Decimal and builds a
`CallRecord`, with no nesting, sessions, locks or error handling. It runs in memory in
the rounds. In the steady runs it also queues each record for a bare writer: a thread
that puts the rows into a table with only the unique run_id index, batched as ours are.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

TARGET_ADDED_US = 30.0
TARGET_RATIO = 50.0

import _isolated  # noqa: E402  (before modelforge reads the env)
import tiktoken  # noqa: E402
from _floor import BareWriter  # noqa: E402
from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events import BaseEvent  # noqa: E402
from llama_index.core.instrumentation.events.llm import (  # noqa: E402
    LLMChatEndEvent,
    LLMChatStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback  # noqa: E402
from llama_index.core.llms.custom import CustomLLM  # noqa: E402

import modelforge  # noqa: E402
from modelforge import config, store  # noqa: E402
from modelforge.integrations.llamaindex import _SpanParents  # noqa: E402
from modelforge.llamaindex import UsageEventHandler, instrument, uninstrument  # noqa: E402
from modelforge.pricing.cost import cost_for  # noqa: E402
from modelforge.pricing.resolve import get_resolver  # noqa: E402
from modelforge.records import CallRecord, utc_now  # noqa: E402
from modelforge.store import record_fields  # noqa: E402
from modelforge.usage import plain_openai_chat  # noqa: E402

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


class BareHandler(BaseEventHandler):
    """The floor: reads the reported usage, prices it and builds the record, no more."""

    @classmethod
    def class_name(cls) -> str:
        return "BareHandler"

    def model_post_init(self, context: Any, /) -> None:
        self.__dict__["open"] = {}
        self.__dict__["entry"] = get_resolver().resolve(MODEL, "openai")
        self.__dict__["sink"] = None
        self.__dict__["last"] = None

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        state = self.__dict__
        if type(event) is LLMChatStartEvent:
            model_dict: Any = event.model_dict
            state["open"][event.span_id] = (time.perf_counter(), utc_now(), model_dict)
        elif type(event) is LLMChatEndEvent:
            started, ts, model_dict = state["open"].pop(event.span_id)
            raw: Any = event.response.raw if event.response is not None else None
            usage = plain_openai_chat(raw["usage"], None)
            assert usage is not None
            record = CallRecord(
                run_id=f"llamaindex:{event.span_id}",
                usage=usage,
                cost=cost_for(state["entry"], usage, raw["model"]),
                ts=ts,
                framework="llamaindex",
                provider="openai",
                model=model_dict.get("model_name"),
                response_model=raw["model"],
                latency_ms=round((time.perf_counter() - started) * 1e6) / 1000,
            )
            state["last"] = record
            if state["sink"] is not None:
                state["sink"](record)


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
    bare = BareHandler()
    bare_writer = BareWriter(os.path.join(_isolated.HOME, "bare.db"))

    setups: dict[tuple[str, bool], Callable[[], float]] = {
        ("no handler", True): lambda: _bare(lambda: time_calls(reporting, calls)),
        ("UsageEventHandler, usage log", True): lambda: _instrumented(
            lambda: time_calls(reporting, calls)
        ),
        ("UsageEventHandler, persist=False", True): lambda: _with_handler(
            in_memory, lambda: time_calls(reporting, calls)
        ),
        ("TokenCountingHandler", True): lambda: _bare(lambda: time_calls(counted, calls)),
        ("floor: bare handler, in memory", True): lambda: _bare(
            lambda: _with_handler(bare, lambda: time_calls(reporting, calls))
        ),
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

    steady = {"bare": float("inf"), "logged": float("inf"), "floor": float("inf")}
    written_in_loop = {"logged": 0, "floor": 0}
    queued = bare_writer.queued
    bare.__dict__["sink"] = lambda record: queued.append(record_fields(record))
    for _ in range(3):
        steady["bare"] = min(steady["bare"], _bare(lambda: time_calls(reporting, args.steady)))
        before = store.stats()["written"]
        steady["logged"] = min(
            steady["logged"], _instrumented(lambda: time_calls(reporting, args.steady))
        )
        written_in_loop["logged"] += store.stats()["written"] - before
        modelforge.flush()
        before = bare_writer.written
        steady["floor"] = min(
            steady["floor"],
            _bare(lambda: _with_handler(bare, lambda: time_calls(reporting, args.steady))),
        )
        written_in_loop["floor"] += bare_writer.written - before
        bare_writer.drain()

    logged = (args.rounds + 1) * calls * 2 + 3 * args.steady
    rows = _rows()
    assert rows == logged, (rows, logged)
    assert in_memory.errors == 0
    assert bare_writer.written == 3 * args.steady, (bare_writer.written, 3 * args.steady)
    assert bare.__dict__["last"].total_cost == EXPECTED_COST
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
    floor_writer = steady["floor"] - steady["bare"]
    print(f"\nbest of 3 runs x {args.steady:,} calls, each run then flushed untimed:")
    for name, key, extra in (
        ("UsageEventHandler, usage log", "logged", with_writer),
        ("floor: bare handler + bare writer", "floor", floor_writer),
    ):
        print(f"{name:<36}{'yes':>13}{steady[key]:>10.1f}{extra:>10.1f}")
    print(
        f"  rows written during the timed calls: ours {written_in_loop['logged']:,}, "
        f"bare writer {written_in_loop['floor']:,}, of {3 * args.steady:,} each"
    )

    # The larger of ours in memory and ours persisting, both as the rounds timed them.
    ours = max(
        added[("UsageEventHandler, usage log", True)],
        added[("UsageEventHandler, persist=False", True)],
    )
    tokenizing = added[("TokenCountingHandler", False)]
    reading = added[("TokenCountingHandler", True)]
    floor = added[("floor: bare handler, in memory", True)]
    print()
    print(f"TokenCountingHandler tokenizing / ours reading usage: {tokenizing / ours:.1f}x")
    print(f"TokenCountingHandler reading usage / ours reading usage: {reading / ours:.2f}x")
    print(
        f"TokenCountingHandler tokenizing / floor: in memory {tokenizing / floor:.1f}x, "
        f"with the bare writer {tokenizing / floor_writer:.1f}x"
    )
    print(
        f"targets: ours <= {TARGET_ADDED_US:.0f} µs added, in memory and persisting: "
        f"{'met' if ours <= TARGET_ADDED_US else 'MISSED'}; "
        f">= {TARGET_RATIO:.0f}x less than a tokenizing TokenCountingHandler: "
        f"{'met' if tokenizing / ours >= TARGET_RATIO else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
