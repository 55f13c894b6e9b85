"""The `Usage` model and one test group per provider payload shape.

Payloads are the examples the providers document (cited beside each), or objects built
from the providers' own SDK classes, so a changed field name shows up here first.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import anthropic.types as anthropic_types
import pytest
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import ValidationError

from modelforge.usage import (
    MAX_TOKENS,
    NO_ANTHROPIC_CACHE_COUNTS,
    Usage,
    extract_usage,
    from_anthropic,
    from_bedrock,
    from_gemini,
    from_langchain,
    from_llamaindex_response,
    from_openai_chat,
    from_openai_responses,
    keep_cache_counts,
    raw_usage,
    recorded_tier,
)

# --- documented payloads ------------------------------------------------------------

# https://platform.openai.com/docs/api-reference/chat/object (the example response)
OPENAI_CHAT_REFERENCE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

# https://platform.openai.com/docs/guides/prompt-caching ("Response structure")
OPENAI_CHAT_CACHED = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

# https://developers.openai.com/api/docs/guides/reasoning (usage of a Responses call)
OPENAI_RESPONSES_REASONING = {
    "input_tokens": 75,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 1186,
    "output_tokens_details": {"reasoning_tokens": 1024},
    "total_tokens": 1261,
}

# https://platform.claude.com/docs/en/build-with-claude/prompt-caching ("1-hour cache
# duration"). The docs say cache_creation_input_tokens equals the sum of the
# cache_creation object, yet print 248 against 456 + 100; the split is what is billed.
ANTHROPIC_TTL_SPLIT = {
    "input_tokens": 2048,
    "cache_read_input_tokens": 1800,
    "cache_creation_input_tokens": 248,
    "output_tokens": 503,
    "cache_creation": {"ephemeral_5m_input_tokens": 456, "ephemeral_1h_input_tokens": 100},
}

# https://firebase.google.com/docs/ai-logic/server-prompt-templates/get-started: a
# gemini-3-flash-preview reply; 34 + 418 + 438 = 890, so thoughts are not in candidates.
GEMINI_THINKING = {
    "promptTokenCount": 34,
    "candidatesTokenCount": 418,
    "totalTokenCount": 890,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 34}],
    "thoughtsTokenCount": 438,
}

# https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html
# (fields) with https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_CacheDetail.html
BEDROCK_CACHED = {
    "inputTokens": 12,
    "outputTokens": 40,
    "totalTokens": 3052,
    "cacheReadInputTokens": 2000,
    "cacheWriteInputTokens": 1000,
    "cacheDetails": [{"inputTokens": 600, "ttl": "1h"}, {"inputTokens": 400, "ttl": "5m"}],
}


def _parts_fit(usage: Usage) -> bool:
    parts_in = (
        usage.cache_read_tokens
        + usage.cache_write_tokens
        + usage.cache_write_1h_tokens
        + usage.input_audio_tokens
    )
    parts_out = usage.reasoning_tokens + usage.output_audio_tokens
    return parts_in <= usage.input_tokens and parts_out <= usage.output_tokens


# --- the model ----------------------------------------------------------------------


def test_usage_fills_total_and_is_inclusive() -> None:
    """Cache reads are part of input_tokens, so the total counts them once."""
    usage = Usage(
        input_tokens=1200, cache_read_tokens=1000, output_tokens=300, reasoning_tokens=200
    )
    assert usage.total_tokens == 1500
    assert not usage.is_empty
    assert Usage().is_empty


@pytest.mark.parametrize("value", [-1, -(10**6)])
def test_usage_rejects_negative_counts(value: int) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Usage(input_tokens=value)


@pytest.mark.parametrize("value", [1.0, "5", True, None])
def test_usage_is_strict_about_integers(value: Any) -> None:
    """Coercion is the extractors' job; the model itself only takes real ints."""
    with pytest.raises(ValidationError, match="valid integer"):
        Usage(output_tokens=value)


