"""User settings: where files live, the telemetry switch, and `config.toml`.

Precedence for every setting: explicit argument > environment variable > config file >
default. The config file is `config.toml` in the platformdirs user config dir.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
    # Every call's settings lookup comes here, so the paths are worked out once per
    # value of the variables they depend on.
    home = os.environ.get("HOME")
    explicit = os.environ.get(env_var)
    if explicit:
        return _expanded(explicit, home)
    return _platform_dir(kind, os.environ.get(f"XDG_{kind.upper()}_HOME"), home)


@functools.lru_cache(maxsize=64)
def _expanded(path: str, home: str | None) -> Path:
    return Path(path).expanduser()


@functools.lru_cache(maxsize=64)
def _platform_dir(kind: str, xdg: str | None, home: str | None) -> Path:
    import platformdirs

    finder = getattr(platformdirs, f"user_{kind}_dir")
    return Path(finder(APP_NAME, appauthor=False))


@functools.lru_cache(maxsize=64)
def _file_in(directory: Path, name: str) -> Path:
    return directory / name


def config_dir() -> Path:
    return _dir("MODELFORGE_CONFIG_DIR", "config")


def cache_dir() -> Path:
    return _dir("MODELFORGE_CACHE_DIR", "cache")


def data_dir() -> Path:
    return _dir("MODELFORGE_DATA_DIR", "data")


def config_path() -> Path:
    return _file_in(config_dir(), "config.toml")


@dataclass(frozen=True)
class Settings:
    """The parsed config file. Unset values are None.

    `unreadable` says why the file could not be read or parsed (then nothing else is set);
    `problems` holds, per setting ignored for a bad value and per unknown key, the error
    naming it.
    """

    telemetry: bool | None = None
    db: str | None = None
    retention_days: int | None = None
    metadata_keys: tuple[str, ...] = DEFAULT_METADATA_KEYS
    azure_deployments: dict[str, str] = field(default_factory=dict)
    budgets: tuple[Any, ...] = ()  # `modelforge.budgets.Budget`s, from [[budget]] tables
    unreadable: str | None = None
    problems: dict[str, ConfigError] = field(default_factory=dict)


def _read_telemetry(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)):
        # `telemetry = "off"` or `= 0` says what the user meant; take it at its word.
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def _read_db(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _read_retention(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _read_keys(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(k, str) for k in value):
        return tuple(value)
    return None


def _read_deployments(value: Any) -> dict[str, str] | None:
    deployments = value.get("deployments", {}) if isinstance(value, dict) else None
    if isinstance(deployments, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in deployments.items()
    ):
        return {k.lower(): v for k, v in deployments.items()}
    return None


class _Setting(NamedTuple):
    key: str  # the top-level TOML key holding it
    attr: str  # the Settings field
    read: Callable[[Any], Any]  # the value to use, or None for a bad one
    wanted: str  # what a good value is, for the error


_SETTINGS = {
    "telemetry": _Setting("telemetry", "telemetry", _read_telemetry, "true or false"),
    "db": _Setting("db", "db", _read_db, "a path string"),
    "retention_days": _Setting(
        "retention_days", "retention_days", _read_retention, "a positive whole number of days"
    ),
    "metadata_keys": _Setting("metadata_keys", "metadata_keys", _read_keys, "a list of strings"),
    "azure.deployments": _Setting(
        "azure", "azure_deployments", _read_deployments, "a table of deployment = model strings"
    ),
}
_KNOWN_KEYS = frozenset(setting.key for setting in _SETTINGS.values()) | {"budget"}


def parse_settings(raw: dict[str, Any], where: str) -> Settings:
    """Validate a config mapping one setting at a time.

    A setting with a bad value, or a key we do not know, is left out and kept in
    `Settings.problems` as a `ConfigError` naming `where` and the setting, so one typo
    cannot undo the other settings.
    """
    values: dict[str, Any] = {}
    problems: dict[str, ConfigError] = {}
    for name, setting in _SETTINGS.items():
        if setting.key in raw:
            value = setting.read(raw[setting.key])
            if value is None:
                problems[name] = ConfigError(f"{where}: {name}", f"must be {setting.wanted}")
            else:
                values[setting.attr] = value
    budgets, budget_problems = parse_budgets(raw.get("budget"), where)
    problems.update(budget_problems)
    for key in raw:
        if key not in _KNOWN_KEYS:
            problems[key] = ConfigError(f"{where}: {key}", "unknown setting")
    table = None if "telemetry" in raw else _table_holding(raw, "telemetry")
    if table:
        # `telemetry = false` appended below a [table] lands in that table: meant as a
        # switch, and perhaps as off, so it counts as a bad telemetry value.
        problems["telemetry"] = ConfigError(
            f"{where}: telemetry",
            f"is inside [{table}], where it does nothing; move it above the first [table]",
        )
    return Settings(**values, budgets=budgets, problems=problems)


# --- budgets ([[budget]] tables) ----------------------------------------------------------


def parse_budgets(tables: Any, where: str) -> tuple[tuple[Any, ...], dict[str, ConfigError]]:
    """The `[[budget]]` tables as `Budget`s; a bad one is left out, its error kept (named
    by the file and the budget) like any other setting's."""
    from modelforge.budgets import Budget
    from modelforge.errors import BudgetError

    if tables is None:
        return (), {}
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        return (), {"budget": ConfigError(f"{where}: budget", "must be [[budget]] tables")}
    budgets: dict[str, Any] = {}
    problems: dict[str, ConfigError] = {}
    for n, table in enumerate(tables):
        label = f"budget {table.get('name', n + 1)!r}"
        try:
            budget = Budget.from_table(table)
        except BudgetError as exc:
            problems[label] = ConfigError(f"{where}: {label}", str(exc))
            continue
        if budget.name in budgets:
            problems[label] = ConfigError(f"{where}: {label}", "another [[budget]] has this name")
            continue
        budgets[budget.name] = budget
    return tuple(budgets.values()), problems


