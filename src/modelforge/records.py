"""`CallRecord`: one priced model call, as the log and `track_usage()` sessions see it.

A record carries counts, prices and attribution only. No prompt or response text ever
reaches it: there is no field that could hold one.

Every text field passes through `clean_text` when a record is made, so text a provider
sent (a model name, a service tier, a tag) can never stop the record being stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from modelforge import config
from modelforge.context_guard import recorded_window
from modelforge.errors import ModelForgeError
from modelforge.pricing.cost import Cost, price
from modelforge.usage import Usage

MAX_ATTR_KEY = 64
MAX_ATTR_VALUE = 256
MAX_ATTRS = 32
MAX_TAGS = 32
MAX_TEXT = 256  # model names, service tier, agent… as for tags and attribute values

# Lone surrogates: the only str content UTF-8 cannot encode, so the write would fail.
# They arrive from JSON escapes ("\\ud800") and from bytes decoded with surrogateescape.
_UNENCODABLE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# Fields cut to MAX_TEXT; the ids are only cleaned, since cutting could merge two runs.
_TEXT_FIELDS = (
    "framework",
    "operation",
    "provider",
    "model",
    "response_model",
    "status",
    "error_type",
    "estimate_method",
    "agent",
    "run_name",
)
_ID_FIELDS = ("run_id", "parent_run_id", "trace_id")


def utc_now() -> str:
    """`format_ts()` of the current time."""
    return format_ts(datetime.now(timezone.utc))


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

    def __post_init__(self) -> None:
        """Pass every text field through `clean_text` (tags and attributes through theirs),
        so text a provider sent can never stop the record being stored."""
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _clean_field(value, MAX_TEXT))
        for name in _ID_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _clean_field(value, None))
        self.tags = clean_tags(self.tags)
        self.attrs = clean_attrs(self.attrs)
        tier = self.usage.service_tier
        if tier is not None:
            cleaned = _clean_field(tier, MAX_TEXT)
            if cleaned != tier:
                self.usage = self.usage.model_copy(update={"service_tier": cleaned})

    @property
    def total_cost(self) -> Decimal | None:
        return self.cost.total

    @property
    def priced(self) -> bool:
        return self.cost.priced

    @property
    def estimated(self) -> bool:
        return self.usage.estimated

    @property
    def context_limit(self) -> int | None:
        """The context window of the model that priced the call; None when unknown."""
        return recorded_window(self.cost.entry, self.usage.input_tokens)

    @property
    def context_used(self) -> int:
        """How much of the window the call's input filled: its input tokens."""
        return self.usage.input_tokens


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


def clean_text(text: str, limit: int | None = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, with what UTF-8 cannot encode replaced by U+FFFD.

    The rest of the text is kept, as a UTF-8 encoder with errors="replace" would do.

    >>> clean_text("gpt-4o\\ud800-mini"), len(clean_text("x" * 1000))
    ('gpt-4o\\ufffd-mini', 256)
    """
    if limit is not None and len(text) > limit:
        text = text[:limit]
    if text.isascii():
        return text
    return _UNENCODABLE.sub(REPLACEMENT, text)


def _clean_field(value: Any, limit: int | None) -> str:
    return clean_text(value if isinstance(value, str) else str(value), limit)


def clean_attrs(*sources: Mapping[str, Any] | None) -> dict[str, str]:
    """Merge attribute mappings (later wins) into short strings, capped in size and count.

    An attribute whose key or value cannot be turned into text (its `__str__` raises, say)
    is dropped on its own, with one warning per kind of failure.
    """
    merged: dict[str, str] = {}
    for source in sources:
        if not source:
            continue
        for key in list(source):
            try:
                value = source[key]
                if value is None:
                    continue
                text = value if isinstance(value, str) else _to_text(value)
                name = key if isinstance(key, str) else str(key)
            except Exception as exc:
                _dropped("an attribute", exc)
                continue
            merged[clean_text(name, MAX_ATTR_KEY)] = clean_text(text, MAX_ATTR_VALUE)
    if len(merged) > MAX_ATTRS:
        merged = dict(list(merged.items())[:MAX_ATTRS])
    return merged


def clean_tags(tags: Iterable[Any] | None) -> tuple[str, ...]:
    """Distinct tags as short strings, in order, capped in count; unreadable ones dropped."""
    if not tags:
        return ()
    seen: dict[str, None] = {}
    for tag in tags:
        try:
            text = tag if isinstance(tag, str) else str(tag)
        except Exception as exc:
            _dropped("a tag", exc)
            continue
        seen.setdefault(clean_text(text, MAX_ATTR_VALUE), None)
    return tuple(seen)[:MAX_TAGS]


def _to_text(value: Any) -> str:
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def _dropped(what: str, exc: Exception) -> None:
    # Only the exception's type: its message may itself fail to format.
    kind = type(exc).__name__
    config.warn_once(
        f"dropped:{what}:{kind}", f"dropped {what} that cannot be turned into text ({kind})"
    )
