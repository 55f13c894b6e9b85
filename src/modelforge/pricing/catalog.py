"""Price tables in models.dev `api.json` shape, parsed into exact `Decimal` prices.

Three layers, highest first: the user override file, a models.dev catalog refreshed
into the cache dir, and the curated table bundled with the package. They are merged
per (provider, model id), so a higher layer replaces a lower one's entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from modelforge import config
from modelforge.errors import PriceTableError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRICE_FIELDS = (
    "input",
    "output",
    "reasoning",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "input_audio",
    "output_audio",
)
# Other spellings seen in the wild for the same prices.
_FIELD_ALIASES = {
    "cached_input": "cache_read",
    "cache_input": "cache_read",
    "cached_write": "cache_write",
}
_IGNORED_COST_KEYS = frozenset({"tiers", "context_over_200k", "image", "citation", "request"})


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens for each token class; None where the table gives no price."""

    input: Decimal
    output: Decimal
    reasoning: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None

    def as_dict(self) -> dict[str, Decimal]:
        return {f: v for f in PRICE_FIELDS if (v := getattr(self, f)) is not None}


@dataclass(frozen=True, slots=True)
class Tier:
    """Prices that apply to a whole request whose input exceeds `size` tokens."""

    size: int
    prices: Prices


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    provider: str
    model_id: str
    name: str
    family: str | None
    prices: Prices
    tiers: tuple[Tier, ...] = ()
    modes: Mapping[str, Prices] = field(default_factory=dict)
    mode_tiers: Mapping[str, tuple[Tier, ...]] = field(default_factory=dict)
    context_limit: int | None = None
    output_limit: int | None = None
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model_id}"

    def tier_for(self, input_tokens: int, mode: str | None = None) -> Tier | None:
        """The largest tier (of the service `mode`, if given) whose size `input_tokens`
        exceeds."""
        chosen = None
        for tier in self.mode_tiers.get(mode, ()) if mode else self.tiers:
            if input_tokens > tier.size:
                chosen = tier
        return chosen


class Catalog:
    """Entries keyed by provider and lower-cased model id."""

    def __init__(self, entries: Iterable[CatalogEntry] = ()) -> None:
        self._entries: dict[tuple[str, str], CatalogEntry] = {}
        self._by_model: dict[str, list[CatalogEntry]] = {}
        self.update(entries)

    def update(self, entries: Iterable[CatalogEntry]) -> None:
        """Add entries; an entry replaces one with the same provider and model id."""
        for entry in entries:
            key = (entry.provider, entry.model_id.lower())
            old = self._entries.get(key)
            self._entries[key] = entry
            same_id = self._by_model.setdefault(key[1], [])
            if old is not None:
                same_id[same_id.index(old)] = entry
            else:
                same_id.append(entry)

    def get(self, provider: str, model_id: str) -> CatalogEntry | None:
        return self._entries.get((provider, model_id.lower()))

    def by_model(self, model_id: str) -> list[CatalogEntry]:
        return self._by_model.get(model_id.lower(), [])

    def providers(self) -> set[str]:
        return {p for p, _ in self._entries}

    def model_ids(self) -> list[str]:
        return list(self._by_model)

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def parse_api_json(
    data: Any, source: str, *, strict: bool = True, source_for: Mapping[str, str] | None = None
) -> tuple[list[CatalogEntry], list[PriceTableError]]:
    """Parse models.dev-shaped data. Models without a `cost` are skipped.

    With `strict`, the first bad model raises; otherwise bad models are skipped and
    their errors returned, so one bad row in a 5,000-model catalog costs one model.
    """
    if not isinstance(data, Mapping):
        raise PriceTableError(source, "top level must be an object of providers")
    entries: list[CatalogEntry] = []
    errors: list[PriceTableError] = []
    for provider_id, provider in data.items():
        models = provider.get("models") if isinstance(provider, Mapping) else None
        if not isinstance(models, Mapping):
            error = PriceTableError(source, f"provider {provider_id!r} has no 'models' object")
            if strict:
                raise error
            errors.append(error)
            continue
        label = (source_for or {}).get(str(provider_id), source)
        for model_id, model in models.items():
            try:
                entry = _parse_model(str(provider_id).lower(), str(model_id), model, label, source)
            except PriceTableError as error:
                if strict:
                    raise
                errors.append(error)
                continue
            if entry is not None:
                entries.append(entry)
    return entries, errors


