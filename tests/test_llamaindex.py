"""Issue 5 acceptance: real LlamaIndex LLMs, through the loopback wire server, into the
usage log. Every expected cost is worked out by hand beside the assertion.

Prices (USD per 1M tokens, from the bundled table):
  gpt-4o                       input 2.5, output 10, cache_read 1.25
  claude-sonnet-4-5-20250929   input 3, output 15, cache_read 0.3, cache_write 3.75,
                               cache_write_1h 6
  text-embedding-3-small       input 0.02

The wire server counts a chat prompt as its words + 3 per message, and its default
reply "Hello from the model-forge wire server." as 6 output tokens. Our own estimates
use tiktoken (o200k_base for gpt-4o and unknown models, cl100k_base for
text-embedding-*), plus 3 tokens per message and 3 for the reply for chat prompts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlite_utils
from langchain_openai import ChatOpenAI
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings.mock_embed_model import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.mock import MockLLM
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.llms.anthropic import Anthropic
from llama_index.llms.openai import OpenAI, OpenAIResponses
from openai.types.chat import ChatCompletion
from pydantic import Field

import modelforge
from encodings_on_disk import needs_encodings
from modelforge import track_usage
from modelforge.integrations import llamaindex as integration
from modelforge.integrations import llamaindex_calls
from modelforge.integrations.llamaindex_calls import forget_spans
from modelforge.llamaindex import (
    LlamaIndexCallbackHandler,
    UsageEventHandler,
    instrument,
    uninstrument,
)
from modelforge.usage import from_llamaindex_response
from modelforge.wire import Reply, WireServer
from row_checks import assert_anthropic_cache_costs, assert_row_consistent

# The anthropic SDK warns on every call naming a model past its announced end-of-life date.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

CLAUDE = "claude-sonnet-4-5-20250929"
HI = [ChatMessage(role="user", content="hi there")]
# "hi there" is 2 words + 3 framing = 5 input tokens at the wire server; the default
# reply is 6 output tokens. gpt-4o: 5 * 2.5 + 6 * 10 = 72.5 per 1M.
HI_COST = "0.0000725"
OPENAI_USAGE: dict[str, Any] = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "total_tokens": 120,
    "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": 0},
}
ANTHROPIC_CACHE_USAGE: dict[str, Any] = {
    "input_tokens": 10,
    "output_tokens": 7,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 200,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
}


@pytest.fixture(autouse=True)
def _clean_dispatcher() -> Iterator[None]:
    """Every test starts and ends with LlamaIndex's root dispatcher as we found it."""
    root = get_dispatcher()
    events, spans = list(root.event_handlers), list(root.span_handlers)
    yield
    uninstrument()
    assert not any(isinstance(h, UsageEventHandler) for h in root.event_handlers)
    root.event_handlers, root.span_handlers = events, spans
    integration._span_parents = None
    integration._span_users.clear()
    forget_spans()


def _openai(wire: WireServer, **kwargs: Any) -> OpenAI:
    return OpenAI(
        model="gpt-4o", api_base=wire.openai_base_url, api_key="test", max_retries=0, **kwargs
    )


def _streaming_openai(wire: WireServer, **kwargs: Any) -> OpenAI:
    extra = {"stream_options": {"include_usage": True}}
    return _openai(wire, additional_kwargs=extra, **kwargs)


