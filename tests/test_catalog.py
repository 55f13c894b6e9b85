"""The price layers: what each holds, how it is read, and what a bad override file does.

Every expected cost is worked out by hand from the per-1M prices of the row it names.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge.cli import cli
from modelforge.errors import PriceTableError
from modelforge.pricing import catalog
from modelforge.pricing.catalog import (
    Catalog,
    Layer,
    LayerData,
    compact,
    get_catalog,
    parse_api_json,
    staleness_notice,
)
from modelforge.pricing.cost import price
from modelforge.records import CallRecord
from modelforge.store import UsageLog
from modelforge.usage import Usage

M = Decimal(10**6)  # prices are per million tokens
REPO = Path(__file__).resolve().parents[1]
DATA = Path(catalog.__file__).parent / "data"
CURATED = json.loads((DATA / "prices.json").read_text("utf-8"))
SOURCES = REPO / "docs" / "pricing-sources.md"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


# --- the base layer ------------------------------------------------------------------


def test_every_base_model_is_priced() -> None:
    raw = json.loads((DATA / "base_prices.json").read_text("utf-8"))
    assert (raw["format"], raw["source"], raw["as_of"]) == (
        "modelforge-prices/1",
        "models.dev",
        "2026-07",
    )
    entries = catalog.base_entries()  # parses every row strictly: a bad one raises
    providers = {e.provider for e in entries}
    assert len(entries) > 4800 and len(providers) >= 140
    usage = Usage(input_tokens=1000, output_tokens=100)
    priced_providers = set()
    from_base = 0
    for entry in entries:
        cost = price(entry.model_id, usage, provider=entry.provider)
        assert cost.priced and cost.entry is not None, entry.key
        # The same listing answers; a higher layer may have replaced its prices.
        assert cost.entry.key.lower() == entry.key.lower()
        if cost.source == "models.dev:2026-07":
            from_base += 1
            row = raw["models"][entry.model_id.lower()][entry.provider]["cost"]
            # 1000 × input + 100 × output per 1M, read from the file's own text
            expected = (1000 * Decimal(str(row["input"])) + 100 * Decimal(str(row["output"]))) / M
            assert cost.total == expected, entry.key
        else:
            assert cost.source is not None and cost.source.startswith("curated:")
        priced_providers.add(entry.provider)
    assert priced_providers == providers
    assert from_base > 4500


def test_base_layer_covers_every_priced_provider_of_the_snapshot(models_dev_path: Path) -> None:
    snapshot = json.loads(models_dev_path.read_text("utf-8"))
    priced = {
        provider
        for provider, data in snapshot.items()
        if any(m.get("cost") is not None for m in data["models"].values())
    }
    assert len(snapshot) == 147 and len(priced) == 142
    assert {e.provider for e in catalog.base_entries()} == priced


def test_base_layer_is_what_the_script_writes(models_dev_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "base.json"
    script = REPO / "scripts" / "build_base_prices.py"
    run = subprocess.run(
        [sys.executable, str(script), str(models_dev_path), "--as-of", "2026-07", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "4894 models from 142 providers" in run.stdout
    assert out.read_bytes() == (DATA / "base_prices.json").read_bytes()


def test_compact_keeps_what_the_parser_reads() -> None:
    data = {
        "Acme": {
            "name": "Acme Cloud",
            "models": {
                "Big-Model": {
                    "id": "Big-Model",
                    "name": "Big Model",
                    "family": "big",
                    "release_date": "2026-01-01",
                    "modalities": {"input": ["text"]},
                    "cost": {
                        "input": Decimal("1.5"),
                        "output": Decimal(6),
                        "image": Decimal(9),
                        "tiers": [
                            {"tier": {"type": "context", "size": 200000}, "input": 3, "output": 9}
                        ],
                        "context_over_200k": {"input": 3, "output": 9},
                    },
                    "limit": {"context": 400000, "output": 8000, "input": 300000},
                    "experimental": {
                        "modes": {
                            "fast": {
                                "cost": {"input": 3, "output": 12},
                                "provider": {"body": {"service_tier": "priority", "x": 1}},
                            }
                        }
                    },
                },
                "small": {"id": "small", "name": "small", "cost": {"input": 1, "output": 2}},
                "free-text": {"id": "free-text", "name": "No price"},
            },
        }
    }
    packed = compact(data, source="test", as_of="2026-07")
    assert packed["models"] == {
        "big-model": {
            "acme": {
                "id": "Big-Model",
                "name": "Big Model",
                "cost": {
                    "input": Decimal("1.5"),
                    "output": Decimal(6),
                    "tiers": [
                        {"tier": {"type": "context", "size": 200000}, "input": 3, "output": 9}
                    ],
                },
                "limit": {"context": 400000, "output": 8000},
                "experimental": {
                    "modes": {
                        "fast": {
                            "cost": {"input": 3, "output": 12},
                            "provider": {"body": {"service_tier": "priority"}},
                        }
                    }
                },
            }
        },
        "small": {"acme": {"cost": {"input": 1, "output": 2}}},
    }
    # Read back through a layer, the prices are the ones the full object gives.
    full, _ = parse_api_json(data, "test")
    layer = Layer("packed", lambda: LayerData(models=packed["models"], label="test"))
    for entry in full:
        packed_entry = layer.entry(entry.provider, entry.model_id.lower())
        assert packed_entry is not None
        assert packed_entry.model_id == entry.model_id
        assert (packed_entry.prices, packed_entry.tiers) == (entry.prices, entry.tiers)
        assert dict(packed_entry.modes) == dict(entry.modes)


# --- layers are read when a lookup reaches them --------------------------------------


def test_a_curated_model_never_reads_the_base_layer() -> None:
    cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    assert cost.total == Decimal("0.0035")  # 1000 × 2.5 + 100 × 10 per 1M
    loaded = {layer.name: layer.loaded for layer in get_catalog().layers}
    assert loaded == {"fetched": True, "curated": True, "base": False}
    # A model only the base layer has reads it.
    opus = price("claude-3-opus-20240229", Usage(input_tokens=1000, output_tokens=100))
    assert opus.total == Decimal("0.0225")  # 1000 × 15 + 100 × 75 per 1M
    assert opus.source == "models.dev:2026-07"
    assert all(layer.loaded for layer in get_catalog().layers)


def test_layer_order_per_provider_and_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Override > fetched > curated > base, decided per (provider, model id)."""
    fetched = {
        "anthropic": {"models": {"claude-3-opus-20240229": {"cost": {"input": 10, "output": 50}}}}
    }
    catalog.models_dev_cache_path().parent.mkdir(parents=True)
    catalog.models_dev_cache_path().write_text(json.dumps(fetched), "utf-8")
    catalog.models_dev_meta_path().write_text('{"fetched_at": "2026-12-01T08:00:00Z"}')
    override = tmp_path / "prices.toml"
    override.write_text('[openai.models."gpt-4o".cost]\ninput = 1\noutput = 2\n', "utf-8")
    monkeypatch.setenv("MODELFORGE_PRICES", str(override))
    usage = Usage(input_tokens=1000, output_tokens=100)
    cases = {
        # model: (source, hand-worked total)
        "gpt-4o": (f"override:{override}", "0.0012"),  # 1000 × 1 + 100 × 2
        "claude-3-opus-20240229": ("fetched:2026-12-01", "0.015"),  # 1000 × 10 + 100 × 50
        "claude-sonnet-4-5": ("curated:2026-11-22", "0.0045"),  # 1000 × 3 + 100 × 15
        "claude-3-5-sonnet-20240620": ("models.dev:2026-07", "0.0045"),  # 1000×3 + 100×15
    }
    for model, (source, total) in cases.items():
        cost = price(model, usage)
        assert (cost.source, cost.total) == (source, Decimal(total)), model


