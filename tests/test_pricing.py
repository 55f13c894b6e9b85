"""Pricing rules, id resolution and the catalog layers.

Every expected cost is worked out by hand from the per-1M prices in the table the test
uses (the curated `prices.json` unless the test builds its own), never by our code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from modelforge import config
from modelforge.errors import PriceTableError, UnknownModelError
from modelforge.pricing import catalog
from modelforge.pricing.catalog import Catalog, load_json_text, parse_api_json, set_catalog
from modelforge.pricing.cost import price
from modelforge.usage import Usage, from_anthropic, from_bedrock, from_gemini, from_langchain

M = Decimal(10**6)  # prices are per million tokens
CURATED = Path(catalog.__file__).parent / "data" / "prices.json"


def _curated_as_of(provider: str) -> str:
    return str(json.loads(CURATED.read_text("utf-8"))[provider]["as_of"])


def _use_catalog(data: dict[str, Any]) -> None:
    """Swap in a small models.dev-shaped table, for rules no real row exercises."""
    entries, _ = parse_api_json(data, "test table")
    set_catalog(Catalog(entries))


def _model(cost: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"cost": cost, **extra}


# --- each token class priced once ---------------------------------------------------


def test_gpt4o_plain_call() -> None:
    # gpt-4o: input 2.5, output 10 per 1M. 1000*2.5 + 100*10 = 3500 per 1M.
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    assert cost.total == Decimal("0.0035")
    assert (cost.input, cost.output) == (Decimal("0.0025"), Decimal("0.001"))
    assert cost.priced
    assert cost.catalog_model == "openai/gpt-4o"
    assert cost.flags == ()


def test_cached_input_is_not_double_counted() -> None:
    """800 of 1000 input tokens were cache reads: 200 at input price, 800 at cache price."""
    cost = price("gpt-4o", Usage(input_tokens=1000, cache_read_tokens=800))
    right = (200 * Decimal("2.5") + 800 * Decimal("1.25")) / M  # 0.0015
    double_counted = (1000 * Decimal("2.5") + 800 * Decimal("1.25")) / M  # 0.0035
    assert cost.total == right == Decimal("0.0015")
    assert cost.total != double_counted
    assert (cost.input, cost.cache_read) == (Decimal("0.0005"), Decimal("0.001"))


def test_gpt4o_with_cached_input_from_the_documented_payload() -> None:
    # OpenAI's prompt-caching guide: 2006 prompt tokens, 1920 cached, 300 completion.
    usage = Usage(input_tokens=2006, cache_read_tokens=1920, output_tokens=300)
    cost = price("gpt-4o", usage)
    # 86*2.5 = 215; 1920*1.25 = 2400; 300*10 = 3000 -> 5615 per 1M
    assert cost.total == Decimal("0.005615")
    assert cost.cache_read == Decimal("0.0024")


def test_gpt4o_mini_with_cached_input() -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=2000, output_tokens=500)
    # 8000*0.15 = 1200; 2000*0.075 = 150; 500*0.6 = 300 -> 1650 per 1M
    assert price("gpt-4o-mini", usage).total == Decimal("0.00165")


def test_smallest_amounts_stay_exact() -> None:
    # One token of gpt-4o-mini input: 0.15 / 1M, no float rounding anywhere.
    assert price("gpt-4o-mini", Usage(input_tokens=1)).total == Decimal("0.00000015")


def test_every_token_class_once_and_parts_sum_to_total() -> None:
    _use_catalog(
        {
            "acme": {
                "models": {
                    "omni": _model(
                        {
                            "input": 1,
                            "output": 10,
                            "reasoning": 20,
                            "cache_read": 0.1,
                            "cache_write": 2,
                            "cache_write_1h": 3,
                            "input_audio": 40,
                            "output_audio": 80,
                        }
                    )
                }
            }
        }
    )
    usage = Usage(
        input_tokens=1000,
        cache_read_tokens=100,
        cache_write_tokens=200,
        cache_write_1h_tokens=300,
        input_audio_tokens=50,
        output_tokens=1000,
        reasoning_tokens=400,
        output_audio_tokens=100,
    )
    cost = price("omni", usage)
    # text in 350*1 = 350; reads 100*0.1 = 10; writes 200*2 + 300*3 = 1300;
    # audio 50*40 + 100*80 = 10000; reasoning 400*20 = 8000; text out 500*10 = 5000
    assert cost.input == Decimal("0.00035")
    assert cost.cache_read == Decimal("0.00001")
    assert cost.cache_write == Decimal("0.0013")
    assert cost.audio == Decimal("0.01")
    assert cost.reasoning == Decimal("0.008")
    assert cost.output == Decimal("0.005")
    assert cost.total == Decimal("0.02466")
    parts = cost.input + cost.cache_read + cost.cache_write + cost.output
    assert parts + cost.reasoning + cost.audio == cost.total


# --- reasoning ----------------------------------------------------------------------


def test_gpt5_reasoning_at_output_price() -> None:
    # OpenAI's reasoning guide: 75 input, 1186 output of which 1024 reasoning.
    # gpt-5 has no reasoning price: 75*1.25 = 93.75; 162*10 = 1620; 1024*10 = 10240
    usage = Usage(input_tokens=75, output_tokens=1186, reasoning_tokens=1024)
    cost = price("gpt-5", usage)
    assert cost.reasoning == Decimal("0.01024")
    assert cost.output == Decimal("0.00162")
    assert cost.total == Decimal("0.01195375")


def test_reasoning_at_its_own_price_when_the_table_has_one() -> None:
    _use_catalog(
        {"acme": {"models": {"thinker": _model({"input": 1, "output": 4, "reasoning": 2})}}}
    )
    cost = price("thinker", Usage(input_tokens=1000, output_tokens=1000, reasoning_tokens=600))
    # 1000*1 + 400*4 + 600*2 = 3800 per 1M
    assert cost.reasoning == Decimal("0.0012")
    assert cost.total == Decimal("0.0038")


# --- Anthropic cache writes ---------------------------------------------------------

# platform.claude.com prompt-caching docs, "1-hour cache duration" example.
ANTHROPIC_USAGE = {
    "input_tokens": 2048,
    "cache_read_input_tokens": 1800,
    "cache_creation_input_tokens": 248,
    "output_tokens": 503,
    "cache_creation": {"ephemeral_5m_input_tokens": 456, "ephemeral_1h_input_tokens": 100},
}
# claude-sonnet-4-5: input 3, output 15, cache read 0.3, 5m write 3.75, 1h write 6.
# 2048*3 = 6144; 1800*0.3 = 540; 456*3.75 = 1710; 100*6 = 600; 503*15 = 7545 -> 16539
SONNET_TOTAL = Decimal("0.016539")


def test_claude_sonnet_45_reads_and_both_write_ttls() -> None:
    cost = price("claude-sonnet-4-5", from_anthropic(ANTHROPIC_USAGE))
    assert cost.input == Decimal("0.006144")
    assert cost.cache_read == Decimal("0.00054")
    assert cost.cache_write == Decimal("0.00231")
    assert cost.output == Decimal("0.007545")
    assert cost.total == SONNET_TOTAL


def test_claude_sonnet_45_same_cost_through_langchain() -> None:
    langchain_anthropic = pytest.importorskip("langchain_anthropic.chat_models")
    import anthropic.types

    metadata = langchain_anthropic._create_usage_metadata(
        anthropic.types.Usage.model_validate(ANTHROPIC_USAGE)
    )
    cost = price("claude-sonnet-4-5-20250929", from_langchain(metadata))
    assert cost.total == SONNET_TOTAL
    assert cost.catalog_model == "anthropic/claude-sonnet-4-5-20250929"


def test_anthropic_default_write_multipliers() -> None:
    """With no write prices in the table, Anthropic's 1.25x (5m) and 2x (1h) apply."""
    _use_catalog({"anthropic": {"models": {"claude-test": _model({"input": 2, "output": 10})}}})
    usage = Usage(input_tokens=3000, cache_write_tokens=1000, cache_write_1h_tokens=1000)
    cost = price("claude-test", usage)
    # 1000*2 = 2000; 1000*2*1.25 = 2500; 1000*2*2 = 4000 -> 8500
    assert cost.cache_write == Decimal("0.0065")
    assert cost.total == Decimal("0.0085")
    assert cost.flags == ()