def _anthropic(wire: WireServer, **kwargs: Any) -> Anthropic:
    return Anthropic(
        model=CLAUDE, base_url=wire.anthropic_base_url, api_key="test", max_retries=0, **kwargs
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    assert modelforge.flush()
    if not path.exists():
        return []
    return list(sqlite_utils.Database(path)["calls"].rows)


def _one_row(path: Path) -> dict[str, Any]:
    (row,) = _rows(path)
    return row


# --- OpenAI --------------------------------------------------------------------------


def test_openai_chat_records_reported_usage(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply("Hi!", usage=OPENAI_USAGE))
    instrument()
    assert str(_openai(wire).chat(HI).message.content) == "Hi!"

    row = _one_row(db_path)
    assert (row["input_tokens"], row["cache_read_tokens"]) == (100, 40)
    assert (row["output_tokens"], row["reasoning_tokens"], row["total_tokens"]) == (20, 5, 120)
    # (100 - 40) * 2.5 = 150; 40 * 1.25 = 50; (20 - 5) * 10 = 150; reasoning 5 * 10 = 50
    # -> 400 per 1M
    assert row["cost_input"] == "0.00015"
    assert row["cost_cache_read"] == "0.00005"
    assert Decimal(row["cost_output"]) + Decimal(row["cost_reasoning"]) == Decimal("0.0002")
    assert row["cost_usd"] == "0.0004"
    assert row["cost_pusd"] == 400_000_000
    assert (row["framework"], row["operation"], row["provider"]) == ("llamaindex", "chat", "openai")
    assert (row["model"], row["response_model"]) == ("gpt-4o", "gpt-4o")
    assert (row["priced"], row["estimated"], row["status"]) == (1, 0, "ok")
    assert row["run_id"].startswith("llamaindex:OpenAI.chat-")
    assert row["run_name"] == "OpenAI.chat"
    assert row["trace_id"] == row["run_id"]
    assert row["parent_run_id"] is None
    assert row["latency_ms"] > 0
    assert row["ttft_ms"] is None
    assert_row_consistent(row)


def test_openai_complete_is_a_completion_record(wire: WireServer, db_path: Path) -> None:
    instrument()
    assert _openai(wire).complete("hi there").text
    row = _one_row(db_path)
    assert (row["operation"], row["input_tokens"], row["output_tokens"]) == ("completion", 5, 6)
    assert row["cost_usd"] == HI_COST
    assert_row_consistent(row)


def test_served_model_is_kept_beside_the_requested_one(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply(model="gpt-4o-2024-08-06"))
    instrument()
    _openai(wire).chat(HI)
    row = _one_row(db_path)
    assert (row["model"], row["response_model"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert row["cost_usd"] == HI_COST


def test_openai_stream_with_include_usage(wire: WireServer, db_path: Path) -> None:
    instrument()
    chunks = list(_streaming_openai(wire).stream_chat(HI))
    assert len(chunks) > 2

    row = _one_row(db_path)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (5, 6, 0)
    assert row["cost_usd"] == HI_COST
    assert row["estimate_method"] is None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert_row_consistent(row)


@needs_encodings
def test_openai_stream_without_usage_is_estimated_never_zero(
    wire: WireServer, db_path: Path
) -> None:
    instrument()
    text = "".join(c.delta or "" for c in _openai(wire).stream_chat(HI))
    assert text == "Hello from the model-forge wire server."

    row = _one_row(db_path)
    assert (row["estimated"], row["estimate_method"]) == (1, "tiktoken:o200k_base")
    # "hi there" = 2 tokens + 3 for the message + 3 for the reply = 8;
    # the reply is 9 o200k tokens. 8 * 2.5 + 9 * 10 = 110 per 1M
    assert (row["input_tokens"], row["output_tokens"]) == (8, 9)
    assert row["cost_usd"] == "0.00011"
    assert row["status"] == "ok"
    assert_row_consistent(row)


def test_a_stream_is_recorded_when_it_ends_not_before(wire: WireServer, db_path: Path) -> None:
    instrument()
    with track_usage() as session:
        stream = _streaming_openai(wire).stream_chat(HI)
        first = next(stream)
        assert first is not None
        assert session.calls == []
        rest = list(stream)
    assert rest
    assert len(session.calls) == 1
    assert session.total_cost == Decimal(HI_COST)


async def test_async_calls_and_streams_reach_the_callers_session(
    wire: WireServer, db_path: Path
) -> None:
    instrument()
    client = httpx.AsyncClient()
    llm = _streaming_openai(wire, async_http_client=client)

    async def streamed() -> str:
        text = ""
        async for chunk in await llm.astream_chat(HI):
            text += chunk.delta or ""
        return text

    async with track_usage(team="search") as session:
        replies = await asyncio.gather(*(llm.achat(HI) for _ in range(10)))
        assert len(replies) == 10
        assert await streamed() == "Hello from the model-forge wire server."
        await llm.acomplete("hi there")
    await client.aclose()

    assert len(session.calls) == 12
    assert {c.run_id for c in session.calls} == {r["run_id"] for r in _rows(db_path)}
    assert {json.loads(r["attrs"])["team"] for r in _rows(db_path)} == {"search"}
    # 12 calls, each 5 in + 6 out: 12 * 72.5 = 870 per 1M
    assert session.total_cost == Decimal("0.00087")


def test_http_500_is_one_error_record_and_still_raises(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply(status=500))
    instrument()
    with pytest.raises(Exception, match="500"):
        _openai(wire).chat(HI)

    row = _one_row(db_path)
    assert (row["status"], row["error_type"]) == ("error", "InternalServerError")
    # The request failed before the provider answered: nothing was billed.
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, "0")
    assert row["estimated"] == 0


@needs_encodings
def test_an_aborted_stream_records_what_is_known_as_an_error(
    wire: WireServer, db_path: Path
) -> None:
    instrument()
    stream = _streaming_openai(wire).stream_chat(HI)
    next(stream)  # the role chunk
    assert next(stream).delta == "Hello from "
    stream.close()

    row = _one_row(db_path)
    assert (row["status"], row["error_type"]) == ("error", "GeneratorExit")
    assert (row["estimated"], row["estimate_method"]) == (1, "tiktoken:o200k_base")
    # prompt 2 + 3 + 3 = 8; "Hello from " so far = 3. 8 * 2.5 + 3 * 10 = 50 per 1M
    assert (row["input_tokens"], row["output_tokens"]) == (8, 3)
    assert row["cost_usd"] == "0.00005"


def test_a_stream_dropped_mid_loop_is_an_error_record(wire: WireServer, db_path: Path) -> None:
    instrument()

    def consume() -> None:
        for chunk in _openai(wire).stream_chat(HI):
            if chunk.delta:
                raise ValueError("the caller gave up")

    with pytest.raises(ValueError, match="gave up"):
        consume()
    gc.collect()

    row = _one_row(db_path)
    assert (row["status"], row["error_type"], row["estimated"]) == ("error", "GeneratorExit", 1)
    assert (row["input_tokens"], row["output_tokens"]) == (8, 3)


def test_openai_responses_api_chat_and_stream(wire: WireServer, db_path: Path) -> None:
    usage = {
        "input_tokens": 300,
        "input_tokens_details": {"cached_tokens": 128},
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 32},
        "total_tokens": 350,
    }
    wire.enqueue(Reply(usage=usage), Reply(usage=usage))
    instrument()
    llm = OpenAIResponses(
        model="gpt-4o", api_base=wire.openai_base_url, api_key="test", max_retries=0
    )
    llm.chat(HI)
    list(llm.stream_chat(HI))  # usage arrives on the ResponseCompletedEvent

    plain, streamed = _rows(db_path)
    for row in (plain, streamed):
        assert (row["input_tokens"], row["cache_read_tokens"]) == (300, 128)
        assert (row["output_tokens"], row["reasoning_tokens"], row["estimated"]) == (50, 32, 0)
        # (300 - 128) * 2.5 = 430; 128 * 1.25 = 160; 50 * 10 = 500 -> 1090 per 1M
        assert row["cost_usd"] == "0.00109"
        assert (row["provider"], row["response_model"]) == ("openai", "gpt-4o")
        assert_row_consistent(row)
    assert streamed["ttft_ms"] is not None


# --- Anthropic -----------------------------------------------------------------------


def _assert_anthropic_cache_row(row: dict[str, Any]) -> None:
    assert row["model"] == CLAUDE
    assert (row["estimated"], row["status"], row["anomalies"]) == (0, "ok", None)
    assert_anthropic_cache_costs(row)


def test_anthropic_cache_reads_and_5m_and_1h_writes(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply("cached", usage=ANTHROPIC_CACHE_USAGE))
    instrument()
    _anthropic(wire).chat(HI)

    row = _one_row(db_path)
    _assert_anthropic_cache_row(row)
    assert row["response_model"] == CLAUDE
    assert row["operation"] == "chat"


def test_anthropic_stream_cache_reads_and_writes(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(
        Reply("cached and streamed", usage=ANTHROPIC_CACHE_USAGE, anthropic_delta_full_usage=True)
    )
    instrument()
    chunks = list(_anthropic(wire).stream_chat(HI))
    assert len(chunks) > 1

    row = _one_row(db_path)
    _assert_anthropic_cache_row(row)
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


def test_anthropic_stream_without_cache_counts_is_flagged(wire: WireServer, db_path: Path) -> None:
    # An older API's final message_delta carries only the output count, and LlamaIndex
    # does not pass message_start on: the cache counts are nowhere to be read.
    wire.enqueue(Reply("streamed", usage=ANTHROPIC_CACHE_USAGE))
    instrument()
    list(_anthropic(wire).stream_chat(HI))

    row = _one_row(db_path)
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (10, 7, 0)
    assert json.loads(row["anomalies"]) == [
        "anthropic usage has no cache counts; cache tokens unknown"
    ]
    # 10 * 3 + 7 * 15 = 135 per 1M
    assert row["cost_usd"] == "0.000135"


def test_anthropic_usage_kept_from_the_start_of_a_stream() -> None:
    # When a stream's first usage has the cache counts and its last drops them, the
    # counts are kept from the first (per call), with the last one's output count.
    start = {
        "input_tokens": 10,
        "output_tokens": 1,
        **{
            k: ANTHROPIC_CACHE_USAGE[k]
            for k in ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")
        },
    }
    final = {"type": "message_delta", "usage": {"input_tokens": 10, "output_tokens": 7}}
    response = ChatResponse(message=ChatMessage(role="assistant", content="x"), raw=final)
    usage, served, anomalies = from_llamaindex_response(response, "anthropic", start, start)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (510, 200, 7)
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (100, 200)
    assert (served, anomalies, usage.anomalies) == (None, (), ())


def test_anthropic_complete_calling_chat_is_recorded_once(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(
        Reply("one", usage=ANTHROPIC_CACHE_USAGE),
        Reply("two", usage=ANTHROPIC_CACHE_USAGE, anthropic_delta_full_usage=True),
    )
    instrument()
    with track_usage() as session:
        assert _anthropic(wire).complete("hi there").text == "one"
        assert "".join(c.delta or "" for c in _anthropic(wire).stream_complete("hi")) == "two"

    assert len(session.calls) == 2
    rows = _rows(db_path)
    assert [r["operation"] for r in rows] == ["completion", "completion"]
    assert rows[0]["run_id"].startswith("llamaindex:Anthropic.complete-")
    assert rows[1]["run_id"].startswith("llamaindex:Anthropic.stream_complete-")
    for row in rows:
        _assert_anthropic_cache_row(row)
    # two calls at 1770 per 1M each
    assert session.total_cost == Decimal("0.00354")


def test_a_failed_nested_call_is_one_error_record(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply(status=529))
    instrument()
    with pytest.raises(Exception, match="529"):
        _anthropic(wire).complete("hi there")
    row = _one_row(db_path)
    assert row["run_id"].startswith("llamaindex:Anthropic.complete-")
    assert (row["status"], row["error_type"], row["input_tokens"]) == (
        "error",
        "OverloadedError",
        0,
    )


# --- nesting, custom LLMs, malformed responses ----------------------------------------


@needs_encodings
def test_custom_llm_chat_calling_complete_is_recorded_once(db_path: Path) -> None:
    instrument()
    reply = MockLLM(max_tokens=3).chat(HI)
    assert reply.message.content == "text text text"

    row = _one_row(db_path)
    assert row["run_id"].startswith("llamaindex:MockLLM.chat-")
    assert (row["operation"], row["estimated"]) == ("chat", 1)
    # The prompt MockLLM's complete() was sent: "user: hi there\nassistant: " = 8 o200k
    # tokens, counted as a completion prompt (no chat framing); "text text text" = 3.
    assert (row["input_tokens"], row["output_tokens"]) == (8, 3)
    assert (row["model"], row["provider"], row["priced"], row["cost_usd"]) == (None, None, 0, None)


class OddRawLLM(CustomLLM):
    """Answers with whatever `raw` a test hands it."""

    raw: Any = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o", is_chat_model=True)

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role="assistant", content="hello world"),
            raw=self.raw,
            additional_kwargs=self.extra,
        )

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="hello world", raw=self.raw)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        raise NotImplementedError


