"""Issue 3 acceptance: real LangChain chat models, through the loopback wire server, into
the usage log. Every expected cost is worked out by hand beside the assertion.

Prices (USD per 1M tokens, from the bundled table):
  gpt-4o / gpt-4o-2024-08-06   input 2.5, output 10, cache_read 1.25, no flex mode
  gpt-5-mini                   input 0.25, output 2, cache_read 0.025;
                               flex mode: input 0.125, output 1, cache_read 0.0125
  claude-sonnet-4-5-20250929   input 3, output 15, cache_read 0.3, cache_write 3.75,
                               cache_write_1h 6
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict, cast
from uuid import UUID, uuid4

import httpx
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.caches import InMemoryCache
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnableParallel
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

import modelforge
from encodings_on_disk import needs_encodings
from modelforge import config, track_usage
from modelforge.integrations.langchain import read_llm_result
from modelforge.langchain import UsageCallbackHandler
from modelforge.usage import Usage
from modelforge.wire import Reply, WireServer
from row_checks import assert_anthropic_cache_costs, assert_row_consistent

# The anthropic SDK warns on every call naming a model past its announced end-of-life date.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

CLAUDE = "claude-sonnet-4-5-20250929"
# The wire server's default reply, "Hello from the model-forge wire server.", is 6 words,
# so it reports 6 output tokens; a one-word prompt ("q") is 1 word + 3 framing = 4 input.
# gpt-4o: 4 * 2.5 + 6 * 10 = 70 per 1M -> 0.00007
DEFAULT_Q_COST = Decimal("0.00007")


def _openai(wire: WireServer, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("model", "gpt-4o")
    return ChatOpenAI(base_url=wire.openai_base_url, api_key="test", max_retries=0, **kwargs)


def _anthropic(wire: WireServer, **kwargs: Any) -> ChatAnthropic:
    return ChatAnthropic(
        model=CLAUDE, base_url=wire.anthropic_base_url, api_key="test", max_retries=0, **kwargs
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    assert modelforge.flush()
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM calls ORDER BY id")]
    finally:
        conn.close()


def _one_row(path: Path) -> dict[str, Any]:
    (row,) = _rows(path)
    return row


def _cb(handler: Any, **extra: Any) -> RunnableConfig:
    return cast(RunnableConfig, {"callbacks": [handler], **extra})


# --- OpenAI --------------------------------------------------------------------------


def test_openai_cached_prompt_tokens_are_priced_at_the_cache_rate(
    wire: WireServer, db_path: Path
) -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    wire.enqueue(Reply("Hi!", usage=usage))
    _openai(wire).invoke("hello", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (100, 40, 20)
    assert row["total_tokens"] == 120
    # (100 - 40) * 2.5 = 150; 40 * 1.25 = 50; 20 * 10 = 200 -> 400 per 1M
    assert row["cost_input"] == "0.00015"
    assert row["cost_cache_read"] == "0.00005"
    assert row["cost_output"] == "0.0002"
    assert row["cost_usd"] == "0.0004"
    assert row["cost_pusd"] == 400_000_000
    assert (row["priced"], row["estimated"], row["status"]) == (1, 0, "ok")
    assert (row["provider"], row["framework"], row["operation"]) == ("openai", "langchain", "chat")
    assert_row_consistent(row)


def test_openai_reasoning_tokens_are_part_of_output(wire: WireServer, db_path: Path) -> None:
    usage = {
        "prompt_tokens": 2000,
        "completion_tokens": 800,
        "total_tokens": 2800,
        "prompt_tokens_details": {"cached_tokens": 1500},
        "completion_tokens_details": {"reasoning_tokens": 640},
    }
    wire.enqueue(Reply("42", usage=usage))
    _openai(wire, model="gpt-5-mini").invoke("think", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (800, 640)
    # input 500 * 0.25 = 125; cache read 1500 * 0.025 = 37.5;
    # visible output 160 * 2 = 320; reasoning 640 * 2 = 1280 -> 1762.5 per 1M
    assert row["cost_input"] == "0.000125"
    assert row["cost_cache_read"] == "0.0000375"
    assert row["cost_output"] == "0.00032"
    assert row["cost_reasoning"] == "0.00128"
    assert row["cost_usd"] == "0.0017625"
    assert row["cost_pusd"] == 1_762_500_000
    assert_row_consistent(row)


def test_served_model_is_kept_beside_the_requested_one(wire: WireServer, db_path: Path) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    wire.enqueue(Reply("ok", usage=usage, model="gpt-4o-2024-08-06"))
    _openai(wire).invoke("hello", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    assert row["model"] == "gpt-4o"
    assert row["response_model"] == "gpt-4o-2024-08-06"
    assert row["catalog_model"] == "openai/gpt-4o-2024-08-06"
    # 1000 * 2.5 + 100 * 10 = 3500 per 1M
    assert row["cost_usd"] == "0.0035"


def test_openai_stream_with_stream_usage_records_reported_usage_and_ttft(
    wire: WireServer, db_path: Path
) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    wire.enqueue(Reply("streamed words arrive here", usage=usage, chunks=4))
    model = _openai(wire, stream_usage=True)
    text = "".join(str(c.content) for c in model.stream("hi", config=_cb(UsageCallbackHandler())))
    assert text == "streamed words arrive here"

    row = _one_row(db_path)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (100, 20, 0)
    assert row["estimate_method"] is None
    # 100 * 2.5 + 20 * 10 = 450 per 1M
    assert row["cost_usd"] == "0.00045"
    assert row["latency_ms"] > 0
    assert row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


@needs_encodings
def test_openai_stream_without_usage_is_estimated_never_zero(
    wire: WireServer, db_path: Path
) -> None:
    model = _openai(wire, stream_usage=False)
    chunks = list(model.stream("hello there", config=_cb(UsageCallbackHandler())))
    assert all(c.usage_metadata is None for c in chunks)  # the provider reported nothing

    row = _one_row(db_path)
    assert row["estimated"] == 1
    assert row["estimate_method"] == "tiktoken:o200k_base"
    # o200k_base: "hello there" = 2 tokens, + 3 for the message + 3 for the reply = 8;
    # "Hello from the model-forge wire server." = 9 tokens.
    assert (row["input_tokens"], row["output_tokens"]) == (8, 9)
    # 8 * 2.5 + 9 * 10 = 110 per 1M
    assert row["cost_usd"] == "0.00011"
    assert row["ttft_ms"] is not None
    assert_row_consistent(row)


def test_n_2_counts_usage_once(wire: WireServer, db_path: Path) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}
    wire.enqueue(Reply("two of these", usage=usage))
    result = _openai(wire, n=2).generate([[HumanMessage("hi")]], callbacks=[UsageCallbackHandler()])
    assert len(result.generations[0]) == 2

    row = _one_row(db_path)
    assert (row["input_tokens"], row["output_tokens"]) == (10, 30)
    # 10 * 2.5 + 30 * 10 = 325 per 1M
    assert row["cost_usd"] == "0.000325"


def test_http_500_is_one_error_record_and_still_raises(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply(status=500))
    with pytest.raises(openai.InternalServerError) as raised:
        _openai(wire).invoke("hello", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    assert row["status"] == "error"
    # langchain-openai re-raises the SDK error as its own subclass; the row names what
    # the caller actually caught.
    assert row["error_type"] == type(raised.value).__name__ == "OpenAIAPIError"
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (0, 0, 0)
    assert row["cost_usd"] == "0"
    assert row["latency_ms"] > 0


def test_llm_cache_hit_is_recorded_at_zero_cost(wire: WireServer, db_path: Path) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    wire.enqueue(Reply("cached answer", usage=usage))
    model = _openai(wire, cache=InMemoryCache())
    handler = UsageCallbackHandler()
    first = model.invoke("same question", config=_cb(handler))
    second = model.invoke("same question", config=_cb(handler))
    assert first.content == second.content == "cached answer"
    assert len(wire.requests) == 1  # the second answer came from the cache

    miss, hit = _rows(db_path)
    # 10 * 2.5 + 2 * 10 = 45 per 1M
    assert (miss["cache_hit"], miss["cost_usd"]) == (0, "0.000045")
    assert (hit["cache_hit"], hit["cost_usd"], hit["cost_pusd"]) == (1, "0", 0)
    assert hit["priced"] == 1
    assert json.loads(hit["price_flags"]) == ["cache_hit"]
    assert hit["run_id"] != miss["run_id"]


def test_flex_service_tier_uses_the_flex_price(wire: WireServer, db_path: Path) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "prompt_tokens_details": {"cached_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 60},
    }
    wire.enqueue(Reply("ok", usage=usage, service_tier="flex"))
    _openai(wire, model="gpt-5-mini").invoke("x", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    assert row["service_tier"] == "flex"
    assert (row["cache_read_tokens"], row["reasoning_tokens"]) == (400, 60)
    assert json.loads(row["price_flags"]) == ["service_tier:flex"]
    # flex: input 600 * 0.125 = 75; cache read 400 * 0.0125 = 5;
    # visible output 40 * 1 = 40; reasoning 60 * 1 = 60 -> 180 per 1M
    assert row["cost_usd"] == "0.00018"


def test_service_tier_without_a_price_is_flagged(wire: WireServer, db_path: Path) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    wire.enqueue(Reply("ok", usage=usage, service_tier="flex"))
    _openai(wire).invoke("x", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    assert row["service_tier"] == "flex"
    assert json.loads(row["price_flags"]) == ["tier_unpriced"]
    # gpt-4o has no flex price, so the standard one applies: 1000 * 2.5 + 100 * 10 = 3500
    assert row["cost_usd"] == "0.0035"


def test_default_service_tier_is_not_recorded(wire: WireServer, db_path: Path) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    wire.enqueue(Reply("ok", usage=usage, service_tier="default"))
    _openai(wire).invoke("x", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    # The API names its standard tier "default" on every response: standard price, no flag.
    assert (row["service_tier"], row["price_flags"]) == (None, None)
    # 1000 * 2.5 + 100 * 10 = 3500 per 1M
    assert row["cost_usd"] == "0.0035"


# --- Anthropic -----------------------------------------------------------------------

ANTHROPIC_CACHE_USAGE = {
    "input_tokens": 10,
    "output_tokens": 7,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 200,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
}


def _assert_anthropic_cache_row(row: dict[str, Any]) -> None:
    assert row["model"] == row["response_model"] == CLAUDE
    assert_anthropic_cache_costs(row)


def test_anthropic_cache_writes_and_reads(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(Reply("cached", usage=ANTHROPIC_CACHE_USAGE))
    _anthropic(wire).invoke("hello", config=_cb(UsageCallbackHandler()))

    row = _one_row(db_path)
    _assert_anthropic_cache_row(row)
    assert row["ttft_ms"] is None


def test_anthropic_stream_cache_writes_and_reads(wire: WireServer, db_path: Path) -> None:
    wire.enqueue(
        Reply("cached and streamed", usage=ANTHROPIC_CACHE_USAGE, anthropic_delta_full_usage=True)
    )
    chunks = list(_anthropic(wire).stream("hello", config=_cb(UsageCallbackHandler())))
    assert len(chunks) > 1

    row = _one_row(db_path)
    _assert_anthropic_cache_row(row)
    assert row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


# --- chains, batches, concurrency ----------------------------------------------------


def test_lcel_parallel_chain_attribution(wire: WireServer, db_path: Path) -> None:
    collector = RunCollectorCallbackHandler()
    drafter = _openai(wire).with_config(run_name="drafter", tags=["draft"])
    chain = RunnableLambda(lambda x: x) | RunnableParallel(a=drafter, b=_openai(wire))
    root = uuid4()
    metadata = {
        "user_id": "u-1",
        "session_id": "s-1",
        "agent": "triage",
        "project": "demo",
        "secret_key": "never-stored",
    }
    chain.invoke(
        "q",
        config=RunnableConfig(
            callbacks=[UsageCallbackHandler(), collector],
            run_id=root,
            tags=["top"],
            metadata=metadata,
        ),
    )

    (trace,) = collector.traced_runs
    assert trace.id == root
    parallel = trace.child_runs[1]
    model_runs = {str(r.id): r for r in parallel.child_runs}
    rows = _rows(db_path)
    assert len(rows) == 2
    assert {r["run_id"] for r in rows} == set(model_runs)
    by_name = {r["run_name"]: r for r in rows}
    assert set(by_name) == {"drafter", None}
    for row in rows:
        assert row["trace_id"] == str(root)
        assert row["parent_run_id"] == str(parallel.id)
        assert row["agent"] == "triage"
        assert json.loads(row["attrs"]) == {
            "user_id": "u-1",
            "session_id": "s-1",
            "agent": "triage",
            "project": "demo",
        }
        assert row["cost_usd"] == str(DEFAULT_Q_COST)
    assert json.loads(by_name["drafter"]["tags"]) == ["map:key:a", "draft", "top"]
    assert json.loads(by_name[None]["tags"]) == ["map:key:b", "top"]
    assert b"never-stored" not in db_path.read_bytes()


async def test_abatch_of_50_records_each_call_once(wire: WireServer, db_path: Path) -> None:
    handler = UsageCallbackHandler()
    # An own client, closed before the event loop ends, so no pooled socket outlives the test.
    async with httpx.AsyncClient() as client:
        model = _openai(wire, http_async_client=client)
        results = await model.abatch(["q"] * 50, config=_cb(handler))
    assert len(results) == 50

    rows = _rows(db_path)
    assert len(rows) == 50
    assert len({r["run_id"] for r in rows}) == 50
    # 50 calls * 70 per 1M = 3500 per 1M
    conn = sqlite3.connect(db_path)
    (total,) = conn.execute("SELECT SUM(cost_pusd) FROM calls").fetchone()
    conn.close()
    assert total == 3_500_000_000
    assert handler.errors == 0


def test_thread_batch_records_each_call_once(wire: WireServer, db_path: Path) -> None:
    handler = UsageCallbackHandler()
    results = _openai(wire).batch(["q"] * 24, config=_cb(handler, max_concurrency=8))
    assert len(results) == 24

    rows = _rows(db_path)
    assert len(rows) == 24
    assert len({r["run_id"] for r in rows}) == 24
    assert {r["cost_usd"] for r in rows} == {"0.00007"}


# --- handlers and track_usage() ------------------------------------------------------


def test_two_handlers_on_one_call_write_one_row(wire: WireServer, db_path: Path) -> None:
    before = modelforge.stats()["duplicates"]
    first, second = UsageCallbackHandler(), UsageCallbackHandler()
    _openai(wire).invoke("q", config=RunnableConfig(callbacks=[first, second]))

    row = _one_row(db_path)
    assert row["cost_usd"] == "0.00007"
    assert modelforge.stats()["duplicates"] - before == 1


# --- LangGraph -----------------------------------------------------------------------


class _State(TypedDict):
    question: str
    plan: str
    answer: str


def test_langgraph_node_becomes_agent(wire: WireServer, db_path: Path) -> None:
    model = _openai(wire)

    def planner(state: _State, config: RunnableConfig) -> dict[str, str]:
        return {"plan": str(model.invoke(state["question"], config).content)}

    def writer(state: _State, config: RunnableConfig) -> dict[str, str]:
        return {"answer": str(model.invoke(state["plan"], config).content)}

    builder = StateGraph(_State)
    builder.add_node("planner", planner)
    builder.add_node("writer", writer)
    builder.add_edge(START, "planner")
    builder.add_edge("planner", "writer")
    builder.add_edge("writer", END)
    graph = builder.compile()
    root = uuid4()
    wire.enqueue(Reply("make a plan"), Reply("final answer"))
    state = graph.invoke(
        {"question": "q", "plan": "", "answer": ""},
        config=_cb(UsageCallbackHandler(), run_id=root),
    )
    assert state["answer"] == "final answer"

    plan_row, answer_row = _rows(db_path)
    assert (plan_row["agent"], answer_row["agent"]) == ("planner", "writer")
    assert plan_row["trace_id"] == answer_row["trace_id"] == str(root)
    assert plan_row["parent_run_id"] is not None
    assert plan_row["parent_run_id"] != answer_row["parent_run_id"]
    # "q": 4 in, 3 words out: 4 * 2.5 + 3 * 10 = 40; "make a plan": 3 + 3 = 6 in,
    # 2 words out: 6 * 2.5 + 2 * 10 = 35 (per 1M)
    assert (plan_row["cost_usd"], answer_row["cost_usd"]) == ("0.00004", "0.000035")


# --- opt-out and privacy ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "do_not_track", "config"])
def test_telemetry_off_writes_no_file_but_sessions_count(
    how: str, wire: WireServer, db_path: Path, user_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "env":
        monkeypatch.setenv("MODELFORGE_TELEMETRY", "0")
    elif how == "do_not_track":
        monkeypatch.setenv("DO_NOT_TRACK", "1")
    else:
        config.save_setting("telemetry", False)

    with track_usage() as session:
        _openai(wire).invoke("q", config=_cb(UsageCallbackHandler()))
        _openai(wire).invoke("q")
    assert modelforge.flush()

    assert len(session.calls) == 2
    assert session.total_cost == 2 * DEFAULT_Q_COST
    assert not db_path.exists()
    assert list(user_dirs.rglob("*.db*")) == []


def test_persist_false_writes_no_file_but_sessions_count(
    wire: WireServer, db_path: Path, user_dirs: Path
) -> None:
    _openai(wire).invoke("q", config=_cb(UsageCallbackHandler(persist=False)))
    with track_usage(persist=False) as session:
        _openai(wire).invoke("q", config=_cb(UsageCallbackHandler(persist=False)))
    assert modelforge.flush()

    assert len(session.calls) == 1
    assert session.total_cost == DEFAULT_Q_COST
    assert not db_path.exists()
    assert list(user_dirs.rglob("*.db*")) == []


def test_no_prompt_or_response_text_reaches_the_log(wire: WireServer, db_path: Path) -> None:
    prompt = "zebra-prompt-secret-7731"
    answer = "okapi-answer-secret-4410"
    wire.enqueue(Reply(answer), Reply(answer))
    handler = UsageCallbackHandler()
    assert _openai(wire).invoke(prompt, config=_cb(handler)).content == answer
    streamed = "".join(
        str(c.content)
        for c in _openai(wire, stream_usage=False).stream(prompt, config=_cb(handler))
    )
    assert streamed == answer
    assert len(_rows(db_path)) == 2

    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    for path in files:
        data = path.read_bytes()
        assert prompt.encode() not in data
        assert answer.encode() not in data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# --- robustness ----------------------------------------------------------------------


@needs_encodings
def test_handler_errors_never_reach_the_caller(db_path: Path) -> None:
    before = modelforge.stats()
    handler = UsageCallbackHandler()
    serialized = {"id": ["langchain", "chat_models", "openai", "ChatOpenAI"]}

    # A result LangChain would never build: still a record, estimated from the prompt.
    unreadable = uuid4()
    handler.on_chat_model_start(
        serialized,
        [[HumanMessage("hello there")]],
        run_id=unreadable,
        invocation_params={"model": "gpt-4o"},
    )
    garbage = LLMResult.model_construct(
        generations=[[object(), None, 5]],  # type: ignore[list-item]
        llm_output="bad",  # type: ignore[arg-type]
    )
    handler.on_llm_end(garbage, run_id=unreadable)

    # Usage with a string, a negative and a part larger than its whole.
    odd = uuid4()
    handler.on_chat_model_start(
        serialized, [[HumanMessage("hi")]], run_id=odd, invocation_params={"model": "gpt-4o"}
    )
    message = AIMessage(content="ok")
    message.usage_metadata = {  # type: ignore[assignment]
        "input_tokens": "12",
        "output_tokens": -5,
        "total_tokens": "x",
        "input_token_details": {"cache_read": 99},
    }
    handler.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]), run_id=odd)

    # Runs that never started, and junk arguments.
    stranger = uuid4()
    handler.on_llm_end(LLMResult(generations=[]), run_id=stranger)
    handler.on_llm_error(RuntimeError("boom"), run_id=stranger)
    handler.on_llm_new_token("tok", run_id=stranger)
    handler.on_chain_end({}, run_id=stranger)
    handler.on_chat_model_start(
        None,  # type: ignore[arg-type]
        "not messages",  # type: ignore[arg-type]
        run_id=stranger,
        metadata={"langgraph_node": 42, "user_id": ["a", 1]},
        tags=[1, None],  # type: ignore[list-item]
        name=123,
    )
    handler.on_llm_end(None, run_id=stranger)  # type: ignore[arg-type]

    after = modelforge.stats()
    assert handler.errors == 1
    assert after["handler_errors"] - before["handler_errors"] == 1
    assert after["anomalies"] - before["anomalies"] == 3

    rows = {r["run_id"]: r for r in _rows(db_path)}
    assert set(rows) == {str(unreadable), str(odd), str(stranger)}
    for row in rows.values():
        assert_row_consistent(row)

    first = rows[str(unreadable)]
    assert (first["estimated"], first["estimate_method"]) == (1, "tiktoken:o200k_base")
    # "hello there" = 2 tokens + 3 + 3 framing; the output could not be read.
    assert (first["input_tokens"], first["output_tokens"]) == (8, 0)
    # 8 * 2.5 = 20 per 1M
    assert first["cost_usd"] == "0.00002"

    second = rows[str(odd)]
    assert (second["input_tokens"], second["output_tokens"]) == (12, 0)
    assert second["cache_read_tokens"] == 12
    assert json.loads(second["anomalies"]) == [
        "input_tokens: string '12' parsed",
        "output_tokens: negative -5 treated as 0",
        "input parts exceed input_tokens 12; clamped",
    ]
    # all 12 input tokens are cache reads: 12 * 1.25 = 15 per 1M
    assert second["cost_usd"] == "0.000015"

    third = rows[str(stranger)]
    assert (third["model"], third["priced"], third["agent"]) == (None, 0, "42")
    assert json.loads(third["tags"]) == ["1", "None"]
    assert json.loads(third["attrs"]) == {"user_id": '["a", 1]'}
    assert third["run_name"] is None
    assert third["estimated"] == 1


def test_telemetry_switches_take_effect_on_the_next_call(
    wire: WireServer, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, handler = _openai(wire), UsageCallbackHandler()
    model.invoke("q", config=_cb(handler, run_name="one"))
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "0")
    model.invoke("q", config=_cb(handler, run_name="two"))
    monkeypatch.delenv("MODELFORGE_TELEMETRY")
    model.invoke("q", config=_cb(handler, run_name="three"))
    config.save_setting("telemetry", False)
    model.invoke("q", config=_cb(handler, run_name="four"))
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "1")  # beats the config file
    monkeypatch.setenv("MODELFORGE_DB", str(other))
    model.invoke("q", config=_cb(handler, run_name="five"))

    assert [r["run_name"] for r in _rows(db_path)] == ["one", "three"]
    assert [r["run_name"] for r in _rows(other)] == ["five"]


@pytest.mark.parametrize(
    ("details_in", "details_out", "expected"),
    [
        (
            {"cache_read": 1000},
            {"reasoning": 100},
            {"cache_read_tokens": 1000, "reasoning_tokens": 100},
        ),
        # langchain-anthropic: the TTL split, with cache_creation its sum
        (
            {"cache_read": 10, "cache_creation": 300, "ephemeral_5m_input_tokens": 100,
             "ephemeral_1h_input_tokens": 200},
            {},
            {"cache_read_tokens": 10, "cache_write_tokens": 100, "cache_write_1h_tokens": 200},
        ),
        ({"audio": 40}, {"audio": 7}, {"input_audio_tokens": 40, "output_audio_tokens": 7}),
    ],
)  # fmt: skip
def test_usage_metadata_of_a_result_is_read(
    details_in: dict[str, int], details_out: dict[str, int], expected: dict[str, int]
) -> None:
    metadata = {
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "input_token_details": details_in,
        "output_token_details": details_out,
    }
    message = AIMessage(content="x", usage_metadata=metadata)  # type: ignore[arg-type]
    usage, served, tier = read_llm_result(
        LLMResult(generations=[[ChatGeneration(message=message)]])
    )
    assert usage == Usage(input_tokens=1200, output_tokens=300, **expected)
    assert (served, tier) == (None, None)


def test_background_writer_flushes_without_being_asked(wire: WireServer, db_path: Path) -> None:
    _openai(wire).invoke("q", config=_cb(UsageCallbackHandler()))
    # Waits for the writer's own batch timer; no flush() is called.
    started = time.perf_counter()
    count = 0
    while time.perf_counter() - started < 10.0:
        if db_path.exists():
            conn = sqlite3.connect(db_path)
            try:
                (count,) = conn.execute("SELECT COUNT(*) FROM calls").fetchone()
            except sqlite3.OperationalError:  # the writer has not created the table yet
                count = 0
            finally:
                conn.close()
            if count:
                break
        time.sleep(0.005)
    assert count == 1


def test_latency_is_recorded_and_ttft_only_for_streams(wire: WireServer, db_path: Path) -> None:
    handler = UsageCallbackHandler()
    _openai(wire).invoke("q", config=_cb(handler))
    list(_openai(wire, stream_usage=True).stream("q", config=_cb(handler)))

    plain, streamed = _rows(db_path)
    assert plain["latency_ms"] > 0
    assert plain["ttft_ms"] is None
    assert streamed["latency_ms"] > 0
    assert 0 < streamed["ttft_ms"] <= streamed["latency_ms"]


def test_run_ids_are_the_langchain_run_ids(wire: WireServer, db_path: Path) -> None:
    run_id = uuid4()
    _openai(wire).invoke("q", config=_cb(UsageCallbackHandler(), run_id=run_id))
    row = _one_row(db_path)
    assert UUID(row["run_id"]) == run_id
    assert row["trace_id"] == str(run_id)
    assert row["parent_run_id"] is None
