"""A LlamaIndex call from its start to its record: which call an event belongs to, and
what a finished call becomes.

LlamaIndex nests its events: `Anthropic.complete()` calls `chat()` and
`CustomLLM.chat()` calls `complete()`, so one API call shows two start/end pairs. A
small span handler (`SpanParents`) remembers the parent of every open span; a call
that starts inside another call's span is folded into it, so each API call is recorded
once, under the outer call's span id.

The handlers in `integrations/llamaindex.py` turn LlamaIndex's events into calls on a
`CallRecorder`; reading usage from a response is `usage.from_llamaindex_response`.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelforge.errors import missing_extra

try:
    from llama_index.core.instrumentation.span_handlers import NullSpanHandler
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "llamaindex") from exc

from modelforge import config, recorder
from modelforge.context_guard import guard_call, max_output_tokens
from modelforge.estimate import estimate_usage, text_of
from modelforge.providers import provider_of_class
from modelforge.records import CallRecord, clean_attrs, elapsed_ms, price_call, utc_now
from modelforge.session import UsageSession, current_sessions
from modelforge.usage import Usage, from_llamaindex_response, raw_usage
from modelforge.usage import field as read  # a dict's key or an object's attribute

RUN_PREFIX = "llamaindex:"
# Calls whose end never comes (a stream nobody iterates) are forgotten past this many.
MAX_OPEN_CALLS = 10_000
MAX_OPEN_SPANS = 100_000
_MAX_DEPTH = 256
# LlamaIndex's span ids are "<Class>.<method>-<uuid4>".
_UUID_SUFFIX = 37
# Names LlamaIndex gives models it knows nothing about.
_NO_MODEL = frozenset({"", "unknown"})


# --- span parents: how a nested call finds the call it belongs to ----------------------

# span id -> parent span id, for every open span in the process.
_parents: dict[str, str | None] = {}


class SpanParents(NullSpanHandler):
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
            forget_oldest(_parents, MAX_OPEN_SPANS // 2)

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


def forget_oldest(table: dict[Any, Any], count: int) -> None:
    for key in list(table)[:count]:
        table.pop(key, None)


def forget_spans() -> None:
    """Forget every open span, once no `SpanParents` is installed to see them close."""
    _parents.clear()


def _enclosing(
    span_id: str | None, open_calls: Mapping[str, Call]
) -> tuple[Call | None, str | None, str | None]:
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
class Call:
    key: str  # where the open call is looked up: its span id
    run_key: str  # its run id, less the "llamaindex:" prefix
    operation: str
    model_dict: Any
    tags: Any
    span_id: str | None
    # Read while the call's span is open: a stream's span closes before the stream ends.
    parent_span: str | None
    root_span: str | None
    # The innermost call's input, held only until the call ends and only to estimate
    # tokens when the provider reports none; never stored.
    prompt: Any = None
    prompt_is_chat: bool = True
    started: float = field(default_factory=time.perf_counter)
    ts: str = field(default_factory=utc_now)  # when it started, as the record gives it
    sessions: tuple[UsageSession, ...] = field(default_factory=current_sessions)
    nested: list[str] | None = None  # keys of calls folded into this one
    response: Any = None
    first_usage: Any = None
    last_usage: Any = None
    first_token: float | None = None


_NO_CALLS: Mapping[str, Call] = {}


class OpenCalls:
    """Open calls of one handler, keyed by span id (or event id), nesting folded in."""

    def __init__(self) -> None:
        self._open: dict[str, Call] = {}
        self._embeds: dict[str, deque[Call]] = {}
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
                    forget_oldest(open_calls, MAX_OPEN_CALLS // 2)
                open_calls[key] = Call(
                    key, run_key, operation, model_dict, tags, span_id, parent, root,
                    prompt, operation == "chat",
                )  # fmt: skip
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
        usage = raw_usage(read(response, "raw"))[0]
        if usage is not None:
            if call.first_usage is None:
                call.first_usage = usage
            call.last_usage = usage

    def end(self, key: str | None, response: Any = None) -> Call | None:
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
        call = Call(key, run_key, "embedding", model_dict, tags, span_id, parent, root)
        with self._lock:
            # One batch span can hold several start/end pairs; they end in order.
            self._embeds.setdefault(key, deque()).append(call)
            if len(self._embeds) > MAX_OPEN_CALLS:
                forget_oldest(self._embeds, MAX_OPEN_CALLS // 2)

    def embed_end(self, key: str, chunks: Any) -> Call | None:
        with self._lock:
            waiting = self._embeds.get(key)
            if not waiting:
                return None
            call = waiting.popleft()
            if not waiting:
                del self._embeds[key]
        call.prompt = chunks
        return call

    def embed_fail(self, key: str) -> list[Call]:
        with self._lock:
            return list(self._embeds.pop(key, None) or ())


# --- what LlamaIndex says of a call -------------------------------------------------------


def _model_name(value: Any) -> str | None:
    if isinstance(value, str) and value not in _NO_MODEL:
        return value
    return None


def requested_model(model_dict: Any) -> str | None:
    """The model a LlamaIndex LLM or embedding class was configured with."""
    if not isinstance(model_dict, dict):
        return None
    return _model_name(model_dict.get("model_name")) or _model_name(model_dict.get("model"))


def provider_of(model_dict: Any) -> str | None:
    """The provider an LLM class talks to, from its `class_name` ("openai_llm")."""
    name = model_dict.get("class_name") if isinstance(model_dict, dict) else None
    return provider_of_class(name) if isinstance(name, str) else None


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


# --- the context-window guard ---------------------------------------------------------


def guard_llm_start(model_dict: Any, prompt: Any, call_kwargs: Any) -> None:
    """Raise `ContextWindowExceededError` when an LLM call's prompt (a string or chat
    messages), its `tools` and its output cap (the call's `max_tokens`, else the model's
    `num_output`) cannot fit the model's window."""
    model = requested_model(model_dict)
    if model is None:
        return
    kwargs = call_kwargs if isinstance(call_kwargs, Mapping) else {}
    settings = model_dict if isinstance(model_dict, Mapping) else None
    guard_call(
        model,
        prompt if prompt is not None else (),
        provider=provider_of(model_dict),
        tools=kwargs.get("tools"),
        max_output=max_output_tokens(kwargs, settings),
    )


