"""Counting a prompt before the call: OpenAI's published worked examples, the framing
as a property, images, the context window, prices, online counts against the wire
server, and the labelled fallback when no encoding is on disk."""

from __future__ import annotations

import base64
import json
import math
import struct
import subprocess
import sys
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from encodings_on_disk import needs_encodings
from modelforge import (
    ContextWindowExceededError,
    TokenCount,
    UnsupportedMessageError,
    check_context,
    count_tokens,
    estimate_cost,
    tokens,
)
from modelforge.cli import cli
from modelforge.images import image_size, openai_tiles, size_of
from modelforge.pricing.catalog import Catalog, CatalogEntry, Prices, set_catalog
from modelforge.wire import Reply, WireServer

# OpenAI cookbook, "How to count tokens with tiktoken", section 6: the example messages
# and the prompt tokens the API reported for them.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]
COOKBOOK_PROMPT_TOKENS = {"gpt-3.5-turbo": 129, "gpt-4": 129, "gpt-4o": 124, "gpt-4o-mini": 124}

# Section 7: the example tool and messages, and the prompt tokens the API reported.
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]
COOKBOOK_TOOL_PROMPT_TOKENS = {
    "gpt-3.5-turbo": 105,
    "gpt-4": 105,
    "gpt-4o": 101,
    "gpt-4o-mini": 101,
}


def _encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


# --------------------------------------------------------------------------- OpenAI


@needs_encodings
@pytest.mark.parametrize("model", sorted(COOKBOOK_PROMPT_TOKENS))
def test_cookbook_messages_give_the_published_prompt_tokens(model: str) -> None:
    count = count_tokens(model, COOKBOOK_MESSAGES)
    encoding = "cl100k_base" if model in ("gpt-3.5-turbo", "gpt-4") else "o200k_base"
    assert count == TokenCount(COOKBOOK_PROMPT_TOKENS[model], "exact", encoding)


@needs_encodings
@pytest.mark.parametrize("model", sorted(COOKBOOK_TOOL_PROMPT_TOKENS))
def test_cookbook_tools_give_the_published_prompt_tokens(model: str) -> None:
    count = count_tokens(model, WEATHER_MESSAGES, tools=COOKBOOK_TOOLS)
    assert (count.tokens, count.method) == (COOKBOOK_TOOL_PROMPT_TOKENS[model], "exact")


@needs_encodings
def test_dated_snapshots_and_prefixes_count_like_their_family() -> None:
    for model in ("gpt-4o-2024-08-06", "openai/gpt-4o", "gpt-4-0613"):
        count = count_tokens(model, COOKBOOK_MESSAGES)
        expected = 129 if model == "gpt-4-0613" else 124
        assert (count.tokens, count.method) == (expected, "exact"), model


@needs_encodings
def test_openai_models_without_a_worked_example_are_labelled_estimates() -> None:
    for model in ("gpt-4.1", "o3", "gpt-5"):
        count = count_tokens(model, COOKBOOK_MESSAGES)
        assert (count.tokens, count.method, count.encoding) == (124, "estimate", "o200k_base")
        assert count.notes == (f"OpenAI publishes no worked example for {model}: gpt-4o's rules",)


@needs_encodings
def test_other_providers_are_o200k_estimates_with_a_note() -> None:
    for model in ("claude-sonnet-4-5", "gemini-2.5-flash", "mistral-large-latest"):
        count = count_tokens(model, COOKBOOK_MESSAGES)
        assert (count.tokens, count.method, count.encoding) == (124, "estimate", "o200k_base")
        assert count.notes == (f"no public tokenizer for {model}: counted with o200k_base",)


@needs_encodings
def test_anthropic_tools_add_the_published_tool_use_system_prompt() -> None:
    without = count_tokens("claude-sonnet-4-5", WEATHER_MESSAGES).tokens
    with_tools = count_tokens("claude-sonnet-4-5", WEATHER_MESSAGES, tools=COOKBOOK_TOOLS).tokens
    function = json.dumps(COOKBOOK_TOOLS[0]["function"], ensure_ascii=False)
    # The definition as JSON, in o200k tokens, + 346 for Claude's tool-use system prompt.
    assert with_tools - without == len(_encoding("o200k_base").encode(function)) + 346