class Exploding:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")


@needs_encodings
def test_malformed_raw_never_raises_and_still_records(db_path: Path) -> None:
    odd_raws: list[Any] = [
        None,
        "a string",
        b"bytes",
        42,
        ["a", "list"],
        {"usage": "text"},
        {"usage": None, "response": "x", "message": 3},
        {"usage": {"usage": {"prompt_tokens": 12, "completion_tokens": 4}}},
        {"usage": {"prompt_tokens": -3, "completion_tokens": "x"}},
        Exploding(),
    ]
    before = modelforge.stats()["handler_errors"]
    handler = instrument()
    for raw in odd_raws:
        assert OddRawLLM(raw=raw).chat(HI).message.content == "hello world"
    assert handler.errors == 0
    assert modelforge.stats()["handler_errors"] == before

    rows = _rows(db_path)
    assert len(rows) == len(odd_raws)
    for row in rows:
        assert_row_consistent(row)
        assert row["status"] == "ok"
        assert row["input_tokens"] > 0
    nested = rows[7]
    assert (nested["input_tokens"], nested["output_tokens"], nested["estimated"]) == (12, 4, 0)
    # 12 * 2.5 + 4 * 10 = 70 per 1M
    assert nested["cost_usd"] == "0.00007"
    for row in rows[:7] + rows[8:]:
        # "hi there" 2 + 3 + 3 = 8 in; "hello world" = 2 out. 8 * 2.5 + 2 * 10 = 40 per 1M
        assert (row["estimated"], row["input_tokens"], row["output_tokens"]) == (1, 8, 2)
        assert row["cost_usd"] == "0.00004"
    negative = rows[8]
    assert json.loads(negative["anomalies"]) == [
        "prompt_tokens: negative -3 treated as 0",
        "completion_tokens: non-numeric str treated as 0",
    ]


