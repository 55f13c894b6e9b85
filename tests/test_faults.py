"""Promises kept under faults (issue #21): one section per numbered item of the issue.

Each item has tests that failed before its fix; a few more (marked so) guard what
already held. Run them on their own with `pytest tests/test_faults.py`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from modelforge import config, recorder, records, store, track_usage
from modelforge.cli import cli
from modelforge.records import CallRecord, clean_attrs, clean_tags, price_call
from modelforge.usage import MAX_TOKENS, Usage

# gpt-4o per 1M: 1000×2.5 + 100×10 = 3500 → $0.0035 a call
USAGE = Usage(input_tokens=1000, output_tokens=100)


def _record(**fields: Any) -> CallRecord:
    """A priced gpt-4o call; `fields` override what the record says."""
    usage = fields.pop("usage", USAGE)
    return CallRecord(
        run_id=fields.pop("run_id", str(uuid.uuid4())),
        usage=usage,
        cost=price_call(usage, "gpt-4o", None, "openai"),
        provider=fields.pop("provider", "openai"),
        model=fields.pop("model", "gpt-4o"),
        **fields,
    )


def _rows(path: Path, sql: str = "SELECT count(*) FROM calls") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _write_config(data: str | bytes) -> Path:
    path = config.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


# --- 7. Opt-out fails closed ----------------------------------------------------------

# Each bad setting that once made the whole file be ignored, and recording come back on.
BAD_OTHER_SETTINGS = {
    "retention_days = 0": "retention_days = 0\n",
    "azure is not a table": 'azure = "prod-chat"\n',
    "a deployment maps to a number": "[azure.deployments]\nprod-chat = 4\n",
    "metadata_keys is a string": 'metadata_keys = "user_id"\n',
}


@pytest.mark.parametrize("bad", BAD_OTHER_SETTINGS.values(), ids=BAD_OTHER_SETTINGS.keys())
def test_telemetry_off_holds_when_another_setting_is_invalid(
    bad: str, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    _write_config("telemetry = false\n" + bad)
    for _ in range(5):
        recorder.deliver(_record())
    assert store.flush()
    assert not db_path.exists()
    status = config.telemetry_status()
    assert not status.enabled and status.reason.startswith("telemetry = off in")
    setting = "azure.deployments" if "azure" in bad else bad.split()[0]
    assert _warnings(caplog, f"{config.config_path()}: {setting}: must be") == 1


@pytest.mark.parametrize(
    ("variable", "value"), [("MODELFORGE_TELEMETRY", "0"), ("DO_NOT_TRACK", "1")]
)
def test_environment_opt_out_holds_whatever_the_config_file_holds(
    variable: str, value: str, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Already held: the environment is read before the file. Kept as a guard.
    monkeypatch.setenv(variable, value)
    for text in ("retention_days = 0\n", "telemetry = true\nthis is [not toml\n"):
        _write_config(text)
        recorder.deliver(_record())
        assert store.flush()
        assert not db_path.exists()


def test_an_invalid_setting_is_ignored_alone_and_named(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    path = _write_config(
        'retention_days = "ninety"\nmetadata_keys = ["tenant"]\n'
        '[azure.deployments]\n"Prod-Chat" = "gpt-4o"\n'
    )
    settings = config.load_settings()
    assert settings.retention_days is None
    assert settings.metadata_keys == ("tenant",)
    assert settings.azure_deployments == {"prod-chat": "gpt-4o"}
    assert _warnings(caplog, f"{path}: retention_days: must be a positive whole number") == 1
    recorder.deliver(_record())
    assert store.flush()
    assert _rows(db_path) == [(1,)]  # the bad key leaves telemetry alone: still on


BROKEN_FILES: dict[str, str | bytes] = {
    "not TOML": "telemetry = false\nthis is [not toml\n",
    "not UTF-8": b"telemetry = false\n# caf\xe9\n",
    "nested too deeply": "telemetry = false\nx = " + "[" * 100_000 + "\n",
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_a_config_file_that_cannot_be_parsed_records_nothing_and_warns_once(
    content: str | bytes, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    path = _write_config(content)
    for _ in range(5):
        recorder.deliver(_record())
    assert store.flush()
    assert not db_path.exists()
    status = config.telemetry_status()
    assert not status.enabled and f"{path} cannot be read" in status.reason
    assert _warnings(caplog, f"cannot read config file {path}") == 1
    warning = next(r.getMessage() for r in caplog.records if "cannot read" in r.getMessage())
    assert "Nothing is recorded until it is fixed or removed" in warning


def test_a_config_path_that_cannot_be_read_records_nothing(db_path: Path) -> None:
    config.config_path().mkdir(parents=True)  # a directory where the file should be
    recorder.deliver(_record())
    assert store.flush()
    assert not db_path.exists()
    assert not config.telemetry_status().enabled
    assert config.load_settings().unreadable == "is a directory"


@pytest.mark.parametrize("switch", ["off", "on"])
def test_telemetry_switch_on_an_unparseable_file_leaves_it_and_says_why(switch: str) -> None:
    broken = b"telemetry = false\n# my notes\nthis is [not toml\n"
    path = _write_config(broken)
    result = _invoke("telemetry", switch)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {path}: cannot change the config file: not valid")
    assert "MODELFORGE_TELEMETRY=" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == broken
    assert not config.telemetry_status().enabled


def test_telemetry_off_on_a_file_with_an_invalid_setting_changes_only_its_line() -> None:
    text = "# written by hand\nretention_days = 0  # oops\n\n[azure.deployments]\nx = 4\n"
    path = _write_config(text)
    result = _invoke("telemetry", "off")
    assert result.exit_code == 0, result.output
    assert path.read_text() == (
        "# written by hand\nretention_days = 0  # oops\n\ntelemetry = false\n"
        "[azure.deployments]\nx = 4\n"
    )
    assert not config.telemetry_status().enabled


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_telemetry_status_explains_a_broken_file(content: str | bytes) -> None:
    path = _write_config(content)
    result = _invoke("telemetry", "status")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert (
        f"Recording: off ({path} cannot be read; nothing is recorded until it is fixed)\n"
        f"Config:    {path} cannot be read: "
    ) in result.output
    assert "modelforge: " not in result.output  # said once, not again as a warning


def test_telemetry_status_names_each_ignored_setting() -> None:
    path = _write_config('telemetry = false\nretention_days = -1\ncolour = "blue"\n')
    result = _invoke("telemetry", "status")
    assert result.exit_code == 0, result.output
    assert f"Recording: off (telemetry = off in {path})" in result.output
    assert f"Config:    {path}: retention_days: must be a positive" in result.output
    assert f"Config:    {path}: colour: unknown setting; ignored" in result.output


# --- 14. Every CLI option value gives `Error: …`, never a traceback ------------------


@pytest.fixture
def one_call_log(db_path: Path) -> Path:
    """The default log, holding one gpt-4o call ($0.0035) made now."""
    recorder.deliver(_record())
    assert store.flush()
    return db_path


OUT_OF_RANGE_TIMES = [
    "99999999999d",
    "1000000d",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-05:00",
    "9" * 5000 + "d",
]


def _bad_values(tmp_path: Path) -> list[list[str]]:
    missing = tmp_path / "no" / "such" / "dir"
    times = [
        [*command, option, value]
        for command in (["usage"], ["usage", "calls"], ["usage", "export"])
        for option in ("--since", "--until")
        for value in [*OUT_OF_RANGE_TIMES, ""]
    ]
    return [
        *times,
        *(["usage", "prune", "--older-than", value] for value in OUT_OF_RANGE_TIMES),
        ["usage", "calls", "-n", "9223372036854775808"],
        ["usage", "calls", "-n", "-1"],
        ["usage", "export", "-o", str(missing / "x.csv")],
        ["usage", "export", "-o", ""],
        ["usage", "--png", str(missing / "x.png")],
        ["usage", "--png", ""],
        ["usage", "--format", "json", "--csv"],
        ["usage", "--csv", "--format", "json", "calls"],
        ["usage", "--json", "--csv"],
        ["usage", "--format", "table", "--json"],
        ["usage", "--model", ""],
        ["usage", "calls", "--provider", " "],
        ["usage", "export", "--tag", ""],
        ["usage", "--by", ""],
        ["usage", "--by", "attr:"],
        ["usage", "--where", "=x"],
        ["prices", "update", "--url", ""],
        ["prices", "estimate", "gpt-4o", "--input", "1" + "0" * 30, "--output", "1"],
        ["prices", "estimate", "gpt-4o", "--input", "9" * 5000, "--output", "1"],
    ]


def test_every_bad_option_value_is_an_error_line(one_call_log: Path, tmp_path: Path) -> None:
    for args in _bad_values(tmp_path):
        result = _invoke(*args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert "Error: " in result.output and "Traceback" not in result.output, args
    assert not (tmp_path / "no").exists()


def test_conflicting_formats_are_refused_before_any_work(tmp_path: Path) -> None:
    # The log does not exist: were the log opened first, the error would say so.
    result = _invoke("usage", "--db", str(tmp_path / "none.db"), "--format", "json", "--csv")
    assert result.exit_code == 2
    assert "Error: --format json and --csv ask for different formats" in result.output
    result = _invoke("usage", "--db", str(tmp_path / "none.db"), "--csv", "--format", "csv")
    assert "no usage log at" in result.output  # the same format twice is no conflict


def test_output_files_that_cannot_be_written_are_refused_before_any_work(
    one_call_log: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such"
    result = _invoke("usage", "--png", str(missing / "x.png"))
    assert result.exit_code == 2
    assert f"the directory '{missing}' does not exist" in result.output
    assert "Calls" not in result.output  # no report was printed before the error
    result = _invoke("usage", "export", "-o", str(missing / "x.csv"))
    assert result.exit_code == 2 and f"the directory '{missing}' does not exist" in result.output


def test_out_of_range_times_name_the_option_and_the_range(one_call_log: Path) -> None:
    result = _invoke("usage", "--since", "1000000d")
    assert result.exit_code == 2
    assert result.output.endswith(
        "Error: Invalid value for '--since': '1000000d' is out of range: times must fall "
        "in the years 1 to 9999 (UTC)\n"
    )
    result = _invoke("usage", "prune", "--older-than", "1000000d")
    assert result.exit_code == 2
    assert "Error: --older-than: '1000000d' is out of range" in result.output
    assert _rows(one_call_log) == [(1,)]


def test_since_before_year_1000_counts_every_call(one_call_log: Path) -> None:
    # strftime wrote year 999 as "999", which sorts after "2026": nothing was counted.
    result = _invoke("usage", "--since", "0999-01-01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["calls"] == 1
    result = _invoke("usage", "calls", "--since", "0001-01-01", "-n", "9223372036854775807")
    assert result.exit_code == 0 and "gpt-4o" in result.output


def test_model_names_print_as_they_are_not_as_markup(db_path: Path) -> None:
    recorder.deliver(_record(model="[/]"))  # once a closing tag with nothing to close
    recorder.deliver(_record(response_model="[bold]x"))
    assert store.flush()
    for args in (["usage", "--by", "model"], ["usage", "calls"]):
        result = _invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert "[/]" in result.output and "[bold]x" in result.output


def test_the_cli_token_cap_is_the_record_cap() -> None:
    # cli_types repeats the number so that parsing options does not import pydantic.
    from modelforge import cli_types  # here, so the file still runs against older code

    assert cli_types.MAX_TOKENS == MAX_TOKENS


# --- 15. Text from providers is cleaned, never fatal ---------------------------------


class Unprintable:
    """An attribute value whose text cannot be had: `__str__` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Unrepresentable:
    """`__repr__` raises; with no `__str__`, str() goes through it."""

    def __repr__(self) -> str:
        raise ValueError("no repr either")


