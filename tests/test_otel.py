"""`modelforge.otel`: GenAI metrics and spans, exported by the real OTLP/HTTP exporters to a
loopback collector written here, from real LangChain calls against the wire server.

Expected cost, by hand (gpt-4o: input 2.5, output 10, cache_read 1.25 USD per 1M tokens):
1000 input tokens of which 800 cache reads, 100 output tokens ->
200 x 2.5 + 800 x 1.25 + 100 x 10 = 500 + 1000 + 1000 = 2500 per 1M -> 0.0025 USD.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import openai
import pytest
from langchain_openai import ChatOpenAI
from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import modelforge.otel
from modelforge import recorder
from modelforge.langchain import UsageCallbackHandler
from modelforge.pricing.cost import Cost
from modelforge.records import CallRecord
from modelforge.usage import Usage
from modelforge.wire import Reply, WireServer

TOKEN_BUCKETS = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
]  # fmt: skip
DURATION_BUCKETS = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
]  # fmt: skip
CACHED_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 100,
    "total_tokens": 1100,
    "prompt_tokens_details": {"cached_tokens": 800},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
SERVED = "gpt-4o-2024-08-06"
OK_ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": SERVED,
}
# A failed call: nothing came back, so no served model. `error.type` is the class name of
# the exception the caller saw (langchain-openai re-raises a 500 as its own subclass of
# openai.InternalServerError), filled in by `_failing_call`.
ERROR_BASE = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
}
HOUR_MS = 3_600_000


# --------------------------------------------------------------------------- collector


class _CollectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, collector: Collector) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.collector = collector


class _CollectorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""

    def do_POST(self) -> None:
        collector = cast(_CollectorServer, self.server).collector
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        reply: bytes
        if self.path == "/v1/metrics":
            metrics_request = ExportMetricsServiceRequest()
            metrics_request.ParseFromString(body)
            collector.add(collector.metric_requests, metrics_request, encoding)
            reply = ExportMetricsServiceResponse().SerializeToString()
        elif self.path == "/v1/traces":
            trace_request = ExportTraceServiceRequest()
            trace_request.ParseFromString(body)
            collector.add(collector.trace_requests, trace_request, encoding)
            reply = ExportTraceServiceResponse().SerializeToString()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@dataclass
class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1 keeping every decoded export request."""

    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    trace_requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    encodings: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, bucket: list[Any], request: Any, encoding: str) -> None:
        with self.lock:
            bucket.append(request)
            self.encodings.append(encoding)

    def metrics(self) -> dict[str, Metric]:
        """The newest export of each metric (cumulative, so the newest holds everything)."""
        found: dict[str, Metric] = {}
        with self.lock:
            for request in self.metric_requests:
                for resource in request.resource_metrics:
                    for scope in resource.scope_metrics:
                        for metric in scope.metrics:
                            assert scope.scope.name == "modelforge"
                            found[metric.name] = metric
        return found

    def spans(self) -> list[Span]:
        with self.lock:
            return [
                span
                for request in self.trace_requests
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    state = Collector()
    server = _CollectorServer(state)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Otel:
    collector: Collector
    meter_provider: MeterProvider
    tracer_provider: TracerProvider

    def flush(self) -> None:
        assert self.meter_provider.force_flush(timeout_millis=10_000)
        assert self.tracer_provider.force_flush(timeout_millis=10_000)


@pytest.fixture
def otel(collector: tuple[Collector, str]) -> Iterator[Otel]:
    """Real OTLP/HTTP exporters (metrics gzip-compressed, traces plain) to the collector."""
    state, url = collector
    metric_exporter = OTLPMetricExporter(
        endpoint=f"{url}/v1/metrics", compression=Compression.Gzip, timeout=10
    )
    # A long interval: only force_flush() exports, so each test decides when.
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=HOUR_MS)
    meter_provider = MeterProvider(metric_readers=[reader])
    tracer_provider = TracerProvider()
    span_exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", compression=Compression.NoCompression, timeout=10
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    try:
        yield Otel(state, meter_provider, tracer_provider)
    finally:
        modelforge.otel.disable()
        meter_provider.shutdown()
        tracer_provider.shutdown()


