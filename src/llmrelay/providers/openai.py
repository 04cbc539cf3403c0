"""OpenAI Chat Completions and every OpenAI-compatible host (vLLM, Ollama, Groq, DeepSeek, ...).

Azure OpenAI is the same wire format at another URL with another auth header; it is a subclass that
changes only those two things. The canonical format *is* this wire format, so the request passes
through with the model name swapped and usage always requested, and chunks pass through as parsed;
to an OpenAI client (``UpstreamRequest.raw_chunks``), plain content chunks pass through as their
bytes, unparsed (``core/chunks.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from email.utils import parsedate_to_datetime
from time import time
from typing import Any
from urllib.parse import quote

import orjson

from llmrelay.config import ProviderConfig
from llmrelay.core.chunks import Chunk, PlainChunks
from llmrelay.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from llmrelay.core.sse import SSEDecoder, SSEEvent
from llmrelay.core.types import Completion, JSONObject, Usage
from llmrelay.providers.base import Provider, UpstreamRequest
from llmrelay.providers.capabilities import capabilities_for, check_request
from llmrelay.providers.http import UpstreamClient, UpstreamResponse
from llmrelay.providers.presets import OPENAI_BASE_URL, adapt_body, azure_overrides, preset_for

DEFAULT_BASE_URL = OPENAI_BASE_URL


class OpenAIProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient) -> None:
        # A preset (or the api-version, for Azure) is a set of capability overrides: the quirks
        # of a host are applied by the one mechanism in `adapt_body` and `check_request`.
        self._preset = preset_for(name, config)
        super().__init__(name, capabilities_for(config, self._overrides(config)))
        self._config = config
        self._client = client
        self._timeouts = config.timeouts
        self._url = self._endpoint(config)
        self._headers = {
            "content-type": "application/json",
            "accept": "application/json",
            **self._auth_headers(config),
            **config.headers,
        }
        self._stream_headers = {**self._headers, "accept": "text/event-stream"}

    # -- the parts a subclass changes ---------------------------------------------------------

    def _overrides(self, config: ProviderConfig) -> dict[str, Any]:
        return dict(self._preset.capabilities) if self._preset is not None else {}

    def _endpoint(self, config: ProviderConfig) -> str:
        preset_url = self._preset.base_url if self._preset is not None else None
        base = config.base_url or preset_url or DEFAULT_BASE_URL
        return base.rstrip("/") + "/chat/completions"

    def _auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        return {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    def _url_for(self, call: UpstreamRequest) -> str:
        return self._url

    # -- the contract -------------------------------------------------------------------------

    def _wire_body(self, call: UpstreamRequest, *, stream: bool) -> JSONObject:
        check_request(call.request, call.model, self.capabilities, self.name)
        return adapt_body(call.request.body, call.model.upstream, self.capabilities, stream=stream)

    async def complete(self, call: UpstreamRequest) -> Completion:
        body = self._wire_body(call, stream=False)
        response = await self._client.post(
            self._url_for(call), orjson.dumps(body), self._headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            raw = await response.read()
        finally:
            response.release()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                f"provider {self.name!r} answered 200 with a body that is not JSON",
                provider=self.name,
            ) from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
            raise _error_from_payload(parsed, self.name, 502)
        usage = parsed.get("usage")
        return Completion(parsed, Usage.from_openai(usage) if isinstance(usage, dict) else None)

    async def stream_batches(self, call: UpstreamRequest) -> AsyncIterator[list[Chunk]]:
        body = self._wire_body(call, stream=True)
        response = await self._client.post(
            self._url_for(call), orjson.dumps(body), self._stream_headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            events = _Events(self, PlainChunks() if call.raw_chunks else None)
            try:
                async for raw in response.iter_chunks():
                    for batch in events.read(raw):
                        yield batch
                for batch in events.end():
                    yield batch
            except UpstreamError:
                if events.batch:
                    yield events.batch  # the chunks read before the failing event go out first
                raise
            if not events.finished:
                raise UpstreamProtocolError(
                    f"provider {self.name!r} ended the stream without [DONE]", provider=self.name
                )
        finally:
            # Reached on normal end, on error, and when the gateway closes this generator
            # because the client went away: the connection is dropped, never pooled half-read.
            response.close()

    def _collect(
        self, events: list[SSEEvent], batch: list[Chunk], plain: PlainChunks | None = None
    ) -> bool:
        """Append the chunks of ``events`` to ``batch``; whether ``[DONE]`` was among them.

        With ``plain`` (the caller takes raw chunks), a plain content chunk is appended as a
        ``RawChunk``: recognised by its bytes when a chunk of the same shape was seen, else
        recognised after parsing (``core/chunks.py``).
        """
        finished = False
        for event in events:
            data = event.data
            if plain is not None and plain.add(data, batch):
                continue
            chunk = self._load_event(data)
            if chunk is None:
                finished = True
                continue
            if plain is not None and plain.learn(data, chunk, batch):
                continue
            chunk = self._normalise(chunk)
            if chunk:
                batch.append(chunk)
        return finished

    def _load_event(self, data: bytes) -> JSONObject | None:
        """The event's object, checked (an error event raises); ``None`` for ``[DONE]``."""
        if data == b"[DONE]":
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                f"provider {self.name!r} sent a stream event that is not JSON", provider=self.name
            ) from None
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError(
                f"provider {self.name!r} sent a stream event that is not an object",
                provider=self.name,
            )
        if chunk.get("error"):
            raise _error_from_payload(chunk, self.name, 502)
        return chunk

    @staticmethod
    def _normalise(chunk: JSONObject) -> JSONObject:
        """The chunk as the surfaces expect it; ``{}`` for one with nothing to relay."""
        # Azure's content-filter annotations are choices without a delta: drop the ones that carry
        # nothing else, and give a `delta` to one that ends the choice (the SDKs need it).
        choices = [
            choice
            for choice in chunk.get("choices") or ()
            if choice.get("delta") is not None or choice.get("finish_reason")
        ]
        for choice in choices:
            if choice.get("delta") is None:
                choice["delta"] = {}
        chunk["choices"] = choices
        if not choices:
            # Azure's prompt-filter chunk has no choices and no usage: nothing to relay.
            return chunk if chunk.get("usage") else {}
        return chunk

    async def _status_error(self, response: UpstreamResponse) -> UpstreamError:
        raw = await response.read()
        retry_after = parse_retry_after(response.headers)
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, list) and payload:
            payload = payload[0]
        if not isinstance(payload, dict):
            kind = response.content_type or "an empty body"
            if response.status >= 500:
                return UpstreamProtocolError(
                    f"provider {self.name!r} answered HTTP {response.status} with {kind}, not a "
                    "JSON error",
                    provider=self.name,
                    retry_after=retry_after,
                )
            return UpstreamStatusError.from_status(
                response.status,
                f"provider {self.name!r} answered HTTP {response.status} with {kind}, not a JSON "
                "error",
                provider=self.name,
                retry_after=retry_after,
            )
        return _error_from_payload(payload, self.name, response.status, retry_after)


