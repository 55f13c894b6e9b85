"""Loopback HTTP server speaking the OpenAI and Anthropic wire formats (and Gemini's
token counting).

The real SDK clients (``openai``, ``anthropic``, LangChain and LlamaIndex
wrappers) can be pointed at :class:`WireServer` so tests, notebooks and
``modelforge demo`` exercise genuine client parsing without network access
or API keys. It also answers the providers' billing (Admin) APIs with scripted
figures, for ``modelforge reconcile``. Standard library only, so it can ship inside
the package.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import re
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ANTHROPIC_COST_REPORT",
    "ANTHROPIC_USAGE_REPORT",
    "DEFAULT_TEXT",
    "OPENAI_COSTS",
    "OPENAI_USAGE_COMPLETIONS",
    "BillingFailure",
    "Reply",
    "WireServer",
    "anthropic_cost",
    "anthropic_usage",
    "openai_cost",
    "openai_usage",
]

JSON = dict[str, Any]
# One server-sent event: (``event:`` name or None, ``data:`` payload, JSON-encoded unless str).
Event = tuple[str | None, JSON | str]

DEFAULT_TEXT = "Hello from the model-forge wire server."
EMBEDDING_DIMENSIONS = 8
# Real chat APIs bill a few framing tokens per message; mimic that shape.
TOKENS_PER_MESSAGE = 3

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass
class Reply:
    """One scripted answer; ``usage`` is the provider-native usage object, verbatim."""

    text: str = DEFAULT_TEXT
    usage: JSON | None = None
    status: int = 200
    error_body: JSON | None = None
    model: str | None = None
    service_tier: str | None = None
    match_model: str | None = None
    chunks: int = 3
    anthropic_delta_full_usage: bool = False


# --------------------------------------------------------------------------- helpers


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _words(text: str) -> int:
    return len(text.split())


def _flatten_text(value: Any) -> str:
    """Collect the human-readable text out of any message/content shape."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_flatten_text(item) for item in value)
    if isinstance(value, dict):
        keys = ("text", "content", "output", "arguments")
        return " ".join(_flatten_text(value[key]) for key in keys if key in value)
    return ""


def _prompt_tokens(messages: Iterable[Any]) -> int:
    return sum(_words(_flatten_text(message)) + TOKENS_PER_MESSAGE for message in messages)


def _raw_input_tokens(value: Any) -> int:
    """Token count of completions/embeddings input (str, token ids, or lists of either)."""
    if isinstance(value, str):
        return _words(value)
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_raw_input_tokens(item) for item in value)
    return 0


def _split_text(text: str, parts: int) -> list[str]:
    """Split ``text`` into at most ``parts`` word-aligned pieces that concatenate back to it."""
    pieces = re.findall(r"\s*\S+\s*|\s+", text)
    if parts <= 1 or len(pieces) <= 1:
        return [text]
    per_part = math.ceil(len(pieces) / parts)
    return ["".join(pieces[i : i + per_part]) for i in range(0, len(pieces), per_part)]


def _embedding(item: Any, dimensions: int) -> list[float]:
    """Deterministic unit vector derived from the input, so equal inputs embed equally."""
    seed = json.dumps(item, sort_keys=True)
    raw = [
        int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:4], "little") / 2**31 - 1.0
        for i in range(dimensions)
    ]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Round-trip through float32 so float and base64 encodings agree exactly.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


# --------------------------------------------------------------------------- OpenAI


def _openai_chat_usage(body: JSON, reply: Reply, choices: int) -> JSON:
    if reply.usage is not None:
        return reply.usage
    prompt = _prompt_tokens(body.get("messages") or [])
    completion = _words(reply.text) * choices
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _openai_envelope(obj: str, id_prefix: str, model: str, reply: Reply) -> JSON:
    envelope: JSON = {
        "id": _new_id(id_prefix),
        "object": obj,
        "created": int(time.time()),
        "model": model,
    }
    if reply.service_tier is not None:
        envelope["service_tier"] = reply.service_tier
    envelope["system_fingerprint"] = "fp_modelforge"
    return envelope