def _parse_model(
    provider: str, model_id: str, model: Any, label: str, where: str
) -> CatalogEntry | None:
    if not isinstance(model, Mapping):
        raise PriceTableError(where, "must be an object", model=f"{provider}/{model_id}")
    cost = model.get("cost")
    if cost is None:
        return None
    qualified = f"{provider}/{model_id}"
    prices, tiers = _parse_cost(cost, where, qualified, "cost")
    modes: dict[str, Prices] = {}
    mode_tiers: dict[str, tuple[Tier, ...]] = {}
    experimental = model.get("experimental")
    raw_modes = experimental.get("modes") if isinstance(experimental, Mapping) else None
    if isinstance(raw_modes, Mapping):
        for mode_name, mode in raw_modes.items():
            if not isinstance(mode, Mapping) or not isinstance(mode.get("cost"), Mapping):
                continue
            path = f"experimental.modes.{mode_name}.cost"
            # A mode's missing prices stay missing (the calculator falls back to its input
            # or output price, flagged): a batch discount says nothing about cache reads.
            mode_prices, tiers_of_mode = _parse_cost(mode["cost"], where, qualified, path)
            for name in _mode_names(str(mode_name), mode):
                modes.setdefault(name, mode_prices)
                mode_tiers.setdefault(name, tiers_of_mode)
    limit: Mapping[str, Any] = model["limit"] if isinstance(model.get("limit"), Mapping) else {}
    return CatalogEntry(
        provider=provider,
        model_id=model_id,
        name=str(model.get("name") or model_id),
        family=model.get("family") if isinstance(model.get("family"), str) else None,
        prices=prices,
        tiers=tiers,
        modes=modes,
        mode_tiers=mode_tiers,
        context_limit=_optional_int(limit.get("context")),
        output_limit=_optional_int(limit.get("output")),
        source=label,
    )


_BOTH = ("input", "output")


def _parse_cost(
    cost: Mapping[str, Any], where: str, model: str, path: str
) -> tuple[Prices, tuple[Tier, ...]]:
    """A `cost` object: its prices and its context tiers (`tiers` or `context_over_200k`)."""
    prices = _parse_prices(cost, where, model, path, _BOTH)
    tiers = []
    raw_tiers = cost.get("tiers") or []
    if not isinstance(raw_tiers, list):
        raise PriceTableError(where, "must be a list", model=model, field=f"{path}.tiers")
    for i, raw in enumerate(raw_tiers):
        tier_path = f"{path}.tiers[{i}]"
        spec = raw.get("tier") if isinstance(raw, Mapping) else None
        size = spec.get("size") if isinstance(spec, Mapping) else None
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise PriceTableError(
                where, "needs a positive integer size", model=model, field=f"{tier_path}.tier.size"
            )
        kind = spec.get("type", "context") if isinstance(spec, Mapping) else "context"
        if kind != "context":
            continue  # only prompt-size tiers are defined by models.dev today
        tier_prices = _parse_prices(raw, where, model, tier_path, _BOTH)
        tiers.append(Tier(size, _tier_prices(tier_prices, prices)))
    legacy = cost.get("context_over_200k")
    if legacy is not None and not any(t.size == 200_000 for t in tiers):
        legacy_path = f"{path}.context_over_200k"
        tier_prices = _parse_prices(legacy, where, model, legacy_path, _BOTH)
        tiers.append(Tier(200_000, _tier_prices(tier_prices, prices)))
    return prices, tuple(sorted(tiers, key=lambda t: t.size))


_INPUT_SIDE = ("cache_read", "cache_write", "cache_write_1h", "input_audio")
_OUTPUT_SIDE = ("reasoning", "output_audio")


def _tier_prices(tier: Prices, base: Prices) -> Prices:
    """Fill a tier's missing prices from the base, scaled like its input or output price.

    Long-context tiers raise every input-side price by the same factor (Anthropic's
    1M-context cache writes, Gemini's cache reads), so scaling beats copying the base.
    """
    filled = {}
    for names, tier_rate, base_rate in (
        (_INPUT_SIDE, tier.input, base.input),
        (_OUTPUT_SIDE, tier.output, base.output),
    ):
        for name in names:
            own, fallback = getattr(tier, name), getattr(base, name)
            if own is None and fallback is not None and base_rate:
                own = fallback * tier_rate / base_rate
            filled[name] = own
    return Prices(input=tier.input, output=tier.output, **filled)


def _mode_names(name: str, mode: Mapping[str, Any]) -> list[str]:
    """A mode answers to its own name and to the service tier it sends (models.dev's
    `fast` mode is OpenAI's `priority` tier)."""
    names = [name.lower()]
    provider = mode.get("provider")
    body = provider.get("body") if isinstance(provider, Mapping) else None
    if isinstance(body, Mapping):
        for key in ("service_tier", "speed"):
            if isinstance(body.get(key), str):
                names.append(body[key].lower())
    return names


def _parse_prices(
    raw: Any, where: str, model: str, path: str, require: tuple[str, ...] = ()
) -> Prices:
    if not isinstance(raw, Mapping):
        raise PriceTableError(where, "must be an object", model=model, field=path)
    values: dict[str, Decimal] = {}
    for key, value in raw.items():
        name = _FIELD_ALIASES.get(key, key)
        if name in _IGNORED_COST_KEYS or key == "tier":
            continue
        if name not in PRICE_FIELDS:
            continue  # models.dev adds fields over time; unknown ones are not ours to price
        values[name] = _price(value, where, model, f"{path}.{key}")
    for name in require:
        if name not in values:
            raise PriceTableError(where, "is required", model=model, field=f"{path}.{name}")
    return Prices(
        input=values.get("input", Decimal(0)),
        output=values.get("output", Decimal(0)),
        **{f: values.get(f) for f in PRICE_FIELDS[2:]},
    )


