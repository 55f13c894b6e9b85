"""Issue 23 acceptance: budgets stop spending before the request is sent.

Real clients (ChatOpenAI, LlamaIndex OpenAI) talk to the loopback wire server, which
records every request it receives, so "no request was sent" is checked at the wire.
Spend by "other processes" is seeded as plain rows in the log, which its triggers roll
up like any other. Time is a fake clock passed to the budget: nothing here sleeps.

The wire server's default reply "Hello from the model-forge wire server." is 6 output
tokens; a one-word prompt "q" is 1 word + 3 framing = 4 input tokens. gpt-4o costs 2.5
(input) and 10 (output) USD per 1M tokens, so one "q" call is
4 * 2.5 + 6 * 10 = 70 per 1M = $0.00007, and 10 tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict, cast
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager
from llama_index.llms.openai import OpenAI

import modelforge
from encodings_on_disk import needs_encodings
from modelforge import (
    Budget,
    BudgetAlert,
    BudgetError,
    BudgetExceededError,
    ModelForgeError,
    alerts,
    config,
    flush_alerts,
    on_alert,
    track_usage,
)
from modelforge.alerts import remove_on_alert
from modelforge.budgets import Threshold, status
from modelforge.cli import cli
from modelforge.langchain import UsageCallbackHandler
from modelforge.llamaindex import LlamaIndexCallbackHandler, instrument, uninstrument
from modelforge.meters import period_window
from modelforge.store import open_db
from modelforge.wire import WireServer

# The anthropic SDK warns on every call naming a model past its announced end-of-life date.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

Q_COST = Decimal("0.00007")  # one "q" call to gpt-4o, worked out in the module docstring
Q_TOKENS = 10
CHAT = "/v1/chat/completions"


class FakeClock:
    """A budget's clock that stands still until told, and sleeps by moving on."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment
        self.slept = 0.0

    def now(self) -> datetime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self.slept += seconds


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def seed(
    path: Path,
    *,
    ts: datetime | None = None,
    usd: str = "0",
    input_tokens: int = 0,
    output_tokens: int = 0,
    model: str = "gpt-4o-2024-08-06",
    agent: str | None = None,
    attrs: dict[str, str] | None = None,
) -> None:
    """One call in the log, written by plain SQL as another process or tool would."""
    open_db(path).close()  # created and migrated
    moment = ts or datetime.now(timezone.utc)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO calls (ts, run_id, provider, model, input_tokens, output_tokens, "
            "cost_usd, cost_pusd, priced, estimated, status, agent, attrs) "
            "VALUES (?, ?, 'openai', ?, ?, ?, ?, ?, 1, 0, 'ok', ?, ?)",
            [
                moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                str(uuid4()),
                model,
                input_tokens,
                output_tokens,
                usd,
                int(Decimal(usd) * 10**12),
                agent,
                json.dumps(attrs) if attrs else None,
            ],
        )
    conn.close()


def chat_requests(wire: WireServer) -> int:
    return sum(1 for r in wire.requests if r["path"] == CHAT)


def logged_cost(path: Path) -> Decimal:
    assert modelforge.flush()
    conn = sqlite3.connect(path)
    try:
        return sum((Decimal(c) for (c,) in conn.execute("SELECT cost_usd FROM calls")), Decimal(0))
    finally:
        conn.close()