def _chat_completions(body: JSON, reply: Reply, model: str) -> JSON | list[Event]:
    choices = max(int(body.get("n") or 1), 1)
    usage = _openai_chat_usage(body, reply, choices)
    if not body.get("stream"):
        message: JSON = {"role": "assistant", "content": reply.text, "refusal": None}
        result = _openai_envelope("chat.completion", "chatcmpl-", model, reply)
        result["choices"] = [
            {"index": i, "message": dict(message), "logprobs": None, "finish_reason": "stop"}
            for i in range(choices)
        ]
        result["usage"] = usage
        return result

    # The real API only mentions usage at all when include_usage was requested.
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    envelope = _openai_envelope("chat.completion.chunk", "chatcmpl-", model, reply)

    def chunk(choice_list: list[JSON], chunk_usage: JSON | None = None) -> Event:
        payload = {**envelope, "choices": choice_list}
        if include_usage:
            payload["usage"] = chunk_usage
        return None, payload

    def delta(index: int, content: JSON, finish: str | None = None) -> JSON:
        return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish}

    events: list[Event] = []
    for i in range(choices):
        events.append(chunk([delta(i, {"role": "assistant", "content": "", "refusal": None})]))
        events.extend(
            chunk([delta(i, {"content": piece})]) for piece in _split_text(reply.text, reply.chunks)
        )
        events.append(chunk([delta(i, {}, "stop")]))
    if include_usage:
        events.append(chunk([], usage))
    return [*events, (None, "[DONE]")]


