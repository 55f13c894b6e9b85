"""Count a prompt's tokens before the call, check it against the context window, and
price it.

One counting path for every provider. Text is tokenised with tiktoken (the model's
own encoding for OpenAI, `o200k_base` for the rest), and OpenAI's published chat rules
add the framing, tool definitions and images. A count is `exact` only where OpenAI
publishes the rule for that model; anything else is a labelled `estimate`, and
`online=True` asks Anthropic or Google to count (`provider`). docs/tokens.md gives
every rule, its source, and the error of each estimate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from modelforge.errors import ContextWindowExceededError, ModelForgeError
from modelforge.images import TileRule, anthropic_tokens, gemini_tokens, image_size
from modelforge.messages import JSON, to_openai_messages, to_openai_tools

Method = Literal["exact", "estimate", "provider"]

# OpenAI cookbook, "How to count tokens with tiktoken", num_tokens_from_messages():
# every message is framed by 3 tokens, a name costs 1 more, and every reply is primed
# with <|start|>assistant<|message|> (3 tokens).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# The same notebook, num_tokens_for_tools(): what the tool definitions add.
PROP_INIT = 3
PROP_KEY = 3
ENUM_INIT = -3
ENUM_ITEM = 3
FUNC_END = 12
# Anthropic, "Tool use: pricing": the system prompt that any `tools` adds (tool_choice
# auto). Current models add 346; the Claude 3 models below add other amounts.
ANTHROPIC_TOOL_PROMPT = 346
_ANTHROPIC_TOOL_PROMPTS = (
    ("claude-3-opus", 530),
    ("claude-3-sonnet", 159),
    ("claude-3-haiku", 264),
    ("claude-3-5-haiku", 264),
)
# 1 token per 4 characters: the fallback when no tiktoken encoding is on disk.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class _Family:
    """An OpenAI model family: its encoding, what a tool definition starts with, its
    image rule, and whether OpenAI's worked examples cover it (then counts are exact)."""

    encoding: str
    func_init: int
    image: TileRule | None
    published: bool


_FOUR_O_IMAGES = TileRule(base=85, tile=170)
# Most specific first: a model id takes the first family whose pattern matches.
_OPENAI_FAMILIES = (
    (re.compile(r"gpt-4o-mini"), _Family("o200k_base", 7, TileRule(2833, 5667), True)),
    (re.compile(r"gpt-4o|chatgpt-4o"), _Family("o200k_base", 7, _FOUR_O_IMAGES, True)),
    (re.compile(r"gpt-3\.5-turbo"), _Family("cl100k_base", 10, None, True)),
    # gpt-4.1-mini and -nano bill images by 32 px patches, not tiles.
    (re.compile(r"gpt-4\.1-(mini|nano)"), _Family("o200k_base", 7, None, False)),
    (re.compile(r"gpt-4\.[15]"), _Family("o200k_base", 7, _FOUR_O_IMAGES, False)),
    (re.compile(r"gpt-4(-|$)"), _Family("cl100k_base", 10, _FOUR_O_IMAGES, True)),
    (re.compile(r"(gpt-[5-9]|o\d|chatgpt-)"), _Family("o200k_base", 7, None, False)),
)
_EMBEDDINGS = re.compile(r"text-embedding-(ada|3)")
_PROVIDER_PREFIX = re.compile(r"^(openai|azure|anthropic|google|gemini|vertex_ai)[/:]")


class TokenCountError(ModelForgeError, ValueError):
    """An argument to a counting function has a value that cannot be used."""


# --------------------------------------------------------------------------- encodings

_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
_lock = threading.Lock()
_encoders: dict[str, Any] = {}


def _cache_dir() -> Path | None:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            value = os.environ[var]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def encoding_on_disk(encoding: str) -> bool:
    """Whether tiktoken can load `encoding` without a download."""
    # tiktoken downloads a missing encoding with no timeout; a count must never wait on
    # that (nor a user's call, for the estimates the handlers make), so only encodings
    # already on disk are used.
    directory = _cache_dir()
    if directory is None:
        return False
    name = hashlib.sha1(_URL.format(encoding).encode()).hexdigest()
    return (directory / name).is_file()