# --- the one place a finished call becomes a record --------------------------------------


def build_record(
    call: Call,
    error: BaseException | None,
    attrs_keys: Iterable[str],
    failed: Callable[[str, BaseException], None],
) -> CallRecord:
    """Turn a finished call (its response, model dict and timings) into a priced record."""
    ended = time.perf_counter()
    provider = provider_of(call.model_dict)
    model = requested_model(call.model_dict)
    usage: Usage | None = None
    served: str | None = None
    anomalies: tuple[str, ...] = ()
    estimate_method = None
    if call.operation == "embedding":
        # LlamaIndex drops the provider's embedding usage; count the chunks instead.
        usage, estimate_method = estimate_usage(_prompt_texts(call.prompt), [], model, chat=False)
    else:
        try:
            usage, served, anomalies = from_llamaindex_response(
                call.response, provider, call.first_usage, call.last_usage
            )
            served = _model_name(served)
        except Exception as exc:
            failed("from_llamaindex_response", exc)
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
            if isinstance(tags, dict)
            else {}
        ),
    )


class CallRecorder:
    """Where a handler's records go, and the open calls it holds; each handler owns one."""

    def __init__(
        self,
        persist: bool,
        db: Path | str | None,
        metadata_keys: Sequence[str] | None,
        sessions: Iterable[UsageSession] = (),
    ) -> None:
        self.persist, self.db, self.sessions = persist, db, tuple(sessions)
        if metadata_keys is None:
            metadata_keys = config.load_settings().metadata_keys
        self.metadata_keys = tuple(metadata_keys)
        self.calls = OpenCalls()
        self.errors = 0

    def finish(self, call: Call | None, error: BaseException | None = None) -> None:
        if call is None:
            return
        record = build_record(call, error, self.metadata_keys, self.failed)
        sessions = call.sessions + self.sessions
        recorder.deliver(record, sessions=sessions, persist=self.persist, db=self.db)

    def failed(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        recorder.report_error(where, exc)
