"""The Anthropic emulator, proved against the official ``anthropic`` SDK and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest

from llmrelay.testing.emulator import EmulatorServer

USER: Any = [{"role": "user", "content": "hello there world"}]
TOOLS: Any = [
    {"name": "get_weather", "input_schema": {"type": "object"}},
    {"name": "get_time", "input_schema": {"type": "object"}},
]
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer() as server:
        yield server


@pytest.fixture
async def client(emu: EmulatorServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=emu.base_url, api_key="sk-ant-test", max_retries=0
    ) as sdk:
        yield sdk


async def _events(emu: EmulatorServer, model: str, **extra: Any) -> list[tuple[str, Any]]:
    """The (event name, parsed data) pairs of a raw stream."""
    body = {"model": model, "max_tokens": 100, "messages": USER, "stream": True, **extra}
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.post(emu.base_url + "/v1/messages", json=body) as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    events = []
    for block in text.split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            events.append((name_line.removeprefix("event: "), json.loads(data_line[6:])))
    return events


async def test_create_with_system_thinking_and_cache(
    client: anthropic.AsyncAnthropic, emu: EmulatorServer
) -> None:
    message = await client.messages.create(
        model="claude+chunks=4+reasoning=2+cached=3",
        max_tokens=100,
        system="be nice",
        messages=USER,
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Let me"
    assert thinking.signature
    assert text.type == "text"
    assert text.text == "Echo: hello there world"
    assert message.stop_reason == "end_turn"
    assert message.model == "claude+chunks=4+reasoning=2+cached=3"
    # prompt = (4 + 2 system words) + (4 + 3 user words) = 13, of which 3 cached.
    assert message.usage.input_tokens == 13 - 3
    assert message.usage.cache_read_input_tokens == 3
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.output_tokens == 4 + 2
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == 2
    (record,) = await emu.wait_for_requests(1)
    # Depending on its version the SDK sends `x-api-key: K` or `Authorization: Bearer K`.
    key = record.headers.get("x-api-key") or record.headers["authorization"].removeprefix("Bearer ")
    assert key == "sk-ant-test"
    assert record.headers["anthropic-version"]


async def test_stream_final_message_text(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude+chunks=6", max_tokens=100, messages=USER
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "Echo: hello there world lorem ipsum"
    assert len(texts) == 6
    assert final.content[0].type == "text"
    assert final.content[0].text == "Echo: hello there world lorem ipsum"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 7
    assert final.usage.output_tokens == 6


async def test_stream_final_message_thinking_and_parallel_tools(
    client: anthropic.AsyncAnthropic,
) -> None:
    async with client.messages.stream(
        model="claude+tools=3+reasoning", max_tokens=100, messages=USER, tools=TOOLS
    ) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking"] + ["tool_use"] * 3
    thinking = final.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "Let me think about"
    assert thinking.signature
    calls = [block for block in final.content if block.type == "tool_use"]
    assert [call.name for call in calls] == ["get_weather", "get_time", "get_weather"]
    assert [call.input for call in calls] == [
        {"query": "hello", "index": 0},
        {"query": "there", "index": 1},
        {"query": "world", "index": 2},
    ]
    assert len({call.id for call in calls}) == 3
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 4 + 3 * 3


async def test_raw_event_sequence(emu: EmulatorServer) -> None:
    events = await _events(emu, "claude+chunks=2+tools=1+reasoning=1+cached=2")
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 7 - 2
    assert start["usage"]["cache_read_input_tokens"] == 2
    assert [d["index"] for n, d in events if n.startswith("content_block")] == [0] * 4 + [1] * 6
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert [d["type"] for d in deltas[:2]] == ["thinking_delta", "signature_delta"]
    assert deltas[2] == {"type": "input_json_delta", "partial_json": ""}
    arguments = "".join(d["partial_json"] for d in deltas[2:])
    assert json.loads(arguments) == {"query": "hello", "index": 0}
    assert events[6][1]["content_block"]["input"] == {}
    usage = events[-2][1]["usage"]
    assert usage["output_tokens"] == 1 + 3
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_count_tokens_matches_usage(client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(model="claude", system="be nice", messages=USER)
    message = await client.messages.create(
        model="claude", max_tokens=10, system="be nice", messages=USER
    )
    assert counted.input_tokens == 13
    assert counted.input_tokens == message.usage.input_tokens


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.RequestTooLargeError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_status_raises_the_sdk_error_class(
    client: anthropic.AsyncAnthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(error_class) as caught:
        await client.messages.create(
            model=f"claude+status={status}+retry_after=3", max_tokens=10, messages=USER
        )
    assert caught.value.status_code == status
    assert caught.value.type == error_type
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.request_id is not None


async def test_in_stream_error_event(client: anthropic.AsyncAnthropic) -> None:
    texts: list[str] = []

    async def consume() -> None:
        async with client.messages.stream(
            model="claude+error_mid=2", max_tokens=100, messages=USER
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)

    with pytest.raises(anthropic.APIStatusError) as caught:
        await consume()
    assert caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"
    assert texts == ["Echo:", " hello"]


async def test_error_first_and_non_stream_error(emu: EmulatorServer) -> None:
    events = await _events(emu, "claude+error_first")
    assert events == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    ]
    body = {"model": "claude+error_mid=1", "max_tokens": 10, "messages": USER}
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.post(emu.base_url + "/v1/messages", json=body) as resp,
    ):
        assert resp.status == 529
        assert (await resp.json())["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({"anthropic-version": "2023-06-01"}, {}, 401, "x-api-key"),
        ({"x-api-key": "k"}, {}, 400, "anthropic-version"),
        (HEADERS, {"model": "claude", "messages": USER}, 400, "max_tokens"),
        (HEADERS, {"model": "claude", "max_tokens": 5}, 400, "messages"),
    ],
)
async def test_request_checks(
    emu: EmulatorServer, headers: dict[str, str], body: Any, status: int, message: str
) -> None:
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(emu.base_url + "/v1/messages", json=body) as resp,
    ):
        assert resp.status == status
        error = await resp.json()
    assert error["type"] == "error"
    assert message in error["error"]["message"]


async def test_stop_option_maps_to_anthropic_reasons(client: anthropic.AsyncAnthropic) -> None:
    length = await client.messages.create(model="claude+stop=length", max_tokens=5, messages=USER)
    native = await client.messages.create(
        model="claude+stop=pause_turn", max_tokens=5, messages=USER
    )
    assert length.stop_reason == "max_tokens"
    assert native.stop_reason == "pause_turn"


async def test_utf8_bytewise_crlf_stream(client: anthropic.AsyncAnthropic) -> None:
    finals = []
    for model in ("claude+utf8", "claude+utf8+bytewise", "claude+utf8+crlf"):
        async with client.messages.stream(model=model, max_tokens=100, messages=USER) as stream:
            finals.append(await stream.get_final_message())
    texts = [final.content[0].text for final in finals if final.content[0].type == "text"]
    assert len(texts) == 3
    assert texts[0].startswith("Écho 日本 🚀:")
    assert texts[0] == texts[1] == texts[2]


async def test_models_list_in_anthropic_shape(client: anthropic.AsyncAnthropic) -> None:
    models = [model.id async for model in client.models.list()]
    assert "claude-sonnet-4-5" in models


async def test_drop_and_no_usage(emu: EmulatorServer) -> None:
    body = {"model": "claude+drop=1", "max_tokens": 10, "messages": USER, "stream": True}
    lines: list[bytes] = []

    async def read() -> None:
        async with (
            aiohttp.ClientSession(headers=HEADERS) as http,
            http.post(emu.base_url + "/v1/messages", json=body) as resp,
        ):
            async for line in resp.content:
                lines.append(line)

    with pytest.raises(aiohttp.ClientError):
        await read()
    assert sum(b"text_delta" in line for line in lines) == 1
    assert not any(b"message_stop" in line for line in lines)

    events = await _events(emu, "claude+no_usage")
    assert all("usage" not in data.get("message", data) for _, data in events)