def test_additional_kwargs_are_the_fallback_for_usage(db_path: Path) -> None:
    instrument()
    OddRawLLM(raw={"id": "x"}, extra={"prompt_tokens": 30, "completion_tokens": 5}).chat(HI)
    row = _one_row(db_path)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (30, 5, 0)
    # 30 * 2.5 + 5 * 10 = 125 per 1M
    assert row["cost_usd"] == "0.000125"


SDK_USAGE: dict[str, Any] = {
    "prompt_tokens": 4008,
    "completion_tokens": 17,
    "total_tokens": 4025,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": None},
}


def _sdk_completion(**extra: Any) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hello"},
                }
            ],
            "usage": SDK_USAGE,
            **extra,
        }
    )


# (raw, input, output, cache read, reasoning, service tier, served model, cost, flags).
# gpt-4o and its 2024-08-06 snapshot: (4008 - 1024) * 2.5 = 7460; 1024 cached * 1.25 =
# 1280; (17 - 5) * 10 = 120; 5 reasoning * 10 = 50 -> 8910 per 1M. No flex price, so a
# flex call is priced at the standard price and flagged.
FULL = (4008, 17, 1024, 5)
RAW_SHAPES: list[tuple[Any, ...]] = [
    ({"model": "gpt-4o", "usage": SDK_USAGE, "service_tier": "flex"},
     *FULL, "flex", "gpt-4o", "0.00891", ["tier_unpriced"]),
    (_sdk_completion(), *FULL, None, "gpt-4o-2024-08-06", "0.00891", []),
    (_sdk_completion(usage_note="a newer API's field"),
     *FULL, None, "gpt-4o-2024-08-06", "0.00891", []),
    ({"usage": SDK_USAGE}, *FULL, None, None, "0.00891", []),
    ({"model": "unknown", "usage": SDK_USAGE}, *FULL, None, None, "0.00891", []),
    ({"usage": SDK_USAGE, "service_tier": 3}, *FULL, None, None, "0.00891", []),
    # a streamed Responses ResponseCompletedEvent
    ({"response": {"usage": SDK_USAGE, "model": "gpt-4o"}},
     *FULL, None, "gpt-4o", "0.00891", []),
    # Responses API usage: 3 * 2.5 + 1 * 10 = 17.5 per 1M
    ({"usage": {"input_tokens": 3, "output_tokens": 1}},
     3, 1, 0, 0, None, None, "0.0000175", []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "inp", "out", "read", "reasoning", "tier", "served", "cost", "flags"),
    RAW_SHAPES,
    ids=lambda v: type(v).__name__ if not isinstance(v, (str, int, type(None))) else None,
)
def test_each_raw_shape_is_read_and_priced(
    db_path: Path,
    raw: Any,
    inp: int,
    out: int,
    read: int,
    reasoning: int,
    tier: str | None,
    served: str | None,
    cost: str,
    flags: list[str],
) -> None:
    instrument()
    OddRawLLM(raw=raw).chat(HI)
    row = _one_row(db_path)
    assert (row["input_tokens"], row["output_tokens"]) == (inp, out)
    assert (row["cache_read_tokens"], row["reasoning_tokens"]) == (read, reasoning)
    assert (row["service_tier"], row["response_model"], row["model"]) == (tier, served, "gpt-4o")
    assert (row["cost_usd"], row["estimated"]) == (cost, 0)
    assert json.loads(row["price_flags"] or "[]") == flags
    assert_row_consistent(row)