def encoding_name_for(model: str | None) -> str:
    """The tiktoken encoding of an OpenAI model; `o200k_base` for any other model."""
    name = _bare(model or "")
    family = _openai_family(name)
    if family is not None:
        return family.encoding
    return "cl100k_base" if _EMBEDDINGS.match(name) else "o200k_base"


def _encoder(encoding: str) -> Any | None:
    with _lock:
        if encoding in _encoders:
            return _encoders[encoding]
    encoder = None
    if encoding_on_disk(encoding):
        try:
            import tiktoken

            encoder = tiktoken.get_encoding(encoding)
        except Exception:
            encoder = None
    with _lock:
        _encoders[encoding] = encoder
    return encoder


@dataclass(frozen=True, slots=True)
class TextCounter:
    """Counts the tokens of a text: with a tiktoken `encoding`, or 1 per 4 characters
    (`encoding == "chars/4"`) when no encoding is on disk."""

    encoding: str
    count: Callable[[str], int]

    @property
    def label(self) -> str:
        """How counts were made, as the usage log records it."""
        return self.encoding if self.encoding.startswith("chars/") else f"tiktoken:{self.encoding}"

    def total(self, texts: Iterable[str]) -> int:
        return sum(self.count(t) for t in texts if t)


def text_counter(model: str | None) -> TextCounter:
    """The model's encoding if it is on disk, else another one that is, else chars/4."""
    wanted = encoding_name_for(model)
    for encoding in dict.fromkeys((wanted, "o200k_base", "cl100k_base")):
        encoder = _encoder(encoding)
        if encoder is not None:
            return TextCounter(encoding, _tiktoken_count(encoder))
    return TextCounter(f"chars/{CHARS_PER_TOKEN}", _chars_count)


def _tiktoken_count(encoder: Any) -> Callable[[str], int]:
    def count(text: str) -> int:
        # A prompt may contain "<|endoftext|>" as plain text; the API counts it as text.
        return len(encoder.encode(text, disallowed_special=()))

    return count


