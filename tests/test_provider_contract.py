"""The provider contract, run over every provider type: adding a provider means adding a row.

Each row drives a real provider (built by the registry) against the emulators, through the
provider's own wire format; the tests assert on the canonical output and on what the upstream
received. Azure's row goes through :class:`AzureFront` (see test_provider_azure.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from llmrelay.config import ModelConfig, Settings
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from llmrelay.core.types import JSONObject, Usage
from llmrelay.core.validate import validate_chat_request
from llmrelay.providers.base import Provider, UpstreamRequest
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.registry import build_providers
from llmrelay.testing.emulator import EmulatorServer
from test_provider_azure import AzureFront

PNG = "data:image/png;base64,iVBORw0KGgo="
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time", "get_news")
]
TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 2}


@dataclass(slots=True)
class Upstreams:
    emu: EmulatorServer
    azure: AzureFront


Seen = tuple[dict[str, str], JSONObject]
"""What one upstream request carried: its headers (lower-case names) and its JSON body."""


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    """The provider type."""
    base: str
    """The emulator model name's base (the options follow it)."""
    config: Callable[[Upstreams], JSONObject]
    seen: Callable[[Upstreams], list[Seen]]
    auth: tuple[str, str]
    system: Callable[[JSONObject], Any]
    """Where the upstream found the system prompt."""
    image: Callable[[JSONObject], Any]
    """Where the upstream found the first user message's image."""
    overloaded: tuple[type[UpstreamError], int]
    """What the provider's own 5xx (``error_first`` without streaming) becomes."""
    mid_stream: tuple[type[UpstreamError], str]
    """What its in-stream error event becomes, and a word of the provider's message."""

    def __str__(self) -> str:
        return self.kind


def _emulator_seen(up: Upstreams) -> list[Seen]:
    return [(r.headers, r.json) for r in up.emu.requests]


def _openai_image(body: JSONObject) -> Any:
    return body["messages"][0]["content"][0]