def test_a_completion_response_is_read_as_a_chat_response(db_path: Path) -> None:
    instrument()
    OddRawLLM(raw={"usage": {"prompt_tokens": 3}}).complete("hi")
    row = _one_row(db_path)
    assert (row["operation"], row["input_tokens"], row["output_tokens"]) == ("completion", 3, 0)
    # 3 * 2.5 = 7.5 per 1M
    assert (row["cost_usd"], row["estimated"]) == ("0.0000075", 0)


def test_handler_errors_never_reach_the_caller(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("pricing exploded")

    before = modelforge.stats()["handler_errors"]
    handler = instrument()
    with monkeypatch.context() as patched:
        patched.setattr(llamaindex_calls, "price_call", broken)
        assert OddRawLLM().chat(HI).message.content == "hello world"
    assert handler.errors == 1
    assert modelforge.stats()["handler_errors"] - before == 1

    # Events LlamaIndex never sends in this order, and junk, are ignored.
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent

    handler.handle(LLMChatEndEvent(messages=[], response=None, span_id="never-started"))
    handler.handle(
        LLMChatStartEvent(messages=[], additional_kwargs={}, model_dict={}, span_id="half")
    )
    handler.handle(LLMChatEndEvent(messages=[], response=None, span_id="half"))
    assert handler.errors == 1
    row = _rows(db_path)[-1]
    assert (row["run_id"], row["model"], row["estimated"]) == ("llamaindex:half", None, 1)


# --- embeddings and a query engine -----------------------------------------------------


@needs_encodings
def test_query_engine_records_one_llm_call_and_the_embeddings(
    wire: WireServer, db_path: Path
) -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128}
    wire.enqueue(Reply("In the Ituri forest.", usage=usage))
    docs = [
        Document(text="The okapi lives in the Ituri forest."),
        Document(text="Zebras have stripes."),
    ]
    with track_usage(llamaindex=True) as session:
        index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
        answer = index.as_query_engine(llm=_openai(wire)).query("Where does the okapi live?")
    assert str(answer) == "In the Ituri forest."

    rows = _rows(db_path)
    assert len(session.calls) == len(rows) == 3
    build, query, chat = rows
    assert [r["operation"] for r in rows] == ["embedding", "embedding", "chat"]
    # MockEmbedding names no model, so its chunks are counted with o200k_base:
    # "The okapi lives in the Ituri forest." 10 + "Zebras have stripes." 6 = 16
    assert (build["input_tokens"], build["output_tokens"], build["estimated"]) == (16, 0, 1)
    # "Where does the okapi live?" = 7
    assert query["input_tokens"] == 7
    for row in (build, query):
        assert (row["estimate_method"], row["priced"], row["model"]) == (
            "tiktoken:o200k_base",
            0,
            None,
        )
    assert (chat["input_tokens"], chat["output_tokens"], chat["estimated"]) == (120, 8, 0)
    # 120 * 2.5 + 8 * 10 = 380 per 1M
    assert chat["cost_usd"] == "0.00038"
    assert session.total_cost == Decimal("0.00038")
    # The chat happened inside the query: a parent span and a trace above it.
    assert chat["parent_run_id"].startswith("llamaindex:")
    assert chat["trace_id"] not in (chat["run_id"], chat["parent_run_id"])
    assert query["trace_id"] == chat["trace_id"]


