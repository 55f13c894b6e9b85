"""`CallRecord`: one priced model call, as the log and `track_usage()` sessions see it.

A record carries counts, prices and attribution only. No prompt or response text ever
reaches it: there is no field that could hold one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from modelforge import config
from modelforge.errors import ModelForgeError
from modelforge.pricing.cost import Cost, price
from modelforge.usage import Usage

MAX_ATTR_KEY = 64
MAX_ATTR_VALUE = 256
MAX_ATTRS = 32
MAX_TAGS = 32


_second: tuple[int, str] = (-1, "")
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def utc_now() -> str:
    """`format_ts()` of the current time; the formatted second is reused while it lasts."""
    global _second
    whole, nanos = divmod(time.time_ns(), 1_000_000_000)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    # Two table lookups instead of a ':06d' format: this runs on every call's start.
    millis, micros = divmod(nanos // 1000, 1000)
    return f"{second[1]}.{_THREE_DIGITS[millis]}{_THREE_DIGITS[micros]}Z"


def format_ts(moment: datetime) -> str:
    """UTC ISO-8601 with a fixed width, so text order is time order in SQL."""
    # Not strftime: its %Y gives "999", not "0999", for years before 1000 on glibc.
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


@dataclass(slots=True)
class CallRecord:
    """One model call: who called what, what it consumed, and what it cost."""

    run_id: str
    usage: Usage
    cost: Cost
    ts: str = field(default_factory=utc_now)
    framework: str = "python"
    operation: str = "chat"
    provider: str | None = None
    model: str | None = None
    response_model: str | None = None
    status: str = "ok"
    error_type: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    estimate_method: str | None = None
    parent_run_id: str | None = None
    trace_id: str | None = None
    agent: str | None = None
    run_name: str | None = None
    tags: tuple[str, ...] = ()
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def total_cost(self) -> Decimal | None:
        return self.cost.total

    @property
    def priced(self) -> bool:
        return self.cost.priced

    @property
    def estimated(self) -> bool:
        return self.usage.estimated


def elapsed_ms(start: float, end: float | None) -> float | None:
    """Milliseconds between two `time.perf_counter()` readings, to the microsecond."""
    # round(x, 3) with a digits argument is several times slower than rounding to an int.
    return None if end is None else round((end - start) * 1_000_000) / 1000


def price_call(
    usage: Usage, model: str | None, response_model: str | None, provider: str | None
) -> Cost:
    """Price with the served model first (it names the exact snapshot), then the requested."""
    name = response_model or model or ""
    try:
        if response_model:
            cost = price(response_model, usage, provider)
            if cost.priced:
                return cost
        if model and model != response_model:
            cost = price(model, usage, provider)
            if cost.priced:
                return cost
    except ModelForgeError as exc:
        config.warn_once(f"price:{exc}", f"cannot price calls: {exc}")
        return Cost(model=name, provider=provider, flags=("price_table_error",))
    return Cost(model=name, provider=provider, flags=("unknown_model",))


def clean_attrs(*sources: Mapping[str, Any] | None) -> dict[str, str]:
    """Merge attribute mappings (later wins) into short strings, capped in size and count."""
    merged: dict[str, str] = {}
    for source in sources:
        if not source:
            continue
        for key, value in source.items():
            if value is None:
                continue
            text = value if isinstance(value, str) else _to_text(value)
            merged[str(key)[:MAX_ATTR_KEY]] = text[:MAX_ATTR_VALUE]
    if len(merged) > MAX_ATTRS:
        merged = dict(list(merged.items())[:MAX_ATTRS])
    return merged


def clean_tags(tags: Iterable[Any] | None) -> tuple[str, ...]:
    if not tags:
        return ()
    seen: dict[str, None] = {}
    for tag in tags:
        seen.setdefault(str(tag)[:MAX_ATTR_VALUE], None)
    return tuple(seen)[:MAX_TAGS]


def _to_text(value: Any) -> str:
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