def test_claude_on_another_provider_uses_anthropic_multipliers() -> None:
    _use_catalog({"gateway": {"models": {"claude-x": _model({"input": 4, "output": 20})}}})
    cost = price("claude-x", Usage(input_tokens=1000, cache_write_tokens=1000))
    # 1000*4*1.25 = 5000
    assert cost.total == Decimal("0.005")


def test_other_cache_writes_fall_back_to_input_price() -> None:
    _use_catalog({"acme": {"models": {"plain": _model({"input": 2, "output": 10})}}})
    cost = price(
        "plain", Usage(input_tokens=1000, cache_write_tokens=600, cache_write_1h_tokens=400)
    )
    # every write at the input price: 1000*2 = 2000
    assert cost.total == Decimal("0.002")
    assert cost.flags == ("cache_write_at_input_price",)


def test_cache_read_falls_back_to_input_price_and_says_so() -> None:
    _use_catalog({"acme": {"models": {"no-cache": _model({"input": 2, "output": 10})}}})
    cost = price("no-cache", Usage(input_tokens=1000, cache_read_tokens=800))
    # 200*2 + 800*2 = 2000
    assert cost.total == Decimal("0.002")
    assert cost.flags == ("cache_read_at_input_price",)


# --- audio --------------------------------------------------------------------------


