"""Reading an upstream answer, for providers that translate: JSON bodies and SSE events.

The bytes → JSON step is the same for every provider; what the JSON means is each provider's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmrelay.core.errors import UpstreamError, UpstreamProtocolError, UpstreamStatusError
from llmrelay.core.sse import SSEDecoder, SSEEvent
from llmrelay.providers.http import UpstreamResponse
from llmrelay.providers.openai import parse_retry_after


async def read_json(response: UpstreamResponse, provider: str) -> Any:
    """The whole body of a 200 answer, parsed."""
    raw = await response.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"provider {provider!r} answered 200 with a body that is not JSON", provider=provider
        ) from None


async def read_error(response: UpstreamResponse) -> tuple[Any, float | None]:
    """An error answer's parsed body (None when it is not JSON) and its Retry-After in seconds."""
    raw = await response.read()
    try:
        payload = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, list) and payload:
        payload = payload[0]  # Google's non-SSE streams wrap the error in an array
    return payload, parse_retry_after(response.headers)


async def sse_events(response: UpstreamResponse) -> AsyncIterator[SSEEvent]:
    """Every SSE event of the body, including one left pending when the body ends."""
    decoder = SSEDecoder()
    async for raw in response.iter_chunks():
        for event in decoder.feed(raw):
            yield event
    for event in decoder.close():
        yield event


async def sse_batches(response: UpstreamResponse) -> AsyncIterator[list[SSEEvent]]:
    """The SSE events of the body, one non-empty list per read (and the one left pending)."""
    decoder = SSEDecoder()
    async for raw in response.iter_chunks():
        events = decoder.feed(raw)
        if events:
            yield events
    events = decoder.close()
    if events:
        yield events


def event_json(data: bytes, provider: str) -> dict[str, Any]:
    """One event's ``data`` as a JSON object."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"provider {provider!r} sent a stream event that is not JSON", provider=provider
        ) from None
    if not isinstance(parsed, dict):
        raise UpstreamProtocolError(
            f"provider {provider!r} sent a stream event that is not an object", provider=provider
        )
    return parsed


def unreadable_error(
    status: int, content_type: str | None, provider: str, retry_after: float | None
) -> UpstreamError:
    """An answer without the provider's error object: a proxy's HTML page, an empty body...

    A 5xx like that says nothing about the provider itself (502, as the OpenAI provider does); a
    4xx still keeps its status.
    """
    if status == 200:
        return UpstreamProtocolError(
            f"provider {provider!r} sent an answer it could not understand", provider=provider
        )
    message = (
        f"provider {provider!r} answered HTTP {status} with {content_type or 'an empty body'}, "
        "not a JSON error"
    )
    if status >= 500:
        return UpstreamProtocolError(message, provider=provider, retry_after=retry_after)
    return UpstreamStatusError.from_status(
        status, message, provider=provider, retry_after=retry_after
    )
