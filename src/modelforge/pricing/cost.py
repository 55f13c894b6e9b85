"""The calculator: one `Usage` and one catalog entry in, an exact `Decimal` `Cost` out.

Every token class is priced exactly once. Parts of `input_tokens` (cache reads, cache
writes, input audio) are taken out of it before the plain input price applies, and
parts of `output_tokens` (reasoning, output audio) likewise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal

from modelforge.errors import UnknownModelError
from modelforge.pricing.catalog import CatalogEntry, Prices
from modelforge.pricing.resolve import get_resolver
from modelforge.usage import STANDARD_SERVICE_TIERS, Usage

ZERO = Decimal(0)
# Anthropic's published multipliers for cache writes, used when a table gives no price.
ANTHROPIC_CACHE_WRITE_5M = Decimal("1.25")
ANTHROPIC_CACHE_WRITE_1H = Decimal(2)


@dataclass(frozen=True, slots=True)
class Cost:
    """The USD cost of one call, split by token class. `total` is None when unpriced."""

    input: Decimal = ZERO
    cache_read: Decimal = ZERO
    cache_write: Decimal = ZERO
    output: Decimal = ZERO
    reasoning: Decimal = ZERO
    audio: Decimal = ZERO
    total: Decimal | None = None
    priced: bool = False
    model: str = ""
    provider: str | None = None
    entry: CatalogEntry | None = field(default=None, repr=False)
    source: str | None = None
    flags: tuple[str, ...] = ()
    currency: str = "USD"

    @property
    def catalog_model(self) -> str | None:
        """`provider/model_id` of the entry that priced this call."""
        return self.entry.key if self.entry else None


def price(model: str, usage: Usage, provider: str | None = None, strict: bool = False) -> Cost:
    """Price `usage` for `model`.

    An unknown model gives `Cost(total=None, priced=False)`, or with `strict=True`
    raises `UnknownModelError` naming close matches.

    >>> from modelforge import Usage, price
    >>> cost = price("gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    >>> cost.total == Decimal("0.0035")  # (1000 × $2.50 + 100 × $10) per 1M tokens
    True
    """
    resolver = get_resolver()
    entry = resolver.resolve(model, provider)
    if entry is None:
        if strict:
            raise UnknownModelError(model, provider, resolver.close_matches(model))
        cost = Cost(model=model, provider=provider, flags=("unknown_model",))
    else:
        cost = cost_for(entry, usage, model)
    if resolver.catalog.rejected:
        # The override file was rejected at load: its prices, which may have been meant
        # for this model, are not applied.
        cost = dataclasses.replace(cost, flags=(*cost.flags, "price_override_rejected"))
    return cost


def cost_for(entry: CatalogEntry, usage: Usage, model: str | None = None) -> Cost:
    """Price `usage` with the prices of one catalog entry."""
    flags: list[str] = []
    if usage.cache_hit:
        return Cost(
            total=ZERO,
            priced=True,
            model=model or entry.model_id,
            provider=entry.provider,
            entry=entry,
            source=entry.source,
            flags=("cache_hit",),
        )
    prices = entry.prices
    mode_name = None
    service_tier = usage.service_tier
    if service_tier and service_tier not in STANDARD_SERVICE_TIERS:
        mode = entry.modes.get(service_tier)
        if mode is None:
            flags.append("tier_unpriced")
        else:
            prices, mode_name = mode, service_tier
            flags.append(f"service_tier:{service_tier}")
    if entry.tiers or mode_name:
        tier = entry.tier_for(usage.input_tokens, mode_name)
        if tier is not None:
            prices = tier.prices
            flags.append(f"context_tier>{tier.size}")
        elif mode_name and entry.tier_for(usage.input_tokens) is not None:
            # Long-context price of the standard tier applies, but the mode gives none.
            flags.append("context_tier_unpriced")
    read = usage.cache_read_tokens
    write_5m = usage.cache_write_tokens
    write_1h = usage.cache_write_1h_tokens
    audio_in = usage.input_audio_tokens
    audio_out = usage.output_audio_tokens
    reasoning_tokens = usage.reasoning_tokens
    # Prices are per 1M tokens. Multiplying by 1E-6 only shifts the exponent, so it is
    # exact, and every step is then the same one Decimal operation.
    text_in = prices.input * (usage.input_tokens - read - write_5m - write_1h - audio_in) * _MICRO
    text_out = prices.output * (usage.output_tokens - reasoning_tokens - audio_out) * _MICRO
    if not (read or write_5m or write_1h or audio_in or audio_out or reasoning_tokens):
        # The sum below with every part unused: after the first 0E-6 the others add
        # nothing (the sum's exponent is already at most -6).
        total = ZERO + text_in + _UNUSED + text_out
        return _priced_cost(
            text_in, _UNUSED, _UNUSED, text_out, _UNUSED, _UNUSED, total,
            model or entry.model_id, entry, tuple(flags),
        )  # fmt: skip
    cache_read = cache_write = audio = reasoning = _UNUSED
    if read:
        rate = prices.cache_read
        if rate is None:
            rate = prices.input
            flags.append("cache_read_at_input_price")
        cache_read = rate * read * _MICRO
    if write_5m or write_1h:
        cache_write = _cache_writes(entry, prices, usage, flags) * _MICRO
    if audio_in or audio_out:
        audio = ZERO
        if audio_in:
            rate = prices.input_audio if prices.input_audio is not None else prices.input
            audio = rate * audio_in
        if audio_out:
            rate = prices.output_audio if prices.output_audio is not None else prices.output
            audio += rate * audio_out
        audio = audio * _MICRO
    if reasoning_tokens:
        rate = prices.reasoning if prices.reasoning is not None else prices.output
        reasoning = rate * reasoning_tokens * _MICRO
    total = ZERO + text_in + cache_read + cache_write + text_out + reasoning + audio
    return _priced_cost(
        text_in, cache_read, cache_write, text_out, reasoning, audio, total,
        model or entry.model_id, entry, tuple(flags),
    )  # fmt: skip


_MICRO = Decimal("1E-6")
# What a token class the call did not use adds: `0E-6`, as `ZERO.scaleb(-6)` always gave.
_UNUSED = ZERO.scaleb(-6)
_new = object.__new__
(
    _set_input, _set_cache_read, _set_cache_write, _set_output, _set_reasoning, _set_audio,
    _set_total, _set_priced, _set_model, _set_provider, _set_entry, _set_source, _set_flags,
    _set_currency,
) = (Cost.__dict__[name].__set__ for name in Cost.__slots__)  # fmt: skip


def _priced_cost(
    input: Decimal,
    cache_read: Decimal,
    cache_write: Decimal,
    output: Decimal,
    reasoning: Decimal,
    audio: Decimal,
    total: Decimal,
    model: str,
    entry: CatalogEntry,
    flags: tuple[str, ...],
) -> Cost:
    """`Cost(...)` for the hot path. The frozen dataclass `__init__` makes 14
    `object.__setattr__` calls, which took longer than the pricing itself; the slot
    descriptors set the same fields at a third of the cost."""
    cost: Cost = _new(Cost)
    _set_input(cost, input)
    _set_cache_read(cost, cache_read)
    _set_cache_write(cost, cache_write)
    _set_output(cost, output)
    _set_reasoning(cost, reasoning)
    _set_audio(cost, audio)
    _set_total(cost, total)
    _set_priced(cost, True)
    _set_model(cost, model)
    _set_provider(cost, entry.provider)
    _set_entry(cost, entry)
    _set_source(cost, entry.source)
    _set_flags(cost, flags)
    _set_currency(cost, "USD")
    return cost


def is_anthropic_family(entry: CatalogEntry) -> bool:
    return entry.provider == "anthropic" or "claude" in entry.model_id.lower()


def _cache_writes(entry: CatalogEntry, prices: Prices, usage: Usage, flags: list[str]) -> Decimal:
    anthropic = is_anthropic_family(entry)
    five_min = prices.cache_write
    if five_min is None:
        if anthropic:
            five_min = prices.input * ANTHROPIC_CACHE_WRITE_5M
        else:
            five_min = prices.input
            if usage.cache_write_tokens:
                flags.append("cache_write_at_input_price")
    one_hour = prices.cache_write_1h
    if one_hour is None:
        one_hour = prices.input * ANTHROPIC_CACHE_WRITE_1H if anthropic else five_min
    return five_min * usage.cache_write_tokens + one_hour * usage.cache_write_1h_tokens
