"""Faults and load: the user's call always succeeds, nothing is lost.

These run at the issue's full sizes (4 processes × 4 threads × 5,000 calls) in the
default run: they take seconds. The long fuzz variants live in test_fuzz.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelforge
from modelforge.store import get_log, open_db

pytest.importorskip("langchain_core")

from langchain_core.language_models.fake_chat_models import (
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage

USAGE = {
    "input_tokens": 1000,
    "output_tokens": 100,
    "total_tokens": 1100,
    "input_token_details": {"cache_read": 800},
}
# gpt-4o per 1M: 200×2.5 + 800×1.25 + 100×10 = 2500 → $0.0025 a call

# A process that records calls through the LangChain handler's callbacks from several
# threads, as a chat model would, then reports its stats as JSON.
WORKER = r"""
import json, sys, threading, uuid
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
import modelforge
from modelforge.langchain import UsageCallbackHandler

path, prefix, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
usage = {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100}
result = LLMResult(generations=[[ChatGeneration(message=AIMessage(
    content="x", usage_metadata=usage, response_metadata={"model_name": "gpt-4o"}))]])
handler = UsageCallbackHandler(db=path)
meta = {"ls_provider": "openai", "ls_model_name": "gpt-4o"}

def work(t):
    for i in range(calls):
        run_id = uuid.UUID(int=hash((prefix, t, i)) & ((1 << 128) - 1))
        handler.on_chat_model_start({}, [[HumanMessage("q")]], run_id=run_id, metadata=meta)
        handler.on_llm_end(result, run_id=run_id)

workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
ok = modelforge.flush(timeout=120)
print(json.dumps({"flushed": ok, **modelforge.stats()}))
"""


def _rows(path: Path, sql: str = "SELECT count(*) FROM calls") -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def _model(reply_usage: dict[str, Any] | None = USAGE) -> GenericFakeChatModel:
    messages = iter(
        AIMessage(
            content="the answer is 42",
            usage_metadata=reply_usage,  # type: ignore[arg-type]
            response_metadata={"model_name": "gpt-4o"},
        )
        for _ in range(10_000)
    )
    return GenericFakeChatModel(messages=messages)


def _call(model: GenericFakeChatModel) -> str:
    handler = modelforge.UsageCallbackHandler()
    result = model.invoke(
        "what is six times seven?",
        config={"callbacks": [handler], "metadata": {"ls_provider": "openai"}},
    )
    return str(result.content)


def _wait_flushed(timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if modelforge.flush(timeout=2):
            return True
        time.sleep(0.2)
    return False


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and text in r.message)


# --- concurrency ------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_and_threads_write_one_file_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    calls = 5_000  # the full size: 80,000 rows, ~8 s here
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), f"p{n}", "4", str(calls)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    reports = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0]
    for report in reports:
        assert report["flushed"] is True
        assert report["errors"] == 0  # never a "database is locked"
        assert report["dropped"] == 0
        assert report["written"] == 4 * calls
    expected = 4 * 4 * calls
    assert _rows(path) == expected
    assert _rows(path, "SELECT count(DISTINCT run_id) FROM calls") == expected
    # The hourly rollup saw every row exactly once too.
    assert _rows(path, "SELECT sum(calls) FROM calls_hourly") == expected
    # gpt-4o: 1000×2.5 + 100×10 = 3500 per 1M → $0.0035 = 3.5e9 pico-dollars a call
    assert _rows(path, "SELECT sum(cost_pusd) FROM calls") == expected * 3_500_000_000


# --- crash ------------------------------------------------------------------------------

CRASHER = r"""
import sys, uuid
from modelforge import CallRecord, Usage, price
from modelforge.store import get_log
path, flushed = sys.argv[1], int(sys.argv[2])
usage = Usage(input_tokens=1000, output_tokens=100)
cost = price("gpt-4o", usage)
log = get_log(path)
for i in range(flushed):
    log.submit(CallRecord(run_id=f"flushed-{i}", usage=usage, cost=cost))
assert log.flush(timeout=60)
print("flushed", flush=True)
i = 0
while True:  # keep the writer busy until we are killed mid-write
    log.submit(CallRecord(run_id=f"later-{i}", usage=usage, cost=cost))
    i += 1
