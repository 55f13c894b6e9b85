"""Hypothesis fuzz of the usage extractors and both framework handlers.

Inputs are malformed on purpose: None, strings (digit strings too), floats (nan, inf,
fractions), negative and huge ints, missing and extra keys, wrong nesting, and parts
larger than their totals, mixed into payloads shaped like each provider's real one.

Properties, checked against small reference readers written here (which fields each
provider shape has, which ones win, and how they add up):

1. Every extractor returns a `Usage` (`extract_usage` may return None when nothing is
   recognisable) and never raises. The result is internally consistent: parts within
   their totals, `total == input + output`, every count in [0, MAX_TOKENS].
   When a field the extractor reads held anything but a plain count in range, or
   the parts did not fit, `usage.anomalies` says so; when every field read was clean
   and fitted, the counts are exactly the reference's and there are no anomalies.
2. LangChain's `UsageCallbackHandler` fed junk `LLMResult`s never raises, delivers one
   consistent record, and `modelforge.stats()` counts every anomaly and handler error.
3. The same for LlamaIndex's `UsageEventHandler` fed junk `ChatResponse`s.
4. Records persisted to SQLite read back consistent and equal to what the session saw.

The default run makes 2,100 examples in all (1,200 + 400 + 400 + 100). Each test has a
`_slow` twin with 50x (the last 20x) the examples, marked `slow`: `python -m pytest -m slow`
runs them, as CI does in a step of its own. A failure prints the falsifying example and a
`@reproduce_failure` blob; hypothesis' example database replays it on the next run.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, Generation, LLMResult
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
)

import modelforge
from modelforge import store, track_usage
from modelforge.integrations.langchain import UsageCallbackHandler
from modelforge.integrations.llamaindex import UsageEventHandler
from modelforge.integrations.llamaindex_calls import provider_of
from modelforge.records import CallRecord
from modelforge.usage import (
    MAX_TOKENS,
    Usage,
    extract_usage,
    from_anthropic,
    from_bedrock,
    from_gemini,
    from_langchain,
    from_openai_chat,
    from_openai_responses,
)
from row_checks import COUNT_COLUMNS, assert_row_consistent

INPUT_PARTS = ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")
ANTHROPIC_NOTE = "anthropic usage has no cache counts; cache tokens unknown"
ANTHROPIC_CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")


def fuzz(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def slow(test: Any) -> Any:
    """The long, nightly-style variant of a test (`python -m pytest -m slow`)."""
    return pytest.mark.slow(test)


# --- strategies ------------------------------------------------------------------------

# Every key the real payloads use: junk dicts draw from these, so junk often *almost*
# looks like usage.
KEYS = (
    "usage",
    "usageMetadata",
    "usage_metadata",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "total_cost",
    "input_token_details",
    "output_token_details",
    "cache_read",
    "cache_creation",
    "audio",
    "reasoning",
    "ephemeral_5m_input_tokens",
    "ephemeral_1h_input_tokens",
    "priority",
    "flex",
    "priority_cache_read",
    "flex_reasoning",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "cache_write_tokens",
    "audio_tokens",
    "reasoning_tokens",
    "input_tokens_details",
    "output_tokens_details",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "thinking_tokens",
    "promptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
    "prompt_token_count",
    "promptTokensDetails",
    "modality",
    "tokenCount",
    "inputTokens",
    "outputTokens",
    "cacheReadInputTokens",
    "cacheWriteInputTokens",
    "cacheDetails",
    "ttl",
    "service_tier",
    "model",
    "model_name",
    "response",
    "message",
)


class HugeInt(int):
    """An int past `sys.get_int_max_str_digits()`, whose str() raises, as any such int's.

    Only its repr() is safe, so that hypothesis can print a failing example.
    """

    def __repr__(self) -> str:
        return f"HugeInt({'-' if self < 0 else ''}<{self.bit_length()}-bit int>)"

    __str__ = int.__repr__


# Values no count should be, each a known trap: bools are ints, digit strings other
# than ASCII, floats that are not whole, ints past int64 and past str()'s digit limit.
ODD_VALUES = (
    None,
    True,
    False,
    -1,
    -(2**63),
    2**63,
    2**64 + 1,
    10**30,
    MAX_TOKENS + 1,
    HugeInt(10**5000),
    HugeInt(-(10**5000)),
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.5,
    12.7,
    -3.0,
    1e13,
    1e300,
    "",
    " ",
    "12",
    " 7 ",
    "-3",
    "1.5",
    "1e3",
    "0x10",
    "1_000",
    "NaN",
    "²",
    "١٢",
    "9" * 5000,
    "AUDIO",
    b"12",
)
junk_scalars = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.integers(-5, 10**16).map(str),
)
junk_keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
junk = st.recursive(
    junk_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(junk_keys, children, max_size=3),
    ),
    max_leaves=5,
)

# Counts a provider could send: small ones, whole floats (12.0 is a count, not an
# anomaly) and ones that sum past MAX_TOKENS. One draw each: draws are what cost time.
GOOD_COUNTS = (
    *range(0, 21),
    40,
    100,
    128,
    999,
    1024,
    3000,
    12.0,
    3000.0,
    MAX_TOKENS // 2 + 1,
    MAX_TOKENS - 1,
    MAX_TOKENS,
)
good_counts = st.one_of(st.sampled_from(GOOD_COUNTS), st.integers(0, 5000))
clean_leaf = st.sampled_from((*GOOD_COUNTS, None))
dirty_leaf = st.one_of(*[st.sampled_from(GOOD_COUNTS)] * 4, good_counts, junk_scalars, junk)
tiers = st.one_of(st.none(), st.sampled_from(["default", "auto", "priority", "flex", "Scale", 7]))
modalities = st.sampled_from(["AUDIO", "audio", "TEXT", "IMAGE", "MediaModality.AUDIO", None, 3])
ttls = st.sampled_from(["5m", "1h", "1H", "24h", None, 5, ["1h"]])

C = "count"  # a token count in a schema below

# Each provider's usage shape; a nested dict is a nested object, a one-item list a list
# of such objects, and a strategy a non-count value.
SCHEMAS: dict[str, dict[str, Any]] = {
    "langchain": {
        "input_tokens": C,
        "output_tokens": C,
        "total_cost": st.sampled_from([0, 0.0, 0.01, None]),
        "input_token_details": {
            "cache_read": C,
            "cache_creation": C,
            "audio": C,
            "ephemeral_5m_input_tokens": C,
            "ephemeral_1h_input_tokens": C,
            "priority": C,
            "priority_cache_read": C,
            "flex_cache_creation": C,
        },
        "output_token_details": {"reasoning": C, "audio": C, "flex": C, "flex_reasoning": C},
    },
    "openai_chat": {
        "prompt_tokens": C,
        "completion_tokens": C,
        "prompt_tokens_details": {"cached_tokens": C, "cache_write_tokens": C, "audio_tokens": C},
        "completion_tokens_details": {"reasoning_tokens": C, "audio_tokens": C},
    },
    "openai_responses": {
        "input_tokens": C,
        "output_tokens": C,
        "input_tokens_details": {"cached_tokens": C, "cache_write_tokens": C},
        "output_tokens_details": {"reasoning_tokens": C},
    },
    "anthropic": {
        "input_tokens": C,
        "output_tokens": C,
        "cache_creation_input_tokens": C,
        "cache_read_input_tokens": C,
        "cache_creation": {"ephemeral_5m_input_tokens": C, "ephemeral_1h_input_tokens": C},
        "output_tokens_details": {"thinking_tokens": C},
        "service_tier": tiers,
    },
    "gemini": {
        "promptTokenCount": C,
        "candidatesTokenCount": C,
        "cachedContentTokenCount": C,
        "thoughtsTokenCount": C,
        "toolUsePromptTokenCount": C,
        "prompt_token_count": C,
        "thoughts_token_count": C,
        "promptTokensDetails": [{"modality": modalities, "tokenCount": C, "token_count": C}],
        "candidates_tokens_details": [{"modality": modalities, "token_count": C}],
    },
    "bedrock": {
        "inputTokens": C,
        "outputTokens": C,
        "cacheReadInputTokens": C,
        "cacheWriteInputTokens": C,
        "cacheDetails": [{"ttl": ttls, "inputTokens": C}],
    },
}


def _shape(schema: dict[str, Any], leaf: st.SearchStrategy[Any], dirty: bool) -> Any:
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for key, sub in schema.items():
        if sub is C:
            value = leaf
        elif isinstance(sub, dict):
            value = _shape(sub, leaf, dirty)
            value = st.one_of(value, value, value, junk_scalars, junk) if dirty else value
        elif isinstance(sub, list):
            value = st.lists(_shape(sub[0], leaf, dirty), max_size=3)
            value = st.one_of(value, value, value, junk_scalars, junk) if dirty else value
        else:
            value = sub
        optional[key] = value
    body = st.fixed_dictionaries({}, optional=optional)
    if not dirty:
        return body
    extra = st.one_of(*[st.builds(dict)] * 3, st.dictionaries(junk_keys, junk, max_size=2))
    return st.builds(lambda a, b: {**a, **b}, body, extra)


WRAPPERS = ("usage", "usageMetadata", "usage_metadata")


def _wrap(payload: Any, levels: int) -> Any:
    for _ in range(levels):
        payload = {"usage": payload}
    return payload


clean_payloads = st.one_of(*(_shape(s, clean_leaf, False) for s in SCHEMAS.values()))
dirty_payloads = st.one_of(*(_shape(s, dirty_leaf, True) for s in SCHEMAS.values()))
lc_payloads = st.one_of(
    _shape(SCHEMAS["langchain"], clean_leaf, False), _shape(SCHEMAS["langchain"], dirty_leaf, True)
)
usage_payloads = st.one_of(
    clean_payloads,
    dirty_payloads,
    dirty_payloads,
    # two providers' keys in one payload
    st.builds(lambda a, b: {**a, **b}, dirty_payloads, dirty_payloads),
    # wrong nesting: usage one level (or two) too deep, or under the wrong key
    st.builds(lambda p, k: {k: p}, dirty_payloads, st.sampled_from(WRAPPERS)),
    st.builds(_wrap, dirty_payloads, st.integers(2, 10)),
    st.builds(lambda p, k: {k: p}, dirty_payloads, st.sampled_from(["response", "message"])),
    junk,
)


def _as_objects(value: Any) -> Any:
    """The same payload as SDK-like objects (attribute access) instead of dicts."""
    if isinstance(value, dict):
        return SimpleNamespace(**{str(k): _as_objects(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_as_objects(v) for v in value]
    return value


extractor_payloads = st.one_of(usage_payloads, usage_payloads, usage_payloads.map(_as_objects))

model_names = st.one_of(
    st.sampled_from(
        [
            "gpt-4o",
            "gpt-4o-mini",
            "o3",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-1",
            "gemini-2.5-pro",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "unknown",
            "",
            "\x00",
            "gpt-4o" * 100,
        ]
    ),
    st.text(max_size=10),
)
model_names_cheap = st.sampled_from(
    ["gpt-4o", "claude-sonnet-4-5-20250929", "gemini-2.5-pro", "unknown", "", None, 7, ["x"]]
)


# --- reference readers -----------------------------------------------------------------


@dataclass
class Expect:
    """What an extractor should make of a payload."""

    odd: bool  # some value it reads is not a plain count in [0, MAX_TOKENS]
    counts: dict[str, int]  # meaningful only when not odd; parts not yet clamped
    cache_hit: bool = False

    @property
    def fits(self) -> bool:
        c = self.counts
        return (
            c["input_tokens"] <= MAX_TOKENS
            and c["output_tokens"] <= MAX_TOKENS
            and sum(c[p] for p in INPUT_PARTS) + c["input_audio_tokens"] <= c["input_tokens"]
            and c["reasoning_tokens"] + c["output_audio_tokens"] <= c["output_tokens"]
        )

    @property
    def empty(self) -> bool:
        return self.counts["input_tokens"] == 0 and self.counts["output_tokens"] == 0


class Reader:
    """Reads counts as the extractors should, noting any value that is not clean."""

    def __init__(self) -> None:
        self.odd = False
        self.counts = dict.fromkeys(COUNT_COLUMNS, 0)

    def __call__(self, value: Any) -> int:
        if value is None:
            return 0
        if type(value) is int and 0 <= value <= MAX_TOKENS:
            return value
        if (
            type(value) is float
            and math.isfinite(value)
            and value.is_integer()
            and 0 <= value <= MAX_TOKENS
        ):
            return int(value)
        self.odd = True
        return 0

    def shape_ok(self, payload: Any) -> bool:
        if payload is None:
            return False
        if isinstance(payload, (str, bytes, int, float, list, tuple)):
            self.odd = True
            return False
        return True

    def expect(self, cache_hit: bool = False) -> Expect:
        return Expect(self.odd, self.counts, cache_hit)


def get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    if isinstance(obj, SimpleNamespace):
        return getattr(obj, key, None)
    return None


def _lc_tier(details: Any) -> str | None:
    if not isinstance(details, dict):
        return None
    for key in details:
        if isinstance(key, str) and "_" in key:
            head, _, rest = key.partition("_")
            if rest in ("cache_read", "cache_creation", "reasoning") and head in details:
                return head
    return next((k for k in ("priority", "flex", "batch", "scale") if k in details), None)


def ref_langchain(p: Any) -> Expect:
    r = Reader()
    if not r.shape_ok(p):
        return r.expect()
    c = r.counts
    c["input_tokens"], c["output_tokens"] = r(get(p, "input_tokens")), r(get(p, "output_tokens"))
    din = get(p, "input_token_details") or {}
    dout = get(p, "output_token_details") or {}
    tier = _lc_tier(din) or _lc_tier(dout)
    prefix = f"{tier}_" if tier else ""

    def detail(details: Any, key: str) -> Any:
        value = get(details, prefix + key)
        return value if value is not None else get(details, key)

    c["cache_read_tokens"] = r(detail(din, "cache_read"))
    five, hour = r(get(din, "ephemeral_5m_input_tokens")), r(get(din, "ephemeral_1h_input_tokens"))
    generic = r(detail(din, "cache_creation"))
    c["cache_write_tokens"] = five + max(generic - five - hour, 0)
    c["cache_write_1h_tokens"] = hour
    c["input_audio_tokens"] = r(get(din, "audio"))
    c["reasoning_tokens"] = r(detail(dout, "reasoning"))
    c["output_audio_tokens"] = r(get(dout, "audio"))
    return r.expect(cache_hit=get(p, "total_cost") == 0)


def ref_openai_chat(p: Any) -> Expect:
    r = Reader()
    if r.shape_ok(p):
        c = r.counts
        c["input_tokens"] = r(get(p, "prompt_tokens"))
        c["output_tokens"] = r(get(p, "completion_tokens"))
        prompt, completion = get(p, "prompt_tokens_details"), get(p, "completion_tokens_details")
        c["cache_read_tokens"] = r(get(prompt, "cached_tokens"))
        c["cache_write_tokens"] = r(get(prompt, "cache_write_tokens"))
        c["input_audio_tokens"] = r(get(prompt, "audio_tokens"))
        c["reasoning_tokens"] = r(get(completion, "reasoning_tokens"))
        c["output_audio_tokens"] = r(get(completion, "audio_tokens"))
    return r.expect()


def ref_openai_responses(p: Any) -> Expect:
    r = Reader()
    if r.shape_ok(p):
        c = r.counts
        c["input_tokens"] = r(get(p, "input_tokens"))
        c["output_tokens"] = r(get(p, "output_tokens"))
        details_in, details_out = get(p, "input_tokens_details"), get(p, "output_tokens_details")
        c["cache_read_tokens"] = r(get(details_in, "cached_tokens"))
        c["cache_write_tokens"] = r(get(details_in, "cache_write_tokens"))
        c["reasoning_tokens"] = r(get(details_out, "reasoning_tokens"))
    return r.expect()


def ref_anthropic(p: Any) -> Expect:
    """`input_tokens` there excludes cache reads and writes; the TTL split is a part."""
    r = Reader()
    if r.shape_ok(p):
        c = r.counts
        uncached, read = r(get(p, "input_tokens")), r(get(p, "cache_read_input_tokens"))
        written = r(get(p, "cache_creation_input_tokens"))
        creation = get(p, "cache_creation")
        five = r(get(creation, "ephemeral_5m_input_tokens"))
        hour = r(get(creation, "ephemeral_1h_input_tokens"))
        written = max(written, five + hour)
        c["input_tokens"] = uncached + read + written
        c["cache_read_tokens"], c["cache_write_tokens"] = read, written - hour
        c["cache_write_1h_tokens"] = hour
        c["output_tokens"] = r(get(p, "output_tokens"))
        c["reasoning_tokens"] = r(get(get(p, "output_tokens_details"), "thinking_tokens"))
    return r.expect()


def ref_gemini(p: Any) -> Expect:
    """camelCase first, else snake_case; tool-use prompt is input, thoughts are output."""
    r = Reader()
    if not r.shape_ok(p):
        return r.expect()

    def either(camel: str, snake: str) -> Any:
        value = get(p, camel)
        return value if value is not None else get(p, snake)

    c = r.counts
    c["input_tokens"] = r(either("promptTokenCount", "prompt_token_count")) + r(
        either("toolUsePromptTokenCount", "tool_use_prompt_token_count")
    )
    c["cache_read_tokens"] = r(either("cachedContentTokenCount", "cached_content_token_count"))
    thoughts = r(either("thoughtsTokenCount", "thoughts_token_count"))
    c["output_tokens"] = r(either("candidatesTokenCount", "candidates_token_count")) + thoughts
    c["reasoning_tokens"] = thoughts
    for camel, snake, target in (
        ("promptTokensDetails", "prompt_tokens_details", "input_audio_tokens"),
        ("candidatesTokensDetails", "candidates_tokens_details", "output_audio_tokens"),
    ):
        details = either(camel, snake)
        if isinstance(details, (list, tuple)):
            for entry in details:
                modality = get(entry, "modality")
                if isinstance(modality, str) and modality.upper().endswith("AUDIO"):
                    count = get(entry, "tokenCount")
                    c[target] += r(count if count is not None else get(entry, "token_count"))
    return r.expect()


def ref_bedrock(p: Any) -> Expect:
    """`inputTokens` excludes cache reads and writes; `cacheDetails` splits writes by TTL."""
    r = Reader()
    if r.shape_ok(p):
        c = r.counts
        uncached, read = r(get(p, "inputTokens")), r(get(p, "cacheReadInputTokens"))
        written = r(get(p, "cacheWriteInputTokens"))
        by_ttl = {"5m": 0, "1h": 0}
        details = get(p, "cacheDetails")
        if isinstance(details, (list, tuple)):
            for detail in details:
                ttl = get(detail, "ttl")
                if isinstance(ttl, str) and ttl in by_ttl:
                    by_ttl[ttl] += r(get(detail, "inputTokens"))
        written = max(written, by_ttl["5m"] + by_ttl["1h"])
        c["input_tokens"] = uncached + read + written
        c["cache_read_tokens"], c["cache_write_tokens"] = read, written - by_ttl["1h"]
        c["cache_write_1h_tokens"] = by_ttl["1h"]
        c["output_tokens"] = r(get(p, "outputTokens"))
    return r.expect()


def ref_extract(p: Any, unwrapped: int = 0) -> Expect | None:
    """`extract_usage`'s shape detection, in its documented order."""
    if p is None:
        return None
    for key in WRAPPERS:  # a whole response; more than 7 levels deep is a cycle
        inner = get(p, key)
        if inner is not None and inner is not p and not isinstance(inner, (str, bytes)):
            return None if unwrapped + 1 >= 8 else ref_extract(inner, unwrapped + 1)

    def has(*keys: str) -> bool:
        return any(get(p, k) is not None for k in keys)

    if has("prompt_tokens", "completion_tokens"):
        return ref_openai_chat(p)
    if has(*ANTHROPIC_CACHE_KEYS):
        return ref_anthropic(p)
    if has("input_token_details", "output_token_details"):
        return ref_langchain(p)
    if has("input_tokens_details") or (has("output_tokens_details") and has("input_tokens")):
        return ref_openai_responses(p)
    if has("promptTokenCount", "prompt_token_count"):
        return ref_gemini(p)
    if has("inputTokens", "outputTokens"):
        return ref_bedrock(p)
    if has("input_tokens", "output_tokens"):
        return ref_langchain(p)
    return None


