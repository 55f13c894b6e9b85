"""Turn the model id a framework reports into a catalog entry.

The order, also given in docs/pricing.md ("Model ids"):

1. A deployment named in `[azure.deployments]` is priced as the model it maps to, at Azure.
2. The caller's provider, then each provider the id itself names: a router prefix
   (`openrouter/…`, `bedrock/…`, `vertex_ai/…`, see `ROUTER_PREFIXES`) or a shape only
   one provider uses (Bedrock's `us.anthropic.…-v1:0`, Vertex's `…@20250929` and
   `publishers/…/models/…`). For each in turn: every spelling of the id, the aliases
   that provider documents, then the fallbacks (a dated id's undated alias, `-latest`).
3. Otherwise the model's maker (`MAKERS`: `gpt-*` is OpenAI's, `claude*` Anthropic's…),
   then whoever else lists the id: `PREFERRED_PROVIDERS` in order, then the rest in
   alphabetical order. Spellings are tried before fallbacks.

A prefix that names a provider thus wins over any guess, and a model's maker over its
resellers. OpenAI fine-tunes (`ft:<base>:<org>:<name>:<id>`) are priced as
`ft:<base>`, the fine-tuned price of their base model, never the base model's own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from modelforge import config
from modelforge.pricing.catalog import Catalog, CatalogEntry, get_catalog
from modelforge.providers import PROVIDER_ALIASES, canonical_provider

# Prefixes routers put before a model id (LiteLLM's `bedrock/…`, OpenRouter's own
# `openrouter/…`), and the catalog provider each names. `provider:model` (LangChain's
# `init_chat_model`) and the names in PROVIDER_ALIASES are understood as prefixes too.
ROUTER_PREFIXES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "bedrock": "amazon-bedrock",
    "vertex_ai": "google-vertex",
    "azure": "azure",
    "groq": "groq",
    "xai": "xai",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "together_ai": "togetherai",
    "openrouter": "openrouter",
}

# A provider whose models models.dev lists under more than one id (Vertex's Claude
# models, Azure's Cognitive Services deployments), searched in this order.
PROVIDER_LISTINGS = {
    "google-vertex": ("google-vertex", "google-vertex-anthropic"),
    "azure": ("azure", "azure-cognitive-services"),
}

# Who makes a model, by the start of its id: the maker's own listing wins.
MAKERS = (
    (
        re.compile(
            r"^(gpt-|o\d|chatgpt|text-embedding-(3|ada)|davinci|babbage|whisper|tts-|dall-e"
            r"|codex-|computer-use|ft:)"
        ),
        "openai",
    ),
    (re.compile(r"^claude"), "anthropic"),
    (re.compile(r"^(gemini|gemma|text-embedding-00|embedding-00|imagen|veo-)"), "google"),
    (
        re.compile(
            r"^(mistral|codestral|magistral|ministral|pixtral|devstral|voxtral|open-mi[sx]tral)"
        ),
        "mistral",
    ),
    (re.compile(r"^deepseek"), "deepseek"),
    (re.compile(r"^grok"), "xai"),
    (re.compile(r"^(qwen|qwq|qvq)"), "alibaba"),
    (re.compile(r"^(kimi|moonshot)"), "moonshotai"),
    (re.compile(r"^glm"), "zai"),
    (re.compile(r"^minimax"), "minimax"),
    (re.compile(r"^(command|c4ai-aya)"), "cohere"),
    (re.compile(r"^sonar"), "perplexity"),
    (re.compile(r"^llama"), "llama"),
    (re.compile(r"^mercury"), "inception"),
    (re.compile(r"^mimo"), "xiaomi"),
    (re.compile(r"^step-"), "stepfun"),
    (re.compile(r"^solar"), "upstage"),
)

# When the maker does not list an id, these are preferred, in this order, over the
# resellers after them (taken alphabetically): the curated table checks their prices.
PREFERRED_PROVIDERS = (
    "openai",
    "anthropic",
    "google",
    "mistral",
    "deepseek",
    "xai",
    "google-vertex",
    "amazon-bedrock",
    "azure",
    "groq",
)

_BEDROCK_REGION = re.compile(r"^(us|eu|apac|global|us-gov|jp|au|ca|sa|me|af)\.(?=[a-z]+\.)")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$|-\d+:\d+$")
_BEDROCK_VENDORS = (
    "anthropic.",
    "amazon.",
    "meta.",
    "mistral.",
    "cohere.",
    "ai21.",
    "deepseek.",
    "openai.",
    "qwen.",
)
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_VERTEX_PATH = re.compile(r"(?:^|/)publishers/([^/]+)/models/([^/]+)$")
# Resellers write Claude versions with dots (`claude-sonnet-4.5`); Anthropic with dashes.
_VERSION_DOT = re.compile(r"(?<=\d)\.(?=\d)")


normalise_provider = canonical_provider


@dataclass(frozen=True)
class ModelId:
    """What a model id says about itself."""

    providers: tuple[str, ...]  # named by a prefix or by the id's shape, outermost first
    forms: tuple[str, ...]  # spellings of the same model, best first
    fallbacks: tuple[str, ...]  # other ids billed the same: undated alias, no `-latest`


def _prefix(text: str) -> tuple[str | None, str]:
    """The provider a leading `name/` or `name:` names, and the rest of the id."""
    for separator in ("/", ":"):
        head, sep, rest = text.partition(separator)
        if sep and rest:
            provider = ROUTER_PREFIXES.get(head) or PROVIDER_ALIASES.get(head)
            if provider:
                return provider, rest
    return None, text


def parse_model_id(model: str) -> ModelId:
    """Split a model id into the providers it names, its spellings and its fallbacks."""
    text = model.strip().lower()
    providers: list[str] = []
    outer: list[str] = []  # the id as each router saw it, outermost first
    while True:
        vertex = _VERTEX_PATH.search(text)
        provider: str | None
        if vertex:
            provider, rest = "google-vertex", vertex.group(2)
        else:
            provider, rest = _prefix(text)
        if provider is None:
            break
        providers.append(provider)
        outer.append(text)
        text = rest
    # Gateways list models under the vendor's prefix (Groq's `openai/gpt-oss-120b`), so
    # the id as given is a spelling too, after the stripped one.
    forms = [text, *reversed(outer)]
    bare = _BEDROCK_REGION.sub("", text)
    if bare != text:
        providers.append("amazon-bedrock")
        forms.append(bare)
    if bare.startswith(_BEDROCK_VENDORS):
        providers.append("amazon-bedrock")
        bare = _BEDROCK_VERSION.sub("", bare.split(".", 1)[1])
        forms.append(bare)
    if "@" in bare:
        # Vertex: `claude-sonnet-4-5@20250929` is `claude-sonnet-4-5-20250929`.
        providers.append("google-vertex")
        base, _, version = bare.partition("@")
        if version.isdigit():
            forms.append(f"{base}-{version}")
        forms.append(base)
        bare = base
    fallbacks: list[str] = []
    if bare.startswith("ft:"):
        # `ft:<base>:<org>:<name>:<id>`: the fine-tuned price of `<base>`, and nothing
        # else (the base model's own price is not what a fine-tune costs).
        forms.append(":".join(bare.split(":")[:2]))
    else:
        if bare.startswith("claude"):
            forms.append(_VERSION_DOT.sub("-", bare))
        undated = _DATE_SUFFIX.sub("", bare)
        if undated != bare:
            fallbacks.append(undated)
        if bare.endswith("-latest"):
            fallbacks.append(bare.removesuffix("-latest"))
    unique_forms = tuple(dict.fromkeys(forms))
    return ModelId(
        providers=tuple(dict.fromkeys(providers)),
        forms=unique_forms,
        fallbacks=tuple(f for f in dict.fromkeys(fallbacks) if f not in unique_forms),
    )


def maker_of(model_id: str) -> str | None:
    """The provider that makes `model_id`, by the start of its id."""
    for pattern, provider in MAKERS:
        if pattern.match(model_id):
            return provider
    return None


def _rank(provider: str) -> tuple[int, int, str]:
    if provider in PREFERRED_PROVIDERS:
        return (0, PREFERRED_PROVIDERS.index(provider), "")
    return (1, 0, provider)


class Resolver:
    """Resolves model ids against one catalog, caching every answer."""

    def __init__(self, catalog: Catalog, deployments: dict[str, str] | None = None) -> None:
        self.catalog = catalog
        self.deployments = {k.lower(): v for k, v in (deployments or {}).items()}
        self._cache: dict[tuple[str, str | None], CatalogEntry | None] = {}

    def resolve(self, model: str, provider: str | None = None) -> CatalogEntry | None:
        key = (model, provider)
        try:
            return self._cache[key]
        except KeyError:
            pass
        entry = self._resolve(model, provider.strip().lower() if provider else None)
        if len(self._cache) > 50_000:  # model ids are few; this only guards against junk
            self._cache.clear()
        self._cache[key] = entry
        return entry

    def _resolve(
        self, model: str, provider: str | None, follow_deployments: bool = True
    ) -> CatalogEntry | None:
        mapped = self.deployments.get(model.strip().lower()) if follow_deployments else None
        if mapped:
            # A deployment named in `[azure.deployments]` is billed by Azure.
            return self._resolve(mapped, provider or "azure", follow_deployments=False)
        if provider:
            # The provider's own listing of the id exactly as given is the surest match;
            # stripping a vendor prefix could land on a sibling id with another price.
            # A catalog provider id given as is (`google-vertex-anthropic`) comes first.
            exact = self.catalog.get(provider, model.strip())
            provider = normalise_provider(provider)
            if exact is None and provider:
                exact = self._listed(provider, model.strip())
            if exact is not None:
                return exact
        parsed = parse_model_id(model)
        # A provider named by the caller beats one named by the id; one that has no
        # entry for the model falls through to whoever sells it (e.g. a gateway).
        for named in dict.fromkeys(p for p in (provider, *parsed.providers) if p):
            entry = self._at_provider(named, parsed)
            if entry is not None:
                return entry
        for ids in (parsed.forms, parsed.fallbacks):
            entry = self._from_maker(ids) or self._best_listing(ids)
            if entry is not None:
                return entry
        return None

    def _listed(self, provider: str, model_id: str) -> CatalogEntry | None:
        for listing in PROVIDER_LISTINGS.get(provider, (provider,)):
            entry = self.catalog.get(listing, model_id)
            if entry is not None:
                return entry
        return None

    def _aliased(self, provider: str, ids: Iterable[str]) -> CatalogEntry | None:
        for model_id in ids:
            target = self.catalog.alias(provider, model_id)
            if target is not None:
                entry = self._listed(provider, target)
                if entry is not None:
                    return entry
        return None

    def _at_provider(self, provider: str, parsed: ModelId) -> CatalogEntry | None:
        for model_id in parsed.forms:
            entry = self._listed(provider, model_id)
            if entry is not None:
                return entry
        entry = self._aliased(provider, parsed.forms)
        if entry is not None:
            return entry
        for model_id in parsed.fallbacks:
            entry = self._listed(provider, model_id)
            if entry is not None:
                return entry
        return None

    def _from_maker(self, ids: tuple[str, ...]) -> CatalogEntry | None:
        """The maker's own listing of one of `ids`, else an alias the maker documents."""
        makers = [(model_id, maker) for model_id in ids if (maker := maker_of(model_id))]
        for model_id, maker in makers:
            entry = self._listed(maker, model_id)
            if entry is not None:
                return entry
        for model_id, maker in makers:
            entry = self._aliased(maker, (model_id,))
            if entry is not None:
                return entry
        return None

    def _best_listing(self, ids: tuple[str, ...]) -> CatalogEntry | None:
        """Of every provider listing one of `ids`, the first by `_rank`, then spelling."""
        found = [
            (_rank(entry.provider), position, entry)
            for position, model_id in enumerate(ids)
            for entry in self.catalog.by_model(model_id)
        ]
        if not found:
            return None
        return min(found, key=lambda item: (item[0], item[1]))[2]

    def close_matches(self, model: str, limit: int = 5) -> list[str]:
        import difflib  # only an unknown model with `strict=True` needs it

        first = parse_model_id(model).forms[0]
        return difflib.get_close_matches(first, self.catalog.model_ids(), n=limit, cutoff=0.6)


_lock = threading.Lock()
_resolver: Resolver | None = None


def get_resolver() -> Resolver:
    global _resolver
    resolver = _resolver
    if resolver is None:
        with _lock:
            if _resolver is None:
                settings = config.load_settings()
                _resolver = Resolver(get_catalog(), settings.azure_deployments)
            resolver = _resolver
    return resolver


def resolve(model: str, provider: str | None = None) -> CatalogEntry | None:
    """The catalog entry for `model` (and optional provider hint), or None."""
    return get_resolver().resolve(model, provider)


def clear_cache() -> None:
    global _resolver
    with _lock:
        _resolver = None