def _openai(wire: WireServer, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("model", "gpt-4o")
    return ChatOpenAI(base_url=wire.openai_base_url, api_key="test", max_retries=0, **kwargs)


def _cb(handler: Any, **extra: Any) -> RunnableConfig:
    return cast(RunnableConfig, {"callbacks": [handler], **extra})


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def call(llm: ChatOpenAI, mode: str, config: RunnableConfig | None = None) -> None:
    """One call of `llm` as `mode` says: sync, async, streamed (both) or a batch of two."""
    if mode == "invoke":
        llm.invoke("q", config=config)
    elif mode == "ainvoke":
        asyncio.run(llm.ainvoke("q", config=config))
    elif mode == "stream":
        for _ in llm.stream("q", config=config):
            pass
    elif mode == "astream":
        asyncio.run(_drain(llm.astream("q", config=config)))
    else:
        llm.batch(["q", "q"], config=config)


@pytest.fixture(autouse=True)
def _alerts_delivered() -> Iterator[None]:
    """Each test's alerts are delivered before the next test begins."""
    yield
    assert flush_alerts(20)


@pytest.fixture
def alerts_seen() -> Iterator[list[BudgetAlert]]:
    seen: list[BudgetAlert] = []
    on_alert(seen.append)
    yield seen
    assert flush_alerts(10)
    remove_on_alert(seen.append)


# --- a block sends no request ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream", "batch"])
def test_a_block_sends_no_request(wire: WireServer, db_path: Path, mode: str) -> None:
    seed(db_path, usd="0.001")
    daily = Budget(usd="0.001", period="day", action="block", name="daily")

    with pytest.raises(BudgetExceededError) as raised:
        call(_openai(wire), mode, _cb(UsageCallbackHandler(budgets=[daily])))

    assert chat_requests(wire) == 0
    error = raised.value
    assert isinstance(error, ModelForgeError)
    assert error.budget is daily
    assert error.spent == error.spent_usd == Decimal("0.001")
    today = datetime.now(timezone.utc).date()
    assert error.resets_at == datetime(today.year, today.month, today.day, tzinfo=timezone.utc) + (
        timedelta(days=1)
    )
    assert "budget 'daily' reached: $0.001 of $0.001 spent this day" in str(error)


def test_a_process_stops_itself_once_its_own_calls_reach_the_limit(
    wire: WireServer, db_path: Path
) -> None:
    # Three calls of $0.00007 reach $0.00021: the fourth is stopped.
    handler = UsageCallbackHandler(budgets=[Budget(usd="0.00021", action="block")])
    llm = _openai(wire)
    for _ in range(3):
        llm.invoke("q", config=_cb(handler))
    with pytest.raises(BudgetExceededError) as raised:
        llm.invoke("q", config=_cb(handler))
    assert chat_requests(wire) == 3
    assert raised.value.spent == 3 * Q_COST
    assert logged_cost(db_path) == 3 * Q_COST


def test_the_spend_of_calls_not_yet_written_counts(wire: WireServer, db_path: Path) -> None:
    # The writer batches for up to 50 ms; a second call at once must still see the first.
    handler = UsageCallbackHandler(budgets=[Budget(usd=str(Q_COST), action="block")])
    llm = _openai(wire)
    llm.invoke("q", config=_cb(handler))
    with pytest.raises(BudgetExceededError):
        llm.invoke("q", config=_cb(handler))
    assert chat_requests(wire) == 1


# --- boundaries ------------------------------------------------------------------------


@pytest.mark.parametrize(("spent", "blocked"), [(999, False), (1000, True)])
def test_exactly_at_the_limit_blocks_and_one_token_under_does_not(
    wire: WireServer, db_path: Path, spent: int, blocked: bool
) -> None:
    seed(db_path, input_tokens=spent - 9, output_tokens=9)
    handler = UsageCallbackHandler(budgets=[Budget(tokens=1000, action="block")])
    if blocked:
        with pytest.raises(BudgetExceededError) as raised:
            _openai(wire).invoke("q", config=_cb(handler))
        assert raised.value.spent == raised.value.spent_tokens == 1000
        assert chat_requests(wire) == 0
    else:
        _openai(wire).invoke("q", config=_cb(handler))
        assert chat_requests(wire) == 1


def test_exactly_at_a_usd_limit_blocks_and_a_pico_dollar_under_does_not(
    wire: WireServer, db_path: Path
) -> None:
    seed(db_path, usd="0.499999999999")
    handler = UsageCallbackHandler(budgets=[Budget(usd="0.5", action="block")])
    llm = _openai(wire)
    llm.invoke("q", config=_cb(handler))  # $0.499999999999 spent: under
    seed(db_path, usd="0.000000000001")  # now exactly $0.5
    with pytest.raises(BudgetExceededError):
        llm.invoke("q", config=_cb(handler))
    assert chat_requests(wire) == 1


def test_the_period_rolls_over_at_midnight_utc(wire: WireServer, db_path: Path) -> None:
    clock = FakeClock(utc("2026-03-10T23:59:59.999999"))
    seed(db_path, ts=utc("2026-03-10T08:00:00"), usd="0.01")
    handler = UsageCallbackHandler(
        budgets=[Budget(usd="0.01", period="day", action="block", clock=clock)]
    )
    llm = _openai(wire)
    with pytest.raises(BudgetExceededError) as raised:
        llm.invoke("q", config=_cb(handler))
    assert raised.value.resets_at == utc("2026-03-11T00:00:00")

    clock.moment = utc("2026-03-11T00:00:00")
    llm.invoke("q", config=_cb(handler))
    assert chat_requests(wire) == 1


@pytest.mark.parametrize(
    ("last_moment", "next_month"),
    [("2026-01-31T23:59:59", "2026-02-01"), ("2026-12-31T23:59:59", "2027-01-01")],
)
def test_the_period_rolls_over_at_month_end(
    wire: WireServer, db_path: Path, last_moment: str, next_month: str
) -> None:
    clock = FakeClock(utc(last_moment))
    seed(db_path, ts=utc(last_moment) - timedelta(days=20), usd="1")
    handler = UsageCallbackHandler(
        budgets=[Budget(usd="1", period="month", action="block", clock=clock)]
    )
    llm = _openai(wire)
    with pytest.raises(BudgetExceededError) as raised:
        llm.invoke("q", config=_cb(handler))
    assert raised.value.resets_at == utc(f"{next_month}T00:00:00")

    clock.moment = utc(f"{next_month}T00:00:00")
    llm.invoke("q", config=_cb(handler))
    assert chat_requests(wire) == 1


def test_a_day_in_another_time_zone_rolls_over_at_its_own_midnight(
    wire: WireServer, db_path: Path
) -> None:
    # New York is on EDT (UTC-4) after 2026-03-08: its 10 March starts at 04:00 UTC.
    seed(db_path, ts=utc("2026-03-09T23:00:00"), usd="0.01")  # 19:00 on 9 March there
    clock = FakeClock(utc("2026-03-10T01:00:00"))  # 21:00 on 9 March there
    in_new_york = Budget(
        usd="0.01", period="day", action="block", tz="America/New_York", clock=clock
    )
    in_utc = Budget(usd="0.01", period="day", action="block", clock=clock)
    llm = _openai(wire)

    llm.invoke("q", config=_cb(UsageCallbackHandler(budgets=[in_utc])))  # a new UTC day
    with pytest.raises(BudgetExceededError) as raised:
        llm.invoke("q", config=_cb(UsageCallbackHandler(budgets=[in_new_york])))
    assert raised.value.resets_at == utc("2026-03-10T04:00:00")

    clock.moment = utc("2026-03-10T04:00:00")
    llm.invoke("q", config=_cb(UsageCallbackHandler(budgets=[in_new_york])))
    assert chat_requests(wire) == 2


def test_calendar_periods() -> None:
    zone = ZoneInfo("Asia/Kolkata")  # UTC+5:30
    wednesday = utc("2026-04-15T10:20:30")
    week = period_window("week", False, timezone.utc, wednesday)
    assert (week.start, week.end) == (utc("2026-04-13T00:00:00"), utc("2026-04-20T00:00:00"))
    hour = period_window("hour", False, zone, wednesday)  # 15:50 there
    assert (hour.start, hour.end) == (utc("2026-04-15T09:30:00"), utc("2026-04-15T10:30:00"))
    minute = period_window("minute", False, timezone.utc, wednesday)
    assert minute.since == "2026-04-15T10:20:00.000000Z"
    rolling = period_window("hour", True, timezone.utc, wednesday)
    assert (rolling.start, rolling.end) == (utc("2026-04-15T09:20:30"), None)
    total = period_window("total", False, zone, wednesday)
    assert (total.start, total.end, total.since) == (None, None, None)


# --- scope -----------------------------------------------------------------------------


class _Graph(TypedDict):
    question: str
    draft: str
    answer: str


def test_a_budget_scoped_to_an_agent_stops_that_langgraph_node_only(
    wire: WireServer, db_path: Path
) -> None:
    seed(db_path, usd="0.001", agent="researcher")
    seed(db_path, usd="5", agent="writer")  # other agents' spend does not count
    researcher_budget = Budget(usd="0.001", action="block", scope={"agent": "researcher"})
    llm = _openai(wire)

    def writer(state: _Graph, config: RunnableConfig) -> dict[str, str]:
        return {"draft": str(llm.invoke(state["question"], config).content)}

    def researcher(state: _Graph, config: RunnableConfig) -> dict[str, str]:
        return {"answer": str(llm.invoke(state["draft"], config).content)}

    builder = StateGraph(_Graph)
    builder.add_node("writer", writer)
    builder.add_node("researcher", researcher)
    builder.add_edge(START, "writer")
    builder.add_edge("writer", "researcher")
    builder.add_edge("researcher", END)
    graph = builder.compile()

    handler = UsageCallbackHandler(budgets=[researcher_budget])
    with pytest.raises(BudgetExceededError):
        graph.invoke({"question": "q", "draft": "", "answer": ""}, config=_cb(handler))
    assert chat_requests(wire) == 1  # the writer's call
    assert modelforge.flush()
    conn = sqlite3.connect(db_path)
    agents = [a for (a,) in conn.execute("SELECT agent FROM calls WHERE framework = 'langchain'")]
    conn.close()
    assert agents == ["writer"]


def test_a_budget_scoped_by_model_glob(wire: WireServer, db_path: Path) -> None:
    seed(db_path, usd="0.002", model="gpt-4o-2024-08-06")
    handler = UsageCallbackHandler(
        budgets=[Budget(usd="0.002", action="block", scope={"model": "gpt-4o*"})]
    )
    with pytest.raises(BudgetExceededError):
        _openai(wire, model="gpt-4o").invoke("q", config=_cb(handler))
    _openai(wire, model="gpt-5-mini").invoke("q", config=_cb(handler))
    assert chat_requests(wire) == 1


def test_a_budget_scoped_by_an_attribute_set_through_track_usage(
    wire: WireServer, db_path: Path
) -> None:
    seed(db_path, usd="0.003", attrs={"project": "search"})
    search = Budget(usd="0.003", action="block", scope={"project": "search"})
    llm = _openai(wire)
    with track_usage(project="other", budgets=[search]):
        llm.invoke("q")  # not the budget's project
    with track_usage(project="search", budgets=[search]), pytest.raises(BudgetExceededError):
        llm.invoke("q")
    assert chat_requests(wire) == 1


def test_an_attribute_scope_reads_only_new_rows_after_the_first_read(
    wire: WireServer, db_path: Path
) -> None:
    # Tags and attributes are not in the hourly rollup: the period is read once, then
    # rows added later (by anyone) are added to it.
    seed(db_path, usd="0.002", attrs={"project": "search"})
    search = Budget(usd="0.003", action="block", scope={"project": "search"})
    llm = _openai(wire)
    with track_usage(project="search", budgets=[search]):
        llm.invoke("q")  # $0.002 + $0.00007: under $0.003
        seed(db_path, usd="0.00093", attrs={"project": "search"})  # another process
        with pytest.raises(BudgetExceededError) as raised:
            llm.invoke("q")
    # 0.002 + 0.00007 + 0.00093 = 0.003
    assert raised.value.spent == Decimal("0.003")
    assert chat_requests(wire) == 1


# --- include_estimate, warn, throttle, recording off -------------------------------------


@needs_encodings
@pytest.mark.parametrize(("max_tokens", "blocked"), [(100, True), (90, False)])
def test_include_estimate_blocks_a_call_whose_estimate_would_pass_the_limit(
    wire: WireServer, db_path: Path, max_tokens: int, blocked: bool
) -> None:
    # [HumanMessage("q")] counts 3 (message) + 1 ("user") + 1 ("q") + 3 (reply) = 8
    # tokens. With max_tokens=100: 8 * 2.5 + 100 * 10 = 1020 per 1M = $0.00102, past
    # $0.001; with 90: 8 * 2.5 + 90 * 10 = 920 per 1M = $0.00092, within it.
    handler = UsageCallbackHandler(
        budgets=[Budget(usd="0.001", action="block", include_estimate=True)]
    )
    llm = _openai(wire, max_tokens=max_tokens)
    if blocked:
        with pytest.raises(BudgetExceededError) as raised:
            llm.invoke("q", config=_cb(handler))
        assert "this call's estimate ($0.00102, 108 tokens) would pass it" in str(raised.value)
        assert chat_requests(wire) == 0
    else:
        llm.invoke("q", config=_cb(handler))
        assert chat_requests(wire) == 1


def test_warn_lets_calls_through_and_logs_each_threshold_once(
    wire: WireServer, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "modelforge")
    handler = UsageCallbackHandler(budgets=[Budget(usd="0.0001", name="soft")])
    llm = _openai(wire)
    for _ in range(3):  # $0.00007 (70%), $0.00014, $0.00021
        llm.invoke("q", config=_cb(handler))
    assert flush_alerts(10)
    assert chat_requests(wire) == 3
    lines = [r.getMessage() for r in caplog.records if "budget 'soft'" in r.getMessage()]
    assert [line.split(" reached ")[1].split(":")[0] for line in lines] == ["50%", "80%", "100%"]
    assert "$0.00014 of $0.0001 this day" in lines[1]


def test_alerts_on_tokens_usd_and_an_hourly_rate(
    wire: WireServer, db_path: Path, alerts_seen: list[BudgetAlert]
) -> None:
    # $1 spent two hours ago: in the budget's period (all time), not in the last hour.
    seed(db_path, ts=datetime.now(timezone.utc) - timedelta(hours=2), usd="1")
    budget = Budget(
        usd="100",
        period="total",
        name="watched",
        thresholds=["15 tokens", "$1.0001", "$0.00013/h", "30 tokens/h"],
    )
    handler = UsageCallbackHandler(budgets=[budget])
    llm = _openai(wire)
    for _ in range(3):  # each 10 tokens and $0.00007
        llm.invoke("q", config=_cb(handler))
        assert flush_alerts(10)
    fired = {a.threshold: a for a in alerts_seen}
    assert sorted(fired) == ["$0.00013/h", "$1.0001", "15 tokens", "30 tokens/h"]
    # At the end of the second call: 20 tokens, $1 + $0.00014, $0.00014 in the last hour.
    assert fired["15 tokens"].spent_tokens == 20
    assert fired["$1.0001"].spent_usd == Decimal("1.00014")
    assert fired["$0.00013/h"].hourly_usd == Decimal("0.00014")
    # At the end of the third call: 30 tokens in the last hour, and in all.
    assert (fired["30 tokens/h"].hourly_tokens, fired["30 tokens/h"].spent_tokens) == (30, 30)
    message = fired["30 tokens/h"].message()
    assert message == (
        "budget 'watched' reached 30 tokens/h: $0.00021 and 30 tokens in the last hour; "
        "$1.00021 of $100 in total [warn]"
    )


def test_throttle_waits_for_the_rolling_window_then_sends(wire: WireServer, db_path: Path) -> None:
    clock = FakeClock(utc("2026-05-01T12:00:00"))
    seed(db_path, ts=utc("2026-05-01T11:59:20"), input_tokens=990, output_tokens=10)
    handler = UsageCallbackHandler(
        budgets=[Budget(tokens=1000, period="minute", action="throttle", clock=clock)]
    )
    _openai(wire).invoke("q", config=_cb(handler))
    # The 1,000 tokens of 11:59:20 leave the last minute once it starts after 11:59:20,
    # at 12:00:21, after 21 one-second waits.
    assert clock.slept == 21
    assert chat_requests(wire) == 1


def test_throttle_blocks_after_its_longest_wait(wire: WireServer, db_path: Path) -> None:
    clock = FakeClock(utc("2026-05-01T12:00:00"))
    seed(db_path, ts=utc("2026-05-01T11:59:50"), input_tokens=1000)
    handler = UsageCallbackHandler(
        budgets=[Budget(tokens=1000, period="minute", action="throttle", max_wait=5, clock=clock)]
    )
    with pytest.raises(BudgetExceededError) as raised:
        _openai(wire).invoke("q", config=_cb(handler))
    assert clock.slept == 5
    assert "in the last minute; waited 5 s" in str(raised.value)
    assert chat_requests(wire) == 0


def test_with_recording_off_budgets_count_this_process_only(
    wire: WireServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(db_path, usd="1")  # in the log, which is not read with recording off
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "0")
    handler = UsageCallbackHandler(budgets=[Budget(usd=str(2 * Q_COST), action="block")])
    llm = _openai(wire)
    llm.invoke("q", config=_cb(handler))
    llm.invoke("q", config=_cb(handler))
    with pytest.raises(BudgetExceededError) as raised:
        llm.invoke("q", config=_cb(handler))
    assert raised.value.spent == 2 * Q_COST
    assert chat_requests(wire) == 2


# --- webhooks --------------------------------------------------------------------------


def test_a_failing_webhook_delays_no_call(
    wire: WireServer,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(alerts, "WEBHOOK_BACKOFF", 0.01)
    caplog.set_level(logging.WARNING, "modelforge")
    held = threading.Event()
    wire.script_webhook(status=500, hold=held)
    url = f"{wire.webhook_url}?token=s3cret"
    budget = Budget(usd="0.0001", name="hooked", thresholds=["50%"], webhook=url)
    handler = UsageCallbackHandler(budgets=[budget])
    llm = _openai(wire)

    llm.invoke("q", config=_cb(handler))  # $0.00007: past 50%, the webhook goes out
    _wait_for(lambda: any(r["path"].startswith("/hooks/") for r in wire.requests))
    for _ in range(3):  # the webhook is held at the server all along
        llm.invoke("q", config=_cb(handler))
    assert wire.webhooks_answered == 0
    assert chat_requests(wire) == 4

    held.set()
    assert flush_alerts(20)
    assert wire.webhooks_answered == 3  # three attempts, each answered 500
    (body,) = {json.dumps(r["body"]) for r in wire.requests if r["path"].startswith("/hooks/")}
    assert json.loads(body) | {"fired_at": None} == {
        "schema": "modelforge.alert/1",
        "budget": "hooked",
        "threshold": "50%",
        "action": "warn",
        "period": "day",
        "period_start": budget.window().since,
        "resets_at": json.loads(body)["resets_at"],
        "spent_usd": "0.00007",
        "spent_tokens": 10,
        "limit_usd": "0.0001",
        "limit_tokens": None,
        "hourly_usd": None,
        "hourly_tokens": None,
        "scope": {},
        "fired_at": None,
        "message": json.loads(body)["message"],
    }
    failure = f"alert webhook http://127.0.0.1:{wire.port}/… failed after 3 attempts (HTTP 500)"
    assert failure in caplog.text
    assert "s3cret" not in caplog.text


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- LlamaIndex ------------------------------------------------------------------------

HI = [ChatMessage(role="user", content="hi there")]


def _li_openai(wire: WireServer, handler: LlamaIndexCallbackHandler) -> OpenAI:
    return OpenAI(
        model="gpt-4o",
        api_base=wire.openai_base_url,
        api_key="test",
        max_retries=0,
        callback_manager=CallbackManager([handler]),
    )


def test_llamaindex_blocks_before_the_request(wire: WireServer, db_path: Path) -> None:
    # "hi there" is 2 words + 3 framing = 5 input tokens, the reply 6 output tokens:
    # 5 * 2.5 + 6 * 10 = 72.5 per 1M = $0.0000725.
    handler = LlamaIndexCallbackHandler(budgets=[Budget(usd="0.0000725", action="block")])
    llm = _li_openai(wire, handler)
    llm.chat(HI)
    with pytest.raises(BudgetExceededError):
        llm.chat(HI)
    with pytest.raises(BudgetExceededError):
        for _ in llm.stream_chat(HI):
            pass
    with pytest.raises(BudgetExceededError):
        asyncio.run(llm.achat(HI))
    with pytest.raises(BudgetExceededError):
        llm.complete("hi there")
    assert chat_requests(wire) == 1


def test_llamaindex_applies_the_budgets_of_track_usage(wire: WireServer, db_path: Path) -> None:
    seed(db_path, usd="0.01", attrs={"project": "search"})
    search = Budget(usd="0.01", action="block", scope={"project": "search"})
    llm = _li_openai(wire, LlamaIndexCallbackHandler())
    with track_usage(project="search", budgets=[search]), pytest.raises(BudgetExceededError):
        llm.chat(HI)
    assert chat_requests(wire) == 0


def test_instrumented_llamaindex_calls_count_and_fire_alerts(
    wire: WireServer, db_path: Path, alerts_seen: list[BudgetAlert]
) -> None:
    # instrument() records calls but LlamaIndex's dispatcher swallows what its event
    # handlers raise, so it cannot block; the calls still count and alert.
    instrument()
    try:
        plain = OpenAI(model="gpt-4o", api_base=wire.openai_base_url, api_key="test", max_retries=0)
        with track_usage(budgets=[Budget(usd="0.0001", name="li", thresholds=["50%"])]):
            plain.chat(HI)
        assert flush_alerts(10)
    finally:
        uninstrument()
    assert [(a.budget, a.threshold, a.spent_usd) for a in alerts_seen] == [
        ("li", "50%", Decimal("0.0000725"))
    ]


# --- two processes sharing one log ---------------------------------------------------------

_PROCESS = """
import json, sys, time
from pathlib import Path
from langchain_openai import ChatOpenAI
from modelforge import Budget, BudgetExceededError, UsageCallbackHandler, flush, flush_alerts

base_url, limit, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
fired = []
budget = Budget(
    usd=limit, action="block", name="shared", on_alert=lambda a: fired.append(a.threshold)
)
handler = UsageCallbackHandler(budgets=[budget])
llm = ChatOpenAI(model="gpt-4o", base_url=base_url, api_key="test", max_retries=0)
ready.touch()
while not go.exists():
    time.sleep(0.002)
calls = 0
try:
    for _ in range(200):
        llm.invoke("q", config={"callbacks": [handler]})
        calls += 1
except BudgetExceededError:
    pass
flush()
flush_alerts()
print(json.dumps({"calls": calls, "fired": fired}))
"""
SHARED_LIMIT = 20 * Q_COST  # $0.0014


@pytest.fixture(scope="module")
def two_processes(
    _wire_server: WireServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, list[dict[str, Any]], int]]:
    """Two processes spending from one log against one $0.0014 budget, until blocked."""
    import os

    home = tmp_path_factory.mktemp("shared")
    env = {
        **os.environ,
        "MODELFORGE_DB": str(home / "usage.db"),
        "MODELFORGE_CONFIG_DIR": str(home / "config"),
        "MODELFORGE_DATA_DIR": str(home / "data"),
        "MODELFORGE_CACHE_DIR": str(home / "cache"),
    }
    for name in ("MODELFORGE_TELEMETRY", "DO_NOT_TRACK", "MODELFORGE_PRICES"):
        env.pop(name, None)
    _wire_server.reset()
    go = home / "go"
    procs = []
    for n in range(2):
        args = [_wire_server.openai_base_url, str(SHARED_LIMIT), str(home / f"ready{n}"), str(go)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _PROCESS, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    _wait_for(lambda: all((home / f"ready{n}").exists() for n in range(2)), 60)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    sent = sum(1 for r in _wire_server.requests if r["path"] == CHAT)
    yield home / "usage.db", results, sent
    _wire_server.reset()


def test_two_processes_sharing_a_log_stay_within_the_limit_plus_one_call_each(
    two_processes: tuple[Path, list[dict[str, Any]], int],
) -> None:
    log, results, sent = two_processes
    calls = sum(r["calls"] for r in results)
    assert sent == calls
    assert all(r["calls"] > 0 for r in results)
    spent = logged_cost(log)
    assert spent == calls * Q_COST
    assert SHARED_LIMIT <= spent <= SHARED_LIMIT + 2 * Q_COST


def test_each_threshold_fires_once_across_two_processes(
    two_processes: tuple[Path, list[dict[str, Any]], int],
) -> None:
    log, results, _ = two_processes
    fired = [threshold for r in results for threshold in r["fired"]]
    assert sorted(fired) == ["100%", "50%", "80%"]
    conn = sqlite3.connect(log)
    rows = conn.execute("SELECT budget, threshold FROM alerts ORDER BY threshold").fetchall()
    conn.close()
    assert rows == [("shared", "100%"), ("shared", "50%"), ("shared", "80%")]


# --- config.toml and the CLI -------------------------------------------------------------


def test_budgets_in_config_apply_to_every_handler_and_the_cli_manages_them(
    wire: WireServer, db_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            *("budget", "set", "research-daily", "--usd", "0.0005", "--per", "day"),
            *("--scope", "agent=researcher", "--action", "block"),
        ],
    )
    assert result.exit_code == 0, result.output
    text = config.config_path().read_text(encoding="utf-8")
    assert text == (
        '[[budget]]\n"name" = "research-daily"\n"usd" = "0.0005"\n"period" = "day"\n'
        '"action" = "block"\n"scope" = {"agent" = "researcher"}\n'
    )
    seed(db_path, usd="0.0005", agent="researcher")
    handler = UsageCallbackHandler()  # no budgets of its own
    llm = _openai(wire)
    llm.invoke("q", config=_cb(handler, metadata={"agent": "writer"}))
    with pytest.raises(BudgetExceededError):
        llm.invoke("q", config=_cb(handler, metadata={"agent": "researcher"}))
    assert chat_requests(wire) == 1

    listed = runner.invoke(cli, ["budget", "list"])
    assert listed.output == ("Budget('research-daily': $0.0005 per day, block, agent=researcher)\n")
    shown = runner.invoke(cli, ["budget", "status", "--json"])
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.output)
    assert {k: row[k] for k in ("name", "spent_usd", "limit_usd", "used_percent")} == {
        "name": "research-daily",
        "spent_usd": "0.0005",
        "limit_usd": "0.0005",
        "used_percent": "100.0",
    }
    table = runner.invoke(cli, ["budget", "status"])
    assert "research-daily" in table.output and "100.0%" in table.output

    assert runner.invoke(cli, ["budget", "rm", "research-daily"]).exit_code == 0
    assert config.load_settings().budgets == ()
    again = runner.invoke(cli, ["budget", "rm", "research-daily"])
    assert again.exit_code == 1
    assert "Error: no budget named 'research-daily'" in again.output


