"""Drive the real provider client classes against the loopback wire server."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from modelforge.wire import DEFAULT_TEXT, Reply, WireServer

# The anthropic SDK warns on every call naming a model past its announced end-of-life date.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"
DEFAULT_TEXT_WORDS = len(DEFAULT_TEXT.split())

OPENAI_USAGE: dict[str, Any] = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "total_tokens": 120,
    "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": 0},
}
RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 300,
    "input_tokens_details": {"cached_tokens": 128},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 32},
    "total_tokens": 350,
}
ANTHROPIC_USAGE: dict[str, Any] = {
    "input_tokens": 10,
    "output_tokens": 7,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 200,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
}


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer() as running:
        yield running


def _chat_openai(server: WireServer, **kwargs: Any) -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        model=kwargs.pop("model", "gpt-4o"),
        base_url=server.openai_base_url,
        api_key="test",
        max_retries=0,
        **kwargs,
    )


def _chat_anthropic(server: WireServer) -> Any:
    langchain_anthropic = pytest.importorskip("langchain_anthropic")
    return langchain_anthropic.ChatAnthropic(
        model=ANTHROPIC_MODEL, base_url=server.anthropic_base_url, api_key="test", max_retries=0
    )


def _aggregate(chunks: Iterator[Any]) -> Any:
    total = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    return total


def _post_raw(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


# --------------------------------------------------------------------------- langchain-openai


def test_chat_openai_invoke_reports_native_usage_and_served_model(server: WireServer) -> None:
    server.enqueue(Reply(text="Hi!", usage=OPENAI_USAGE, model="gpt-4o-2024-08-06"))
    message = _chat_openai(server).invoke("hello there")

    assert message.content == "Hi!"
    assert message.response_metadata["model_name"] == "gpt-4o-2024-08-06"
    usage = message.usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (100, 20, 120)
    assert usage["input_token_details"]["cache_read"] == 40
    assert usage["output_token_details"]["reasoning"] == 5
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "gpt-4o"
    assert request["headers"]["authorization"] == "Bearer test"


def test_default_usage_is_derived_from_the_request(server: WireServer) -> None:
    message = _chat_openai(server).invoke("one two three")
    # 3 words + 3 framing tokens for the single message.
    assert message.usage_metadata["input_tokens"] == 6
    assert message.usage_metadata["output_tokens"] == DEFAULT_TEXT_WORDS
    assert message.response_metadata["model_name"] == "gpt-4o"


def test_chat_openai_stream_usage_arrives_on_aggregated_chunk(server: WireServer) -> None:
    server.enqueue(Reply(text="streamed words arrive here", usage=OPENAI_USAGE, chunks=4))
    total = _aggregate(_chat_openai(server, stream_usage=True).stream("hi"))

    assert total.content == "streamed words arrive here"
    assert total.usage_metadata["input_tokens"] == 100
    assert total.usage_metadata["input_token_details"]["cache_read"] == 40
    assert total.usage_metadata["output_token_details"]["reasoning"] == 5
    assert server.requests[0]["body"]["stream_options"] == {"include_usage": True}


def test_chat_openai_stream_without_include_usage_has_no_usage(server: WireServer) -> None:
    total = _aggregate(_chat_openai(server).stream("hi"))
    assert total.content == DEFAULT_TEXT
    assert total.usage_metadata is None

    status, raw = _post_raw(
        f"{server.openai_base_url}/chat/completions",
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200
    assert b'"usage"' not in raw
    assert raw.rstrip().endswith(b"data: [DONE]")


def test_chat_openai_n_gives_n_generations(server: WireServer) -> None:
    from langchain_core.messages import HumanMessage

    result = _chat_openai(server, n=2).generate([[HumanMessage("hi")]])
    assert [g.text for g in result.generations[0]] == [DEFAULT_TEXT, DEFAULT_TEXT]
    assert result.llm_output["token_usage"]["completion_tokens"] == 2 * DEFAULT_TEXT_WORDS


def test_chat_openai_service_tier_is_reported(server: WireServer) -> None:
    server.enqueue(Reply(service_tier="flex", usage=OPENAI_USAGE))
    message = _chat_openai(server).invoke("hi")
    assert message.response_metadata["service_tier"] == "flex"
    assert message.usage_metadata["input_token_details"]["flex_cache_read"] == 40


def test_error_reply_raises_once_then_recovers(server: WireServer) -> None:
    openai = pytest.importorskip("openai")
    server.enqueue(Reply(status=500), Reply(status=429, error_body={"error": {"message": "slow"}}))
    llm = _chat_openai(server)

    with pytest.raises(openai.InternalServerError):
        llm.invoke("hi")
    with pytest.raises(openai.RateLimitError, match="slow"):
        llm.invoke("hi")
    assert llm.invoke("hi").content == DEFAULT_TEXT
    assert server.pending == 0
    assert len(server.requests) == 3


def test_chat_openai_responses_api_cached_and_reasoning(server: WireServer) -> None:
    llm = _chat_openai(server, use_responses_api=True)
    server.enqueue(Reply(text="via responses", usage=RESPONSES_USAGE, model="gpt-4o-2024-08-06"))
    server.enqueue(Reply(text="via responses", usage=RESPONSES_USAGE, chunks=2))

    for message in (llm.invoke("hello"), _aggregate(llm.stream("hello"))):
        assert message.text == "via responses"
        usage = message.usage_metadata
        assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (
            300,
            50,
            350,
        )
        assert usage["input_token_details"]["cache_read"] == 128
        assert usage["output_token_details"]["reasoning"] == 32
    assert [r["path"] for r in server.requests] == ["/v1/responses", "/v1/responses"]


async def test_concurrent_abatch_routes_replies_by_model(server: WireServer) -> None:
    httpx = pytest.importorskip("httpx")
    server.enqueue(*[Reply(text="alpha", match_model="gpt-4o") for _ in range(25)])
    server.enqueue(*[Reply(text="beta", match_model="gpt-4o-mini") for _ in range(25)])
    # An own client, closed before the event loop ends, so no pooled socket outlives the test.
    async with httpx.AsyncClient() as http_client:
        alpha, beta = await asyncio.gather(
            _chat_openai(server, http_async_client=http_client).abatch(["hi"] * 25),
            _chat_openai(server, model="gpt-4o-mini", http_async_client=http_client).abatch(
                ["hi"] * 25
            ),
        )
    assert {m.content for m in alpha} == {"alpha"}
    assert {m.content for m in beta} == {"beta"}
    assert server.pending == 0
    assert len(server.requests) == 50


# --------------------------------------------------------------------------- langchain-anthropic


def test_chat_anthropic_invoke_reports_inclusive_input_and_cache_details(
    server: WireServer,
) -> None:
    server.enqueue(Reply(text="Bonjour", usage=ANTHROPIC_USAGE))
    message = _chat_anthropic(server).invoke("hello")

    assert message.content == "Bonjour"
    assert message.response_metadata["model_name"] == ANTHROPIC_MODEL
    usage = message.usage_metadata
    assert usage["input_tokens"] == 10 + 200 + 300
    assert usage["output_tokens"] == 7
    details = usage["input_token_details"]
    assert details["cache_read"] == 200
    assert details["ephemeral_5m_input_tokens"] == 100
    assert details["ephemeral_1h_input_tokens"] == 200
    assert "cache_creation" in details
    request = server.requests[0]
    assert request["path"] == "/v1/messages"
    # anthropic<2 authenticates with x-api-key, anthropic 2.x with a bearer token.
    assert {request["headers"].get("x-api-key"), request["headers"].get("authorization")} & {
        "test",
        "Bearer test",
    }
    assert "anthropic-version" in request["headers"]


def test_chat_anthropic_stream_with_full_delta_usage(server: WireServer) -> None:
    server.enqueue(Reply(text="a b c d", usage=ANTHROPIC_USAGE, anthropic_delta_full_usage=True))
    total = _aggregate(_chat_anthropic(server).stream("hello"))

    assert total.content == "a b c d"
    assert total.usage_metadata["input_tokens"] == 510
    assert total.usage_metadata["output_tokens"] == 7
    assert total.usage_metadata["input_token_details"]["cache_read"] == 200
    assert total.usage_metadata["input_token_details"]["ephemeral_1h_input_tokens"] == 200


def test_anthropic_sdk_stream_events_split_usage_like_the_api(server: WireServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    server.enqueue(Reply(text="one two three", usage=ANTHROPIC_USAGE))
    with anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test") as client:
        stream = client.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        events = {event.type: event for event in stream}
        counted = client.messages.count_tokens(
            model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "four words right here"}]
        )

    assert {"message_start", "content_block_delta", "message_delta", "message_stop"} <= set(events)
    start_usage = events["message_start"].message.usage
    assert (start_usage.input_tokens, start_usage.output_tokens) == (10, 1)
    assert start_usage.cache_creation.ephemeral_5m_input_tokens == 100
    delta_usage = events["message_delta"].usage
    # By default the final delta carries only the cumulative output count.
    assert (delta_usage.output_tokens, delta_usage.input_tokens) == (7, None)
    assert counted.input_tokens == 4 + 3


def test_anthropic_error_reply_uses_anthropic_error_shape(server: WireServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    server.enqueue(Reply(status=500))
    with pytest.raises(anthropic.InternalServerError) as raised:
        _chat_anthropic(server).invoke("hi")
    assert raised.value.body["error"]["type"] == "api_error"


def test_threaded_anthropic_calls(server: WireServer) -> None:
    llm = _chat_anthropic(server)
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda i: llm.invoke(f"question {i}"), range(32)))
    assert all(reply.content == DEFAULT_TEXT for reply in replies)
    assert len(server.requests) == 32


# --------------------------------------------------------------------------- openai SDK


def test_openai_sdk_embeddings_base64_default_and_token_ids(server: WireServer) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0) as client:
        packed = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c d e"])
        plain = client.embeddings.create(
            model="text-embedding-3-small", input=["a b", "c d e"], encoding_format="float"
        )
        tokens = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]])

    assert server.requests[0]["body"]["encoding_format"] == "base64"
    assert [len(item.embedding) for item in packed.data] == [8, 8]
    assert [item.embedding for item in packed.data] == [item.embedding for item in plain.data]
    assert packed.usage.prompt_tokens == packed.usage.total_tokens == 5
    assert len(tokens.data) == 1
    assert tokens.usage.prompt_tokens == 3


def test_langchain_openai_embeddings(server: WireServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    # check_embedding_ctx_length=False: otherwise tiktoken downloads its encoding file.
    embeddings = langchain_openai.OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=server.openai_base_url,
        api_key="test",
        max_retries=0,
        check_embedding_ctx_length=False,
    )
    vectors = embeddings.embed_documents(["alpha", "beta"])
    assert len(vectors) == 2
    assert embeddings.embed_query("alpha") == vectors[0]


def test_openai_sdk_legacy_completions(server: WireServer) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0) as client:
        whole = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
        chunks = list(
            client.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="say hi",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert whole.choices[0].text == DEFAULT_TEXT
    assert whole.usage is not None and whole.usage.prompt_tokens == 2
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == DEFAULT_TEXT_WORDS


def test_models_listing_and_unknown_path(server: WireServer) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0) as client:
        assert "gpt-4o" in {model.id for model in client.models.list()}
    status, raw = _post_raw(f"{server.base_url}/v1/nothing", {})
    assert status == 404
    assert "error" in json.loads(raw)


def test_server_lifecycle() -> None:
    server = WireServer().start()
    assert server.openai_base_url == f"{server.base_url}/v1"
    assert server.anthropic_base_url == server.base_url
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        _ = server.base_url


# --------------------------------------------------------------------------- llama-index


def test_llama_index_openai_chat_and_stream_chat(server: WireServer) -> None:
    llms = pytest.importorskip("llama_index.llms.openai")
    from llama_index.core.llms import ChatMessage

    messages = [ChatMessage(role="user", content="hi there")]
    server.enqueue(Reply(usage=OPENAI_USAGE), Reply(usage=OPENAI_USAGE))
    llm = llms.OpenAI(
        model="gpt-4o",
        api_base=server.openai_base_url,
        api_key="test",
        max_retries=0,
        additional_kwargs={"stream_options": {"include_usage": True}},
    )

    response = llm.chat(messages)
    assert response.message.content == DEFAULT_TEXT
    assert response.raw.usage.prompt_tokens_details.cached_tokens == 40
    *_, last = llm.stream_chat(messages)
    assert last.message.content == DEFAULT_TEXT
    assert last.raw.usage.completion_tokens_details.reasoning_tokens == 5
    assert "stream_options" not in server.requests[0]["body"]
    assert server.requests[1]["body"]["stream_options"] == {"include_usage": True}


def test_llama_index_openai_responses(server: WireServer) -> None:
    llms = pytest.importorskip("llama_index.llms.openai")
    from llama_index.core.llms import ChatMessage

    server.enqueue(Reply(usage=RESPONSES_USAGE), Reply(usage=RESPONSES_USAGE))
    llm = llms.OpenAIResponses(
        model="gpt-4o", api_base=server.openai_base_url, api_key="test", max_retries=0
    )
    messages = [ChatMessage(role="user", content="hi there")]
    assert llm.chat(messages).additional_kwargs["usage"].input_tokens == 300
    *_, last = llm.stream_chat(messages)
    assert last.message.content == DEFAULT_TEXT
    assert last.additional_kwargs["usage"].output_tokens_details.reasoning_tokens == 32


def _skip_unless_llama_anthropic_compatible() -> Any:
    llms = pytest.importorskip("llama_index.llms.anthropic")
    import anthropic

    # llama-index-llms-anthropic 0.12 passes `temperature` (gone from anthropic 1.x) and
    # instantiates MessageParam (a Union from anthropic 2.x): it only works with anthropic<1.
    if int(anthropic.__version__.split(".")[0]) >= 1:
        pytest.skip(f"llama-index-llms-anthropic cannot drive anthropic {anthropic.__version__}")
    return llms


def test_llama_index_anthropic_chat_and_stream_chat(server: WireServer) -> None:
    llms = _skip_unless_llama_anthropic_compatible()
    from llama_index.core.llms import ChatMessage

    server.enqueue(Reply(usage=ANTHROPIC_USAGE), Reply(usage=ANTHROPIC_USAGE))
    llm = llms.Anthropic(
        model=ANTHROPIC_MODEL, base_url=server.anthropic_base_url, api_key="test", max_retries=0
    )
    messages = [ChatMessage(role="user", content="hi there")]

    response = llm.chat(messages)
    assert response.message.content == DEFAULT_TEXT
    assert response.raw["usage"].cache_read_input_tokens == 200
    *_, last = llm.stream_chat(messages)
    assert last.message.content == DEFAULT_TEXT
    # llama-index back-fills the delta's missing input_tokens from message_start.
    assert last.raw["usage"].input_tokens == 10
    assert last.raw["usage"].output_tokens == 7


def test_gemini_count_tokens_in_the_documented_shapes(server: WireServer) -> None:
    url = f"{server.gemini_base_url}/v1beta/models/gemini-2.5-flash:countTokens"
    # Bare `contents`: the words of every part.
    contents = [{"role": "user", "parts": [{"text": "one two"}, {"text": "three"}]}]
    status, raw = _post_raw(url, {"contents": contents})
    assert status == 200
    assert json.loads(raw) == {
        "totalTokens": 3,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 3}],
    }
    # A whole generateContentRequest: its system instruction counts too.
    request = {"model": "models/gemini-2.5-flash", "contents": contents}
    request["systemInstruction"] = {"parts": [{"text": "be brief"}]}
    status, raw = _post_raw(url, {"generateContentRequest": request})
    assert (status, json.loads(raw)["totalTokens"]) == (200, 5)
    # A scripted count, matched by the model named in the path.
    server.enqueue(Reply(usage={"totalTokens": 99}, match_model="gemini-2.5-flash"))
    assert json.loads(_post_raw(url, {"contents": contents})[1])["totalTokens"] == 99


def test_gemini_errors_use_googles_error_shape(server: WireServer) -> None:
    server.enqueue(Reply(status=429))
    url = f"{server.gemini_base_url}/v1beta/models/gemini-2.5-flash:countTokens"
    status, raw = _post_raw(url, {"contents": []})
    assert status == 429
    assert json.loads(raw) == {
        "error": {"code": 429, "message": "Scripted failure.", "status": "RESOURCE_EXHAUSTED"}
    }
    status, raw = _post_raw(f"{server.gemini_base_url}/v1beta/models/gemini-2.5-flash:nope", {})
    assert (status, json.loads(raw)["error"]["status"]) == (404, "NOT_FOUND")
