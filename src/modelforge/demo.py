"""`modelforge demo`: a small LangChain chain whose calls are recorded and priced.

Without `live`, the real `ChatOpenAI` and `ChatAnthropic` classes talk to a loopback
`WireServer` that answers with fixed, documented-shape usage, so the costs below can be
checked by hand against the bundled prices:

- gpt-4o (served as gpt-4o-2024-08-06), a cached prompt: 2,048 input of which 1,536
  cached, 180 output → 512×$2.50 + 1,536×$1.25 + 180×$10.00 per 1M = $0.005
- claude-sonnet-4-5, streamed: 300 uncached + 4,000 cache-read + 1,000 cache-write
  (5 min) input, 250 output → 300×$3 + 4,000×$0.30 + 1,000×$3.75 + 250×$15 per 1M
  = $0.0096
- gpt-5-mini with reasoning: 800 input, 1,200 output of which 1,024 reasoning
  → 800×$0.25 + 1,200×$2.00 per 1M = $0.0026
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelforge import config
from modelforge.money import format_usd
from modelforge.session import UsageSession, track_usage
from modelforge.store import get_log

OPENAI_MODEL = "gpt-4o"
ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"
REASONING_MODEL = "gpt-5-mini"

CACHED_CALL_USAGE = {
    "prompt_tokens": 2048,
    "completion_tokens": 180,
    "total_tokens": 2228,
    "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
STREAMED_CALL_USAGE = {
    "input_tokens": 300,
    "cache_read_input_tokens": 4000,
    "cache_creation_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 250,
}
REASONING_CALL_USAGE = {
    "prompt_tokens": 800,
    "completion_tokens": 1200,
    "total_tokens": 2000,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 1024},
}


DEMO_LOG = "demo.db"


def default_demo_log() -> Path:
    """The demo's own log, beside the usage log's default place: the demo never writes
    its made-up calls into the log your real calls go to."""
    return config.data_dir() / DEMO_LOG


@dataclass
class DemoResult:
    session: UsageSession
    db: Path
    recording: bool  # telemetry on: the calls were meant for the log
    written: bool  # and they reached it
    demo_run: str
    summary: str


@contextlib.contextmanager
def _endpoints(live: bool) -> Iterator[dict[str, Any]]:
    """Client settings: real providers with --live, else the loopback wire server."""
    if live:
        missing = [k for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY") if not os.environ.get(k)]
        if missing:
            from modelforge.errors import ModelForgeError

            raise ModelForgeError(f"--live needs {' and '.join(missing)} in the environment")
        yield {"openai": {}, "anthropic": {}}
        return
    from modelforge.wire import Reply, WireServer

    with WireServer() as server:
        server.enqueue(
            Reply(
                text="A cost tracker records tokens and prices for each call.",
                usage=CACHED_CALL_USAGE,
                model="gpt-4o-2024-08-06",
                match_model=OPENAI_MODEL,
            ),
            Reply(
                text="It is clear; mention cache savings.",
                usage=STREAMED_CALL_USAGE,
                model=ANTHROPIC_MODEL,
                match_model=ANTHROPIC_MODEL,
                chunks=4,
                anthropic_delta_full_usage=True,
            ),
            Reply(
                text="Estimated monthly spend: about $12.",
                usage=REASONING_CALL_USAGE,
                model=REASONING_MODEL,
                match_model=REASONING_MODEL,
            ),
        )
        yield {
            "openai": {"base_url": server.openai_base_url, "api_key": "demo-key"},
            "anthropic": {"base_url": server.anthropic_base_url, "api_key": "demo-key"},
        }


def run_demo(db: Path | str | None = None, live: bool = False) -> DemoResult:
    """Run the demo chain inside `track_usage()` and return what was recorded."""
    from langchain_anthropic import ChatAnthropic
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    demo_run = uuid.uuid4().hex[:12]
    log_path = Path(db) if db else default_demo_log()
    with (
        _endpoints(live) as endpoints,
        track_usage(
            db=log_path, project="modelforge-demo", user_id="demo-user", demo_run=demo_run
        ) as session,
    ):
        summarise = (
            ChatPromptTemplate.from_messages(
                [("system", "You are a concise technical writer."), ("human", "Summarise: {topic}")]
            )
            | ChatOpenAI(model=OPENAI_MODEL, max_retries=0, **endpoints["openai"])
            | StrOutputParser()
        )
        review = (
            ChatPromptTemplate.from_messages([("human", "Review this summary: {summary}")])
            | ChatAnthropic(
                model=ANTHROPIC_MODEL, max_tokens=512, max_retries=0, **endpoints["anthropic"]
            )
            | StrOutputParser()
        )
        plan = (
            ChatPromptTemplate.from_messages([("human", "Estimate the spend given: {review}")])
            | ChatOpenAI(
                model=REASONING_MODEL,
                reasoning_effort="low",
                max_retries=0,
                **endpoints["openai"],
            )
            | StrOutputParser()
        )
        summary = summarise.invoke(
            {"topic": "why LLM cost tracking needs exact token accounting"},
            config={"tags": ["demo"], "metadata": {"agent": "writer"}},
        )
        review_text = "".join(
            review.stream(
                {"summary": summary},
                config={"tags": ["demo"], "metadata": {"agent": "reviewer"}},
            )
        )
        plan.invoke(
            {"review": review_text}, config={"tags": ["demo"], "metadata": {"agent": "planner"}}
        )
    recording = config.telemetry_status().enabled
    written = recording and get_log(log_path).flush() and log_path.exists()
    return DemoResult(session, log_path, recording, written, demo_run, _summary(session, live))


def _summary(session: UsageSession, live: bool) -> str:
    where = "the real OpenAI and Anthropic APIs" if live else "a loopback wire server (no network)"
    lines = [f"Ran 3 calls through ChatOpenAI and ChatAnthropic against {where}:"]
    for record in session.calls:
        usage = record.usage
        details = [f"{usage.input_tokens:,} in", f"{usage.output_tokens:,} out"]
        if usage.cache_read_tokens:
            details.append(f"{usage.cache_read_tokens:,} cache read")
        if usage.cache_write_tokens:
            details.append(f"{usage.cache_write_tokens:,} cache write")
        if usage.reasoning_tokens:
            details.append(f"{usage.reasoning_tokens:,} reasoning")
        cost = format_usd(record.cost.total) if record.cost.priced else "unpriced"
        name = record.response_model or record.model
        lines.append(f"  {name:<28} {', '.join(details):<60} {cost}")
    lines.append(f"  {'total':<28} {'':<60} {format_usd(session.total_cost)}")
    return "\n".join(lines)
