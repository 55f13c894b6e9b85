"""The normalised `Usage` model, one extractor per provider payload shape, and the
reader of a whole LlamaIndex response (which of its payloads holds the usage).

All token counts are *inclusive*, as in LangChain's `UsageMetadata` and
OpenTelemetry's `gen_ai.usage.*`: `input_tokens` counts every prompt token (cache
reads, cache writes and audio are parts of it) and `output_tokens` counts every
generated token (reasoning and audio are parts of it).

Extractors are pure functions over dicts *or* SDK objects. They never raise: an odd
value is clamped and described in `Usage.anomalies`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

# Counts above this are not real token counts; they would only poison reports.
MAX_TOKENS = 10**12

# "default"/"auto" tiers are billed at the standard price, so they are not worth recording.
STANDARD_SERVICE_TIERS = frozenset({"default", "auto", "standard", "on_demand", "on-demand"})

# Every token count a `Usage` holds, in field order (total_tokens aside: it is derived).
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
)
_INPUT_PARTS = ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")
_OUTPUT_PARTS = ("reasoning_tokens", "output_audio_tokens")


class Usage(BaseModel):
    """What one model call consumed, in tokens.

    >>> Usage(input_tokens=1200, cache_read_tokens=1000, output_tokens=300).total_tokens
    1500
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cache_read_tokens: NonNegativeInt = 0
    cache_write_tokens: NonNegativeInt = Field(0, description="5-minute / default-TTL writes")
    cache_write_1h_tokens: NonNegativeInt = 0
    reasoning_tokens: NonNegativeInt = 0
    input_audio_tokens: NonNegativeInt = 0
    output_audio_tokens: NonNegativeInt = 0
    total_tokens: NonNegativeInt = Field(0, description="input_tokens + output_tokens")
    service_tier: str | None = None
    cache_hit: bool = Field(False, description="served from an LLM response cache; costs 0")
    estimated: bool = Field(False, description="counted locally, not reported by the provider")
    anomalies: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _fill_total(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "total_tokens" not in data:
            data = dict(data)
            inp, out = data.get("input_tokens", 0), data.get("output_tokens", 0)
            if type(inp) is int and type(out) is int:
                data["total_tokens"] = inp + out
        return data

    @model_validator(mode="after")
    def _parts_within_wholes(self) -> Usage:
        cached = self.cache_read_tokens + self.cache_write_tokens + self.cache_write_1h_tokens
        if cached + self.input_audio_tokens > self.input_tokens:
            raise ValueError(
                f"cache_read_tokens + cache_write_tokens + cache_write_1h_tokens + "
                f"input_audio_tokens ({cached + self.input_audio_tokens}) exceed "
                f"input_tokens ({self.input_tokens}); input_tokens must include them"
            )
        if self.reasoning_tokens + self.output_audio_tokens > self.output_tokens:
            raise ValueError(
                f"reasoning_tokens + output_audio_tokens "
                f"({self.reasoning_tokens + self.output_audio_tokens}) exceed "
                f"output_tokens ({self.output_tokens}); output_tokens must include them"
            )
        if self.total_tokens != self.input_tokens + self.output_tokens:
            raise ValueError(
                f"total_tokens ({self.total_tokens}) must equal input_tokens + output_tokens "
                f"({self.input_tokens + self.output_tokens})"
            )
        return self

    @property
    def is_empty(self) -> bool:
        return self.input_tokens == 0 and self.output_tokens == 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            input_audio_tokens=self.input_audio_tokens + other.input_audio_tokens,
            output_audio_tokens=self.output_audio_tokens + other.output_audio_tokens,
            estimated=self.estimated or other.estimated,
        )


def recorded_tier(value: Any) -> str | None:
    """A service tier as recorded: lowercase, and None for the standard tiers."""
    if isinstance(value, str) and value and value.lower() not in STANDARD_SERVICE_TIERS:
        return value.lower()
    return None