def test_audio_at_its_own_price() -> None:
    # gpt-realtime: input 4, output 16, input audio 32, output audio 64.
    usage = Usage(
        input_tokens=1000, input_audio_tokens=400, output_tokens=500, output_audio_tokens=300
    )
    cost = price("gpt-realtime", usage)
    # 600*4 = 2400; 400*32 = 12800; 200*16 = 3200; 300*64 = 19200 -> 37600
    assert cost.audio == Decimal("0.032")
    assert cost.total == Decimal("0.0376")


def test_audio_without_a_price_falls_back_to_text_prices() -> None:
    _use_catalog({"acme": {"models": {"mute": _model({"input": 2.5, "output": 10})}}})
    usage = Usage(
        input_tokens=1000, input_audio_tokens=400, output_tokens=500, output_audio_tokens=300
    )
    cost = price("mute", usage)
    # 600*2.5 + 400*2.5 = 2500; 200*10 + 300*10 = 5000; audio part 1000 + 3000
    assert cost.audio == Decimal("0.004")
    assert cost.total == Decimal("0.0075")


# --- Gemini long-context tier -------------------------------------------------------


def test_gemini_25_pro_below_200k_with_thinking() -> None:
    usage = from_gemini(
        {
            "promptTokenCount": 100_000,
            "cachedContentTokenCount": 20_000,
            "candidatesTokenCount": 1000,
            "thoughtsTokenCount": 3000,
        }
    )
    cost = price("gemini-2.5-pro", usage)
    # 80000*1.25 = 100000; 20000*0.125 = 2500; 1000*10 = 10000; 3000*10 = 30000
    assert cost.total == Decimal("0.1425")
    assert cost.flags == ()


def test_gemini_25_pro_above_200k_prices_the_whole_request_at_the_tier() -> None:
    usage = from_gemini(
        {
            "promptTokenCount": 250_000,
            "cachedContentTokenCount": 50_000,
            "candidatesTokenCount": 1000,
            "thoughtsTokenCount": 3000,
        }
    )
    cost = price("gemini-2.5-pro", usage)
    # tier: input 2.5, output 15, cache read 0.25
    # 200000*2.5 = 500000; 50000*0.25 = 12500; 1000*15 = 15000; 3000*15 = 45000
    assert cost.total == Decimal("0.5725")
    assert cost.flags == ("context_tier>200000",)


def test_gemini_tier_boundary_exactly_200k_is_not_above() -> None:
    at = price("gemini-2.5-pro", Usage(input_tokens=200_000))
    above = price("gemini-2.5-pro", Usage(input_tokens=200_001))
    assert at.total == Decimal("0.25")  # 200000*1.25
    assert above.total == Decimal("0.5000025")  # 200001*2.5
    assert at.flags == ()
    assert above.flags == ("context_tier>200000",)


# --- service tiers ------------------------------------------------------------------

FAST_MODE_TABLE = {
    "openai": {
        "models": {
            "gpt-fast": {
                "cost": {"input": 1, "output": 8, "cache_read": 0.1},
                # models.dev names the mode `fast`; the request it sends says `priority`.
                "experimental": {
                    "modes": {
                        "fast": {
                            "cost": {"input": 2, "output": 16},
                            "provider": {"body": {"service_tier": "priority"}},
                        }
                    }
                },
            }
        }
    }
}


