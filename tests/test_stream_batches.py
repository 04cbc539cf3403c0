"""Provider streams come in batches, one per upstream read: the events of one read are relayed in
one write to the client, and a failing event still lets the chunks before it through first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from llmrelay.config import ModelConfig, ProviderConfig
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import UpstreamStatusError
from llmrelay.core.types import JSONObject
from llmrelay.core.validate import validate_chat_request
from llmrelay.providers.base import UpstreamRequest
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.openai import OpenAIProvider


def _chunk(text: str) -> JSONObject:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def _event(payload: Any) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else orjson.dumps(payload)) + b"\n\n"


ERROR = {"error": {"message": "overloaded", "type": "server_error", "code": None}}


async def _upstream(reads: list[bytes]) -> AsyncIterator[str]:
    """A server that writes each of ``reads`` separately, with a pause between them."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for data in reads:
            await response.write(data)
            await asyncio.sleep(0.05)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def _batches(reads: list[bytes]) -> tuple[list[list[str]], BaseException | None]:
    client = UpstreamClient()
    client.start()
    texts: list[list[str]] = []
    failure: BaseException | None = None
    try:
        async for base_url in _upstream(reads):
            config = ProviderConfig(type="openai", base_url=base_url)
            provider = OpenAIProvider("up", config, client)
            model = ModelEntry.from_config(ModelConfig(id="up/m", provider="up", upstream="m"))
            request = validate_chat_request(
                {"model": "up/m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            )
            try:
                async for batch in provider.stream_batches(UpstreamRequest(request, model, "r1")):
                    texts.append([c["choices"][0]["delta"]["content"] for c in batch])
            except UpstreamStatusError as exc:
                failure = exc
    finally:
        await client.close()
    return texts, failure


async def test_the_events_of_one_read_are_one_batch_after_the_first_chunk_alone() -> None:
    reads = [
        _event(_chunk("a")) + _event(_chunk("b")) + _event(_chunk("c")),
        _event(_chunk("d")) + _event(_chunk("e")),
        _event(b"[DONE]"),
    ]
    texts, failure = await _batches(reads)
    assert failure is None
    # The stream's first chunk comes alone, ahead of the parsing of the rest of its read.
    assert texts == [["a"], ["b", "c"], ["d", "e"]]


async def test_the_first_chunk_is_alone_even_after_events_that_carry_none() -> None:
    empty = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    reads = [
        b": comment\n\n"
        + _event({**empty, "choices": []})
        + _event(_chunk("a"))
        + _event(_chunk("b")),
        _event(b"[DONE]"),
    ]
    texts, failure = await _batches(reads)
    assert failure is None
    assert texts == [["a"], ["b"]]


async def test_the_chunks_before_a_failing_event_of_the_same_read_go_out_first() -> None:
    reads = [_event(_chunk("a")) + _event(_chunk("b")) + _event(_chunk("c")) + _event(ERROR)]
    texts, failure = await _batches(reads)
    assert texts == [["a"], ["b", "c"]]
    assert isinstance(failure, UpstreamStatusError)
    assert "overloaded" in failure.message


@pytest.mark.parametrize("split", [1, 7, 30])
async def test_an_event_split_across_reads_is_whole_in_the_later_batch(split: int) -> None:
    whole = _event(_chunk("a")) + _event(_chunk("b"))
    reads = [whole[:split], whole[split:], _event(b"[DONE]")]
    texts, failure = await _batches(reads)
    assert failure is None
    assert [t for batch in texts for t in batch] == ["a", "b"]
