"""User settings: where files live, the telemetry switch, and `config.toml`.

Precedence for every setting: explicit argument > environment variable > config file >
default. The config file is `config.toml` in the platformdirs user config dir.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelforge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP_NAME = "model-forge"
DEFAULT_METADATA_KEYS = ("user_id", "session_id", "agent", "project")
TRUE_WORDS = frozenset({"1", "true", "on", "yes", "enabled"})
FALSE_WORDS = frozenset({"0", "false", "off", "no", "disabled"})

logger = logging.getLogger("modelforge")


def _dir(env_var: str, kind: str) -> Path:
    explicit = os.environ.get(env_var)
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    finder = getattr(platformdirs, f"user_{kind}_dir")
    return Path(finder(APP_NAME, appauthor=False))


def config_dir() -> Path:
    return _dir("MODELFORGE_CONFIG_DIR", "config")


def cache_dir() -> Path:
    return _dir("MODELFORGE_CACHE_DIR", "cache")


def data_dir() -> Path:
    return _dir("MODELFORGE_DATA_DIR", "data")


def config_path() -> Path:
    return config_dir() / "config.toml"


@dataclass(frozen=True)
class Settings:
    """The parsed config file. Unset values are None."""

    telemetry: bool | None = None
    db: str | None = None
    retention_days: int | None = None
    metadata_keys: tuple[str, ...] = DEFAULT_METADATA_KEYS
    azure_deployments: dict[str, str] = field(default_factory=dict)
    budgets: tuple[Any, ...] = ()  # `modelforge.budgets.Budget`s, from [[budget]] tables


_SETTING_TYPES: dict[str, str] = {
    "telemetry": "true or false",
    "db": "a path string",
    "retention_days": "a positive whole number of days",
    "metadata_keys": "a list of strings",
    "azure.deployments": "a table of deployment = model strings",
}


def parse_settings(raw: dict[str, Any], where: str) -> Settings:
    """Validate a config mapping; errors name the file and the setting."""

    def bad(setting: str) -> ConfigError:
        return ConfigError(f"{where}: {setting}", f"must be {_SETTING_TYPES[setting]}")

    telemetry = raw.get("telemetry")
    if telemetry is not None and not isinstance(telemetry, bool):
        raise bad("telemetry")
    db = raw.get("db")
    if db is not None and not isinstance(db, str):
        raise bad("db")
    retention = raw.get("retention_days")
    if retention is not None and (
        isinstance(retention, bool) or not isinstance(retention, int) or retention <= 0
    ):
        raise bad("retention_days")
    keys = raw.get("metadata_keys", DEFAULT_METADATA_KEYS)
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
        raise bad("metadata_keys")
    azure = raw.get("azure", {})
    deployments = azure.get("deployments", {}) if isinstance(azure, dict) else None
    if not isinstance(deployments, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in deployments.items()
    ):
        raise bad("azure.deployments")
    return Settings(
        telemetry=telemetry,
        db=db,
        retention_days=retention,
        metadata_keys=tuple(keys),
        azure_deployments={k.lower(): v for k, v in deployments.items()},
        budgets=parse_budgets(raw.get("budget"), where),
    )


# --- budgets ([[budget]] tables) ----------------------------------------------------------


def parse_budgets(tables: Any, where: str) -> tuple[Any, ...]:
    """The `[[budget]]` tables as `Budget`s; errors name the file, the table and why."""
    from modelforge.budgets import Budget
    from modelforge.errors import BudgetError

    if tables is None:
        return ()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: budget", "must be [[budget]] tables")
    budgets, names = [], set()
    for n, table in enumerate(tables):
        label = f"{where}: budget {table.get('name', n + 1)!r}"
        try:
            budget = Budget.from_table(table)
        except BudgetError as exc:
            raise ConfigError(label, str(exc)) from None
        if budget.name in names:
            raise ConfigError(label, "another [[budget]] has this name")
        names.add(budget.name)
        budgets.append(budget)
    return tuple(budgets)


def saved_budget_tables() -> list[dict[str, Any]]:
    """The `[[budget]]` tables as config.toml has them now (none if there is no file)."""
    path = config_path()
    if not path.exists():
        return []
    with path.open("rb") as fh:
        tables = tomllib.load(fh).get("budget", [])
    return [t for t in tables if isinstance(t, dict)] if isinstance(tables, list) else []


_cache_lock = threading.Lock()
_cached: tuple[tuple[str, int], Settings] | None = None
_warned: set[str] = set()


def load_settings(*, strict: bool = False) -> Settings:
    """Read `config.toml`, cached until the file changes.

    With `strict=False` (the recording path) a bad file is reported once as a warning
    and defaults are used, so a typo never breaks the user's program.
    """
    global _cached
    path = config_path()
    try:
        stamp = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return Settings()
    with _cache_lock:
        if _cached is not None and _cached[0] == stamp:
            return _cached[1]
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
        settings = parse_settings(raw, str(path))
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as exc:
        error = exc if isinstance(exc, ConfigError) else ConfigError(str(path), str(exc))
        if strict:
            raise error from exc
        warn_once(f"config:{stamp}", f"ignoring config file: {error}")
        settings = Settings()
    with _cache_lock:
        _cached = (stamp, settings)
    return settings


def warn_once(key: str, message: str) -> None:
    """Log a warning the first time `key` is seen in this process."""
    with _cache_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("modelforge: %s", message)


_generation = 0


def generation() -> int:
    """Bumped by every `save_setting` in this process, so caches can notice at once."""
    return _generation


def save_setting(name: str, value: Any) -> Path:
    """Set one top-level setting in `config.toml`, keeping the others."""
    global _generation
    path = config_path()
    raw: dict[str, Any] = {}
    if path.exists():
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    if value is None:
        raw.pop(name, None)
    else:
        raw[name] = value
    parse_settings(raw, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump_toml(raw), encoding="utf-8")
    _generation += 1
    return path


def _dump_toml(raw: dict[str, Any]) -> str:
    """Serialise our small config schema (scalars, string lists, one level of tables)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []

    def emit(key: str, value: Any) -> str:
        return f"{json.dumps(key)} = {_toml_value(value)}"

    def walk(prefix: str, table: dict[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                tables.append((f"{prefix}{key}", value))

    def table_array(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    for key, value in raw.items():
        if not isinstance(value, dict) and not table_array(value):
            lines.append(emit(key, value))
    walk("", raw)
    while tables:
        name, table = tables.pop(0)
        lines.append(f"\n[{name}]")
        lines.extend(emit(k, v) for k, v in table.items() if not isinstance(v, dict))
        walk(f"{name}.", table)
    for key, value in raw.items():
        if table_array(value):  # [[budget]]: each table's own tables are written inline
            for table in value:
                lines.append(f"\n[[{key}]]")
                lines.extend(emit(k, v) for k, v in table.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    return json.dumps(str(value))


def parse_switch(value: str, setting: str) -> bool:
    """Read an on/off word; raises ConfigError naming `setting` otherwise."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(setting, f"unknown value {value!r}; use one of 1/0, true/false, on/off")


@dataclass(frozen=True)
class TelemetryStatus:
    enabled: bool
    reason: str


def telemetry_status() -> TelemetryStatus:
    """Whether the usage log may be written, and which setting decided it."""
    env = os.environ.get("MODELFORGE_TELEMETRY")
    if env is not None and env.strip():
        try:
            on = parse_switch(env, "MODELFORGE_TELEMETRY")
        except ConfigError as exc:
            warn_once(f"env:MODELFORGE_TELEMETRY={env}", f"{exc}; keeping telemetry on")
            on = True
        return TelemetryStatus(on, f"MODELFORGE_TELEMETRY={env}")
    dnt = os.environ.get("DO_NOT_TRACK", "").strip().lower()
    if dnt and dnt not in FALSE_WORDS:
        return TelemetryStatus(False, f"DO_NOT_TRACK={os.environ['DO_NOT_TRACK']}")
    settings = load_settings()
    if settings.telemetry is not None:
        state = "on" if settings.telemetry else "off"
        return TelemetryStatus(settings.telemetry, f"telemetry = {state} in {config_path()}")
    return TelemetryStatus(True, "default")


def default_db_path() -> Path:
    """`MODELFORGE_DB`, else `db` from the config file, else the user data dir."""
    env = os.environ.get("MODELFORGE_DB")
    if env:
        return Path(env).expanduser()
    settings = load_settings()
    if settings.db:
        return Path(settings.db).expanduser()
    return data_dir() / "usage.db"


def db_path_origin(path: Path) -> str:
    """Which setting chose `path` as the log file, for error messages."""
    env = os.environ.get("MODELFORGE_DB")
    if env and Path(env).expanduser() == path:
        return f"MODELFORGE_DB={env}"
    settings = load_settings()
    if settings.db and Path(settings.db).expanduser() == path:
        return f"db = {settings.db!r} in {config_path()}"
    if path == data_dir() / "usage.db":
        return "the default location"
    return "the db= argument"