def _price(value: Any, where: str, model: str, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise PriceTableError(where, f"must be a number, got {value!r}", model=model, field=path)
    try:
        # str() of a float is its shortest round-trip text, the digits the file held.
        price = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise PriceTableError(
            where, f"must be a number, got {value!r}", model=model, field=path
        ) from None
    if not price.is_finite():
        raise PriceTableError(where, f"must be finite, got {value!r}", model=model, field=path)
    if price < 0:
        raise PriceTableError(where, f"must not be negative, got {value}", model=model, field=path)
    return price


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_json_text(text: str | bytes, source: str) -> Any:
    """Parse JSON with every number as an exact Decimal."""
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceTableError(source, f"invalid JSON: {exc}") from None


def load_file(
    path: Path, *, strict: bool = True
) -> tuple[list[CatalogEntry], list[PriceTableError]]:
    """Load a models.dev-shaped JSON or TOML file (the override file's formats)."""
    label = f"override:{path}"
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise PriceTableError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(raw_bytes.decode("utf-8"), parse_float=Decimal)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PriceTableError(str(path), f"invalid TOML: {exc}") from None
    else:
        data = load_json_text(raw_bytes, str(path))
    return parse_api_json(data, str(path), strict=strict, source_for=_labels(data, label))


def _labels(data: Any, label: str) -> dict[str, str]:
    return {str(p): label for p in data} if isinstance(data, Mapping) else {}


# --- the three layers -------------------------------------------------------------

BUNDLED_RESOURCE = "prices.json"


def bundled_entries() -> list[CatalogEntry]:
    """The curated table shipped in the package, labelled `bundled:<as_of>`."""
    text = resources.files("modelforge.pricing.data").joinpath(BUNDLED_RESOURCE).read_bytes()
    data = load_json_text(text, "bundled prices.json")
    labels = {
        str(pid): f"bundled:{p.get('as_of', 'unknown')}"
        for pid, p in data.items()
        if isinstance(p, Mapping)
    }
    entries, _ = parse_api_json(data, "bundled prices.json", strict=True, source_for=labels)
    return entries


def models_dev_cache_path() -> Path:
    return config.cache_dir() / "models-dev.json"


def models_dev_meta_path() -> Path:
    return config.cache_dir() / "models-dev.meta.json"


def models_dev_entries() -> list[CatalogEntry]:
    """The catalog last fetched by `modelforge prices update`, if any."""
    path = models_dev_cache_path()
    if not path.exists():
        return []
    try:
        meta = json.loads(models_dev_meta_path().read_text("utf-8"))
        fetched_at = str(meta.get("fetched_at", "unknown"))
    except (OSError, ValueError, AttributeError):
        fetched_at = "unknown"
    try:
        data = load_json_text(path.read_bytes(), str(path))
        entries, errors = parse_api_json(data, str(path), strict=False)
    except (OSError, PriceTableError) as exc:
        config.warn_once(f"models-dev:{path}", f"ignoring cached models.dev catalog: {exc}")
        return []
    if errors:
        config.warn_once(
            f"models-dev-rows:{path}",
            f"skipped {len(errors)} malformed models in {path}; first: {errors[0]}",
        )
    label = f"models.dev:{fetched_at}"
    return [_relabel(e, label) for e in entries]


def _relabel(entry: CatalogEntry, label: str) -> CatalogEntry:
    return dataclasses.replace(entry, source=label)


def override_path() -> Path | None:
    """`MODELFORGE_PRICES`, else `prices.toml` / `prices.json` in the config dir."""
    env = os.environ.get("MODELFORGE_PRICES")
    if env:
        return Path(env).expanduser()
    for name in ("prices.toml", "prices.json"):
        candidate = config.config_dir() / name
        if candidate.exists():
            return candidate
    return None


def override_entries() -> list[CatalogEntry]:
    path = override_path()
    if path is None:
        return []
    entries, _ = load_file(path, strict=True)
    return entries


_lock = threading.Lock()
_catalog: Catalog | None = None


def get_catalog() -> Catalog:
    """The merged catalog, built once on first use."""
    global _catalog
    if _catalog is None:
        with _lock:
            if _catalog is None:
                catalog = Catalog(bundled_entries())
                catalog.update(models_dev_entries())
                catalog.update(override_entries())
                _catalog = catalog
    return _catalog


def set_catalog(catalog: Catalog | None) -> None:
    """Swap the catalog (None rebuilds it from the layers on next use)."""
    global _catalog
    from modelforge.pricing.resolve import clear_cache

    with _lock:
        _catalog = catalog
    clear_cache()