def test_unencodable_text_is_replaced_and_the_record_stored(db_path: Path) -> None:
    record = _record(
        model="gpt-4o\ud800",
        response_model="gpt-4o-2024-08-06\udcff",
        usage=Usage(input_tokens=1000, output_tokens=100, service_tier="fl\udc80ex"),
        agent="writer\ud83d",
        tags=("ok", "t\udfff"),
        attrs={"user\ud800": "u\udc00-1", "project": "search"},
    )
    recorder.deliver(record)
    assert store.flush()
    [row] = _rows(
        db_path, "SELECT model, response_model, service_tier, agent, tags, attrs FROM calls"
    )
    assert row[:4] == ("gpt-4o\ufffd", "gpt-4o-2024-08-06\ufffd", "fl\ufffdex", "writer\ufffd")
    assert json.loads(row[4]) == ["ok", "t\ufffd"]
    assert json.loads(row[5]) == {"user\ufffd": "u\ufffd-1", "project": "search"}
    assert store.stats()["dropped"] == 0


def test_model_names_are_capped_like_tags(db_path: Path) -> None:
    recorder.deliver(_record(model="m" * 1_000_000, response_model="r" * 300))
    assert store.flush()
    [(model, served)] = _rows(db_path, "SELECT model, response_model FROM calls")
    assert model == "m" * 256 and served == "r" * 256