EXTRACTORS: tuple[tuple[str, Callable[..., Usage], Callable[[Any], Expect], bool], ...] = (
    ("from_langchain", from_langchain, ref_langchain, False),
    ("from_openai_chat", from_openai_chat, ref_openai_chat, True),
    ("from_openai_responses", from_openai_responses, ref_openai_responses, True),
    ("from_anthropic", from_anthropic, ref_anthropic, False),
    ("from_gemini", from_gemini, ref_gemini, False),
    ("from_bedrock", from_bedrock, ref_bedrock, False),
)


# --- checks ------------------------------------------------------------------------------


def counts_of(usage: Usage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in COUNT_COLUMNS}


def assert_consistent(usage: Usage) -> None:
    assert isinstance(usage, Usage)
    for name in COUNT_COLUMNS:
        value = getattr(usage, name)
        assert type(value) is int and 0 <= value <= MAX_TOKENS, (name, value)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    parts_in = sum(getattr(usage, p) for p in INPUT_PARTS) + usage.input_audio_tokens
    assert parts_in <= usage.input_tokens
    assert usage.reasoning_tokens + usage.output_audio_tokens <= usage.output_tokens
    assert isinstance(usage.anomalies, tuple)
    assert all(isinstance(a, str) for a in usage.anomalies)