class _Builder:
    """Collects coerced counts and anomalies, then clamps parts into their wholes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.anomalies: list[str] = []
        self.service_tier: str | None = None
        self.cache_hit = False

    def count(self, name: str, value: Any) -> int:
        """Coerce `value` to a token count, noting anything odd."""
        if value is None:
            return 0
        if isinstance(value, bool):
            self.anomalies.append(f"{name}: boolean {value!r} treated as 0")
            return 0
        if isinstance(value, int):
            number = value
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                self.anomalies.append(f"{name}: {value!r} treated as 0")
                return 0
            number = int(value)
            if number != value:
                self.anomalies.append(f"{name}: fractional {value!r} truncated")
        elif isinstance(value, str) and value.strip().isdecimal():  # not isdigit: "²"
            shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}… ({len(value)} chars)"
            self.anomalies.append(f"{name}: string {shown} parsed")
            try:
                number = int(value)
            except ValueError:  # past sys.get_int_max_str_digits(), so far past the cap
                self.anomalies.append(f"{name}: {len(value)}-char string capped at {MAX_TOKENS}")
                return MAX_TOKENS
        else:
            self.anomalies.append(f"{name}: non-numeric {type(value).__name__} treated as 0")
            return 0
        if number < 0:
            self.anomalies.append(f"{name}: negative {_show(number)} treated as 0")
            return 0
        if number > MAX_TOKENS:
            self.anomalies.append(f"{name}: {_show(number)} capped at {MAX_TOKENS}")
            return MAX_TOKENS
        return number

    def add(self, field: str, source_name: str, value: Any) -> None:
        self.counts[field] = self.counts.get(field, 0) + self.count(source_name, value)

    def tier(self, value: Any) -> None:
        self.service_tier = recorded_tier(value) or self.service_tier

    def build(self, *, estimated: bool = False) -> Usage:
        counts = self.counts
        total_in = min(counts.get("input_tokens", 0), MAX_TOKENS)
        total_out = min(counts.get("output_tokens", 0), MAX_TOKENS)
        for whole in ("input_tokens", "output_tokens"):
            # Each count is capped, but a whole summed from several can still pass the cap.
            if counts.get(whole, 0) > MAX_TOKENS:
                self.anomalies.append(f"{whole}: sum {_show(counts[whole])} capped at {MAX_TOKENS}")
        parts_in = _clamp_parts(counts, (*_INPUT_PARTS, "input_audio_tokens"), total_in)
        parts_out = _clamp_parts(counts, _OUTPUT_PARTS, total_out)
        if parts_in is not None:
            self.anomalies.append(f"input parts exceed input_tokens {total_in}; clamped")
        if parts_out is not None:
            self.anomalies.append(f"output parts exceed output_tokens {total_out}; clamped")
        fields = {name: counts.get(name, 0) for name in _INPUT_PARTS + _OUTPUT_PARTS}
        fields["input_audio_tokens"] = counts.get("input_audio_tokens", 0)
        fields.update(parts_in or {})
        fields.update(parts_out or {})
        return Usage(
            input_tokens=total_in,
            output_tokens=total_out,
            service_tier=self.service_tier,
            cache_hit=self.cache_hit,
            estimated=estimated,
            anomalies=tuple(self.anomalies),
            **fields,
        )


def _clamp_parts(
    counts: Mapping[str, int], parts: tuple[str, ...], whole: int
) -> dict[str, int] | None:
    """Shrink parts, in order, so they fit in `whole`; None when they already fit."""
    # Not capped per part: a part summed from several counts (Bedrock's cacheDetails,
    # Gemini's modality entries) can pass MAX_TOKENS, and must then be clamped too.
    if sum(counts.get(p, 0) for p in parts) <= whole:
        return None
    left, clamped = whole, {}
    for part in parts:
        clamped[part] = min(counts.get(part, 0), left)
        left -= clamped[part]
    return clamped


def _show(number: int) -> str:
    """An int for a message: str() of one past 4300 digits raises (int_max_str_digits)."""
    if number.bit_length() <= 128:
        return str(number)
    return f"{'-' if number < 0 else ''}<{number.bit_length()}-bit integer>"


def _is_audio(modality: Any) -> bool:
    """A Gemini modality entry's AUDIO flag: a string, a str enum, or an enum's name.

    Never str() of an arbitrary value: that of a huge int (or a list of them) raises.
    """
    if not isinstance(modality, str):
        modality = getattr(modality, "name", None)
    return isinstance(modality, str) and modality.upper().endswith("AUDIO")


def field(obj: Any, name: str) -> Any:
    """Read `name` from a mapping or an object (SDK models arrive as either)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _nested(obj: Any, *names: str) -> Any:
    for name in names:
        obj = field(obj, name)
    return obj