def test_a_string_is_one_user_message() -> None:
    assert count_tokens("gpt-4o", "hi") == count_tokens(
        "gpt-4o", [{"role": "user", "content": "hi"}]
    )


def test_messages_in_no_known_shape_are_a_named_error() -> None:
    with pytest.raises(UnsupportedMessageError, match="cannot count a int"):
        count_tokens("gpt-4o", [42])
    with pytest.raises(UnsupportedMessageError, match="'role'"):
        count_tokens("gpt-4o", [{"content": "no role"}])


# --------------------------------------------------------------------------- frameworks


@needs_encodings
def test_langchain_and_llamaindex_messages_count_like_the_dicts() -> None:
    lc = pytest.importorskip("langchain_core.messages")
    li = pytest.importorskip("llama_index.core.llms")
    langchain = [
        lc.SystemMessage(content=m["content"], name=m.get("name"))
        if m["role"] == "system"
        else lc.HumanMessage(content=m["content"])
        for m in COOKBOOK_MESSAGES
    ]
    llamaindex = [
        li.ChatMessage(
            role=m["role"],
            content=m["content"],
            additional_kwargs={"name": m["name"]} if "name" in m else {},
        )
        for m in COOKBOOK_MESSAGES
    ]
    for model, expected in COOKBOOK_PROMPT_TOKENS.items():
        assert count_tokens(model, langchain).tokens == expected
        assert count_tokens(model, llamaindex).tokens == expected


@needs_encodings
def test_tool_calls_and_results_count_in_every_shape() -> None:
    lc = pytest.importorskip("langchain_core.messages")
    li = pytest.importorskip("llama_index.core.base.llms.types")
    args = {"location": "Paris, France"}
    as_dicts = [
        *WEATHER_MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": json.dumps(args)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
    ]
    as_langchain = [
        *WEATHER_MESSAGES,
        lc.AIMessage(
            content="", tool_calls=[{"name": "get_current_weather", "args": args, "id": "call_1"}]
        ),
        lc.ToolMessage(content="22 C and sunny", tool_call_id="call_1"),
    ]
    as_llamaindex = [
        *WEATHER_MESSAGES,
        li.ChatMessage(
            role="assistant",
            blocks=[
                li.ToolCallBlock(
                    tool_call_id="call_1", tool_name="get_current_weather", tool_kwargs=args
                )
            ],
        ),
        li.ChatMessage(
            role="tool", content="22 C and sunny", additional_kwargs={"tool_call_id": "call_1"}
        ),
    ]
    o200k = _encoding("o200k_base")

    def n(text: str) -> int:
        return len(o200k.encode(text))

    # Each message: 3 + its role; the call adds its name and JSON arguments, the result
    # its content. The tool_call_id is not prompt text.
    added = (3 + n("assistant") + n("get_current_weather") + n(json.dumps(args))) + (
        3 + n("tool") + n("22 C and sunny")
    )
    for messages in (as_dicts, as_langchain, as_llamaindex):
        count = count_tokens("gpt-4o", messages, tools=COOKBOOK_TOOLS)
        # The cookbook's 101 for its two messages and the tool, + the two new messages.
        assert count.tokens == 101 + added
        assert count.method == "estimate"
        assert count.notes == (
            "tool calls in messages: OpenAI publishes no rule for their framing",
            "tool results: OpenAI publishes no rule for their framing",
        )