def assert_as_expected(usage: Usage, expect: Expect, notes: tuple[str, ...] = ()) -> None:
    """Odd or ill-fitting input is described; clean input is read exactly, silently."""
    if expect.odd or not expect.fits:
        assert usage.anomalies, f"no anomaly recorded for {expect}"
    else:
        assert counts_of(usage) == expect.counts
        assert usage.anomalies == notes
        assert usage.cache_hit == expect.cache_hit
        assert not usage.estimated


def counters() -> tuple[int, int]:
    stats = modelforge.stats()
    return stats["anomalies"], stats["handler_errors"]


# --- 1. extractors ------------------------------------------------------------------------


def check_extractors(payload: Any, tier: Any) -> None:
    for name, extractor, reference, takes_tier in EXTRACTORS:
        usage = extractor(payload, tier) if takes_tier else extractor(payload)
        assert_consistent(usage)
        try:
            assert_as_expected(usage, reference(payload))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {usage!r}") from exc
    usage_or_none = extract_usage(payload, tier)
    expect = ref_extract(payload)
    if expect is None:
        assert usage_or_none is None
    else:
        assert usage_or_none is not None
        assert_consistent(usage_or_none)
        assert_as_expected(usage_or_none, expect)


class Proxy:
    """An object that invents every attribute, as mocks and lazy SDK wrappers do."""

    def __getattr__(self, name: str) -> Any:
        return Proxy()