def test_service_tier_uses_the_mode_price() -> None:
    _use_catalog(FAST_MODE_TABLE)
    usage = Usage(
        input_tokens=1000, cache_read_tokens=500, output_tokens=100, service_tier="priority"
    )
    cost = price("gpt-fast", usage)
    # mode input 2, output 16; the mode lists no cache-read price, so cached tokens are
    # charged at the mode's input price (never an invented discount), and flagged:
    # 500*2 = 1000; 500*2 = 1000; 100*16 = 1600 -> 3600
    assert cost.total == Decimal("0.0036")
    assert cost.flags == ("service_tier:priority", "cache_read_at_input_price")
    by_mode_name = price("gpt-fast", Usage(input_tokens=1000, service_tier="fast"))
    assert by_mode_name.total == Decimal("0.002")


def test_missing_mode_is_standard_price_and_flagged() -> None:
    _use_catalog(FAST_MODE_TABLE)
    cost = price("gpt-fast", Usage(input_tokens=1000, output_tokens=100, service_tier="flex"))
    # standard: 1000*1 + 100*8 = 1800
    assert cost.total == Decimal("0.0018")
    assert cost.flags == ("tier_unpriced",)


def test_gpt5_flex_through_langchain_openai() -> None:
    langchain_openai = pytest.importorskip("langchain_openai.chat_models.base")
    metadata = langchain_openai._create_usage_metadata_responses(
        {
            "input_tokens": 75,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1186,
            "output_tokens_details": {"reasoning_tokens": 1024},
            "total_tokens": 1261,
        },
        "flex",
    )
    cost = price("gpt-5", from_langchain(metadata))
    # gpt-5 flex: input 0.625, output 5: 75*0.625 = 46.875; 162*5 = 810; 1024*5 = 5120
    assert cost.total == Decimal("0.005976875")
    assert cost.flags == ("service_tier:flex",)


def test_real_models_dev_fast_mode(models_dev_path: Path) -> None:
    entries, _ = parse_api_json(
        load_json_text(models_dev_path.read_bytes(), "api.json"), "api.json"
    )
    set_catalog(Catalog(entries))
    raw = json.loads(models_dev_path.read_text("utf-8"))["aihubmix"]["models"]["gpt-5.4"]
    fast = raw["experimental"]["modes"]["fast"]
    assert fast["provider"]["body"]["service_tier"] == "priority"
    cost = price("gpt-5.4", Usage(input_tokens=1000, service_tier="priority"), provider="aihubmix")
    assert cost.total == 1000 * Decimal(str(fast["cost"]["input"])) / M


def test_standard_tier_names_change_nothing() -> None:
    for tier in ("default", "auto", "standard", "on_demand"):
        cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100, service_tier=tier))
        assert cost.total == Decimal("0.0035")
        assert cost.flags == ()


def test_cache_hit_costs_nothing() -> None:
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100, cache_hit=True))
    assert cost.total == Decimal(0)
    assert cost.priced
    assert cost.flags == ("cache_hit",)


# --- resolving model ids ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "total"),
    [
        # Regional (us.) inference profiles cost 10% more: input 3.3, output 16.5.
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", Decimal("0.00495")),  # 3300 + 1650
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", Decimal("0.0045")),  # 1000*3 + 100*15
    ],
)
def test_bedrock_ids(model: str, total: Decimal) -> None:
    cost = price(model, Usage(input_tokens=1000, output_tokens=100))
    assert cost.catalog_model == f"amazon-bedrock/{model}"
    assert cost.total == total


def test_bedrock_region_prefix_not_in_the_table_is_stripped() -> None:
    cost = price("apac.anthropic.claude-sonnet-4-5-20250929-v1:0", Usage(input_tokens=1000))
    assert cost.catalog_model == "amazon-bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0"


