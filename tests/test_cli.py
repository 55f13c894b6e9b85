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
    assert Decimal(rows["openai/gpt-4o"]["cost_usd"]) == Decimal("0.012825")
    assert rows["openai/gpt-4o"]["calls"] == 3
    claude = rows["anthropic/claude-sonnet-4-5-20250929"]
    assert Decimal(claude["cost_usd"]) == Decimal("0.0096")
    # Unpriced: no amount at all (null), and the count.
    assert rows["mystery-model"]["unpriced_calls"] == 1
    assert rows["mystery-model"]["cost_usd"] is None


def test_by_day_and_model_sums_to_totals(hand_built_log: Path) -> None:
    data = report_json(hand_built_log, "--by", "day", "--by", "model")
    assert data["group_by"] == ["day", "model"]
    assert [(r["day"], r["model"]) for r in data["rows"]] == [
        ("2026-11-01", "anthropic/claude-sonnet-4-5-20250929"),
        ("2026-11-01", "openai/gpt-4o"),
        ("2026-11-02", "mystery-model"),
        ("2026-11-02", "openai/gpt-4o"),
    ]
    for column in ("calls", "input_tokens", "output_tokens", "cache_read_tokens"):
        assert sum(r[column] for r in data["rows"]) == data["totals"][column]
    priced = [Decimal(r["cost_usd"]) for r in data["rows"] if r["cost_usd"] is not None]
    assert sum(priced) == Decimal(data["totals"]["cost_usd"])
    day_two = [r for r in data["rows"] if r["day"] == "2026-11-02" and r["cost_usd"]]
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
    # $0.022425 in cents, and the one unpriced call beside it; mystery-model has no amount
    assert "TOTAL" in table and "$0.02 + 1 unpriced" in table
    assert "│ mystery-model " in table and " — │" in table
    assert "mystery-model (acme): 1" in table
    assert "\x1b[" not in table  # piped output carries no ANSI codes
    code, text = run("usage", "--db", str(hand_built_log), "--by", "model", "--csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[-1]["model"] == "TOTAL" and Decimal(rows[-1]["cost_usd"]) == TOTAL
    mystery = next(r for r in rows if r["model"] == "mystery-model")
    assert (mystery["cost_usd"], mystery["unpriced_calls"]) == ("", "1")
    code, markdown = run("usage", "--db", str(hand_built_log), "--format", "markdown")
    assert markdown.startswith("| Calls |")


def test_chart_and_png(hand_built_log: Path, tmp_path: Path) -> None:
    code, out = run("usage", "--db", str(hand_built_log), "--chart")
    assert code == 0
    assert "Cost per day" in out and "2026-11-01" in out and "$0.01" in out  # 0.0121
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
    # = 0.0172, shown in cents
    assert "$0.005" in out and "$0.0096" in out and "$0.0026" in out and "$0.02" in out
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
    assert "$0.02" in out and "telemetry is off" in out
    assert not db.exists()


# --- reports people act on (issue #25): one test per numbered fix ----------------------


def run_split(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr, apart: documents go to stdout, notes to stderr."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_1_unpriced_groups_show_the_priced_sum_and_the_count(hand_built_log: Path) -> None:
    db = str(hand_built_log)
    # 2026-11-02: gpt-4o 0.01 + 0.000325 (estimated) = 0.010325 priced, mystery-model unpriced
    days = {r["day"]: r for r in report_json(hand_built_log, "--by", "day")["rows"]}
    assert days["2026-11-02"]["cost_usd"] == "0.010325"
    assert days["2026-11-02"]["unpriced_calls"] == 1
    assert days["2026-11-01"]["unpriced_calls"] == 0
    code, table = run("usage", "--db", db, "--by", "day")
    assert "$0.01 + 1 unpriced" in table  # 0.010325 in cents, plus the unpriced call
    assert "$0.02 + 1 unpriced" in table  # the total, 0.022425
    # A group with nothing priced: null in JSON, empty in CSV, — in the table.
    providers = {r["provider"]: r for r in report_json(hand_built_log, "--by", "provider")["rows"]}
    assert providers["acme"]["cost_usd"] is None and providers["acme"]["unpriced_calls"] == 1
    code, text = run("usage", "--db", db, "--by", "provider", "--csv")
    acme = next(r for r in csv.DictReader(io.StringIO(text)) if r["provider"] == "acme")
    assert acme["cost_usd"] == "" and acme["unpriced_calls"] == "1"
    code, table = run("usage", "--db", db, "--by", "provider")
    assert code == 0
    acme_line = next(line for line in table.splitlines() if "│ acme " in line)
    assert "—" in acme_line and "$0" not in acme_line


def test_2_track_usage_agent_sets_the_agent_column(db_path: Path) -> None:
    from modelforge import flush, track_usage
    from modelforge.recorder import deliver

    usage = Usage(input_tokens=1000, output_tokens=100)
    plain = CallRecord(run_id="plain", usage=usage, cost=price("gpt-4o", usage))
    own = CallRecord(run_id="own", usage=usage, cost=price("gpt-4o", usage), agent="node-a")
    with track_usage(agent="researcher"):
        deliver(plain)
        deliver(own)
    assert flush()
    assert (plain.agent, own.agent) == ("researcher", "node-a")  # a call's own agent wins
    agents = {r["agent"]: r for r in report_json(db_path, "--by", "agent")["rows"]}
    # 1000 × 2.5 + 100 × 10 = 3500 per 1M → $0.0035 each
    assert agents["researcher"]["calls"] == 1 and agents["researcher"]["cost_usd"] == "0.0035"
    assert report_json(db_path, "--agent", "researcher")["totals"]["calls"] == 1


def test_3_by_a_metadata_key_works_on_a_log_without_it(hand_built_log: Path) -> None:
    # docs/cli.md: `modelforge usage --by user_id --json`; user_id is a metadata key the
    # integrations record, so no call having it yet is an empty group, not a typo.
    data = report_json(hand_built_log, "--by", "user_id")
    assert [(r["user_id"], r["calls"]) for r in data["rows"]] == [(None, 5)]
    code, out = run("usage", "--db", str(hand_built_log), "--by", "colour")
    assert code == 2 and "unknown grouping 'colour'" in out


@pytest.mark.parametrize(
    ("args", "empty"),
    [
        (["usage", "--json"], "report"),
        (["usage", "--by", "day", "--json"], "report"),
        (["usage", "calls", "--json"], []),
        (["usage", "forecast", "--json"], "forecast"),
        (["usage", "efficiency", "--json"], "efficiency"),
    ],
)
def test_4_a_missing_log_is_an_empty_log_with_a_note(
    tmp_path: Path, db_path: Path, args: list[str], empty: object
) -> None:
    missing = tmp_path / "missing.db"
    for where in ([], ["--db", str(missing)]):  # the default log, and a --db file
        code, out, err = run_split(*args[:-1], *where, args[-1])
        assert code == 0, err
        data = json.loads(out)  # always a valid document
        if empty == "report":
            assert data["rows"] == [] and data["totals"]["calls"] == 0
            assert data["totals"]["cost_usd"] == "0"
        elif empty == "forecast":
            assert data["rows"] == [] and data["totals"]["usd"] == "0"
        elif empty == "efficiency":
            assert data["totals"]["calls"] == 0 and data["costliest_traces"] == []
        else:
            assert data == empty
        path = missing if where else db_path
        assert f"Note: no usage log at {path}" in err
    assert not missing.exists() and not db_path.exists()  # reading never creates it


def test_4_csv_and_tables_of_a_missing_log(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.db")
    code, out, err = run_split("usage", "--db", missing, "--by", "model", "--csv")
    assert code == 0
    assert out.startswith("model,calls,")
    assert out.splitlines()[-1].startswith("TOTAL,0,")
    code, out, err = run_split("usage", "calls", "--db", missing, "--csv")
    assert code == 0 and out.startswith("ts,run_id,")
    code, out, err = run_split("usage", "export", "--db", missing)
    assert code == 0 and out.startswith("id,ts,run_id,")
    for args in (["usage"], ["usage", "calls"], ["usage", "prune", "--older-than", "1d"]):
        code, out, err = run_split(*args, "--db", missing)
        assert code == 0 and "Note: no usage log at" in err


def test_5_the_demo_has_a_log_of_its_own(db_path: Path, user_dirs: Path) -> None:
    pytest.importorskip("langchain_openai")
    code, out = run("demo")
    assert code == 0, out
    demo_log = user_dirs / "data" / "demo.db"
    assert demo_log.exists() and not db_path.exists()  # the usage log stays untouched
    assert f"modelforge usage --db {demo_log} --by model" in out
    assert report_json(demo_log)["totals"]["calls"] == 3


def test_5_the_demo_on_an_unwritable_place_says_so_without_blaming_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langchain_openai")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MODELFORGE_DATA_DIR", str(blocker / "data"))  # cannot be created
    code, out, err = run_split("demo")
    assert code == 0, err
    assert "$0.02" in out  # the calls ran and were priced
    assert "could not be written" in out and "not recorded" in out
    assert "--db:" not in out + err and "no usage log" not in out + err


def _logged(path: Path, *models: tuple[str, str, str | None]) -> Path:
    """A log with one call per (requested, provider, served) model, 1000 in / 100 out."""
    log = UsageLog(path)
    for n, (model, provider, served) in enumerate(models):
        usage = Usage(input_tokens=1000, output_tokens=100)
        log.submit(
            CallRecord(
                run_id=f"m{n}",
                usage=usage,
                cost=price(served or model, usage, provider),
                provider=provider,
                model=model,
                response_model=served,
                ts=f"2026-11-01T0{n}:00:00.000000Z",
            )
        )
    log.close()
    return path


def test_6_one_model_is_one_row_and_raw_names_stay_reachable(tmp_path: Path) -> None:
    path = _logged(
        tmp_path / "names.db",
        ("gpt-4o", "openai", None),
        ("GPT-4o", "openai", None),
        ("openai/gpt-4o", "openai", None),
        ("mystery-model", "acme", None),
    )
    rows = {r["model"]: r for r in report_json(path, "--by", "model")["rows"]}
    assert set(rows) == {"openai/gpt-4o", "mystery-model"}
    # 3 × (1000 × 2.5 + 100 × 10) per 1M = 3 × 0.0035
    assert rows["openai/gpt-4o"]["calls"] == 3
    assert rows["openai/gpt-4o"]["cost_usd"] == "0.0105"
    requested = report_json(path, "--by", "requested_model")["rows"]
    assert [r["requested_model"] for r in requested] == [
        "GPT-4o",
        "gpt-4o",
        "mystery-model",
        "openai/gpt-4o",
    ]
    # --model matches the catalog model, with or without its provider, and raw names.
    for glob in ("gpt-4o", "openai/gpt-4o", "GPT-4o*"):
        assert report_json(path, "--model", glob)["totals"]["calls"] >= 1
    assert report_json(path, "--model", "gpt-4o")["totals"]["calls"] == 3


def test_7_one_money_format_in_tables_exact_in_data(tmp_path: Path) -> None:
    log = UsageLog(tmp_path / "money.db")
    # 9,133,983 input tokens of gpt-4o at $2.50 per 1M = $22.8349575
    usage = Usage(input_tokens=9_133_983)
    log.submit(CallRecord(run_id="big", usage=usage, cost=price("gpt-4o", usage), model="gpt-4o"))
    log.close()
    path = tmp_path / "money.db"
    assert report_json(path)["totals"]["cost_usd"] == "22.8349575"
    code, table = run("usage", "--db", str(path), "--by", "model")
    assert "$22.83" in table and "22.8349575" not in table
    code, text = run("usage", "--db", str(path), "--csv")
    assert "22.8349575" in text
    code, out = run("usage", "calls", "--db", str(path))
    assert "$22.83" in out
    code, out = run("prices", "estimate", "gpt-4o", "--input", "9133983", "--output", "0")
    assert code == 0 and "$22.83" in out
