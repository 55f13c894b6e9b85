"""Issue 24, phase 2: the context-window guard (real clients, loopback wire server), the
log's `context_limit` / `context_used` columns (m005) and the utilisation reports.

Windows (price catalog): gpt-4o 128,000; claude-opus-4-1 200,000; claude-sonnet-4-5
200,000, with a long-context price tier above 200,000 that only Anthropic's 1M-context
beta reaches, so the guard holds it to 1,000,000.

The prompt "hello" is 8 tokens on gpt-4o by OpenAI's published chat rule: 3 for the
message + 1 for the role "user" + 1 for "hello" + 3 priming the reply; each further
" hello" adds 1. So with `max_tokens = 128,000 - 8 = 127,992` a call fills gpt-4o's
window exactly, and 127,993 is one token over.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from click.testing import CliRunner
from langchain_anthropic import ChatAnthropic
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.llms.openai import OpenAI

import modelforge
from encodings_on_disk import needs_encodings
from modelforge import ContextWindowExceededError, track_usage
from modelforge.cli import cli
from modelforge.context_guard import LONG_CONTEXT_WINDOW, guard_window, recorded_window
from modelforge.integrations import llamaindex as li_integration
from modelforge.integrations.llamaindex_calls import forget_spans
from modelforge.langchain import UsageCallbackHandler
from modelforge.llamaindex import LlamaIndexCallbackHandler, instrument, uninstrument
from modelforge.pricing.cost import price
from modelforge.pricing.resolve import resolve
from modelforge.records import CallRecord
from modelforge.store import UsageLog, insert_rows, open_db, record_row
from modelforge.usage import Usage
from modelforge.wire import DEFAULT_TEXT, WireServer
from row_checks import row_for_table

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

WINDOW = 128_000  # gpt-4o
HELLO = 8  # "hello" on gpt-4o, worked out above
AT_LIMIT = WINDOW - HELLO  # 127,992 output tokens: exactly the window
OVER = AT_LIMIT + 1


def _rows(path: Path) -> list[dict[str, Any]]:
    assert modelforge.flush()
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM calls ORDER BY id")]
    finally:
        conn.close()


# --- LangChain ----------------------------------------------------------------------------


def _chat_openai(wire: WireServer, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("model", "gpt-4o")
    return ChatOpenAI(base_url=wire.openai_base_url, api_key="test", max_retries=0, **kwargs)


def _cb(handler: UsageCallbackHandler) -> RunnableConfig:
    return cast(RunnableConfig, {"callbacks": [handler]})


async def _langchain_call(model: ChatOpenAI, mode: str, config: RunnableConfig) -> str:
    if mode == "invoke":
        return str(model.invoke("hello", config=config).content)
    if mode == "stream":
        return "".join(str(c.content) for c in model.stream("hello", config=config))
    if mode == "ainvoke":
        return str((await model.ainvoke("hello", config=config)).content)
    return "".join([str(c.content) async for c in model.astream("hello", config=config)])


@needs_encodings
@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
async def test_langchain_guard_sends_nothing_over_the_window_and_lets_the_limit_through(
    wire: WireServer, db_path: Path, mode: str
) -> None:
    handler = UsageCallbackHandler(guard_context=True)
    async with httpx.AsyncClient() as client:
        over = _chat_openai(wire, max_tokens=OVER, http_async_client=client)
        with pytest.raises(ContextWindowExceededError) as caught:
            await _langchain_call(over, mode, _cb(handler))
        assert wire.requests == []
        error = caught.value
        assert (error.model, error.used, error.limit, error.max_output_tokens) == (
            "gpt-4o",
            HELLO,
            WINDOW,
            OVER,
        )
        assert str(error) == (
            "gpt-4o: 8 prompt tokens + 127,993 max output tokens exceed its context window "
            "of 128,000 tokens"
        )

        at_limit = _chat_openai(wire, max_tokens=AT_LIMIT, http_async_client=client)
        assert await _langchain_call(at_limit, mode, _cb(handler)) == DEFAULT_TEXT
    (request,) = wire.requests
    assert request["body"]["max_completion_tokens"] == AT_LIMIT
    # Only the call that was sent is in the log; a blocked one cost nothing.
    (row,) = _rows(db_path)
    assert row["status"] == "ok"
    assert row["context_limit"] == WINDOW
    assert row["context_used"] == row["input_tokens"] > 0
    assert handler.errors == 0


@needs_encodings
def test_a_prompt_of_exactly_the_window_is_sent_and_one_token_more_is_not(
    wire: WireServer, db_path: Path
) -> None:
    handler = UsageCallbackHandler(guard_context=True)
    model = _chat_openai(wire)
    # "hello" + 127,992 × " hello": 127,993 text tokens + 3 + 1 ("user") + 3 = 128,000.
    exact = "hello" + " hello" * 127_992
    with pytest.raises(ContextWindowExceededError) as caught:
        model.invoke(exact + " hello", config=_cb(handler))
    assert (caught.value.used, caught.value.limit, caught.value.max_output_tokens) == (
        128_001,
        WINDOW,
        0,
    )
    assert wire.requests == []

    model.invoke(exact, config=_cb(handler))
    assert len(wire.requests) == 1
    # The wire server counts words + 3 per message: 127,993 + 3.
    (row,) = _rows(db_path)
    assert (row["context_used"], row["context_limit"]) == (127_996, WINDOW)


@needs_encodings
def test_track_usage_guard_context_guards_langchain_calls_in_the_block(
    wire: WireServer, db_path: Path
) -> None:
    over = _chat_openai(wire, max_tokens=OVER)
    with track_usage() as unguarded:
        over.invoke("hello")  # the guard is opt-in: this one is sent
    assert len(wire.requests) == 1 and len(unguarded.calls) == 1

    with track_usage(guard_context=True) as guarded:
        with pytest.raises(ContextWindowExceededError):
            over.invoke("hello")
        with track_usage(), pytest.raises(ContextWindowExceededError):
            over.invoke("hello")  # an inner block keeps the outer block's guard
        _chat_openai(wire, max_tokens=AT_LIMIT).invoke("hello")
    assert len(wire.requests) == 2
    assert len(guarded.calls) == 1


def test_a_model_with_no_known_window_is_never_blocked(wire: WireServer, db_path: Path) -> None:
    handler = UsageCallbackHandler(guard_context=True)
    _chat_openai(wire, model="acme-local-model", max_tokens=10**9).invoke(
        "hello", config=_cb(handler)
    )
    assert len(wire.requests) == 1
    (row,) = _rows(db_path)
    # The wire server's count: 1 word + 3. No window known: NULL, never 0.
    assert (row["context_limit"], row["context_used"]) == (None, 4)


def test_the_guards_own_failure_lets_the_call_through(wire: WireServer, db_path: Path) -> None:
    # A built-in tool has no definition to count: counting fails, inside the handler.
    handler = UsageCallbackHandler(guard_context=True)
    model = _chat_openai(wire).bind(tools=[{"type": "web_search_preview"}])
    model.invoke("hello", config=_cb(handler))
    assert len(wire.requests) == 1
    assert handler.errors == 1
    assert len(_rows(db_path)) == 1


@needs_encodings
def test_claude_sonnet_4_5_is_held_to_the_1m_beta_window_and_opus_to_its_own(
    wire: WireServer, db_path: Path
) -> None:
    handler = UsageCallbackHandler(guard_context=True)

    def claude(model: str, max_tokens: int, **kwargs: Any) -> ChatAnthropic:
        return ChatAnthropic(
            model=model,
            base_url=wire.anthropic_base_url,
            api_key="test",
            max_retries=0,
            max_tokens=max_tokens,
            **kwargs,
        )

    # 300,000 output tokens exceed the catalog's 200,000 but not the 1M beta window.
    beta = claude("claude-sonnet-4-5", 300_000, betas=["context-1m-2025-08-07"])
    beta.invoke("hello", config=_cb(handler))
    assert len(wire.requests) == 1
    assert wire.requests[0]["headers"]["anthropic-beta"] == "context-1m-2025-08-07"
    # Opus 4.1 has no long-context tier: its window is 200,000.
    with pytest.raises(ContextWindowExceededError) as caught:
        claude("claude-opus-4-1", 200_000).invoke("hello", config=_cb(handler))
    assert caught.value.limit == 200_000
    assert len(wire.requests) == 1


# --- LlamaIndex ---------------------------------------------------------------------------


@pytest.fixture
def dispatcher() -> Iterator[None]:
    """LlamaIndex's root dispatcher as we found it, before and after."""
    root = get_dispatcher()
    events, spans = list(root.event_handlers), list(root.span_handlers)
    yield
    uninstrument()
    root.event_handlers, root.span_handlers = events, spans
    li_integration._span_parents = None
    li_integration._span_users.clear()
    forget_spans()