def test_extractors_survive_cycles_and_proxies() -> None:
    cycle: dict[str, Any] = {"prompt_tokens": 1}
    cycle["usage"] = {"usage": cycle}
    check_extractors(cycle, None)
    for payload in (cycle, Proxy()):
        assert extract_usage(payload) is None
        for _, extractor, _, _ in EXTRACTORS:
            assert_consistent(extractor(payload))


@fuzz(1_200)
@given(payload=extractor_payloads, tier=tiers)
def test_extractors_never_raise_and_describe_every_anomaly(payload: Any, tier: Any) -> None:
    check_extractors(payload, tier)


@slow
@fuzz(60_000)
@given(payload=extractor_payloads, tier=tiers)
def test_extractors_never_raise_and_describe_every_anomaly_slow(payload: Any, tier: Any) -> None:
    check_extractors(payload, tier)


# --- 2. LangChain handler ----------------------------------------------------------------


@dataclass
class LangChainCase:
    result: Any  # an LLMResult, or None
    error: BaseException | None
    model: Any
    provider_class: str


def _ai_message(usage_metadata: Any, response_metadata: Any, text: str) -> AIMessage:
    # model_construct: pydantic would reject most of this junk, as LangChain never would.
    return AIMessage.model_construct(
        content=text, usage_metadata=usage_metadata, response_metadata=response_metadata
    )