ROWS = [
    Row(
        kind="openai",
        base="gpt",
        config=lambda up: {"type": "openai", "base_url": up.emu.base_url + "/v1"},
        seen=_emulator_seen,
        auth=("authorization", "Bearer test"),
        system=lambda body: body["messages"][0],
        image=_openai_image,
        overloaded=(UpstreamStatusError, 502),
        mid_stream=(UpstreamStatusError, "server_error"),
    ),
    Row(
        kind="azure",
        base="gpt",
        config=lambda up: {
            "type": "azure",
            "base_url": up.azure.base_url,
            "api_version": "2024-10-21",
        },
        seen=lambda up: [(s["headers"], s["json"]) for s in up.azure.seen],
        auth=("api-key", "test"),
        system=lambda body: body["messages"][0],
        image=_openai_image,
        overloaded=(UpstreamStatusError, 502),
        mid_stream=(UpstreamStatusError, "server_error"),
    ),
    Row(
        kind="anthropic",
        base="claude",
        config=lambda up: {"type": "anthropic", "base_url": up.emu.base_url},
        seen=_emulator_seen,
        auth=("x-api-key", "test"),
        system=lambda body: body["system"],
        image=lambda body: body["messages"][0]["content"][0],
        overloaded=(UpstreamUnavailable, 503),
        mid_stream=(UpstreamUnavailable, "overloaded_error"),
    ),
    Row(
        kind="gemini",
        base="gemini",
        config=lambda up: {"type": "gemini", "base_url": up.emu.base_url},
        seen=_emulator_seen,
        auth=("x-goog-api-key", "test"),
        system=lambda body: body["systemInstruction"],
        image=lambda body: body["contents"][0]["parts"][0],
        overloaded=(UpstreamUnavailable, 503),
        mid_stream=(UpstreamUnavailable, "UNAVAILABLE"),
    ),
]
SYSTEM_SEEN = {
    "openai": {"role": "system", "content": "be brief"},
    "azure": {"role": "system", "content": "be brief"},
    "anthropic": [{"type": "text", "text": "be brief"}],
    "gemini": {"parts": [{"text": "be brief"}]},
}
IMAGE_SEEN = {
    "openai": {"type": "image_url", "image_url": {"url": PNG}},
    "azure": {"type": "image_url", "image_url": {"url": PNG}},
    "anthropic": {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    },
    "gemini": {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
}


@pytest.fixture(params=ROWS, ids=str)
def row(request: pytest.FixtureRequest) -> Row:
    found: Row = request.param
    return found


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async with EmulatorServer() as emu, AzureFront(emu.base_url) as azure:
        yield Upstreams(emu, azure)


@pytest.fixture
async def provider(row: Row, upstreams: Upstreams) -> AsyncIterator[Provider]:
    client = UpstreamClient()
    client.start()
    config = {**row.config(upstreams), "api_key": "test", "timeouts": TIMEOUTS}
    settings = Settings.model_validate({"providers": {"p": config}})
    built = build_providers(settings, client)["p"]
    yield built
    await built.close()
    await client.close()


def call(
    row: Row, options: str, messages: list[JSONObject] | None = None, **fields: Any
) -> UpstreamRequest:
    messages = messages or [{"role": "user", "content": "hello there world"}]
    request = validate_chat_request({"model": "p/m", "messages": messages, **fields})
    upstream = row.base + options
    entry = ModelEntry.from_config(ModelConfig(id="p/m", provider="p", upstream=upstream))
    return UpstreamRequest(request, entry, "req-contract")


async def collect(stream: AsyncIterator[JSONObject], into: list[JSONObject]) -> None:
    async for chunk in stream:
        into.append(chunk)


async def streamed(provider: Provider, request: UpstreamRequest) -> list[JSONObject]:
    chunks: list[JSONObject] = []
    await collect(provider.stream(request), chunks)
    return chunks


def text_of(chunks: list[JSONObject], field: str = "content") -> str:
    return "".join(
        choice["delta"].get(field) or "" for chunk in chunks for choice in chunk["choices"]
    )


def finish_reasons(chunks: list[JSONObject]) -> list[str]:
    return [
        choice["finish_reason"]
        for chunk in chunks
        for choice in chunk["choices"]
        if choice.get("finish_reason")
    ]


def streamed_calls(chunks: list[JSONObject]) -> dict[int, JSONObject]:
    """Tool-call fragments merged by index, as an OpenAI client's accumulator does."""
    calls: dict[int, JSONObject] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls") or ():
                merged = calls.setdefault(fragment["index"], {"arguments": ""})
                for key in ("id", "type"):
                    if key in fragment:
                        assert key not in merged, "a call's id/type must come once"
                        merged[key] = fragment[key]
                function = fragment.get("function") or {}
                if "name" in function:
                    merged["name"] = function["name"]
                merged["arguments"] += function.get("arguments") or ""
    return calls


# -- answers ------------------------------------------------------------------------------------


async def test_text(row: Row, provider: Provider, upstreams: Upstreams) -> None:
    completion = await provider.complete(call(row, "+chunks=4"))
    body = completion.body
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Echo: hello there world"
    assert choice["finish_reason"] == "stop"
    assert completion.usage == Usage(prompt_tokens=7, completion_tokens=4)
    assert Usage.from_openai(body["usage"]) == completion.usage
    headers, _ = row.seen(upstreams)[0]
    name, value = row.auth
    assert headers[name] == value


async def test_stream_matches_the_whole_answer(row: Row, provider: Provider) -> None:
    request = call(row, "+chunks=4+cached=3+reasoning=2")
    completion = await provider.complete(request)
    chunks = await streamed(provider, request)
    message = completion.body["choices"][0]["message"]
    first = next(chunk for chunk in chunks if chunk["choices"])
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert text_of(chunks) == message["content"] == "Echo: hello there world"
    assert text_of(chunks, "reasoning_content") == message["reasoning_content"] == "Let me"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert Usage.from_openai(chunks[-1]["usage"]) == completion.usage
    assert completion.usage == Usage(
        prompt_tokens=7, completion_tokens=6, cached_tokens=3, reasoning_tokens=2
    )
    assert len({chunk["id"] for chunk in chunks}) == 1


async def test_split_bytes_and_multibyte_text(row: Row, provider: Provider) -> None:
    request = call(row, "+chunks=5+utf8+bytewise")
    completion = await provider.complete(request)
    chunks = await streamed(provider, request)
    text = completion.body["choices"][0]["message"]["content"]
    assert "日本" in text
    assert text_of(chunks) == text
    assert Usage.from_openai(chunks[-1]["usage"]) == completion.usage


async def test_system_prompt(row: Row, provider: Provider, upstreams: Upstreams) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there world"},
    ]
    await provider.complete(call(row, "+chunks=2", messages))
    _, body = row.seen(upstreams)[0]
    assert row.system(body) == SYSTEM_SEEN[row.kind]


async def test_vision_data_url(row: Row, provider: Provider, upstreams: Upstreams) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "text", "text": "hello there"},
    ]
    completion = await provider.complete(
        call(row, "+chunks=3", [{"role": "user", "content": content}])
    )
    assert completion.body["choices"][0]["message"]["content"] == "Echo: hello there"
    _, body = row.seen(upstreams)[0]
    assert row.image(body) == IMAGE_SEEN[row.kind]