HELLO_MESSAGES = [ChatMessage(role="user", content="hello")]


def _llamaindex_openai(
    wire: WireServer, max_tokens: int, handler: LlamaIndexCallbackHandler | None, **kwargs: Any
) -> OpenAI:
    if handler is not None:
        kwargs["callback_manager"] = CallbackManager([handler])
    return OpenAI(
        model="gpt-4o",
        api_base=wire.openai_base_url,
        api_key="test",
        max_retries=0,
        max_tokens=max_tokens,
        **kwargs,
    )


async def _llamaindex_call(llm: OpenAI, mode: str) -> str:
    if mode == "chat":
        return str(llm.chat(HELLO_MESSAGES).message.content)
    if mode == "stream_chat":
        return "".join(r.delta or "" for r in llm.stream_chat(HELLO_MESSAGES))
    if mode == "complete":
        return llm.complete("hello").text  # one user message, as the request sends it
    if mode == "achat":
        return str((await llm.achat(HELLO_MESSAGES)).message.content)
    text = ""
    async for chunk in await llm.astream_chat(HELLO_MESSAGES):
        text += chunk.delta or ""
    return text


@needs_encodings
@pytest.mark.usefixtures("dispatcher")
@pytest.mark.parametrize("mode", ["chat", "stream_chat", "complete", "achat", "astream_chat"])
async def test_llamaindex_guard_sends_nothing_over_the_window_and_lets_the_limit_through(
    wire: WireServer, db_path: Path, mode: str
) -> None:
    handler = LlamaIndexCallbackHandler(guard_context=True)
    async with httpx.AsyncClient() as client:
        over = _llamaindex_openai(wire, OVER, handler, async_http_client=client)
        with pytest.raises(ContextWindowExceededError) as caught:
            await _llamaindex_call(over, mode)
        assert wire.requests == []
        assert (caught.value.used, caught.value.limit, caught.value.max_output_tokens) == (
            HELLO,
            WINDOW,
            OVER,
        )
        at_limit = _llamaindex_openai(wire, AT_LIMIT, handler, async_http_client=client)
        assert await _llamaindex_call(at_limit, mode) == DEFAULT_TEXT
    (request,) = wire.requests
    assert request["body"]["max_tokens"] == AT_LIMIT
    (row,) = _rows(db_path)
    assert (row["status"], row["context_limit"]) == ("ok", WINDOW)
    assert handler.errors == 0


