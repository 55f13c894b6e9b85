"""OpenTelemetry export: GenAI metrics (and optionally spans) for every recorded call.

>>> import modelforge.otel
>>> modelforge.otel.enable()   # metrics through the global MeterProvider
>>> modelforge.otel.disable()

`enable()` registers a sink with the recorder, so every finished `CallRecord` (from
LangChain, LlamaIndex or `track_usage()`) is reported once, following the OpenTelemetry
GenAI semantic conventions:

- `gen_ai.client.token.usage` (histogram, `{token}`, `gen_ai.token.type` input/output)
- `gen_ai.client.operation.duration` (histogram, `s`)
- `modelforge.cost` (counter, `USD`, priced calls only) and `modelforge.calls.unpriced`
  (counter, `{call}`, calls the price table could not price)
- with a `tracer_provider`: one CLIENT span per call, named `"{operation} {model}"`,
  carrying the `gen_ai.usage.*` counts and the exact cost as `modelforge.cost_usd`.

Only this module imports OpenTelemetry (the API package); install it with
`pip install 'model-forge[otel]'`. Attribute names are spelled out below rather than
taken from `opentelemetry-semantic-conventions`, which marks the GenAI names as moved.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from modelforge.errors import missing_extra

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise missing_extra(exc, "otel") from exc

from modelforge import __version__, recorder
from modelforge.money import money_text
from modelforge.providers import otel_provider_name
from modelforge.records import CallRecord

__all__ = ["disable", "enable"]

INSTRUMENTATION_NAME = "modelforge"

# --- metric names and units ---------------------------------------------------------
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_COST = "modelforge.cost"
METRIC_UNPRICED_CALLS = "modelforge.calls.unpriced"
UNIT_TOKEN = "{token}"
UNIT_SECONDS = "s"
UNIT_USD = "USD"
UNIT_CALL = "{call}"

# The ExplicitBucketBoundaries the GenAI metric conventions ask for.
TOKEN_USAGE_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# --- attribute names ----------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_USAGE_AUDIO_INPUT_TOKENS = "gen_ai.usage.audio.input_tokens"
GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS = "gen_ai.usage.audio.output_tokens"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
ERROR_TYPE = "error.type"
MODELFORGE_COST_USD = "modelforge.cost_usd"
MODELFORGE_ESTIMATED = "modelforge.usage.estimated"

TOKEN_TYPE_INPUT = "input"
TOKEN_TYPE_OUTPUT = "output"
ERROR_TYPE_OTHER = "_OTHER"

# Our operation names -> the well-known `gen_ai.operation.name` values.
OPERATION_NAMES = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}


@dataclass(frozen=True, slots=True, eq=False)
class _Exporter:
    """The instruments of one `enable()`; `__call__` is the recorder sink."""

    meter_provider: metrics.MeterProvider
    tracer_provider: trace.TracerProvider | None
    token_usage: metrics.Histogram
    duration: metrics.Histogram
    cost: metrics.Counter
    unpriced: metrics.Counter
    tracer: trace.Tracer | None

    def __call__(self, record: CallRecord) -> None:
        attrs = _metric_attributes(record)
        usage = record.usage
        # No usage metric for a failure the provider never answered, nor for a response
        # served from an LLM cache (nothing billable): the conventions want billable counts.
        if not usage.cache_hit and not (record.status != "ok" and usage.is_empty):
            self.token_usage.record(
                usage.input_tokens, {**attrs, GEN_AI_TOKEN_TYPE: TOKEN_TYPE_INPUT}
            )
            if record.operation != "embedding":
                self.token_usage.record(
                    usage.output_tokens, {**attrs, GEN_AI_TOKEN_TYPE: TOKEN_TYPE_OUTPUT}
                )
        if record.latency_ms is not None:
            self.duration.record(record.latency_ms / 1000, attrs)
        total = record.cost.total
        if record.cost.priced and total is not None:
            # OTel counters only take int/float. float() rounds the exact Decimal to the
            # nearest double (~16 significant digits): far finer than any cost, and a
            # metrics backend sums in floats anyway. The exact figure stays in the usage
            # log and in the span's `modelforge.cost_usd` string.
            self.cost.add(float(total), attrs)
        else:
            self.unpriced.add(1, attrs)
        if self.tracer is not None:
            self._span(self.tracer, record, attrs)

    def _span(self, tracer: trace.Tracer, record: CallRecord, attrs: dict[str, str]) -> None:
        usage = record.usage
        span_attrs: dict[str, Any] = dict(attrs)
        if not (record.status != "ok" and usage.is_empty):
            span_attrs[GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            span_attrs[GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            span_attrs[GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            span_attrs[GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = (
                usage.cache_write_tokens + usage.cache_write_1h_tokens
            )
            for key, value in (
                (GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_tokens),
                (GEN_AI_USAGE_AUDIO_INPUT_TOKENS, usage.input_audio_tokens),
                (GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS, usage.output_audio_tokens),
            ):
                if value:
                    span_attrs[key] = value
            if usage.estimated:
                span_attrs[MODELFORGE_ESTIMATED] = True
        if record.ttft_ms is not None:
            span_attrs[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = record.ttft_ms / 1000
        cost_text = money_text(record.cost.total) if record.cost.priced else None
        if cost_text is not None:
            span_attrs[MODELFORGE_COST_USD] = cost_text
        start = _start_ns(record.ts, record.latency_ms)
        end = start + _ms_to_ns(record.latency_ms)
        operation = attrs[GEN_AI_OPERATION_NAME]
        name = f"{operation} {record.model}" if record.model else operation
        span = tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes=span_attrs, start_time=start
        )
        if record.status != "ok":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)


def _metric_attributes(record: CallRecord) -> dict[str, str]:
    """The low-cardinality attributes shared by every metric and the span."""
    attrs = {GEN_AI_OPERATION_NAME: OPERATION_NAMES.get(record.operation, record.operation)}
    if record.provider:
        attrs[GEN_AI_PROVIDER_NAME] = otel_provider_name(record.provider)
    if record.model:
        attrs[GEN_AI_REQUEST_MODEL] = record.model
    if record.response_model:
        attrs[GEN_AI_RESPONSE_MODEL] = record.response_model
    if record.status != "ok":
        attrs[ERROR_TYPE] = record.error_type or ERROR_TYPE_OTHER
    return attrs


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _start_ns(ts: str, latency_ms: float | None) -> int:
    """Nanoseconds since the epoch of the record's UTC ISO start time, exactly."""
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        delta = moment - _EPOCH
    except (AttributeError, TypeError, ValueError):
        return time.time_ns() - _ms_to_ns(latency_ms)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _ms_to_ns(ms: float | None) -> int:
    return max(round(ms * 1_000_000), 0) if ms is not None else 0


