"""The calculator: one `Usage` and one catalog entry in, an exact `Decimal` `Cost` out.

Every token class is priced exactly once. Parts of `input_tokens` (cache reads, cache
writes, input audio) are taken out of it before the plain input price applies, and
parts of `output_tokens` (reasoning, output audio) likewise.
"""

from __future__ import annotations

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
    >>> price("gpt-4o", Usage(input_tokens=1000, output_tokens=100)).total
    Decimal('0.0035')
    """
    resolver = get_resolver()
    entry = resolver.resolve(model, provider)
    if entry is None:
        if strict:
            raise UnknownModelError(model, provider, resolver.close_matches(model))
        return Cost(model=model, provider=provider, flags=("unknown_model",))
    return cost_for(entry, usage, model)


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
    tier = entry.tier_for(usage.input_tokens) if entry.tiers else None
    if tier is not None:
        prices = tier.prices
        flags.append(f"context_tier>{tier.size}")
    service_tier = usage.service_tier
    if service_tier and service_tier not in STANDARD_SERVICE_TIERS:
        mode = entry.modes.get(service_tier)
        if mode is None:
            flags.append("tier_unpriced")
        else:
            prices = mode
            flags.append(f"service_tier:{service_tier}")

    cache_read = cache_write = audio = reasoning = ZERO
    if usage.cache_read_tokens:
        rate = prices.cache_read
        if rate is None:
            rate = prices.input
            flags.append("cache_read_at_input_price")
        cache_read = rate * usage.cache_read_tokens
    if usage.cache_write_tokens or usage.cache_write_1h_tokens:
        cache_write = _cache_writes(entry, prices, usage, flags)
    if usage.input_audio_tokens:
        rate = prices.input_audio if prices.input_audio is not None else prices.input
        audio = rate * usage.input_audio_tokens
    if usage.output_audio_tokens:
        rate = prices.output_audio if prices.output_audio is not None else prices.output
        audio += rate * usage.output_audio_tokens
    if usage.reasoning_tokens:
        rate = prices.reasoning if prices.reasoning is not None else prices.output
        reasoning = rate * usage.reasoning_tokens
    text_in = (
        usage.input_tokens
        - usage.cache_read_tokens
        - usage.cache_write_tokens
        - usage.cache_write_1h_tokens
        - usage.input_audio_tokens
    )
    text_out = usage.output_tokens - usage.reasoning_tokens - usage.output_audio_tokens
    # Prices are per 1M tokens; scaleb shifts the exponent, so it is exact and cheap.
    parts = (
        (prices.input * text_in).scaleb(-6),
        cache_read.scaleb(-6),
        cache_write.scaleb(-6),
        (prices.output * text_out).scaleb(-6),
        reasoning.scaleb(-6),
        audio.scaleb(-6),
    )
    return Cost(
        *parts,
        total=sum(parts, ZERO),
        priced=True,
        model=model or entry.model_id,
        provider=entry.provider,
        entry=entry,
        source=entry.source,
        flags=tuple(flags),
    )


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
