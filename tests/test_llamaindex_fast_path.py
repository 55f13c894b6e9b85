"""The LlamaIndex handler's fast path gives exactly what the general path gives.

A finished call whose `raw` carries clean OpenAI Chat Completions usage (a dict or an
SDK object) skips `read_response` and pydantic validation of its `Usage`. Each test
here holds that shortcut to the general path it replaces: same `Usage` (fields, fields
set, repr), same served model, same record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict

from modelforge import track_usage
from modelforge.integrations import llamaindex as integration
from modelforge.llamaindex import UsageEventHandler
from modelforge.records import CallRecord
from modelforge.usage import (
    MAX_TOKENS,
    PLAIN_NAMES,
    Usage,
    checked_usage,
    field,
    fields_of,
    from_openai_chat,
    plain_openai_chat,
)
from test_llamaindex import _clean_dispatcher  # noqa: F401  (autouse: the dispatcher as found)


def _same_usage(fast: Usage, validated: Usage, fields_set: bool = True) -> None:
    assert fast == validated
    assert fast.__dict__ == validated.__dict__
    assert list(fast.__dict__) == list(validated.__dict__)
    assert repr(fast) == repr(validated)
    assert fast.model_dump() == validated.model_dump()
    assert hash(fast) == hash(validated)
    if fields_set:  # the builder names every field; a clean payload only those it read
        assert fast.__pydantic_fields_set__ == validated.__pydantic_fields_set__
        assert fast.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)


# --- a checked Usage is the validated one ----------------------------------------------

counts = st.integers(min_value=0, max_value=MAX_TOKENS)


@given(
    inp=counts,
    out=counts,
    parts=st.lists(st.integers(min_value=0, max_value=1000), min_size=5, max_size=5),
    tier=st.sampled_from([None, "flex", "priority"]),
)
def test_checked_usage_is_what_validation_builds(
    inp: int, out: int, parts: list[int], tier: str | None
) -> None:
    read, write, audio_in, reasoning, audio_out = parts
    inp += read + write + audio_in
    out += reasoning + audio_out
    validated = Usage(
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=read,
        cache_write_tokens=write,
        input_audio_tokens=audio_in,
        reasoning_tokens=reasoning,
        output_audio_tokens=audio_out,
        service_tier=tier,
    )
    fast = checked_usage(inp, out, read, write, audio_in, reasoning, audio_out, tier)
    _same_usage(fast, validated)
    # A copy with an update still validates nothing, as for the validated one.
    noted = fast.model_copy(update={"anomalies": ("x",)})
    assert noted == validated.model_copy(update={"anomalies": ("x",)})
    assert fast.anomalies == ()


# Values `plain_openai_chat` must leave to the builder (which notes an anomaly).
unclean = st.one_of(
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_TOKENS + 1),
    st.lists(st.integers(), max_size=1),
)
maybe_count = st.one_of(st.none(), st.integers(min_value=0, max_value=5000), unclean)


@given(
    prompt=maybe_count,
    completion=maybe_count,
    cached=maybe_count,
    written=maybe_count,
    audio=maybe_count,
    reasoning=maybe_count,
    tier=st.one_of(st.none(), st.sampled_from(["default", "Flex", "", "priority"]), st.just(3)),
)
# Found by this test: an empty service_tier sent a clean payload to the slow builder.
@example(None, None, None, None, None, None, "")
@example(1200, 300, 1000, 0, 0, 100, "")
def test_plain_openai_chat_is_the_builder_for_clean_payloads(
    prompt: Any,
    completion: Any,
    cached: Any,
    written: Any,
    audio: Any,
    reasoning: Any,
    tier: Any,
) -> None:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": audio},
    }
    plain = plain_openai_chat(usage, tier)
    # A namespace is no dict or pydantic model, so this goes through the builder.
    built = from_openai_chat(SimpleNamespace(**usage), tier)
    values = [prompt, completion, cached, written, audio, reasoning]
    n = [v or 0 for v in values]
    clean = (
        all(v is None or (type(v) is int and 0 <= v <= MAX_TOKENS) for v in values)
        and n[2] + n[3] <= n[0]
        and n[4] + n[5] <= n[1]
        and (tier is None or isinstance(tier, str))
    )
    if clean:
        assert plain is not None
        _same_usage(plain, built, fields_set=False)
    else:
        assert plain is None


# --- fields_of reads what field() reads ------------------------------------------------


def _sdk_completion(usage: dict[str, Any], **extra: Any) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hello"},
                }
            ],
            "usage": usage,
            **extra,
        }
    )


SDK_USAGE = {
    "prompt_tokens": 4008,
    "completion_tokens": 17,
    "total_tokens": 4025,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": None},
}


class WithProperty(BaseModel):
    prompt_tokens: int = 1

    @property
    def usage(self) -> str:
        return "a property, which getattr finds and __dict__ does not"


class MappingModel(BaseModel, Mapping[str, Any]):  # type: ignore[misc]
    prompt_tokens: int = 1

    def __getitem__(self, key: str) -> Any:
        return {"prompt_tokens": 99}[key]

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(["prompt_tokens"])

    def __len__(self) -> int:
        return 1


class Computed(BaseModel):
    model_config = ConfigDict(extra="allow")

    def __getattr__(self, name: str) -> Any:
        return 7


class RaisingMeta(type(BaseModel)):  # type: ignore[misc]
    def __getattr__(cls, name: str) -> Any:
        if name in PLAIN_NAMES:
            raise RuntimeError(f"no {name} on the class")
        return super().__getattr__(name)


class RaisingClass(BaseModel, metaclass=RaisingMeta):
    prompt_tokens: int = 1


def _check_fields_of(obj: Any) -> None:
    fields = fields_of(obj)
    assert fields is not None
    for name in PLAIN_NAMES:
        assert fields.get(name) == field(obj, name), name


def test_fields_of_reads_what_field_reads() -> None:
    plain = {"usage": SDK_USAGE, "model": "m"}
    assert fields_of(plain) is plain
    completion = _sdk_completion(SDK_USAGE)
    _check_fields_of(completion)
    _check_fields_of(completion.usage)
    assert completion.usage is not None
    _check_fields_of(completion.usage.prompt_tokens_details)
    # Extra fields (a newer API's) are read too, as getattr reads them.
    newer = _sdk_completion({**SDK_USAGE, "usage_metadata": {"x": 1}}, response={"a": 1})
    assert newer.usage is not None and newer.usage.__pydantic_extra__
    _check_fields_of(newer)
    _check_fields_of(newer.usage)
    _check_fields_of(ChatResponse(message=ChatMessage(content="x"), raw=plain))
    _check_fields_of(CompletionResponse(text="x", raw=plain))


@pytest.mark.parametrize(
    "obj",
    [None, "text", 3, [1], WithProperty(), MappingModel(), Computed(), RaisingClass(), object()],
    ids=lambda o: type(o).__name__,
)
def test_fields_of_declines_what_it_cannot_read_exactly(obj: Any) -> None:
    assert fields_of(obj) is None
    from_openai_chat(obj)  # and the builder reads it, without raising


def test_fields_of_a_model_built_without_its_extras() -> None:
    half = CompletionResponse.__new__(CompletionResponse)
    object.__setattr__(half, "__dict__", {"text": "x", "raw": {"usage": SDK_USAGE}})
    assert fields_of(half) == {"text": "x", "raw": {"usage": SDK_USAGE}}


# --- the handler's shortcut is read_response ------------------------------------------


def _reply(raw: Any) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role="assistant", content="hello"), raw=raw)


def _responses() -> list[tuple[str, Any]]:
    """Answers the shortcut takes, first the one priced by hand below."""
    openai_dict = {"model": "gpt-4o", "usage": SDK_USAGE, "service_tier": "flex"}
    return [
        ("dict", _reply(openai_dict)),
        ("sdk", _reply(_sdk_completion(SDK_USAGE))),
        ("completion", CompletionResponse(text="x", raw={"usage": {"prompt_tokens": 3}})),
        ("no model", _reply({"usage": SDK_USAGE})),
        ("unknown model", _reply({"model": "unknown", "usage": SDK_USAGE})),
        ("sdk extras", _reply(_sdk_completion(SDK_USAGE, usage_note="new field"))),
    ]


def _declined() -> list[tuple[str, Any]]:
    """Answers the shortcut leaves to `read_response`."""
    return [
        ("no raw", _reply(None)),
        ("empty usage", _reply({"usage": {"prompt_tokens": 0}})),
        ("nested usage", _reply({"usage": {"usage": {"prompt_tokens": 12}}})),
        ("Responses API", _reply({"usage": {"input_tokens": 3, "output_tokens": 1}})),
        ("odd count", _reply({"usage": {"prompt_tokens": -3}})),
        ("usage in response", _reply({"response": {"usage": SDK_USAGE}})),
        ("a string", _reply("raw text")),
        ("odd tier", _reply({"usage": SDK_USAGE, "service_tier": 3})),
    ]


@pytest.mark.parametrize(("name", "response"), _responses(), ids=lambda v: str(v)[:20])
def test_shortcut_answers_as_read_response(name: str, response: Any) -> None:
    fast = integration._plain_response_usage(response)
    assert fast is not None, name
    usage, served, anomalies = integration.read_response(response, "openai")
    assert usage is not None and anomalies == ()
    _same_usage(fast[0], usage)
    assert fast[1] == served


@pytest.mark.parametrize(("name", "response"), _declined(), ids=lambda v: str(v)[:20])
def test_shortcut_leaves_everything_else_to_read_response(name: str, response: Any) -> None:
    assert integration._plain_response_usage(response) is None, name


def _calls(monkeypatch: pytest.MonkeyPatch, shortcut: bool) -> list[CallRecord]:
    if not shortcut:
        monkeypatch.setattr(integration, "_plain_response_usage", lambda response: None)
    handler = UsageEventHandler(persist=False)
    model_dict = {"class_name": "openai_llm", "model": "gpt-4o"}
    start: BaseEvent
    end: BaseEvent
    with track_usage(persist=False) as session:
        for i, (_, response) in enumerate(_responses() + _declined()):
            span = f"OpenAI.chat-{i:036d}"
            if isinstance(response, CompletionResponse):
                start = LLMCompletionStartEvent(
                    model_dict=model_dict, prompt="hi there", additional_kwargs={}, span_id=span
                )
                end = LLMCompletionEndEvent(prompt="", response=response, span_id=span)
            else:
                start = LLMChatStartEvent(
                    model_dict=model_dict,
                    messages=[ChatMessage(content="hi there")],
                    additional_kwargs={},
                    span_id=span,
                )
                end = LLMChatEndEvent(messages=[], response=response, span_id=span)
            handler.handle(start)
            handler.handle(end)
    monkeypatch.undo()
    assert handler.errors == 0
    return session.calls


def test_records_are_the_same_with_and_without_the_shortcut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, general = _calls(monkeypatch, True), _calls(monkeypatch, False)
    assert len(fast) == len(general) == len(_responses()) + len(_declined())
    for a, b in zip(fast, general, strict=True):
        assert (a.run_id, a.model, a.response_model, a.provider) == (
            b.run_id,
            b.model,
            b.response_model,
            b.provider,
        )
        _same_usage(a.usage, b.usage)
        assert a.cost == b.cost
        assert (a.estimate_method, a.status, a.attrs) == (b.estimate_method, b.status, b.attrs)
    # gpt-4o has no flex price, so standard prices, flagged: (4008 - 1024) * 2.5 = 7460;
    # 1024 cached * 1.25 = 1280; (17 - 5) * 10 = 120; 5 reasoning * 10 = 50 -> 8910 per 1M
    assert fast[0].cost.total == Decimal("0.00891")
    assert fast[0].cost.flags == ("tier_unpriced",)
    assert fast[0].usage.service_tier == "flex"


def test_a_dict_response_is_read_as_field_reads_it() -> None:
    response = {"raw": {"usage": SDK_USAGE, "model": "gpt-4o"}, "text": "hello"}
    fast = integration._plain_response_usage(response)
    usage, served, _ = integration.read_response(response, None)
    assert fast is not None and usage is not None
    _same_usage(fast[0], usage)
    assert fast[1] == served == "gpt-4o"


# --- pricing a plain answer ---------------------------------------------------------------


def test_plain_usage_is_priced_exactly_as_every_part_summed() -> None:
    from modelforge.pricing.cost import price

    # gpt-4o: input 2.5, output 10.0 per 1M. 4008 * 2.5 = 10020.0 and 17 * 10.0 = 170.0
    # per 1M, each with the exponent its price gave, shifted by six places.
    plain = price("gpt-4o", Usage(input_tokens=4008, output_tokens=17))
    assert (str(plain.input), str(plain.output)) == ("0.0100200", "0.0001700")
    # Unused parts are 0E-6, and the total keeps the finest exponent of all the parts.
    assert {
        str(getattr(plain, p)) for p in ("cache_read", "cache_write", "reasoning", "audio")
    } == {"0.000000"}
    assert str(plain.total) == "0.0101900"
    # One more part used takes the general sum: 8 reasoning tokens at 10.0 = 80.0 per 1M.
    reasoned = price("gpt-4o", Usage(input_tokens=4008, output_tokens=17, reasoning_tokens=8))
    assert (str(reasoned.output), str(reasoned.reasoning)) == ("0.0000900", "0.0000800")
    assert str(reasoned.total) == "0.0101900"
    # An output-free call: 1000 * 2.5 = 2500.0 per 1M.
    assert str(price("gpt-4o", Usage(input_tokens=1000)).total) == "0.0025000"