def test_usage_rejects_input_parts_larger_than_input() -> None:
    with pytest.raises(ValidationError) as caught:
        Usage(input_tokens=100, cache_read_tokens=60, cache_write_tokens=30, input_audio_tokens=20)
    message = str(caught.value)
    assert "(110) exceed input_tokens (100)" in message
    assert "input_tokens must include them" in message


def test_usage_rejects_output_parts_larger_than_output() -> None:
    with pytest.raises(ValidationError, match=r"\(11\) exceed output_tokens \(10\)"):
        Usage(output_tokens=10, reasoning_tokens=8, output_audio_tokens=3)


def test_usage_rejects_a_total_that_does_not_add_up() -> None:
    with pytest.raises(ValidationError, match=r"total_tokens \(5\) must equal"):
        Usage(input_tokens=1, output_tokens=1, total_tokens=5)


def test_usage_rejects_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Usage(prompt_tokens=1)  # type: ignore[call-arg]
    usage = Usage(input_tokens=1)
    with pytest.raises(ValidationError):
        usage.input_tokens = 2  # type: ignore[misc]


def test_usage_addition_sums_every_count() -> None:
    a = Usage(input_tokens=100, cache_read_tokens=50, output_tokens=10, reasoning_tokens=4)
    b = Usage(input_tokens=30, cache_write_1h_tokens=30, output_tokens=5, estimated=True)
    total = a + b
    assert (total.input_tokens, total.output_tokens, total.total_tokens) == (130, 15, 145)
    assert (total.cache_read_tokens, total.cache_write_1h_tokens) == (50, 30)
    assert total.reasoning_tokens == 4
    assert total.estimated


# --- LangChain UsageMetadata --------------------------------------------------------


def test_langchain_plain_usage_metadata() -> None:
    usage = from_langchain(
        {
            "input_tokens": 350,
            "output_tokens": 240,
            "total_tokens": 590,
            "input_token_details": {"audio": 10, "cache_read": 100, "cache_creation": 200},
            "output_token_details": {"audio": 10, "reasoning": 200},
        }
    )
    assert usage == Usage(
        input_tokens=350,
        cache_read_tokens=100,
        cache_write_tokens=200,
        input_audio_tokens=10,
        output_tokens=240,
        reasoning_tokens=200,
        output_audio_tokens=10,
    )


def test_langchain_anthropic_ttl_split_and_unsplit_shapes_agree() -> None:
    """langchain-anthropic now zeroes `cache_creation` when it splits by TTL; older
    releases kept the whole there beside the split. Neither may count a write twice."""
    langchain_anthropic = pytest.importorskip("langchain_anthropic.chat_models")
    sdk_usage = anthropic_types.Usage.model_validate(ANTHROPIC_TTL_SPLIT)
    split = langchain_anthropic._create_usage_metadata(sdk_usage)
    assert split["input_token_details"]["cache_creation"] == 0  # the shape under test
    # The shape in langchain's docs (PR #31708): cache_creation holds the whole.
    unsplit = {
        "input_tokens": 4404,
        "output_tokens": 503,
        "total_tokens": 4907,
        "input_token_details": {
            "cache_read": 1800,
            "cache_creation": 556,
            "ephemeral_5m_input_tokens": 456,
            "ephemeral_1h_input_tokens": 100,
        },
    }
    expected = Usage(
        input_tokens=2048 + 1800 + 456 + 100,
        cache_read_tokens=1800,
        cache_write_tokens=456,
        cache_write_1h_tokens=100,
        output_tokens=503,
    )
    assert from_langchain(split) == expected
    assert from_langchain(unsplit) == expected
    assert from_anthropic(ANTHROPIC_TTL_SPLIT) == expected


def test_langchain_cache_creation_without_split_is_five_minute() -> None:
    usage = from_langchain(
        {"input_tokens": 1500, "output_tokens": 1, "input_token_details": {"cache_creation": 1000}}
    )
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (1000, 0)


