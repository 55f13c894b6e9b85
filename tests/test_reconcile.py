"""`modelforge reconcile` against the wire server's billing stub, over a hand-built log.

The log (prices per 1M tokens, from the bundled table):

OpenAI
1. 2026-11-01T09:00 gpt-4o → served gpt-4o-2024-08-06: 1000 in (800 cached), 100 out
   → 200×2.5 + 800×1.25 + 100×10 = 500 + 1000 + 1000 = 2500 → $0.0025
   (input $0.0005, cached input $0.001, output $0.001)
2. 2026-11-01T23:59:59.9 gpt-4o-mini → gpt-4o-mini-2024-07-18: 10000 in, 1000 out
   → 10000×0.15 + 1000×0.6 = 1500 + 600 = 2100 → $0.0021 (input $0.0015, output $0.0006)
3. 2026-11-02T00:00:00.0 gpt-4o-mini-2024-07-18: 20000 in → 20000×0.15 = 3000 → $0.003
4. 2026-11-04 gpt-4o-2024-08-06: 1000 in → 1000×2.5 = 2500 → $0.0025 (never billed)

Anthropic
5. 2026-11-01T10:00 claude-sonnet-4-5 → claude-sonnet-4-5-20250929: 5300 in of which
   4000 cache read and 1000 cache write (5 min), 250 out
   → 300×3 + 4000×0.3 + 1000×3.75 + 250×15 = 900 + 1200 + 3750 + 3750 = 9600 → $0.0096
6. 2026-11-01 mystery-model: 100 in, 10 out → unpriced

The OpenAI billing (`OPENAI_BILLING`) bills 1 and 2 exactly, bills 3 as $0.00305 (the
log is 1.64% under), and on 2026-11-03 bills web search and a model never logged.
"""

from __future__ import annotations

import doctest
import json
import logging
import sqlite3
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge import reconcile as reconcile_module
from modelforge.cli import cli
from modelforge.errors import BillingAPIError, ReconcileError, UsageLogError
from modelforge.migrations import MIGRATION_NAMES
from modelforge.pricing.cost import price
from modelforge.reconcile import AdminClient, reconcile
from modelforge.records import CallRecord
from modelforge.store import UsageLog, open_db
from modelforge.usage import Usage
from modelforge.wire import (
    ANTHROPIC_COST_REPORT,
    ANTHROPIC_USAGE_REPORT,
    OPENAI_COSTS,
    OPENAI_USAGE_COMPLETIONS,
    BillingFailure,
    WireServer,
    anthropic_cost,
    anthropic_usage,
    openai_cost,
    openai_usage,
)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
OPENAI_KEY = "sk-admin-openai-7Hq2s3cr3tKEYvalue"
ANTHROPIC_KEY = "sk-ant-admin01-anthropic-s3cr3tKEYvalue"
RANGE = ("2026-11-01", "2026-11-05")  # four UTC days; the end is not included