@needs_encodings
def test_openai_embeddings_are_estimated_and_priced(wire: WireServer, db_path: Path) -> None:
    instrument()
    model = OpenAIEmbedding(
        model="text-embedding-3-small",
        api_base=wire.openai_base_url,
        api_key="test",
        max_retries=0,
    )
    assert len(model.get_text_embedding_batch(["alpha beta gamma", "delta"])) == 2
    model.get_query_embedding("alpha beta gamma")

    batch, query = _rows(db_path)
    for row in (batch, query):
        assert (row["operation"], row["provider"]) == ("embedding", "openai")
        assert (row["model"], row["estimated"]) == ("text-embedding-3-small", 1)
        assert row["estimate_method"] == "tiktoken:cl100k_base"
        assert_row_consistent(row)
    # cl100k: "alpha beta gamma" 3 + "delta" 1 = 4; 4 * 0.02 = 0.08 per 1M
    assert (batch["input_tokens"], batch["cost_usd"]) == (4, "0.00000008")
    # 3 * 0.02 = 0.06 per 1M
    assert (query["input_tokens"], query["cost_usd"]) == (3, "0.00000006")


def test_a_failed_embedding_is_an_error_record(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply(status=400))
    instrument()
    model = OpenAIEmbedding(api_base=wire.openai_base_url, api_key="test", max_retries=0)
    with pytest.raises(Exception, match="400"):
        model.get_query_embedding("where")
    row = _one_row(db_path)
    assert (row["operation"], row["status"], row["error_type"]) == (
        "embedding",
        "error",
        "BadRequestError",
    )


