"""LangChain adapter: `UsageCallbackHandler` and the hook behind `track_usage()`.

The handler only translates callback events into core calls: usage extraction,
pricing and delivery live in framework-free modules.

>>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
>>> from modelforge.langchain import UsageCallbackHandler
>>> handler = UsageCallbackHandler(persist=False)
>>> FakeListChatModel(responses=["hi"]).invoke("hello", config={"callbacks": [handler]}).content
'hi'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from modelforge.errors import missing_extra

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.outputs import ChatGeneration, LLMResult
    from langchain_core.tracers.context import register_configure_hook
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "langchain") from exc

from modelforge import budgets, config, recorder
from modelforge.budgets import Budget, CallFacts
from modelforge.context_guard import guard_call, max_output_tokens
from modelforge.errors import ContextWindowExceededError
from modelforge.estimate import HeldPrompt, text_of
from modelforge.providers import provider_of_class
from modelforge.records import CallRecord, clean_attrs, clean_tags, elapsed_ms, price_call, utc_now
from modelforge.session import UsageSession, current_sessions, guarding
from modelforge.usage import Usage, extract_usage, from_langchain, recorded_tier

__all__ = ["UsageCallbackHandler"]

ABANDON_AFTER = 600.0
# Open runs (and chain or tool runs) past this many: the oldest are abandoned early.
MAX_OPEN_RUNS = 100_000


@dataclass(slots=True)
class _Run:
    run_id: str
    started: float
    ts: str
    provider: str | None
    model: str | None
    parent_run_id: str | None
    trace_id: str
    agent: str | None
    run_name: str | None
    tags: tuple[str, ...]
    attrs: dict[str, str]
    operation: str
    prompt: HeldPrompt
    first_token: float | None = None


class UsageCallbackHandler(BaseCallbackHandler):
    """Records every chat-model and LLM call it sees, priced, into the usage log.

    Pass it as a callback (`config={"callbacks": [handler]}` or `callbacks=[handler]`
    on the model); it works for sync and async calls, streams, batches, chains,
    agents and LangGraph graphs. It never raises into your code, except on purpose,
    before a request is sent: with `guard_context=True`, and with
    `BudgetExceededError` from a `block` budget (its own, its sessions' or
    config.toml's) that has been reached.

    Args:
        persist: False keeps records out of the SQLite log (sessions still see them).
        db: the log file; default `MODELFORGE_DB` or the user data dir.
        metadata_keys: run-metadata keys copied into each record's attributes.
        abandon_after: seconds after which a run that never ended (a cancelled or
            timed-out `ainvoke` sends no end event) is recorded with status
            `abandoned`, its input estimated, and forgotten. Default 10 minutes.
        guard_context: True raises `ContextWindowExceededError` before a request is
            sent when its prompt, plus the output it asks for (`max_tokens`), does not
            fit the model's context window.
        budgets: `Budget`s checked at the start of every call (docs/budgets.md).
    """

    run_inline = True  # our work is tiny; running inline avoids an executor hop

    def __init__(
        self,
        *,
        persist: bool = True,
        db: Path | str | None = None,
        metadata_keys: Sequence[str] | None = None,
        sessions: Iterable[UsageSession] = (),
        abandon_after: float = ABANDON_AFTER,
        guard_context: bool = False,
        budgets: Iterable[Budget] = (),
    ) -> None:
        super().__init__()
        self.guard_context = guard_context
        self.budgets = tuple(budgets)
        self.persist = persist
        self.abandon_after = abandon_after
        self.db = db
        self.metadata_keys = tuple(
            metadata_keys if metadata_keys is not None else config.load_settings().metadata_keys
        )
        self.sessions = tuple(sessions)
        self._runs: dict[UUID, _Run] = {}
        self._roots: dict[UUID, UUID] = {}
        self._lock = threading.Lock()
        self.errors = 0

    # --- starts --------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.guard_context:
            self._guard_context(serialized, messages, metadata, kwargs)
        self._check_budgets(serialized, messages, tags, metadata, kwargs)
        try:
            self._start(run_id, parent_run_id, serialized, messages, tags, metadata, kwargs, "chat")
        except Exception as exc:
            self._failed("on_chat_model_start", exc)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.guard_context:
            self._guard_context(serialized, prompts, metadata, kwargs)
        self._check_budgets(serialized, prompts, tags, metadata, kwargs)
        try:
            self._start(
                run_id, parent_run_id, serialized, prompts, tags, metadata, kwargs, "completion"
            )
        except Exception as exc:
            self._failed("on_llm_start", exc)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self._remember_root(run_id, parent_run_id)
        except Exception as exc:
            self._failed("on_chain_start", exc)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._roots.pop(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._roots.pop(run_id, None)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self._remember_root(run_id, parent_run_id)
        except Exception as exc:
            self._failed("on_tool_start", exc)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._roots.pop(run_id, None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._roots.pop(run_id, None)

    def on_llm_new_token(
        self, token: str | list[str | dict[str, Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.first_token is None:
            run.first_token = time.perf_counter()

    # --- ends ----------------------------------------------------------------------

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        try:
            self._finish(run_id, response, None)
        except Exception as exc:
            self._failed("on_llm_end", exc)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        try:
            self._finish(run_id, kwargs.get("response"), error)
        except Exception as exc:
            self._failed("on_llm_error", exc)

    # --- internals -----------------------------------------------------------------

    def _remember_root(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        with self._lock:
            root = self._roots.get(parent_run_id, parent_run_id) if parent_run_id else run_id
            self._roots[run_id] = root
            return root

    def _guard_context(
        self,
        serialized: dict[str, Any] | None,
        prompts: Any,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        """Raise `ContextWindowExceededError` when a prompt of this run cannot fit its
        model's window: the one error this handler lets out. Any other failure here is
        the handler's own, and lets the call through."""
        try:
            metadata = metadata or {}
            params = kwargs.get("invocation_params") or {}
            model = _requested_model(metadata, params)
            if not model:
                return
            provider = metadata.get("ls_provider") or _provider_from_class(serialized)
            for prompt in prompts or ():  # a batch: one request per prompt
                guard_call(
                    str(model),
                    prompt,
                    provider=provider if isinstance(provider, str) else None,
                    tools=params.get("tools"),
                    max_output=max_output_tokens(params),
                )
        except ContextWindowExceededError:
            raise
        except Exception as exc:
            self._failed("guard_context", exc)

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        serialized: dict[str, Any] | None,
        prompts: Any,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
        operation: str,
    ) -> None:
        metadata = metadata or {}
        params = kwargs.get("invocation_params") or {}
        model = _requested_model(metadata, params)
        provider = metadata.get("ls_provider") or _provider_from_class(serialized)
        agent = _agent(metadata)
        picked = {k: metadata[k] for k in self.metadata_keys if k in metadata}
        name = kwargs.get("name")
        started, ts = time.perf_counter(), utc_now()
        prompt = HeldPrompt.of(_prompt_texts(prompts), str(model) if model else None, operation)
        with self._lock:
            roots = self._roots
            root = roots.get(parent_run_id, parent_run_id) if parent_run_id else run_id
            roots[run_id] = root
            run_text = str(run_id)
            self._runs[run_id] = _Run(
                run_id=run_text,
                started=started,
                ts=ts,
                provider=provider if isinstance(provider, str) else None,
                model=str(model) if model else None,
                parent_run_id=str(parent_run_id) if parent_run_id else None,
                trace_id=run_text if root is run_id else str(root),
                agent=str(agent)[:256] if agent else None,
                run_name=name if isinstance(name, str) else None,
                tags=clean_tags(tags),
                attrs=clean_attrs(picked) if picked else {},
                operation=operation,
                prompt=prompt,
            )
            if len(self._roots) > MAX_OPEN_RUNS:  # chains cancelled before they ended
                for old in list(self._roots)[: MAX_OPEN_RUNS // 2]:
                    self._roots.pop(old, None)
        for run in self._expired(started):
            try:
                self._record(run, None, None, abandoned=True)
            finally:
                run.prompt.release()

    def _expired(self, now: float) -> list[_Run]:
        """Forget the runs started more than `abandon_after` seconds before `now`, and
        the oldest beyond `MAX_OPEN_RUNS`."""
        expired: list[UUID] = []
        with self._lock:
            excess = len(self._runs) - MAX_OPEN_RUNS
            for run_id, run in self._runs.items():  # in start order
                if len(expired) >= excess and now - run.started < self.abandon_after:
                    break
                expired.append(run_id)
            for run_id in expired:
                self._roots.pop(run_id, None)
            return [self._runs.pop(run_id) for run_id in expired]

    def _finish(
        self, run_id: UUID, response: LLMResult | None, error: BaseException | None
    ) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            self._roots.pop(run_id, None)
        if run is None:
            return  # a run we never saw start (or already recorded as abandoned)
        try:
            self._record(run, response, error)
        finally:
            run.prompt.release()

    def _record(
        self,
        run: _Run,
        response: LLMResult | None,
        error: BaseException | None,
        *,
        abandoned: bool = False,
    ) -> None:
        ended = None if abandoned else time.perf_counter()
        try:
            usage, served_model, service_tier = read_llm_result(response)
            outputs = _output_texts(response) if usage is None and error is None else []
        except Exception as exc:
            # An unreadable response still gets a record, estimated from the prompt alone.
            self._failed("read_llm_result", exc)
            usage, served_model, service_tier, outputs = None, None, None, []
        estimate_method = None
        if usage is None:
            if error is None:
                usage, estimate_method = run.prompt.estimate(outputs, served_model or run.model)
            else:
                usage = Usage()
        tier = recorded_tier(service_tier)
        if tier and not usage.service_tier:
            usage = usage.model_copy(update={"service_tier": tier})
        cost = price_call(usage, run.model, served_model, run.provider)
        record = CallRecord(
            run_id=run.run_id,
            usage=usage,
            cost=cost,
            ts=run.ts,
            framework="langchain",
            operation=run.operation,
            provider=run.provider,
            model=run.model,
            response_model=served_model,
            status="abandoned" if abandoned else "error" if error is not None else "ok",
            error_type=type(error).__name__ if error is not None else None,
            latency_ms=elapsed_ms(run.started, ended),
            ttft_ms=elapsed_ms(run.started, run.first_token),
            estimate_method=estimate_method,
            parent_run_id=run.parent_run_id,
            trace_id=run.trace_id,
            agent=run.agent,
            run_name=run.run_name,
            tags=run.tags,
            attrs=run.attrs,
        )
        recorder.deliver(record, sessions=self.sessions, persist=self.persist, db=self.db)

    def _failed(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        recorder.report_error(f"UsageCallbackHandler.{where}", exc)

    # --- budgets -------------------------------------------------------------------

    @property
    def raise_error(self) -> bool:
        """Whether LangChain lets this handler's errors reach the caller (it reads this
        only once a callback has raised): True with `guard_context` and while a block or
        throttle budget applies. Every other error of ours is caught where it happens."""
        return self.guard_context or any(
            b.action != "warn" for b in budgets.applicable(self.budgets, self.sessions)
        )

    @raise_error.setter
    def raise_error(self, value: bool) -> None:
        """Kept for LangChain's interface; `guard_context` and the budgets decide."""

    def _check_budgets(
        self,
        serialized: dict[str, Any] | None,
        prompts: Any,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        """The start-of-call budget check (its own budgets, its sessions' and
        config.toml's): raises `BudgetExceededError` before the request is sent; anything
        else going wrong is logged once and lets the call through."""
        meta = metadata or {}
        params = kwargs.get("invocation_params") or {}
        around = (*self.sessions, *current_sessions())  # as `recorder.deliver` merges them
        db = self.db
        if db is None and around:
            db = next((s.db for s in reversed(around) if s.db), None)

        def facts() -> CallFacts:
            model, agent = _requested_model(meta, params), _agent(meta)
            provider = meta.get("ls_provider") or _provider_from_class(serialized)
            picked = {k: meta[k] for k in self.metadata_keys if k in meta}
            return CallFacts(
                model=str(model) if model else None,
                provider=provider if isinstance(provider, str) else None,
                agent=str(agent)[:256] if agent else None,
                tags=clean_tags(tags),
                attrs=clean_attrs(*(s.attrs for s in around), picked),
            )

        def estimate() -> Any:
            model = _requested_model(meta, params)
            prompt = prompts[0] if isinstance(prompts, list) and prompts else None
            return budgets.estimate_call(model and str(model), prompt, max_output_tokens(params))

        budgets.check(self.budgets, facts, db=db, sessions=self.sessions, estimate=estimate)


def _requested_model(metadata: dict[str, Any], params: dict[str, Any]) -> Any:
    return (
        metadata.get("ls_model_name")
        or params.get("model")
        or params.get("model_name")
        or params.get("model_id")
        or params.get("deployment_name")
    )


def _agent(metadata: dict[str, Any]) -> Any:
    return metadata.get("langgraph_node") or metadata.get("agent")


def _provider_from_class(serialized: dict[str, Any] | None) -> str | None:
    ids = (serialized or {}).get("id")
    if isinstance(ids, list) and ids:
        return provider_of_class(str(ids[-1]))
    return None


def read_llm_result(response: LLMResult | None) -> tuple[Usage | None, str | None, str | None]:
    """Usage, served model and service tier from an `LLMResult`.

    Sources, in order: the message's `usage_metadata`, the generation's
    `generation_info`, then `llm_output["token_usage"]`. With `n>1` every generation
    carries the same usage, so only the first one that has it counts.
    """
    if response is None:
        return None, None, None
    llm_output = response.llm_output or {}
    served = llm_output.get("model_name") or llm_output.get("model")
    tier = llm_output.get("service_tier")
    usage: Usage | None = None
    for generations in response.generations or []:
        for generation in generations or []:
            message = (
                getattr(generation, "message", None)
                if isinstance(generation, ChatGeneration)
                else None
            )
            meta = getattr(message, "response_metadata", None) or {}
            served = served or meta.get("model_name") or meta.get("model")
            tier = tier or meta.get("service_tier")
            if usage is None:
                metadata = getattr(message, "usage_metadata", None)
                if metadata:
                    usage = from_langchain(metadata)
                elif generation.generation_info:
                    info = generation.generation_info
                    usage = extract_usage(info.get("usage") or info.get("token_usage"), tier)
    if usage is None:
        usage = extract_usage(llm_output.get("token_usage") or llm_output.get("usage"), tier)
    return usage, str(served) if served else None, tier if isinstance(tier, str) else None


def _prompt_texts(prompts: Any) -> list[str]:
    texts: list[str] = []
    for item in prompts or []:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list):  # one prompt's messages
            texts.extend(text_of(getattr(m, "content", "")) for m in item)
    return texts


def _output_texts(response: LLMResult | None) -> list[str]:
    if response is None:
        return []
    return [g.text for gens in response.generations or [] for g in gens or [] if g.text]


# --- track_usage() support -------------------------------------------------------------

# One module-level var: a var per call would add a configure hook per call, forever
# (langchain issue #32300).
_tracking_handler: ContextVar[UsageCallbackHandler | None] = ContextVar(
    "modelforge_langchain_handler", default=None
)
register_configure_hook(_tracking_handler, inheritable=True)


def activate_tracking(stack: tuple[UsageSession, ...]) -> Callable[[], None]:
    """Attach a handler feeding `stack` to every LangChain run in this context; it
    guards the context window when any block of `stack` asked for that."""
    handler = UsageCallbackHandler(sessions=stack, guard_context=guarding(stack))
    token = _tracking_handler.set(handler)
    return lambda: _tracking_handler.reset(token)