OPENAI_BILLING = {
    "2026-11-01": [
        openai_cost("gpt-4o-2024-08-06, input", "0.0005"),
        openai_cost("gpt-4o-2024-08-06, cached input", "0.001"),
        openai_cost("gpt-4o-2024-08-06, output", "0.00100000000000000"),
        openai_cost("gpt-4o-mini-2024-07-18, input", "0.0015"),
        openai_cost("gpt-4o-mini-2024-07-18, output", "0.0006"),
    ],
    "2026-11-02": [openai_cost("gpt-4o-mini-2024-07-18, input", "0.00305")],
    "2026-11-03": [
        openai_cost("web search tool calls", "0.01"),
        openai_cost("gpt-4.1-2025-04-14, output", "0.02"),
    ],
}
OPENAI_USAGE = {
    "2026-11-01": [
        openai_usage(
            "gpt-4o-2024-08-06", input_tokens=1000, input_cached_tokens=800, output_tokens=100
        ),
        openai_usage("gpt-4o-mini-2024-07-18", input_tokens=10000, output_tokens=1000),
    ],
    "2026-11-02": [openai_usage("gpt-4o-mini-2024-07-18", input_tokens=20000)],
}
SONNET = "claude-sonnet-4-5-20250929"
ANTHROPIC_BILLING = {
    "2026-11-01": [
        # Cents: "0.09" is $0.0009, "0.375" is $0.00375.
        anthropic_cost(
            "Claude Sonnet 4.5 Usage - Input Tokens",
            "0.09",
            model=SONNET,
            token_type="uncached_input_tokens",
        ),
        anthropic_cost(
            "Claude Sonnet 4.5 Usage - Cache Read",
            "0.12",
            model=SONNET,
            token_type="cache_read_input_tokens",
        ),
        anthropic_cost(
            "Claude Sonnet 4.5 Usage - Input Tokens, Cache Write 5m",
            "0.375",
            model=SONNET,
            token_type="cache_creation.ephemeral_5m_input_tokens",
        ),
        anthropic_cost(
            "Claude Sonnet 4.5 Usage - Output Tokens",
            "0.375",
            model=SONNET,
            token_type="output_tokens",
        ),
        anthropic_cost(
            "Claude Opus 4.1 Usage - Output Tokens",
            "123.45",
            model="claude-opus-4-1-20250805",
            token_type="output_tokens",
        ),
        anthropic_cost(
            "Claude Sonnet 4.5 Batch Usage - Output Tokens",
            "50",
            model=SONNET,
            token_type="output_tokens",
            service_tier="batch",
        ),
        anthropic_cost("Web Search", "1", cost_type="web_search"),
    ],
}
ANTHROPIC_USAGE = {
    "2026-11-01": [
        anthropic_usage(
            SONNET,
            uncached_input_tokens=300,
            cache_read_input_tokens=4000,
            cache_creation_5m=1000,
            output_tokens=250,
        ),
        anthropic_usage(SONNET, uncached_input_tokens=7, output_tokens=3, service_tier="priority"),
    ],
}