def test_bedrock_converse_with_one_hour_writes() -> None:
    usage = from_bedrock(
        {
            "inputTokens": 12,
            "outputTokens": 40,
            "cacheReadInputTokens": 2000,
            "cacheWriteInputTokens": 1000,
            "cacheDetails": [{"inputTokens": 600, "ttl": "1h"}, {"inputTokens": 400, "ttl": "5m"}],
        }
    )
    cost = price("anthropic.claude-sonnet-4-5-20250929-v1:0", usage)
    # 12*3 = 36; 2000*0.3 = 600; 400*3.75 = 1500; 600*6 = 3600; 40*15 = 600 -> 6336
    assert cost.total == Decimal("0.006336")
    regional = price("us.anthropic.claude-sonnet-4-5-20250929-v1:0", usage)
    # 12*3.3 = 39.6; 2000*0.33 = 660; 400*4.125 = 1650; 600*6.6 = 3960; 40*16.5 = 660
    assert regional.total == Decimal("0.0069696")


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("claude-sonnet-4-5@20250929", "google-vertex/claude-sonnet-4-5@20250929"),
        ("publishers/google/models/gemini-2.5-pro", "google-vertex/gemini-2.5-pro"),
        (
            "projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro",
            "google-vertex/gemini-2.5-pro",
        ),
    ],
)
def test_vertex_ids(model: str, entry: str) -> None:
    assert price(model, Usage(input_tokens=1)).catalog_model == entry


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("openai/gpt-4o", "openai/gpt-4o"),
        ("anthropic:claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("gemini/gemini-2.5-pro", "google/gemini-2.5-pro"),
        ("GPT-4o", "openai/gpt-4o"),
        ("  Claude-Sonnet-4-5 ", "anthropic/claude-sonnet-4-5"),
    ],
)
def test_provider_prefixes_and_case(model: str, entry: str) -> None:
    cost = price(model, Usage(input_tokens=1))
    assert cost.catalog_model == entry
    assert cost.model == model  # the id as the caller gave it is kept for the log


def test_dated_snapshot_falls_back_to_its_alias() -> None:
    cost = price("gpt-4o-2099-01-01", Usage(input_tokens=1000, output_tokens=100))
    assert cost.catalog_model == "openai/gpt-4o"
    assert cost.total == Decimal("0.0035")


def test_dated_entry_is_preferred_when_present() -> None:
    cost = price("gpt-4o-2024-05-13", Usage(input_tokens=1000, output_tokens=100))
    assert cost.catalog_model == "openai/gpt-4o-2024-05-13"
    assert cost.total == Decimal("0.0065")  # 1000*5 + 100*15


def test_provider_hint_chooses_between_prices() -> None:
    _use_catalog(
        {
            "alpha": {"models": {"shared-model": _model({"input": 1, "output": 2})}},
            "beta": {"models": {"shared-model": _model({"input": 3, "output": 6})}},
        }
    )
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert price("shared-model", usage, provider="alpha").total == Decimal("0.0012")  # 1000 + 200
    assert price("shared-model", usage, provider="beta").total == Decimal("0.0036")  # 3000 + 600


def test_provider_aliases_are_understood() -> None:
    usage = Usage(input_tokens=1)
    assert price("gemini-2.5-pro", usage, provider="vertex_ai").provider == "google-vertex"
    assert price("gpt-4o", usage, provider="azure_openai").provider == "azure"
    assert price("gpt-4o", usage, provider="OpenAI").provider == "openai"


def test_vendor_prefixed_gateway_ids() -> None:
    """Groq names this model `openai/gpt-oss-120b`; the prefix is part of its id."""
    usage = Usage(input_tokens=1000, output_tokens=100)
    for provider in ("groq", None):
        cost = price("openai/gpt-oss-120b", usage, provider=provider)
        assert cost.catalog_model == "groq/openai/gpt-oss-120b"
        assert cost.total == Decimal("0.00021")  # 1000*0.15 + 100*0.6


def test_azure_deployment_from_config() -> None:
    config.config_dir().mkdir(parents=True)
    config.config_path().write_text('[azure.deployments]\nmy-deploy = "gpt-4o"\n', "utf-8")
    usage = Usage(input_tokens=1000, output_tokens=100)
    for provider in (None, "azure"):
        cost = price("my-deploy", usage, provider=provider)
        assert cost.catalog_model == "azure/gpt-4o"
        assert cost.total == Decimal("0.0035")
        assert cost.model == "my-deploy"


def test_unknown_model_is_unpriced() -> None:
    cost = price("no-such-model-xyz", Usage(input_tokens=1000))
    assert cost.total is None
    assert cost.priced is False
    assert cost.flags == ("unknown_model",)


def test_unknown_model_strict_names_close_matches() -> None:
    with pytest.raises(UnknownModelError) as caught:
        price("gpt-4o-minii", Usage(input_tokens=1), strict=True)
    assert "unknown model 'gpt-4o-minii'" in str(caught.value)
    assert "close matches:" in str(caught.value)
    assert "gpt-4o-mini" in caught.value.close_matches


