"""`usage efficiency` on a constructed log, every figure computed by hand.

Prices per 1M tokens: gpt-4o 2.50 in, 1.25 cached, 10 out; claude-sonnet-4-5 3 in,
0.30 cache read, 3.75 cache write, 15 out, and over 200,000 prompt tokens 6 in, 0.60
cache read, 22.50 out; gpt-5-mini 0.25 in, 2 out; gpt-4o-mini 0.15 in, 0.075 cached,
0.60 out (no cache-write price: writes at the input price).

    call  model              agent     trace  in (of which cached)   out (reasoning)
    1     gpt-4o             writer    t-a    10,000 (8,000 read)    500
    2     claude-sonnet-4-5  reviewer  t-b    5,300 (4,000 read,     250
                                              1,000 written)
    3     claude-sonnet-4-5  reviewer  t-b    250,000 (200,000 read) 1,000
    4     gpt-5-mini         planner   t-a    800                    1,200 (1,024)
    5     mystery-model      planner   —      100                    10    (unpriced)

Cost as logged, and without caching (every cached token at the plain input price):
    1: 2000×2.5 + 8000×1.25 + 500×10 = 20,000 → $0.02;   uncached 25,000 + 5,000 → $0.03
    2: 300×3 + 4000×0.3 + 1000×3.75 + 250×15 = 9,600 → $0.0096;
       uncached 5300×3 + 250×15 = 19,650 → $0.01965
    3: (long context) 50000×6 + 200000×0.6 + 1000×22.5 = 442,500 → $0.4425;
       uncached 250000×6 + 22,500 = 1,522,500 → $1.5225
    4: 800×0.25 + 1200×2 = 2,600 → $0.0026; nothing cached
Saved by caching: 0.01 + 0.01005 + 1.08 = $1.10005.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge.cli import cli
from modelforge.efficiency import efficiency
from modelforge.errors import UnknownModelError
from modelforge.records import CallRecord, format_ts, price_call
from modelforge.store import UsageLog, open_db
from modelforge.usage import Usage

YESTERDAY = format_ts(datetime.now(timezone.utc) - timedelta(days=1))
CALLS: list[tuple[str, str, str, str | None, dict[str, int]]] = [
    ("gpt-4o", "openai", "writer", "t-a", {"input_tokens": 10_000, "cache_read_tokens": 8_000,
                                           "output_tokens": 500}),
    ("claude-sonnet-4-5", "anthropic", "reviewer", "t-b",
     {"input_tokens": 5_300, "cache_read_tokens": 4_000, "cache_write_tokens": 1_000,
      "output_tokens": 250}),
    ("claude-sonnet-4-5", "anthropic", "reviewer", "t-b",
     {"input_tokens": 250_000, "cache_read_tokens": 200_000, "output_tokens": 1_000}),
    ("gpt-5-mini", "openai", "planner", "t-a",
     {"input_tokens": 800, "output_tokens": 1_200, "reasoning_tokens": 1_024}),
    ("mystery-model", "acme", "planner", None, {"input_tokens": 100, "output_tokens": 10}),
]  # fmt: skip


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"
    log = UsageLog(path)
    for n, (model, provider, agent, trace, tokens) in enumerate(CALLS):
        usage = Usage.model_validate(tokens)
        log.submit(
            CallRecord(
                run_id=f"call-{n + 1}",
                usage=usage,
                cost=price_call(usage, model, None, provider),
                ts=YESTERDAY,
                model=model,
                provider=provider,
                agent=agent,
                trace_id=trace,
            )
        )
    log.close()
    return path


@pytest.fixture
def conn(log_path: Path) -> Any:
    db = open_db(log_path, create=False)
    yield db
    db.close()


def test_totals(conn: Any) -> None:
    data = efficiency(conn).as_json()
    t = data["totals"]
    assert t["calls"] == 5 and t["unpriced_calls"] == 1
    # 266,200 input and 2,960 output tokens over 5 calls
    assert (t["input_tokens"], t["output_tokens"]) == (266_200, 2_960)
    assert (t["avg_input_tokens"], t["avg_output_tokens"]) == (53_240.0, 592.0)
    assert t["cache_hit_rate"] == 0.7964  # 212,000 / 266,200
    assert t["reasoning_share"] == 0.3459  # 1,024 / 2,960
    assert t["output_input_ratio"] == 0.0111  # 2,960 / 266,200
    assert t["cost_usd"] == "0.4747"  # 0.02 + 0.0096 + 0.4425 + 0.0026
    assert t["cache_savings_usd"] == "1.10005"


def test_by_agent_and_by_model(conn: Any) -> None:
    agents = {r["agent"]: r for r in efficiency(conn, by="agent").as_json()["rows"]}
    assert list(agents) == ["reviewer", "writer", "planner"]  # costliest first
    assert agents["reviewer"]["cost_usd"] == "0.4521"
    assert agents["reviewer"]["cache_savings_usd"] == "1.09005"  # 0.01005 + 1.08
    assert agents["planner"]["cost_usd"] == "0.0026" and agents["planner"]["unpriced_calls"] == 1
    models = {r["model"]: r for r in efficiency(conn, by="model").as_json()["rows"]}
    assert models["mystery-model"]["cost_usd"] is None
    assert models["mystery-model"]["cache_savings_usd"] is None
    assert models["openai/gpt-5-mini"]["reasoning_share"] == 0.8533  # 1,024 / 1,200


def test_as_another_model_is_exact(conn: Any) -> None:
    mini = efficiency(conn, as_model="gpt-4o-mini").as_json()
    assert mini["as_model"] == "openai/gpt-4o-mini"
    # 1: 2000×0.15 + 8000×0.075 + 500×0.6 = 1,200;  2: 300×0.15 + 4000×0.075 + 1000×0.15
    # + 250×0.6 = 645;  3: 50000×0.15 + 200000×0.075 + 1000×0.6 = 23,100;
    # 4: 800×0.15 + 1200×0.6 = 840;  5: 100×0.15 + 10×0.6 = 21 — the unpriced call too
    assert mini["totals"]["as_model_cost_usd"] == "0.025806"
    # On claude-sonnet-4-5, call 3 keeps its long-context price and call 2 does not
    # take it: 15,900 + 9,600 + 442,500 + 20,400 + 450 per 1M.
    sonnet = efficiency(conn, as_model="claude-sonnet-4-5").as_json()
    assert sonnet["totals"]["as_model_cost_usd"] == "0.48885"
    with pytest.raises(UnknownModelError):
        efficiency(conn, as_model="gpt-4q")


def test_costliest_traces(conn: Any) -> None:
    traces = efficiency(conn, top=2).as_json()["costliest_traces"]
    assert [(t["trace"], t["calls"], t["cost_usd"]) for t in traces] == [
        ("t-b", 2, "0.4521"),  # 0.0096 + 0.4425
        ("t-a", 2, "0.0226"),  # 0.02 + 0.0026
    ]
    assert traces[1]["models"] == ["openai/gpt-4o", "openai/gpt-5-mini"]


def test_the_command(log_path: Path) -> None:
    args = ["usage", "efficiency", "--db", str(log_path), "--by", "agent"]
    result = CliRunner().invoke(cli, [*args, "--as-model", "gpt-4o-mini", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["as_model_cost_usd"] == "0.025806"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    reviewer = next(line for line in result.output.splitlines() if "│ reviewer" in line)
    assert "$1.09" in reviewer and "$0.45" in reviewer  # saved 1.09005, cost 0.4521
    assert "The 5 costliest traces" not in result.output and "t-b" in result.output
    # The default window is the last 30 days: a call from yesterday is in it.
    old = CliRunner().invoke(cli, [*args, "--since", "2020-01-01", "--until", "2020-02-01"])
    assert "reviewer" not in old.output
    assert Decimal(
        json.loads(CliRunner().invoke(cli, [*args[:4], "--json"]).stdout)["totals"]["cost_usd"]
    ) == Decimal("0.4747")