@pytest.mark.parametrize("tier", ["priority", "flex"])
def test_langchain_openai_service_tier_keys_are_not_extra_tokens(tier: str) -> None:
    """langchain-openai prefixes details with the tier and adds a `<tier>` count of the
    uncached input / non-reasoning output; those counts repeat tokens already counted."""
    langchain_openai = pytest.importorskip("langchain_openai.chat_models.base")
    metadata = langchain_openai._create_usage_metadata(
        {**OPENAI_CHAT_CACHED, "completion_tokens_details": {"reasoning_tokens": 100}}, tier
    )
    assert metadata["input_token_details"] == {f"{tier}_cache_read": 1920, tier: 86}
    assert metadata["output_token_details"] == {f"{tier}_reasoning": 100, tier: 200}
    assert from_langchain(metadata) == Usage(
        input_tokens=2006,
        cache_read_tokens=1920,
        output_tokens=300,
        reasoning_tokens=100,
        service_tier=tier,
    )


def test_langchain_openai_responses_flex_tier() -> None:
    langchain_openai = pytest.importorskip("langchain_openai.chat_models.base")
    metadata = langchain_openai._create_usage_metadata_responses(OPENAI_RESPONSES_REASONING, "flex")
    assert from_langchain(metadata) == Usage(
        input_tokens=75, output_tokens=1186, reasoning_tokens=1024, service_tier="flex"
    )


def test_langchain_default_tier_is_not_recorded() -> None:
    """langchain-openai drops `default`/`auto`, so the keys carry no prefix."""
    langchain_openai = pytest.importorskip("langchain_openai.chat_models.base")
    metadata = langchain_openai._create_usage_metadata(OPENAI_CHAT_CACHED, "default")
    usage = from_langchain(metadata)
    assert usage.service_tier is None
    assert usage.cache_read_tokens == 1920


def test_langchain_llm_cache_hit_marker() -> None:
    """langchain-core zeroes `total_cost` on messages replayed from its LLM cache."""
    usage = from_langchain(
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "total_cost": 0}
    )
    assert usage.cache_hit
    assert (usage.input_tokens, usage.output_tokens) == (10, 5)
    assert not from_langchain({"input_tokens": 10, "output_tokens": 5}).cache_hit


def test_langchain_cache_hit_survives_a_real_cached_call() -> None:
    """Drive langchain-core's own cache: the second call's metadata is marked."""
    from langchain_core.caches import InMemoryCache
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    reply = AIMessage(
        content="hi", usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    )
    model = GenericFakeChatModel(messages=iter([reply, reply]), cache=InMemoryCache())
    first = model.invoke("hello")
    second = model.invoke("hello")
    assert not from_langchain(first.usage_metadata).cache_hit
    assert from_langchain(second.usage_metadata).cache_hit


# --- OpenAI -------------------------------------------------------------------------


def test_openai_chat_reference_example() -> None:
    assert from_openai_chat(OPENAI_CHAT_REFERENCE) == Usage(input_tokens=19, output_tokens=10)


def test_openai_chat_cached_tokens_are_part_of_prompt_tokens() -> None:
    usage = from_openai_chat(OPENAI_CHAT_CACHED)
    assert usage == Usage(input_tokens=2006, cache_read_tokens=1920, output_tokens=300)


def test_openai_chat_every_detail_and_service_tier() -> None:
    usage = from_openai_chat(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "prompt_tokens_details": {
                "cached_tokens": 200,
                "cache_write_tokens": 300,
                "audio_tokens": 100,
            },
            "completion_tokens_details": {"reasoning_tokens": 250, "audio_tokens": 50},
        },
        service_tier="priority",
    )
    assert usage == Usage(
        input_tokens=1000,
        cache_read_tokens=200,
        cache_write_tokens=300,
        input_audio_tokens=100,
        output_tokens=500,
        reasoning_tokens=250,
        output_audio_tokens=50,
        service_tier="priority",
    )


def test_openai_chat_sdk_object_matches_the_dict() -> None:
    sdk = CompletionUsage(
        prompt_tokens=2006,
        completion_tokens=300,
        total_tokens=2306,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1920, audio_tokens=0),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0, audio_tokens=0),
    )
    assert from_openai_chat(sdk) == from_openai_chat(OPENAI_CHAT_CACHED)