# --- a malformed override file (issue #21, item 13) ----------------------------------

DEEP = 100_000  # past any parser's recursion limit
NESTED = 200  # parses, but is no price


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "deep.json",
            '{"openai": {"models": {"gpt-4o": {"cost": {"input": '
            + "[" * DEEP
            + "]" * DEEP
            + ', "output": 1}}}}}',
            "invalid JSON: nested too deeply",
        ),
        (
            "deep.toml",
            '[openai.models."gpt-4o".cost]\noutput = 1\ninput = ' + "[" * DEEP + "]" * DEEP,
            "invalid TOML: nested too deeply",
        ),
        (
            "nested.json",
            '{"openai": {"models": {"gpt-4o": {"cost": {"input": '
            + "[" * NESTED
            + "1"
            + "]" * NESTED
            + ', "output": 1}}}}}',
            "model 'openai/gpt-4o': field 'cost.input': must be a number, got [[[[[[[...]]]]]]]",
        ),
        (
            "huge.json",
            '{"openai": {"models": {"gpt-4o": {"cost": {"input": 1E+99999999, "output": 1}}}}}',
            "model 'openai/gpt-4o': field 'cost.input': must be at most 1000000 USD per 1M "
            "tokens, got Decimal('1E+99999999')",
        ),
        (
            "tiny.json",
            '{"openai": {"models": {"gpt-4o": {"cost": {"input": 1E-99999999, "output": 1}}}}}',
            "model 'openai/gpt-4o': field 'cost.input': must have at most 20 decimal places",
        ),
        (
            "long.toml",
            '[openai.models."gpt-4o".cost]\noutput = 1\ninput = 1' + "0" * 5000,
            "invalid TOML: Exceeds the limit (4300 digits)",
        ),
        (
            "nan.json",
            '{"openai": {"models": {"gpt-4o": {"cost": {"input": NaN, "output": 1}}}}}',
            "model 'openai/gpt-4o': field 'cost.input': must be finite, got nan",
        ),
        (
            "nan.toml",
            '[openai.models."gpt-4o".cost]\ninput = nan\noutput = 1\n',
            "model 'openai/gpt-4o': field 'cost.input': must be finite, got Decimal('NaN')",
        ),
        (
            "negative.toml",
            '[openai.models."gpt-4o".cost]\ninput = -2.5\noutput = 10\n',
            "model 'openai/gpt-4o': field 'cost.input': must not be negative, got Decimal('-2.5')",
        ),
    ],
)
def test_malformed_override_is_rejected_once_at_load(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    text: str,
    expected: str,
) -> None:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    usage = Usage(input_tokens=1000, output_tokens=100)
    with caplog.at_level(logging.WARNING, logger="modelforge"):
        first = get_catalog()
        costs = [price("gpt-4o", usage) for _ in range(3)]
        costs.append(price("claude-sonnet-4-5", usage))
    # Rejected when loaded, naming the file (and the model and field when it has one).
    assert len(first.rejected) == 1
    message = str(first.rejected[0])
    assert message.startswith(f"{path}: ") and expected in message
    # Reported once, and the catalog is built once, not on every call.
    warnings = [r.getMessage() for r in caplog.records if "price override" in r.getMessage()]
    assert len(warnings) == 1 and expected in warnings[0]
    assert get_catalog() is first
    # Calls are priced from the lower layers and flagged.
    for cost in costs[:3]:
        assert cost.total == Decimal("0.0035")  # curated gpt-4o: 1000 × 2.5 + 100 × 10
        assert cost.source == "curated:2026-11-22"
        assert cost.flags == ("price_override_rejected",)
    assert costs[3].total == Decimal("0.0045")  # curated claude-sonnet-4-5: 3000 + 1500
    # The price commands say what is wrong, as an error line.
    for args in (
        ("prices", "show", "gpt-4o"),
        ("prices", "estimate", "gpt-4o", "--input", "10", "--output", "1"),
        ("prices", "list"),
    ):
        code, out = _cli(*args)
        assert code == 1, out
        assert out.startswith(f"Error: {path}: ") and expected in out
        assert "Traceback" not in out


