"""Settings: the config file, the environment, and what each means for recording.

The fail-closed promises (an opt-out holds whatever else the file holds) are in
test_faults.py, section 7; these are the rules around them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tomllib

from modelforge import config, recorder, store
from modelforge.errors import ConfigError
from modelforge.records import CallRecord, price_call
from modelforge.usage import Usage


def _deliver(n: int = 1) -> None:
    usage = Usage(input_tokens=10, output_tokens=5)
    for _ in range(n):
        cost = price_call(usage, "gpt-4o", None, "openai")
        recorder.deliver(CallRecord(run_id=str(uuid.uuid4()), usage=usage, cost=cost))
    assert store.flush()


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def _write_config(text: str) -> Path:
    path = config.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- reading ------------------------------------------------------------------------


def test_unknown_telemetry_value_in_the_environment_warns_once_and_keeps_recording(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "maybe")
    caplog.set_level(logging.WARNING, logger="modelforge")
    _deliver(5)
    assert _warnings(caplog, "MODELFORGE_TELEMETRY: unknown value 'maybe'") == 1
    assert _rows(db_path) == 5


def test_an_unreadable_telemetry_value_in_the_file_records_nothing(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It may have been meant as "off": the switch fails closed, unlike other settings.
    path = _write_config('telemetry = "sometimes"\n')
    caplog.set_level(logging.WARNING, logger="modelforge")
    _deliver(5)
    assert not db_path.exists()
    message = f"{path}: telemetry: must be true or false; recording nothing until it is fixed"
    assert _warnings(caplog, message) == 1
    assert config.telemetry_status() == config.TelemetryStatus(
        False, f"{path}: telemetry: must be true or false; nothing is recorded until it is fixed"
    )


def test_telemetry_written_below_a_table_counts_as_off(db_path: Path) -> None:
    # Appended at the end of a file with tables, the line lands in the last table.
    path = _write_config('[azure.deployments]\nprod-chat = "gpt-4o"\ntelemetry = false\n')
    _deliver()
    assert not db_path.exists()
    assert config.telemetry_status().reason == (
        f"{path}: telemetry: is inside [azure.deployments], where it does nothing; move it "
        "above the first [table]; nothing is recorded until it is fixed"
    )


def test_deeply_dotted_keys_are_read_without_recursion() -> None:
    _write_config(".".join(["a"] * 3000) + " = 1\n")
    assert list(config.load_settings().problems) == ["a"]


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("false", False), ('"off"', False), ("0", False), ('"On"', True), ("1", True)],
)
def test_telemetry_words_in_the_file(value: str, enabled: bool) -> None:
    path = _write_config(f"telemetry = {value}\n")
    status = config.telemetry_status()
    assert status.enabled is enabled
    assert status.reason == f"telemetry = {'on' if enabled else 'off'} in {path}"


def test_an_unknown_key_is_named_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="modelforge")
    path = _write_config("telemetri = false\nretention_days = 30\n")
    settings = config.load_settings()
    assert settings.retention_days == 30
    assert _warnings(caplog, f"{path}: telemetri: unknown setting; ignored") == 1
    config.load_settings()
    assert _warnings(caplog, "telemetri") == 1  # once, not per read


def test_the_environment_decides_over_a_broken_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_config("telemetry = false\nnot toml at all [\n")
    monkeypatch.setenv("MODELFORGE_TELEMETRY", "1")
    _deliver(3)
    assert _rows(db_path) == 3


def test_strict_load_raises_the_first_problem() -> None:
    path = _write_config("retention_days = 0\n")
    with pytest.raises(ConfigError, match="retention_days: must be a positive whole number"):
        config.load_settings(strict=True)
    _write_config("[broken\n")
    with pytest.raises(ConfigError, match=f"{path}: cannot read the config file: not valid"):
        config.load_settings(strict=True)


def test_import_never_fails_on_bad_settings(tmp_path: Path) -> None:
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    (config_dir / "config.toml").write_text("this is [not toml")
    (config_dir / "prices.toml").write_text("nor [this")
    env = {
        **os.environ,
        "MODELFORGE_CONFIG_DIR": str(config_dir),
        "MODELFORGE_DB": "/proc/forbidden/usage.db",
        "MODELFORGE_TELEMETRY": "perhaps",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import modelforge; print(modelforge.__version__)"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# --- saving -------------------------------------------------------------------------

HAND_WRITTEN = """\
# my settings
"telemetry" = true   # the switch
db = "~/llm.db"

[azure.deployments]
prod-chat = "gpt-4o"  # the big one
"""


def test_save_setting_changes_only_its_line() -> None:
    path = _write_config(HAND_WRITTEN)
    config.save_setting("telemetry", False)
    assert path.read_text() == HAND_WRITTEN.replace(
        '"telemetry" = true   # the switch', "telemetry = false"
    )
    config.save_setting("retention_days", 30)
    assert path.read_text().endswith(
        'db = "~/llm.db"\n\nretention_days = 30\n'
        '[azure.deployments]\nprod-chat = "gpt-4o"  # the big one\n'
    )
    config.save_setting("retention_days", None)
    assert "retention_days" not in path.read_text()
    assert config.load_settings().azure_deployments == {"prod-chat": "gpt-4o"}


def test_save_setting_rewrites_a_value_spanning_lines_without_losing_settings() -> None:
    path = _write_config(
        'metadata_keys = [\n  "user_id",\n]\ndb = "x.db"\n[azure]\nregion = "eu"\n'
    )
    config.save_setting("metadata_keys", ("tenant",))
    assert tomllib.loads(path.read_text()) == {
        "metadata_keys": ["tenant"],
        "db": "x.db",
        "azure": {"region": "eu"},
    }


def test_save_setting_refuses_a_bad_value_and_leaves_the_file() -> None:
    path = _write_config(HAND_WRITTEN)
    with pytest.raises(ConfigError, match="retention_days: must be a positive whole number"):
        config.save_setting("retention_days", 0)
    assert path.read_text() == HAND_WRITTEN


def test_save_setting_writes_through_a_symlink_and_keeps_the_mode(tmp_path: Path) -> None:
    dotfile = tmp_path / "dotfiles" / "model-forge.toml"
    dotfile.parent.mkdir()
    dotfile.write_text(HAND_WRITTEN)
    dotfile.chmod(0o644)
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.symlink_to(dotfile)
    config.save_setting("telemetry", False)
    assert path.is_symlink()
    assert "telemetry = false\n" in dotfile.read_text()
    assert stat.S_IMODE(dotfile.stat().st_mode) == 0o644
    assert [p.name for p in dotfile.parent.iterdir()] == ["model-forge.toml"]  # no temp left