def _shape_check(builder: _Builder, payload: Any, what: str) -> bool:
    if payload is None:
        return False
    if isinstance(payload, (str, bytes, int, float, list, tuple)):
        builder.anomalies.append(f"{what}: unexpected {type(payload).__name__} payload")
        return False
    return True


def from_langchain(usage_metadata: Any) -> Usage:
    """LangChain `UsageMetadata` (already inclusive).

    Handles langchain-anthropic's split `ephemeral_5m/1h_input_tokens` (with
    `cache_creation` set to 0) and langchain-openai's service-tier prefixed keys
    (`priority_cache_read`, `flex_reasoning`, plus the `priority`/`flex` counts,
    which are not extra tokens).
    """
    b = _Builder()
    if not _shape_check(b, usage_metadata, "usage_metadata"):
        return b.build()
    b.add("input_tokens", "input_tokens", field(usage_metadata, "input_tokens"))
    b.add("output_tokens", "output_tokens", field(usage_metadata, "output_tokens"))
    if field(usage_metadata, "total_cost") == 0:
        b.cache_hit = True

    details_in = field(usage_metadata, "input_token_details") or {}
    details_out = field(usage_metadata, "output_token_details") or {}
    tier = _tier_from_prefixed_keys(details_in) or _tier_from_prefixed_keys(details_out)
    prefix = f"{tier}_" if tier else ""
    if tier:
        b.tier(tier)

    def detail(details: Any, key: str) -> Any:
        value = field(details, f"{prefix}{key}")
        return value if value is not None else field(details, key)

    b.add("cache_read_tokens", "cache_read", detail(details_in, "cache_read"))
    five_min = b.count("ephemeral_5m_input_tokens", field(details_in, "ephemeral_5m_input_tokens"))
    one_hour = b.count("ephemeral_1h_input_tokens", field(details_in, "ephemeral_1h_input_tokens"))
    generic = b.count("cache_creation", detail(details_in, "cache_creation"))
    # `cache_creation` is 0 when the TTL split is given, or else the whole: never add both.
    b.counts["cache_write_tokens"] = five_min + max(generic - five_min - one_hour, 0)
    b.counts["cache_write_1h_tokens"] = one_hour
    b.add("input_audio_tokens", "audio", field(details_in, "audio"))
    b.add("reasoning_tokens", "reasoning", detail(details_out, "reasoning"))
    b.add("output_audio_tokens", "audio", field(details_out, "audio"))
    return b.build()


def _tier_from_prefixed_keys(details: Any) -> str | None:
    if not isinstance(details, Mapping):
        return None
    for key in details:
        if isinstance(key, str) and "_" in key:
            head, _, rest = key.partition("_")
            if rest in ("cache_read", "cache_creation", "reasoning") and head in details:
                return head
    for key in ("priority", "flex", "batch", "scale"):
        if key in details:
            return key
    return None


def from_openai_chat(usage: Any, service_tier: Any = None) -> Usage:
    """OpenAI Chat Completions `usage` (inclusive `prompt_tokens`)."""
    b = _Builder()
    b.tier(service_tier)
    if not _shape_check(b, usage, "usage"):
        return b.build()
    b.add("input_tokens", "prompt_tokens", field(usage, "prompt_tokens"))
    b.add("output_tokens", "completion_tokens", field(usage, "completion_tokens"))
    prompt_details = field(usage, "prompt_tokens_details")
    b.add("cache_read_tokens", "cached_tokens", field(prompt_details, "cached_tokens"))
    b.add("cache_write_tokens", "cache_write_tokens", field(prompt_details, "cache_write_tokens"))
    b.add("input_audio_tokens", "audio_tokens", field(prompt_details, "audio_tokens"))
    completion_details = field(usage, "completion_tokens_details")
    b.add("reasoning_tokens", "reasoning_tokens", field(completion_details, "reasoning_tokens"))
    b.add("output_audio_tokens", "audio_tokens", field(completion_details, "audio_tokens"))
    return b.build()