def saved_budget_tables() -> list[dict[str, Any]]:
    """The `[[budget]]` tables as config.toml has them now; ConfigError if unreadable."""
    path = config_path()
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8")).get("budget", [])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(
            str(path), f"cannot read the config file: {describe_file_error(exc)}"
        ) from None
    return [t for t in tables if isinstance(t, dict)] if isinstance(tables, list) else []


_BUDGET_HEADER = re.compile(r"^\s*\[\[\s*(?:budget|\"budget\"|'budget')\s*\]\]")


def _read_for_change(path: Path) -> tuple[str, dict[str, Any]]:
    """The config file's text and parsed settings, before a change; refuses a broken file."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except FileNotFoundError:
        return "", {}
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(
            str(path), f"cannot change the config file: {describe_file_error(exc)}"
        ) from None


def save_budget_tables(tables: list[dict[str, Any]]) -> Path:
    """Replace config.toml's `[[budget]]` tables, keeping everything else as it is."""
    global _generation
    path = config_path()
    text, raw = _read_for_change(path)
    raw.pop("budget", None)
    if tables:
        raw["budget"] = tables
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if _TABLE_HEADER.match(line):
            inside = bool(_BUDGET_HEADER.match(line))
        if not inside:
            kept.append(line)
    edited = "".join(kept).rstrip("\n")
    for table in tables:
        body = "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in table.items())
        edited += f"\n\n[[budget]]\n{body}"
    edited = edited.lstrip("\n") + ("" if edited.endswith("\n") else "\n")
    if not _parses_to(edited, raw):
        raise ConfigError(str(path), "cannot change [[budget]] safely; edit the file by hand")
    _write_atomic(path, edited)
    _generation += 1
    return path


def _table_holding(raw: dict[str, Any], key: str) -> str | None:
    """The dotted name of a table below the top level that has `key`, if any."""
    # A loop, not recursion, and names built only for the answer: `a.b.c… = 1` with
    # thousands of parts parses fine.
    tables: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), raw)]
    while tables:
        path, table = tables.pop()
        for name, value in table.items():
            if isinstance(value, dict):
                if key in value:
                    return _dotted((path, name))
                tables.append(((path, name), value))
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    names = []
    while path:
        path, name = path
        names.append(name)
    return ".".join(reversed(names))


_cache_lock = threading.Lock()
# What every call without a config file gets: one instance, never changed.
_NO_FILE = Settings()
_cached: tuple[tuple[str, int, int], Settings] | None = None
_warned: set[str] = set()


def load_settings(*, strict: bool = False, warn: bool = True) -> Settings:
    """Read `config.toml`, cached until the file changes.

    Nothing here raises by default, so a typo never breaks the user's program: a file
    that cannot be read or parsed gives `Settings(unreadable=why)`, which turns recording
    off (see `telemetry_status`), and each bad setting is ignored on its own. Either is
    logged once as a warning, unless `warn=False` (for a caller that shows them itself).
    With `strict=True` the first of them raises `ConfigError`.
    """
    global _cached
    path = config_path()
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return _NO_FILE
    except OSError as exc:
        # We cannot see whether the file says `telemetry = false`: fail closed.
        settings = _unreadable(path, (str(path), -1, -1), exc, warn)
    else:
        stamp = (str(path), info.st_mtime_ns, info.st_size)
        with _cache_lock:
            cached = _cached
        if cached is not None and cached[0] == stamp:
            settings = cached[1]
        else:
            settings = _read(path, stamp, warn)
            with _cache_lock:
                _cached = (stamp, settings)
    if strict:
        if settings.unreadable:
            raise ConfigError(str(path), f"cannot read the config file: {settings.unreadable}")
        for error in settings.problems.values():
            raise error
    return settings


def _read(path: Path, stamp: tuple[str, int, int], warn: bool) -> Settings:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError: TOMLDecodeError, or bytes that are not UTF-8; RecursionError:
        # arrays nested thousands deep.
        return _unreadable(path, stamp, exc, warn)
    settings = parse_settings(raw, str(path))
    for name, line in describe_problems(settings).items():
        if warn:
            warn_once(f"config:{stamp}:{name}", line)
    return settings