@pytest.fixture
def captured() -> Iterator[list[CallRecord]]:
    """Every record the recorder hands to sinks during the test."""
    records: list[CallRecord] = []
    sink: Callable[[CallRecord], None] = records.append
    recorder.add_sink(sink)
    yield records
    recorder.remove_sink(sink)


# --------------------------------------------------------------------------- helpers


def _attrs(key_values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in cast("list[KeyValue]", key_values):
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def _points(metric: Metric) -> list[Any]:
    kind = metric.WhichOneof("data")
    assert kind is not None
    return list(getattr(metric, kind).data_points)


def _point(metric: Metric, **attrs: Any) -> Any:
    matches = [p for p in _points(metric) if _attrs(p.attributes) == attrs]
    assert len(matches) == 1, (attrs, [_attrs(p.attributes) for p in _points(metric)])
    return matches[0]


def _model(wire: WireServer, model: str = "gpt-4o") -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=wire.openai_base_url, api_key="test", max_retries=0)


def _ok_call(wire: WireServer, handler: UsageCallbackHandler) -> None:
    wire.enqueue(Reply(usage=CACHED_USAGE, model=SERVED))
    _model(wire).invoke("hello", config={"callbacks": [handler]})


def _failing_call(wire: WireServer, handler: UsageCallbackHandler) -> dict[str, str]:
    """Make a call the server fails with a 500; the attributes its telemetry should carry."""
    wire.enqueue(Reply(status=500))
    with pytest.raises(openai.InternalServerError) as excinfo:
        _model(wire).invoke("hello", config={"callbacks": [handler]})
    return {**ERROR_BASE, "error.type": excinfo.type.__name__}


def _our_sinks() -> list[Any]:
    return [s for s in recorder._sinks if type(s).__name__ == "_Exporter"]


def _ns(ts: str) -> int:
    moment = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 + moment.microsecond * 1_000


# --------------------------------------------------------------------------- metrics


def test_metrics_follow_genai_conventions(otel: Otel, wire: WireServer) -> None:
    modelforge.otel.enable(meter_provider=otel.meter_provider)
    handler = UsageCallbackHandler(persist=False)
    _ok_call(wire, handler)
    error_attrs = _failing_call(wire, handler)
    otel.flush()

    found = otel.collector.metrics()
    assert set(found) == {
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "modelforge.cost",
    }
    assert "gzip" in otel.collector.encodings

    tokens = found["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}"
    assert tokens.WhichOneof("data") == "histogram"
    # The failed call never got usage back, so it reports no tokens at all.
    assert len(_points(tokens)) == 2
    for token_type, total in (("input", 1000), ("output", 100)):
        point = _point(tokens, **OK_ATTRS, **{"gen_ai.token.type": token_type})
        assert list(point.explicit_bounds) == TOKEN_BUCKETS
        assert (point.count, point.sum) == (1, total)
        assert sum(point.bucket_counts) == 1

    duration = found["gen_ai.client.operation.duration"]
    assert duration.unit == "s"
    assert duration.WhichOneof("data") == "histogram"
    assert len(_points(duration)) == 2
    for attrs in (OK_ATTRS, error_attrs):
        point = _point(duration, **attrs)
        assert list(point.explicit_bounds) == DURATION_BUCKETS
        assert point.count == 1
        assert 0 < point.sum < 30

    cost = found["modelforge.cost"]
    assert cost.unit == "USD"
    assert cost.WhichOneof("data") == "sum"
    assert cost.sum.is_monotonic
    assert cost.sum.aggregation_temporality == AggregationTemporality.Value(
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    )
    assert _point(cost, **OK_ATTRS).as_double == 0.0025  # 2500 per 1M, worked out above
    # A priced failure costs exactly nothing, and says so.
    assert _point(cost, **error_attrs).as_double == 0.0


def test_unpriced_calls_are_counted_not_costed(otel: Otel, wire: WireServer) -> None:
    modelforge.otel.enable(meter_provider=otel.meter_provider)
    wire.enqueue(Reply(usage=CACHED_USAGE))
    model = _model(wire, "in-house-model-7")
    model.invoke("hello", config={"callbacks": [UsageCallbackHandler(persist=False)]})
    otel.flush()

    found = otel.collector.metrics()
    assert "modelforge.cost" not in found
    unpriced = found["modelforge.calls.unpriced"]
    assert unpriced.unit == "{call}"
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "in-house-model-7",
        "gen_ai.response.model": "in-house-model-7",
    }
    assert _point(unpriced, **attrs).as_int == 1
    point = _point(found["gen_ai.client.token.usage"], **attrs, **{"gen_ai.token.type": "input"})
    assert point.sum == 1000