def from_openai_responses(usage: Any, service_tier: Any = None) -> Usage:
    """OpenAI Responses API `usage` (inclusive `input_tokens`)."""
    b = _Builder()
    b.tier(service_tier)
    if not _shape_check(b, usage, "usage"):
        return b.build()
    b.add("input_tokens", "input_tokens", field(usage, "input_tokens"))
    b.add("output_tokens", "output_tokens", field(usage, "output_tokens"))
    in_details = field(usage, "input_tokens_details")
    b.add("cache_read_tokens", "cached_tokens", field(in_details, "cached_tokens"))
    b.add("cache_write_tokens", "cache_write_tokens", field(in_details, "cache_write_tokens"))
    out_details = field(usage, "output_tokens_details")
    b.add("reasoning_tokens", "reasoning_tokens", field(out_details, "reasoning_tokens"))
    return b.build()


# Only Anthropic's usage has these; without them it says nothing of the cache.
ANTHROPIC_CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")


def from_anthropic(usage: Any) -> Usage:
    """Anthropic Messages `usage`, whose `input_tokens` *excludes* cache tokens."""
    b = _Builder()
    if not _shape_check(b, usage, "usage"):
        return b.build()
    uncached = b.count("input_tokens", field(usage, "input_tokens"))
    read = b.count("cache_read_input_tokens", field(usage, "cache_read_input_tokens"))
    written = b.count("cache_creation_input_tokens", field(usage, "cache_creation_input_tokens"))
    creation = field(usage, "cache_creation")
    five_min = b.count("ephemeral_5m_input_tokens", field(creation, "ephemeral_5m_input_tokens"))
    one_hour = b.count("ephemeral_1h_input_tokens", field(creation, "ephemeral_1h_input_tokens"))
    # cache_creation_input_tokens is the sum of the TTL split; anything unsplit is 5-minute.
    written = max(written, five_min + one_hour)
    b.counts.update(
        input_tokens=uncached + read + written,
        cache_read_tokens=read,
        cache_write_tokens=written - one_hour,
        cache_write_1h_tokens=one_hour,
    )
    b.add("output_tokens", "output_tokens", field(usage, "output_tokens"))
    thinking = _nested(usage, "output_tokens_details", "thinking_tokens")
    b.add("reasoning_tokens", "thinking_tokens", thinking)
    b.tier(field(usage, "service_tier"))
    return b.build()


def from_gemini(usage_metadata: Any) -> Usage:
    """Gemini `usageMetadata` (camelCase REST or snake_case SDK).

    `promptTokenCount` already includes `cachedContentTokenCount`;
    `thoughtsTokenCount` is billed as output but is not in `candidatesTokenCount`;
    `toolUsePromptTokenCount` is billed as input and is not in `promptTokenCount`.
    """
    b = _Builder()
    if not _shape_check(b, usage_metadata, "usageMetadata"):
        return b.build()

    def get(camel: str, snake: str) -> Any:
        value = field(usage_metadata, camel)
        return value if value is not None else field(usage_metadata, snake)

    b.add("input_tokens", "promptTokenCount", get("promptTokenCount", "prompt_token_count"))
    tool_use = get("toolUsePromptTokenCount", "tool_use_prompt_token_count")
    b.add("input_tokens", "toolUsePromptTokenCount", tool_use)
    cached = get("cachedContentTokenCount", "cached_content_token_count")
    b.add("cache_read_tokens", "cachedContentTokenCount", cached)
    candidates = get("candidatesTokenCount", "candidates_token_count")
    b.add("output_tokens", "candidatesTokenCount", candidates)
    thoughts = get("thoughtsTokenCount", "thoughts_token_count")
    b.add("output_tokens", "thoughtsTokenCount", thoughts)
    b.add("reasoning_tokens", "thoughtsTokenCount", thoughts)
    for key_camel, key_snake, target in (
        ("promptTokensDetails", "prompt_tokens_details", "input_audio_tokens"),
        ("candidatesTokensDetails", "candidates_tokens_details", "output_audio_tokens"),
    ):
        details = get(key_camel, key_snake)
        if isinstance(details, (list, tuple)):
            for entry in details:
                if _is_audio(field(entry, "modality")):
                    count = field(entry, "tokenCount")
                    count = count if count is not None else field(entry, "token_count")
                    b.add(target, f"{key_camel}.AUDIO", count)
    return b.build()