def test_openai_standard_tiers_are_not_recorded() -> None:
    for tier in ("default", "auto", "DEFAULT", None, ""):
        assert from_openai_chat(OPENAI_CHAT_REFERENCE, tier).service_tier is None
    assert from_openai_chat(OPENAI_CHAT_REFERENCE, "Flex").service_tier == "flex"


def test_openai_responses_reasoning_example() -> None:
    usage = from_openai_responses(OPENAI_RESPONSES_REASONING)
    assert usage == Usage(input_tokens=75, output_tokens=1186, reasoning_tokens=1024)


def test_openai_responses_sdk_object() -> None:
    sdk = ResponseUsage(
        input_tokens=5000,
        input_tokens_details=InputTokensDetails(cached_tokens=4000, cache_write_tokens=500),
        output_tokens=1186,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=1024),
        total_tokens=6186,
    )
    assert from_openai_responses(sdk, "priority") == Usage(
        input_tokens=5000,
        cache_read_tokens=4000,
        cache_write_tokens=500,
        output_tokens=1186,
        reasoning_tokens=1024,
        service_tier="priority",
    )


# --- Anthropic ----------------------------------------------------------------------


def test_anthropic_input_tokens_exclude_cache() -> None:
    """Anthropic's input_tokens is only the uncached tail; ours includes reads and writes."""
    usage = from_anthropic(
        {
            "input_tokens": 50,
            "cache_read_input_tokens": 100000,
            "cache_creation_input_tokens": 248,
            "output_tokens": 503,
        }
    )
    assert usage == Usage(
        input_tokens=50 + 100000 + 248,
        cache_read_tokens=100000,
        cache_write_tokens=248,
        output_tokens=503,
    )


def test_anthropic_ttl_split_takes_the_split_over_the_sum() -> None:
    usage = from_anthropic(ANTHROPIC_TTL_SPLIT)
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (456, 100)
    assert usage.input_tokens == 2048 + 1800 + 456 + 100


def test_anthropic_sdk_object_with_thinking_and_tier() -> None:
    sdk = anthropic_types.Usage(
        input_tokens=10,
        output_tokens=700,
        cache_read_input_tokens=3000,
        cache_creation_input_tokens=1200,
        cache_creation=anthropic_types.CacheCreation(
            ephemeral_5m_input_tokens=200, ephemeral_1h_input_tokens=1000
        ),
        output_tokens_details=anthropic_types.OutputTokensDetails(thinking_tokens=400),
        service_tier="priority",
    )
    assert from_anthropic(sdk) == Usage(
        input_tokens=10 + 3000 + 1200,
        cache_read_tokens=3000,
        cache_write_tokens=200,
        cache_write_1h_tokens=1000,
        output_tokens=700,
        reasoning_tokens=400,
        service_tier="priority",
    )


def test_anthropic_standard_tier_and_missing_cache_fields() -> None:
    sdk = anthropic_types.Usage(input_tokens=25, output_tokens=4, service_tier="standard")
    assert from_anthropic(sdk) == Usage(input_tokens=25, output_tokens=4)


# --- Gemini -------------------------------------------------------------------------


def test_gemini_thoughts_are_billed_as_output() -> None:
    usage = from_gemini(GEMINI_THINKING)
    assert usage == Usage(input_tokens=34, output_tokens=418 + 438, reasoning_tokens=438)
    assert usage.total_tokens == GEMINI_THINKING["totalTokenCount"]


def test_gemini_cached_content_is_part_of_the_prompt_and_tool_use_is_not() -> None:
    """https://ai.google.dev/api/generate-content#UsageMetadata: promptTokenCount
    "includes the number of tokens in the cached content"; toolUsePromptTokenCount is a
    separate count, and totalTokenCount adds it in."""
    usage = from_gemini(
        {
            "promptTokenCount": 5000,
            "cachedContentTokenCount": 4200,
            "toolUsePromptTokenCount": 300,
            "candidatesTokenCount": 30,
            "thoughtsTokenCount": 12,
            "totalTokenCount": 5342,
        }
    )
    assert usage == Usage(
        input_tokens=5300, cache_read_tokens=4200, output_tokens=42, reasoning_tokens=12
    )
    assert usage.total_tokens == 5342


