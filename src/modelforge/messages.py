"""Chat messages and tool definitions, whatever framework built them, as OpenAI-format
dicts: the one shape the token counter reads.

Accepted messages: OpenAI-format dicts, LangChain `BaseMessage`s and LlamaIndex
`ChatMessage`s. The frameworks are read by duck typing, so this module imports
neither. A bare string is one user message.

>>> to_openai_messages("hello")
[{'role': 'user', 'content': 'hello'}]
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelforge.errors import UnsupportedMessageError

JSON = dict[str, Any]

# LangChain's message `type`, as an OpenAI role.
_LANGCHAIN_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "developer": "developer",
    "tool": "tool",
    "function": "function",
}
# LlamaIndex roles that are other names for OpenAI's.
_LLAMAINDEX_ROLES = {"chatbot": "assistant", "model": "assistant"}
# Blocks that a request carries but the model does not read as prompt: earlier turns'
# reasoning, and tool-use blocks that repeat the message's `tool_calls`.
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking", "reasoning", "tool_use", "tool_call"})


def to_openai_messages(messages: str | Iterable[Any]) -> list[JSON]:
    """Each message as an OpenAI chat-completions message dict."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [to_openai_message(m) for m in messages]


def to_openai_message(message: Any) -> JSON:
    """One message (dict, LangChain or LlamaIndex) as an OpenAI message dict."""
    if isinstance(message, Mapping):
        return _from_dict(message)
    if isinstance(getattr(message, "type", None), str) and hasattr(message, "content"):
        return _from_langchain(message)
    if hasattr(message, "role") and hasattr(message, "blocks"):
        return _from_llamaindex(message)
    raise UnsupportedMessageError(
        f"cannot count a {type(message).__name__}: expected an OpenAI-format dict, "
        "a LangChain BaseMessage or a LlamaIndex ChatMessage"
    )


def _from_dict(message: Mapping[str, Any]) -> JSON:
    role = message.get("role")
    if not isinstance(role, str):
        raise UnsupportedMessageError(f"a message dict needs a string 'role', got {role!r}")
    out: JSON = {"role": role, "content": _content(message.get("content"))}
    for key in ("name", "tool_call_id"):
        if isinstance(message.get(key), str):
            out[key] = message[key]
    calls = [_tool_call(c) for c in message.get("tool_calls") or ()]
    if calls:
        out["tool_calls"] = calls
    return out


def _from_langchain(message: Any) -> JSON:
    kind = message.type.removesuffix("MessageChunk").lower()
    role = message.role if kind == "chat" else _LANGCHAIN_ROLES.get(kind, kind)
    out: JSON = {"role": str(role), "content": _content(message.content)}
    if isinstance(getattr(message, "name", None), str):
        out["name"] = message.name
    if isinstance(getattr(message, "tool_call_id", None), str):
        out["tool_call_id"] = message.tool_call_id
    # Calls whose arguments did not parse are still sent back to the provider as text.
    calls = [*(getattr(message, "tool_calls", None) or ())]
    calls += getattr(message, "invalid_tool_calls", None) or ()
    if calls:
        out["tool_calls"] = [_tool_call(c) for c in calls]
    return out


def _from_llamaindex(message: Any) -> JSON:
    role = str(getattr(message.role, "value", message.role))
    extra: Mapping[str, Any] = getattr(message, "additional_kwargs", None) or {}
    parts: list[JSON] = []
    calls: list[JSON] = []
    for block in message.blocks:
        kind = getattr(block, "block_type", None)
        if kind == "tool_call":
            calls.append(_tool_call(block))
        else:
            parts.extend(_llamaindex_part(block, kind))
    calls += [_tool_call(c) for c in extra.get("tool_calls") or ()]
    texts_only = all(p["type"] == "text" for p in parts)
    content: str | list[JSON] = "".join(p["text"] for p in parts) if texts_only else parts
    out: JSON = {"role": _LLAMAINDEX_ROLES.get(role, role), "content": content}
    for key in ("name", "tool_call_id"):
        if isinstance(extra.get(key), str):
            out[key] = extra[key]
    if calls:
        out["tool_calls"] = calls
    return out


def _llamaindex_part(block: Any, kind: Any) -> list[JSON]:
    if kind == "text":
        return [{"type": "text", "text": str(block.text)}]
    if kind == "image":
        detail = getattr(block, "detail", None)
        url = _llamaindex_image_url(block)
        image: JSON = {"url": url} if detail is None else {"url": url, "detail": detail}
        return [{"type": "image_url", "image_url": image}]
    if kind in _SKIPPED_BLOCKS:
        return []
    return [{"type": str(kind)}]


def _llamaindex_image_url(block: Any) -> str:
    if getattr(block, "url", None):
        return str(block.url)
    mimetype = getattr(block, "image_mimetype", None) or "image/png"
    raw = getattr(block, "image", None)
    if isinstance(raw, bytes):
        # LlamaIndex keeps an image it was given as base64 text already.
        data = raw if _is_base64(raw) else base64.b64encode(raw)
        return f"data:{mimetype};base64,{data.decode('ascii')}"
    path = getattr(block, "path", None)
    if path:
        data = base64.b64encode(Path(path).read_bytes())
        return f"data:{mimetype};base64,{data.decode('ascii')}"
    return ""


def _is_base64(raw: bytes) -> bool:
    try:
        base64.b64decode(raw, validate=True)
    except ValueError:
        return False
    return True