@needs_encodings
@pytest.mark.usefixtures("dispatcher")
def test_track_usage_guard_context_guards_llamaindex_callback_handlers(
    wire: WireServer, db_path: Path
) -> None:
    llm = _llamaindex_openai(wire, OVER, LlamaIndexCallbackHandler())
    llm.chat(HELLO_MESSAGES)  # no guard asked for: sent
    with track_usage(guard_context=True), pytest.raises(ContextWindowExceededError):
        llm.chat(HELLO_MESSAGES)
    assert len(wire.requests) == 1


@needs_encodings
@pytest.mark.usefixtures("dispatcher")
def test_llamaindex_instrumentation_records_a_blocked_call_but_cannot_block_one(
    wire: WireServer, db_path: Path
) -> None:
    # LlamaIndex's dispatcher swallows every exception an event handler raises, so
    # instrumentation alone cannot stop a call; the callback handler can.
    instrument()
    with track_usage(guard_context=True, llamaindex=True):
        _llamaindex_openai(wire, OVER, None).chat(HELLO_MESSAGES)
        assert len(wire.requests) == 1
        guarded = _llamaindex_openai(wire, OVER, LlamaIndexCallbackHandler(persist=False))
        with pytest.raises(ContextWindowExceededError):
            guarded.chat(HELLO_MESSAGES)
    assert len(wire.requests) == 1
    sent, blocked = _rows(db_path)
    assert sent["status"] == "ok"
    # The instrumentation saw the blocked call start and fail: an error with no tokens.
    assert (blocked["status"], blocked["error_type"]) == ("error", "ContextWindowExceededError")
    assert (blocked["input_tokens"], blocked["cost_usd"]) == (0, "0")