@needs_encodings
def test_framework_tools_count_like_their_openai_definition() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.tools import tool

    @tool
    def get_current_weather(location: str) -> str:
        """Get the current weather in a given location"""
        return location

    definition = {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
    assert count_tokens("gpt-4o", WEATHER_MESSAGES, tools=[get_current_weather]) == count_tokens(
        "gpt-4o", WEATHER_MESSAGES, tools=[definition]
    )
    function_tool = pytest.importorskip("llama_index.core.tools").FunctionTool
    llamaindex_tool = function_tool.from_defaults(fn=get_current_weather.func)
    # LlamaIndex writes its own description; count what it would send.
    sent = llamaindex_tool.metadata.to_openai_tool()
    assert count_tokens("gpt-4o", WEATHER_MESSAGES, tools=[llamaindex_tool]) == count_tokens(
        "gpt-4o", WEATHER_MESSAGES, tools=[sent]
    )


@needs_encodings
def test_nested_and_undescribed_tool_parameters_are_counted_and_labelled() -> None:
    nested = {
        "name": "book",
        "description": "Book a trip.",
        "parameters": {
            "type": "object",
            "properties": {
                "when": {
                    "type": "object",
                    "description": "Dates",
                    "properties": {"start": {"type": "string", "description": "First day"}},
                },
                "class": {"type": "string", "enum": ["economy", "business"]},
            },
        },
    }
    o200k = _encoding("o200k_base")

    def n(text: str) -> int:
        return len(o200k.encode(text))

    count = count_tokens("gpt-4o", [], tools=[nested])
    # func_init 7 + "book:Book a trip" (trailing dot dropped) + prop_init 3
    #   + when: prop_key 3 + "when:object:Dates" + nested prop_init 3
    #       + start: prop_key 3 + "start:string:First day"
    #   + class: prop_key 3 + "class:string:" + enum_init -3 + 2 × enum_item 3 + items
    # + func_end 12
    expected = (
        7 + n("book:Book a trip") + 3
        + 3 + n("when:object:Dates") + 3 + 3 + n("start:string:First day")
        + 3 + n("class:string:") - 3 + 3 + n("economy") + 3 + n("business")
        + 12
    )  # fmt: skip
    assert count.tokens == expected
    assert count.method == "estimate"
    assert "nested tool parameters: the published rule, applied again" in count.notes
    assert "a tool parameter without a type or description" in count.notes


# --------------------------------------------------------------------------- property

_roles = st.sampled_from(["system", "user", "assistant", "developer"])
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": _roles, "content": _text},
        optional={"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
    ),
    max_size=6,
)


