"""The Gemini emulator, proved against the official ``google-genai`` SDK and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from google import genai
from google.genai import errors, types

from llmrelay.testing.emulator import EmulatorServer

# google-genai subclasses aiohttp.ClientSession (its default transport when aiohttp is installed).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession:DeprecationWarning"
)
CONTENTS: Any = [{"role": "user", "parts": [{"text": "hello there world"}]}]
TOOLS = types.GenerateContentConfig(
    tools=[
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(name="get_weather"),
                types.FunctionDeclaration(name="get_time"),
            ]
        )
    ]
)


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer() as server:
        yield server


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(
    emu: EmulatorServer, request: pytest.FixtureRequest
) -> AsyncIterator[genai.client.AsyncClient]:
    """The SDK over each of its transports (their line readers differ)."""
    async with httpx.AsyncClient() as transport:
        options = types.HttpOptions(
            base_url=emu.base_url,
            httpx_async_client=transport if request.param == "httpx" else None,
        )
        sync_client = genai.Client(api_key="g-test", http_options=options)
        async with sync_client.aio as aio:
            yield aio
        sync_client.close()


async def _raw(emu: EmulatorServer, path: str, body: Any = None) -> tuple[int, bytes]:
    payload = {"contents": CONTENTS} if body is None else body
    async with (
        aiohttp.ClientSession() as http,
        http.post(emu.base_url + path, json=payload) as resp,
    ):
        return resp.status, await resp.read()


def _sse_payloads(data: bytes) -> list[Any]:
    text = data.decode().replace("\r\n", "\n")
    return [json.loads(event.removeprefix("data: ")) for event in text.split("\n\n") if event]


async def test_generate_content_text_and_usage(
    client: genai.client.AsyncClient, emu: EmulatorServer
) -> None:
    response = await client.models.generate_content(
        model="gemini-2.5-flash+chunks=4+reasoning=2+cached=3",
        contents=CONTENTS,
        config=types.GenerateContentConfig(system_instruction="be nice"),
    )
    assert response.text == "Echo: hello there world"
    assert response.candidates is not None
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content is not None
    assert candidate.content.parts is not None
    thought = candidate.content.parts[0]
    assert thought.thought is True
    assert thought.text == "Let me"
    assert thought.thought_signature
    usage = response.usage_metadata
    assert usage is not None
    # prompt = (4 + 2 system words) + (4 + 3 user words) = 13, 3 of them cached.
    assert usage.prompt_token_count == 13
    assert usage.cached_content_token_count == 3
    assert usage.candidates_token_count == 4
    assert usage.thoughts_token_count == 2
    assert usage.total_token_count == 13 + 4 + 2
    assert response.model_version == "gemini-2.5-flash+chunks=4+reasoning=2+cached=3"
    assert response.response_id
    (record,) = await emu.wait_for_requests(1)
    assert record.headers["x-goog-api-key"] == "g-test"


async def test_stream_chunks_and_cumulative_usage(client: genai.client.AsyncClient) -> None:
    stream = await client.models.generate_content_stream(
        model="gemini+chunks=5+reasoning=1", contents=CONTENTS
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + 5
    assert "".join(chunk.text or "" for chunk in chunks[1:]) == "Echo: hello there world lorem"
    reasons = [chunk.candidates[0].finish_reason for chunk in chunks if chunk.candidates]
    assert reasons == [None] * 5 + [types.FinishReason.STOP]
    counts = [
        chunk.usage_metadata.candidates_token_count or 0 for chunk in chunks if chunk.usage_metadata
    ]
    assert counts == [0, 1, 2, 3, 4, 5]
    last = chunks[-1].usage_metadata
    assert last is not None
    assert last.thoughts_token_count == 1
    assert last.total_token_count == 7 + 5 + 1
    assert len({chunk.response_id for chunk in chunks}) == 1


async def test_function_calls_without_ids(client: genai.client.AsyncClient) -> None:
    response = await client.models.generate_content(
        model="gemini+tools=3", contents=CONTENTS, config=TOOLS
    )
    calls = response.function_calls
    assert calls is not None
    assert [call.name for call in calls] == ["get_weather", "get_time", "get_weather"]
    assert [call.args for call in calls] == [
        {"query": "hello", "index": 0},
        {"query": "there", "index": 1},
        {"query": "world", "index": 2},
    ]
    assert all(call.id is None for call in calls)
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 3 * 3

    stream = await client.models.generate_content_stream(
        model="gemini+tools=2+reasoning=1", contents=CONTENTS, config=TOOLS
    )
    chunks = [chunk async for chunk in stream]
    streamed = [call for chunk in chunks for call in chunk.function_calls or ()]
    assert [call.name for call in streamed] == ["get_weather", "get_time"]
    first_call_part = chunks[1].candidates[0].content.parts[0]  # type: ignore[index,union-attr]
    assert first_call_part.thought_signature  # Gemini 3 needs it replayed with the call


@pytest.mark.parametrize(
    ("status", "error_class", "status_name"),
    [
        (400, errors.ClientError, "INVALID_ARGUMENT"),
        (403, errors.ClientError, "PERMISSION_DENIED"),
        (404, errors.ClientError, "NOT_FOUND"),
        (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, errors.ServerError, "INTERNAL"),
        (503, errors.ServerError, "UNAVAILABLE"),
    ],
)
async def test_status_raises_the_sdk_error_class(
    client: genai.client.AsyncClient,
    status: int,
    error_class: type[errors.APIError],
    status_name: str,
) -> None:
    with pytest.raises(error_class) as caught:
        await client.models.generate_content(model=f"gemini+status={status}", contents=CONTENTS)
    assert caught.value.code == status
    assert caught.value.status == status_name


@pytest.mark.parametrize(("model", "texts"), [("gemini+error_mid=2", 2), ("gemini+error_first", 0)])
async def test_in_stream_error(client: genai.client.AsyncClient, model: str, texts: int) -> None:
    received: list[str] = []

    async def consume() -> None:
        async for chunk in await client.models.generate_content_stream(
            model=model, contents=CONTENTS
        ):
            received.append(chunk.text or "")

    with pytest.raises(errors.ServerError) as caught:
        await consume()
    assert caught.value.code == 503
    assert len(received) == texts


async def test_model_path_may_contain_a_slash(
    client: genai.client.AsyncClient, emu: EmulatorServer
) -> None:
    response = await client.models.generate_content(
        model="openai/gpt-4o+chunks=2", contents=CONTENTS
    )
    assert response.text == "Echo: hello"
    (record,) = await emu.wait_for_requests(1)
    assert record.model == "openai/gpt-4o+chunks=2"
    assert response.model_version == "openai/gpt-4o+chunks=2"
    assert record.path.endswith("/models/openai/gpt-4o+chunks=2:generateContent")


async def test_count_tokens_and_models(client: genai.client.AsyncClient) -> None:
    counted = await client.models.count_tokens(model="gemini", contents=CONTENTS)
    assert counted.total_tokens == 7
    names = [model.name async for model in await client.models.list()]
    assert "models/gemini-2.5-flash" in names


async def test_utf8_bytewise_crlf_stream(client: genai.client.AsyncClient) -> None:
    texts = []
    for model in ("gemini+utf8", "gemini+utf8+bytewise", "gemini+utf8+crlf"):
        stream = await client.models.generate_content_stream(model=model, contents=CONTENTS)
        texts.append("".join([chunk.text or "" async for chunk in stream]))
    assert texts[0].startswith("Écho 日本 🚀:")
    assert texts[0] == texts[1] == texts[2]


async def test_key_in_query_and_missing_key(emu: EmulatorServer) -> None:
    status, body = await _raw(emu, "/v1beta/models/gemini+chunks=2:generateContent?key=k")
    assert status == 200
    assert json.loads(body)["candidates"][0]["content"]["parts"] == [{"text": "Echo: hello"}]
    status, body = await _raw(emu, "/v1beta/models/gemini:generateContent")
    assert status == 403
    assert json.loads(body)["error"]["status"] == "PERMISSION_DENIED"
    status, body = await _raw(emu, "/v1beta/models/gemini:generateContent?key=k", {})
    assert status == 400
    assert json.loads(body)["error"]["code"] == 400


async def test_sse_frames(emu: EmulatorServer) -> None:
    path = "/v1beta/models/gemini+chunks=2+crlf:streamGenerateContent?alt=sse&key=k"
    status, data = await _raw(emu, path)
    assert status == 200
    assert data.startswith(b"data: {")
    assert data.endswith(b"}\r\n\r\n")
    assert b"[DONE]" not in data
    payloads = _sse_payloads(data)
    assert ["finishReason" in p["candidates"][0] for p in payloads] == [False, True]
    assert all(next(iter(p)) == "candidates" for p in payloads)

    status, data = await _raw(
        emu, "/v1beta/models/gemini+error_mid=1:streamGenerateContent?alt=sse&key=k"
    )
    last = _sse_payloads(data)[-1]
    assert list(last) == ["error"]
    assert last["error"] == {
        "code": 503,
        "message": "The model is overloaded. Please try again later.",
        "status": "UNAVAILABLE",
    }


async def test_json_array_stream_pieces_do_not_align(emu: EmulatorServer) -> None:
    url = emu.base_url + "/v1beta/models/gemini+chunks=3+delay=20:streamGenerateContent?key=k"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"contents": CONTENTS}) as resp,
    ):
        assert resp.headers["content-type"].startswith("application/json")
        pieces = [piece async for piece in resp.content.iter_any()]
    elements = json.loads(b"".join(pieces))
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for e in elements]
    assert texts == ["Echo:", " hello", " there"]
    assert len(pieces) >= 3
    assert pieces[0].startswith(b'[{"candidates"')
    assert not any(piece.endswith(b"}") for piece in pieces[:-1])

    _, data = await _raw(
        emu, "/v1beta/models/gemini+error_mid=1+chunks=3:streamGenerateContent?key=k"
    )
    elements = json.loads(data)
    assert [next(iter(e)) for e in elements] == ["candidates", "error"]
    _, data = await _raw(emu, "/v1beta/models/gemini+error_first:streamGenerateContent?key=k")
    assert [list(e) for e in json.loads(data)] == [["error"]]


async def test_drop_mid_stream(emu: EmulatorServer) -> None:
    path = "/v1beta/models/gemini+drop=2+chunks=5:streamGenerateContent?alt=sse&key=k"
    with pytest.raises(aiohttp.ClientError):
        await _raw(emu, path)
    (record,) = await emu.wait_for_requests(1)
    assert record.aborted
    assert record.chunks_written == 2


async def test_no_usage_and_stop_mapping(client: genai.client.AsyncClient) -> None:
    response = await client.models.generate_content(
        model="gemini+no_usage+stop=length", contents=CONTENTS
    )
    assert response.usage_metadata is None
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