class _Events:
    """One stream's reads → batches of chunks: one batch per read, except that the stream's first
    chunk is yielded alone, before the rest of its read is parsed (a fast upstream's first read
    may hold the whole answer, and the first token must not wait for it).

    With ``plain`` (the caller takes raw chunks), a read the decoder has nothing pending for is
    walked event by event in its own buffer: plain chunks of a known shape are recognised in
    place (``PlainChunks.scan``), any other event is decoded and parsed on its own."""

    __slots__ = ("_decoder", "_plain", "_provider", "_started", "batch", "finished")

    def __init__(self, provider: OpenAIProvider, plain: PlainChunks | None) -> None:
        self._provider = provider
        self._plain = plain
        self._decoder = SSEDecoder()
        self._started = False
        self.batch: list[Chunk] = []
        self.finished = False

    def read(self, raw: bytes) -> Iterator[list[Chunk]]:
        plain = self._plain
        if plain is not None and self._decoder.idle and b"\r" not in raw:
            yield from self._read_in_place(raw, plain)
            return
        events = self._decoder.feed(raw)
        if not self._started:
            at = 0
            while not self.batch and at < len(events):
                self._collect(events[at : at + 1])
                at += 1
            yield from self._flush()
            events = events[at:]
        self._collect(events)
        yield from self._flush()

    def _read_in_place(self, raw: bytes, plain: PlainChunks) -> Iterator[list[Chunk]]:
        decoder = self._decoder
        pos, size = 0, len(raw)
        while pos < size:
            if self._started:
                pos = plain.scan(raw, pos, self.batch)
                if pos >= size:
                    break
            end = raw.find(b"\n\n", pos)
            if end == -1:
                self._collect(decoder.feed(raw[pos:]))  # the start of an event: kept pending
                break
            self._collect(decoder.feed(raw[pos : end + 2]))
            pos = end + 2
            if not self._started:
                yield from self._flush()
        yield from self._flush()

    def end(self) -> Iterator[list[Chunk]]:
        self._collect(self._decoder.close())
        yield from self._flush()

    def _flush(self) -> Iterator[list[Chunk]]:
        if self.batch:
            batch, self.batch = self.batch, []
            self._started = True
            yield batch

    def _collect(self, events: list[SSEEvent]) -> None:
        if self._provider._collect(events, self.batch, self._plain):
            self.finished = True