def test_fixing_the_override_takes_effect_on_a_new_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[openai.models."gpt-4o".cost]\ninput = "cheap"\noutput = 1\n', "utf-8")
    monkeypatch.setenv("MODELFORGE_PRICES", str(path))
    assert price("gpt-4o", Usage(input_tokens=1000)).flags == ("price_override_rejected",)
    path.write_text('[openai.models."gpt-4o".cost]\ninput = 1\noutput = 1\n', "utf-8")
    catalog.set_catalog(None)
    cost = price("gpt-4o", Usage(input_tokens=1000))
    assert (cost.total, cost.flags) == (Decimal("0.001"), ())  # 1000 × 1 per 1M


def test_a_malformed_row_in_the_fetched_catalog_costs_only_that_model() -> None:
    fetched = {
        "openai": {
            "models": {
                "gpt-4o": {"cost": {"input": "lots", "output": 1}},
                "gpt-4o-mini": {"cost": {"input": 1, "output": 2}},
            }
        }
    }
    catalog.models_dev_cache_path().parent.mkdir(parents=True)
    catalog.models_dev_cache_path().write_text(json.dumps(fetched), "utf-8")
    usage = Usage(input_tokens=1000, output_tokens=100)
    # The bad row is skipped: the curated row below it prices gpt-4o.
    gpt4o = price("gpt-4o", usage)
    assert (gpt4o.total, gpt4o.source) == (Decimal("0.0035"), "curated:2026-11-22")
    mini = price("gpt-4o-mini", usage)
    assert (mini.total, mini.source) == (Decimal("0.0012"), "fetched:unknown")  # 1000 + 200