# -- tools --------------------------------------------------------------------------------------


async def test_one_tool_call(row: Row, provider: Provider) -> None:
    completion = await provider.complete(call(row, "+tools=1", tools=TOOLS[:1]))
    (choice,) = completion.body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["type"] == "function"
    assert tool_call["id"]
    assert tool_call["function"]["name"] == "get_weather"
    assert orjson.loads(tool_call["function"]["arguments"]) == {"query": "hello", "index": 0}


async def test_parallel_tool_calls_stream_as_distinct_calls(row: Row, provider: Provider) -> None:
    request = call(row, "+tools=3", tools=TOOLS)
    completion = await provider.complete(request)
    chunks = await streamed(provider, request)
    whole = completion.body["choices"][0]["message"]["tool_calls"]
    calls = streamed_calls(chunks)
    assert sorted(calls) == [0, 1, 2]
    assert len({c["id"] for c in calls.values()}) == 3
    assert [calls[i]["name"] for i in range(3)] == ["get_weather", "get_time", "get_news"]
    assert [c["function"]["name"] for c in whole] == ["get_weather", "get_time", "get_news"]
    for index, tool_call in enumerate(whole):
        expected = {"query": ["hello", "there", "world"][index], "index": index}
        assert orjson.loads(calls[index]["arguments"]) == expected
        assert orjson.loads(tool_call["function"]["arguments"]) == expected
    assert finish_reasons(chunks) == ["tool_calls"]
    assert Usage.from_openai(chunks[-1]["usage"]) == completion.usage


@pytest.mark.parametrize(
    ("stop", "expected"), [("length", "length"), ("content_filter", "content_filter")]
)
async def test_stop_reasons(row: Row, provider: Provider, stop: str, expected: str) -> None:
    request = call(row, f"+chunks=2+stop={stop}")
    completion = await provider.complete(request)
    assert completion.body["choices"][0]["finish_reason"] == expected
    assert finish_reasons(await streamed(provider, request)) == [expected]


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "status", "retryable"),
    [
        ("+status=429+retry_after=7", UpstreamRateLimited, 429, True),
        ("+status=400", UpstreamStatusError, 400, False),
        ("+status=500", UpstreamStatusError, 502, True),
        ("+status=503", UpstreamUnavailable, 503, True),
        ("+html", UpstreamProtocolError, 502, True),
    ],
)
async def test_upstream_statuses_keep_their_meaning(
    row: Row,
    provider: Provider,
    options: str,
    error: type[UpstreamError],
    status: int,
    retryable: bool,
) -> None:
    request = call(row, options)
    with pytest.raises(error) as whole:
        await provider.complete(request)
    with pytest.raises(error) as stream:
        await anext(provider.stream(request))
    for caught in (whole, stream):
        assert caught.value.http_status == status
        assert caught.value.is_retryable is retryable
        assert caught.value.provider == "p"
    if status == 429:
        assert whole.value.retry_after == stream.value.retry_after == 7


async def test_the_providers_own_overloaded_answer(row: Row, provider: Provider) -> None:
    error, status = row.overloaded
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(call(row, "+error_first"))
    assert type(caught.value) is error
    assert caught.value.http_status == status


async def test_an_error_as_the_first_event_raises_before_any_chunk(
    row: Row, provider: Provider
) -> None:
    error, word = row.mid_stream
    stream = provider.stream(call(row, "+error_first"))
    with pytest.raises(UpstreamError) as caught:
        await anext(stream)
    assert type(caught.value) is error
    assert word in caught.value.message


async def test_mid_stream_error(row: Row, provider: Provider) -> None:
    error, word = row.mid_stream
    chunks: list[JSONObject] = []
    with pytest.raises(UpstreamError) as caught:
        await collect(provider.stream(call(row, "+chunks=6+error_mid=2")), chunks)
    assert type(caught.value) is error
    assert text_of(chunks) == "Echo: hello"
    assert word in caught.value.message


async def test_a_cut_connection_is_a_protocol_error(row: Row, provider: Provider) -> None:
    chunks: list[JSONObject] = []
    with pytest.raises(UpstreamProtocolError):
        await collect(provider.stream(call(row, "+chunks=6+drop=2")), chunks)
    assert text_of(chunks) == "Echo: hello"


async def test_aclose_drops_the_upstream_connection(
    row: Row, provider: Provider, upstreams: Upstreams
) -> None:
    stream = provider.stream(call(row, "+chunks=200+delay=20"))
    assert isinstance(stream, AsyncGenerator)
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    (seen,) = await upstreams.emu.wait_for_requests(1)
    assert seen.client_disconnected
    assert not seen.completed