def test_gemini_audio_modalities_and_snake_case_sdk_shape() -> None:
    """google-genai's `usage_metadata` has snake_case attributes and modality lists."""
    sdk_like = SimpleNamespace(
        prompt_token_count=120,
        cached_content_token_count=None,
        tool_use_prompt_token_count=None,
        candidates_token_count=30,
        thoughts_token_count=None,
        prompt_tokens_details=[
            SimpleNamespace(modality="AUDIO", token_count=100),
            SimpleNamespace(modality="TEXT", token_count=20),
        ],
        candidates_tokens_details=[SimpleNamespace(modality="MediaModality.AUDIO", token_count=25)],
    )
    assert from_gemini(sdk_like) == Usage(
        input_tokens=120, input_audio_tokens=100, output_tokens=30, output_audio_tokens=25
    )


# --- Bedrock ------------------------------------------------------------------------


def test_bedrock_input_tokens_exclude_cache_and_ttl_split() -> None:
    usage = from_bedrock(BEDROCK_CACHED)
    assert usage == Usage(
        input_tokens=12 + 2000 + 1000,
        cache_read_tokens=2000,
        cache_write_tokens=400,
        cache_write_1h_tokens=600,
        output_tokens=40,
    )
    assert usage.total_tokens == BEDROCK_CACHED["totalTokens"]


def test_bedrock_without_cache_details_writes_are_five_minute() -> None:
    usage = from_bedrock({"inputTokens": 125, "outputTokens": 60, "cacheWriteInputTokens": 1024})
    assert usage == Usage(input_tokens=1149, cache_write_tokens=1024, output_tokens=60)


@dataclass
class _BotoLikeUsage:
    """boto3 returns plain dicts; some wrappers hand back attribute objects (wire names)."""

    inputTokens: int
    outputTokens: int
    cacheReadInputTokens: int | None = None


def test_bedrock_attribute_object() -> None:
    usage = from_bedrock(_BotoLikeUsage(inputTokens=10, outputTokens=3, cacheReadInputTokens=90))
    assert usage == Usage(input_tokens=100, cache_read_tokens=90, output_tokens=3)


# --- auto-detection -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (OPENAI_CHAT_CACHED, Usage(input_tokens=2006, cache_read_tokens=1920, output_tokens=300)),
        (
            OPENAI_RESPONSES_REASONING,
            Usage(input_tokens=75, output_tokens=1186, reasoning_tokens=1024),
        ),
        (
            ANTHROPIC_TTL_SPLIT,
            Usage(
                input_tokens=4404,
                cache_read_tokens=1800,
                cache_write_tokens=456,
                cache_write_1h_tokens=100,
                output_tokens=503,
            ),
        ),
        (GEMINI_THINKING, Usage(input_tokens=34, output_tokens=856, reasoning_tokens=438)),
        (
            BEDROCK_CACHED,
            Usage(
                input_tokens=3012,
                cache_read_tokens=2000,
                cache_write_tokens=400,
                cache_write_1h_tokens=600,
                output_tokens=40,
            ),
        ),
        (
            {"input_tokens": 9, "output_tokens": 1, "input_token_details": {"cache_read": 4}},
            Usage(input_tokens=9, cache_read_tokens=4, output_tokens=1),
        ),
        ({"input_tokens": 9, "output_tokens": 1}, Usage(input_tokens=9, output_tokens=1)),
    ],
    ids=["openai-chat", "openai-responses", "anthropic", "gemini", "bedrock", "langchain", "bare"],
)
def test_extract_usage_detects_each_shape(payload: dict[str, Any], expected: Usage) -> None:
    assert extract_usage(payload) == expected


def test_extract_usage_reads_a_whole_response_and_its_tier() -> None:
    response = {"id": "chatcmpl-1", "service_tier": "flex", "usage": OPENAI_CHAT_CACHED}
    usage = extract_usage(response)
    assert usage is not None
    assert usage.service_tier == "flex"
    assert usage.cache_read_tokens == 1920