# --- the legacy callback handler -------------------------------------------------------


@needs_encodings
def test_legacy_callback_handler_records_the_same_calls(wire: WireServer, db_path: Path) -> None:
    handler = LlamaIndexCallbackHandler()
    manager = CallbackManager([handler])
    wire.enqueue(
        Reply("Hi!", usage=OPENAI_USAGE),
        Reply("cached", usage=ANTHROPIC_CACHE_USAGE),
    )
    _openai(wire, callback_manager=manager).chat(HI)
    _anthropic(wire, callback_manager=manager).complete("hi there")
    MockLLM(max_tokens=3, callback_manager=manager).chat(HI)
    list(_streaming_openai(wire, callback_manager=manager).stream_chat(HI))
    embed = OpenAIEmbedding(
        model="text-embedding-3-small",
        api_base=wire.openai_base_url,
        api_key="test",
        max_retries=0,
        callback_manager=manager,
    )
    embed.get_text_embedding_batch(["alpha beta gamma", "delta"])
    assert handler.errors == 0

    chat, anthropic, mock, streamed, embedding = _rows(db_path)
    assert all(r["framework"] == "llamaindex" for r in (chat, anthropic, mock, streamed))
    assert chat["cost_usd"] == "0.0004"  # as in test_openai_chat_records_reported_usage
    assert chat["run_id"].startswith("llamaindex:OpenAI.chat-")
    _assert_anthropic_cache_row(anthropic)  # complete() -> chat() recorded once
    assert anthropic["operation"] == "completion"
    assert (mock["input_tokens"], mock["output_tokens"], mock["estimated"]) == (8, 3, 1)
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (5, 6)
    assert streamed["cost_usd"] == HI_COST
    assert (embedding["input_tokens"], embedding["cost_usd"]) == (4, "0.00000008")


def test_the_old_name_of_the_legacy_handler_still_works_and_warns() -> None:
    import modelforge.llamaindex

    for module in (modelforge.llamaindex, integration):
        with pytest.warns(DeprecationWarning, match="use LlamaIndexCallbackHandler"):
            old = module.UsageCallbackHandler  # type: ignore[attr-defined]
        assert old is LlamaIndexCallbackHandler
    with pytest.raises(AttributeError):
        modelforge.llamaindex.NoSuchHandler  # type: ignore[attr-defined]  # noqa: B018


