"""LlamaIndex adapter: `instrument()`, `UsageEventHandler`, `UsageCallbackHandler`.

Both handlers only translate LlamaIndex events into core calls: usage extraction,
estimates, pricing and delivery live in framework-free modules, and one function
(`_build_record`) turns what a call left behind into a `CallRecord`.

LlamaIndex nests its events: `Anthropic.complete()` calls `chat()` and
`CustomLLM.chat()` calls `complete()`, so one API call shows two start/end pairs. A
small span handler remembers the parent of every open span; a call that starts
inside another call's span is folded into it, so each API call is recorded once,
under the outer call's span id.

>>> from llama_index.core.llms import ChatMessage
>>> from llama_index.core.llms.mock import MockLLM
>>> from modelforge import track_usage
>>> with track_usage(persist=False, llamaindex=True) as session:
...     _ = MockLLM().chat([ChatMessage(role="user", content="hello")])
>>> len(session.calls), session.calls[0].framework, session.calls[0].estimated
(1, 'llamaindex', True)
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelforge.errors import missing_extra

try:
    from llama_index.core.callbacks.base_handler import BaseCallbackHandler
    from llama_index.core.callbacks.schema import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.instrumentation.events.embedding import (
        EmbeddingEndEvent,
        EmbeddingStartEvent,
    )
    from llama_index.core.instrumentation.events.exception import ExceptionEvent
    from llama_index.core.instrumentation.events.llm import (
        LLMChatEndEvent,
        LLMChatInProgressEvent,
        LLMChatStartEvent,
        LLMCompletionEndEvent,
        LLMCompletionInProgressEvent,
        LLMCompletionStartEvent,
    )
    from llama_index.core.instrumentation.events.span import (  # type: ignore[attr-defined]
        SpanDropEvent,
    )
    from llama_index.core.instrumentation.span import active_span_id
    from llama_index.core.instrumentation.span_handlers import NullSpanHandler
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "llamaindex") from exc

from modelforge import config, recorder
from modelforge.estimate import estimate_usage, text_of
from modelforge.records import CallRecord, clean_attrs, elapsed_ms, price_call, utc_now
from modelforge.session import UsageSession, current_sessions
from modelforge.usage import (
    Usage,
    extract_usage,
    fields_of,
    from_anthropic,
    plain_openai_chat,
)
from modelforge.usage import field as _field

__all__ = [
    "UsageCallbackHandler",
    "UsageEventHandler",
    "activate_tracking",
    "instrument",
    "uninstrument",
]

RUN_PREFIX = "llamaindex:"
# Calls whose end never comes (a stream nobody iterates) are forgotten past this many.
MAX_OPEN_CALLS = 10_000
MAX_OPEN_SPANS = 100_000
_MAX_DEPTH = 256
# LlamaIndex's span ids are "<Class>.<method>-<uuid4>".
_UUID_SUFFIX = 37
# Names LlamaIndex gives models it knows nothing about.
_NO_MODEL = frozenset({"", "unknown"})
_ANTHROPIC_CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")
_ANTHROPIC_USAGE_KEYS = ("input_tokens", "output_tokens", "output_tokens_details", "service_tier")


def read(obj: Any, name: str) -> Any:
    """`usage.field`, with plain dicts (most raw payloads) read without the ABC check."""
    if type(obj) is dict:
        return obj.get(name)
    return _field(obj, name)


# --- span parents: how a nested call finds the call it belongs to ----------------------

# span id -> parent span id, for every open span in the process.
_parents: dict[str, str | None] = {}


class _SpanParents(NullSpanHandler):
    """Remembers each open span's parent; it records nothing itself."""

    @classmethod
    def class_name(cls) -> str:
        return "ModelForgeSpanParents"

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _parents[id_] = parent_id
        if len(_parents) > MAX_OPEN_SPANS:
            _forget_oldest(_parents, MAX_OPEN_SPANS // 2)

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        _parents.pop(id_, None)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        _parents.pop(id_, None)


def _forget_oldest(table: dict[Any, Any], count: int) -> None:
    for key in list(table)[:count]:
        table.pop(key, None)


def _enclosing(
    span_id: str | None, open_calls: Mapping[str, _Call]
) -> tuple[_Call | None, str | None, str | None]:
    """The open call `span_id` is, or is nested in; when there is none, also the span's
    parent and the root of its tree (both None for a root span). One walk up the tree
    answers both, as a call start needs one or the other."""
    if span_id is None:
        return None, None, None
    call = open_calls.get(span_id)
    if call is not None:
        return call, None, None
    span = parent = root = _parents.get(span_id)
    if parent is None:  # a root span, the usual case
        return None, None, None
    for _ in range(_MAX_DEPTH):
        if span is None:
            break
        call = open_calls.get(span)
        if call is not None:
            return call, None, None
        span = _parents.get(span)
        if span is not None:
            root = span
    return None, parent, root


# --- one call, from start to end --------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Call:
    key: str  # where the open call is looked up: its span id
    run_key: str  # its run id, less the "llamaindex:" prefix
    operation: str
    model_dict: Any
    started: float
    ts: str  # when it started, as the record gives it
    sessions: tuple[UsageSession, ...]
    tags: Any
    span_id: str | None
    # Read while the call's span is open: a stream's span closes before the stream ends.
    parent_span: str | None
    root_span: str | None
    # The innermost call's input, held only until the call ends and only to estimate
    # tokens when the provider reports none; never stored.
    prompt: Any = None
    prompt_is_chat: bool = True
    nested: list[str] | None = None  # keys of calls folded into this one
    response: Any = None
    first_usage: Any = None
    last_usage: Any = None
    first_token: float | None = None


def _new_call(
    key: str,
    run_key: str,
    operation: str,
    model_dict: Any,
    tags: Any,
    span_id: str | None,
    parent: str | None,
    root: str | None,
    prompt: Any = None,
) -> _Call:
    return _Call(
        key,
        run_key,
        operation,
        model_dict,
        time.perf_counter(),
        utc_now(),
        current_sessions(),
        tags,
        span_id,
        parent,
        root,
        prompt,
        operation == "chat",
    )


_NO_CALLS: Mapping[str, _Call] = {}


class _Calls:
    """Open calls of one handler, keyed by span id (or event id), nesting folded in."""

    def __init__(self) -> None:
        self._open: dict[str, _Call] = {}
        self._embeds: dict[str, deque[_Call]] = {}
        self._lock = threading.Lock()

    def start(
        self,
        key: str,
        run_key: str,
        span_id: str | None,
        operation: str,
        model_dict: Any,
        prompt: Any,
        tags: Any,
    ) -> None:
        with self._lock:
            open_calls = self._open
            call, parent, root = _enclosing(span_id, open_calls)
            if call is None:
                if len(open_calls) >= MAX_OPEN_CALLS:
                    _forget_oldest(open_calls, MAX_OPEN_CALLS // 2)
                open_calls[key] = _new_call(
                    key, run_key, operation, model_dict, tags, span_id, parent, root, prompt
                )
                return
            # A nested call, folded into the outer one.
            if call.nested is None:
                call.nested = [key]
            else:
                call.nested.append(key)
            # The innermost call's input is the one the provider was sent.
            call.prompt, call.prompt_is_chat = prompt, operation == "chat"
            open_calls[key] = call

    def progress(self, key: str | None, response: Any) -> None:
        call = self._open.get(key) if key else None
        if call is None:
            return
        if call.first_token is None:
            call.first_token = time.perf_counter()
        call.response = response
        usage = _raw_usage(read(response, "raw"))[0]
        if usage is not None:
            if call.first_usage is None:
                call.first_usage = usage
            call.last_usage = usage

    def end(self, key: str | None, response: Any = None) -> _Call | None:
        """The call to record when `key` is an outermost call, else None.

        A nested call's end only hands its response to the outer call; a nested call's
        failure reaches the outer call by its own event.
        """
        with self._lock:
            call = self._open.pop(key, None) if key else None
            if call is None:
                return None
            if response is not None:
                call.response = response
            if call.key != key:
                return None
            for inner in call.nested or ():
                self._open.pop(inner, None)
        return call

    def embed_start(
        self, key: str, run_key: str, span_id: str | None, model_dict: Any, tags: Any
    ) -> None:
        _, parent, root = _enclosing(span_id, _NO_CALLS)
        call = _new_call(key, run_key, "embedding", model_dict, tags, span_id, parent, root)
        with self._lock:
            # One batch span can hold several start/end pairs; they end in order.
            self._embeds.setdefault(key, deque()).append(call)
            if len(self._embeds) > MAX_OPEN_CALLS:
                _forget_oldest(self._embeds, MAX_OPEN_CALLS // 2)

    def embed_end(self, key: str, chunks: Any) -> _Call | None:
        with self._lock:
            waiting = self._embeds.get(key)
            if not waiting:
                return None
            call = waiting.popleft()
            if not waiting:
                del self._embeds[key]
        call.prompt = chunks
        return call

    def embed_fail(self, key: str) -> list[_Call]:
        with self._lock:
            return list(self._embeds.pop(key, None) or ())


# --- reading a response -----------------------------------------------------------------


def _raw_usage(raw: Any) -> tuple[Any, Any, Any]:
    """The usage object, served model and service tier a raw provider response carries.

    Chat Completions and Anthropic messages carry `usage` (and `model`) at the top; a
    streamed Responses `ResponseCompletedEvent` under `response`; an Anthropic
    `message_start` event under `message`.
    """
    if raw is None or isinstance(raw, (str, bytes, int, float, bool)):
        return None, None, None
    usage, model, tier = read(raw, "usage"), read(raw, "model"), read(raw, "service_tier")
    if usage is None:
        for key in ("response", "message"):
            inner = read(raw, key)
            if inner is not None and not isinstance(inner, (str, bytes)):
                usage = read(inner, "usage")
                if usage is not None:
                    model = model or read(inner, "model")
                    tier = tier or read(inner, "service_tier")
                    break
    return usage, model, tier


def _to_usage(payload: Any, provider: str | None, tier: Any) -> Usage | None:
    if payload is None:
        return None
    if provider == "anthropic" and read(payload, "input_tokens") is not None:
        return from_anthropic(payload)  # input_tokens there excludes the cache
    return extract_usage(payload, tier)


def _keep_cache_counts(first: Any, last: Any) -> Any:
    """An Anthropic stream's final usage with the cache counts its `message_start` had.

    The final `message_delta` may carry only the output count; the cache counts are
    then only in the usage that opened the stream.
    """
    if last is None:
        return first
    if all(read(last, k) is None for k in _ANTHROPIC_CACHE_KEYS) and any(
        read(first, k) is not None for k in _ANTHROPIC_CACHE_KEYS
    ):
        merged = {k: read(first, k) for k in (*_ANTHROPIC_USAGE_KEYS, *_ANTHROPIC_CACHE_KEYS)}
        merged.update({k: v for k in _ANTHROPIC_USAGE_KEYS if (v := read(last, k)) is not None})
        return merged
    return last


def read_response(
    response: Any, provider: str | None, first_usage: Any = None, last_usage: Any = None
) -> tuple[Usage | None, str | None, tuple[str, ...]]:
    """Usage, served model and anomalies of discarded sources, from a LlamaIndex response.

    Sources, in order: `response.raw` (dict or SDK object), the usage a stream's chunks
    carried, then the token counts LlamaIndex copies into `additional_kwargs`. A source
    that yields no tokens is skipped, so a call is estimated rather than recorded as zero.
    """
    usage_obj, served, tier = _raw_usage(read(response, "raw"))
    if usage_obj is None:
        usage_obj = last_usage
    if first_usage is not None and usage_obj is not first_usage:
        usage_obj = _keep_cache_counts(first_usage, usage_obj)
    anomalies: tuple[str, ...] = ()
    for payload in _usage_sources(response, usage_obj):
        usage = _to_usage(payload, provider, tier)
        if usage is None:
            continue
        if not usage.is_empty or usage.cache_hit:
            if provider == "anthropic" and all(
                read(payload, k) is None for k in _ANTHROPIC_CACHE_KEYS
            ):
                # LlamaIndex does not pass a stream's message_start on, and an older
                # API's final message_delta has no cache counts: say so, never guess.
                anomalies += ("anthropic usage has no cache counts; cache tokens unknown",)
            if anomalies:
                usage = usage.model_copy(update={"anomalies": usage.anomalies + anomalies})
            return usage, _model_name(served), ()
        anomalies += usage.anomalies
    return None, _model_name(served), anomalies


def _plain_response_usage(response: Any) -> tuple[Usage, str | None] | None:
    """`read_response` of a response whose `raw` (a dict or an SDK object) carries clean
    OpenAI Chat Completions usage, for a call with no stream usage and no Anthropic
    provider: the same answer in a fraction of the time. None: use `read_response`.

    Each test below is a branch the general path would take otherwise.
    """
    fields = fields_of(response)
    raw = fields.get("raw") if fields is not None else None
    if type(raw) is not dict:  # most are dicts; fields_of reads the others, if it can
        raw = fields_of(raw)
        if raw is None:
            return None
    usage = raw.get("usage")
    payload = usage if type(usage) is dict else fields_of(usage)
    if (
        payload is None
        # `extract_usage` would look inside these
        or payload.get("usage") is not None
        or payload.get("usageMetadata") is not None
        or payload.get("usage_metadata") is not None
        # not the Chat Completions shape
        or (payload.get("prompt_tokens") is None and payload.get("completion_tokens") is None)
    ):
        return None
    plain = plain_openai_chat(payload, raw.get("service_tier"))
    # An empty usage falls through to other sources.
    if plain is None or not (plain.input_tokens or plain.output_tokens):
        return None
    return plain, _model_name(raw.get("model"))


def _usage_sources(response: Any, usage_obj: Any) -> Iterator[Any]:
    yield usage_obj
    yield read(response, "additional_kwargs")
    extra = read(read(response, "message"), "additional_kwargs")
    if isinstance(extra, dict):
        yield extra.get("usage")


def _model_name(value: Any) -> str | None:
    if isinstance(value, str) and value not in _NO_MODEL:
        return value
    return None


def _requested_model(model_dict: Any) -> str | None:
    if not isinstance(model_dict, dict):
        return None
    return _model_name(model_dict.get("model_name")) or _model_name(model_dict.get("model"))


_PROVIDER_NEEDLES = (
    ("azure", "azure"),
    ("openailike", None),
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("bedrock", "amazon-bedrock"),
    ("vertex", "google-vertex"),
    ("gemini", "google"),
    ("google", "google"),
    ("mistral", "mistral"),
    ("groq", "groq"),
    ("deepseek", "deepseek"),
    ("xai", "xai"),
)


def _provider(model_dict: Any) -> str | None:
    """The provider an LLM class talks to, from its `class_name` ("openai_llm")."""
    name = model_dict.get("class_name") if isinstance(model_dict, dict) else None
    return _provider_of_class(name) if isinstance(name, str) else None


@functools.lru_cache(maxsize=256)
def _provider_of_class(class_name: str) -> str | None:
    name = class_name.lower()
    for needle, provider in _PROVIDER_NEEDLES:
        if needle in name:
            return provider
    return None


def _prompt_texts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    texts: list[str] = []
    if isinstance(prompt, Sequence):
        for item in prompt:
            texts.append(item if isinstance(item, str) else text_of(read(item, "content")))
    return texts


def _output_texts(response: Any) -> list[str]:
    if response is None:
        return []
    message = read(response, "message")
    text = read(message, "content") if message is not None else read(response, "text")
    text = text_of(text)
    return [text] if text else []


def _span_name(span_id: str | None) -> str | None:
    if span_id and len(span_id) > _UUID_SUFFIX and span_id[-_UUID_SUFFIX] == "-":
        return span_id[:-_UUID_SUFFIX]
    return None


# --- the one place a finished call becomes a record --------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a handler's records go."""

    persist: bool = True
    db: Path | str | None = None
    metadata_keys: tuple[str, ...] = ()
    sessions: tuple[UsageSession, ...] = ()


def _build_record(
    call: _Call,
    error: BaseException | None,
    attrs_keys: Iterable[str],
    failed: Callable[[str, BaseException], None],
) -> CallRecord:
    """Turn a finished call (its response, model dict and timings) into a priced record."""
    ended = time.perf_counter()
    provider = _provider(call.model_dict)
    model = _requested_model(call.model_dict)
    usage: Usage | None = None
    served: str | None = None
    anomalies: tuple[str, ...] = ()
    estimate_method = None
    if call.operation == "embedding":
        # LlamaIndex drops the provider's embedding usage; count the chunks instead.
        usage, estimate_method = estimate_usage(_prompt_texts(call.prompt), [], model, chat=False)
    else:
        try:
            plain = None
            if error is None and call.first_usage is None and provider != "anthropic":
                plain = _plain_response_usage(call.response)
            if plain is not None:
                usage, served = plain
            else:
                usage, served, anomalies = read_response(
                    call.response, provider, call.first_usage, call.last_usage
                )
        except Exception as exc:
            failed("read_response", exc)
        if usage is None:
            # A closed stream had started; any other failure with no response seen
            # failed before the provider answered, so nothing was billed.
            if error is not None and call.response is None and not isinstance(error, GeneratorExit):
                usage = Usage()
            else:
                usage, estimate_method = estimate_usage(
                    _prompt_texts(call.prompt),
                    _output_texts(call.response),
                    served or model,
                    chat=call.prompt_is_chat,
                )
            if anomalies:
                usage = usage.model_copy(update={"anomalies": usage.anomalies + anomalies})
    parent, root = call.parent_span, call.root_span
    tags = call.tags
    run_id = RUN_PREFIX + call.run_key
    return CallRecord(
        run_id=run_id,
        usage=usage,
        cost=price_call(usage, model, served, provider),
        ts=call.ts,
        framework="llamaindex",
        operation=call.operation,
        provider=provider,
        model=model,
        response_model=served,
        status="error" if error is not None else "ok",
        error_type=type(error).__name__ if error is not None else None,
        latency_ms=elapsed_ms(call.started, ended),
        ttft_ms=None if call.first_token is None else elapsed_ms(call.started, call.first_token),
        estimate_method=estimate_method,
        parent_run_id=RUN_PREFIX + parent if parent else None,
        trace_id=RUN_PREFIX + root if root else run_id,
        run_name=_span_name(call.span_id),
        attrs=(
            clean_attrs({k: tags[k] for k in attrs_keys if k in tags})
            if tags and type(tags) is dict
            else {}
        ),
    )


class _Recorder:
    """The state and logic both handlers share; each handler owns one."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.calls = _Calls()
        self.errors = 0

    def finish(self, call: _Call | None, error: BaseException | None = None) -> None:
        if call is None:
            return
        record = _build_record(call, error, self.target.metadata_keys, self.failed)
        target = self.target
        sessions = call.sessions + target.sessions if target.sessions else call.sessions
        recorder.deliver(record, sessions=sessions, persist=target.persist, db=target.db)

    def failed(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        recorder.report_error(where, exc)


def _target(
    persist: bool,
    db: Path | str | None,
    metadata_keys: Sequence[str] | None,
    sessions: Iterable[UsageSession] = (),
) -> _Target:
    keys = metadata_keys if metadata_keys is not None else config.load_settings().metadata_keys
    return _Target(persist, db, tuple(keys), tuple(sessions))


# --- the instrumentation event handler ----------------------------------------------------


class UsageEventHandler(BaseEventHandler):
    """Records every LLM and embedding call LlamaIndex's instrumentation reports.

    `modelforge.llamaindex.instrument()` adds one to the root dispatcher; that is the
    usual way in. Sync, async and streaming calls are recorded when they end (a stream
    when it is consumed or closed); a failed or aborted call is recorded with status
    `error`. It never raises into your code.

    Args:
        persist: False keeps records out of the SQLite log (sessions still see them).
        db: the log file; default `MODELFORGE_DB` or the user data dir.
        metadata_keys: `instrument_tags` keys copied into each record's attributes.
    """

    persist: bool = True
    db: Path | str | None = None
    metadata_keys: tuple[str, ...] | None = None

    @classmethod
    def class_name(cls) -> str:
        return "ModelForgeUsageEventHandler"

    def model_post_init(self, context: Any, /) -> None:
        # Kept in the instance dict, out of pydantic's private attributes: their lookup
        # costs more than the rest of a start event.
        self.__dict__[_RECORDER] = _Recorder(_target(self.persist, self.db, self.metadata_keys))
        _use_span_parents(self)

    @property
    def errors(self) -> int:
        """Failures inside this handler, each skipped without touching the call."""
        recorder_: _Recorder = self.__dict__[_RECORDER]
        return recorder_.errors

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        on_event = _EVENT_ROUTES.get(type(event))
        if on_event is None:
            return
        try:
            on_event(self.__dict__[_RECORDER], event)
        except Exception as exc:
            where = f"UsageEventHandler.{type(event).__name__}"
            rec = self.__dict__.get(_RECORDER)  # None only if model_post_init never ran
            if rec is not None:
                rec.failed(where, exc)
            else:
                recorder.report_error(where, exc)


_RECORDER = "_modelforge_recorder"


# Events sent outside any span (never by LlamaIndex's own LLM and embedding classes)
# pair up under this key.
_NO_SPAN = "no-span"


def _chat_start(rec: _Recorder, event: Any) -> None:
    span, run_key = event.span_id, event.span_id or event.id_
    rec.calls.start(
        span or _NO_SPAN, run_key, span, "chat", event.model_dict, event.messages, event.tags
    )


def _completion_start(rec: _Recorder, event: Any) -> None:
    span, run_key = event.span_id, event.span_id or event.id_
    rec.calls.start(
        span or _NO_SPAN, run_key, span, "completion", event.model_dict, event.prompt, event.tags
    )


def _in_progress(rec: _Recorder, event: Any) -> None:
    rec.calls.progress(event.span_id or _NO_SPAN, event.response)


def _llm_end(rec: _Recorder, event: Any) -> None:
    rec.finish(rec.calls.end(event.span_id or _NO_SPAN, event.response))


def _exception(rec: _Recorder, event: Any) -> None:
    # LlamaIndex reports a stream that raised or was closed early with this event.
    error = event.exception
    key = event.span_id or _NO_SPAN
    rec.finish(rec.calls.end(key), error)
    for call in rec.calls.embed_fail(key):
        rec.finish(call, error)


def _span_drop(rec: _Recorder, event: Any) -> None:
    # A call that raised. The dispatcher sends this event from inside its `except`
    # block, so the exception itself is still at hand.
    error = sys.exc_info()[1]
    if error is None or str(error) != event.err_str:
        error = RuntimeError(event.err_str)
    key = event.span_id or _NO_SPAN
    rec.finish(rec.calls.end(key), error)
    for call in rec.calls.embed_fail(key):
        rec.finish(call, error)


def _embedding_start(rec: _Recorder, event: Any) -> None:
    key = event.span_id or _NO_SPAN
    rec.calls.embed_start(key, event.id_, event.span_id, event.model_dict, event.tags)


def _embedding_end(rec: _Recorder, event: Any) -> None:
    rec.finish(rec.calls.embed_end(event.span_id or _NO_SPAN, event.chunks))


_EVENT_ROUTES: dict[type[Any], Callable[[_Recorder, Any], None]] = {
    LLMChatStartEvent: _chat_start,
    LLMCompletionStartEvent: _completion_start,
    LLMChatInProgressEvent: _in_progress,
    LLMCompletionInProgressEvent: _in_progress,
    LLMChatEndEvent: _llm_end,
    LLMCompletionEndEvent: _llm_end,
    ExceptionEvent: _exception,
    SpanDropEvent: _span_drop,
    EmbeddingStartEvent: _embedding_start,
    EmbeddingEndEvent: _embedding_end,
}


# --- the legacy callback handler ----------------------------------------------------------


class UsageCallbackHandler(BaseCallbackHandler):
    """The same records through LlamaIndex's legacy `CallbackManager`.

    >>> from llama_index.core import Settings
    >>> from llama_index.core.callbacks import CallbackManager
    >>> Settings.callback_manager = CallbackManager([UsageCallbackHandler()])  # doctest: +SKIP

    Handles `CBEventType.LLM` and `CBEventType.EMBEDDING`; a stream is recorded when it
    has been consumed or closed. Use it or `instrument()`, not both: an LLM call seen by
    both is still stored once (both give it its span's run id), but an embedding would
    be stored twice.
    """

    def __init__(
        self,
        *,
        persist: bool = True,
        db: Path | str | None = None,
        metadata_keys: Sequence[str] | None = None,
        sessions: Iterable[UsageSession] = (),
    ) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self._recorder = _Recorder(_target(persist, db, metadata_keys, sessions))
        self._keys: dict[str, str] = {}
        _use_span_parents(self)

    @property
    def errors(self) -> int:
        """Failures inside this handler, each skipped without touching the call."""
        return self._recorder.errors

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        try:
            if event_type == CBEventType.LLM:
                self._llm_start(payload or {}, event_id)
            elif event_type == CBEventType.EMBEDDING:
                model_dict = (payload or {}).get(EventPayload.SERIALIZED)
                span_id = active_span_id.get()
                self._recorder.calls.embed_start(event_id, event_id, span_id, model_dict, None)
        except Exception as exc:
            self._recorder.failed("UsageCallbackHandler.on_event_start", exc)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        try:
            payload = payload or {}
            error = payload.get(EventPayload.EXCEPTION)
            error = error if isinstance(error, BaseException) else None
            rec, calls = self._recorder, self._recorder.calls
            if event_type == CBEventType.LLM:
                key = self._keys.pop(event_id, None)
                if error is not None:
                    rec.finish(calls.end(key), error)
                else:
                    response = payload.get(EventPayload.RESPONSE)
                    if response is None:
                        response = payload.get(EventPayload.COMPLETION)
                    rec.finish(calls.end(key, response))
            elif event_type == CBEventType.EMBEDDING:
                if error is not None:
                    for call in calls.embed_fail(event_id):
                        rec.finish(call, error)
                else:
                    rec.finish(calls.embed_end(event_id, payload.get(EventPayload.CHUNKS)))
        except Exception as exc:
            self._recorder.failed("UsageCallbackHandler.on_event_end", exc)

    def _llm_start(self, payload: Mapping[str, Any], event_id: str) -> None:
        # The LLM method's span is active here, as for the instrumentation events, so
        # both handlers give a call the same run id.
        span_id = active_span_id.get()
        key = span_id or event_id
        self._keys[event_id] = key
        if len(self._keys) > MAX_OPEN_CALLS:
            _forget_oldest(self._keys, MAX_OPEN_CALLS // 2)
        if EventPayload.MESSAGES in payload:
            operation, prompt = "chat", payload[EventPayload.MESSAGES]
        else:
            operation, prompt = "completion", payload.get(EventPayload.PROMPT)
        model_dict = payload.get(EventPayload.SERIALIZED)
        self._recorder.calls.start(key, key, span_id, operation, model_dict, prompt, None)

    def start_trace(self, trace_id: str | None = None) -> None:
        """Traces carry nothing to record."""

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        """Traces carry nothing to record."""


# --- instrument() / uninstrument() and the track_usage() hook -------------------------------

_lock = threading.RLock()
_installed: UsageEventHandler | None = None
_explicit = False
_activations = 0
_span_parents: _SpanParents | None = None
# Handlers made outside instrument(); the span-parent handler stays while any is alive.
_span_users: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _use_span_parents(user: Any) -> None:
    global _span_parents
    with _lock:
        _span_users[id(user)] = user
        if _span_parents is None:
            _span_parents = _SpanParents()
            root = get_dispatcher()
            root.span_handlers = [*root.span_handlers, _span_parents]


def _install() -> UsageEventHandler:
    global _installed
    if _installed is None:
        handler = UsageEventHandler()
        _span_users.pop(id(handler), None)
        root = get_dispatcher()
        # A new list, so a dispatch running in another thread never sees it change.
        root.event_handlers = [*root.event_handlers, handler]
        _installed = handler
    return _installed


def _remove() -> None:
    global _installed, _span_parents
    root = get_dispatcher()
    if _installed is not None:
        handler, _installed = _installed, None
        root.event_handlers = [h for h in root.event_handlers if h is not handler]
    if _span_parents is not None and not len(_span_users):
        tree, _span_parents = _span_parents, None
        root.span_handlers = [h for h in root.span_handlers if h is not tree]
        _parents.clear()


def instrument() -> UsageEventHandler:
    """Record every LlamaIndex LLM and embedding call from now on; idempotent.

    Adds one `UsageEventHandler` to LlamaIndex's root dispatcher and returns it. Records
    go to the usage log and to every `track_usage()` block open where a call starts or
    ends.
    """
    global _explicit
    with _lock:
        _explicit = True
        return _install()


def uninstrument() -> None:
    """Remove what `instrument()` added; idempotent."""
    global _explicit
    with _lock:
        _explicit = False
        _remove()


def activate_tracking(stack: tuple[UsageSession, ...]) -> Callable[[], None]:
    """Instrument LlamaIndex for a `track_usage(llamaindex=True)` block.

    The handler reads the open sessions when each call starts, so `stack` needs no
    handler of its own. Instrumentation added here is removed when the last such block
    ends, unless `instrument()` was called meanwhile.
    """
    global _activations
    with _lock:
        _activations += 1
        _install()
    undone = False

    def undo() -> None:
        global _activations
        nonlocal undone
        with _lock:
            if undone:
                return
            undone = True
            _activations -= 1
            if _activations == 0 and not _explicit:
                _remove()

    return undo
