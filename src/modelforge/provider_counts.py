"""Ask a provider to count a prompt: Anthropic's `POST /v1/messages/count_tokens` and
Gemini's `models/{model}:countTokens`.

Used only by `count_tokens(..., online=True)`, and only when the provider's key is in
the environment. Messages arrive as OpenAI-format dicts (see `modelforge.messages`) and
are sent in the provider's own request shape. Standard library only.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from modelforge.errors import ModelForgeError
from modelforge.messages import JSON

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
GEMINI_URL = "https://generativelanguage.googleapis.com"
# Counting is a cheap call; a provider that does not answer in this long is not
# going to, and the caller still gets the offline count.
TIMEOUT_SECONDS = 10.0


class ProviderCountError(ModelForgeError):
    """A provider's counting endpoint failed or answered in an unexpected shape."""


@dataclass(frozen=True, slots=True)
class OnlineCount:
    tokens: int
    source: str


def count_online(
    vendor: str, provider: str | None, model: str, messages: list[JSON], tools: list[JSON]
) -> OnlineCount | None:
    """The provider's count, or None when it has no counting endpoint or no key is set."""
    if vendor == "anthropic" and provider in (None, "anthropic"):
        key = os.environ.get("ANTHROPIC_API_KEY")
        if key:
            base = os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_URL
            tokens = count_anthropic(base, key, model, messages, tools)
            return OnlineCount(tokens, "counted by Anthropic: POST /v1/messages/count_tokens")
    if vendor == "google" and provider in (None, "google"):
        key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if key:
            base = os.environ.get("MODELFORGE_GEMINI_BASE_URL") or GEMINI_URL
            tokens = count_gemini(base, key, model, messages, tools)
            return OnlineCount(tokens, f"counted by Gemini: models/{model}:countTokens")
    return None


# --------------------------------------------------------------------------- Anthropic


def count_anthropic(
    base_url: str, api_key: str, model: str, messages: list[JSON], tools: list[JSON]
) -> int:
    """Anthropic's count for an OpenAI-format prompt."""
    system, turns = anthropic_messages(messages)
    body: JSON = {"model": model, "messages": turns}
    if system:
        body["system"] = system
    if tools:
        body["tools"] = [anthropic_tool(t["function"]) for t in tools]
    headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
    answer = _post(f"{base_url.rstrip('/')}/v1/messages/count_tokens", body, headers)
    return _count_field(answer, "input_tokens")


def anthropic_messages(messages: list[JSON]) -> tuple[str, list[JSON]]:
    """System text, and the other messages as Anthropic turns."""
    system: list[str] = []
    turns: list[JSON] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id") or "tool_call",
                "content": _text(message.get("content")),
            }
            turns.append({"role": "user", "content": [result]})
        else:
            blocks = _anthropic_blocks(message.get("content"))
            for call in message.get("tool_calls", ()):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"] or "tool_call",
                        "name": call["function"]["name"],
                        "input": _arguments(call["function"]["arguments"]),
                    }
                )
            turns.append(
                {"role": "assistant" if role == "assistant" else "user", "content": blocks}
            )
    return "\n\n".join(t for t in system if t), turns


def _anthropic_blocks(content: str | list[JSON] | None) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[JSON] = []
    for part in content or ():
        if part["type"] == "text" and part["text"]:
            blocks.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
            url = part["image_url"].get("url", "")
            mime, data = _data_url(url)
            source = (
                {"type": "base64", "media_type": mime, "data": data}
                if data is not None
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
    return blocks


def anthropic_tool(function: JSON) -> JSON:
    tool: JSON = {"name": function.get("name", "")}
    if function.get("description"):
        tool["description"] = function["description"]
    tool["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return tool


# --------------------------------------------------------------------------- Gemini


def count_gemini(
    base_url: str, api_key: str, model: str, messages: list[JSON], tools: list[JSON]
) -> int:
    """Gemini's count for an OpenAI-format prompt."""
    system, contents = gemini_contents(messages)
    request: JSON = {"model": f"models/{model}", "contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": system}]}
    if tools:
        request["tools"] = [
            {"functionDeclarations": [gemini_function(t["function"]) for t in tools]}
        ]
    url = f"{base_url.rstrip('/')}/v1beta/models/{model}:countTokens"
    answer = _post(url, {"generateContentRequest": request}, {"x-goog-api-key": api_key})
    return _count_field(answer, "totalTokens")


def gemini_contents(messages: list[JSON]) -> tuple[str, list[JSON]]:
    """System text, and the other messages as Gemini contents."""
    system: list[str] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role in ("tool", "function"):
            name = names.get(message.get("tool_call_id") or "", message.get("name") or "tool")
            response = {"name": name, "response": {"content": _text(message.get("content"))}}
            contents.append({"role": "user", "parts": [{"functionResponse": response}]})
            continue
        parts = _gemini_parts(message.get("content"))
        for call in message.get("tool_calls", ()):
            names[call["id"]] = call["function"]["name"]
            args = _arguments(call["function"]["arguments"])
            parts.append({"functionCall": {"name": call["function"]["name"], "args": args}})
        contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    return "\n\n".join(t for t in system if t), contents


def _gemini_parts(content: str | list[JSON] | None) -> list[JSON]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for part in content or ():
        if part["type"] == "text" and part["text"]:
            parts.append({"text": part["text"]})
        elif part["type"] == "image_url":
            url = part["image_url"].get("url", "")
            mime, data = _data_url(url)
            if data is not None:
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            else:
                parts.append({"fileData": {"mimeType": "image/*", "fileUri": url}})
    return parts


def gemini_function(function: JSON) -> JSON:
    declaration: JSON = {"name": function.get("name", "")}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        declaration["parameters"] = function["parameters"]
    return declaration


# --------------------------------------------------------------------------- helpers


def _text(content: str | list[JSON] | None) -> str:
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content or () if p["type"] == "text")


def _arguments(arguments: str) -> Any:
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def _data_url(url: str) -> tuple[str, str | None]:
    """(media type, base64 data) of a base64 data: URL; data None for any other URL."""
    if not url.startswith("data:") or ";base64," not in url:
        return "", None
    header, _, data = url.partition(",")
    return header[len("data:") :].removesuffix(";base64") or "image/png", data


def _post(url: str, body: JSON, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        raise ProviderCountError(f"HTTP {exc.code} from {url}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise ProviderCountError(f"{url}: {exc}") from None


def _count_field(answer: Any, key: str) -> int:
    value = answer.get(key) if isinstance(answer, dict) else None
    if type(value) is not int or value < 0:
        raise ProviderCountError(f"no token count in the answer: {str(answer)[:200]}")
    return value
