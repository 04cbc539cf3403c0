"""The OpenAI emulator, proved against the official ``openai`` SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from llmrelay.testing.emulator import EmulatorServer

USER: Any = [{"role": "user", "content": "hello there world"}]
# 4 per message + 3 words.
USER_PROMPT_TOKENS = 7
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer() as server:
        yield server


@pytest.fixture
async def client(emu: EmulatorServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=emu.base_url + "/v1", api_key="sk-test", max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-test"}) as session:
        yield session


async def _stream_text(client: openai.AsyncOpenAI, model: str, **kwargs: Any) -> str:
    stream = await client.chat.completions.create(model=model, messages=USER, stream=True, **kwargs)
    parts = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def _read_lines(http: aiohttp.ClientSession, url: str, body: Any, lines: list[bytes]) -> None:
    """Append each body line to ``lines`` (so they survive the error that ends the read)."""
    async with http.post(url, json=body) as resp:
        assert resp.status == 200
        async for line in resp.content:
            lines.append(line)


async def test_create_echoes_the_last_user_message_with_consistent_usage(
    client: openai.AsyncOpenAI, emu: EmulatorServer
) -> None:
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
    ]
    completion = await client.chat.completions.create(model="emu+chunks=6", messages=messages)

    choice = completion.choices[0]
    assert choice.message.content == "Echo: hello there world lorem ipsum"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.object == "chat.completion"
    assert completion.model == "emu+chunks=6"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 * 4 + 2 + 2 + 2 + 3
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6
    (record,) = await emu.wait_for_requests(1)
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.json["model"] == "emu+chunks=6"
    assert record.completed
    assert record.status == 200


async def test_stream_without_include_usage_sends_no_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="emu+chunks=4", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(chunk.choices[0].delta.role is None for chunk in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hello there world"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1


async def test_stream_with_include_usage_ends_with_a_usage_chunk(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, emu: EmulatorServer
) -> None:
    stream = await client.chat.completions.create(
        model="emu+chunks=5+cached=3+reasoning=2",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.prompt_tokens == USER_PROMPT_TOKENS
    assert usage.completion_tokens == 5 + 2
    assert usage.total_tokens == USER_PROMPT_TOKENS + 7
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 2
    assert chunks[-2].choices[0].finish_reason == "stop"
    reasoning = [
        getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks if c.choices
    ]
    assert [r for r in reasoning if r] == ["Let", " me"]

    # On the wire, every other chunk carries `"usage": null`.
    body = json.dumps({"model": "emu+chunks=2", "messages": USER, "stream": True})
    body_with_usage = body[:-1] + ', "stream_options": {"include_usage": true}}'
    async with http.post(emu.base_url + "/v1/chat/completions", data=body_with_usage) as resp:
        events = [line for line in (await resp.text()).split("\n\n") if line]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert events[-1] == "data: [DONE]"
    assert all("usage" in p and p["usage"] is None for p in payloads[:-1])
    assert payloads[-1]["choices"] == []


async def test_no_usage_suppresses_usage_even_when_asked(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="emu+no_usage", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    completion = await client.chat.completions.create(model="emu+no_usage", messages=USER)
    assert completion.usage is None


async def test_parallel_tool_calls_non_stream(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="emu+tools=2", messages=USER, tools=TOOLS
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    calls = [call for call in message.tool_calls if call.type == "function"]
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert [json.loads(call.function.arguments) for call in calls] == [
        {"query": "hello", "index": 0},
        {"query": "there", "index": 1},
    ]
    assert len({call.id for call in calls}) == 2
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2 * 3


async def test_stream_helper_accumulates_parallel_tool_calls(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="emu+tools=3", messages=USER, tools=TOOLS
    ) as stream:
        async for _event in stream:
            pass
        final = await stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.tool_calls is not None
    calls = choice.message.tool_calls
    assert [call.function.name for call in calls] == ["get_weather", "get_time", "get_weather"]
    assert [call.id for call in calls] == [c.id for c in calls if c.id.startswith("call_")]
    assert len({call.id for call in calls}) == 3
    assert [json.loads(call.function.arguments)["index"] for call in calls] == [0, 1, 2]


async def test_stream_helper_final_text_and_tool_fragments_on_the_wire(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, emu: EmulatorServer
) -> None:
    async with client.chat.completions.stream(model="emu+chunks=3", messages=USER) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Echo: hello there"
    assert final.choices[0].message.role == "assistant"

    body = {"model": "emu+tools=1", "messages": USER, "stream": True}
    async with http.post(emu.base_url + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
    deltas = [
        json.loads(event.removeprefix("data: "))["choices"][0]["delta"]
        for event in text.split("\n\n")
        if event.startswith("data: {")
    ]
    fragments = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert fragments[0].keys() == {"index", "id", "type", "function"}
    assert fragments[0]["function"] == {"name": "lookup", "arguments": ""}
    assert all(f.keys() == {"index", "function"} for f in fragments[1:])
    assert all(f["function"].keys() == {"arguments"} for f in fragments[1:])
    assert len(fragments) == 1 + 3
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": None}
    assert deltas[-1] == {}


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_status_raises_the_sdk_error_class(
    client: openai.AsyncOpenAI, status: int, error_class: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_class) as caught:
        await client.chat.completions.create(model=f"emu+status={status}", messages=USER)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    assert body.keys() == {"message", "type", "param", "code"}
    assert caught.value.request_id is not None


async def test_rate_limit_carries_retry_after(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="emu+status=429+retry_after=7", messages=USER, stream=True
        )
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("model", ["emu+error_mid=2", "emu+error_first"])
async def test_in_stream_error_raises_api_error(client: openai.AsyncOpenAI, model: str) -> None:
    stream = await client.chat.completions.create(model=model, messages=USER, stream=True)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.type == "server_error"
    assert "".join(received) == ("Echo: hello" if model.endswith("=2") else "")


async def test_non_stream_error_modes_answer_500(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="emu+error_first", messages=USER)


async def test_stop_reason_option(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="emu+stop=length", messages=USER)
    assert completion.choices[0].finish_reason == "length"


async def test_missing_key_and_missing_messages(emu: EmulatorServer) -> None:
    url = emu.base_url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"model": "emu", "messages": USER}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        headers = {"Authorization": "Bearer k"}
        async with session.post(url, json={"model": "emu"}, headers=headers) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["param"] == "messages"
            assert error.keys() == {"message", "type", "param", "code"}
    assert [r.status for r in await emu.wait_for_requests(2)] == [401, 400]


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert "gpt-4o-mini" in models


async def test_utf8_bytewise_and_crlf_decode_identically(
    client: openai.AsyncOpenAI, emu: EmulatorServer
) -> None:
    plain = await _stream_text(client, "emu+utf8+chunks=6")
    assert plain.startswith("Écho 日本 🚀:")
    assert await _stream_text(client, "emu+utf8+chunks=6+bytewise") == plain
    assert await _stream_text(client, "emu+utf8+chunks=6+crlf") == plain
    records = await emu.wait_for_requests(3)
    # Same frames; only the echoed model name (`+bytewise`, 9 bytes per chunk) differs.
    assert records[1].events_written == records[0].events_written
    assert records[1].bytes_written == records[0].bytes_written + 9 * records[0].events_written - 9


async def test_bytewise_splits_the_body_into_single_bytes(
    http: aiohttp.ClientSession, emu: EmulatorServer
) -> None:
    body = {"model": "emu+utf8+bytewise+chunks=3", "messages": USER, "stream": True}
    async with http.post(emu.base_url + "/v1/chat/completions", json=body) as resp:
        pieces = [piece async for piece in resp.content.iter_any()]
    data = b"".join(pieces)
    assert data.endswith(b"data: [DONE]\n\n")
    assert len(pieces) > len(data) // 4


async def test_crlf_line_endings(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    body = {"model": "emu+crlf+chunks=2", "messages": USER, "stream": True}
    async with http.post(emu.base_url + "/v1/chat/completions", json=body) as resp:
        data = await resp.read()
    assert data.endswith(b"data: [DONE]\r\n\r\n")
    assert data.count(b"\n") == data.count(b"\r\n")


async def test_comments_mode_still_parses_in_the_sdk(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, emu: EmulatorServer
) -> None:
    assert await _stream_text(client, "emu+comments+chunks=6") == (
        "Echo: hello there world lorem ipsum"
    )
    body = {"model": "emu+comments+chunks=6", "messages": USER, "stream": True}
    async with http.post(emu.base_url + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
    lines = text.split("\n")
    assert text.startswith(": OPENROUTER PROCESSING\n\n")
    for prefix in (":", "event: ", "id: ", "retry: "):
        assert any(line.startswith(prefix) for line in lines), prefix


async def test_malformed_data_line(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    body = {"model": "emu+malformed=1+chunks=3", "messages": USER, "stream": True}
    async with http.post(emu.base_url + "/v1/chat/completions", json=body) as resp:
        events = [e for e in (await resp.text()).split("\n\n") if e]
    bad = []
    for event in events:
        data = event.removeprefix("data: ")
        if data != "[DONE]":
            try:
                json.loads(data)
            except json.JSONDecodeError:
                bad.append(event)
    assert len(bad) == 1
    assert events.index(bad[0]) == 2  # after the role chunk and one content chunk
    assert events[-1] == "data: [DONE]"


async def test_drop_resets_the_connection_after_n_chunks(
    http: aiohttp.ClientSession, emu: EmulatorServer
) -> None:
    body = {"model": "emu+drop=3+chunks=10", "messages": USER, "stream": True}
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientError):
        await _read_lines(http, emu.base_url + "/v1/chat/completions", body, received)
    contents = [line for line in received if b'"content":"' in line]
    assert len(contents) == 1 + 3  # the role chunk, then three tokens
    assert not any(b"[DONE]" in line for line in received)
    (record,) = await emu.wait_for_requests(1)
    assert record.aborted
    assert not record.completed
    assert record.chunks_written == 3


async def test_drop_non_stream_sends_a_partial_body(
    http: aiohttp.ClientSession, emu: EmulatorServer
) -> None:
    body = {"model": "emu+drop=0", "messages": USER}
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientError):
        await _read_lines(http, emu.base_url + "/v1/chat/completions", body, received)
    assert received == []
    (record,) = await emu.wait_for_requests(1)
    assert record.aborted
    assert record.bytes_written > 0


async def test_html_bad_gateway(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="emu+html", messages=USER)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["content-type"].startswith("text/html")
    assert "<html>" in caught.value.response.text


@pytest.mark.parametrize("model", ["emu+hang", "emu+first=5000", "emu+delay=5000+chunks=3"])
async def test_client_disconnect_is_recorded_promptly(
    http: aiohttp.ClientSession, emu: EmulatorServer, model: str
) -> None:
    body = {"model": model, "messages": USER, "stream": True}

    async def call() -> None:
        async with http.post(emu.base_url + "/v1/chat/completions", json=body) as resp:
            async for _line in resp.content:
                pass

    task = asyncio.create_task(call())
    (record,) = await emu.wait_for_requests(1, finished=False)
    await asyncio.sleep(0.1)
    assert not record.finished
    task.cancel()
    closed_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    await emu.wait_for_requests(1, timeout=1.0)
    assert record.client_disconnected
    assert not record.completed
    assert record.disconnected_at is not None
    assert record.disconnected_at - closed_at < 0.1


async def test_first_and_delay_shape_the_timing(
    client: openai.AsyncOpenAI, emu: EmulatorServer
) -> None:
    started = time.monotonic()
    assert await _stream_text(client, "emu+first=150+delay=30+chunks=4")
    elapsed = time.monotonic() - started
    assert 0.15 + 3 * 0.03 <= elapsed < 1.0
    (record,) = await emu.wait_for_requests(1)
    assert record.first_byte_at is not None
    assert record.first_byte_at - record.started_at >= 0.15