def _chat_generation(
    usage_metadata: Any, response_metadata: Any, generation_info: Any, text: str
) -> ChatGeneration:
    message = _ai_message(usage_metadata, response_metadata, text)
    return ChatGeneration.model_construct(
        message=message, generation_info=generation_info, text=text
    )


def _result(generations: Any, llm_output: Any) -> LLMResult:
    return LLMResult.model_construct(generations=generations, llm_output=llm_output)


# Most slots hold nothing, so that an example spends its draws on one or two payloads.
lc_generation_infos = st.one_of(
    st.none(),
    st.none(),
    st.fixed_dictionaries(
        {}, optional={"usage": usage_payloads, "token_usage": usage_payloads, "x": junk_scalars}
    ),
    junk_scalars,
)
chat_generations = st.builds(
    _chat_generation,
    st.one_of(st.none(), lc_payloads, lc_payloads, usage_payloads, junk),
    st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {}, optional={"model_name": model_names, "model": junk_scalars, "service_tier": tiers}
        ),
        junk_scalars,
    ),
    lc_generation_infos,
    st.sampled_from(["", "hi"]),
)
one_generation = chat_generations.map(lambda g: [[g]])
generation_lists = st.one_of(
    one_generation,
    one_generation,
    one_generation,
    # n > 1: every generation carries usage; only the first one counts
    st.builds(lambda a, b: [[a], [b]], chat_generations, chat_generations),
    lc_generation_infos.map(lambda i: [[Generation.model_construct(text="hi", generation_info=i)]]),
    st.builds(lambda j, g, k: [[j, g], k], junk, chat_generations, junk),
    junk,
)
lc_results = st.one_of(
    st.builds(
        _result,
        generation_lists,
        st.one_of(
            st.none(),
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "token_usage": usage_payloads,
                    "usage": usage_payloads,
                    "model_name": st.one_of(model_names, junk),
                    "model": model_names,
                    "service_tier": tiers,
                },
            ),
            junk_scalars,
        ),
    ),
    st.none(),
)
langchain_cases = st.builds(
    LangChainCase,
    result=lc_results,
    error=st.sampled_from([None, None, None, RuntimeError("boom"), TimeoutError()]),
    model=st.one_of(model_names, st.none(), st.integers(), st.lists(st.integers(), max_size=2)),
    provider_class=st.sampled_from(
        ["ChatOpenAI", "ChatAnthropic", "ChatBedrockConverse", "FakeChat"]
    ),
)