def from_bedrock(usage: Any) -> Usage:
    """Bedrock Converse `usage`, whose `inputTokens` excludes cache reads and writes.

    `cacheDetails` splits `cacheWriteInputTokens` by TTL (`5m` / `1h`), and 1-hour
    writes cost more, so they are kept apart.
    """
    b = _Builder()
    if not _shape_check(b, usage, "usage"):
        return b.build()
    uncached = b.count("inputTokens", field(usage, "inputTokens"))
    read = b.count("cacheReadInputTokens", field(usage, "cacheReadInputTokens"))
    written = b.count("cacheWriteInputTokens", field(usage, "cacheWriteInputTokens"))
    by_ttl = {"5m": 0, "1h": 0}
    details = field(usage, "cacheDetails")
    if isinstance(details, (list, tuple)):
        for detail in details:
            ttl = field(detail, "ttl")
            if isinstance(ttl, str) and ttl in by_ttl:
                by_ttl[ttl] += b.count(f"cacheDetails[{ttl}]", field(detail, "inputTokens"))
    # cacheWriteInputTokens is the sum of the TTL split; anything unsplit is 5-minute.
    written = max(written, by_ttl["5m"] + by_ttl["1h"])
    b.counts.update(
        input_tokens=uncached + read + written,
        cache_read_tokens=read,
        cache_write_tokens=written - by_ttl["1h"],
        cache_write_1h_tokens=by_ttl["1h"],
    )
    b.add("output_tokens", "outputTokens", field(usage, "outputTokens"))
    return b.build()


# How deep a usage object may sit in a response (`{"usage": ...}`, a stream event's
# `response.usage`); past that it is a cycle or a proxy that invents attributes.
_MAX_WRAPPING = 8


def extract_usage(payload: Any, service_tier: Any = None) -> Usage | None:
    """Detect the payload's shape and normalise it; None when no usage is recognisable.

    Accepts a usage object or a whole response (dict or SDK object) that carries one
    under `usage` / `usageMetadata`.
    """
    for _ in range(_MAX_WRAPPING):
        if payload is None:
            return None
        for key in ("usage", "usageMetadata", "usage_metadata"):
            inner = field(payload, key)
            if inner is not None and inner is not payload and not isinstance(inner, (str, bytes)):
                service_tier = service_tier or field(payload, "service_tier")
                payload = inner
                break
        else:
            break
    else:
        return None  # usage inside usage without end (a cycle, a proxy): not a payload
    if (
        field(payload, "prompt_tokens") is not None
        or field(payload, "completion_tokens") is not None
    ):
        return from_openai_chat(payload, service_tier)
    if any(field(payload, k) is not None for k in ANTHROPIC_CACHE_KEYS):
        return from_anthropic(payload)
    if field(payload, "input_token_details") is not None or (
        field(payload, "output_token_details") is not None
    ):
        return from_langchain(payload)
    if field(payload, "input_tokens_details") is not None or (
        field(payload, "output_tokens_details") is not None
        and field(payload, "input_tokens") is not None
    ):
        return from_openai_responses(payload, service_tier)
    if field(payload, "promptTokenCount") is not None or (
        field(payload, "prompt_token_count") is not None
    ):
        return from_gemini(payload)
    if field(payload, "inputTokens") is not None or field(payload, "outputTokens") is not None:
        return from_bedrock(payload)
    if field(payload, "input_tokens") is not None or field(payload, "output_tokens") is not None:
        # Inclusive by default: LangChain UsageMetadata without details.
        return from_langchain(payload)
    return None


# --- whole responses, as LlamaIndex hands them over ----------------------------------

NO_ANTHROPIC_CACHE_COUNTS = "anthropic usage has no cache counts; cache tokens unknown"
_ANTHROPIC_USAGE_KEYS = ("input_tokens", "output_tokens", "output_tokens_details", "service_tier")


