"""With no tiktoken encoding on disk, an estimate falls back to `chars/4`: labelled,
made without a download, and the user's call still succeeds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from langchain_openai import ChatOpenAI

import modelforge
from modelforge import tokens
from modelforge.estimate import count_tokens
from modelforge.langchain import UsageCallbackHandler
from modelforge.tokens import encoding_on_disk
from modelforge.wire import WireServer
from row_checks import assert_row_consistent


@pytest.fixture(params=["empty cache dir", "caching disabled"])
def no_encodings(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiktoken reads TIKTOKEN_CACHE_DIR; an empty value turns its cache off.
    empty = str(tmp_path / "tiktoken-cache") if request.param == "empty cache dir" else ""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", empty)
    monkeypatch.setattr(tokens, "_encoders", {})


def test_count_tokens_without_encodings_is_chars_over_4(no_encodings: None) -> None:
    assert not encoding_on_disk("o200k_base")
    assert not encoding_on_disk("cl100k_base")
    # "hello there" is 11 characters: ceil(11 / 4) = 3; "abcd" is 1; "" counts nothing.
    assert count_tokens(["hello there", "abcd", ""], "gpt-4o") == (4, "chars/4")
    assert count_tokens([], "gpt-4") == (0, "chars/4")


def test_a_stream_without_usage_or_encodings_is_a_labelled_estimate(
    no_encodings: None, wire: WireServer, db_path: Path
) -> None:
    model = ChatOpenAI(model="gpt-4o", base_url=wire.openai_base_url, api_key="test", max_retries=0)
    handler = UsageCallbackHandler()
    chunks = list(model.stream("hello there", config={"callbacks": [handler]}))
    assert "".join(str(c.content) for c in chunks) == "Hello from the model-forge wire server."
    assert handler.errors == 0
    assert modelforge.flush()

    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    (row,) = [dict(r) for r in conn.execute("SELECT * FROM calls")]
    conn.close()
    assert (row["estimated"], row["estimate_method"]) == (1, "chars/4")
    # "hello there": ceil(11 / 4) = 3, + 3 for the message + 3 for the reply = 9.
    # "Hello from the model-forge wire server." is 39 characters: ceil(39 / 4) = 10.
    assert (row["input_tokens"], row["output_tokens"]) == (9, 10)
    # gpt-4o: 9 * 2.5 + 10 * 10 = 122.5 per 1M
    assert row["cost_usd"] == "0.0001225"
    assert_row_consistent(row)
    # Counted from the texts, never stored: neither is anywhere in the log's files.
    stored = b"".join(f.read_bytes() for f in db_path.parent.glob(db_path.name + "*"))
    assert b"hello there" not in stored
    assert b"wire server" not in stored