def langchain_expectation(response: Any, error: BaseException | None) -> tuple[bool, Any]:
    """(whether reading the result fails, the `Expect` of the usage source it reads).

    The documented order: the first message `usage_metadata`, else the generation's
    `generation_info["usage" or "token_usage"]`, else `llm_output["token_usage" or
    "usage"]`; the first recognisable one wins. Junk where a dict or a generation is
    due makes the read fail, which the handler must count and survive.
    """
    if response is None:
        return False, None
    try:
        llm_output = response.llm_output or {}
        served = llm_output.get("model_name") or llm_output.get("model")
        tier = llm_output.get("service_tier")
        found: Expect | None = None
        for generations in response.generations or []:
            for generation in generations or []:
                message = generation.message if isinstance(generation, ChatGeneration) else None
                meta = getattr(message, "response_metadata", None) or {}
                served = served or meta.get("model_name") or meta.get("model")
                tier = tier or meta.get("service_tier")
                if found is None:
                    usage_metadata = getattr(message, "usage_metadata", None)
                    if usage_metadata:
                        found = ref_langchain(usage_metadata)
                    elif generation.generation_info:
                        info = generation.generation_info
                        found = ref_extract(info.get("usage") or info.get("token_usage"))
        if found is None:
            found = ref_extract(llm_output.get("token_usage") or llm_output.get("usage"))
        if served:
            str(served)
        if found is None and error is None:  # the output text, to estimate from
            [g.text for gens in response.generations or [] for g in gens or [] if g.text]
    except Exception:
        return True, None
    return False, found


def check_langchain(case: LangChainCase, persist: bool = False) -> CallRecord:
    handler = UsageCallbackHandler(metadata_keys=("user",))
    run_id = uuid4()
    serialized = {"id": ["langchain", "chat_models", "x", case.provider_class]}
    before = counters()
    with track_usage(persist=persist, project="fuzz") as session:
        handler.on_chat_model_start(
            serialized,
            [[HumanMessage("hello there")]],
            run_id=run_id,
            invocation_params={"model": case.model},
            metadata={"user": "u1", "ls_provider": None},
            tags=["fuzz"],
        )
        if case.error is None:
            handler.on_llm_end(case.result, run_id=run_id)
        else:
            handler.on_llm_error(case.error, run_id=run_id, response=case.result)
    after = counters()

    (record,) = session.calls
    usage = record.usage
    assert record.run_id == str(run_id)
    assert record.status == ("ok" if case.error is None else "error")
    assert_consistent(usage)
    fails, expect = langchain_expectation(case.result, case.error)
    assert handler.errors == int(fails)
    assert after[1] - before[1] == int(fails)
    assert after[0] - before[0] == len(usage.anomalies)
    if expect is not None:
        assert_as_expected(usage, expect)
    elif case.error is None:
        assert usage.estimated
        assert usage.anomalies == ()
    else:
        assert usage.is_empty and not usage.estimated
        assert usage.anomalies == ()
    return record