def raw_usage(raw: Any) -> tuple[Any, Any, Any]:
    """The usage object, served model and service tier a raw provider response carries.

    Chat Completions and Anthropic messages carry `usage` (and `model`) at the top; a
    streamed Responses `ResponseCompletedEvent` under `response`; an Anthropic
    `message_start` event under `message`.
    """
    if raw is None or isinstance(raw, (str, bytes, int, float, bool)):
        return None, None, None
    usage, model, tier = field(raw, "usage"), field(raw, "model"), field(raw, "service_tier")
    if usage is None:
        for key in ("response", "message"):
            inner = field(raw, key)
            if inner is not None and not isinstance(inner, (str, bytes)):
                usage = field(inner, "usage")
                if usage is not None:
                    model = model or field(inner, "model")
                    tier = tier or field(inner, "service_tier")
                    break
    return usage, model, tier


def keep_cache_counts(first: Any, last: Any) -> Any:
    """An Anthropic stream's final usage with the cache counts its `message_start` had.

    The final `message_delta` may carry only the output count; the cache counts are
    then only in the usage that opened the stream.
    """
    if last is None:
        return first
    if all(field(last, k) is None for k in ANTHROPIC_CACHE_KEYS) and any(
        field(first, k) is not None for k in ANTHROPIC_CACHE_KEYS
    ):
        merged = {k: field(first, k) for k in (*_ANTHROPIC_USAGE_KEYS, *ANTHROPIC_CACHE_KEYS)}
        merged.update({k: v for k in _ANTHROPIC_USAGE_KEYS if (v := field(last, k)) is not None})
        return merged
    return last


def from_llamaindex_response(
    response: Any, provider: str | None, first_usage: Any = None, last_usage: Any = None
) -> tuple[Usage | None, str | None, tuple[str, ...]]:
    """Usage, served model and the anomalies of skipped sources, from a LlamaIndex
    `ChatResponse` or `CompletionResponse` (or any object or dict shaped like one).

    Sources, in order: the usage in `response.raw` (see `raw_usage`), else the last
    usage a stream's chunks carried (`last_usage`, kept with the cache counts of
    `first_usage`), then the counts LlamaIndex copies into `additional_kwargs`, then the
    message's `additional_kwargs["usage"]`. A source that yields no tokens is skipped,
    so that a call is estimated rather than recorded as zero. `provider` is our id for
    the provider: Anthropic's `input_tokens` leaves the cache out.
    """
    usage_obj, served, tier = raw_usage(field(response, "raw"))
    if usage_obj is None:
        usage_obj = last_usage
    if first_usage is not None and usage_obj is not first_usage:
        usage_obj = keep_cache_counts(first_usage, usage_obj)
    model = served if isinstance(served, str) else None
    anomalies: tuple[str, ...] = ()
    for payload in _response_sources(response, usage_obj):
        usage = _provider_usage(payload, provider, tier)
        if usage is None:
            continue
        if not usage.is_empty or usage.cache_hit:
            if provider == "anthropic" and all(
                field(payload, k) is None for k in ANTHROPIC_CACHE_KEYS
            ):
                # LlamaIndex does not pass a stream's message_start on, and an older
                # API's final message_delta has no cache counts: say so, never guess.
                anomalies += (NO_ANTHROPIC_CACHE_COUNTS,)
            if anomalies:
                usage = usage.model_copy(update={"anomalies": usage.anomalies + anomalies})
            return usage, model, ()
        anomalies += usage.anomalies
    return None, model, anomalies


def _response_sources(response: Any, usage_obj: Any) -> Iterator[Any]:
    yield usage_obj
    yield field(response, "additional_kwargs")
    extra = field(field(response, "message"), "additional_kwargs")
    if isinstance(extra, Mapping):
        yield extra.get("usage")


def _provider_usage(payload: Any, provider: str | None, tier: Any) -> Usage | None:
    if payload is None:
        return None
    if provider == "anthropic" and field(payload, "input_tokens") is not None:
        return from_anthropic(payload)  # input_tokens there excludes the cache
    return extract_usage(payload, tier)
