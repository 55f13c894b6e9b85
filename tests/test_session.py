"""`track_usage()` and `UsageSession`: which calls a block sees, and what it totals.

Most records here are built by hand and handed to `recorder.deliver`, as every adapter
hands its records over; the last tests make real LangChain calls to the wire server.

Prices (USD per 1M tokens): gpt-4o input 2.5, output 10; gpt-4o-mini input 0.15,
output 0.6.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

import modelforge
from encodings_on_disk import needs_encodings
from modelforge import track_usage
from modelforge.recorder import deliver
from modelforge.records import CallRecord, format_ts, price_call
from modelforge.session import ResumeError, UsageSession, current_sessions
from modelforge.usage import Usage
from modelforge.wire import WireServer
from test_langchain import DEFAULT_Q_COST, _openai, _rows

# gpt-4o, 1000 in and 100 out: 1000 * 2.5 + 100 * 10 = 3500 per 1M
GPT4O_CALL = Decimal("0.0035")


def _call(
    run_id: str, model: str = "gpt-4o", inp: int = 1000, out: int = 100, estimated: bool = False
) -> CallRecord:
    usage = Usage(input_tokens=inp, output_tokens=out, estimated=estimated)
    cost = price_call(usage, model, None, None)
    return CallRecord(run_id=run_id, usage=usage, cost=cost, model=model)


def test_a_block_sees_the_calls_made_inside_it_and_totals_them() -> None:
    deliver(_call("before"), persist=False)
    with track_usage(persist=False) as session:
        deliver(_call("one"), persist=False)
        deliver(_call("two", inp=2000, out=0), persist=False)
    deliver(_call("after"), persist=False)

    assert [r.run_id for r in session.calls] == ["one", "two"]
    assert session.usage == Usage(input_tokens=3000, output_tokens=100)
    # 3500 + 2000 * 2.5 = 8500 per 1M
    assert session.total_cost == Decimal("0.0085")
    assert (session.unpriced, session.estimated) == (0, 0)
    assert repr(session) == "<UsageSession calls=2 total_cost=0.0085000 unpriced=0 estimated=0>"


def test_a_run_id_is_kept_once() -> None:
    session = UsageSession({})
    record = _call("same")
    assert session.add(record) is True
    assert session.add(_call("same", inp=5)) is False
    assert session.calls == [record]

    with track_usage(persist=False) as tracked:
        deliver(record, persist=False)
        deliver(record, sessions=[tracked], persist=False)
    assert tracked.calls == [record]


def test_unpriced_and_estimated_calls_and_totals_by_model() -> None:
    with track_usage(persist=False) as session:
        deliver(_call("a"), persist=False)
        deliver(_call("b", model="gpt-4o-mini", estimated=True), persist=False)
        deliver(_call("c", model="my-own-model"), persist=False)
        deliver(_call("d"), persist=False)

    # gpt-4o twice: 2 * 3500; gpt-4o-mini: 1000 * 0.15 + 100 * 0.6 = 210 per 1M
    assert session.total_cost == Decimal("0.00721")
    assert (session.unpriced, session.estimated) == (1, 1)
    assert session.usage.estimated is True
    by_model = session.by_model()
    assert list(by_model) == ["gpt-4o", "gpt-4o-mini", "my-own-model"]
    gpt4o = by_model["gpt-4o"]
    assert (gpt4o.calls, gpt4o.cost, gpt4o.unpriced) == (2, 2 * GPT4O_CALL, 0)
    assert gpt4o.usage == Usage(input_tokens=2000, output_tokens=200)
    mine = by_model["my-own-model"]
    assert (mine.calls, mine.cost, mine.unpriced) == (1, Decimal(0), 1)


def test_the_served_model_names_the_group() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)
    record = CallRecord(
        run_id="served",
        usage=usage,
        cost=price_call(usage, "gpt-4o", "gpt-4o-2024-08-06", None),
        model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
    )
    with track_usage(persist=False) as session:
        deliver(record, persist=False)
    assert list(session.by_model()) == ["gpt-4o-2024-08-06"]


def test_nested_blocks_each_see_their_calls_with_both_blocks_attributes() -> None:
    with track_usage(persist=False, project="outer") as outer:
        deliver(_call("first"), persist=False)
        with track_usage(persist=False, team="inner", project="inner-p") as inner:
            assert current_sessions() == (outer, inner)
            deliver(_call("second"), persist=False)
        deliver(_call("third"), persist=False)

    assert [r.run_id for r in outer.calls] == ["first", "second", "third"]
    assert [r.run_id for r in inner.calls] == ["second"]
    # The inner block's value wins where both name an attribute.
    assert outer.calls[1].attrs == {"project": "inner-p", "team": "inner"}
    assert outer.calls[0].attrs == outer.calls[2].attrs == {"project": "outer"}


def test_a_block_that_raises_is_closed_all_the_same() -> None:
    with pytest.raises(RuntimeError, match="boom"), track_usage(persist=False):
        assert len(current_sessions()) == 1
        raise RuntimeError("boom")
    assert current_sessions() == ()


async def test_asyncio_tasks_see_the_block_they_were_started_in() -> None:
    async def call(run_id: str) -> None:
        await asyncio.sleep(0)
        deliver(_call(run_id), persist=False)

    async def in_own_block(run_id: str) -> UsageSession:
        with track_usage(persist=False) as own:
            await call(run_id)
        return own

    with track_usage(persist=False) as session:
        mine = [asyncio.create_task(call(f"task-{i}")) for i in range(3)]
        own = await asyncio.create_task(in_own_block("own"))
        await asyncio.gather(*mine)
    await call("outside")

    assert sorted(r.run_id for r in session.calls) == ["own", "task-0", "task-1", "task-2"]
    assert [r.run_id for r in own.calls] == ["own"]


def test_a_plain_thread_does_not_inherit_the_block() -> None:
    # threading.Thread starts with an empty context; LangChain's executors copy theirs.
    with track_usage(persist=False) as session:
        thread = threading.Thread(
            target=deliver, args=(_call("thread"),), kwargs={"persist": False}
        )
        thread.start()
        thread.join()
    assert session.calls == []


# --- with LangChain calls ---------------------------------------------------------------


def test_a_handler_inside_a_block_counts_each_call_once(wire: WireServer, db_path: Path) -> None:
    from modelforge.langchain import UsageCallbackHandler

    with track_usage(project="alpha") as session:
        _openai(wire).invoke("q", config={"callbacks": [UsageCallbackHandler()]})

    assert len(session.calls) == 1
    assert session.total_cost == DEFAULT_Q_COST
    (row,) = _rows(db_path)
    assert json.loads(row["attrs"]) == {"project": "alpha"}


@needs_encodings
def test_nested_blocks_around_langchain_calls(wire: WireServer, db_path: Path) -> None:
    with track_usage(project="outer-p") as outer:
        with track_usage(team="inner-t") as inner:
            _openai(wire).invoke("q")
        list(_openai(wire, stream_usage=False).stream("hello there"))
        _openai(wire, model="my-custom-model").invoke("q")

    assert len(inner.calls) == 1
    assert inner.total_cost == DEFAULT_Q_COST
    assert len(outer.calls) == 3
    # priced: 0.00007 for "q", and the estimate 8 * 2.5 + 9 * 10 = 110 per 1M -> 0.00011
    assert outer.total_cost == Decimal("0.00018")
    assert outer.unpriced == 1
    assert outer.estimated == 1
    # input 4 + 8 + 4, output 6 + 9 + 6
    assert (outer.usage.input_tokens, outer.usage.output_tokens) == (16, 21)
    assert outer.usage.estimated is True
    by_model = outer.by_model()
    assert set(by_model) == {"gpt-4o", "my-custom-model"}
    assert (by_model["gpt-4o"].calls, by_model["gpt-4o"].cost) == (2, Decimal("0.00018"))
    assert by_model["gpt-4o"].unpriced == 0
    assert (by_model["my-custom-model"].calls, by_model["my-custom-model"].unpriced) == (1, 1)
    assert by_model["my-custom-model"].cost == Decimal(0)

    rows = _rows(db_path)
    assert len(rows) == 3
    assert json.loads(rows[0]["attrs"]) == {"project": "outer-p", "team": "inner-t"}
    assert json.loads(rows[1]["attrs"]) == {"project": "outer-p"}
    assert (rows[2]["priced"], rows[2]["cost_usd"], rows[2]["cost_pusd"]) == (0, None, None)
    assert json.loads(rows[2]["price_flags"]) == ["unknown_model"]
    assert rows[0]["run_id"] == inner.calls[0].run_id


async def test_async_block_with_gathered_langchain_calls(wire: WireServer, db_path: Path) -> None:
    async with httpx.AsyncClient() as client, track_usage(team="async") as session:
        model = _openai(wire, http_async_client=client)
        answers = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(5)))
    assert len(answers) == 5

    assert len(session.calls) == 5
    # 5 * 70 per 1M
    assert session.total_cost == Decimal("0.00035")
    rows = _rows(db_path)
    assert len(rows) == 5
    assert all(json.loads(r["attrs"]) == {"team": "async"} for r in rows)


# --- per-agent sessions (issue #25) -------------------------------------------------


def _placed(
    run_id: str,
    *,
    agent: str | None = None,
    provider: str | None = "openai",
    model: str = "gpt-4o",
    ago: timedelta = timedelta(0),
) -> CallRecord:
    record = _call(run_id, model=model)
    record.agent, record.provider = agent, provider
    record.ts = format_ts(datetime.now(timezone.utc) - ago)
    return record


def test_totals_by_agent_and_by_provider() -> None:
    with track_usage(persist=False) as session:
        deliver(_placed("a", agent="writer"), persist=False)
        deliver(_placed("b", agent="writer", model="gpt-4o-mini"), persist=False)
        deliver(_placed("c", agent="reviewer", provider="azure"), persist=False)
        deliver(_placed("d", provider=None, model="my-own-model"), persist=False)

    agents = session.by_agent()
    assert list(agents) == ["writer", "reviewer", None]
    # gpt-4o 3500 + gpt-4o-mini 210 per 1M
    assert (agents["writer"].calls, agents["writer"].cost) == (2, Decimal("0.00371"))
    assert agents[None].unpriced == 1 and agents[None].cost == 0
    providers = session.by_provider()
    assert providers["openai"].calls == 2
    assert providers["azure"].cost == GPT4O_CALL
    assert providers[None].usage == Usage(input_tokens=1000, output_tokens=100)


def test_started_at_elapsed_and_burn_rate() -> None:
    with track_usage(persist=False) as session:
        before = datetime.now(timezone.utc)
        assert session.started_at <= before and session.elapsed >= timedelta(0)
        session.started_at = before - timedelta(hours=1)
        deliver(_placed("old", ago=timedelta(minutes=30)), persist=False)
        deliver(_placed("new", ago=timedelta(minutes=5)), persist=False)

    recent = session.burn_rate(10)
    # only "new" is in the last 10 minutes: $0.0035 per 1/6 hour = $0.021 per hour;
    # 1100 tokens per 10 minutes = 110 per minute
    assert recent.calls == 1 and recent.window == timedelta(minutes=10)
    assert recent.usd_per_hour == Decimal("0.021")
    assert recent.tokens_per_minute == 110
    whole = session.burn_rate()
    # both calls over the hour (and a little) the session has run: at most $0.007 per hour
    assert whole.calls == 2
    assert Decimal("0.0069") < whole.usd_per_hour <= Decimal("0.007")


def test_a_window_longer_than_the_session_is_the_session() -> None:
    with track_usage(persist=False) as session:
        session.started_at = datetime.now(timezone.utc) - timedelta(minutes=2)
        deliver(_placed("one", ago=timedelta(minutes=1)), persist=False)
    rate = session.burn_rate(60)
    assert timedelta(minutes=2) <= rate.window < timedelta(minutes=3)
    # $0.0035 over about 2 minutes: about $0.105 per hour, not $0.0035 per hour
    assert Decimal("0.07") < rate.usd_per_hour <= Decimal("0.105")


def test_a_resumed_session_carries_on_from_the_log(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    first = _placed("n1", agent="writer", ago=timedelta(hours=3))
    with track_usage(db=db, session="nightly-run"):
        deliver(first)
        deliver(_placed("n2", agent="reviewer", model="gpt-4o-mini", ago=timedelta(hours=2)))
    with track_usage(db=db, session="other-run"):
        deliver(_placed("o1", agent="writer"))
    assert modelforge.flush()

    with track_usage(db=db, session="nightly-run", resume=True) as session:
        deliver(_placed("n3", agent="writer"))
    assert [r.run_id for r in session.calls] == ["n3"]
    # n1 + n3 on gpt-4o (2 × 3500) + n2 on gpt-4o-mini (210) per 1M; other-run not counted
    assert session.total_cost == Decimal("0.00721")
    assert session.usage == Usage(input_tokens=3000, output_tokens=300)
    writer = session.by_agent()["writer"]
    assert (writer.calls, writer.cost) == (2, 2 * GPT4O_CALL)
    assert session.by_model()["gpt-4o-mini"].calls == 1
    assert session.started_at == datetime.fromisoformat(first.ts.replace("Z", "+00:00"))
    assert session.burn_rate(60).calls == 1  # the window holds this run's calls only


def test_resume_needs_a_session_name_and_a_new_log_has_nothing(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match='session="name"'):
        track_usage(resume=True)
    with track_usage(db=tmp_path / "none.db", session="fresh", resume=True) as session:
        pass
    assert (session.total_cost, session.prior) == (Decimal(0), [])


def test_the_session_name_is_recorded_as_an_attribute(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    with track_usage(db=db, session="nightly-run"):
        deliver(_placed("s1"))
    assert modelforge.flush()
    row = sqlite3.connect(db).execute("SELECT attrs FROM calls").fetchone()
    assert json.loads(row[0]) == {"session": "nightly-run"}