@needs_encodings
@settings(max_examples=60, deadline=None)
@given(messages=_messages, model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5"]))
def test_a_list_counts_as_the_sum_of_its_messages_plus_the_framing(
    messages: list[dict[str, str]], model: str
) -> None:
    encoding = _encoding(tokens.encoding_name_for(model))

    def n(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    def alone(message: dict[str, str]) -> int:
        # The documented framing: 3 per message, its role and content, a name costs 1
        # more than its text, and the reply priming of 3 that every prompt ends with.
        named = n(message["name"]) + 1 if "name" in message else 0
        return 3 + n(message["role"]) + n(message["content"]) + named + 3

    for message in messages:
        assert count_tokens(model, [message]).tokens == alone(message)
    whole = count_tokens(model, messages).tokens
    if messages:
        assert whole == sum(alone(m) - 3 for m in messages) + 3
    else:
        assert whole == 0


# --------------------------------------------------------------------------- images


def _png(width: int, height: int) -> str:
    """A data: URL of a PNG header: enough to be measured, as a provider would."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data = b"\x89PNG\r\n\x1a\n" + chunk
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _image_tokens(model: str, url: str, detail: str | None) -> TokenCount:
    image: dict[str, str] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    with_image = [
        {"role": "user", "content": [{"type": "text", "text": "Describe it."},
                                     {"type": "image_url", "image_url": image}]},
    ]  # fmt: skip
    without = count_tokens(model, [{"role": "user", "content": "Describe it."}])
    counted = count_tokens(model, with_image)
    return TokenCount(
        counted.tokens - without.tokens, counted.method, counted.encoding, counted.notes
    )


@needs_encodings
def test_openai_image_worked_examples() -> None:
    # OpenAI, "Images and vision: calculating costs": 1024×1024 high → 4 tiles → 170 × 4
    # + 85 = 765; 2048×4096 high → 768×1536 → 6 tiles → 1105; low is 85 at any size.
    for (width, height), detail, expected in (
        ((1024, 1024), "high", 765),
        ((2048, 4096), "high", 1105),
        ((4096, 8192), "low", 85),
    ):
        count = _image_tokens("gpt-4o", _png(width, height), detail)
        assert (count.tokens, count.method) == (expected, "exact"), (width, height)


@needs_encodings
def test_gpt_4o_mini_images_use_its_own_base_and_tile() -> None:
    # 2,833 base + 5,667 per tile: 1024×1024 at high detail is 4 tiles.
    assert _image_tokens("gpt-4o-mini", _png(1024, 1024), "high").tokens == 2833 + 4 * 5667


@needs_encodings
def test_images_of_unknown_size_or_auto_detail_are_upper_bound_estimates() -> None:
    remote = _image_tokens("gpt-4o", "https://example.com/cat.png", "high")
    # 768×2048 is the largest the rule allows: 2 × 4 tiles.
    assert (remote.tokens, remote.method) == (85 + 8 * 170, "estimate")
    assert "image size unknown (not a data: URL): the tile rule's maximum" in remote.notes
    auto = _image_tokens("gpt-4o", _png(512, 512), None)
    assert (auto.tokens, auto.method) == (85 + 170, "estimate")
    assert auto.notes == ("image detail 'auto' counted as 'high'",)
    low = _image_tokens("gpt-4o", "https://example.com/cat.png", "low")
    assert (low.tokens, low.method) == (85, "exact")


@needs_encodings
def test_claude_and_gemini_images_follow_their_providers_rules() -> None:
    # Anthropic: width × height / 750 = 200 × 300 / 750 = 80; capped near 1,600.
    assert _image_tokens("claude-sonnet-4-5", _png(200, 300), None).tokens == 80
    assert _image_tokens("claude-sonnet-4-5", _png(4000, 4000), None).tokens == 1600
    # Gemini: 258 when both sides ≤ 384, else 258 per 768 px tile: 1000×500 is 2 × 1.
    assert _image_tokens("gemini-2.5-flash", _png(300, 384), None).tokens == 258
    assert _image_tokens("gemini-2.5-flash", _png(1000, 500), None).tokens == 2 * 258


def test_image_sizes_are_read_from_png_gif_webp_and_jpeg_headers() -> None:
    assert image_size(_png(640, 480)) == (640, 480)
    assert size_of(b"GIF89a" + struct.pack("<HH", 31, 7) + b"\0" * 8) == (31, 7)
    vp8x = (
        b"RIFF\0\0\0\0WEBPVP8X"
        + b"\0" * 8
        + (99).to_bytes(3, "little")
        + (49).to_bytes(3, "little")
    )
    assert size_of(vp8x) == (100, 50)
    assert image_size("https://example.com/x.png") is None
    assert size_of(b"not an image") is None
    pil = pytest.importorskip("PIL.Image")
    import io

    buffer = io.BytesIO()
    pil.new("RGB", (123, 45)).save(buffer, "JPEG")
    assert size_of(buffer.getvalue()) == (123, 45)
    buffer = io.BytesIO()
    pil.new("RGB", (77, 33)).save(buffer, "WEBP")
    assert size_of(buffer.getvalue()) == (77, 33)


def test_openai_tiles_only_ever_scale_down() -> None:
    assert openai_tiles(512, 512) == 1
    assert openai_tiles(100, 3000) == math.ceil(100 * 2048 / 3000 / 512) * 4  # fit 2048 first


# --------------------------------------------------------------------------- context


def _catalog(**limits: int | None) -> Catalog:
    return Catalog(
        [
            CatalogEntry(
                provider="openai",
                model_id="gpt-4o",
                name="GPT-4o",
                family="gpt",
                prices=Prices(input=Decimal("2.50"), output=Decimal("10")),
                context_limit=limits.get("context"),
                output_limit=limits.get("output"),
                source="test",
            )
        ]
    )


@needs_encodings
def test_the_context_window_fits_exactly_at_the_limit() -> None:
    # The cookbook messages are 124 tokens on gpt-4o; its window is 128,000.
    at_limit = check_context("gpt-4o", COOKBOOK_MESSAGES, max_output_tokens=128_000 - 124)
    assert (at_limit.used, at_limit.limit, at_limit.fits) == (124, 128_000, True)
    assert at_limit.utilization == 124 / 128_000
    at_limit.raise_if_exceeded()

    over = check_context("gpt-4o", COOKBOOK_MESSAGES, max_output_tokens=128_000 - 123)
    assert over.fits is False
    with pytest.raises(ContextWindowExceededError) as raised:
        over.raise_if_exceeded()
    assert (raised.value.used, raised.value.limit, raised.value.model) == (124, 128_000, "gpt-4o")
    assert str(raised.value) == (
        "gpt-4o: 124 prompt tokens + 127,877 max output tokens exceed its context window "
        "of 128,000 tokens"
    )


def test_limits_come_from_the_catalog_and_unknown_stays_none() -> None:
    set_catalog(_catalog(context=50, output=20))
    check = check_context("gpt-4o", "a" * 400, max_output_tokens=10)
    assert (check.limit, check.output_limit, check.catalog_model) == (50, 20, "openai/gpt-4o")
    assert check.fits is (check.used + 10 <= 50)

    for unknown in (None, 0):
        set_catalog(_catalog(context=unknown, output=unknown))
        check = check_context("gpt-4o", "hi")
        assert (check.limit, check.output_limit, check.utilization, check.fits) == (
            None,
            None,
            None,
            True,
        )
        check.raise_if_exceeded()  # nothing to exceed

    unpriced = check_context("no-such-model-xyz", "hi")
    assert (unpriced.limit, unpriced.catalog_model, unpriced.fits) == (None, None, True)


def test_max_output_tokens_must_be_a_count() -> None:
    with pytest.raises(tokens.TokenCountError, match="max_output_tokens"):
        check_context("gpt-4o", "hi", max_output_tokens=-1)


# --------------------------------------------------------------------------- cost


@needs_encodings
def test_estimate_cost_prices_the_prompt_and_the_output_range() -> None:
    cost = estimate_cost("gpt-4o", COOKBOOK_MESSAGES, max_output_tokens=800)
    assert (cost.input_tokens, cost.max_output_tokens, cost.catalog_model) == (
        124,
        800,
        "openai/gpt-4o",
    )
    # 124 × $2.50 per 1M = $0.00031; + 800 × $10 per 1M = $0.008 → $0.00831
    assert cost.input_cost == Decimal("0.00031")
    assert cost.max_cost == Decimal("0.00831")


def test_estimate_cost_without_max_output_uses_the_output_limit() -> None:
    set_catalog(_catalog(context=1000, output=100))
    cost = estimate_cost("gpt-4o", "hi")
    assert cost.max_output_tokens == 100
    # the prompt's tokens × 2.50 + 100 × 10, per 1M
    expected = (Decimal("2.50") * cost.input_tokens + Decimal(1000)) / 1_000_000
    assert cost.max_cost == expected
    set_catalog(_catalog(context=1000, output=None))
    assert estimate_cost("gpt-4o", "hi").max_cost is None
    unpriced = estimate_cost("no-such-model-xyz", "hi")
    assert (unpriced.input_cost, unpriced.max_cost) == (None, None)


# --------------------------------------------------------------------------- online

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{"location": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
]


@pytest.fixture
def anthropic_env(wire: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", wire.anthropic_base_url)
    return wire


@pytest.fixture
def gemini_env(wire: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "g-test")
    monkeypatch.setenv("MODELFORGE_GEMINI_BASE_URL", wire.gemini_base_url)
    return wire


def test_online_anthropic_count_is_the_providers(anthropic_env: WireServer) -> None:
    anthropic_env.enqueue(Reply(usage={"input_tokens": 1234}))
    count = count_tokens("claude-sonnet-4-5", TOOL_CONVERSATION, tools=COOKBOOK_TOOLS, online=True)
    assert count == TokenCount(
        1234, "provider", None, ("counted by Anthropic: POST /v1/messages/count_tokens",)
    )

    (request,) = anthropic_env.requests
    assert request["path"] == "/v1/messages/count_tokens"
    assert request["headers"]["x-api-key"] == "sk-test"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["body"] == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_current_weather",
                        "input": {"location": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "22 C"}],
            },
        ],
        "tools": [
            {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "input_schema": COOKBOOK_TOOLS[0]["function"]["parameters"],
            }
        ],
    }


def test_online_anthropic_count_through_the_wire_servers_own_count(
    anthropic_env: WireServer,
) -> None:
    # The wire server counts words + 3 per message: "four words right here" = 4 + 3.
    count = count_tokens("claude-sonnet-4-5", "four words right here", online=True)
    assert (count.tokens, count.method) == (7, "provider")


def test_online_gemini_count_is_the_providers(gemini_env: WireServer) -> None:
    gemini_env.enqueue(Reply(usage={"totalTokens": 321}))
    count = count_tokens("gemini-2.5-flash", TOOL_CONVERSATION, tools=COOKBOOK_TOOLS, online=True)
    assert count == TokenCount(
        321, "provider", None, ("counted by Gemini: models/gemini-2.5-flash:countTokens",)
    )

    (request,) = gemini_env.requests
    assert request["path"] == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert request["headers"]["x-goog-api-key"] == "g-test"
    function = COOKBOOK_TOOLS[0]["function"]
    assert request["body"] == {
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {
                                "name": "get_current_weather",
                                "args": {"location": "Paris"},
                            }
                        }
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "name": "get_current_weather",
                                "response": {"content": "22 C"},
                            }
                        }
                    ],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_current_weather",
                            "description": function["description"],
                            "parameters": function["parameters"],
                        }
                    ]
                }
            ],
        }
    }


def test_online_gemini_count_through_the_wire_servers_own_count(gemini_env: WireServer) -> None:
    # The wire server counts the words of every part: "Be brief." 2 + "How far?" 2.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How far?"}]
    assert count_tokens("gemini-2.5-flash", messages, online=True).tokens == 4


@needs_encodings
def test_a_failed_online_count_falls_back_to_a_labelled_estimate(
    anthropic_env: WireServer,
) -> None:
    anthropic_env.enqueue(Reply(status=529))
    count = count_tokens("claude-sonnet-4-5", COOKBOOK_MESSAGES, online=True)
    assert (count.tokens, count.method) == (124, "estimate")
    assert count.notes[0].startswith("online count failed, counted offline: HTTP 529 from ")
    assert "overloaded_error" in count.notes[0]
    assert "sk-test" not in " ".join(count.notes)


@needs_encodings
def test_online_without_a_key_counts_offline(
    wire: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    count = count_tokens("claude-sonnet-4-5", COOKBOOK_MESSAGES, online=True)
    assert (count.tokens, count.method) == (124, "estimate")
    assert "no online count for claude-sonnet-4-5: no API key, or not its API" in count.notes
    # OpenAI has no counting endpoint, and needs none: its count stays exact.
    assert count_tokens("gpt-4o", COOKBOOK_MESSAGES, online=True).method == "exact"
    assert wire.requests == []


# --------------------------------------------------------------------------- fallback


@pytest.fixture(params=["empty cache dir", "caching disabled"])
def no_encodings(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiktoken reads TIKTOKEN_CACHE_DIR; an empty value turns its cache off.
    empty = str(tmp_path / "tiktoken-cache") if request.param == "empty cache dir" else ""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", empty)
    monkeypatch.setattr(tokens, "_encoders", {})


def test_without_encodings_counts_are_chars_over_4_estimates(no_encodings: None) -> None:
    count = count_tokens("gpt-4o", [{"role": "user", "content": "hello there"}])
    # 3 + "user" ceil(4 / 4) = 1 + "hello there" ceil(11 / 4) = 3 + 3 for the reply
    assert count == TokenCount(
        10, "estimate", "chars/4", ("no tiktoken encoding on disk: 1 token per 4 characters",)
    )
    # Tools, images and the context check still work, labelled.
    check = check_context("gpt-4o", WEATHER_MESSAGES, tools=COOKBOOK_TOOLS)
    assert (check.count.method, check.count.encoding, check.limit) == (
        "estimate",
        "chars/4",
        128_000,
    )


# --------------------------------------------------------------------------- CLI


def test_cli_counts_a_message_file(tmp_path: Path) -> None:
    prompt = tmp_path / "messages.json"
    prompt.write_text(json.dumps(WEATHER_MESSAGES))
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps({"tools": COOKBOOK_TOOLS}))
    result = CliRunner().invoke(
        cli,
        ["tokens", "count", "--model", "gpt-4o", "--tools", str(tools_file), "--json", str(prompt)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = count_tokens("gpt-4o", WEATHER_MESSAGES, tools=COOKBOOK_TOOLS)
    assert (data["tokens"], data["method"], data["encoding"]) == (
        expected.tokens,
        expected.method,
        expected.encoding,
    )
    assert (data["context_limit"], data["catalog_model"]) == (128_000, "openai/gpt-4o")
    # tokens × $2.50 per 1M
    assert Decimal(data["input_cost_usd"]) == Decimal("2.50") * expected.tokens / 1_000_000


@needs_encodings
def test_cli_reads_plain_text_from_stdin() -> None:
    result = CliRunner().invoke(
        cli, ["tokens", "count", "--model", "gpt-4o", "--max-output", "800"], input="hello there\n"
    )
    assert result.exit_code == 0, result.output
    # 3 + "user" 1 + "hello there" 2 + 3 = 9 tokens; 9 × 2.50 = 22.5 per 1M;
    # + 800 × 10 = 8,000 per 1M → $0.0080225, shown to three significant digits
    assert result.output.splitlines() == [
        "gpt-4o: 9 tokens (exact, o200k_base)",
        "context: 9 + 800 output of 128,000 tokens (0.01% used by the prompt); fits",
        "input cost: $0.0000225 at $2.5 per 1M tokens",
        "with 800 output tokens: up to $0.00802",
    ]


def test_cli_rejects_json_that_is_no_prompt(tmp_path: Path) -> None:
    prompt = tmp_path / "odd.json"
    prompt.write_text('{"nothing": 1}')
    result = CliRunner().invoke(cli, ["tokens", "count", "--model", "gpt-4o", str(prompt)])
    assert result.exit_code == 1
    assert result.output == (
        "Error: expected a JSON list of messages, a message, or an object with 'messages'\n"
    )


def test_cli_help_shows_examples() -> None:
    result = CliRunner().invoke(cli, ["tokens", "count", "-h"])
    assert result.exit_code == 0
    assert "modelforge tokens count --model gpt-4o messages.json" in result.output


# --------------------------------------------------------------------------- imports


def test_import_modelforge_and_its_counting_api_pull_in_no_tokenizer_or_framework() -> None:
    code = (
        "import sys, modelforge\n"
        "from modelforge import count_tokens, check_context, estimate_cost, "
        "ContextWindowExceededError\n"
        "print(sorted(m for m in ('tiktoken', 'langchain_core', 'llama_index') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@needs_encodings
def test_the_tokens_page_examples_print_what_they_show() -> None:
    import doctest
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "tokens.md").read_text("utf-8")
    blocks = re.findall(r"^```pycon\n(.*?)^```", page, flags=re.M | re.S)
    assert blocks
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    namespace: dict[str, object] = {}
    for n, body in enumerate(blocks):
        test = doctest.DocTestParser().get_doctest(body, {}, f"tokens.md block {n}", None, 0)
        test.globs = namespace
        runner.run(test, clear_globs=False)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"
