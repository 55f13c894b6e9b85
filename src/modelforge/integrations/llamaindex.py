"""LlamaIndex adapter: `instrument()`, `UsageEventHandler`, `LlamaIndexCallbackHandler`.

Both handlers only translate LlamaIndex events into calls on a `CallRecorder`
(`integrations/llamaindex_calls.py`), which folds nested calls and turns each finished
call into a `CallRecord`; usage reading, estimates, pricing and delivery live in
framework-free modules.

>>> from llama_index.core.llms import ChatMessage
>>> from llama_index.core.llms.mock import MockLLM
>>> from modelforge import track_usage
>>> with track_usage(persist=False, llamaindex=True) as session:
...     _ = MockLLM().chat([ChatMessage(role="user", content="hello")])
>>> len(session.calls), session.calls[0].framework, session.calls[0].estimated
(1, 'llamaindex', True)
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

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
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "llamaindex") from exc

from modelforge import budgets
from modelforge.budgets import Budget, CallFacts
from modelforge.context_guard import max_output_tokens
from modelforge.errors import ContextWindowExceededError
from modelforge.integrations.llamaindex_calls import (
    MAX_OPEN_CALLS,
    CallRecorder,
    SpanParents,
    forget_oldest,
    forget_spans,
    guard_llm_start,
    provider_of,
    requested_model,
)
from modelforge.records import clean_attrs
from modelforge.session import UsageSession, current_sessions, guarding

__all__ = [
    "LlamaIndexCallbackHandler",
    "UsageEventHandler",
    "activate_tracking",
    "instrument",
    "uninstrument",
]


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
    _recorder: CallRecorder | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "ModelForgeUsageEventHandler"

    def model_post_init(self, context: Any, /) -> None:
        self._recorder = CallRecorder(self.persist, self.db, self.metadata_keys)
        _use_span_parents(self)

    @property
    def errors(self) -> int:
        """Failures inside this handler, each skipped without touching the call."""
        return self._recorder.errors if self._recorder is not None else 0

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        on_event = _EVENT_ROUTES.get(type(event))
        rec = self._recorder
        if on_event is None or rec is None:  # None: built without model_post_init
            return
        try:
            on_event(rec, event)
        except Exception as exc:
            rec.failed(f"UsageEventHandler.{type(event).__name__}", exc)


# Events sent outside any span (never by LlamaIndex's own LLM and embedding classes)
# pair up under this key.
_NO_SPAN = "no-span"


def _chat_start(rec: CallRecorder, event: Any) -> None:
    span, run_key = event.span_id, event.span_id or event.id_
    rec.calls.start(
        span or _NO_SPAN, run_key, span, "chat", event.model_dict, event.messages, event.tags
    )


def _completion_start(rec: CallRecorder, event: Any) -> None:
    span, run_key = event.span_id, event.span_id or event.id_
    rec.calls.start(
        span or _NO_SPAN, run_key, span, "completion", event.model_dict, event.prompt, event.tags
    )


def _in_progress(rec: CallRecorder, event: Any) -> None:
    rec.calls.progress(event.span_id or _NO_SPAN, event.response)


def _llm_end(rec: CallRecorder, event: Any) -> None:
    rec.finish(rec.calls.end(event.span_id or _NO_SPAN, event.response))


def _exception(rec: CallRecorder, event: Any) -> None:
    # LlamaIndex reports a stream that raised or was closed early with this event.
    error = event.exception
    key = event.span_id or _NO_SPAN
    rec.finish(rec.calls.end(key), error)
    for call in rec.calls.embed_fail(key):
        rec.finish(call, error)


def _span_drop(rec: CallRecorder, event: Any) -> None:
    # A call that raised. The dispatcher sends this event from inside its `except`
    # block, so the exception itself is still at hand.
    error = sys.exc_info()[1]
    if error is None or str(error) != event.err_str:
        error = RuntimeError(event.err_str)
    key = event.span_id or _NO_SPAN
    rec.finish(rec.calls.end(key), error)
    for call in rec.calls.embed_fail(key):
        rec.finish(call, error)


def _embedding_start(rec: CallRecorder, event: Any) -> None:
    key = event.span_id or _NO_SPAN
    rec.calls.embed_start(key, event.id_, event.span_id, event.model_dict, event.tags)


def _embedding_end(rec: CallRecorder, event: Any) -> None:
    rec.finish(rec.calls.embed_end(event.span_id or _NO_SPAN, event.chunks))


_EVENT_ROUTES: dict[type[Any], Callable[[CallRecorder, Any], None]] = {
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


class LlamaIndexCallbackHandler(BaseCallbackHandler):
    """The same records through LlamaIndex's legacy `CallbackManager`.

    >>> from llama_index.core import Settings
    >>> from llama_index.core.callbacks import CallbackManager
    >>> handler = LlamaIndexCallbackHandler()
    >>> Settings.callback_manager = CallbackManager([handler])  # doctest: +SKIP

    Handles `CBEventType.LLM` and `CBEventType.EMBEDDING`; a stream is recorded when it
    has been consumed or closed. Use it or `instrument()`, not both: an LLM call seen by
    both is still stored once (both give it its span's run id), but an embedding would
    be stored twice.

    With `guard_context=True`, or inside a `track_usage(guard_context=True)` block, it
    raises `ContextWindowExceededError` before the request is sent when the prompt,
    plus the output it asks for, does not fit the model's context window. Only this
    handler can: LlamaIndex's instrumentation dispatcher swallows every exception its
    event handlers raise, so `instrument()` records calls but cannot stop one.

    It is also where budgets stop a LlamaIndex call: at the LLM start event, before the
    request is sent, a reached `block` budget (its own `budgets`, those of the open
    `track_usage()` blocks, or config.toml's) raises `BudgetExceededError`.
    """

    def __init__(
        self,
        *,
        persist: bool = True,
        db: Path | str | None = None,
        metadata_keys: Sequence[str] | None = None,
        sessions: Iterable[UsageSession] = (),
        guard_context: bool = False,
        budgets: Iterable[Budget] = (),
    ) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.guard_context = guard_context
        self._recorder = CallRecorder(persist, db, metadata_keys, sessions)
        self.budgets = tuple(budgets)
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
        if event_type == CBEventType.LLM and (
            self.guard_context or guarding(current_sessions() + self._recorder.sessions)
        ):
            self._guard_context(payload or {})
        if event_type == CBEventType.LLM:
            self._check_budgets(payload or {})
        try:
            if event_type == CBEventType.LLM:
                self._llm_start(payload or {}, event_id)
            elif event_type == CBEventType.EMBEDDING:
                model_dict = (payload or {}).get(EventPayload.SERIALIZED)
                span_id = active_span_id.get()
                self._recorder.calls.embed_start(event_id, event_id, span_id, model_dict, None)
        except Exception as exc:
            self._recorder.failed("LlamaIndexCallbackHandler.on_event_start", exc)
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
            self._recorder.failed("LlamaIndexCallbackHandler.on_event_end", exc)

    def _guard_context(self, payload: Mapping[str, Any]) -> None:
        """Raise `ContextWindowExceededError` when the call cannot fit: the one error
        this handler lets out (LlamaIndex's CallbackManager passes it on, before the
        request). Any other failure here is the handler's own, and lets the call through."""
        try:
            prompt = payload.get(EventPayload.MESSAGES, payload.get(EventPayload.PROMPT))
            guard_llm_start(
                payload.get(EventPayload.SERIALIZED),
                prompt,
                payload.get(EventPayload.ADDITIONAL_KWARGS),
            )
        except ContextWindowExceededError:
            raise
        except Exception as exc:
            self._recorder.failed("LlamaIndexCallbackHandler.guard_context", exc)

    def _llm_start(self, payload: Mapping[str, Any], event_id: str) -> None:
        # The LLM method's span is active here, as for the instrumentation events, so
        # both handlers give a call the same run id.
        span_id = active_span_id.get()
        key = span_id or event_id
        self._keys[event_id] = key
        if len(self._keys) > MAX_OPEN_CALLS:
            forget_oldest(self._keys, MAX_OPEN_CALLS // 2)
        if EventPayload.MESSAGES in payload:
            operation, prompt = "chat", payload[EventPayload.MESSAGES]
        else:
            operation, prompt = "completion", payload.get(EventPayload.PROMPT)
        model_dict = payload.get(EventPayload.SERIALIZED)
        self._recorder.calls.start(key, key, span_id, operation, model_dict, prompt, None)

    def _check_budgets(self, payload: Mapping[str, Any]) -> None:
        """The start-of-call budget check: raises `BudgetExceededError` before the
        request is sent (the callback manager lets it through); anything else going
        wrong here is swallowed."""
        sessions = (*self._recorder.sessions, *current_sessions())
        model_dict = payload.get(EventPayload.SERIALIZED)

        def facts() -> CallFacts:
            return CallFacts(
                model=requested_model(model_dict),
                provider=provider_of(model_dict),
                attrs=clean_attrs(*(s.attrs for s in sessions)),
            )

        def estimate() -> Any:
            prompt = payload.get(EventPayload.MESSAGES, payload.get(EventPayload.PROMPT))
            kwargs = payload.get(EventPayload.ADDITIONAL_KWARGS)
            settings = model_dict if isinstance(model_dict, Mapping) else None
            limit = max_output_tokens(kwargs if isinstance(kwargs, Mapping) else None, settings)
            return budgets.estimate_call(requested_model(model_dict), prompt, limit)

        db = self._recorder.db
        budgets.check(self.budgets, facts, db=db, sessions=sessions, estimate=estimate)

    def start_trace(self, trace_id: str | None = None) -> None:
        """Traces carry nothing to record."""

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        """Traces carry nothing to record."""


def __getattr__(name: str) -> Any:
    if name == "UsageCallbackHandler":
        # Its old name, which the LangChain handler has too; documented, so it is kept
        # for a while, with a warning.
        warnings.warn(
            "modelforge.llamaindex.UsageCallbackHandler is deprecated; "
            "use LlamaIndexCallbackHandler",
            DeprecationWarning,
            stacklevel=2,
        )
        return LlamaIndexCallbackHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- instrument() / uninstrument() and the track_usage() hook -------------------------------

_lock = threading.RLock()
_installed: UsageEventHandler | None = None
_explicit = False
_activations = 0
_span_parents: SpanParents | None = None
# Handlers made outside instrument(); the span-parent handler stays while any is alive.
_span_users: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _use_span_parents(user: Any) -> None:
    global _span_parents
    with _lock:
        _span_users[id(user)] = user
        if _span_parents is None:
            _span_parents = SpanParents()
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
        forget_spans()


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
