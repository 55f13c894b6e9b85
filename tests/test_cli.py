"""The `modelforge` CLI over a hand-built log whose costs are computed by hand below.

The log (see `hand_built_log`), prices per 1M tokens:

1. 2026-11-01 gpt-4o: 1000 in (800 cached), 100 out
   → 200×2.5 + 800×1.25 + 100×10 = 2500 → $0.0025
2. 2026-11-01 claude-sonnet-4-5-20250929: 300 + 4000 read + 1000 write in, 250 out
   → 300×3 + 4000×0.3 + 1000×3.75 + 250×15 = 9600 → $0.0096
3. 2026-11-02 gpt-4o: 2000 in, 500 out → 2000×2.5 + 500×10 = 10000 → $0.01
4. 2026-11-02 mystery-model: 100 in, 10 out → unpriced
5. 2026-11-02 gpt-4o (estimated): 50 in, 20 out → 50×2.5 + 20×10 = 325 → $0.000325

Total: $0.022425.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelforge import config
from modelforge.cli import cli
from modelforge.pricing.cost import price
from modelforge.records import CallRecord
from modelforge.store import UsageLog
from modelforge.usage import Usage

TOTAL = Decimal("0.022425")


def _record(
    n: int,
    ts: str,
    model: str,
    provider: str,
    usage: Usage,
    agent: str,
    tags: tuple[str, ...],
    project: str,
) -> CallRecord:
    return CallRecord(
        run_id=f"run-{n}",
        usage=usage,
        cost=price(model, usage, provider),
        ts=ts,
        framework="langchain",
        provider=provider,
        model=model,
        agent=agent,
        tags=tags,
        attrs={"project": project},
    )


@pytest.fixture
def hand_built_log(tmp_path: Path) -> Path:
    path = tmp_path / "hand.db"
    records = [
        _record(
            1,
            "2026-11-01T09:00:00.000000Z",
            "gpt-4o",
            "openai",
            Usage(input_tokens=1000, cache_read_tokens=800, output_tokens=100),
            "writer",
            ("a",),
            "x",
        ),
        _record(
            2,
            "2026-11-01T10:00:00.000000Z",
            "claude-sonnet-4-5-20250929",
            "anthropic",
            Usage(
                input_tokens=5300,
                cache_read_tokens=4000,
                cache_write_tokens=1000,
                output_tokens=250,
            ),
            "reviewer",
            ("a", "b"),
            "y",
        ),
        _record(
            3,
            "2026-11-02T09:00:00.000000Z",
            "gpt-4o",
            "openai",
            Usage(input_tokens=2000, output_tokens=500),
            "writer",
            (),
            "x",
        ),
        _record(
            4,
            "2026-11-02T10:00:00.000000Z",
            "mystery-model",
            "acme",
            Usage(input_tokens=100, output_tokens=10),
            "writer",
            (),
            "x",
        ),
        _record(
            5,
            "2026-11-02T11:00:00.000000Z",
            "gpt-4o",
            "openai",
            Usage(input_tokens=50, output_tokens=20, estimated=True),
            "planner",
            ("b",),
            "y",
        ),
    ]
    log = UsageLog(path)
    for record in records:
        log.submit(record)
    log.close()
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def report_json(db: Path, *args: str) -> dict:
    code, out = run("usage", "--db", str(db), "--format", "json", *args)
    assert code == 0, out
    return json.loads(out)


def test_totals_match_the_hand_computation(hand_built_log: Path) -> None:
    data = report_json(hand_built_log)
    assert data["schema"] == "modelforge.usage/1"
    totals = data["totals"]
    assert Decimal(totals["cost_usd"]) == TOTAL
    assert totals["calls"] == 5
    assert totals["input_tokens"] == 1000 + 5300 + 2000 + 100 + 50
    assert totals["cache_read_tokens"] == 4800
    assert totals["cache_write_tokens"] == 1000
    assert totals["output_tokens"] == 100 + 250 + 500 + 10 + 20
    assert totals["unpriced_calls"] == 1
    assert totals["estimated_calls"] == 1
    # 4800 cached of 8450 input tokens
    assert totals["cache_hit_rate"] == round(4800 / 8450, 4)
    assert data["unpriced"] == [{"model": "mystery-model", "provider": "acme", "calls": 1}]


def test_by_model(hand_built_log: Path) -> None:
    rows = {r["model"]: r for r in report_json(hand_built_log, "--by", "model")["rows"]}
    # 0.0025 + 0.01 + 0.000325
    assert Decimal(rows["gpt-4o"]["cost_usd"]) == Decimal("0.012825")
    assert rows["gpt-4o"]["calls"] == 3
    assert Decimal(rows["claude-sonnet-4-5-20250929"]["cost_usd"]) == Decimal("0.0096")
    assert rows["mystery-model"]["unpriced_calls"] == 1
    assert Decimal(rows["mystery-model"]["cost_usd"]) == 0


def test_by_day_and_model_sums_to_totals(hand_built_log: Path) -> None:
    data = report_json(hand_built_log, "--by", "day", "--by", "model")
    assert data["group_by"] == ["day", "model"]
    assert [(r["day"], r["model"]) for r in data["rows"]] == [
        ("2026-11-01", "claude-sonnet-4-5-20250929"),
        ("2026-11-01", "gpt-4o"),
        ("2026-11-02", "gpt-4o"),
        ("2026-11-02", "mystery-model"),
    ]
    for column in ("calls", "input_tokens", "output_tokens", "cache_read_tokens"):
        assert sum(r[column] for r in data["rows"]) == data["totals"][column]
    assert sum(Decimal(r["cost_usd"]) for r in data["rows"]) == Decimal(data["totals"]["cost_usd"])
    day_two = [r for r in data["rows"] if r["day"] == "2026-11-02"]
    # 0.01 + 0.000325
    assert sum(Decimal(r["cost_usd"]) for r in day_two) == Decimal("0.010325")


def test_by_agent_tag_and_attribute(hand_built_log: Path) -> None:
    agents = {r["agent"]: r for r in report_json(hand_built_log, "--by", "agent")["rows"]}
    assert Decimal(agents["writer"]["cost_usd"]) == Decimal("0.0125")  # 0.0025 + 0.01
    assert agents["writer"]["calls"] == 3
    tags = {r["tag"]: r for r in report_json(hand_built_log, "--by", "tag")["rows"]}
    assert Decimal(tags["a"]["cost_usd"]) == Decimal("0.0121")  # 0.0025 + 0.0096
    assert Decimal(tags["b"]["cost_usd"]) == Decimal("0.009925")  # 0.0096 + 0.000325
    assert tags[None]["calls"] == 2
    projects = {r["project"]: r for r in report_json(hand_built_log, "--by", "project")["rows"]}
    assert Decimal(projects["y"]["cost_usd"]) == Decimal("0.009925")


def test_filters(hand_built_log: Path) -> None:
    def cost(*args: str) -> Decimal:
        return Decimal(report_json(hand_built_log, *args)["totals"]["cost_usd"])

    assert cost("--model", "gpt-4o*") == Decimal("0.012825")
    assert cost("--provider", "anthropic") == Decimal("0.0096")
    assert cost("--agent", "writer") == Decimal("0.0125")
    assert cost("--tag", "b") == Decimal("0.009925")
    assert cost("--where", "project=x") == Decimal("0.0125")
    assert cost("--since", "2026-11-02") == Decimal("0.010325")
    assert cost("--until", "2026-11-02") == Decimal("0.0121")
    assert cost("--since", "2026-11-01T09:30:00Z", "--until", "2026-11-02T09:30:00") == Decimal(
        "0.0196"
    )


def test_where_with_sql_metacharacters_is_harmless(hand_built_log: Path) -> None:
    data = report_json(hand_built_log, "--where", "project=x' OR '1'='1", "--model", "*'; DROP")
    assert data["totals"]["calls"] == 0
    code, _ = run("usage", "--db", str(hand_built_log), "--by", "project\"') --")
    assert code == 2
    assert sqlite3.connect(hand_built_log).execute("SELECT count(*) FROM calls").fetchone() == (5,)


def test_table_csv_markdown(hand_built_log: Path) -> None:
    code, table = run("usage", "--db", str(hand_built_log), "--by", "model")
    assert code == 0
    assert "TOTAL" in table and "$0.022425" in table
    assert "mystery-model (acme): 1" in table
    assert "\x1b[" not in table  # piped output carries no ANSI codes
    code, text = run("usage", "--db", str(hand_built_log), "--by", "model", "--csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[-1]["model"] == "TOTAL" and Decimal(rows[-1]["cost_usd"]) == TOTAL
    code, markdown = run("usage", "--db", str(hand_built_log), "--format", "markdown")
    assert markdown.startswith("| Calls |")


def test_chart_and_png(hand_built_log: Path, tmp_path: Path) -> None:
    code, out = run("usage", "--db", str(hand_built_log), "--chart")
    assert code == 0
    assert "Cost per day" in out and "2026-11-01" in out and "$0.0121" in out
    png = tmp_path / "cost.png"
    code, out = run("usage", "--db", str(hand_built_log), "--png", str(png))
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "colour"], "unknown grouping 'colour'"),
        (["--since", "last tuesday"], "cannot read 'last tuesday' as a time"),
        (["--where", "novalue"], "expected KEY=VALUE"),
    ],
)
def test_bad_usage_exits_2(hand_built_log: Path, args: list[str], message: str) -> None:
    code, out = run("usage", "--db", str(hand_built_log), *args)
    assert code == 2
    assert message in out


def test_missing_db_exits_2(tmp_path: Path) -> None:
    code, out = run("usage", "--db", str(tmp_path / "nope.db"))
    assert code == 2
    assert f"no usage log at {tmp_path / 'nope.db'}" in out


def test_corrupted_and_foreign_files_give_a_clear_message(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    code, out = run("usage", "--db", str(junk))
    assert code == 1
    assert "is not a usable SQLite file" in out and "Traceback" not in out
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    code, out = run("usage", "--db", str(foreign))
    assert code == 1
    assert "not a model-forge usage log" in out


def test_calls_lists_newest_first(hand_built_log: Path) -> None:
    code, out = run("usage", "calls", "--db", str(hand_built_log), "-n", "2", "--json")
    assert code == 0
    calls = json.loads(out)
    assert [c["run_id"] for c in calls] == ["run-5", "run-4"]
    assert calls[0]["tags"] == ["b"] and calls[0]["attrs"] == {"project": "y"}
    code, table = run("usage", "calls", "--db", str(hand_built_log))
    assert "unpriced" in table and "(est.)" in table


def test_export_csv_and_jsonl(hand_built_log: Path) -> None:
    code, out = run("usage", "export", "--db", str(hand_built_log), "--format", "jsonl")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["run_id"] for r in lines] == [f"run-{n}" for n in range(1, 6)]
    assert sum(Decimal(r["cost_usd"]) for r in lines if r["cost_usd"]) == TOTAL
    code, out = run("usage", "export", "--db", str(hand_built_log), "--model", "claude*")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["cost_usd"] == "0.0096"


def test_prune(hand_built_log: Path) -> None:
    code, out = run("usage", "prune", "--db", str(hand_built_log), "--older-than", "1d")
    assert code == 0 and "Deleted 5 call(s)" in out
    code, out = run("usage", "prune", "--db", str(hand_built_log), "--older-than", "soon")
    assert code == 2


def test_retention_days_prunes_when_the_log_opens(hand_built_log: Path) -> None:
    config.save_setting("retention_days", 1)
    log = UsageLog(hand_built_log)
    log.submit(
        CallRecord(run_id="fresh", usage=Usage(input_tokens=1), cost=price("gpt-4o", Usage()))
    )
    log.close()
    ids = [r[0] for r in sqlite3.connect(hand_built_log).execute("SELECT run_id FROM calls")]
    assert ids == ["fresh"]


def test_prices_show_and_list() -> None:
    code, out = run("prices", "show", "gpt-4o", "--json")
    entry = json.loads(out)
    assert entry["cost"]["input"] == "2.5" and entry["cost"]["cache_read"] == "1.25"
    assert entry["source"].startswith("curated:")
    code, out = run("prices", "show", "gemini-2.5-pro")
    assert "over 200,000 input tokens" in out
    code, out = run("prices", "show", "gpt-4q")
    assert code == 1 and "unknown model 'gpt-4q'" in out and "gpt-4o" in out
    code, out = run("prices", "list", "--provider", "anthropic", "--search", "sonnet-4-5")
    assert "claude-sonnet-4-5-20250929" in out and "gpt-4o" not in out


def test_prices_estimate() -> None:
    code, out = run(
        "prices", "estimate", "claude-sonnet-4-5", "--input", "10000", "--cached", "8000",
        "--cache-write", "1000", "--output", "500", "--json",
    )  # fmt: skip
    data = json.loads(out)
    # 1000×3 + 8000×0.3 + 1000×3.75 + 500×15 = 3000 + 2400 + 3750 + 7500 = 16650 per 1M
    assert Decimal(data["total_usd"]) == Decimal("0.01665")
    code, out = run(
        "prices", "estimate", "gpt-4o", "--input", "10", "--cached", "20", "--output", "1"
    )
    assert code == 2 and "exceed input_tokens" in out


def test_telemetry_switch_and_status(db_path: Path) -> None:
    code, out = run("telemetry", "status")
    assert "Recording: on (default)" in out and "(no file yet)" in out
    code, out = run("telemetry", "off")
    assert code == 0
    assert config.telemetry_status().enabled is False
    code, out = run("telemetry", "status")
    assert "Recording: off (telemetry = off in" in out
    code, out = run("telemetry", "on")
    assert config.telemetry_status().enabled is True


def test_telemetry_status_reports_rows(
    hand_built_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFORGE_DB", str(hand_built_log))
    code, out = run("telemetry", "status")
    assert code == 0
    assert "5 call(s)" in out
    assert "2026-11-01T09:00:00.000000Z … 2026-11-02T11:00:00.000000Z" in out


def test_every_command_has_help() -> None:
    import click

    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        found = []
        for name, command in group.commands.items():
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                found.extend(walk(command, [*prefix, name]))
        return found

    for path in walk(cli, []):
        code, out = run(*path, "-h")
        assert code == 0, path
        assert "Usage: " in out and len(out.splitlines()) > 3, path


def test_subprocess_entry_point(hand_built_log: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "modelforge", "usage", "--db", str(hand_built_log), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Decimal(json.loads(result.stdout)["totals"]["cost_usd"]) == TOTAL
    bad = subprocess.run(
        [sys.executable, "-m", "modelforge", "usage", "--by", "nope", "--db", str(hand_built_log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "Error: --by: unknown grouping 'nope'" in bad.stderr


def test_demo_costs_match_hand_computation(tmp_path: Path) -> None:
    pytest.importorskip("langchain_openai")
    db = tmp_path / "demo.db"
    code, out = run("demo", "--db", str(db))
    assert code == 0, out
    # 0.005 (gpt-4o cached) + 0.0096 (claude streamed) + 0.0026 (gpt-5-mini reasoning)
    assert "$0.0172" in out
    rows = (
        sqlite3.connect(db)
        .execute(
            "SELECT response_model, cost_usd, cache_read_tokens, reasoning_tokens "
            "FROM calls ORDER BY id"
        )
        .fetchall()
    )
    assert rows == [
        ("gpt-4o-2024-08-06", "0.005", 1536, 0),
        ("claude-sonnet-4-5-20250929", "0.0096", 4000, 0),
        ("gpt-5-mini", "0.0026", 0, 1024),
    ]


def test_demo_with_telemetry_off_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langchain_openai")
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "off")
    db = tmp_path / "demo.db"
    code, out = run("demo", "--db", str(db))
    assert code == 0, out
    assert "$0.0172" in out and "telemetry is off" in out
    assert not db.exists()