# --- layers: override > fetched > curated > base -------------------------------------

OVERRIDE_JSON = {"openai": {"models": {"gpt-4o": {"cost": {"input": 100, "output": 200}}}}}
OVERRIDE_TOML = "[openai.models.gpt-4o.cost]\ninput = 100\noutput = 200.5\n"
MODELS_DEV = {"openai": {"models": {"gpt-4o": {"cost": {"input": 7, "output": 9}}}}}


def _write_models_dev_cache(fetched_at: str = "2026-07-01T00:00:00Z") -> None:
    catalog.models_dev_cache_path().parent.mkdir(parents=True, exist_ok=True)
    catalog.models_dev_cache_path().write_text(json.dumps(MODELS_DEV), "utf-8")
    catalog.models_dev_meta_path().write_text(json.dumps({"fetched_at": fetched_at}), "utf-8")


def test_curated_source_names_its_date() -> None:
    cost = price("gpt-4o", Usage(input_tokens=1))
    assert cost.source == f"curated:{_curated_as_of('openai')}"


def test_fetched_catalog_beats_curated() -> None:
    _write_models_dev_cache()
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    assert cost.total == Decimal("0.0079")  # 1000*7 + 100*9
    assert cost.source == "fetched:2026-07-01"
    # Rows the fetched catalog lacks still come from the curated table.
    other = price("claude-sonnet-4-5", Usage(input_tokens=1))
    assert other.source == f"curated:{_curated_as_of('anthropic')}"


def test_json_override_from_env_beats_models_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_models_dev_cache()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(OVERRIDE_JSON), "utf-8")
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    assert cost.total == Decimal("0.12")  # 1000*100 + 100*200
    assert cost.source == f"override:{path}"


def test_toml_override_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(OVERRIDE_TOML, "utf-8")
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    assert cost.total == Decimal("0.12005")  # 1000*100 + 100*200.5
    assert cost.source == f"override:{path}"


def test_prices_toml_in_the_config_dir() -> None:
    path = config.config_dir() / "prices.toml"
    path.parent.mkdir(parents=True)
    path.write_text(OVERRIDE_TOML, "utf-8")
    cost = price("gpt-4o", Usage(input_tokens=1000))
    assert cost.total == Decimal("0.1")  # 1000*100
    assert cost.source == f"override:{path}"


def test_malformed_override_names_file_model_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"openai": {"models": {"gpt-4o": {"cost": {"input": "cheap", "output": 1}}}}})
    )
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    with pytest.raises(PriceTableError) as caught:
        catalog.check_override()
    message = str(caught.value)
    assert str(path) in message
    assert "'openai/gpt-4o'" in message
    assert "'cost.input'" in message
    assert "must be a number, got 'cheap'" in message


def test_negative_price_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "neg.toml"
    path.write_text("[acme.models.m1.cost]\ninput = -0.5\noutput = 1\n")
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    with pytest.raises(PriceTableError, match=r"'acme/m1'.*'cost.input': must not be negative"):
        catalog.check_override()


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        (
            '{"acme": {"models": {"m1": {"cost": {"input": 1}}}}}',
            ".json",
            "'cost.output': is required",
        ),
        ('{"acme": {"models": {"m1": {"cost": [1, 2]}}}}', ".json", "'cost': must be an object"),
        ('{"acme": []}', ".json", "provider 'acme' has no 'models' object"),
        ("{not json", ".json", "invalid JSON"),
        ("[acme.models.m1\n", ".toml", "invalid TOML"),
        (
            '{"acme": {"models": {"m1": {"cost": {"input": 1, "output": 1, "tiers": [{}]}}}}}',
            ".json",
            "'cost.tiers[0].tier.size': needs a positive integer size",
        ),
    ],
)
def test_other_malformed_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, suffix: str, expected: str
) -> None:
    path = tmp_path / f"prices{suffix}"
    path.write_text(text)
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    with pytest.raises(PriceTableError) as caught:
        catalog.check_override()
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


# --- the Cost value -----------------------------------------------------------------


def test_cost_is_a_frozen_value() -> None:
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cost.total = Decimal(0)  # type: ignore[misc]
    assert dataclasses.replace(cost) == cost
    assert dataclasses.asdict(cost)["total"] == Decimal("0.0035")
    assert cost.currency == "USD"
    assert "entry=" not in repr(cost)


# --- the full models.dev catalog and the curated table ------------------------------