def _content(content: Any) -> str | list[JSON] | None:
    """A message's content: a string, None, or a list of OpenAI content parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return [p for block in content if (p := _part(block)) is not None]
    raise UnsupportedMessageError(f"cannot count message content of type {type(content).__name__}")


def _part(block: Any) -> JSON | None:
    """One content block (OpenAI, LangChain or Anthropic shape) as an OpenAI part."""
    if isinstance(block, str):
        return {"type": "text", "text": block}
    if not isinstance(block, Mapping):
        raise UnsupportedMessageError(f"cannot count a {type(block).__name__} content block")
    kind = block.get("type")
    if kind in ("text", "input_text"):
        text = block.get("text")
        return {"type": "text", "text": text if isinstance(text, str) else ""}
    if kind in _SKIPPED_BLOCKS:
        return None
    if kind in ("image_url", "input_image", "image"):
        return _image_part(block)
    return {"type": str(kind)}


def _image_part(block: Mapping[str, Any]) -> JSON:
    image = block.get("image_url")
    detail = block.get("detail")
    if isinstance(image, Mapping):
        url, detail = image.get("url"), image.get("detail", detail)
    elif isinstance(image, str):
        url = image
    else:
        url = _standard_image_url(block)
    part: JSON = {"url": url if isinstance(url, str) else ""}
    if isinstance(detail, str):
        part["detail"] = detail
    return {"type": "image_url", "image_url": part}


def _standard_image_url(block: Mapping[str, Any]) -> str | None:
    """URL of a LangChain standard or Anthropic image block (a data URL for base64)."""
    source = block.get("source")
    if isinstance(source, Mapping):  # Anthropic: {"type": "base64"|"url", ...}
        if source.get("type") == "url":
            return str(source.get("url"))
        mime, data = source.get("media_type"), source.get("data")
    else:
        if isinstance(block.get("url"), str):
            return str(block["url"])
        mime = block.get("mime_type")
        data = block.get("base64") or (
            block.get("data") if block.get("source_type") == "base64" else None
        )
    return f"data:{mime or 'image/png'};base64,{data}" if isinstance(data, str) else None


def _tool_call(call: Any) -> JSON:
    """A tool call (OpenAI dict or SDK object, LangChain dict, LlamaIndex block) as an
    OpenAI `tool_calls` entry."""
    function = _get(call, "function")
    if function is not None:
        name, arguments = _get(function, "name"), _get(function, "arguments")
    elif _get(call, "tool_name") is not None:  # LlamaIndex ToolCallBlock
        name, arguments = _get(call, "tool_name"), _get(call, "tool_kwargs")
    else:  # LangChain ToolCall / InvalidToolCall
        name, arguments = _get(call, "name"), _get(call, "args")
    if not isinstance(arguments, str):
        # LangChain and LlamaIndex send parsed arguments back as this same JSON text.
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    call_id = _get(call, "id") or _get(call, "tool_call_id")
    return {
        "id": str(call_id or ""),
        "type": "function",
        "function": {"name": str(name or ""), "arguments": arguments},
    }


def to_openai_tools(tools: Iterable[Any] | None) -> list[JSON]:
    """Tool definitions (OpenAI, bare function, Anthropic dicts; LangChain or
    LlamaIndex tools) as OpenAI `tools` entries."""
    return [_tool(t) for t in tools or ()]


def _tool(tool: Any) -> JSON:
    if isinstance(tool, Mapping):
        if isinstance(tool.get("function"), Mapping):
            return {"type": "function", "function": dict(tool["function"])}
        if "name" in tool:
            parameters = tool.get("parameters", tool.get("input_schema"))
            function: JSON = {"name": tool["name"]}
            if tool.get("description") is not None:
                function["description"] = tool["description"]
            function["parameters"] = parameters if parameters is not None else {}
            return {"type": "function", "function": function}
        raise UnsupportedMessageError(f"a tool dict needs 'function' or 'name', got {tool!r}")
    to_openai_tool = getattr(getattr(tool, "metadata", None), "to_openai_tool", None)
    if callable(to_openai_tool):  # LlamaIndex
        return _tool(to_openai_tool())
    if hasattr(tool, "args_schema") and hasattr(tool, "name"):  # LangChain BaseTool
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return _tool(convert_to_openai_tool(tool))
    raise UnsupportedMessageError(f"cannot count a {type(tool).__name__} tool definition")


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def parse_prompt(text: str) -> tuple[list[Any], list[Any] | None]:
    """Messages (and tools, if given) from a file's text.

    JSON may be a list of messages, one message, or a request body with `messages`
    (and `tools`); anything that is not JSON is one user message.
    """
    try:
        data = json.loads(text)
    except ValueError:
        # A text file's final newline is the file's, not the prompt's.
        return [{"role": "user", "content": text.removesuffix("\n")}], None
    if isinstance(data, str):
        return [{"role": "user", "content": data}], None
    if isinstance(data, list):
        return data, None
    if isinstance(data, Mapping) and isinstance(data.get("messages"), list):
        tools = data.get("tools")
        return data["messages"], tools if isinstance(tools, list) else None
    if isinstance(data, Mapping) and "role" in data:
        return [data], None
    raise UnsupportedMessageError(
        "expected a JSON list of messages, a message, or an object with 'messages'"
    )


def parse_tools(text: str) -> list[Any]:
    """Tool definitions from a file's text: a JSON list, or an object with `tools`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UnsupportedMessageError(f"tools must be JSON: {exc}") from None
    if isinstance(data, Mapping) and isinstance(data.get("tools"), list):
        return list(data["tools"])
    if isinstance(data, list):
        return data
    raise UnsupportedMessageError("expected a JSON list of tools, or an object with 'tools'")