def test_operation_and_provider_names_map_to_well_known_values(otel: Otel) -> None:
    modelforge.otel.enable(meter_provider=otel.meter_provider)
    embed = CallRecord(
        run_id="otel-embedding",
        usage=Usage(input_tokens=12),
        cost=Cost(),
        operation="embedding",
        provider="amazon-bedrock",
        model="amazon.titan-embed-text-v2:0",
    )
    completion = CallRecord(
        run_id="otel-completion",
        usage=Usage(input_tokens=5, output_tokens=7),
        cost=Cost(),
        operation="completion",
        provider="mistral",
        status="error",
        latency_ms=12.5,
    )
    for record in (embed, completion):
        recorder.deliver(record, persist=False)
    otel.flush()

    found = otel.collector.metrics()
    tokens = found["gen_ai.client.token.usage"]
    embed_attrs = {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "aws.bedrock",
        "gen_ai.request.model": "amazon.titan-embed-text-v2:0",
    }
    # Embeddings produce no output tokens, so only the input half is reported.
    assert _point(tokens, **embed_attrs, **{"gen_ai.token.type": "input"}).sum == 12
    # No model known: the attribute is left out; no error type known: `_OTHER`.
    completion_attrs = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "mistral_ai",
        "error.type": "_OTHER",
    }
    assert _point(tokens, **completion_attrs, **{"gen_ai.token.type": "output"}).sum == 7
    assert len(_points(tokens)) == 3
    # Only the completion has a latency, so only it has a duration.
    duration = found["gen_ai.client.operation.duration"]
    assert len(_points(duration)) == 1
    assert _point(duration, **completion_attrs).sum == pytest.approx(0.0125)
    assert _point(found["modelforge.calls.unpriced"], **embed_attrs).as_int == 1


def test_enable_defaults_to_the_global_meter_provider(
    otel: Otel, wire: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otel_metrics, "get_meter_provider", lambda: otel.meter_provider)
    modelforge.otel.enable()
    _ok_call(wire, UsageCallbackHandler(persist=False))
    otel.flush()

    tokens = otel.collector.metrics()["gen_ai.client.token.usage"]
    assert _point(tokens, **OK_ATTRS, **{"gen_ai.token.type": "input"}).sum == 1000
    # Tracing is only on when a tracer provider is passed.
    assert otel.collector.spans() == []


def test_enable_is_idempotent_and_disable_stops_export(otel: Otel, wire: WireServer) -> None:
    handler = UsageCallbackHandler(persist=False)
    modelforge.otel.enable(meter_provider=otel.meter_provider)
    first = _our_sinks()
    modelforge.otel.enable(meter_provider=otel.meter_provider)
    assert _our_sinks() == first
    assert len(first) == 1

    _ok_call(wire, handler)
    otel.flush()
    tokens = otel.collector.metrics()["gen_ai.client.token.usage"]
    assert _point(tokens, **OK_ATTRS, **{"gen_ai.token.type": "input"}).count == 1

    # Other providers replace the setup: still a single sink.
    modelforge.otel.enable(otel.meter_provider, otel.tracer_provider)
    assert len(_our_sinks()) == 1
    assert _our_sinks() != first

    modelforge.otel.disable()
    modelforge.otel.disable()
    assert _our_sinks() == []
    _ok_call(wire, handler)
    otel.flush()
    tokens = otel.collector.metrics()["gen_ai.client.token.usage"]
    # Cumulative: still the one call from before disable().
    assert _point(tokens, **OK_ATTRS, **{"gen_ai.token.type": "input"}).count == 1
    assert otel.collector.spans() == []