# --- stale prices --------------------------------------------------------------------


def test_staleness_notice_after_120_days(monkeypatch: pytest.MonkeyPatch) -> None:
    # The curated table's newest date is 2026-11-22; +120 days is 2027-03-22.
    assert staleness_notice(today=date(2026, 12, 2)) is None
    assert staleness_notice(today=date(2027, 3, 22)) is None
    assert staleness_notice(today=date(2027, 3, 23)) == (
        "Prices were last checked on 2026-11-22 (121 days ago); run `modelforge prices "
        "update` to refresh them (MODELFORGE_STALE_PRICES=off hides this)."
    )
    monkeypatch.setenv("MODELFORGE_STALE_PRICES", "off")
    assert staleness_notice(today=date(2027, 3, 23)) is None
    monkeypatch.setenv("MODELFORGE_STALE_PRICES", "5")
    notice = staleness_notice(today=date(2026, 11, 28))
    assert notice is not None and "(6 days ago)" in notice


def test_a_fetched_catalog_makes_prices_fresh_again() -> None:
    catalog.models_dev_cache_path().parent.mkdir(parents=True)
    catalog.models_dev_cache_path().write_text('{"openai": {"models": {}}}', "utf-8")
    catalog.models_dev_meta_path().write_text('{"fetched_at": "2027-03-01T00:00:00Z"}')
    assert staleness_notice(today=date(2027, 4, 1)) is None


def test_prices_show_and_usage_print_the_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFORGE_STALE_PRICES", "1")  # the curated date is days old
    runner = CliRunner()
    shown = runner.invoke(cli, ["prices", "show", "gpt-4o"])
    assert shown.exit_code == 0
    assert shown.stderr.count("run `modelforge prices update`") == 1
    assert "modelforge prices update" not in shown.stdout
    db = tmp_path / "usage.db"
    log = UsageLog(db)
    log.submit(CallRecord(run_id="one", usage=Usage(input_tokens=1), cost=price("gpt-4o", Usage())))
    log.close()
    report = runner.invoke(cli, ["usage", "--db", str(db)])
    assert report.exit_code == 0
    assert report.stderr.count("run `modelforge prices update`") == 1
    monkeypatch.setenv("MODELFORGE_STALE_PRICES", "off")
    quiet = runner.invoke(cli, ["prices", "show", "gpt-4o"])
    assert "prices update" not in quiet.stderr