def test_budget_set_rejects_bad_values_before_writing(user_dirs: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["budget", "set", "x", "--usd", "5", "--per", "fortnight"])
    assert result.exit_code == 2
    assert "period 'fortnight': use one of minute, hour, day, week, month, total" in result.output
    result = runner.invoke(cli, ["budget", "set", "x", "--per", "day"])
    assert result.exit_code == 2
    assert "a budget needs usd=, tokens= or both" in result.output
    assert not config.config_path().exists()


def test_a_bad_budget_table_is_ignored_with_a_warning_and_the_rest_kept(
    user_dirs: Path,
) -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text(
        'telemetry = true\n\n[[budget]]\nname = "ok"\nusd = "5"\n\n'
        '[[budget]]\nname = "bad"\nusd = "5"\nperiod = "fortnight"\n',
        encoding="utf-8",
    )
    settings = config.load_settings(warn=False)
    assert [b.name for b in settings.budgets] == ["ok"]
    assert "period 'fortnight'" in str(settings.problems["budget 'bad'"])
    assert settings.telemetry is True


def test_budget_status_projects_the_spend_to_the_end_of_the_period(db_path: Path) -> None:
    seed(db_path, ts=utc("2026-03-10T03:00:00"), usd="1", input_tokens=600, output_tokens=400)
    daily = Budget(usd="4", tokens=10_000, period="day")
    conn = open_db(db_path, create=False)
    (row,) = status(conn, [daily], now=utc("2026-03-10T12:00:00"))
    conn.close()
    # Half the day gone: a straight line doubles what was spent.
    assert (row.spent_usd, row.spent_tokens) == (Decimal("1"), 1000)
    assert (row.projected_usd, row.projected_tokens) == (Decimal("2"), 2000)
    assert row.used_percent == Decimal("25.0")  # $1 of $4 (1,000 of 10,000 tokens is 10%)
    assert row.resets_at == utc("2026-03-11T00:00:00")