def test_extract_usage_takes_sdk_objects() -> None:
    openai_usage = CompletionUsage(prompt_tokens=19, completion_tokens=10, total_tokens=29)
    assert extract_usage(openai_usage) == Usage(input_tokens=19, output_tokens=10)
    anthropic_usage = anthropic_types.Usage(
        input_tokens=5, output_tokens=2, cache_read_input_tokens=95
    )
    assert extract_usage(anthropic_usage) == Usage(
        input_tokens=100, cache_read_tokens=95, output_tokens=2
    )


@pytest.mark.parametrize("payload", [None, {}, {"id": "x"}, object(), SimpleNamespace(a=1)])
def test_extract_usage_none_when_nothing_is_recognisable(payload: Any) -> None:
    assert extract_usage(payload) is None


# --- anomalies: never raise, clamp, say why -----------------------------------------


@pytest.mark.parametrize(
    ("value", "count", "anomaly"),
    [
        (None, 0, None),
        ("120", 120, "string '120' parsed"),
        (" 7 ", 7, "string ' 7 ' parsed"),
        ("lots", 0, "non-numeric str treated as 0"),
        (12.0, 12, None),
        (12.7, 12, "fractional 12.7 truncated"),
        (float("nan"), 0, "nan treated as 0"),
        (float("inf"), 0, "inf treated as 0"),
        (-5, 0, "negative -5 treated as 0"),
        (True, 0, "boolean True treated as 0"),
        (10**30, MAX_TOKENS, f"capped at {MAX_TOKENS}"),
        ([1, 2], 0, "non-numeric list treated as 0"),
        ({"n": 1}, 0, "non-numeric dict treated as 0"),
    ],
)
def test_odd_counts_are_coerced_and_described(value: Any, count: int, anomaly: str | None) -> None:
    usage = from_openai_chat({"prompt_tokens": value, "completion_tokens": 1})
    assert usage.input_tokens == count
    if anomaly is None:
        assert usage.anomalies == ()
    else:
        assert len(usage.anomalies) == 1
        assert usage.anomalies[0].startswith("prompt_tokens: ")
        assert anomaly in usage.anomalies[0]


def test_parts_larger_than_totals_are_clamped_in_order() -> None:
    usage = from_openai_chat(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 25},
        }
    )
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (100, 80, 20)
    assert (usage.output_tokens, usage.reasoning_tokens) == (10, 10)
    assert "input parts exceed input_tokens 100; clamped" in usage.anomalies
    assert "output parts exceed output_tokens 10; clamped" in usage.anomalies


def test_negative_total_with_positive_parts() -> None:
    usage = from_gemini(
        {"promptTokenCount": -5, "cachedContentTokenCount": 3, "candidatesTokenCount": 2}
    )
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (0, 0, 2)
    assert "promptTokenCount: negative -5 treated as 0" in usage.anomalies
    assert _parts_fit(usage)


@pytest.mark.parametrize(
    "payload",
    [
        "prompt_tokens=5",
        b"\x00",
        42,
        3.5,
        [1, 2, 3],
        ("a",),
        {"prompt_tokens": {"nested": 1}, "completion_tokens": [2]},
        {"usage": {"usage": {"prompt_tokens": 3}}},
        {"usage": [1, 2]},
        {"usage": "oops"},
        {"prompt_tokens": 5, "prompt_tokens_details": "cached"},
        {"prompt_tokens": 5, "prompt_tokens_details": [{"cached_tokens": 9}]},
        {"input_tokens": 1, "cache_creation": {"ephemeral_5m_input_tokens": "x"}},
        {"input_tokens": 1, "cache_creation": 7},
        {"input_tokens": 1, "output_tokens": 1, "input_token_details": ["cache_read"]},
        {"promptTokenCount": 3, "promptTokensDetails": [None, 5, {"modality": object()}]},
        {"promptTokenCount": 3, "candidatesTokensDetails": "AUDIO"},
        {"inputTokens": 3, "cacheDetails": [{"ttl": ["1h"], "inputTokens": 5}, None, 7]},
        {"inputTokens": 3, "cacheDetails": {"ttl": "1h"}},
        {"inputTokens": 10**40, "cacheReadInputTokens": 10**40, "outputTokens": -1},
        {"prompt_tokens": 10**13, "prompt_tokens_details": {"cached_tokens": 10**14}},
    ],
)
def test_garbage_never_raises_and_parts_fit(payload: Any) -> None:
    usage = extract_usage(payload)
    if usage is not None:
        assert _parts_fit(usage)
        assert usage.input_tokens <= MAX_TOKENS
        assert usage.output_tokens <= MAX_TOKENS


