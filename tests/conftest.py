"""Shared fixtures: every test gets private user dirs, so none touches the real home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelforge import config, store
from modelforge.pricing.catalog import set_catalog
from modelforge.wire import WireServer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS_DEV_FIXTURE = SHARED / "models-dev" / "api.json"
TIKTOKEN_CACHE = SHARED / "tiktoken-cache"

if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture(autouse=True)
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point config, cache and data dirs at tmp_path and clear every setting env var."""
    home = tmp_path / "home"
    monkeypatch.setenv("MODELFORGE_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("MODELFORGE_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("MODELFORGE_DATA_DIR", str(home / "data"))
    for var in ("MODELFORGE_DB", "MODELFORGE_PRICES", "MODELFORGE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(var, raising=False)
    set_catalog(None)
    yield home
    store.close_all()
    set_catalog(None)
    config._warned.clear()


@pytest.fixture
def db_path(user_dirs: Path) -> Path:
    """Where the log lands by default in a test."""
    return user_dirs / "data" / "usage.db"


@pytest.fixture
def models_dev_path() -> Path:
    if not MODELS_DEV_FIXTURE.exists():
        pytest.skip("shared/models-dev/api.json is not beside the checkout")
    return MODELS_DEV_FIXTURE


@pytest.fixture(scope="session")
def _wire_server() -> Iterator[WireServer]:
    with WireServer() as server:
        yield server


@pytest.fixture
def wire(_wire_server: WireServer) -> Iterator[WireServer]:
    """The loopback provider server, with no queued replies or recorded requests."""
    _wire_server.reset()
    yield _wire_server
    _wire_server.reset()