@fuzz(400)
@given(case=langchain_cases)
def test_langchain_handler_survives_junk_results(case: LangChainCase) -> None:
    check_langchain(case)


@slow
@fuzz(20_000)
@given(case=langchain_cases)
def test_langchain_handler_survives_junk_results_slow(case: LangChainCase) -> None:
    check_langchain(case)


# --- 3. LlamaIndex handler ---------------------------------------------------------------


@dataclass
class LlamaIndexCase:
    model_dict: Any
    raw: Any
    response_kwargs: Any
    message_kwargs: Any
    progress: list[Any]  # the `raw` of each in-progress (streamed) chunk
    ending: str  # "end", "end_without_response" or "exception"


raws = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"usage": usage_payloads}, optional={"model": model_names, "service_tier": tiers}
    ),
    st.builds(
        lambda p, key: {key: {"usage": p, "model": "gpt-4o"}},
        usage_payloads,
        st.sampled_from(["response", "message"]),
    ),
    junk,
)


LLM_CLASSES = ("OpenAI", "openai_llm", "Anthropic", "anthropic_llm", "Gemini", "Bedrock", "MockLLM")
class_names = st.sampled_from((*LLM_CLASSES, "", None, 7, ("OpenAI",)))
llamaindex_cases = st.builds(
    LlamaIndexCase,
    model_dict=st.one_of(
        *[
            st.fixed_dictionaries(
                {"class_name": class_names},
                optional={"model": model_names_cheap, "model_name": model_names_cheap},
            )
        ]
        * 4,
        junk_scalars,
    ),
    raw=raws,
    # Most slots hold nothing, so that an example spends its draws on one or two payloads.
    response_kwargs=st.one_of(*[st.builds(dict)] * 4, usage_payloads, junk_scalars),
    message_kwargs=st.one_of(
        *[st.builds(dict)] * 4, st.builds(lambda p: {"usage": p}, usage_payloads), junk_scalars
    ),
    progress=st.one_of(*[st.builds(list)] * 7, st.lists(raws, min_size=1, max_size=2)),
    ending=st.sampled_from(["end", "end", "end", "end_without_response", "exception"]),
)


def _chat_response(raw: Any, response_kwargs: Any, message_kwargs: Any) -> ChatResponse:
    message = ChatMessage.model_construct(
        role=MessageRole.ASSISTANT, blocks=[TextBlock(text="hi")], additional_kwargs=message_kwargs
    )
    return ChatResponse.model_construct(
        message=message, raw=raw, additional_kwargs=response_kwargs, delta=None, logprobs=None
    )


def _raw_usage(raw: Any) -> Any:
    if raw is None or isinstance(raw, (str, bytes, int, float, bool)):
        return None
    usage = get(raw, "usage")
    if usage is None:
        for key in ("response", "message"):
            inner = get(raw, key)
            if inner is not None and not isinstance(inner, (str, bytes)):
                usage = get(inner, "usage")
                if usage is not None:
                    break
    return usage


def llamaindex_expectation(
    case: LlamaIndexCase, provider: str | None
) -> tuple[bool, Expect | None, tuple[str, ...]]:
    """(an anomaly is due, the `Expect` of the source recorded, notes added to it).

    The documented order: `raw`'s usage, then `additional_kwargs`, then the message's
    `additional_kwargs["usage"]`; a source that yields no tokens is skipped, and its
    anomalies travel on with whatever is recorded.
    """
    message_kwargs = case.message_kwargs
    sources = [
        _raw_usage(case.raw),
        case.response_kwargs,
        message_kwargs.get("usage") if isinstance(message_kwargs, dict) else None,
    ]
    for payload in sources:
        if payload is None:
            continue
        if provider == "anthropic" and get(payload, "input_tokens") is not None:
            expect: Expect | None = ref_anthropic(payload)
        else:
            expect = ref_extract(payload)
        if expect is None:
            continue
        if expect.odd or not expect.fits:
            return True, None, ()
        if not expect.empty or expect.cache_hit:
            no_cache = all(get(payload, k) is None for k in ANTHROPIC_CACHE_KEYS)
            notes = (ANTHROPIC_NOTE,) if provider == "anthropic" and no_cache else ()
            return False, expect, notes
    return False, None, ()