def test_legacy_handler_through_settings_and_an_aborted_stream(
    wire: WireServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = LlamaIndexCallbackHandler()
    monkeypatch.setattr(Settings, "_callback_manager", CallbackManager([handler]))
    stream = _openai(wire).stream_chat(HI)
    next(stream)
    stream.close()

    row = _one_row(db_path)
    assert (row["status"], row["error_type"], row["estimated"]) == ("error", "GeneratorExit", 1)
    # The chunks never reach a legacy handler, so only the prompt is known:
    # 2 + 3 + 3 = 8 tokens; 8 * 2.5 = 20 per 1M
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (8, 0, "0.00002")


def test_both_handlers_on_one_call_store_one_row(wire: WireServer, db_path: Path) -> None:
    instrument()
    _openai(wire, callback_manager=CallbackManager([LlamaIndexCallbackHandler()])).chat(HI)
    assert len(_rows(db_path)) == 1


# --- track_usage() and instrument() ----------------------------------------------------


def test_track_usage_catches_langchain_and_llamaindex_each_once(
    wire: WireServer, db_path: Path
) -> None:
    root = get_dispatcher()
    before = list(root.event_handlers)
    langchain_llm = ChatOpenAI(
        model="gpt-4o", base_url=wire.openai_base_url, api_key="test", max_retries=0
    )
    with track_usage(llamaindex=True, project="both") as session:
        assert any(isinstance(h, UsageEventHandler) for h in root.event_handlers)
        langchain_llm.invoke("hi there")
        _openai(wire).chat(HI)
    assert root.event_handlers == before

    assert sorted(c.framework for c in session.calls) == ["langchain", "llamaindex"]
    rows = _rows(db_path)
    assert sorted(r["framework"] for r in rows) == ["langchain", "llamaindex"]
    assert {c.run_id for c in session.calls} == {r["run_id"] for r in rows}
    assert {json.loads(r["attrs"])["project"] for r in rows} == {"both"}
    # LangChain's "hi there" is also 2 words + 3 = 5 in, 6 out: 2 * 72.5 = 145 per 1M
    assert session.total_cost == Decimal("0.000145")


def test_track_usage_sees_llamaindex_calls_once_instrumented(
    wire: WireServer, db_path: Path
) -> None:
    with track_usage() as before:
        _openai(wire).chat(HI)
    assert before.calls == []
    instrument()
    with track_usage() as outer:
        with track_usage() as inner:
            _openai(wire).chat(HI)
        _openai(wire).complete("hi there")
    assert len(inner.calls) == 1
    assert len(outer.calls) == 2
    assert len(_rows(db_path)) == 2


def test_instrument_is_idempotent_and_blocks_leave_it_as_found(wire: WireServer) -> None:
    root = get_dispatcher()
    # Handlers built directly (other tests do) keep the span tracker while they live.
    gc.collect()
    trackers_before = [h for h in root.span_handlers if isinstance(h, integration.SpanParents)]

    def ours() -> list[Any]:
        return [h for h in root.event_handlers if isinstance(h, UsageEventHandler)]

    first = instrument()
    assert instrument() is first
    assert ours() == [first]
    with track_usage(llamaindex=True):
        assert ours() == [first]
    assert ours() == [first]  # instrumented before the block, so still on
    uninstrument()
    uninstrument()
    assert ours() == []

    with track_usage(llamaindex=True):
        with track_usage(llamaindex=True):
            assert len(ours()) == 1
        assert len(ours()) == 1  # the outer block still needs it
    assert ours() == []

    with track_usage(llamaindex=True):
        instrument()  # asked for explicitly: it outlives the block
    assert len(ours()) == 1
    uninstrument()
    assert ours() == []
    trackers = [h for h in root.span_handlers if isinstance(h, integration.SpanParents)]
    assert trackers == trackers_before


def test_overlapping_blocks_keep_instrumentation_until_the_last_ends() -> None:
    first = integration.activate_tracking(())
    second = integration.activate_tracking(())
    first()
    first()  # a second undo is a no-op
    assert integration._installed is not None
    second()
    assert integration._installed is None


def test_a_call_belongs_to_the_blocks_open_where_it_started(wire: WireServer) -> None:
    instrument()
    with track_usage() as session:
        stream = _streaming_openai(wire).stream_chat(HI)
    with track_usage() as later:
        assert list(stream)
    assert len(session.calls) == 1
    assert len(later.calls) == 1  # consumed inside this block too
    assert session.calls[0].run_id == later.calls[0].run_id


def test_instrument_tags_named_in_metadata_keys_become_attributes(
    wire: WireServer, db_path: Path
) -> None:
    instrument()
    with instrument_tags({"user_id": "u-7", "prompt_hint": "not copied"}):
        _openai(wire).chat(HI)
    row = _one_row(db_path)
    assert json.loads(row["attrs"]) == {"user_id": "u-7"}


def test_import_modelforge_and_track_usage_do_not_import_llama_index() -> None:
    code = (
        "import sys, modelforge\n"
        "with modelforge.track_usage(persist=False):\n"
        "    pass\n"
        "print(any(m.startswith('llama_index') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- privacy ---------------------------------------------------------------------------


def test_no_prompt_or_response_text_reaches_the_log(wire: WireServer, db_path: Path) -> None:
    prompt = "zebra-prompt-secret-7731"
    answer = "okapi-answer-secret-4410"
    wire.enqueue(Reply(answer), Reply(answer), Reply(answer), Reply(answer))
    instrument()
    message = [ChatMessage(role="user", content=prompt)]
    assert _openai(wire).chat(message).message.content == answer
    assert "".join(c.delta or "" for c in _openai(wire).stream_chat(message)) == answer
    assert _anthropic(wire).complete(prompt).text == answer
    handler = LlamaIndexCallbackHandler()
    _openai(wire, callback_manager=CallbackManager([handler])).complete(prompt)
    MockEmbedding(embed_dim=8).get_text_embedding_batch([prompt, answer])
    assert len(_rows(db_path)) == 5

    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    for path in files:
        data = path.read_bytes()
        assert prompt.encode() not in data
        assert answer.encode() not in data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(db_path)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert prompt not in dump
    assert answer not in dump