def test_an_attribute_that_cannot_be_read_is_dropped_alone(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    recorder.deliver(
        _record(
            run_id="direct",
            attrs={"bad": Unprintable(), "worse": Unrepresentable(), "ok": "yes"},  # type: ignore[dict-item]
            tags=("t1", Unprintable(), "t2"),  # type: ignore[arg-type]
        )
    )
    with track_usage(broken=Unprintable(), project="search"):
        recorder.deliver(_record(run_id="session"))
    assert store.flush()
    rows = dict(_rows(db_path, "SELECT run_id, attrs FROM calls"))
    assert json.loads(rows["direct"]) == {"ok": "yes"}
    assert json.loads(rows["session"]) == {"project": "search"}
    [(tags,)] = _rows(db_path, "SELECT tags FROM calls WHERE run_id = 'direct'")
    assert json.loads(tags) == ["t1", "t2"]
    assert _warnings(caplog, "dropped an attribute that cannot be turned into text") == 2
    assert _warnings(caplog, "dropped a tag that cannot be turned into text") == 1


def test_cleaned_records_keep_their_cost(db_path: Path) -> None:
    recorder.deliver(_record(model="gpt-4o\ud800", response_model="gpt-4o"))
    assert store.flush()
    [(cost,)] = _rows(db_path, "SELECT cost_usd FROM calls")
    assert Decimal(cost) == Decimal("0.0035")  # 1000×2.5 + 100×10 = 3500 per 1M


# A record's text fields: the first are cut to 256 characters, the ids only cleaned.
CAPPED_FIELDS = (
    "framework",
    "operation",
    "provider",
    "model",
    "response_model",
    "status",
    "error_type",
    "estimate_method",
    "agent",
    "run_name",
)
ID_FIELDS = ("run_id", "parent_run_id", "trace_id")


def test_the_text_fields_here_are_the_records() -> None:
    assert (records._TEXT_FIELDS, records._ID_FIELDS) == (CAPPED_FIELDS, ID_FIELDS)


@pytest.mark.parametrize("name", [*CAPPED_FIELDS, *ID_FIELDS])
def test_each_text_field_is_cleaned_on_its_own(name: str) -> None:
    record = _record(**{name: "x\ud800" + "y" * 300})
    text = getattr(record, name)
    text.encode("utf-8")
    assert text == ("x\ufffd" + "y" * 300)[: None if name in ID_FIELDS else 256]


# Any text, lone surrogates included (st.text leaves them out by default), short or long.
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
some_text = st.one_of(st.none(), any_text, st.sampled_from(["gpt-4o", "x" * 256, "y" * 257]))
# Every text field of a record; run_id, framework, operation and status are never None.
record_texts = st.fixed_dictionaries(
    {
        name: any_text if name in ("run_id", "framework", "operation", "status") else some_text
        for name in (*CAPPED_FIELDS, *ID_FIELDS)
    }
)
some_tags = st.lists(any_text, max_size=40).map(tuple)
some_attrs = st.dictionaries(st.text(max_size=80), any_text, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    texts=record_texts,
    tier=some_text,
    tags=st.one_of(some_tags, some_tags.map(clean_tags)),
    attrs=st.one_of(some_attrs, some_attrs.map(clean_attrs)),
)
def test_a_record_is_left_as_cleaning_would_leave_it(
    texts: dict[str, Any], tier: str | None, tags: tuple[str, ...], attrs: dict[str, str]
) -> None:
    # __post_init__ skips cleaning when one look says it would change nothing; cleaning
    # again must then indeed change nothing, whichever way the record was judged.
    usage = Usage(input_tokens=1, service_tier=tier)
    cost = price_call(usage, "gpt-4o", None, "openai")
    record = CallRecord(usage=usage, cost=cost, tags=tags, attrs=attrs, **texts)
    fields = {name: getattr(record, name) for name in CallRecord.__slots__}
    record._clean()
    assert {name: getattr(record, name) for name in CallRecord.__slots__} == fields
    for name in (*CAPPED_FIELDS, *ID_FIELDS):
        text = getattr(record, name)
        if text is not None:
            text.encode("utf-8")
            assert name in ID_FIELDS or len(text) <= 256