def _completions(body: JSON, reply: Reply, model: str) -> JSON | list[Event]:
    prompt = body.get("prompt", "")
    # A list of strings (or of token lists) is a batch: one choice per prompt.
    is_batch = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
    choices = (len(prompt) if is_batch else 1) * max(int(body.get("n") or 1), 1)
    prompt_tokens = _raw_input_tokens(prompt)
    completion_tokens = _words(reply.text) * choices
    usage = reply.usage or {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    envelope = _openai_envelope("text_completion", "cmpl-", model, reply)

    def choice(index: int, text: str, finish: str | None) -> JSON:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    if not body.get("stream"):
        whole = [choice(i, reply.text, "stop") for i in range(choices)]
        return {**envelope, "choices": whole, "usage": usage}
    events: list[Event] = []
    for i in range(choices):
        pieces = _split_text(reply.text, reply.chunks)
        events.extend((None, {**envelope, "choices": [choice(i, p, None)]}) for p in pieces)
        events.append((None, {**envelope, "choices": [choice(i, "", "stop")]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append((None, {**envelope, "choices": [], "usage": usage}))
    return [*events, (None, "[DONE]")]


def _embeddings(body: JSON, reply: Reply, model: str) -> JSON:
    raw_input = body.get("input", "")
    # A bare string or a single token-id list is one input; other lists are batches.
    is_single = isinstance(raw_input, str) or (bool(raw_input) and isinstance(raw_input[0], int))
    items: list[Any] = [raw_input] if is_single else list(raw_input)
    dimensions = int(body.get("dimensions") or EMBEDDING_DIMENSIONS)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _embedding(item, dimensions)
        # The openai SDK asks for base64 by default: packed little-endian float32.
        packed = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append(
            {"object": "embedding", "index": index, "embedding": packed if as_base64 else vector}
        )
    tokens = _raw_input_tokens(raw_input)
    usage = reply.usage or {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _responses(body: JSON, reply: Reply, model: str) -> JSON | list[Event]:
    if reply.usage is not None:
        usage = reply.usage
    else:
        raw_input = body.get("input") or []
        messages = [raw_input] if isinstance(raw_input, str) else list(raw_input)
        prompt = _prompt_tokens(
            [body["instructions"], *messages] if body.get("instructions") else messages
        )
        completion = _words(reply.text)
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
    item_id = _new_id("msg_")
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": reply.text}
    item = {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }
    response: JSON = {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": model,
        "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "usage": usage,
        "metadata": body.get("metadata") or {},
    }
    if reply.service_tier is not None:
        response["service_tier"] = reply.service_tier
    if not body.get("stream"):
        return response

    in_progress = {**response, "status": "in_progress", "output": [], "usage": None}
    open_item = {**item, "status": "in_progress", "content": []}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    steps: list[JSON] = [
        {"type": "response.created", "response": in_progress},
        {"type": "response.in_progress", "response": in_progress},
        {"type": "response.output_item.added", "output_index": 0, "item": open_item},
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        *(
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            for piece in _split_text(reply.text, reply.chunks)
        ),
        {"type": "response.output_text.done", **where, "text": reply.text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response},
    ]
    return [(step["type"], {**step, "sequence_number": n}) for n, step in enumerate(steps)]


# --------------------------------------------------------------------------- Anthropic


def _anthropic_prompt_tokens(body: JSON) -> int:
    system = [body["system"]] if body.get("system") else []
    return _prompt_tokens([*system, *(body.get("messages") or [])])


def _anthropic_usage(body: JSON, reply: Reply) -> JSON:
    if reply.usage is not None:
        return reply.usage
    return {
        "input_tokens": _anthropic_prompt_tokens(body),
        "output_tokens": _words(reply.text),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    }


def _messages(body: JSON, reply: Reply, model: str) -> JSON | list[Event]:
    usage = _anthropic_usage(body, reply)
    message: JSON = {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return message

    # message_start reports input/cache usage and a token or so of output; the
    # cumulative output total only arrives with message_delta.
    start_usage = {**copy.deepcopy(usage), "output_tokens": 1}
    final_usage = copy.deepcopy(usage) if reply.anthropic_delta_full_usage else {}
    final_usage["output_tokens"] = usage.get("output_tokens", 0)
    start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    steps: list[JSON] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            for piece in _split_text(reply.text, reply.chunks)
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": final_usage,
        },
        {"type": "message_stop"},
    ]
    return [(step["type"], step) for step in steps]


def _count_tokens(body: JSON, reply: Reply, model: str) -> JSON:
    if reply.usage is not None and "input_tokens" in reply.usage:
        return {"input_tokens": reply.usage["input_tokens"]}
    tools = body.get("tools") or []
    words = sum(_words(json.dumps(tool)) for tool in tools)
    return {"input_tokens": _anthropic_prompt_tokens(body) + words}


# --------------------------------------------------------------------------- Gemini


def _gemini_count_tokens(body: JSON, reply: Reply, model: str) -> JSON:
    """`models/{model}:countTokens`: `contents`, or a whole `generateContentRequest`."""
    if reply.usage is not None and "totalTokens" in reply.usage:
        total = reply.usage["totalTokens"]
    else:
        request = body.get("generateContentRequest") or body
        system = request.get("systemInstruction")
        contents = [*([system] if system else []), *(request.get("contents") or [])]
        total = sum(_words(_gemini_text(content)) for content in contents)
        total += sum(_words(json.dumps(tool)) for tool in request.get("tools") or [])
    return {
        "totalTokens": total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
    }


def _gemini_text(content: Any) -> str:
    parts = content.get("parts") or [] if isinstance(content, dict) else []
    texts = []
    for part in parts:
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        for key in ("functionCall", "functionResponse"):
            if key in part:
                texts.append(json.dumps(part[key]))
    return " ".join(texts)


Route = Callable[[JSON, Reply, str], "JSON | list[Event]"]
_POST_ROUTES: dict[str, Route] = {
    "/v1/chat/completions": _chat_completions,
    "/v1/completions": _completions,
    "/v1/embeddings": _embeddings,
    "/v1/responses": _responses,
    "/v1/messages": _messages,
    "/v1/messages/count_tokens": _count_tokens,
}
# Gemini names the model in the path: /v1beta/models/{model}:{method}.
_GEMINI_PATH = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<method>\w+)$")
_GEMINI_ROUTES: dict[str, Route] = {"countTokens": _gemini_count_tokens}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}
_MODEL_IDS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-5-20250929")


def _error_body(anthropic: bool, status: int, message: str) -> JSON:
    if anthropic:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _google_error_body(status: int, message: str) -> JSON:
    kind = _GOOGLE_STATUS.get(status, "INTERNAL")
    return {"error": {"code": status, "message": message, "status": kind}}


def _styled_error_body(style: str, status: int, message: str) -> JSON:
    """An error in the `openai`, `anthropic` or `google` API's shape."""
    if style == "google":
        return _google_error_body(status, message)
    return _error_body(style == "anthropic", status, message)


def _models_listing(anthropic: bool) -> JSON:
    ids = _MODEL_IDS
    if anthropic:
        created = "2025-01-01T00:00:00Z"
        data = [{"type": "model", "id": m, "display_name": m, "created_at": created} for m in ids]
        return {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
    models = [{"id": m, "object": "model", "created": 0, "owned_by": "model-forge"} for m in ids]
    return {"object": "list", "data": models}


def _post_route(path: str) -> tuple[Route | None, str, str | None]:
    """The route for a POST path, the API's error style, and a model named in the path."""
    gemini = _GEMINI_PATH.match(path)
    if gemini:
        return _GEMINI_ROUTES.get(gemini["method"]), "google", gemini["model"]
    style = "anthropic" if path.startswith("/v1/messages") else "openai"
    return _POST_ROUTES.get(path), style, None


# --------------------------------------------------------------------------- billing (Admin APIs)

OPENAI_COSTS = "/v1/organization/costs"
OPENAI_USAGE_COMPLETIONS = "/v1/organization/usage/completions"
ANTHROPIC_COST_REPORT = "/v1/organizations/cost_report"
ANTHROPIC_USAGE_REPORT = "/v1/organizations/usage_report/messages"
# The largest `limit` (daily buckets per page) each endpoint documents.
_BILLING_LIMITS = {
    OPENAI_COSTS: 180,
    OPENAI_USAGE_COMPLETIONS: 31,
    ANTHROPIC_COST_REPORT: 31,
    ANTHROPIC_USAGE_REPORT: 31,
}
_DAY = timedelta(days=1)
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# A string holding this marker around a number is sent as the bare number.
_BARE = "\x00"
_BARE_IN_JSON = re.compile(r'"\\u0000([^"\\]*)\\u0000"')


@dataclass
class BillingFailure:
    """A scripted billing-API error, served to the next billing GET instead of its data."""

    status: int
    retry_after: str | None = None
    message: str = "Scripted failure."


def _bare_number(text: str) -> str:
    if not _JSON_NUMBER.fullmatch(text):
        raise ValueError(f"not a JSON number: {text!r}")
    return f"{_BARE}{text}{_BARE}"


def openai_cost(line_item: str | None, usd: str, *, project_id: str | None = None) -> JSON:
    """One `/v1/organization/costs` result; `usd` is sent verbatim as a bare JSON number."""
    return {
        "object": "organization.costs.result",
        "amount": {"value": _bare_number(usd), "currency": "usd"},
        "line_item": line_item,
        "project_id": project_id,
    }


def openai_usage(
    model: str | None,
    *,
    input_tokens: int = 0,
    input_cached_tokens: int = 0,
    output_tokens: int = 0,
    num_model_requests: int = 1,
    batch: bool | None = None,
) -> JSON:
    """One `/v1/organization/usage/completions` result (`input_tokens` includes cached)."""
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_cached_tokens": input_cached_tokens,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "num_model_requests": num_model_requests,
        "project_id": None,
        "user_id": None,
        "api_key_id": None,
        "model": model,
        "batch": batch,
    }


def anthropic_cost(
    description: str,
    cents: str,
    *,
    model: str | None = None,
    token_type: str | None = None,
    service_tier: str = "standard",
    cost_type: str = "tokens",
    context_window: str = "0-200k",
) -> JSON:
    """One `/v1/organizations/cost_report` item; `cents` is a decimal string in cents."""
    token_cost = model is not None
    return {
        "amount": cents,
        "context_window": context_window if token_cost else None,
        "cost_type": cost_type,
        "currency": "USD",
        "description": description,
        "model": model,
        "service_tier": service_tier if token_cost else None,
        "token_type": token_type,
        "workspace_id": None,
    }


def anthropic_usage(
    model: str | None,
    *,
    uncached_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    cache_creation_5m: int = 0,
    cache_creation_1h: int = 0,
    output_tokens: int = 0,
    service_tier: str | None = "standard",
) -> JSON:
    """One `/v1/organizations/usage_report/messages` item."""
    return {
        "api_key_id": None,
        "cache_creation": {
            "ephemeral_1h_input_tokens": cache_creation_1h,
            "ephemeral_5m_input_tokens": cache_creation_5m,
        },
        "cache_read_input_tokens": cache_read_input_tokens,
        "context_window": None,
        "model": model,
        "output_tokens": output_tokens,
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": service_tier,
        "uncached_input_tokens": uncached_input_tokens,
        "workspace_id": None,
    }


@dataclass
class _Billing:
    """Scripted Admin API data: results per endpoint and UTC day, page sizes, failures."""

    results: dict[str, dict[str, list[JSON]]] = field(default_factory=dict)
    page_size: dict[str, int] = field(default_factory=dict)
    failures: list[BillingFailure] = field(default_factory=list)
    key: str | None = None
    lose_next_page: set[str] = field(default_factory=set)


def _billing_json(payload: JSON) -> bytes:
    return _BARE_IN_JSON.sub(r"\1", json.dumps(payload)).encode()


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _billing_window(anthropic: bool, query: Mapping[str, list[str]], limit: int) -> list[date]:
    """The UTC days asked for: buckets start on or after the start, before the end."""
    if anthropic:
        start_text, end_text = _first(query, "starting_at"), _first(query, "ending_at")
        start = datetime.fromisoformat(str(start_text).replace("Z", "+00:00"))
        end = datetime.fromisoformat(end_text.replace("Z", "+00:00")) if end_text else None
    else:
        start = datetime.fromtimestamp(int(str(_first(query, "start_time"))), timezone.utc)
        end_time = _first(query, "end_time")
        end = datetime.fromtimestamp(int(end_time), timezone.utc) if end_time else None
    first = start.astimezone(timezone.utc).date()
    if end is None:
        return [first + n * _DAY for n in range(limit)]
    last = end.astimezone(timezone.utc)
    days = (last.date() - first).days + (1 if last.time() != datetime.min.time() else 0)
    return [first + n * _DAY for n in range(max(days, 0))]


def _billing_bucket(anthropic: bool, day: date, results: list[JSON]) -> JSON:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    if anthropic:
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return {
            "starting_at": start.strftime(stamp),
            "ending_at": (start + _DAY).strftime(stamp),
            "results": results,
        }
    begin = int(start.timestamp())
    return {"object": "bucket", "start_time": begin, "end_time": begin + 86400, "results": results}


def _billing_reply(
    billing: _Billing, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str]
) -> tuple[int, JSON, dict[str, str]]:
    """Status, body and extra headers for one Admin API GET, in that provider's shape."""
    anthropic = path.startswith("/v1/organizations/")
    if anthropic:
        presented = headers.get("x-api-key", "")
    else:
        presented = headers.get("authorization", "").removeprefix("Bearer ")
    if not presented or (anthropic and "anthropic-version" not in headers):
        return 401, _error_body(anthropic, 401, "Missing admin API key."), {}
    if billing.key is not None and presented != billing.key:
        # Some APIs quote the rejected key back; a client must never pass that on.
        return 401, _error_body(anthropic, 401, f"Incorrect API key provided: {presented}."), {}
    if billing.failures:
        failure = billing.failures.pop(0)
        extra = {} if failure.retry_after is None else {"retry-after": failure.retry_after}
        return failure.status, _error_body(anthropic, failure.status, failure.message), extra
    try:
        limit = int(_first(query, "limit") or 7)
        page = _first(query, "page")
        offset = int(base64.b64decode(page.removeprefix("page_")).decode()) if page else 0
        days = _billing_window(anthropic, query, limit)
    except (TypeError, ValueError):
        return 400, _error_body(anthropic, 400, "Invalid query parameters."), {}
    if not 1 <= limit <= _BILLING_LIMITS[path]:
        return 400, _error_body(anthropic, 400, f"limit must be 1 to {_BILLING_LIMITS[path]}."), {}
    size = min(limit, billing.page_size.get(path, limit))
    scripted = billing.results.get(path, {})
    chunk = days[offset : offset + size]
    has_more = offset + size < len(days)
    token = base64.b64encode(str(offset + size).encode()).decode()
    body: JSON = {
        "data": [_billing_bucket(anthropic, d, scripted.get(d.isoformat(), [])) for d in chunk],
        "has_more": has_more,
        "next_page": f"page_{token}" if has_more and path not in billing.lose_next_page else None,
    }
    return 200, (body if anthropic else {"object": "page", **body}), {}


# --------------------------------------------------------------------------- server


class _State:
    """Reply queue and request log shared by all handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replies: list[Reply] = []
        self.requests: list[JSON] = []
        self.billing = _Billing()
        self.webhook = _Webhook()

    def take(self, model: Any) -> Reply:
        with self.lock:
            for index, reply in enumerate(self.replies):
                if reply.match_model is None or reply.match_model == model:
                    return self.replies.pop(index)
        return Reply()

    def record(self, entry: JSON) -> None:
        with self.lock:
            self.requests.append(entry)


@dataclass
class _Webhook:
    """How `/hooks/…` answers: alert webhooks under test."""

    status: int = 204
    hold: threading.Event | None = None
    answered: int = 0


WEBHOOK_PREFIX = "/hooks/"
# The longest a held webhook waits for its release.
_WEBHOOK_HOLD = 30.0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Large concurrent batches (asyncio abatch, thread pools) overflow the default backlog of 5.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        super().__init__(address, _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients drop pooled keep-alive sockets at will; that is not a server fault.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 lets the SDKs' httpx pools keep connections alive between calls.
    protocol_version = "HTTP/1.1"
    server_version = "model-forge-wire/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: request lines are noise in test output."""

    @property
    def _state(self) -> _State:
        return cast(_HTTPServer, self.server).state

    def _send_json(
        self, status: int, payload: JSON, encoded: bytes | None = None, **headers: str
    ) -> None:
        encoded = json.dumps(payload).encode() if encoded is None else encoded
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.send_header("x-request-id", _new_id("req_"))
        self.send_header("request-id", _new_id("req_"))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(encoded)

    def _send_sse(self, events: list[Event]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            block = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            # Chunked framing delivers each event as it is written, like the real APIs.
            self.wfile.write(f"{len(block.encode()):x}\r\n{block}\r\n".encode())
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _answer_webhook(self) -> None:
        hook = self._state.webhook
        if hook.hold is not None:
            hook.hold.wait(_WEBHOOK_HOLD)
        with self._state.lock:
            hook.answered += 1
        self._send_json(hook.status, {"ok": hook.status < 400})

    def _headers(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers.items()}

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        query = parse_qs(url.query)
        headers = self._headers()
        self._state.record(
            {"method": "GET", "path": path, "body": None, "headers": headers, "query": query}
        )
        is_anthropic = "anthropic-version" in headers
        if path in _BILLING_LIMITS:
            with self._state.lock:
                status, payload, extra = _billing_reply(self._state.billing, path, query, headers)
            self._send_json(status, payload, _billing_json(payload), **extra)
        elif path == "/v1/models":
            self._send_json(200, _models_listing(is_anthropic))
        else:
            self._send_json(404, _error_body(is_anthropic, 404, f"Unknown path {path}"))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        # The SDKs always send Content-Length for their JSON bodies.
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        self._state.record(
            {"method": "POST", "path": path, "body": body, "headers": self._headers()}
        )
        if path.startswith(WEBHOOK_PREFIX):
            self._answer_webhook()
            return
        route, style, path_model = _post_route(path)
        if route is None:
            self._send_json(404, _styled_error_body(style, 404, f"Unknown path {path}"))
            return
        if not isinstance(body, dict):
            self._send_json(
                400, _styled_error_body(style, 400, "Request body must be a JSON object.")
            )
            return
        requested = path_model or body.get("model")
        reply = self._state.take(requested)
        if reply.status >= 400:
            error = reply.error_body or _styled_error_body(style, reply.status, "Scripted failure.")
            self._send_json(reply.status, error)
            return
        try:
            result = route(body, reply, reply.model or str(requested or "unknown-model"))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            # A request the real API would reject: answer 400 instead of dropping the socket.
            message = f"Malformed request ({type(error).__name__})."
            self._send_json(400, _styled_error_body(style, 400, message))
            return
        if isinstance(result, dict):
            self._send_json(reply.status, result)
        else:
            self._send_sse(result)


class WireServer:
    """Fake OpenAI + Anthropic endpoint on 127.0.0.1, served from a daemon thread."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._state = _State()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WireServer:
        """Bind and begin serving; idempotent."""
        if self._httpd is None:
            self._httpd = _HTTPServer(("127.0.0.1", self._port), self._state)
            # A short poll interval keeps stop() snappy when tests start many servers.
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="modelforge-wire",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WireServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("WireServer is not running; call start() first.")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        # The Anthropic SDK appends /v1/messages itself.
        return self.base_url

    @property
    def gemini_base_url(self) -> str:
        # Gemini clients append /v1beta/models/{model}:{method} themselves.
        return self.base_url

    def enqueue(self, *replies: Reply) -> None:
        """Queue scripted replies; each POST consumes the first one whose ``match_model`` fits."""
        with self._state.lock:
            self._state.replies.extend(replies)

    @property
    def pending(self) -> int:
        """Number of queued replies not yet consumed."""
        with self._state.lock:
            return len(self._state.replies)

    @property
    def requests(self) -> list[JSON]:
        """Snapshot of received requests: ``{"method", "path", "body", "headers"}`` each."""
        with self._state.lock:
            return list(self._state.requests)

    def set_billing(
        self,
        path: str,
        results: Mapping[str, list[JSON]],
        *,
        page_size: int | None = None,
        lose_next_page: bool = False,
    ) -> None:
        """Serve `results` (per UTC day, ``"2026-11-01"``) from the Admin API at `path`.

        Every day asked for gets a bucket (empty unless scripted), `page_size` buckets a
        page at most, like the real endpoints. Build results with :func:`openai_cost`,
        :func:`openai_usage`, :func:`anthropic_cost` and :func:`anthropic_usage`.
        `lose_next_page` breaks paging: pages say `has_more` but give no `next_page`.
        """
        if path not in _BILLING_LIMITS:
            raise ValueError(f"not a billing endpoint: {path}")
        with self._state.lock:
            self._state.billing.results[path] = {day: list(rows) for day, rows in results.items()}
            if page_size is not None:
                self._state.billing.page_size[path] = page_size
            if lose_next_page:
                self._state.billing.lose_next_page.add(path)
            else:
                self._state.billing.lose_next_page.discard(path)

    def fail_billing(self, *failures: BillingFailure) -> None:
        """Answer the next billing GETs with these errors, in order, before any data."""
        with self._state.lock:
            self._state.billing.failures.extend(failures)

    def require_billing_key(self, key: str | None) -> None:
        """Accept only this admin key (None: any); a wrong one gets a 401 quoting it."""
        with self._state.lock:
            self._state.billing.key = key

    @property
    def webhook_url(self) -> str:
        """Where alert webhooks can be sent (`script_webhook` says how they are answered)."""
        return f"{self.base_url}{WEBHOOK_PREFIX}budget"

    def script_webhook(self, status: int = 204, hold: threading.Event | None = None) -> None:
        """Answer POSTs to `/hooks/…` with `status`, each first waiting for `hold` (when
        given) to be set, for at most 30 s."""
        with self._state.lock:
            self._state.webhook = _Webhook(status, hold)

    @property
    def webhooks_answered(self) -> int:
        """How many webhook POSTs have had their answer."""
        with self._state.lock:
            return self._state.webhook.answered

    def reset(self) -> None:
        """Forget queued replies, recorded requests, scripted billing and webhooks."""
        with self._state.lock:
            self._state.replies.clear()
            self._state.requests.clear()
            self._state.billing = _Billing()
            hold = self._state.webhook.hold
            self._state.webhook = _Webhook()
        if hold is not None:
            hold.set()  # a webhook still held from a finished test
