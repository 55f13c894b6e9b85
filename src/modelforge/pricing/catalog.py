"""Price tables in models.dev `api.json` shape, parsed into exact `Decimal` prices.

Four layers, highest first, each naming itself in the `source` of the prices it gives:

1. the user's override file (`override:<path>`);
2. the catalog fetched by `modelforge prices update` (`fetched:<date>`);
3. the curated table bundled with the package, each price checked on the provider's
   page (`curated:<date>`);
4. the base layer bundled with the package, generated from a models.dev snapshot by
   `scripts/build_base_prices.py` (`models.dev:<snapshot>`).

A higher layer's row for a (provider, model id) replaces a lower one's. A layer is read
the first time a lookup reaches it and each row is parsed the first time it is asked
for, so pricing a model the curated table lists never reads the 5,000-model base layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import reprlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from modelforge import config
from modelforge.errors import PriceTableError

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
# No real price comes near these bounds; beyond them a value is a typo or an attack, and
# would overflow the Decimal arithmetic of a cost.
MAX_PRICE = Decimal(1_000_000)  # USD per 1M tokens, i.e. $1 a token
MAX_DECIMALS = 20
STALE_AFTER_DAYS = 120
STALE_NOTICE_SWITCH = "MODELFORGE_STALE_PRICES"


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


# --- parsing one models.dev model object ---------------------------------------------


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
                entry = parse_model(str(provider_id).lower(), str(model_id), model, label, source)
            except PriceTableError as error:
                if strict:
                    raise
                errors.append(error)
                continue
            if entry is not None:
                entries.append(entry)
    return entries, errors


def parse_model(
    provider: str, model_id: str, model: Any, label: str, where: str
) -> CatalogEntry | None:
    """One models.dev model object as a catalog entry (None if it has no `cost`)."""
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
    def bad(message: str) -> PriceTableError:
        return PriceTableError(where, message, model=model, field=path)

    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise bad(f"must be a number, got {reprlib.repr(value)}")
    try:
        if isinstance(value, Decimal):
            price = value
        elif isinstance(value, int):
            price = Decimal(value)  # str() of a huge int is refused by Python itself
        else:
            # str() of a float is its shortest round-trip text, the digits the file held.
            price = Decimal(str(value))
    except InvalidOperation:
        raise bad(f"must be a number, got {reprlib.repr(value)}") from None
    if not price.is_finite():
        raise bad(f"must be finite, got {reprlib.repr(value)}")
    if price < 0:
        raise bad(f"must not be negative, got {reprlib.repr(value)}")
    if price > MAX_PRICE:
        raise bad(f"must be at most {MAX_PRICE} USD per 1M tokens, got {reprlib.repr(value)}")
    if price and price.as_tuple().exponent < -MAX_DECIMALS:  # type: ignore[operator]
        raise bad(f"must have at most {MAX_DECIMALS} decimal places, got {reprlib.repr(value)}")
    return price


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_json_text(text: str | bytes, source: str) -> Any:
    """Parse JSON with every number as an exact Decimal."""
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceTableError(source, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise PriceTableError(source, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer too long to convert, bad UTF-8
        raise PriceTableError(source, f"invalid JSON: {exc}") from None


def read_price_file(path: Path) -> Any:
    """A JSON or TOML price file (the override file's formats), numbers as Decimals."""
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise PriceTableError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if path.suffix.lower() != ".toml":
        return load_json_text(raw_bytes, str(path))
    # Imported here: only a TOML override file needs it, and it costs ~5 ms to import.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(raw_bytes.decode("utf-8"), parse_float=Decimal)
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # also bad UTF-8, huge integers
        raise PriceTableError(str(path), f"invalid TOML: {exc}") from None
    except RecursionError:
        raise PriceTableError(str(path), "invalid TOML: nested too deeply") from None


def load_file(
    path: Path, *, strict: bool = True
) -> tuple[list[CatalogEntry], list[PriceTableError]]:
    """Parse a models.dev-shaped JSON or TOML file, labelled `override:<path>`."""
    data = read_price_file(path)
    labels = {str(p): f"override:{path}" for p in data} if isinstance(data, Mapping) else {}
    return parse_api_json(data, str(path), strict=strict, source_for=labels)


# --- the compact, model-major form of the base and fetched layers --------------------

COMPACT_FORMAT = "modelforge-prices/1"
_COST_KEYS = frozenset({*PRICE_FIELDS, *_FIELD_ALIASES, "tiers", "context_over_200k"})


def compact(data: Any, *, source: str, as_of: str) -> dict[str, Any]:
    """A models.dev `api.json` as the compact file the base and fetched layers load.

    Rows are keyed by lower-cased model id, then provider, so a lookup needs no index
    built at load time. Each row keeps only what `parse_model` reads; its `id` is kept
    only where it differs from the key.
    """
    if not isinstance(data, Mapping):
        raise PriceTableError(source, "top level must be an object of providers")
    models: dict[str, dict[str, Any]] = {}
    for provider_id, provider in data.items():
        rows = provider.get("models") if isinstance(provider, Mapping) else None
        if not isinstance(rows, Mapping):
            continue
        for model_id, raw in rows.items():
            if not isinstance(raw, Mapping) or raw.get("cost") is None:
                continue
            key = str(model_id).lower()
            models.setdefault(key, {})[str(provider_id).lower()] = _compact_row(str(model_id), raw)
    return {"format": COMPACT_FORMAT, "source": source, "as_of": as_of, "models": models}


def _compact_row(model_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if model_id != model_id.lower():
        row["id"] = model_id
    if isinstance(raw.get("name"), str) and raw["name"] != model_id:
        row["name"] = raw["name"]
    row["cost"] = _compact_cost(raw["cost"])
    limit = raw.get("limit")
    if isinstance(limit, Mapping):
        kept = {k: limit[k] for k in ("context", "output") if _optional_int(limit.get(k))}
        if kept:
            row["limit"] = kept
    experimental = raw.get("experimental")
    modes = experimental.get("modes") if isinstance(experimental, Mapping) else None
    if isinstance(modes, Mapping):
        kept_modes = {
            str(name): _compact_mode(mode)
            for name, mode in modes.items()
            if isinstance(mode, Mapping) and isinstance(mode.get("cost"), Mapping)
        }
        if kept_modes:
            row["experimental"] = {"modes": kept_modes}
    return row


def _compact_cost(cost: Any) -> Any:
    if not isinstance(cost, Mapping):
        return cost  # left for `parse_model` to report
    kept = {k: v for k, v in cost.items() if k in _COST_KEYS}
    tiers = kept.get("tiers")
    if isinstance(tiers, list) and any(
        isinstance(t, Mapping)
        and isinstance(t.get("tier"), Mapping)
        and t["tier"].get("size") == 200_000
        for t in tiers
    ):
        kept.pop("context_over_200k", None)  # the parser prefers the tier anyway
    return kept


def _compact_mode(mode: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"cost": _compact_cost(mode["cost"])}
    provider = mode.get("provider")
    body = provider.get("body") if isinstance(provider, Mapping) else None
    if isinstance(body, Mapping):
        sent = {k: body[k] for k in ("service_tier", "speed") if isinstance(body.get(k), str)}
        if sent:
            out["provider"] = {"body": sent}
    return out


# --- layers ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerData:
    """What a layer holds once read."""

    # lower-cased model id -> provider -> models.dev model object or parsed entry
    models: Mapping[str, Mapping[str, Any]]
    label: str
    where: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)  # per-provider labels
    # provider -> lower-cased alias -> the model id it stands for
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    as_of: date | None = None


EMPTY = LayerData(models={}, label="")


class Layer:
    """One price source, read on first use; each row parsed on first lookup."""

    def __init__(self, name: str, load: Callable[[], LayerData]) -> None:
        self.name = name
        self._load = load
        self._data: LayerData | None = None
        self._entries: dict[tuple[str, str], CatalogEntry | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def of_entries(cls, name: str, entries: Iterable[CatalogEntry]) -> Layer:
        models: dict[str, dict[str, Any]] = {}
        for entry in entries:
            models.setdefault(entry.model_id.lower(), {})[entry.provider] = entry
        data = LayerData(models=models, label=name)
        return cls(name, lambda: data)

    @property
    def data(self) -> LayerData:
        data = self._data
        if data is None:
            with self._lock:
                if self._data is None:
                    self._data = self._load()
                data = self._data
        return data

    @property
    def as_of(self) -> date | None:
        return self.data.as_of

    @property
    def loaded(self) -> bool:
        return self._data is not None

    def _rows(self, key: str) -> Mapping[str, Any]:
        rows = self.data.models.get(key)
        return rows if isinstance(rows, Mapping) else {}  # a damaged fetched file: skip

    def providers_of(self, key: str) -> Iterable[str]:
        return self._rows(key).keys()

    def entry(self, provider: str, key: str) -> CatalogEntry | None:
        """The entry for `provider` and lower-cased model id `key`, if this layer has one."""
        try:
            return self._entries[(provider, key)]
        except KeyError:
            pass
        row = self._rows(key).get(provider)
        if row is None:
            return None  # not remembered: misses are cheap, and ids from callers unbounded
        data = self.data
        entry = None
        if isinstance(row, CatalogEntry):
            entry = row
        else:
            label = data.labels.get(provider, data.label)
            try:
                entry = parse_model(provider, _row_id(row, key), row, label, data.where)
            except PriceTableError as exc:
                # A bad row costs its own model only; lower layers may still price it.
                config.warn_once(f"price-row:{exc}", f"skipping a malformed price row: {exc}")
        self._entries[(provider, key)] = entry
        return entry

    def alias(self, provider: str, key: str) -> str | None:
        return self.data.aliases.get(provider, {}).get(key)

    def entries(self) -> list[CatalogEntry]:
        """Every entry this layer prices; a malformed row is skipped, as in lookups."""
        return [
            entry
            for key in self.data.models
            for provider in self.providers_of(key)
            if (entry := self.entry(provider, key)) is not None
        ]


def _row_id(row: Any, key: str) -> str:
    """A row's model id: its own `id` where it keeps one, else its lower-cased key."""
    model_id = row.get("id") if isinstance(row, Mapping) else None
    return model_id if isinstance(model_id, str) else key


class Catalog:
    """Price layers, highest first, looked up by provider and model id (any case)."""

    def __init__(
        self,
        entries: Iterable[CatalogEntry] = (),
        *,
        layers: Sequence[Layer] = (),
        rejected: Sequence[PriceTableError] = (),
    ) -> None:
        given = list(entries)
        top = [Layer.of_entries("entries", given)] if given or not layers else []
        self.layers: tuple[Layer, ...] = (*top, *layers)
        # Errors of an override file rejected at load; its prices are not in any layer.
        self.rejected: tuple[PriceTableError, ...] = tuple(rejected)

    def get(self, provider: str, model_id: str) -> CatalogEntry | None:
        key = model_id.lower()
        found: CatalogEntry | None = None
        for layer in self.layers:
            entry = layer.entry(provider, key)
            if entry is None:
                continue
            if found is not None:
                # The fetched models.dev rows list no long-context tiers: a row there
                # does not mean the curated tier (Sonnet 4.5 over 200K) stopped applying.
                return dataclasses.replace(found, tiers=entry.tiers) if entry.tiers else found
            if layer.name != "fetched" or entry.tiers:
                return entry
            found = entry
        return found

    def by_model(self, model_id: str) -> list[CatalogEntry]:
        """Every provider's entry for `model_id`, in layer order (reads every layer)."""
        key = model_id.lower()
        found: dict[str, CatalogEntry] = {}
        for layer in self.layers:
            for provider in layer.providers_of(key):
                if provider not in found:
                    entry = self.get(provider, key)
                    if entry is not None:
                        found[provider] = entry
        return list(found.values())

    def alias(self, provider: str, model_id: str) -> str | None:
        """The model id that `provider` documents `model_id` as an alias of, if any."""
        key = model_id.lower()
        for layer in self.layers:
            target = layer.alias(provider, key)
            if target is not None:
                return target
        return None

    def providers(self) -> set[str]:
        return {
            p for layer in self.layers for key in layer.data.models for p in layer.providers_of(key)
        }

    def model_ids(self) -> list[str]:
        ids: dict[str, None] = {}
        for layer in self.layers:
            ids.update(dict.fromkeys(layer.data.models))
        return list(ids)

    def __iter__(self) -> Iterator[CatalogEntry]:
        for key in self.model_ids():
            yield from self.by_model(key)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# --- the four layers ---------------------------------------------------------------

CURATED_RESOURCE = "prices.json"
BASE_RESOURCE = "base_prices.json"


def _as_date(text: str) -> date | None:
    """`2026-11-22`, `2026-11-22T09:30:00Z` or a month, `2026-07` (its first day)."""
    try:
        if len(text) == 7:
            return date.fromisoformat(f"{text}-01")
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _by_model(data: Any, where: str) -> dict[str, dict[str, Any]]:
    """Provider-major models.dev data as the model-major rows layers hold."""
    if not isinstance(data, Mapping):
        raise PriceTableError(where, "top level must be an object of providers")
    models: dict[str, dict[str, Any]] = {}
    for provider_id, provider in data.items():
        rows = provider.get("models") if isinstance(provider, Mapping) else None
        if not isinstance(rows, Mapping):
            raise PriceTableError(where, f"provider {provider_id!r} has no 'models' object")
        for model_id, raw in rows.items():
            if isinstance(raw, Mapping):
                if raw.get("cost") is None:
                    continue
                if raw.get("id") != model_id:
                    raw = {**raw, "id": str(model_id)}
            models.setdefault(str(model_id).lower(), {})[str(provider_id).lower()] = raw
    return models


def _aliases(data: Any, where: str) -> dict[str, dict[str, str]]:
    """Each provider's `aliases` object: alias id -> the model id it points to."""
    out: dict[str, dict[str, str]] = {}
    for provider_id, provider in data.items():
        raw = provider.get("aliases") if isinstance(provider, Mapping) else None
        if raw is None:
            continue
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise PriceTableError(
                where, "must map alias ids to model ids", field=f"{provider_id}.aliases"
            )
        out[str(provider_id).lower()] = {k.lower(): v for k, v in raw.items()}
    return out


def curated_data() -> LayerData:
    """The curated table shipped in the package; each provider labelled `curated:<as_of>`."""
    where = f"curated {CURATED_RESOURCE}"
    text = resources.files("modelforge.pricing.data").joinpath(CURATED_RESOURCE).read_bytes()
    data = load_json_text(text, where)
    models = _by_model(data, where)
    dates = {str(pid).lower(): str(p.get("as_of", "unknown")) for pid, p in data.items()}
    as_of = [d for d in map(_as_date, dates.values()) if d is not None]
    return LayerData(
        models=models,
        label="curated:unknown",
        where=where,
        labels={pid: f"curated:{day}" for pid, day in dates.items()},
        aliases=_aliases(data, where),
        as_of=max(as_of, default=None),
    )


def curated_entries() -> list[CatalogEntry]:
    """Every entry of the curated table, parsed strictly (a bad row raises)."""
    data = curated_data()
    return [
        entry
        for key, rows in data.models.items()
        for provider, row in rows.items()
        if (
            entry := parse_model(
                provider, _row_id(row, key), row, data.labels[provider], data.where
            )
        )
    ]


def _compact_data(data: Any, where: str, label: str) -> LayerData:
    """A compact file (or, from older versions, a whole api.json) as layer data."""
    if isinstance(data, Mapping) and data.get("format") == COMPACT_FORMAT:
        models = data.get("models")
        if not isinstance(models, Mapping):
            raise PriceTableError(where, "has no 'models' object")
        return LayerData(models=models, label=label, where=where)
    return LayerData(models=_by_model(data, where), label=label, where=where)


def base_data() -> LayerData:
    """The base layer generated from a models.dev snapshot, labelled `models.dev:<date>`."""
    where = f"base {BASE_RESOURCE}"
    text = resources.files("modelforge.pricing.data").joinpath(BASE_RESOURCE).read_bytes()
    data = load_json_text(text, where)
    snapshot = str(data.get("as_of", "unknown")) if isinstance(data, Mapping) else "unknown"
    layer = _compact_data(data, where, f"models.dev:{snapshot}")
    return LayerData(models=layer.models, label=layer.label, where=where, as_of=_as_date(snapshot))


def base_entries() -> list[CatalogEntry]:
    """Every entry of the base layer, parsed strictly (a bad row raises)."""
    data = base_data()
    return [
        entry
        for key, rows in data.models.items()
        for provider, row in rows.items()
        if (entry := parse_model(provider, _row_id(row, key), row, data.label, data.where))
    ]


def models_dev_cache_path() -> Path:
    return config.cache_dir() / "models-dev.json"


def models_dev_meta_path() -> Path:
    return config.cache_dir() / "models-dev.meta.json"


def fetched_at() -> str | None:
    """When `modelforge prices update` last wrote the fetched layer (ISO 8601 UTC)."""
    try:
        meta = json.loads(models_dev_meta_path().read_text("utf-8"))
        return str(meta["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetched_data() -> LayerData:
    """The catalog last fetched by `modelforge prices update`, labelled `fetched:<date>`."""
    path = models_dev_cache_path()
    if not path.exists():
        return EMPTY
    stamp = fetched_at()
    label = f"fetched:{stamp[:10] if stamp else 'unknown'}"
    try:
        layer = _compact_data(load_json_text(path.read_bytes(), str(path)), str(path), label)
    except (OSError, PriceTableError) as exc:
        config.warn_once(f"fetched:{path}", f"ignoring the fetched price catalog: {exc}")
        return EMPTY
    return LayerData(
        models=layer.models,
        label=label,
        where=str(path),
        as_of=_as_date(stamp) if stamp else None,
    )


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


def override_data(path: Path) -> LayerData:
    """The override file, parsed strictly at once: any bad value rejects the whole file."""
    data = read_price_file(path)
    label = f"override:{path}"
    entries, _ = parse_api_json(data, str(path), strict=True, source_for=_labels(data, label))
    models: dict[str, dict[str, Any]] = {}
    for entry in entries:
        models.setdefault(entry.model_id.lower(), {})[entry.provider] = entry
    return LayerData(models=models, label=label, where=str(path), aliases=_aliases(data, str(path)))


def _labels(data: Any, label: str) -> dict[str, str]:
    return {str(p): label for p in data} if isinstance(data, Mapping) else {}


def _override_layer() -> tuple[list[Layer], list[PriceTableError]]:
    path = override_path()
    if path is None:
        return [], []
    try:
        data = override_data(path)
    except PriceTableError as exc:
        config.warn_once(
            f"override:{exc}",
            f"ignoring the price override file until it is fixed: {exc}; "
            "calls are priced from the other layers and flagged price_override_rejected",
        )
        return [], [exc]
    return [Layer("override", lambda: data)], []


def build_catalog() -> Catalog:
    """The four layers. The override file is read now, so a bad one is reported at once."""
    layers, rejected = _override_layer()
    layers += [
        Layer("fetched", fetched_data),
        Layer("curated", curated_data),
        Layer("base", base_data),
    ]
    return Catalog(layers=layers, rejected=rejected)


_lock = threading.Lock()
_catalog: Catalog | None = None


def get_catalog() -> Catalog:
    """The layered catalog, built once on first use."""
    global _catalog
    catalog = _catalog
    if catalog is None:
        with _lock:
            if _catalog is None:
                _catalog = build_catalog()
            catalog = _catalog
    return catalog


def set_catalog(catalog: Catalog | None) -> None:
    """Swap the catalog (None rebuilds it from the layers on next use)."""
    global _catalog
    from modelforge.pricing.resolve import clear_cache

    with _lock:
        _catalog = catalog
    clear_cache()


def check_override() -> None:
    """Raise the error that made the override file be rejected, if it was."""
    rejected = get_catalog().rejected
    if rejected:
        raise rejected[0]


def stale_after_days() -> int | None:
    """`MODELFORGE_STALE_PRICES`: `off` (or 0, false…) turns the notice off, a number of
    days replaces the default `STALE_AFTER_DAYS`."""
    switch = os.environ.get(STALE_NOTICE_SWITCH, "").strip().lower()
    if not switch:
        return STALE_AFTER_DAYS
    if switch in config.FALSE_WORDS:
        return None
    if switch.isdigit() and len(switch) <= 6:
        return int(switch)
    config.warn_once(
        f"env:{STALE_NOTICE_SWITCH}={switch}",
        f"{STALE_NOTICE_SWITCH}={switch!r} is neither off nor a number of days; "
        f"using {STALE_AFTER_DAYS}",
    )
    return STALE_AFTER_DAYS


def staleness_notice(today: date | None = None) -> str | None:
    """One line suggesting `modelforge prices update` when the newest dated layer in use
    is more than `STALE_AFTER_DAYS` old, else None. The override file has no date and is
    not counted. `MODELFORGE_STALE_PRICES=off` turns the notice off."""
    limit = stale_after_days()
    if limit is None:
        return None
    dated = [d for layer in get_catalog().layers if (d := layer.as_of) is not None]
    if not dated:
        return None
    newest = max(dated)
    today = today or datetime.now(timezone.utc).date()
    age = (today - newest).days
    if age <= limit:
        return None
    return (
        f"Prices were last checked on {newest.isoformat()} ({age} days ago); run "
        f"`modelforge prices update` to refresh them ({STALE_NOTICE_SWITCH}=off hides this)."
    )