# --- the curated table agrees with its documented rows -------------------------------


def _documented_rows() -> dict[tuple[str, str], list[str]]:
    text = SOURCES.read_text("utf-8")
    section = text[text.index("## The table, row by row") :]
    rows: dict[tuple[str, str], list[str]] = {}
    provider = ""
    for line in section.splitlines():
        if line.startswith("### "):
            provider = line[4:].strip()
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[(provider, match.group(1))] = [c.strip() for c in match.group(2).split("|")]
    return rows


def _cell(value: Any) -> str:
    return "" if value is None else format(Decimal(str(value)).normalize(), "f")


def test_curated_prices_match_the_sources_doc() -> None:
    documented = _documented_rows()
    in_file = {(p, m) for p, data in CURATED.items() for m in data["models"]}
    assert set(documented) == in_file
    for (provider, model_id), cells in documented.items():
        cost = CURATED[provider]["models"][model_id]["cost"]
        fields = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
        expected = [_cell(cost.get(f)) for f in fields]
        tiers = cost.get("tiers") or []
        expected.append(
            f"over {tiers[0]['tier']['size']}: {_cell(tiers[0]['input'])} / "
            f"{_cell(tiers[0]['output'])}"
            if tiers
            else ""
        )
        assert cells == expected, (provider, model_id)


def test_curated_aliases_match_the_sources_doc() -> None:
    text = SOURCES.read_text("utf-8")
    section = text[text.index("## The table, row by row") :]
    for provider, data in CURATED.items():
        aliases = data.get("aliases", {})
        start = section.index(f"### {provider}\n")
        end = section.find("\n### ", start + 1)
        documented = dict(re.findall(r"`([^`]+)` → `([^`]+)`", section[start:end]))
        assert documented == aliases, provider
        for target in aliases.values():
            assert price(target, Usage(input_tokens=1), provider=provider).priced


def test_catalog_of_given_entries_answers_only_for_them() -> None:
    entries, _ = parse_api_json(
        {"acme": {"models": {"m1": {"cost": {"input": 1, "output": 2}}}}}, "t"
    )
    mine = Catalog(entries)
    assert [e.key for e in mine] == ["acme/m1"]
    assert mine.get("ACME".lower(), "M1") is entries[0]
    assert mine.get("openai", "gpt-4o") is None
    assert len(mine) == 1


def test_price_table_errors_name_the_field() -> None:
    with pytest.raises(PriceTableError, match=r"t: model 'acme/m1': field 'cost.output'"):
        parse_api_json({"acme": {"models": {"m1": {"cost": {"input": 1}}}}}, "t")


def test_a_fetched_row_without_tiers_keeps_the_curated_long_context_tier() -> None:
    from dataclasses import replace

    from modelforge import Usage, price
    from modelforge.pricing.catalog import Catalog, Layer, curated_data, set_catalog

    curated = Layer("curated", curated_data)
    sonnet = Catalog(layers=[curated]).get("anthropic", "claude-sonnet-4-5")
    assert sonnet is not None and sonnet.tiers
    fetched = replace(sonnet, tiers=(), source="fetched:2026-12-01")  # as models.dev lists it
    set_catalog(Catalog(layers=[Layer.of_entries("fetched", [fetched]), curated]))
    try:
        cost = price("claude-sonnet-4-5", Usage(input_tokens=300_000, output_tokens=1_000))
    finally:
        set_catalog(None)
    # Above 200K input the whole call is at $6 / $22.50 per 1M:
    # 300,000 × 6 + 1,000 × 22.5 = 1,822,500 per 1M = $1.8225
    assert cost.total == Decimal("1.8225")
    assert "context_tier>200000" in cost.flags
    assert cost.source == "fetched:2026-12-01"