@pytest.mark.parametrize(
    "extractor",
    [
        from_langchain,
        from_openai_chat,
        from_openai_responses,
        from_anthropic,
        from_gemini,
        from_bedrock,
    ],
)
@pytest.mark.parametrize("payload", [None, object(), "text", 7, 1.5, [1], b"x"])
def test_every_extractor_survives_any_payload(extractor: Any, payload: Any) -> None:
    usage = extractor(payload)
    assert usage.is_empty
    # None and attribute-less objects are simply empty; scalars and lists are odd.
    odd = payload is not None and type(payload) is not object
    assert bool(usage.anomalies) is odd


def test_wrong_payload_type_is_recorded() -> None:
    usage = from_anthropic("input_tokens=5")
    assert usage.is_empty
    assert usage.anomalies == ("usage: unexpected str payload",)


def test_huge_anthropic_parts_are_capped_and_fit() -> None:
    usage = from_anthropic(
        {"input_tokens": 10**15, "cache_read_input_tokens": 10**15, "output_tokens": 1}
    )
    assert usage.input_tokens == MAX_TOKENS
    assert usage.cache_read_tokens == MAX_TOKENS
    assert _parts_fit(usage)
    assert any("capped" in a for a in usage.anomalies)


@pytest.mark.parametrize(
    ("value", "recorded"),
    [("Flex", "flex"), ("priority", "priority"), ("default", None), ("AUTO", None),
     ("on-demand", None), ("", None), (None, None), (3, None)],
)  # fmt: skip
def test_recorded_tier_drops_the_standard_tiers(value: Any, recorded: str | None) -> None:
    assert recorded_tier(value) == recorded


# --- whole responses, as LlamaIndex hands them over -----------------------------------


def test_raw_usage_finds_usage_at_the_top_or_one_level_down() -> None:
    top = {"model": "gpt-4o", "usage": OPENAI_CHAT_CACHED, "service_tier": "flex"}
    assert raw_usage(top) == (OPENAI_CHAT_CACHED, "gpt-4o", "flex")
    # A streamed Responses `response.completed` event, as an SDK-like object.
    completed = SimpleNamespace(
        type="response.completed",
        response=SimpleNamespace(usage=OPENAI_RESPONSES_REASONING, model="o4-mini"),
    )
    assert raw_usage(completed) == (OPENAI_RESPONSES_REASONING, "o4-mini", None)
    # Anthropic's `message_start` event.
    start = {"type": "message_start", "message": {"usage": ANTHROPIC_TTL_SPLIT, "model": "c"}}
    assert raw_usage(start) == (ANTHROPIC_TTL_SPLIT, "c", None)
    for nothing in (None, "text", b"x", 3, {"id": "no usage"}, {"response": "text"}):
        assert raw_usage(nothing) == (None, None, None)


def test_an_anthropic_stream_keeps_the_cache_counts_of_its_start() -> None:
    first = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_read_input_tokens": 200,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
    }
    last = SimpleNamespace(input_tokens=10, output_tokens=7)
    merged = keep_cache_counts(first, last)
    assert merged == {**first, "output_tokens": 7, "output_tokens_details": None,
                      "service_tier": None}  # fmt: skip
    # 10 uncached + 200 read + 300 written; 1h writes kept apart
    assert from_anthropic(merged) == Usage(
        input_tokens=510,
        cache_read_tokens=200,
        cache_write_tokens=100,
        cache_write_1h_tokens=200,
        output_tokens=7,
    )
    # A last usage with cache counts of its own, or no first one, is taken as it is.
    with_cache = {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 0}
    assert keep_cache_counts(first, with_cache) is with_cache
    assert keep_cache_counts({"input_tokens": 3}, last) is last
    assert keep_cache_counts(first, None) is first


