"""The provider-name table: framework names and class names to our ids, and our ids to
OpenTelemetry's `gen_ai.provider.name`."""

from __future__ import annotations

import pytest

from modelforge.providers import canonical_provider, otel_provider_name, provider_of_class


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("openai", "openai"),
        ("azure_openai", "azure"),
        ("Google_GenAI", "google"),
        ("google_vertexai", "google-vertex"),
        ("bedrock_converse", "amazon-bedrock"),
        ("mistralai", "mistral"),
        (" fireworks ", "fireworks"),  # unknown: kept, lowercased
        ("", None),
        (None, None),
    ],
)
def test_framework_names_become_our_ids(name: str | None, ours: str | None) -> None:
    assert canonical_provider(name) == ours


@pytest.mark.parametrize(
    ("class_name", "provider"),
    [
        # LangChain classes (the last part of `serialized["id"]`)
        ("ChatOpenAI", "openai"),
        ("AzureChatOpenAI", "azure"),
        ("ChatAnthropic", "anthropic"),
        ("ChatBedrockConverse", "amazon-bedrock"),
        ("ChatVertexAI", "google-vertex"),
        ("ChatGoogleGenerativeAI", "google"),
        ("ChatMistralAI", "mistral"),
        ("ChatGroq", "groq"),
        ("ChatDeepSeek", "deepseek"),
        ("ChatXAI", "xai"),
        # LlamaIndex classes (`class_name()` in the model dict)
        ("openai_llm", "openai"),
        ("AzureOpenAI", "azure"),
        ("Anthropic_LLM", "anthropic"),
        ("Gemini_LLM", "google"),
        ("OpenAILike", None),  # any OpenAI-compatible server
        ("custom_llm", None),
        ("", None),
    ],
)
def test_class_names_name_their_provider(class_name: str, provider: str | None) -> None:
    assert provider_of_class(class_name) == provider


@pytest.mark.parametrize(
    ("name", "otel"),
    [
        ("openai", "openai"),
        ("azure", "azure.ai.openai"),
        ("azure_openai", "azure.ai.openai"),
        ("amazon-bedrock", "aws.bedrock"),
        ("bedrock", "aws.bedrock"),
        ("google", "gcp.gemini"),
        ("google_genai", "gcp.gen_ai"),  # may be the Gemini API or Vertex AI
        ("google_vertexai", "gcp.vertex_ai"),
        ("mistralai", "mistral_ai"),
        ("xai", "x_ai"),
        ("watsonx", "ibm.watsonx.ai"),
        ("my-gateway", "my-gateway"),  # unknown: passed through
    ],
)
def test_our_ids_and_framework_names_map_to_opentelemetry_names(name: str, otel: str) -> None:
    assert otel_provider_name(name) == otel