# --- definitions ---------------------------------------------------------------------------


def test_thresholds_read_as_text() -> None:
    assert Threshold.parse("80%") == Threshold("percent", Decimal("80"))
    assert Threshold.parse(12.5).key == "12.5%"
    assert Threshold.parse("$2.50").key == "$2.5"
    assert Threshold.parse("1,000,000 tokens").key == "1000000 tokens"
    assert Threshold.parse("$1/h").kind == "usd_per_hour"
    assert Threshold.parse("50000 tokens/hour").key == "50000 tokens/h"
    with pytest.raises(BudgetError, match="threshold 'lots'"):
        Threshold.parse("lots")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "a budget needs usd=, tokens= or both"),
        ({"usd": "-1"}, "usd must be a finite amount ≥ 0"),
        ({"usd": "five"}, "usd 'five' is not a number"),
        ({"tokens": 1.5}, "tokens must be a whole number"),
        ({"usd": 1, "action": "stop"}, "action 'stop': use one of warn, block, throttle"),
        ({"usd": 1, "tz": "Mars/Olympus"}, "tz 'Mars/Olympus' is not a known IANA time zone"),
        ({"usd": 1, "action": "throttle", "period": "month"}, "a rolling window is a minute"),
        ({"usd": 1, "scope": {"agent": None}}, "scope 'agent'=None"),
        ({"usd": 1, "webhook": "hooks.example.com"}, "webhook must be an http:// or https:// URL"),
    ],
)
def test_a_bad_budget_is_refused_with_why(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BudgetError, match="^" + message.replace("(", r"\(")):
        Budget(**kwargs)


def test_a_budget_round_trips_through_its_config_table() -> None:
    original = Budget(
        usd="5.00",
        tokens=2_000_000,
        period="week",
        action="throttle",
        name="w",
        scope={"model": "gpt-4o*", "project": "x"},
        tz="Europe/Paris",
        include_estimate=True,
        thresholds=["25%", "$1/h"],
        webhook="https://example.com/hook",
        max_wait=12,
    )
    table = original.as_table()
    assert table == {
        "name": "w",
        "usd": "5",
        "tokens": 2_000_000,
        "period": "week",
        "action": "throttle",
        "scope": {"model": "gpt-4o*", "project": "x"},
        "tz": "Europe/Paris",
        "include_estimate": True,
        "thresholds": ["25%", "$1/h"],
        "webhook": "https://example.com/hook",
        "max_wait": 12.0,
    }
    assert Budget.from_table(table).as_table() == table
    assert repr(original) == (
        "Budget('w': $5 + 2000000 tokens per rolling week, throttle, model=gpt-4o*, project=x)"
    )
