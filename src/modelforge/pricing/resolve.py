"""Turn the model id a framework reports into a catalog entry.

Handles provider prefixes (`openai/gpt-4o`, `anthropic:claude-…`), dated snapshots
(`gpt-4o-2024-08-06`), Bedrock ids with cross-region prefixes
(`us.anthropic.claude-sonnet-4-5-20250929-v1:0`), Vertex ids
(`claude-sonnet-4-5@20250929`, `publishers/google/models/gemini-2.5-pro`) and Azure
deployment names (through `[azure.deployments]` in the config file).
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Iterator

from modelforge import config
from modelforge.pricing.catalog import Catalog, CatalogEntry, get_catalog
from modelforge.providers import PROVIDER_ALIASES, canonical_provider

# Where a bare model id most likely comes from, when no provider is known.
_HOME_PROVIDERS = (
    (
        re.compile(r"^(gpt-|o\d|chatgpt|text-embedding|davinci|babbage|whisper|tts-|dall-e)"),
        "openai",
    ),
    (re.compile(r"^claude"), "anthropic"),
    (re.compile(r"^(gemini|gemma|text-embedding-00|embedding-00)"), "google"),
    (
        re.compile(r"^(mistral|codestral|magistral|ministral|pixtral|devstral|open-mistral)"),
        "mistral",
    ),
    (re.compile(r"^deepseek"), "deepseek"),
    (re.compile(r"^grok"), "xai"),
)
_PREFERRED = ("openai", "anthropic", "google", "mistral", "deepseek", "xai", "groq")

_BEDROCK_REGION = re.compile(r"^(us|eu|apac|global|us-gov|jp|au|ca|sa|me|af)\.(?=[a-z]+\.)")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")
_BEDROCK_VENDORS = ("anthropic.", "amazon.", "meta.", "mistral.", "cohere.", "ai21.", "deepseek.")
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_VERTEX_PATH = re.compile(r"(?:^|/)publishers/([^/]+)/models/([^/]+)$")


normalise_provider = canonical_provider


def candidate_ids(model: str) -> Iterator[tuple[str, str | None]]:
    """Ids to try, best first, each with the provider it implies (if any)."""
    exact = text = model.strip().lower()
    hinted: str | None = None
    vertex = _VERTEX_PATH.search(text)
    if vertex:
        text, hinted = vertex.group(2), "google-vertex"
    else:
        for separator in ("/", ":"):
            head, sep, rest = text.partition(separator)
            if sep and rest and head in PROVIDER_ALIASES:
                text, hinted = rest, PROVIDER_ALIASES[head]
                break
    yield text, hinted
    if text != exact:
        # Gateways list models under the vendor's prefix (Groq's `openai/gpt-oss-120b`),
        # so the id as given must still be tried when the stripped one is not sold.
        yield exact, None
    # Bedrock: strip the cross-region prefix, then vendor prefix and version suffix.
    regionless = _BEDROCK_REGION.sub("", text)
    if regionless != text:
        yield regionless, hinted or "amazon-bedrock"
    if regionless.startswith(_BEDROCK_VENDORS):
        bare = _BEDROCK_VERSION.sub("", regionless.split(".", 1)[1])
        yield bare, hinted
        text = bare
    # Vertex: `claude-sonnet-4-5@20250929` is `claude-sonnet-4-5-20250929`.
    if "@" in text:
        base, _, version = text.partition("@")
        if version.isdigit():
            yield f"{base}-{version}", hinted
        yield base, hinted
        text = base
    undated = _DATE_SUFFIX.sub("", text)
    if undated != text:
        yield undated, hinted
    if text.endswith("-latest"):
        yield text[: -len("-latest")], hinted


def _home_provider(model_id: str) -> str | None:
    for pattern, provider in _HOME_PROVIDERS:
        if pattern.match(model_id):
            return provider
    return None


def _pick(entries: list[CatalogEntry], provider: str | None, model_id: str) -> CatalogEntry | None:
    if not entries:
        return None
    if provider:
        for entry in entries:
            if entry.provider == provider:
                return entry
        return None
    home = _home_provider(model_id)
    for wanted in (home, *_PREFERRED):
        for entry in entries:
            if entry.provider == wanted:
                return entry
    return entries[0]


class Resolver:
    """Resolves model ids against one catalog, caching every answer."""

    def __init__(self, catalog: Catalog, deployments: dict[str, str] | None = None) -> None:
        self.catalog = catalog
        self.deployments = {k.lower(): v for k, v in (deployments or {}).items()}
        self._cache: dict[tuple[str, str | None], CatalogEntry | None] = {}
        self._providers = catalog.providers()

    def resolve(self, model: str, provider: str | None = None) -> CatalogEntry | None:
        key = (model, provider)
        try:
            return self._cache[key]
        except KeyError:
            pass
        entry = self._resolve(model, self._provider(provider))
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
            exact = self.catalog.get(provider, model.strip())
            if exact is not None:
                return exact
        ids = list(candidate_ids(model))
        # A provider named by the caller beats one implied by a prefix; a provider that
        # has no entry for the model falls back to whoever sells it (e.g. a gateway).
        for want in (provider, None) if provider else (None,):
            for model_id, implied in ids:
                entry = _pick(self.catalog.by_model(model_id), want or implied, model_id)
                if entry is None and implied and not want:
                    entry = _pick(self.catalog.by_model(model_id), None, model_id)
                if entry is not None:
                    return entry
        return None

    def _provider(self, provider: str | None) -> str | None:
        """A provider id the catalog knows is kept as is; otherwise aliases apply."""
        if provider and provider.strip().lower() in self._providers:
            return provider.strip().lower()
        return normalise_provider(provider)

    def close_matches(self, model: str, limit: int = 5) -> list[str]:
        first = next(candidate_ids(model))[0]
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