# --- the window rule ----------------------------------------------------------------------


def test_the_guard_window_per_model() -> None:
    assert guard_window(resolve("gpt-4o")) == 128_000
    assert guard_window(resolve("claude-opus-4-1")) == 200_000
    # Priced above 200K although its window is 200K: the 1M-context beta.
    assert guard_window(resolve("claude-sonnet-4-5")) == LONG_CONTEXT_WINDOW == 1_000_000
    assert guard_window(resolve("claude-sonnet-4-20250514")) == 1_000_000
    # Also priced past its window, but no Claude: its own window holds.
    assert guard_window(resolve("gemini-2.5-pro", "github-copilot")) == 128_000
    assert guard_window(resolve("acme-local-model")) is None


@pytest.mark.parametrize(
    ("model", "input_tokens", "limit"),
    [
        ("gpt-4o", 1_000, 128_000),
        ("claude-opus-4-1", 150_000, 200_000),
        ("claude-sonnet-4-5", 200_000, 200_000),
        ("claude-sonnet-4-5", 200_001, 1_000_000),  # past 200K it ran in the 1M beta
        ("acme-local-model", 1_000, None),
    ],
)
def test_the_record_carries_its_window_and_input(
    model: str, input_tokens: int, limit: int | None
) -> None:
    usage = Usage(input_tokens=input_tokens, output_tokens=10)
    record = CallRecord(run_id="r", usage=usage, cost=price(model, usage), model=model)
    row = record_row(record)
    assert (row["context_limit"], row["context_used"]) == (limit, input_tokens)
    assert recorded_window(None, input_tokens) is None


# --- the migration ------------------------------------------------------------------------


def test_a_log_at_the_previous_schema_gains_the_context_columns(tmp_path: Path) -> None:
    from modelforge import migrations

    names = migrations.MIGRATION_NAMES
    previous = names[names.index("m005_context_window") - 1]
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.apply(conn, stop_after=previous)
    usage = Usage(input_tokens=1000, output_tokens=10)
    old = record_row(CallRecord(run_id="old", usage=usage, cost=price("gpt-4o", usage)))
    insert_rows(conn, [row_for_table(conn, old)])
    conn.close()

    migrated = open_db(path)  # opening for writing migrates it
    fresh = open_db(tmp_path / "fresh.db")
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
    assert migrated.execute(schema).fetchall() == fresh.execute(schema).fetchall()
    columns = {row[1]: row[2] for row in fresh.execute("PRAGMA table_info(calls)")}
    assert (columns["context_limit"], columns["context_used"]) == ("INTEGER", "INTEGER")
    (sql,) = fresh.execute("SELECT sql FROM sqlite_master WHERE name = 'calls'").fetchone()
    assert sql.endswith('"anomalies" TEXT\n, "context_limit" INTEGER, "context_used" INTEGER)')
    # The old row has no figures (no window was recorded then); new rows do.
    new = record_row(CallRecord(run_id="new", usage=usage, cost=price("gpt-4o", usage)))
    insert_rows(migrated, [new])
    rows = migrated.execute("SELECT run_id, context_limit, context_used FROM calls ORDER BY id")
    assert rows.fetchall() == [("old", None, None), ("new", 128_000, 1000)]
    migrated.close()
    fresh.close()


# --- reports ------------------------------------------------------------------------------


