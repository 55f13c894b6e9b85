"""Model ids callers actually send, each priced exactly (issue #22).

Every expected cost is worked out by hand, in the comment beside it, from the per-1M
prices of the row the id must resolve to (curated `prices.json` or the base layer).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from modelforge.pricing.cost import price
from modelforge.pricing.resolve import parse_model_id, resolve
from modelforge.pricing.update import update_models_dev
from modelforge.usage import Usage

PLAIN = Usage(input_tokens=1000, output_tokens=100)


def _check(model: str, usage: Usage, entry: str, total: str, source: str | None = None) -> None:
    cost = price(model, usage)
    assert cost.catalog_model == entry, model
    assert cost.total == Decimal(total), model
    if source is not None:
        assert cost.source == source, model


# --- older models still in use ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "entry", "total", "source"),
    [
        # 1000 × 30 + 100 × 60 = 36,000 per 1M
        ("gpt-4-0613", "openai/gpt-4-0613", "0.036", "curated:2026-11-22"),
        # 1000 × 0.5 + 100 × 1.5 = 650 per 1M (OpenAI's row, not Azure's in the base layer)
        ("gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo-0125", "0.00065", "curated:2026-11-22"),
        # 1000 × 15 + 100 × 75 = 22,500 per 1M
        (
            "claude-3-opus-20240229",
            "anthropic/claude-3-opus-20240229",
            "0.0225",
            "models.dev:2026-07",
        ),
        # 1000 × 3 + 100 × 15 = 4,500 per 1M, both Claude 3.5 Sonnet versions
        (
            "claude-3-5-sonnet-20240620",
            "anthropic/claude-3-5-sonnet-20240620",
            "0.0045",
            "models.dev:2026-07",
        ),
        (
            "claude-3-5-sonnet-20241022",
            "anthropic/claude-3-5-sonnet-20241022",
            "0.0045",
            "models.dev:2026-07",
        ),
        # The alias Anthropic documents for the newer version.
        (
            "claude-3-5-sonnet-latest",
            "anthropic/claude-3-5-sonnet-20241022",
            "0.0045",
            "models.dev:2026-07",
        ),
        ("claude-3-opus-latest", "anthropic/claude-3-opus-20240229", "0.0225", None),
    ],
)
def test_older_models(model: str, entry: str, total: str, source: str | None) -> None:
    _check(model, PLAIN, entry, total, source)


def test_claude_3_opus_with_cache() -> None:
    usage = Usage(
        input_tokens=1000, cache_read_tokens=200, cache_write_tokens=100, output_tokens=100
    )
    # base row: input 15, read 1.5, write 18.75, output 75
    # 700 × 15 = 10,500; 200 × 1.5 = 300; 100 × 18.75 = 1,875; 100 × 75 = 7,500 → 20,175
    _check("claude-3-opus-20240229", usage, "anthropic/claude-3-opus-20240229", "0.020175")


# --- Bedrock and Vertex ids of those models --------------------------------------------


@pytest.mark.parametrize(
    ("model", "entry", "total"),
    [
        # Bedrock rows at Anthropic's list price: 1000 × 15 + 100 × 75 = 22,500
        (
            "anthropic.claude-3-opus-20240229-v1:0",
            "amazon-bedrock/anthropic.claude-3-opus-20240229-v1:0",
            "0.0225",
        ),
        # 1000 × 3 + 100 × 15 = 4,500
        (
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "amazon-bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
            "0.0045",
        ),
        (
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "amazon-bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0",
            "0.0045",
        ),
        # A cross-region profile the table does not list is its base id.
        (
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
            "amazon-bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0",
            "0.0045",
        ),
        (
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
            "amazon-bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
            "0.0045",
        ),
        # Vertex rows, same prices
        ("claude-3-opus@20240229", "google-vertex/claude-3-opus@20240229", "0.0225"),
        ("claude-3-5-sonnet@20240620", "google-vertex/claude-3-5-sonnet@20240620", "0.0045"),
        (
            "claude-3-5-sonnet-v2@20241022",
            "google-vertex/claude-3-5-sonnet-v2@20241022",
            "0.0045",
        ),
        (
            "vertex_ai/claude-3-5-sonnet-v2@20241022",
            "google-vertex/claude-3-5-sonnet-v2@20241022",
            "0.0045",
        ),
    ],
)
def test_bedrock_and_vertex_ids(model: str, entry: str, total: str) -> None:
    _check(model, PLAIN, entry, total, None)


# --- Gemini 2.0 Flash and xAI Grok 3 ---------------------------------------------------


def test_gemini_2_0_flash_and_lite() -> None:
    cached = Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=100)
    # input 0.1, cache read 0.025, output 0.4: 800 × 0.1 = 80; 200 × 0.025 = 5;
    # 100 × 0.4 = 40 → 125 per 1M
    _check("gemini-2.0-flash", cached, "google/gemini-2.0-flash", "0.000125", "models.dev:2026-07")
    # The version id Gemini reports is an alias of the model.
    _check("gemini-2.0-flash-001", cached, "google/gemini-2.0-flash", "0.000125")
    # input 0.075, output 0.3: 1000 × 0.075 + 100 × 0.3 = 75 + 30 = 105 per 1M
    _check("gemini-2.0-flash-lite", PLAIN, "google/gemini-2.0-flash-lite", "0.000105")
    _check("gemini/gemini-2.0-flash-lite-001", PLAIN, "google/gemini-2.0-flash-lite", "0.000105")


def test_grok_3_and_grok_3_mini() -> None:
    cached = Usage(input_tokens=1000, cache_read_tokens=500, output_tokens=100)
    # input 3, cached 0.75, output 15: 500 × 3 + 500 × 0.75 + 100 × 15 = 1,500 + 375 +
    # 1,500 = 3,375 per 1M. xAI's own row, not Helicone's in the base layer.
    _check("grok-3", cached, "xai/grok-3", "0.003375", "curated:2026-11-22")
    _check("xai/grok-3-beta", cached, "xai/grok-3", "0.003375")
    # input 0.3, output 0.5: 1000 × 0.3 + 100 × 0.5 = 350 per 1M
    _check("grok-3-mini", PLAIN, "xai/grok-3-mini", "0.00035")
    _check("grok-3-mini-latest", PLAIN, "xai/grok-3-mini", "0.00035")


# --- OpenAI fine-tunes -----------------------------------------------------------------


def test_fine_tuned_gpt_4o_mini_is_not_the_base_price() -> None:
    usage = Usage(input_tokens=1000, cache_read_tokens=400, output_tokens=100)
    cost = price("ft:gpt-4o-mini-2024-07-18:my-org::9abc123", usage)
    # fine-tuned: input 0.30, cached 0.15, output 1.20
    # 600 × 0.3 = 180; 400 × 0.15 = 60; 100 × 1.2 = 120 → 360 per 1M
    assert cost.catalog_model == "openai/ft:gpt-4o-mini-2024-07-18"
    assert cost.total == Decimal("0.00036")
    # the base model would be 600 × 0.15 + 400 × 0.075 + 100 × 0.6 = 180 per 1M
    assert price("gpt-4o-mini-2024-07-18", usage).total == Decimal("0.00018")


@pytest.mark.parametrize(
    ("model", "total"),
    [
        ("ft:gpt-4o-2024-08-06:org:support-bot:A1b2C3", "0.00525"),  # 1000×3.75 + 100×15
        ("ft:gpt-4.1-2025-04-14:org::x", "0.0042"),  # 1000 × 3 + 100 × 12
        ("ft:gpt-4.1-mini-2025-04-14:org::x", "0.00112"),  # 1000 × 0.8 + 100 × 3.2
        ("ft:gpt-4.1-nano-2025-04-14:org::x", "0.00028"),  # 1000 × 0.2 + 100 × 0.8
        ("ft:o4-mini-2025-04-16:org::x", "0.0056"),  # 1000 × 4 + 100 × 16
        ("ft:gpt-3.5-turbo-0125:org::x", "0.0036"),  # 1000 × 3 + 100 × 6
        ("ft:gpt-3.5-turbo-1106:org::x", "0.0036"),
        ("ft:gpt-3.5-turbo-0613:org::x", "0.0036"),
        ("ft:davinci-002:org::x", "0.0132"),  # 1000 × 12 + 100 × 12
        ("ft:babbage-002:org::x", "0.00176"),  # 1000 × 1.6 + 100 × 1.6
        ("openai/ft:gpt-4o-2024-08-06:org::x", "0.00525"),
    ],
)
def test_every_fine_tunable_base_model(model: str, total: str) -> None:
    cost = price(model, PLAIN)
    assert cost.catalog_model is not None and cost.catalog_model.startswith("openai/ft:")
    assert cost.total == Decimal(total)


def test_cached_input_of_every_fine_tune_with_one() -> None:
    usage = Usage(input_tokens=1000, cache_read_tokens=1000)
    # all input cached: 1000 × the cached price
    for model, total in [
        ("ft:gpt-4.1-2025-04-14:o::x", "0.00075"),  # × 0.75
        ("ft:gpt-4.1-mini-2025-04-14:o::x", "0.0002"),  # × 0.20
        ("ft:gpt-4.1-nano-2025-04-14:o::x", "0.00005"),  # × 0.05
        ("ft:gpt-4o-2024-08-06:o::x", "0.001875"),  # × 1.875
        ("ft:gpt-4o-mini-2024-07-18:o::x", "0.00015"),  # × 0.15
        ("ft:o4-mini-2025-04-16:o::x", "0.001"),  # × 1.00
    ]:
        cost = price(model, usage)
        assert (cost.total, cost.flags) == (Decimal(total), ()), model


def test_a_fine_tune_of_an_unlisted_base_is_unpriced_not_the_base_price() -> None:
    cost = price("ft:gpt-4o-2024-11-20:org::x", PLAIN)
    assert (cost.priced, cost.flags) == (False, ("unknown_model",))


# --- router ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "entry", "total"),
    [
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini", "0.00021"),  # 1000×0.15 + 100×0.6
        ("anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5", "0.0045"),  # 3000+1500
        ("google/gemini-2.5-pro", "google/gemini-2.5-pro", "0.00225"),  # 1250 + 1000
        ("gemini/gemini-2.5-pro", "google/gemini-2.5-pro", "0.00225"),
        ("vertex_ai/gemini-2.5-pro", "google-vertex/gemini-2.5-pro", "0.00225"),
        (
            "bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0",
            "amazon-bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0",
            "0.0045",
        ),
        ("azure/gpt-4o", "azure/gpt-4o", "0.0035"),  # 1000 × 2.5 + 100 × 10
        ("groq/llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile", "0.000669"),  # 590+79
        ("xai/grok-3", "xai/grok-3", "0.0045"),  # 1000 × 3 + 100 × 15
        ("mistral/mistral-large-latest", "mistral/mistral-large-latest", "0.00065"),  # 500+150
        ("deepseek/deepseek-chat", "deepseek/deepseek-chat", "0.000168"),  # 140 + 28
        # Together's own price for it: 1000 × 0.88 + 100 × 0.88 = 968
        (
            "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "togetherai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "0.000968",
        ),
        # OpenRouter's price where it lists the model: 1000 × 0.03 + 100 × 0.15 = 45
        ("openrouter/openai/gpt-oss-120b", "openrouter/openai/gpt-oss-120b", "0.000045"),
        (
            "openrouter/anthropic/claude-sonnet-4.5",
            "openrouter/anthropic/claude-sonnet-4.5",
            "0.0045",
        ),
        # Where it does not, the id after `openrouter/`: OpenAI's gpt-4-0613, 30,000 + 6,000
        ("openrouter/openai/gpt-4-0613", "openai/gpt-4-0613", "0.036"),
    ],
)
def test_router_prefixes(model: str, entry: str, total: str) -> None:
    _check(model, PLAIN, entry, total)


def test_a_prefix_that_names_a_provider_wins_over_any_guess() -> None:
    # gpt-oss-120b is listed by some 20 providers at prices from 0.03 to 2.92.
    # Together: 1000 × 0.15 + 100 × 0.6 = 210; OpenRouter: 1000 × 0.03 + 100 × 0.15 = 45
    _check("together_ai/openai/gpt-oss-120b", PLAIN, "togetherai/openai/gpt-oss-120b", "0.00021")
    _check("openrouter/openai/gpt-oss-120b", PLAIN, "openrouter/openai/gpt-oss-120b", "0.000045")
    # Unprefixed, OpenAI (its maker) does not list it, so the curated Groq row: 210
    _check("openai/gpt-oss-120b", PLAIN, "groq/openai/gpt-oss-120b", "0.00021")
    # A reseller listing the exact prefixed id does not beat the provider it names.
    _check("anthropic/claude-sonnet-4.5", PLAIN, "anthropic/claude-sonnet-4-5", "0.0045")


def test_nothing_but_resellers_go_alphabetically() -> None:
    # No maker, no preferred provider: deepinfra before togetherai.
    # deepinfra: 1000 × 0.1 + 100 × 0.32 = 132 per 1M
    _check(
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        PLAIN,
        "deepinfra/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "0.000132",
    )


def test_first_party_wins_after_prices_update(models_dev_path: Path) -> None:
    result = update_models_dev(models_dev_path.as_uri())
    assert result.models > 4800
    fetched = f"fetched:{result.fetched_at[:10]}"
    # The full models.dev catalog lists `claude-sonnet-4.5` only under github-copilot and
    # `anthropic/claude-sonnet-4.5` under six resellers; Anthropic lists `claude-sonnet-4-5`.
    for model in ("anthropic/claude-sonnet-4.5", "claude-sonnet-4.5", "claude-sonnet-4-5"):
        # fetched row: 1000 × 3 + 100 × 15 = 4,500 per 1M
        _check(model, PLAIN, "anthropic/claude-sonnet-4-5", "0.0045", fetched)
    # gpt-4o is listed by seven providers; OpenAI makes it. 2,500 + 1,000
    _check("gpt-4o", PLAIN, "openai/gpt-4o", "0.0035", fetched)
    # A fine-tune still has its curated row below the fetched catalog.
    _check("ft:gpt-4o-2024-08-06:org::x", PLAIN, "openai/ft:gpt-4o-2024-08-06", "0.00525")


def test_resolution_is_the_same_every_time() -> None:
    models = ["openai/gpt-oss-120b", "claude-sonnet-4.5", "meta-llama/llama-3.3-70b-instruct-turbo"]
    first = [resolve(m) for m in models]
    from modelforge.pricing.catalog import set_catalog

    set_catalog(None)
    again = [resolve(m) for m in models]
    assert [e.key if e else None for e in first] == [e.key if e else None for e in again]


def test_parse_model_id() -> None:
    parsed = parse_model_id("openrouter/openai/gpt-4o-mini-2024-07-18")
    assert parsed.providers == ("openrouter", "openai")
    assert parsed.forms == (
        "gpt-4o-mini-2024-07-18",
        "openai/gpt-4o-mini-2024-07-18",
        "openrouter/openai/gpt-4o-mini-2024-07-18",
    )
    assert parsed.fallbacks == ("gpt-4o-mini",)
    bedrock = parse_model_id("us.anthropic.claude-3-5-sonnet-20241022-v2:0")
    assert bedrock.providers == ("amazon-bedrock",)
    assert bedrock.forms[-1] == "claude-3-5-sonnet-20241022"
    tuned = parse_model_id("ft:gpt-4o-mini-2024-07-18:org:name:id")
    assert tuned.forms == ("ft:gpt-4o-mini-2024-07-18:org:name:id", "ft:gpt-4o-mini-2024-07-18")
    assert tuned.fallbacks == ()


# --- long-context tiers ------------------------------------------------------------------


def test_sonnet_45_above_200k_is_priced_at_the_long_context_tier() -> None:
    usage = Usage(input_tokens=300_000, output_tokens=1_000)
    cost = price("claude-sonnet-4-5", usage)
    # the whole call at 6 / 22.50: 300,000 × 6 + 1,000 × 22.5 = 1,822,500 per 1M
    # (not 300,000 × 3 + 1,000 × 15 = $0.915)
    assert cost.total == Decimal("1.8225")
    assert cost.flags == ("context_tier>200000",)


@pytest.mark.parametrize(
    "model",
    [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
        "claude-sonnet-4-5@20250929",
        "claude-sonnet-4@20250514",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-sonnet-4-20250514-v1:0",
    ],
)
def test_sonnet_4_and_45_cache_prices_scale_with_the_tier(model: str) -> None:
    usage = Usage(
        input_tokens=300_000,
        cache_read_tokens=100_000,
        cache_write_tokens=20_000,
        cache_write_1h_tokens=10_000,
        output_tokens=1_000,
    )
    cost = price(model, usage)
    # tier: input 6, read 0.60, 5m write 7.50, 1h write 12, output 22.50
    # 170,000 × 6 = 1,020,000; 100,000 × 0.6 = 60,000; 20,000 × 7.5 = 150,000;
    # 10,000 × 12 = 120,000; 1,000 × 22.5 = 22,500 → 1,372,500 per 1M
    assert cost.total == Decimal("1.3725"), model
    assert cost.flags == ("context_tier>200000",)


def test_sonnet_45_tier_on_regional_bedrock_and_in_batch() -> None:
    usage = Usage(input_tokens=300_000, output_tokens=1_000)
    regional = price("us.anthropic.claude-sonnet-4-5-20250929-v1:0", usage)
    # 10% regional premium: 300,000 × 6.6 + 1,000 × 24.75 = 2,004,750 per 1M
    assert regional.total == Decimal("2.00475")
    batch = price("claude-sonnet-4-5", usage.model_copy(update={"service_tier": "batch"}))
    # batch tier: 300,000 × 3 + 1,000 × 11.25 = 911,250 per 1M
    assert batch.total == Decimal("0.91125")
    assert batch.flags == ("service_tier:batch", "context_tier>200000")
    at_limit = price("claude-sonnet-4-5", Usage(input_tokens=200_000, output_tokens=1_000))
    # exactly 200K is not above it: 200,000 × 3 + 1,000 × 15 = 615,000 per 1M
    assert (at_limit.total, at_limit.flags) == (Decimal("0.615"), ())


def test_gemini_25_pro_above_200k_as_before() -> None:
    cost = price("gemini-2.5-pro", Usage(input_tokens=250_000, output_tokens=2_000))
    # 250,000 × 2.5 + 2,000 × 15 = 655,000 per 1M
    assert cost.total == Decimal("0.655")
    assert cost.flags == ("context_tier>200000",)
