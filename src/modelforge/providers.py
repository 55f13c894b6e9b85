"""Provider names: the one table every module reads a provider's name from.

Our provider ids are models.dev's (the price catalog's keys): `openai`, `azure`,
`amazon-bedrock`, `google-vertex`… Frameworks name providers their own way, by
LangChain's `ls_provider`, a LiteLLM prefix or an LLM class name; these turn any of
them into one of ours, and ours into OpenTelemetry's `gen_ai.provider.name`.

>>> canonical_provider("google_vertexai"), provider_of_class("AzureChatOpenAI")
('google-vertex', 'azure')
>>> otel_provider_name("bedrock")
'aws.bedrock'
"""

from __future__ import annotations

# Names frameworks use for a provider (LangChain's `ls_provider`, LiteLLM prefixes…).
PROVIDER_ALIASES = {
    "openai": "openai",
    "azure": "azure",
    "azure_openai": "azure",
    "azure-openai": "azure",
    "azureopenai": "azure",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "google_genai": "google",
    "google-genai": "google",
    "google_ai": "google",
    "vertex": "google-vertex",
    "vertexai": "google-vertex",
    "vertex_ai": "google-vertex",
    "google_vertexai": "google-vertex",
    "google-vertex": "google-vertex",
    "google_anthropic_vertex": "google-vertex",
    "google-vertex-anthropic": "google-vertex",
    "bedrock": "amazon-bedrock",
    "amazon_bedrock": "amazon-bedrock",
    "amazon-bedrock": "amazon-bedrock",
    "aws": "amazon-bedrock",
    "bedrock_converse": "amazon-bedrock",
    "mistral": "mistral",
    "mistralai": "mistral",
    "deepseek": "deepseek",
    "xai": "xai",
    "groq": "groq",
    "together": "togetherai",
    "together_ai": "togetherai",
    "togetherai": "togetherai",
    "openrouter": "openrouter",
}

# Parts of an LLM class's name (LangChain's "AzureChatOpenAI", LlamaIndex's
# "openai_llm") and the provider each means; the first that occurs wins, so "azure"
# comes before "openai" and "vertex" before "google". An OpenAI-compatible class
# ("OpenAILike") may talk to any server, so it names none.
CLASS_NEEDLES: tuple[tuple[str, str | None], ...] = (
    ("azure", "azure"),
    ("openailike", None),
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("bedrock", "amazon-bedrock"),
    ("vertex", "google-vertex"),
    ("gemini", "google"),
    ("google", "google"),
    ("mistral", "mistral"),
    ("groq", "groq"),
    ("deepseek", "deepseek"),
    ("xai", "xai"),
)

# The well-known `gen_ai.provider.name` values, which the OpenTelemetry conventions say
# MUST be used when they apply. Keyed by our ids, plus the framework names that say more
# than our id does: `google_genai` (LangChain's google-genai SDK) may reach the Gemini
# API or Vertex AI, which the conventions name `gcp.gen_ai`.
OTEL_PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "amazon-bedrock": "aws.bedrock",
    "google": "gcp.gemini",
    "google_genai": "gcp.gen_ai",
    "google-vertex": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "groq": "groq",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "moonshotai": "moonshot_ai",
    "ibm": "ibm.watsonx.ai",
    "watsonx": "ibm.watsonx.ai",
}


def canonical_provider(name: str | None) -> str | None:
    """Our id for a provider name a framework uses; an unknown name, lowercased."""
    if not name:
        return None
    key = name.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def provider_of_class(class_name: str) -> str | None:
    """The provider an LLM class talks to, from its name; None when it names none."""
    name = class_name.lower()
    for needle, provider in CLASS_NEEDLES:
        if needle in name:
            return provider
    return None


def otel_provider_name(name: str) -> str:
    """OpenTelemetry's `gen_ai.provider.name` for a provider; an unknown one unchanged."""
    known = OTEL_PROVIDER_NAMES.get(name.strip().lower())
    if known is None:
        known = OTEL_PROVIDER_NAMES.get(canonical_provider(name) or "")
    return known if known is not None else name
