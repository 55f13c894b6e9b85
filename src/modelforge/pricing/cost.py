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


def cost_for(
    entry: CatalogEntry,
    usage: Usage,
    model: str | None = None,
    *,
    tier_input_tokens: int | None = None,
) -> Cost:
    """Price `usage` with the prices of one catalog entry.

    `tier_input_tokens` is the prompt size that picks a long-context tier (default:
    `usage.input_tokens`). It lets the summed usage of many calls that share one tier be
    priced at that tier: costs are linear in the tokens within a tier.
    """
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
    flags: list[str] = []
    size = usage.input_tokens if tier_input_tokens is None else tier_input_tokens
    prices = _prices_for(entry, usage, size, flags)
    read = usage.cache_read_tokens
    write_5m = usage.cache_write_tokens
    write_1h = usage.cache_write_1h_tokens
    audio_in = usage.input_audio_tokens
    audio_out = usage.output_audio_tokens
    reasoning_tokens = usage.reasoning_tokens
    # Amounts per 1M tokens; each part is exact, as Decimal products of ints are.
    text_in = prices.input * (usage.input_tokens - read - write_5m - write_1h - audio_in)
    text_out = prices.output * (usage.output_tokens - reasoning_tokens - audio_out)
    cache_read = cache_write = audio = reasoning = ZERO
    if read:
        rate = prices.cache_read
        if rate is None:
            rate = prices.input
            flags.append("cache_read_at_input_price")
        cache_read = rate * read
    if write_5m or write_1h:
        cache_write = _cache_writes(entry, prices, usage, flags)
    if audio_in:
        audio = (prices.input_audio if prices.input_audio is not None else prices.input) * audio_in
    if audio_out:
        rate = prices.output_audio if prices.output_audio is not None else prices.output
        audio += rate * audio_out
    if reasoning_tokens:
        rate = prices.reasoning if prices.reasoning is not None else prices.output
        reasoning = rate * reasoning_tokens
    # Multiplying by 1E-6 only shifts the exponent, so it is exact too.
    parts = [
        part * _MICRO for part in (text_in, cache_read, cache_write, text_out, reasoning, audio)
    ]
    return Cost(
        input=parts[0],
        cache_read=parts[1],
        cache_write=parts[2],
        output=parts[3],
        reasoning=parts[4],
        audio=parts[5],
        total=sum(parts, ZERO),
        priced=True,
        model=model or entry.model_id,
        provider=entry.provider,
        entry=entry,
        source=entry.source,
        flags=tuple(flags),
    )


_MICRO = Decimal("1E-6")


def _prices_for(entry: CatalogEntry, usage: Usage, size: int, flags: list[str]) -> Prices:
    """The prices that apply: the service tier's mode, then any long-context tier."""
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
        tier = entry.tier_for(size, mode_name)
        if tier is not None:
            prices = tier.prices
            flags.append(f"context_tier>{tier.size}")
        elif mode_name and entry.tier_for(size) is not None:
            # Long-context price of the standard tier applies, but the mode gives none.
            flags.append("context_tier_unpriced")
    return prices


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