def _li_response(raw: Any = None, kwargs: Any = None, message_kwargs: Any = None) -> Any:
    """A LlamaIndex ChatResponse's shape, without LlamaIndex."""
    message = SimpleNamespace(content="hi", additional_kwargs=message_kwargs or {})
    return SimpleNamespace(raw=raw, message=message, additional_kwargs=kwargs or {})


def test_a_llamaindex_response_is_read_from_its_raw_payload_first() -> None:
    response = _li_response(
        raw={"model": "gpt-4o-2024-08-06", "usage": OPENAI_CHAT_CACHED, "service_tier": "flex"},
        kwargs={"prompt_tokens": 1, "completion_tokens": 1},
    )
    usage, served, anomalies = from_llamaindex_response(response, "openai")
    assert usage == Usage(
        input_tokens=2006, cache_read_tokens=1920, output_tokens=300, service_tier="flex"
    )
    assert (served, anomalies) == ("gpt-4o-2024-08-06", ())


def test_then_the_stream_then_additional_kwargs_then_the_message() -> None:
    streamed = {"prompt_tokens": 7, "completion_tokens": 2}
    usage, _, _ = from_llamaindex_response(_li_response(), "openai", streamed, streamed)
    assert usage == Usage(input_tokens=7, output_tokens=2)
    kwargs = {"prompt_tokens": 30, "completion_tokens": 5}
    usage, _, _ = from_llamaindex_response(_li_response(raw={"id": "x"}, kwargs=kwargs), None)
    assert usage == Usage(input_tokens=30, output_tokens=5)
    message_kwargs = {"usage": {"input_tokens": 4, "output_tokens": 1}}
    usage, _, _ = from_llamaindex_response(_li_response(message_kwargs=message_kwargs), None)
    assert usage == Usage(input_tokens=4, output_tokens=1)
    # A dict shaped like a response reads the same as an object.
    as_dict = {"raw": {"usage": streamed, "model": "gpt-4o"}, "text": "hello"}
    assert from_llamaindex_response(as_dict, None) == (
        Usage(input_tokens=7, output_tokens=2),
        "gpt-4o",
        (),
    )


def test_a_source_without_tokens_is_skipped_and_its_anomalies_kept() -> None:
    odd = _li_response(raw={"usage": {"prompt_tokens": -3}})
    usage, served, anomalies = from_llamaindex_response(odd, "openai")
    assert (usage, served) == (None, None)
    assert anomalies == ("prompt_tokens: negative -3 treated as 0",)
    odd_then_good = _li_response(
        raw={"usage": {"prompt_tokens": -3}}, kwargs={"prompt_tokens": 9, "completion_tokens": 1}
    )
    usage, _, _ = from_llamaindex_response(odd_then_good, "openai")
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (9, 1)
    assert usage.anomalies == ("prompt_tokens: negative -3 treated as 0",)
    assert from_llamaindex_response(_li_response(), None) == (None, None, ())


def test_anthropic_usage_without_cache_counts_is_flagged() -> None:
    final = _li_response(raw={"type": "message_delta", "usage": {"input_tokens": 10,
                                                                "output_tokens": 7}})  # fmt: skip
    usage, _, _ = from_llamaindex_response(final, "anthropic")
    assert usage == Usage(input_tokens=10, output_tokens=7, anomalies=(NO_ANTHROPIC_CACHE_COUNTS,))
    # With the provider known, Anthropic's input_tokens is read as excluding the cache.
    cached = _li_response(raw={"usage": ANTHROPIC_TTL_SPLIT, "model": "claude-x"})
    usage, served, _ = from_llamaindex_response(cached, "anthropic")
    assert usage == from_anthropic(ANTHROPIC_TTL_SPLIT)
    assert served == "claude-x"