@pytest.fixture
def window_log(tmp_path: Path) -> Path:
    """Five calls; their share of the window is worked out beside each."""
    calls = [
        ("gpt-4o", 120_000, "2026-11-01T10:00:00.000000Z"),  # 120,000 / 128,000 = 0.9375
        ("gpt-4o", 64_000, "2026-11-02T10:00:00.000000Z"),  # 64,000 / 128,000 = 0.5
        ("claude-sonnet-4-5", 300_000, "2026-11-02T11:00:00.000000Z"),  # / 1M = 0.3
        ("acme-local-model", 500_000, "2026-11-02T12:00:00.000000Z"),  # no window: none
        ("claude-opus-4-1", 170_000, "2026-11-02T13:00:00.000000Z"),  # / 200,000 = 0.85
    ]
    path = tmp_path / "window.db"
    log = UsageLog(path)
    for n, (model, tokens, ts) in enumerate(calls, start=1):
        usage = Usage(input_tokens=tokens, output_tokens=100)
        log.submit(
            CallRecord(run_id=f"run-{n}", usage=usage, cost=price(model, usage), ts=ts, model=model)
        )
    log.close()
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_usage_by_model_shows_peak_utilisation(window_log: Path) -> None:
    code, out = _run("usage", "--db", str(window_log), "--by", "model", "--json")
    assert code == 0, out
    data = json.loads(out)
    peaks = {row["model"]: row["peak_utilization"] for row in data["rows"]}
    assert peaks == {
        "gpt-4o": 0.9375,  # the larger of 0.9375 and 0.5
        "claude-sonnet-4-5": 0.3,
        "claude-opus-4-1": 0.85,
        "acme-local-model": None,
    }
    assert data["totals"]["peak_utilization"] == 0.9375

    code, table = _run("usage", "--db", str(window_log), "--by", "model")
    assert "Peak context" in table and "93.8%" in table and "85.0%" in table and "—" in table
    code, out = _run("usage", "--db", str(window_log), "--by", "day", "--by", "model", "--json")
    by_day = {(r["day"], r["model"]): r["peak_utilization"] for r in json.loads(out)["rows"]}
    assert by_day[("2026-11-01", "gpt-4o")] == 0.9375
    assert by_day[("2026-11-02", "gpt-4o")] == 0.5
    # Without a model grouping there is no peak column.
    code, out = _run("usage", "--db", str(window_log), "--by", "day", "--json")
    assert "peak_utilization" not in json.loads(out)["totals"]


def test_usage_calls_over_lists_calls_above_a_share_of_their_window(window_log: Path) -> None:
    code, out = _run("usage", "calls", "--db", str(window_log), "--over", "0.8", "--json")
    assert code == 0, out
    calls = json.loads(out)
    # 0.85 (run-5) and 0.9375 (run-1), newest first; 0.5, 0.3 and the unknown are not.
    assert [c["run_id"] for c in calls] == ["run-5", "run-1"]
    assert [(c["context_used"], c["context_limit"]) for c in calls] == [
        (170_000, 200_000),
        (120_000, 128_000),
    ]
    code, out = _run("usage", "calls", "--db", str(window_log), "--over", "0.9375", "--json")
    assert json.loads(out) == []  # strictly above

    code, table = _run("usage", "calls", "--db", str(window_log))
    assert "Context" in table and "93.8%" in table and "30.0%" in table
    code, out = _run("usage", "calls", "--db", str(window_log), "--over", "80")
    assert code == 2 and "--over" in out


def test_usage_calls_over_reads_a_log_written_before_m005(tmp_path: Path) -> None:
    from modelforge import migrations

    names = migrations.MIGRATION_NAMES
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.apply(conn, stop_after=names[names.index("m005_context_window") - 1])
    usage = Usage(input_tokens=1000, output_tokens=10)
    row = record_row(CallRecord(run_id="old", usage=usage, cost=price("gpt-4o", usage)))
    insert_rows(conn, [row_for_table(conn, row)])
    conn.close()
    code, out = _run("usage", "calls", "--db", str(path), "--over", "0", "--json")
    assert (code, json.loads(out)) == (0, [])  # read through a migrated copy: no figures
    code, out = _run("usage", "--db", str(path), "--by", "model", "--json")
    assert json.loads(out)["rows"][0]["peak_utilization"] is None