def _record(run_id: str, ts: str, model: str, served: str | None, provider: str, usage: Usage):
    return CallRecord(
        run_id=run_id,
        usage=usage,
        cost=price(served or model, usage, provider),
        ts=ts,
        provider=provider,
        model=model,
        response_model=served,
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"
    usage_log = UsageLog(path)
    for record in (
        _record(
            "1",
            "2026-11-01T09:00:00.000000Z",
            "gpt-4o",
            "gpt-4o-2024-08-06",
            "openai",
            Usage(input_tokens=1000, cache_read_tokens=800, output_tokens=100),
        ),
        _record(
            "2",
            "2026-11-01T23:59:59.900000Z",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            "openai",
            Usage(input_tokens=10000, output_tokens=1000),
        ),
        _record(
            "3",
            "2026-11-02T00:00:00.000000Z",
            "gpt-4o-mini-2024-07-18",
            None,
            "openai",
            Usage(input_tokens=20000),
        ),
        _record(
            "4",
            "2026-11-04T12:00:00.000000Z",
            "gpt-4o-2024-08-06",
            None,
            "openai",
            Usage(input_tokens=1000),
        ),
        _record(
            "5",
            "2026-11-01T10:00:00.000000Z",
            "claude-sonnet-4-5",
            SONNET,
            "anthropic",
            Usage(
                input_tokens=5300,
                cache_read_tokens=4000,
                cache_write_tokens=1000,
                output_tokens=250,
            ),
        ),
        _record(
            "6",
            "2026-11-01T11:00:00.000000Z",
            "mystery-model",
            None,
            "anthropic",
            Usage(input_tokens=100, output_tokens=10),
        ),
    ):
        usage_log.submit(record)
    usage_log.close()
    return path


@pytest.fixture
def billing(wire: WireServer) -> WireServer:
    wire.set_billing(OPENAI_COSTS, OPENAI_BILLING, page_size=1)
    wire.set_billing(OPENAI_USAGE_COMPLETIONS, OPENAI_USAGE)
    wire.set_billing(ANTHROPIC_COST_REPORT, ANTHROPIC_BILLING, page_size=2)
    wire.set_billing(ANTHROPIC_USAGE_REPORT, ANTHROPIC_USAGE)
    return wire


def _env(wire: WireServer) -> dict[str, str]:
    return {
        "OPENAI_ADMIN_KEY": OPENAI_KEY,
        "ANTHROPIC_ADMIN_KEY": ANTHROPIC_KEY,
        "MODELFORGE_OPENAI_ADMIN_URL": wire.base_url,
        "MODELFORGE_ANTHROPIC_ADMIN_URL": wire.base_url,
    }


def _run(wire: WireServer, log: Path, provider: str = "openai", **kwargs: Any) -> Any:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("environ", _env(wire))
    return reconcile(provider, *RANGE, db=log, **kwargs)


def _rows(result: Any) -> dict[tuple[str | None, str, str], Any]:
    return {(r.day, r.model, r.service_tier): r for r in result.rows}


def _billed_table(log: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(log)
    try:
        return conn.execute(
            "SELECT provider, day, model, line_item, token_class, service_tier, amount_usd, "
            "tokens, source FROM billed ORDER BY 1, 2, 3, 4"
        ).fetchall()
    finally:
        conn.close()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


# --- OpenAI ---------------------------------------------------------------------------


def test_openai_rows_verdicts_and_agreement(billing: WireServer, log: Path) -> None:
    result = _run(billing, log)
    rows = _rows(result)
    gpt4o = rows[("2026-11-01", "openai/gpt-4o-2024-08-06", "standard")]
    assert (gpt4o.billed_usd, gpt4o.logged_usd, gpt4o.verdict) == (
        Decimal("0.0025"),
        Decimal("0.0025"),
        "match",
    )
    # Billed per token class as the line items split it, beside the log's cost parts.
    assert gpt4o.billed.usd == {
        "input": Decimal("0.0005"),
        "cache_read": Decimal("0.001"),
        "output": Decimal("0.001"),
    }
    assert gpt4o.logged.usd["cache_read"] == Decimal("0.001")
    assert gpt4o.billed.tokens == {"input": 200, "cache_read": 800, "output": 100}
    assert gpt4o.logged.tokens == {"input": 200, "cache_read": 800, "cache_write": 0, "output": 100}

    mini_2 = rows[("2026-11-02", "openai/gpt-4o-mini-2024-07-18", "standard")]
    assert mini_2.verdict == "differs"
    # 0.003 - 0.00305 = -0.00005; / 0.00305 = -1.639…%
    assert mini_2.diff_usd == Decimal("-0.00005")
    assert round(mini_2.diff_pct, 3) == Decimal("-1.639")

    web = rows[("2026-11-03", "", "standard")]
    assert (web.verdict, web.billed_usd) == ("not_logged", Decimal("0.01"))
    assert "never in the log" in web.reason
    never_logged = rows[("2026-11-03", "openai/gpt-4.1-2025-04-14", "standard")]
    assert never_logged.verdict == "not_logged"
    assert "not made through a tracked client" in never_logged.reason

    # 2 of the 3 comparable rows; billed 0.0025 + 0.0021 + 0.00305 = 0.00765, logged
    # 0.0025 + 0.0021 + 0.003 = 0.0076; 0.0076 / 0.00765 = 99.35%.
    assert result.agreement.line() == (
        "agreement: 2 of 3 day×model rows within 1%; billed $0.00765, logged $0.0076 (99.3%)"
    )


def test_a_call_at_23_59_59_9_utc_belongs_to_that_day(billing: WireServer, log: Path) -> None:
    rows = _rows(_run(billing, log))
    mini_1 = rows[("2026-11-01", "openai/gpt-4o-mini-2024-07-18", "standard")]
    mini_2 = rows[("2026-11-02", "openai/gpt-4o-mini-2024-07-18", "standard")]
    assert (mini_1.calls, mini_1.logged_usd, mini_1.verdict) == (1, Decimal("0.0021"), "match")
    assert (mini_2.calls, mini_2.logged_usd) == (1, Decimal("0.003"))


def test_dated_billing_names_match_the_logged_calls(billing: WireServer, log: Path) -> None:
    rows = _rows(_run(billing, log))
    gpt4o = rows[("2026-11-01", "openai/gpt-4o-2024-08-06", "standard")]
    # The log asked for the alias and was served the dated model; billing names that.
    assert gpt4o.billing_names == {"gpt-4o-2024-08-06"}
    assert gpt4o.logged_names == {"gpt-4o-2024-08-06"}
    sonnet = _rows(_run(billing, log, "anthropic"))[
        ("2026-11-01", f"anthropic/{SONNET}", "standard")
    ]
    assert sonnet.verdict == "match"


def test_a_logged_day_without_a_billing_row_is_explained(billing: WireServer, log: Path) -> None:
    result = _run(billing, log)
    row = _rows(result)[("2026-11-04", "openai/gpt-4o-2024-08-06", "standard")]
    assert (row.billed_usd, row.logged_usd, row.verdict) == (None, Decimal("0.0025"), "not_billed")
    assert result.agreement.compared == 3  # not counted as a disagreement
    assert result.explained()["not_billed"]["logged_usd"] == Decimal("0.0025")


def test_pages_are_followed_to_the_end(billing: WireServer, log: Path) -> None:
    _run(billing, log)
    costs = [r for r in billing.requests if r["path"] == OPENAI_COSTS]
    # Four days at one bucket a page: four pages, each asking for the next.
    assert len(costs) == 4
    assert [r["query"].get("page") is None for r in costs] == [True, False, False, False]
    assert len({r["query"]["page"][0] for r in costs[1:]}) == 3
    assert costs[0]["query"]["group_by"] == ["line_item"]
    assert costs[0]["query"]["start_time"] == ["1793491200"]  # 2026-11-01T00:00:00Z
    usage = [r for r in billing.requests if r["path"] == OPENAI_USAGE_COMPLETIONS]
    assert usage[0]["query"]["group_by"] == ["model", "batch"]


def test_429_with_retry_after_then_success(billing: WireServer, log: Path) -> None:
    billing.fail_billing(BillingFailure(429, retry_after="1"))
    slept: list[float] = []
    result = _run(billing, log, sleep=slept.append)
    assert slept == [1.0]
    assert result.agreement.within == 2
    first_pages = [r for r in billing.requests if "page" not in r["query"]]
    assert [r["path"] for r in first_pages[:2]] == [OPENAI_COSTS, OPENAI_COSTS]


def test_5xx_past_the_retry_budget_stores_nothing(billing: WireServer, log: Path) -> None:
    _run(billing, log)
    before = _billed_table(log)
    billing.set_billing(OPENAI_COSTS, {"2026-11-01": [openai_cost("gpt-4o, input", "9")]})
    billing.fail_billing(*[BillingFailure(503)] * 7)
    slept: list[float] = []
    with pytest.raises(BillingAPIError, match="still answered 503 after 7 attempt") as caught:
        _run(billing, log, sleep=slept.append)
    assert caught.value.status == 503
    assert slept == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]  # exponential backoff, capped
    assert _billed_table(log) == before


def test_a_retry_after_longer_than_the_budget_gives_up_at_once(
    billing: WireServer, log: Path
) -> None:
    billing.fail_billing(BillingFailure(429, retry_after="3600"))
    slept: list[float] = []
    with pytest.raises(BillingAPIError, match="bounded to 120 s"):
        _run(billing, log, sleep=slept.append)
    assert slept == []


def test_paging_that_stops_short_is_an_error_not_a_result(billing: WireServer, log: Path) -> None:
    billing.set_billing(OPENAI_COSTS, OPENAI_BILLING, page_size=1, lose_next_page=True)
    with pytest.raises(ReconcileError, match=r"without a new `next_page`.*nothing was stored"):
        _run(billing, log)
    assert _billed_table(log) == []


def test_amounts_keep_every_digit_of_the_raw_text(billing: WireServer, log: Path) -> None:
    # Through a float, 21 significant digits would come back as 0.12345678901234568.
    amount = "0.12345678901234567891"
    billing.set_billing(OPENAI_COSTS, {"2026-11-03": [openai_cost("gpt-4o, input", amount)]})
    row = _rows(_run(billing, log))[("2026-11-03", "openai/gpt-4o", "standard")]
    assert row.billed_usd == Decimal(amount)
    assert [r[6] for r in _billed_table(log) if r[6] is not None] == [amount]


def test_settling_days_are_explained_not_counted(billing: WireServer, log: Path) -> None:
    # At noon on 2026-11-04, OpenAI days settle 24 h after they end: 11-03 and 11-04
    # have not.
    result = _run(billing, log, now=datetime(2026, 11, 4, 12, tzinfo=timezone.utc))
    verdicts = {(r.day, r.model): r.verdict for r in result.rows}
    assert verdicts[("2026-11-03", "openai/gpt-4.1-2025-04-14")] == "settling"
    assert verdicts[("2026-11-04", "openai/gpt-4o-2024-08-06")] == "settling"
    assert verdicts[("2026-11-02", "openai/gpt-4o-mini-2024-07-18")] == "differs"


def test_by_model_sums_the_days(billing: WireServer, log: Path) -> None:
    result = _run(billing, log, by="model")
    gpt4o = [(r.verdict, r.billed_usd, r.logged_usd) for r in result.rows
             if r.model == "openai/gpt-4o-2024-08-06"]  # fmt: skip
    # The unbilled day stays its own row instead of doubling the comparable one.
    assert gpt4o == [
        ("match", Decimal("0.0025"), Decimal("0.0025")),
        ("not_billed", None, Decimal("0.0025")),
    ]
    mini = _rows(result)[(None, "openai/gpt-4o-mini-2024-07-18", "standard")]
    # billed 0.0021 + 0.00305 = 0.00515, logged 0.0021 + 0.003 = 0.0051: 0.97% apart.
    assert (mini.billed_usd, mini.logged_usd, mini.verdict) == (
        Decimal("0.00515"),
        Decimal("0.0051"),
        "match",
    )
    assert result.agreement.compared == 3  # the headline always counts day×model rows


# --- Anthropic ------------------------------------------------------------------------


def test_anthropic_amounts_are_cents(billing: WireServer, log: Path) -> None:
    result = _run(billing, log, "anthropic")
    rows = _rows(result)
    opus = rows[("2026-11-01", "anthropic/claude-opus-4-1-20250805", "standard")]
    assert opus.billed_usd == Decimal("1.2345")  # "123.45" cents
    assert opus.verdict == "not_logged"
    sonnet = rows[("2026-11-01", f"anthropic/{SONNET}", "standard")]
    # 0.09 + 0.12 + 0.375 + 0.375 = 0.96 cents = $0.0096, the hand-computed cost.
    assert (sonnet.billed_usd, sonnet.logged_usd) == (Decimal("0.0096"), Decimal("0.0096"))
    assert (
        sonnet.billed.tokens
        == sonnet.logged.tokens
        == {
            "input": 300,
            "cache_read": 4000,
            "cache_write": 1000,
            "output": 250,
        }
    )
    stored = {row[3]: row[6] for row in _billed_table(log) if row[0] == "anthropic"}
    assert stored["Claude Opus 4.1 Usage - Output Tokens"] == "1.2345"
    assert stored["Claude Sonnet 4.5 Usage - Input Tokens"] == "0.0009"


def test_batch_priority_and_unpriced_rows_are_explained(billing: WireServer, log: Path) -> None:
    result = _run(billing, log, "anthropic")
    rows = _rows(result)
    batch = rows[("2026-11-01", f"anthropic/{SONNET}", "batch")]
    assert (batch.verdict, batch.billed_usd) == ("tier", Decimal("0.5"))
    priority = rows[("2026-11-01", f"anthropic/{SONNET}", "priority")]
    assert priority.verdict == "tier"
    assert "leaves Priority Tier costs out" in priority.reason
    assert priority.billed.tokens == {"input": 7, "output": 3}
    mystery = rows[("2026-11-01", "anthropic/mystery-model", "standard")]
    assert (mystery.verdict, mystery.logged_usd) == ("unpriced", None)
    # Billed 0.0096 + 0.5 + 1.2345 + 0.01 (web search) in all, but only sonnet compares.
    assert result.agreement.line() == (
        "agreement: 1 of 1 day×model rows within 1%; billed $0.0096, logged $0.0096 (100.0%)"
    )
    requests = [r for r in billing.requests if r["path"] == ANTHROPIC_COST_REPORT]
    assert requests[0]["query"]["group_by[]"] == ["description"]
    assert requests[0]["query"]["starting_at"] == ["2026-11-01T00:00:00Z"]
    assert requests[0]["headers"]["anthropic-version"] == "2023-06-01"
    assert len(requests) == 2  # four days at two buckets a page


# --- storing ----------------------------------------------------------------------------


def test_the_billed_table_comes_from_a_migration(log: Path) -> None:
    conn = open_db(log, create=False)
    try:
        columns = {row[1]: row[5] for row in conn.execute("PRAGMA table_info(billed)")}
    finally:
        conn.close()
    assert "m004_billed" in MIGRATION_NAMES
    key = sorted((pk, name) for name, pk in columns.items() if pk)
    assert [name for _, name in key] == ["provider", "day", "model", "line_item"]
    assert {"amount_usd", "tokens", "source", "fetched_at"} <= columns.keys()


def test_rerunning_replaces_the_days_rows(billing: WireServer, log: Path) -> None:
    _run(billing, log)
    first = _billed_table(log)
    assert ("openai", "2026-11-02", "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18, input",
            "input", "standard", "0.00305", None, OPENAI_COSTS) in first  # fmt: skip
    _run(billing, log)
    assert _billed_table(log) == first

    # A corrected bill for 11-02 replaces that day only when only that day is fetched.
    billing.set_billing(
        OPENAI_COSTS, {"2026-11-02": [openai_cost("gpt-4o-mini-2024-07-18, input", "0.003")]}
    )
    reconcile("openai", "2026-11-02", "2026-11-03", db=log, environ=_env(billing), now=NOW)
    again = _billed_table(log)
    assert len(again) == len(first)
    assert [r[6] for r in again if r[1] == "2026-11-02" and r[6]] == ["0.003"]
    assert [r for r in again if r[1] != "2026-11-02"] == [r for r in first if r[1] != "2026-11-02"]


def test_usage_billed_shows_billed_beside_computed(billing: WireServer, log: Path) -> None:
    _run(billing, log)
    code, out = _cli("usage", "--db", str(log), "--billed", "--provider", "openai",
                     "--since", RANGE[0], "--until", RANGE[1], "--json")  # fmt: skip
    assert code == 0, out
    data = json.loads(out)
    by_day = {row["day"]: (row["cost_usd"], row["billed_usd"]) for row in data["rows"]}
    assert by_day == {
        "2026-11-01": ("0.0046", "0.0046"),  # 0.0025 + 0.0021 both sides
        "2026-11-02": ("0.003", "0.00305"),
        "2026-11-03": ("0", "0.03"),  # billed only: web search + gpt-4.1
        "2026-11-04": ("0.0025", None),
    }
    assert data["totals"]["billed_usd"] == "0.03765"
    code, out = _cli("usage", "--db", str(log), "--billed", "--by", "day")
    assert code == 0 and "Billed (USD)" in out


def test_usage_billed_rejects_groupings_billing_cannot_follow(log: Path) -> None:
    code, out = _cli("usage", "--db", str(log), "--billed", "--by", "model")
    assert code == 2
    assert "--billed: group by day" in out


# --- keys and errors --------------------------------------------------------------------


def test_no_key_names_the_variable(
    billing: WireServer, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MODELFORGE_OPENAI_ADMIN_URL", billing.base_url)
    code, out = _cli("reconcile", "--provider", "openai", "--db", str(log))
    assert code == 1
    assert out.startswith("Error: OPENAI_ADMIN_KEY is not set")
    assert billing.requests == []  # no request was made without a key
    with pytest.raises(ReconcileError, match="ANTHROPIC_ADMIN_KEY is not set"):
        reconcile("anthropic", db=log, environ={})


@pytest.mark.parametrize(
    ("provider", "variable", "key", "header"),
    [
        ("openai", "OPENAI_ADMIN_KEY", OPENAI_KEY, "authorization"),
        ("anthropic", "ANTHROPIC_ADMIN_KEY", ANTHROPIC_KEY, "x-api-key"),
    ],
)
def test_the_key_never_appears_even_on_a_401(
    billing: WireServer,
    log: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    variable: str,
    key: str,
    header: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    billing.require_billing_key("sk-admin-the-right-one")
    monkeypatch.setenv(variable, key)
    monkeypatch.setenv(f"MODELFORGE_{provider.upper()}_ADMIN_URL", billing.base_url)
    code, out = _cli("reconcile", "--provider", provider, "--db", str(log))
    assert code == 1
    assert "answered 401" in out and f"check {variable}" in out
    assert "[redacted]" in out  # the server quoted the key back; we did not pass it on
    assert key not in out and key not in caplog.text
    assert key in billing.requests[-1]["headers"][header]  # it was sent, so it could leak
    assert key not in repr(AdminClient(provider, key, billing.base_url))
    with pytest.raises(BillingAPIError) as caught:
        reconcile(provider, db=log, environ=_env(billing), now=NOW)
    assert caught.value.status == 401 and key not in str(caught.value)


def test_a_missing_log_is_an_error_before_any_fetch(billing: WireServer, tmp_path: Path) -> None:
    with pytest.raises(UsageLogError, match="no usage log"):
        _run(billing, tmp_path / "missing.db")
    assert billing.requests == []


# --- the command ------------------------------------------------------------------------


def test_cli_table_and_json(
    billing: WireServer, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env(billing).items():
        monkeypatch.setenv(name, value)
    code, out = _cli("reconcile", "--provider", "openai", "--since", RANGE[0],
                     "--until", RANGE[1], "--db", str(log))  # fmt: skip
    assert code == 0, out
    assert out.rstrip().endswith(
        "agreement: 2 of 3 day×model rows within 1%; billed $0.00765, logged $0.0076 (99.3%)"
    )
    assert "not_billed (1 row(s), billed $0, logged $0.0025)" in out
    assert "-1.64%" in out

    code, out = _cli("reconcile", "--provider", "openai", "--since", RANGE[0],
                     "--until", RANGE[1], "--db", str(log), "--json", "--by", "model")  # fmt: skip
    assert code == 0, out
    data = json.loads(out)
    assert data["schema"] == "modelforge.reconcile/1"
    assert (data["since"], data["until"], data["by"]) == ("2026-11-01", "2026-11-05", "model")
    assert data["agreement"] == {
        "within": 2,
        "compared": 3,
        "tolerance_pct": "1",
        "billed_usd": "0.00765",
        "logged_usd": "0.0076",
        "logged_pct": "99.3464",
    }
    mini = next(r for r in data["rows"] if r["model"] == "openai/gpt-4o-mini-2024-07-18")
    assert (mini["billed_usd"], mini["logged_usd"], mini["diff_usd"]) == (
        "0.00515",
        "0.0051",
        "-0.00005",
    )
    assert mini["by_token_class"]["output"] == {"billed_usd": "0.0006", "logged_usd": "0.0006"}


def test_cli_rejects_a_bad_until(log: Path) -> None:
    code, out = _cli("reconcile", "--provider", "openai", "--since", "2026-11-05",
                     "--until", "2026-11-01", "--db", str(log))  # fmt: skip
    assert code == 2
    assert "--until: must be later than --since" in out


def test_docstring_examples() -> None:
    result = doctest.testmod(reconcile_module)
    assert result.attempted > 0 and result.failed == 0