# --------------------------------------------------------------------------- spans


def test_spans_carry_usage_cost_and_timing(
    otel: Otel, wire: WireServer, captured: list[CallRecord]
) -> None:
    modelforge.otel.enable(otel.meter_provider, otel.tracer_provider)
    handler = UsageCallbackHandler(persist=False)
    _ok_call(wire, handler)
    error_attrs = _failing_call(wire, handler)
    otel.flush()

    spans = otel.collector.spans()
    assert len(spans) == 2
    assert "" in otel.collector.encodings  # traces went uncompressed
    ok, failed = sorted(spans, key=lambda s: "error.type" in _attrs(s.attributes))
    ok_record, failed_record = captured

    assert ok.name == "chat gpt-4o"
    assert ok.kind == Span.SpanKind.Value("SPAN_KIND_CLIENT")
    assert _attrs(ok.attributes) == {
        **OK_ATTRS,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
        "gen_ai.usage.cache_read.input_tokens": 800,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "modelforge.cost_usd": "0.0025",
    }
    assert Decimal(_attrs(ok.attributes)["modelforge.cost_usd"]) == ok_record.cost.total
    assert ok.status.code == Status.StatusCode.Value("STATUS_CODE_UNSET")
    assert ok.start_time_unix_nano == _ns(ok_record.ts)
    assert ok_record.latency_ms is not None
    assert ok.end_time_unix_nano - ok.start_time_unix_nano == round(ok_record.latency_ms * 1e6)

    assert failed.name == "chat gpt-4o"
    assert failed.kind == Span.SpanKind.Value("SPAN_KIND_CLIENT")
    assert failed.status.code == Status.StatusCode.Value("STATUS_CODE_ERROR")
    # No usage came back, so no token counts; the zero cost is still exact.
    assert _attrs(failed.attributes) == {**error_attrs, "modelforge.cost_usd": "0"}
    assert failed.start_time_unix_nano == _ns(failed_record.ts)


def test_span_reports_cache_writes_reasoning_and_estimates(otel: Otel) -> None:
    modelforge.otel.enable(otel.meter_provider, otel.tracer_provider)
    usage = Usage(
        input_tokens=1000,
        cache_write_tokens=300,
        cache_write_1h_tokens=200,
        output_tokens=50,
        reasoning_tokens=20,
        estimated=True,
    )
    record = CallRecord(
        run_id="otel-span-parts",
        usage=usage,
        cost=Cost(),
        ts="not a timestamp",
        provider="anthropic",
        latency_ms=250.0,
        ttft_ms=100.0,
    )
    recorder.deliver(record, persist=False)
    otel.flush()

    (span,) = otel.collector.spans()
    assert span.name == "chat"  # no request model known
    attrs = _attrs(span.attributes)
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 500  # 5-minute + 1-hour writes
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 20
    assert attrs["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.1)
    assert attrs["modelforge.usage.estimated"] is True
    assert "modelforge.cost_usd" not in attrs  # unpriced
    # An unreadable start time falls back to "ended now", keeping the real duration.
    assert span.end_time_unix_nano - span.start_time_unix_nano == 250_000_000


# --------------------------------------------------------------------------- packaging


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_modelforge_does_not_import_opentelemetry() -> None:
    result = _run(
        """
        import sys
        import modelforge
        modelforge.price("gpt-4o", modelforge.Usage(input_tokens=1))
        modelforge.CallRecord, modelforge.track_usage
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        print(loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