class AzureOpenAIProvider(OpenAIProvider):
    """Deployment URLs with a dated ``api-version``, or the v1 API.

    ``api_version`` null or ``v1``: ``{base}/openai/v1/chat/completions`` (latest GA);
    ``preview``/``latest``: the same with that ``api-version``; a date: the classic
    ``{base}/openai/deployments/{deployment}/chat/completions?api-version=DATE``. Either way the
    catalogue's upstream name is the deployment name. ``base_url`` may be the bare resource
    endpoint or already end in ``/openai`` or ``/openai/v1``, as the portal shows it.
    """

    _V1_VERSIONS = (None, "v1", "preview", "latest")

    def _overrides(self, config: ProviderConfig) -> dict[str, Any]:
        return azure_overrides(config.api_version)

    def _endpoint(self, config: ProviderConfig) -> str:
        base = (config.base_url or "").rstrip("/").removesuffix("/v1").removesuffix("/openai")
        version = config.api_version
        if version in self._V1_VERSIONS:
            query = f"?api-version={version}" if version in ("preview", "latest") else ""
            return f"{base}/openai/v1/chat/completions{query}"
        return f"{base}/openai/deployments/{{deployment}}/chat/completions?api-version={version}"

    def _auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        return {"api-key": config.api_key} if config.api_key else {}

    def _url_for(self, call: UpstreamRequest) -> str:
        return self._url.replace("{deployment}", quote(call.model.upstream, safe=""))


def _error_from_payload(
    payload: Any, provider: str, status: int, retry_after: float | None = None
) -> UpstreamError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        message = str(error) if error else "no error object in the body"
        return UpstreamStatusError.from_status(
            status, f"provider {provider!r}: {message}", provider=provider, retry_after=retry_after
        )
    message = str(error.get("message") or "no message")
    code = error.get("code")
    if status == 200 or status == 502:
        # A mid-stream or error-first event: its numeric code (OpenRouter) or type decides.
        if isinstance(code, int) and 400 <= code < 600:
            status = code
        elif error.get("type") in ("invalid_request_error",):
            status = 400
        elif error.get("type") in ("rate_limit_exceeded", "rate_limit_error"):
            status = 429
        else:
            status = 502
    upstream_type = error.get("type")
    if isinstance(upstream_type, str) and upstream_type:
        message = f"{upstream_type}: {message}"  # the one thing a 5xx loses of the provider's own
    return UpstreamStatusError.from_status(
        status,
        f"provider {provider!r}: {message}",
        provider=provider,
        param=error.get("param") if isinstance(error.get("param"), str) else None,
        upstream_type=upstream_type if isinstance(upstream_type, str) else None,
        retry_after=retry_after,
    )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, then ``retry-after`` as seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None