_lock = threading.Lock()
_active: _Exporter | None = None


def enable(
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> None:
    """Report every recorded call as OpenTelemetry GenAI metrics, and spans if asked.

    Args:
        meter_provider: where the metrics go; default the global
            `opentelemetry.metrics.get_meter_provider()`.
        tracer_provider: when given, one CLIENT span per call is also emitted.

    Calling it again with the same providers does nothing; with other providers it
    replaces the previous setup. Either way exactly one sink stays registered.
    """
    global _active
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
    with _lock:
        current = _active
        if (
            current is not None
            and current.meter_provider is meter_provider
            and current.tracer_provider is tracer_provider
        ):
            return
        exporter = _build(meter_provider, tracer_provider)
        if current is not None:
            recorder.remove_sink(current)
        recorder.add_sink(exporter)
        _active = exporter


def disable() -> None:
    """Stop reporting calls to OpenTelemetry; safe to call when not enabled."""
    global _active
    with _lock:
        if _active is not None:
            recorder.remove_sink(_active)
            _active = None


def _build(
    meter_provider: metrics.MeterProvider, tracer_provider: trace.TracerProvider | None
) -> _Exporter:
    meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)
    token_usage = meter.create_histogram(
        METRIC_TOKEN_USAGE,
        unit=UNIT_TOKEN,
        description="Number of input and output tokens used.",
        explicit_bucket_boundaries_advisory=TOKEN_USAGE_BUCKETS,
    )
    duration = meter.create_histogram(
        METRIC_OPERATION_DURATION,
        unit=UNIT_SECONDS,
        description="GenAI operation duration.",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )
    cost = meter.create_counter(
        METRIC_COST,
        unit=UNIT_USD,
        description="Cost of model calls in US dollars, from the model-forge price table.",
    )
    unpriced = meter.create_counter(
        METRIC_UNPRICED_CALLS,
        unit=UNIT_CALL,
        description="Model calls the model-forge price table could not price.",
    )
    tracer = (
        tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        if tracer_provider is not None
        else None
    )
    return _Exporter(
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        token_usage=token_usage,
        duration=duration,
        cost=cost,
        unpriced=unpriced,
        tracer=tracer,
    )