def check_llamaindex(case: LlamaIndexCase, persist: bool = False) -> CallRecord:
    handler = UsageEventHandler(metadata_keys=())
    span = f"FuzzLLM.chat-{uuid4()}"
    hello = [ChatMessage(role="user", content="hello there")]
    response = _chat_response(case.raw, case.response_kwargs, case.message_kwargs)
    before = counters()
    with track_usage(persist=persist, project="fuzz") as session:
        handler.handle(
            LLMChatStartEvent.model_construct(
                messages=hello, additional_kwargs={}, model_dict=case.model_dict, span_id=span
            )
        )
        for raw in case.progress:
            chunk = _chat_response(raw, {}, {})
            handler.handle(
                LLMChatInProgressEvent.model_construct(messages=hello, response=chunk, span_id=span)
            )
        if case.ending == "end":
            handler.handle(
                LLMChatEndEvent.model_construct(messages=hello, response=response, span_id=span)
            )
        elif case.ending == "end_without_response":
            handler.handle(
                LLMChatEndEvent.model_construct(messages=hello, response=None, span_id=span)
            )
        else:
            handler.handle(ExceptionEvent(exception=RuntimeError("stream broke"), span_id=span))
    after = counters()

    (record,) = session.calls
    usage = record.usage
    assert record.run_id == f"llamaindex:{span}"
    assert record.status == ("error" if case.ending == "exception" else "ok")
    assert_consistent(usage)
    assert handler.errors == 0
    assert after[1] == before[1]
    assert after[0] - before[0] == len(usage.anomalies)
    if case.progress:
        return record  # chunk usage merges with the final one: consistency is the check
    if case.ending == "exception":
        # Failed before any response: nothing was billed.
        assert usage.is_empty and not usage.estimated and usage.anomalies == ()
    elif case.ending == "end_without_response":
        assert usage.estimated and usage.anomalies == ()
    else:
        provider = provider_of(case.model_dict)
        anomalous, expect, notes = llamaindex_expectation(case, provider)
        if anomalous:
            assert usage.anomalies
        elif expect is not None:
            assert_as_expected(usage, expect, notes)
        else:
            assert usage.estimated and usage.anomalies == ()
    return record


@fuzz(400)
@given(case=llamaindex_cases)
def test_llamaindex_handler_survives_junk_responses(case: LlamaIndexCase) -> None:
    check_llamaindex(case)


@slow
@fuzz(20_000)
@given(case=llamaindex_cases)
def test_llamaindex_handler_survives_junk_responses_slow(case: LlamaIndexCase) -> None:
    check_llamaindex(case)


# --- 4. the persisted path ------------------------------------------------------------------


def flush(timeout: float = 10.0) -> bool:
    """`modelforge.flush()`, but False at once when the log's writer thread has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if modelforge.flush(timeout=0.1):
            return True
        writers = [t for t in threading.enumerate() if t.name.startswith("modelforge-writer")]
        if not any(t.is_alive() for t in writers):
            return False
    return False


def check_persisted(lc_case: LangChainCase, li_case: LlamaIndexCase, db_path: Path) -> None:
    flushed = False
    try:
        made = (check_langchain(lc_case, persist=True), check_llamaindex(li_case, persist=True))
        records = {record.run_id: record for record in made}
        flushed = flush()
        stats = modelforge.stats()
        conn = sqlite3.connect(db_path)
        conn.row_factory = sqlite3.Row
        try:
            marks = ",".join("?" * len(records))
            query = f"SELECT * FROM calls WHERE run_id IN ({marks})"
            rows = [dict(row) for row in conn.execute(query, list(records))]
        finally:
            conn.close()
    finally:
        if not flushed:
            # A writer that died must not fail the examples hypothesis tries next.
            store.close_all()
    costs = {run_id: r.cost.total for run_id, r in records.items()}
    assert flushed, f"records not written: {stats}; their costs: {costs}"
    assert sorted(row["run_id"] for row in rows) == sorted(records)
    for row in rows:
        assert_row_consistent(row)
        usage = records[row["run_id"]].usage
        assert {name: row[name] for name in COUNT_COLUMNS} == counts_of(usage)
        assert row["total_tokens"] == usage.total_tokens
        anomalies = json.loads(row["anomalies"]) if row["anomalies"] else []
        assert anomalies == list(usage.anomalies)
        assert row["estimated"] == int(usage.estimated)


@fuzz(100)
@given(lc_case=langchain_cases, li_case=llamaindex_cases)
def test_persisted_rows_stay_consistent(
    lc_case: LangChainCase, li_case: LlamaIndexCase, db_path: Path
) -> None:
    check_persisted(lc_case, li_case, db_path)


@slow
@fuzz(2_000)
@given(lc_case=langchain_cases, li_case=llamaindex_cases)
def test_persisted_rows_stay_consistent_slow(
    lc_case: LangChainCase, li_case: LlamaIndexCase, db_path: Path
) -> None:
    check_persisted(lc_case, li_case, db_path)