def _chars_count(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def chat_framing(messages: int) -> int:
    """The tokens OpenAI's chat format adds around `messages` messages and the reply."""
    return TOKENS_PER_MESSAGE * messages + REPLY_PRIMING if messages else 0


# --------------------------------------------------------------------------- models


def _bare(model: str) -> str:
    return _PROVIDER_PREFIX.sub("", model.strip().lower())


def _openai_family(name: str) -> _Family | None:
    for pattern, family in _OPENAI_FAMILIES:
        if pattern.match(name):
            return family
    return None


@dataclass(frozen=True, slots=True)
class _Model:
    """What counting needs to know about a model id."""

    name: str  # the catalog's id when the model resolves, else the id as given
    provider: str | None
    entry: Any | None  # CatalogEntry

    @property
    def family(self) -> _Family | None:
        return _openai_family(self.name) if self.provider in (None, "openai", "azure") else None

    @property
    def vendor(self) -> str:
        """Whose tokenizer the model uses: openai, anthropic, google or other."""
        if self.family is not None:
            return "openai"
        # Claude and Gemini keep their tokenizers on Bedrock, Vertex and gateways.
        if "claude" in self.name or self.provider == "anthropic":
            return "anthropic"
        if "gemini" in self.name or "gemma" in self.name:
            return "google"
        return "other"


def _model(model: str) -> _Model:
    from modelforge.pricing.resolve import resolve

    entry = resolve(model)
    if entry is None:
        return _Model(_bare(model), None, None)
    return _Model(entry.model_id.lower(), entry.provider, entry)


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A prompt's input tokens and how they were counted.

    `method` is `exact` (OpenAI's published rules for this model, with its tiktoken
    encoding), `estimate` (anything else) or `provider` (the provider's own counting
    endpoint). `encoding` is the tiktoken encoding used, `chars/4` when none was on
    disk, or None for a provider's count. `notes` say why a count is an estimate.
    """

    tokens: int
    method: Method
    encoding: str | None
    notes: tuple[str, ...] = ()


def count_tokens(
    model: str,
    messages: str | Iterable[Any],
    tools: Iterable[Any] | None = None,
    online: bool = False,
) -> TokenCount:
    """The input tokens `messages` (and `tools`) will cost on `model`.

    `messages` are OpenAI-format dicts, LangChain messages or LlamaIndex chat messages
    (or one string: a user message); `tools` are OpenAI, Anthropic or framework tool
    definitions. With `online=True`, an Anthropic or Gemini model is counted by its
    provider when ANTHROPIC_API_KEY or GEMINI_API_KEY/GOOGLE_API_KEY is set; if that
    fails, the offline count is returned with a note saying why.
    """
    chat = to_openai_messages(messages)
    tool_defs = to_openai_tools(tools)
    info = _model(model)
    notes: list[str] = []
    if online:
        from modelforge.provider_counts import ProviderCountError, count_online

        try:
            counted = count_online(info.vendor, info.provider, info.name, chat, tool_defs)
        except ProviderCountError as exc:
            notes.append(f"online count failed, counted offline: {exc}")
        else:
            if counted is not None:
                return TokenCount(counted.tokens, "provider", None, (counted.source,))
            if info.vendor in ("anthropic", "google"):
                notes.append(f"no online count for {info.name}: no API key, or not its API")
    return _count_offline(info, chat, tool_defs, notes)


def _count_offline(
    info: _Model, chat: list[JSON], tools: list[JSON], notes: list[str]
) -> TokenCount:
    counter = text_counter(info.name)
    tally = _Tally(info, counter, notes)
    total = sum(tally.message(m) for m in chat) + (REPLY_PRIMING if chat else 0)
    total += tally.tools(tools)
    family = info.family
    if counter.encoding.startswith("chars/"):
        tally.note(f"no tiktoken encoding on disk: 1 token per {CHARS_PER_TOKEN} characters")
    elif family is None:
        tally.note(f"no public tokenizer for {info.name}: counted with {counter.encoding}")
    elif counter.encoding != family.encoding:
        tally.note(f"{family.encoding} is not on disk: counted with {counter.encoding}")
    elif not family.published:
        tally.note(f"OpenAI publishes no worked example for {info.name}: gpt-4o's rules")
    method: Method = "estimate" if tally.notes else "exact"
    return TokenCount(max(total, 0), method, counter.encoding, tuple(tally.notes))


class _Tally:
    """Counts messages and tools for one model, collecting why a count is an estimate."""

    def __init__(self, info: _Model, counter: TextCounter, notes: list[str]) -> None:
        self.info = info
        self.text = counter.count
        self.notes = notes

    def note(self, why: str) -> None:
        if why not in self.notes:
            self.notes.append(why)

    def message(self, message: JSON) -> int:
        tokens = TOKENS_PER_MESSAGE + self.text(message["role"])
        tokens += self.content(message.get("content"))
        if "name" in message:
            tokens += self.text(message["name"]) + TOKENS_PER_NAME
        for call in message.get("tool_calls", ()):
            function = call["function"]
            tokens += self.text(function["name"]) + self.text(function["arguments"])
            self.note("tool calls in messages: OpenAI publishes no rule for their framing")
        if message["role"] == "tool":
            self.note("tool results: OpenAI publishes no rule for their framing")
        return tokens

    def content(self, content: str | list[JSON] | None) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.text(content)
        return sum(self.part(p) for p in content)

    def part(self, part: JSON) -> int:
        kind = part["type"]
        if kind == "text":
            return self.text(part["text"])
        if kind == "image_url":
            return self.image(part["image_url"])
        self.note(f"{kind} parts are not counted")
        return 0

    def image(self, image: JSON) -> int:
        size = image_size(image.get("url", ""))
        detail = image.get("detail", "auto")
        vendor = self.info.vendor
        if vendor == "anthropic":
            return anthropic_tokens(size)
        if vendor == "google":
            return gemini_tokens(size)
        family = self.info.family
        rule = family.image if family is not None else None
        if rule is None:
            self.note(f"no published image rule for {self.info.name}: gpt-4o's tile rule")
            rule = _FOUR_O_IMAGES
        if detail != "low":
            if size is None:
                self.note("image size unknown (not a data: URL): the tile rule's maximum")
            if detail != "high":
                self.note(f"image detail {detail!r} counted as 'high'")
        return rule.tokens(detail, size)

    def tools(self, tools: list[JSON]) -> int:
        if not tools:
            return 0
        family = self.info.family
        if family is not None:
            return sum(self.function(t["function"], family.func_init) for t in tools) + FUNC_END
        # No published rule: the definitions as the JSON the provider receives.
        tokens = sum(
            self.text(json.dumps(t["function"], ensure_ascii=False, default=str)) for t in tools
        )
        if self.info.vendor == "anthropic":
            tokens += _anthropic_tool_prompt(self.info.name)
        return tokens

    def function(self, function: Mapping[str, Any], func_init: int) -> int:
        """OpenAI cookbook, num_tokens_for_tools(): one function definition."""
        description = function.get("description")
        if not isinstance(description, str):
            self.note("a tool without a description: the published rule assumes one")
            description = ""
        tokens = func_init + self.text(f"{function.get('name', '')}:{_strip_dot(description)}")
        properties = (function.get("parameters") or {}).get("properties") or {}
        if properties:
            tokens += PROP_INIT + self.properties(properties)
        return tokens

    def properties(self, properties: Mapping[str, Any]) -> int:
        tokens = 0
        for key, value in properties.items():
            schema: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
            tokens += PROP_KEY + self.property_line(key, schema)
            enum = schema.get("enum")
            if enum:
                tokens += ENUM_INIT + sum(ENUM_ITEM + self.text(str(item)) for item in enum)
            nested = schema.get("properties") or (schema.get("items") or {}).get("properties")
            if nested:
                # The published rule stops at top-level properties; nested ones are
                # counted the same way, one level down.
                self.note("nested tool parameters: the published rule, applied again")
                tokens += PROP_INIT + self.properties(nested)
        return tokens

    def property_line(self, key: str, schema: Mapping[str, Any]) -> int:
        kind, description = schema.get("type"), schema.get("description")
        if not isinstance(kind, str) or not isinstance(description, str):
            self.note("a tool parameter without a type or description")
        kind = kind if isinstance(kind, str) else "|".join(map(str, kind or []))
        description = description if isinstance(description, str) else ""
        return self.text(f"{key}:{kind}:{_strip_dot(description)}")


def _strip_dot(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _anthropic_tool_prompt(name: str) -> int:
    for prefix, tokens in _ANTHROPIC_TOOL_PROMPTS:
        if name.startswith(prefix):
            return tokens
    return ANTHROPIC_TOOL_PROMPT


# --------------------------------------------------------------------------- context


@dataclass(frozen=True, slots=True)
class ContextCheck:
    """Whether a prompt fits the model's context window.

    `used` is the prompt's tokens and `limit` the context window from the price
    catalog (None when unknown: then `fits` is True and `utilization` None). The
    prompt fits when `used + max_output_tokens <= limit`: exactly at the limit fits.
    """

    model: str
    used: int
    limit: int | None
    fits: bool
    utilization: float | None
    max_output_tokens: int | None
    output_limit: int | None
    count: TokenCount
    catalog_model: str | None = None

    def raise_if_exceeded(self) -> None:
        """Raise `ContextWindowExceededError` when the prompt does not fit."""
        if not self.fits and self.limit is not None:
            raise ContextWindowExceededError(
                self.model, self.used, self.limit, self.max_output_tokens or 0
            )


def check_context(
    model: str,
    messages: str | Iterable[Any],
    max_output_tokens: int | None = None,
    tools: Iterable[Any] | None = None,
    online: bool = False,
) -> ContextCheck:
    """Count `messages` and compare them, plus `max_output_tokens`, with `model`'s
    context window."""
    _check_max_output(max_output_tokens)
    count = count_tokens(model, messages, tools, online)
    return _context(model, _model(model), count, max_output_tokens)


def _context(model: str, info: _Model, count: TokenCount, max_output: int | None) -> ContextCheck:
    entry = info.entry
    limit = entry.context_limit if entry is not None and entry.context_limit else None
    output_limit = entry.output_limit if entry is not None and entry.output_limit else None
    wanted = count.tokens + (max_output or 0)
    return ContextCheck(
        model=model,
        used=count.tokens,
        limit=limit,
        fits=limit is None or wanted <= limit,
        utilization=None if limit is None else count.tokens / limit,
        max_output_tokens=max_output,
        output_limit=output_limit,
        count=count,
        catalog_model=entry.key if entry is not None else None,
    )


def _check_max_output(max_output_tokens: int | None) -> None:
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool) or max_output_tokens < 0
    ):
        raise TokenCountError(f"max_output_tokens must be a count, got {max_output_tokens!r}")


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """What a call will cost: `input_cost` for the prompt alone, and `max_cost` if it
    also produces `max_output_tokens` tokens (the model's output limit when not
    given). Costs are None when the model has no price, or the bound is unknown."""

    model: str
    input_tokens: int
    input_cost: Decimal | None
    max_output_tokens: int | None
    max_cost: Decimal | None
    count: TokenCount
    catalog_model: str | None = None
    source: str | None = None
    input_price: Decimal | None = field(default=None, repr=False)


def estimate_cost(
    model: str,
    messages: str | Iterable[Any],
    max_output_tokens: int | None = None,
    tools: Iterable[Any] | None = None,
    online: bool = False,
) -> CostEstimate:
    """Count `messages` and price them at `model`'s current price (USD, `Decimal`)."""
    _check_max_output(max_output_tokens)
    count = count_tokens(model, messages, tools, online)
    return _cost(model, _model(model), count, max_output_tokens)


def _cost(model: str, info: _Model, count: TokenCount, max_output: int | None) -> CostEstimate:
    from modelforge.pricing.cost import cost_for
    from modelforge.usage import Usage

    entry = info.entry
    if entry is None:
        return CostEstimate(model, count.tokens, None, max_output, None, count)
    if max_output is None:
        max_output = entry.output_limit or None
    low = cost_for(entry, Usage(input_tokens=count.tokens), model).total
    high = None
    if max_output is not None:
        usage = Usage(input_tokens=count.tokens, output_tokens=max_output)
        high = cost_for(entry, usage, model).total
    return CostEstimate(
        model=model,
        input_tokens=count.tokens,
        input_cost=low,
        max_output_tokens=max_output,
        max_cost=high,
        count=count,
        catalog_model=entry.key,
        source=entry.source,
        input_price=entry.prices.input,
    )


# --------------------------------------------------------------------------- together


@dataclass(frozen=True, slots=True)
class PromptReport:
    """A prompt's count, its context check and its cost, from one count."""

    count: TokenCount
    context: ContextCheck
    cost: CostEstimate

    def as_json(self) -> dict[str, Any]:
        """Plain JSON types; money as strings, so no Decimal digit is lost."""

        def money(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "model": self.context.model,
            "catalog_model": self.context.catalog_model,
            "tokens": self.count.tokens,
            "method": self.count.method,
            "encoding": self.count.encoding,
            "notes": list(self.count.notes),
            "context_limit": self.context.limit,
            "output_limit": self.context.output_limit,
            "max_output_tokens": self.context.max_output_tokens,
            "utilization": self.context.utilization,
            "fits": self.context.fits,
            "input_cost_usd": money(self.cost.input_cost),
            "max_cost_usd": money(self.cost.max_cost),
            "max_cost_output_tokens": self.cost.max_output_tokens,
            "input_price_per_1m": money(self.cost.input_price),
            "price_source": self.cost.source,
        }


def prompt_report(
    model: str,
    messages: str | Sequence[Any],
    tools: Iterable[Any] | None = None,
    max_output_tokens: int | None = None,
    online: bool = False,
) -> PromptReport:
    """`count_tokens`, `check_context` and `estimate_cost` for one prompt, counted once."""
    _check_max_output(max_output_tokens)
    count = count_tokens(model, messages, tools, online)
    info = _model(model)
    context = _context(model, info, count, max_output_tokens)
    return PromptReport(count, context, _cost(model, info, count, max_output_tokens))