"""


def test_sigkill_mid_write_loses_nothing_flushed(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    flushed = 20_000
    with subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(path), str(flushed)],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "flushed"
        time.sleep(0.5)  # the writer is now committing batches of "later" records
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    conn = open_db(path)  # the next process opens it normally
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    present = conn.execute("SELECT count(*) FROM calls WHERE run_id LIKE 'flushed-%'").fetchone()
    assert present == (flushed,)
    later = conn.execute("SELECT count(*) FROM calls WHERE run_id LIKE 'later-%'").fetchone()[0]
    rollup = conn.execute("SELECT sum(calls) FROM calls_hourly").fetchone()[0]
    assert rollup == flushed + later  # a batch and its rollup commit together or not at all
    conn.close()
    log = get_log(path)
    log.submit(
        modelforge.CallRecord(
            run_id="after-crash",
            usage=modelforge.Usage(input_tokens=1),
            cost=modelforge.price("gpt-4o", modelforge.Usage(input_tokens=1)),
        )
    )
    assert log.flush()
    assert _rows(path, "SELECT count(*) FROM calls WHERE run_id = 'after-crash'") == 1


# --- unusable log file --------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 256 KiB we can fill, make read-only and grow again (needs root)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        modelforge.store.close_all(timeout=5)
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _remount(mount_point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)


def test_full_disk_holds_then_drops_and_resumes(
    tiny_fs: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tiny_fs / "usage.db"
    monkeypatch.setenv("MODELFORGE_DB", str(path))
    log = get_log(path)
    log.max_pending = 300
    model = _model()
    caplog.set_level(logging.WARNING, logger="modelforge")
    # Each row and its index entries take ~1 KB: a 256 KiB disk fills within 1,000 calls.
    for _ in range(1_000):
        assert _call(model) == "the answer is 42"
    modelforge.flush(timeout=5)
    stats = modelforge.stats()
    assert stats["errors"] >= 1
    assert stats["dropped"] >= 1
    assert stats["pending"] <= 300
    assert _warnings(caplog, "cannot write usage log") == 1
    assert "MODELFORGE_DB=" in caplog.text  # the warning names the setting

    _remount(tiny_fs, "size=16m")
    # Records were dropped, so flush() stays False for good; wait for the rest instead.
    deadline = time.monotonic() + 15
    while modelforge.stats()["pending"] and time.monotonic() < deadline:
        modelforge.flush(timeout=2)
    assert modelforge.flush(timeout=2) is False
    assert modelforge.stats()["pending"] == 0
    assert _warnings(caplog, "is writable again") == 1
    written = _rows(path)
    assert written == 1_000 - modelforge.stats()["dropped"]


def test_read_only_directory_then_writable(
    tiny_fs: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tiny_fs / "logs" / "usage.db"
    (tiny_fs / "logs").mkdir()
    _remount(tiny_fs, "ro")
    monkeypatch.setenv("MODELFORGE_DB", str(path))
    caplog.set_level(logging.WARNING, logger="modelforge")
    model = _model()
    for _ in range(50):
        assert _call(model) == "the answer is 42"
    assert not modelforge.flush(timeout=2)
    assert not path.exists()
    assert _warnings(caplog, "cannot write usage log") == 1
    assert modelforge.stats()["pending"] == 50

    _remount(tiny_fs, "rw")
    assert _wait_flushed()
    assert _rows(path) == 50


def test_corrupted_file_then_moved_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    path.write_bytes(b"definitely not sqlite " * 500)
    monkeypatch.setenv("MODELFORGE_DB", str(path))
    caplog.set_level(logging.WARNING, logger="modelforge")
    model = _model()
    for _ in range(30):
        assert _call(model) == "the answer is 42"
    assert not modelforge.flush(timeout=2)
    assert _warnings(caplog, "cannot write usage log") == 1
    assert "not a usable SQLite file" in caplog.text

    os.replace(path, tmp_path / "usage.db.broken")
    assert _wait_flushed()
    assert _rows(path) == 30


def test_forbidden_log_location_warns_once_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MODELFORGE_DB", str(blocker / "usage.db"))
    caplog.set_level(logging.WARNING, logger="modelforge")
    model = _model()
    for _ in range(20):
        assert _call(model) == "the answer is 42"
    modelforge.flush(timeout=2)
    assert _warnings(caplog, "cannot write usage log") == 1
    assert f"MODELFORGE_DB={blocker / 'usage.db'}" in caplog.text


# --- privacy and security -------------------------------------------------------------------


def test_long_attribute_values_are_capped(db_path: Path) -> None:
    model = _model()
    handler = modelforge.UsageCallbackHandler()
    model.invoke(
        "hello",
        config={
            "callbacks": [handler],
            "metadata": {"user_id": "u" * 10_000, "project": "p" * 300},
            "tags": ["t" * 5_000],
        },
    )
    assert modelforge.flush()
    conn = sqlite3.connect(db_path)
    attrs, tags = conn.execute("SELECT attrs, tags FROM calls").fetchone()
    assert json.loads(attrs) == {"user_id": "u" * 256, "project": "p" * 256}
    assert json.loads(tags) == ["t" * 256]
