"""The Gemini API provider: ``POST {base}/v1beta/models/{model}:generateContent`` (and
``:streamGenerateContent?alt=sse``) with ``x-goog-api-key``."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson

from llmrelay.config import ProviderConfig
from llmrelay.core.errors import UpstreamError, UpstreamProtocolError, UpstreamStatusError
from llmrelay.core.types import Completion, JSONObject
from llmrelay.providers.base import Provider, UpstreamRequest
from llmrelay.providers.canonical import choice, completion_body
from llmrelay.providers.capabilities import capabilities_for, check_request
from llmrelay.providers.gemini.convert import (
    CandidateReader,
    merge_deltas,
    remote_image_urls,
    request_to_wire,
    usage_from_wire,
)
from llmrelay.providers.gemini.stream import GenerateStream
from llmrelay.providers.http import UpstreamClient, UpstreamResponse
from llmrelay.providers.media import ImageFetcher
from llmrelay.providers.upstream import (
    event_json,
    read_error,
    read_json,
    sse_batches,
    unreadable_error,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# Google's canonical status names for a client's mistake, in OpenAI's vocabulary.
_INVALID = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"})


class GeminiProvider(Provider):
    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        client: UpstreamClient,
        fetcher: ImageFetcher | None = None,
    ) -> None:
        super().__init__(name, capabilities_for(config))
        self._client = client
        self._timeouts = config.timeouts
        self._base = (config.base_url or DEFAULT_BASE_URL).rstrip("/") + f"/{API_VERSION}/"
        headers = {
            "content-type": "application/json",
            **({"x-goog-api-key": config.api_key} if config.api_key else {}),
            **config.headers,
        }
        self._headers = {**headers, "accept": "application/json"}
        self._stream_headers = {**headers, "accept": "text/event-stream"}
        self._fetcher = fetcher or ImageFetcher()

    # -- the contract -------------------------------------------------------------------------

    async def complete(self, call: UpstreamRequest) -> Completion:
        body = await self._wire_body(call)
        response = await self._client.post(
            self._url(call, "generateContent"), body, self._headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            payload = await read_json(response, self.name)
        finally:
            response.release()
        if not isinstance(payload, dict) or "error" in payload:
            raise self._error(200, payload)
        self._check_prompt(payload)
        if not payload.get("candidates"):
            raise UpstreamProtocolError(
                f"provider {self.name!r} answered without any candidate", provider=self.name
            )
        choices = []
        for candidate in payload["candidates"]:
            index = int(candidate.get("index") or 0)
            reader = CandidateReader(call.request_id, index)
            parts = (candidate.get("content") or {}).get("parts") or []
            message = merge_deltas(reader.deltas(parts))
            choices.append(
                choice(index, message, reader.finish_reason(candidate.get("finishReason")))
            )
        metadata = payload.get("usageMetadata")
        usage = usage_from_wire(metadata) if isinstance(metadata, dict) else None
        body_out = completion_body(
            str(payload.get("responseId") or ""),
            str(payload.get("modelVersion") or call.model.upstream),
            int(time.time()),
            choices,
            usage,
        )
        return Completion(body_out, usage)

    async def stream_batches(self, call: UpstreamRequest) -> AsyncIterator[list[JSONObject]]:
        body = await self._wire_body(call)
        url = self._url(call, "streamGenerateContent") + "?alt=sse"
        response = await self._client.post(
            url, body, self._stream_headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            state = GenerateStream(self.name, call.request_id)
            batch: list[JSONObject] = []
            try:
                async for events in sse_batches(response):
                    for event in events:
                        payload = event_json(event.data, self.name)
                        if "error" in payload:
                            raise self._error(200, payload)
                        self._check_prompt(payload)
                        batch.extend(state.feed(payload))
                    if batch:
                        yield batch
                        batch = []
            except UpstreamError:
                if batch:
                    yield batch  # the chunks read before the failing event go out first
                raise
            batch = list(state.finish())
            if batch:
                yield batch
        finally:
            # Reached on normal end, on error, and when the gateway closes this generator
            # because the client went away: the connection is dropped, never pooled half-read.
            response.close()

    async def close(self) -> None:
        await self._fetcher.close()

    # -- wire and errors ----------------------------------------------------------------------

    def _url(self, call: UpstreamRequest, action: str) -> str:
        model = call.model.upstream
        if not model.startswith(("models/", "tunedModels/")):
            model = "models/" + model
        return self._base + quote(model, safe="/-_.~") + ":" + action

    async def _wire_body(self, call: UpstreamRequest) -> bytes:
        check_request(call.request, call.model, self.capabilities, self.name)
        # Gemini takes image bytes only: the gateway fetches remote images itself, guarded.
        images = await self._fetcher.fetch_all(remote_image_urls(call.request.messages))
        return orjson.dumps(request_to_wire(call.request, call.model, images))

    def _check_prompt(self, payload: JSONObject) -> None:
        feedback = payload.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason and not payload.get("candidates"):
            raise UpstreamStatusError.from_status(
                400,
                f"provider {self.name!r} blocked the prompt ({reason}); rephrase the messages",
                provider=self.name,
                param="messages",
                upstream_type="content_filter",
            )

    async def _status_error(self, response: UpstreamResponse) -> UpstreamError:
        payload, retry_after = await read_error(response)
        return self._error(response.status, payload, retry_after, response.content_type)

    def _error(
        self,
        status: int,
        payload: Any,
        retry_after: float | None = None,
        content_type: str | None = None,
    ) -> UpstreamError:
        """The one place a Gemini failure (``google.rpc.Status``) becomes the gateway's error."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return unreadable_error(status, content_type, self.name, retry_after)
        code = error.get("code")
        if status == 200:  # an in-stream error: its code is the status it stands for
            status = code if isinstance(code, int) and 400 <= code < 600 else 500
        kind = str(error.get("status") or "UNKNOWN")
        details = [d for d in error.get("details") or () if isinstance(d, dict)]
        for detail in details:
            if detail.get("@type") == _RETRY_INFO and retry_after is None:
                retry_after = _seconds(detail.get("retryDelay"))
            if detail.get("@type") == _ERROR_INFO and detail.get("reason") == "API_KEY_INVALID":
                status = 401  # Google says 400; it is the gateway's key that is wrong
        return UpstreamStatusError.from_status(
            status,
            f"provider {self.name!r}: {kind}: {error.get('message') or 'no message'}",
            provider=self.name,
            upstream_type="invalid_request_error" if kind in _INVALID else kind.lower(),
            retry_after=retry_after,
        )


def _seconds(duration: Any) -> float | None:
    """A protobuf JSON Duration (``"31s"``, ``"1.5s"``) in seconds."""
    match = _DURATION.match(duration) if isinstance(duration, str) else None
    return float(match.group(1)) if match else None