def test_full_models_dev_catalog_prices_every_model(models_dev_path: Path) -> None:
    raw = json.loads(models_dev_path.read_text("utf-8"))
    entries, errors = parse_api_json(
        load_json_text(models_dev_path.read_bytes(), "api.json"), "api.json"
    )
    assert errors == []
    with_cost = [
        (p, m)
        for p, prov in raw.items()
        for m, model in prov["models"].items()
        if model.get("cost")
    ]
    assert len(entries) == len(with_cost) > 4000
    set_catalog(Catalog(entries))
    usage = Usage(input_tokens=1000, output_tokens=100)
    for entry in entries:
        cost = price(entry.model_id, usage, provider=entry.provider)
        assert cost.priced, entry.key
        assert cost.entry is entry, (entry.key, cost.catalog_model)
        assert isinstance(cost.total, Decimal)
        assert cost.total >= 0

    # Twenty rows spread over the file, worked out from the raw JSON alone.
    for provider_id, model_id in with_cost[:: len(with_cost) // 20][:20]:
        row = raw[provider_id]["models"][model_id]["cost"]
        expected = (1000 * Decimal(str(row["input"])) + 100 * Decimal(str(row["output"]))) / M
        assert price(model_id, usage, provider=provider_id).total == expected, (
            provider_id,
            model_id,
        )


def test_curated_table_covers_the_main_providers() -> None:
    data = json.loads(CURATED.read_text("utf-8"))
    wanted = {
        "openai",
        "anthropic",
        "google",
        "google-vertex",
        "amazon-bedrock",
        "azure",
        "mistral",
        "deepseek",
        "xai",
        "groq",
    }
    assert wanted <= set(data)
    assert sum(len(p["models"]) for p in data.values()) >= 150
    for provider_id, provider in data.items():
        assert provider.get("as_of"), provider_id
        assert provider.get("source"), provider_id
        assert provider["models"], provider_id
    # The whole table parses strictly and every priced row resolves to itself.
    entries = catalog.curated_entries()
    assert len(entries) >= 150
    usage = Usage(input_tokens=10, output_tokens=10)
    for entry in entries:
        cost = price(entry.model_id, usage, provider=entry.provider)
        assert cost.catalog_model == entry.key


def test_import_pulls_in_no_framework() -> None:
    code = (
        "import modelforge, sys; "
        "assert not any(m.startswith(('langchain', 'llama_index')) for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith(('langchain', 'llama_index')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr


GEMINI_BATCH_TABLE = {
    "google": {
        "models": {
            "gemini-long": {
                "cost": {
                    "input": 1.25,
                    "output": 10,
                    "tiers": [
                        {"tier": {"type": "context", "size": 200000}, "input": 2.5, "output": 15}
                    ],
                },
                "experimental": {
                    "modes": {
                        "batch": {
                            "cost": {
                                "input": 0.625,
                                "output": 5,
                                "tiers": [
                                    {
                                        "tier": {"type": "context", "size": 200000},
                                        "input": 1.25,
                                        "output": 7.5,
                                    }
                                ],
                            }
                        },
                        "flex": {"cost": {"input": 0.625, "output": 5}},
                    }
                },
            }
        }
    }
}


def test_service_tier_keeps_its_own_long_context_tier() -> None:
    _use_catalog(GEMINI_BATCH_TABLE)
    long_batch = price(
        "gemini-long", Usage(input_tokens=300_000, output_tokens=1000, service_tier="batch")
    )
    # batch over 200k: 300000*1.25 + 1000*7.5 = 375000 + 7500 = 382500 per 1M
    assert long_batch.total == Decimal("0.3825")
    assert long_batch.flags == ("service_tier:batch", "context_tier>200000")
    short_batch = price(
        "gemini-long", Usage(input_tokens=1000, output_tokens=100, service_tier="batch")
    )
    # 1000*0.625 + 100*5 = 625 + 500 = 1125 per 1M
    assert short_batch.total == Decimal("0.001125")
    long_flex = price(
        "gemini-long", Usage(input_tokens=300_000, output_tokens=1000, service_tier="flex")
    )
    # the flex mode has no long-context price: its base price applies, flagged
    # 300000*0.625 + 1000*5 = 187500 + 5000 = 192500 per 1M
    assert long_flex.total == Decimal("0.1925")
    assert long_flex.flags == ("service_tier:flex", "context_tier_unpriced")