def describe_problems(settings: Settings) -> dict[str, str]:
    """Per entry of `Settings.problems`: what is wrong, and what happens instead."""
    return {
        name: f"{error}; "
        + ("recording nothing until it is fixed" if name == "telemetry" else "ignored")
        for name, error in settings.problems.items()
    }


def _unreadable(
    path: Path, stamp: tuple[str, int, int], exc: BaseException, warn: bool
) -> Settings:
    why = describe_file_error(exc)
    if warn:
        warn_once(
            f"config:{stamp}",
            f"cannot read config file {path}: {why}. Nothing is recorded until it is fixed "
            "or removed (MODELFORGE_TELEMETRY=1 records anyway); `modelforge telemetry "
            "status` explains",
        )
    return Settings(unreadable=why)


def describe_file_error(exc: BaseException) -> str:
    """Why a config file could not be read or written, in words for the user."""
    if isinstance(exc, tomllib.TOMLDecodeError):
        return f"not valid TOML ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
    if isinstance(exc, RecursionError):
        return "values nested too deeply to read"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


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
    """Set one top-level setting in `config.toml` (None removes it); returns the path.

    Only that setting's line changes: comments, order and the other settings (even ones
    we cannot use) stay as they are. A file that cannot be read or parsed is left
    untouched, and `ConfigError` says why.
    """
    global _generation
    setting = _SETTINGS.get(name)
    if setting is None or setting.key != name:
        raise ConfigError(name, "not a top-level setting")
    if value is not None and setting.read(value) is None:
        raise ConfigError(name, f"must be {setting.wanted}")
    path = config_path()
    text, raw = _read_for_change(path)
    if value is None:
        raw.pop(name, None)
    else:
        raw[name] = list(value) if isinstance(value, tuple) else value
    edited = _edit_line(text, name, value)
    if not _parses_to(edited, raw):
        # The key's old value spans lines, or sits where a line edit cannot reach it.
        edited = _dump_toml(raw)
        if not _parses_to(edited, raw):
            raise ConfigError(str(path), f"cannot set {name} safely; edit the file by hand")
    _write_atomic(path, edited)
    _generation += 1
    return path


_TABLE_HEADER = re.compile(r"^\s*\[")


def _edit_line(text: str, name: str, value: Any) -> str:
    """`text` with the top-level `name = …` line replaced, added or (value None) removed."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    quoted = re.escape(name)
    key = re.compile(rf"""^\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*=""")
    new = [] if value is None else [f"{name} = {_toml_value(value)}\n"]
    end = next((i for i, line in enumerate(lines) if _TABLE_HEADER.match(line)), len(lines))
    for i in range(end):
        if key.match(lines[i]):
            return "".join(lines[:i] + new + lines[i + 1 :])
    return "".join(lines[:end] + new + lines[end:])


def _parses_to(text: str, expected: dict[str, Any]) -> bool:
    try:
        return tomllib.loads(text) == expected
    except (ValueError, RecursionError):
        return False


def _write_atomic(path: Path, text: str) -> None:
    """Replace the file in one step, so a crash never leaves half a config behind."""
    target = path.resolve()  # through a symlink (dotfiles), not over it
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o777 if target.exists() else None
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".config.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigError(str(path), f"cannot write: {describe_file_error(exc)}") from None


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

    for key, value in raw.items():
        if not isinstance(value, dict):
            lines.append(emit(key, value))
    walk("", raw)
    while tables:
        name, table = tables.pop(0)
        lines.append(f"\n[{name}]")
        lines.extend(emit(k, v) for k, v in table.items() if not isinstance(v, dict))
        walk(f"{name}.", table)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: a budget's scope
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


def telemetry_status(settings: Settings | None = None) -> TelemetryStatus:
    """Whether the usage log may be written, and which setting decided it.

    `settings` saves reading the config file again for a caller that has just read it.
    """
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
    if settings is None:
        settings = load_settings()
    if settings.unreadable:
        # The file may say `telemetry = false`; without reading it we must assume so.
        return TelemetryStatus(
            False, f"{config_path()} cannot be read; nothing is recorded until it is fixed"
        )
    if "telemetry" in settings.problems:
        return TelemetryStatus(
            False, f"{settings.problems['telemetry']}; nothing is recorded until it is fixed"
        )
    if settings.telemetry is not None:
        state = "on" if settings.telemetry else "off"
        return TelemetryStatus(settings.telemetry, f"telemetry = {state} in {config_path()}")
    return TelemetryStatus(True, "default")


def default_db_path(settings: Settings | None = None) -> Path:
    """`MODELFORGE_DB`, else `db` from the config file, else the user data dir.

    `settings` saves reading the config file again for a caller that has just read it.
    """
    home = os.environ.get("HOME")
    env = os.environ.get("MODELFORGE_DB")
    if env:
        return _expanded(env, home)
    if settings is None:
        settings = load_settings()
    if settings.db:
        return _expanded(settings.db, home)
    return _file_in(data_dir(), "usage.db")


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
