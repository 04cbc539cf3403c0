"""Gemini API emulator: ``generateContent``, ``streamGenerateContent``, ``countTokens``, models.

Speaks the exact wire format of generativelanguage.googleapis.com (wire-formats.md §3):
camelCase ``GenerateContentResponse`` objects (``candidates[].content.parts``, ``finishReason`` on
the last chunk only, cumulative ``usageMetadata`` on every chunk, ``modelVersion``,
``responseId``); ``functionCall`` parts without ids; thought parts when reasoning. Streams are SSE
``data: {json}`` frames with ``?alt=sse`` (no ``[DONE]``), or else one JSON array written in pieces
that do not align with its elements. Errors are ``google.rpc.Status`` objects
``{"error": {"code", "message", "status"}}``; in a stream, an element whose first key is ``error``.
The model segment may contain ``/``: ``/v1beta/models/{model}:{action}``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from aiohttp import web

from llmrelay.testing.emulator.behaviour import Behaviour, parse_behaviour
from llmrelay.testing.emulator.recording import RECORD_KEY
from llmrelay.testing.emulator.script import (
    Script,
    ToolCall,
    build_script,
    count_prompt_tokens,
    last_user_words,
)
from llmrelay.testing.emulator.wire import Frame, Sink, answer_fault, play

MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash")
_JSON = "application/json; charset=UTF-8"
_SSE = "text/event-stream"
_STATUSES: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: ("INTERNAL", "An internal error has occurred."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
# OpenAI finish reasons (the `stop=` option's vocabulary) in Gemini's terms.
_FINISH_REASONS = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
}
_UNAVAILABLE = 503
_NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_SIGNATURE = "RW11bGF0b3IgdGhvdWdodCBzaWduYXR1cmU="  # base64 of "Emulator thought signature"
_ARRAY_SEPARATOR = b",\r\n"


def error_object(
    status: int, message: str | None = None, *, retry_after: int | None = None
) -> dict[str, Any]:
    """A ``google.rpc.Status`` error object for the HTTP ``status``."""
    default = "INVALID_ARGUMENT" if status < 500 else "INTERNAL"
    name, default_message = _STATUSES.get(status, (default, f"Error {status} (emulated)."))
    error: dict[str, Any] = {"code": status, "message": message or default_message, "status": name}
    if retry_after is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}
        ]
    return {"error": error}


def _finish_reason(behaviour: Behaviour) -> str:
    if behaviour.stop:
        return _FINISH_REASONS.get(behaviour.stop, behaviour.stop.upper())
    return "STOP"


def _usage(script: Script, reasoning: int, answer: int) -> dict[str, Any]:
    """``usageMetadata`` after ``reasoning`` thought tokens and ``answer`` candidate tokens."""
    usage: dict[str, Any] = {"promptTokenCount": script.prompt_tokens}
    if answer:
        usage["candidatesTokenCount"] = answer
    usage["totalTokenCount"] = script.prompt_tokens + reasoning + answer
    if script.cached_tokens:
        usage["cachedContentTokenCount"] = script.cached_tokens
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": script.prompt_tokens}]
    if reasoning:
        usage["thoughtsTokenCount"] = reasoning
    return usage


def _call_part(call: ToolCall, *, signed: bool) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.args}}
    if signed:
        part["thoughtSignature"] = _SIGNATURE
    return part


class _Renderer:
    """Renders ``GenerateContentResponse`` objects for one request."""

    __slots__ = ("_behaviour", "_model", "_response_id", "_script")

    def __init__(self, behaviour: Behaviour, script: Script, *, model: str) -> None:
        self._behaviour = behaviour
        self._script = script
        self._model = model
        self._response_id = secrets.token_urlsafe(12)

    def response(
        self, parts: list[dict[str, Any]], *, reasoning: int, answer: int, last: bool
    ) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if last:
            candidate["finishReason"] = _finish_reason(self._behaviour)
        candidate["index"] = 0
        body: dict[str, Any] = {"candidates": [candidate]}
        if not self._behaviour.no_usage:
            body["usageMetadata"] = _usage(self._script, reasoning, answer)
        body["modelVersion"] = self._model
        body["responseId"] = self._response_id
        return orjson.dumps(body)

    def whole(self) -> bytes:
        """The non-stream response: every part in one candidate."""
        script = self._script
        parts: list[dict[str, Any]] = []
        if script.reasoning:
            parts.append(
                {"text": script.reasoning_text, "thought": True, "thoughtSignature": _SIGNATURE}
            )
        if script.content:
            parts.append({"text": script.text})
        signed = bool(script.reasoning)
        for call in script.tool_calls:
            parts.append(_call_part(call, signed=signed))
            signed = False
        answer = script.completion_tokens - len(script.reasoning)
        return self.response(
            parts or [{"text": ""}], reasoning=len(script.reasoning), answer=answer, last=True
        )

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        """Stream chunks as ``(json, tokens)``: one per token, one per function call."""
        script = self._script
        reasoning = answer = 0
        steps = len(script.reasoning) + len(script.content) + len(script.tool_calls)
        step = 0
        for i, piece in enumerate(script.reasoning):
            step += 1
            reasoning += 1
            part: dict[str, Any] = {"text": piece, "thought": True}
            if i == len(script.reasoning) - 1:
                part["thoughtSignature"] = _SIGNATURE
            last = step == steps
            yield self.response([part], reasoning=reasoning, answer=answer, last=last), 1
        for piece in script.content:
            step += 1
            answer += 1
            last = step == steps
            yield self.response([{"text": piece}], reasoning=reasoning, answer=answer, last=last), 1
        signed = bool(script.reasoning)
        for call in script.tool_calls:
            step += 1
            answer += len(call.fragments)
            parts = [_call_part(call, signed=signed)]
            signed = False
            last = step == steps
            yield (
                self.response(parts, reasoning=reasoning, answer=answer, last=last),
                len(call.fragments),
            )
        if not steps:
            yield self.response([{"text": ""}], reasoning=0, answer=0, last=True), 0


class _SseFramer:
    """``data: {json}`` frames; errors are ``data:`` objects whose first key is ``error``."""

    def frame(self, payload: bytes) -> bytes:
        return b"data: " + payload + b"\n\n"

    def final(self, payload: bytes) -> bytes:
        return self.frame(payload)

    def close(self) -> bytes:
        return b""


class _ArrayFramer:
    """One JSON array, written so that the pieces never align with its elements.

    Each piece is the tail of the previous element, the separator, and the head of the next one.
    """

    def __init__(self) -> None:
        self._pending = b"["
        self._before_last = self._pending

    def frame(self, payload: bytes) -> bytes:
        self._before_last = self._pending
        middle = len(payload) // 2
        data = self._pending + payload[:middle]
        self._pending = payload[middle:] + _ARRAY_SEPARATOR
        return data

    def final(self, payload: bytes) -> bytes:
        """A last element (an error) and the closing bracket, *instead of* the last piece made.

        ``play`` pulls the next frame before it injects a fault, so that frame is never written:
        the error continues the array from where the written pieces stopped.
        """
        data = self._before_last + payload + b"]"
        self._pending = self._before_last = b""
        return data

    def close(self) -> bytes:
        self._before_last = self._pending
        tail = self._pending.removesuffix(_ARRAY_SEPARATOR)
        self._pending = b""
        return tail + b"]"


def _stream_frames(renderer: _Renderer, framer: _SseFramer | _ArrayFramer) -> Iterator[Frame]:
    for payload, tokens in renderer.chunks():
        yield Frame(framer.frame(payload), tokens)
    closing = framer.close()
    if closing:
        yield Frame(closing)


def _faults(framer: _SseFramer | _ArrayFramer) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    error = orjson.dumps(error_object(_UNAVAILABLE))
    malformed = b'{"candidates": [{"content": {"parts": [{"text": "'
    return (lambda: framer.final(error)), (lambda: framer.frame(malformed))


def has_api_key(request: web.BaseRequest) -> bool:
    """Whether the request carries a Google API key (``x-goog-api-key`` or ``?key=``)."""
    return bool(_api_key(request))


def _api_key(request: web.BaseRequest) -> str:
    return (request.headers.get("x-goog-api-key") or request.query.get("key") or "").strip()


async def _reject(sink: Sink, status: int, message: str | None = None) -> web.StreamResponse:
    await sink.send_body(
        status, {"Content-Type": _JSON}, orjson.dumps(error_object(status, message))
    )
    return sink.response


def _tool_names(body: dict[str, Any]) -> list[str]:
    names = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            for declaration in tool.get("functionDeclarations") or ():
                if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                    names.append(declaration["name"])
    return names


def _prompt_tokens(body: dict[str, Any]) -> int:
    return count_prompt_tokens(body["contents"], body.get("systemInstruction"))


def _validate(body: object) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    return None


async def model_action(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:{action}`` (also ``/v1/...`` and ``tunedModels/...``)."""
    record = request[RECORD_KEY]
    sink = Sink(request, record, Behaviour(base=""))
    if not _api_key(request):
        return await _reject(sink, 403, _NO_KEY)
    model, colon, action = request.match_info["target"].rpartition(":")
    if not colon or action not in ("generateContent", "streamGenerateContent", "countTokens"):
        return await _reject(sink, 404, f"Method not found: {action or 'none'}.")
    body = record.json
    invalid = _validate(body)
    if invalid is not None:
        return await _reject(sink, 400, invalid)
    record.model = model
    if action == "countTokens":
        counted = orjson.dumps({"totalTokens": _prompt_tokens(body)})
        await sink.send_body(200, {"Content-Type": _JSON}, counted)
        return sink.response
    behaviour = parse_behaviour(model)
    sink = Sink(request, record, behaviour)

    def error_body(status: int) -> bytes:
        return orjson.dumps(error_object(status, retry_after=behaviour.retry_after))

    if await answer_fault(sink, behaviour, {}, error_body):
        return sink.response
    script = build_script(
        behaviour,
        prompt_tokens=_prompt_tokens(body),
        user_words=last_user_words(body["contents"]),
        tool_names=_tool_names(body),
    )
    renderer = _Renderer(behaviour, script, model=model)
    if action == "generateContent":
        if behaviour.streams_error:
            await sink.send_body(_UNAVAILABLE, {"Content-Type": _JSON}, error_body(_UNAVAILABLE))
        else:
            await sink.send_body(200, {"Content-Type": _JSON}, renderer.whole())
        return sink.response
    sse = request.query.get("alt") == "sse"
    framer: _SseFramer | _ArrayFramer = _SseFramer() if sse else _ArrayFramer()
    await sink.open(200, {"Content-Type": _SSE if sse else _JSON})
    error, malformed = _faults(framer)
    await play(sink, _stream_frames(renderer, framer), behaviour, error=error, malformed=malformed)
    return sink.response


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1beta/models`` (and ``GET /v1/models`` with a Google API key)."""
    record = request[RECORD_KEY]
    sink = Sink(request, record, Behaviour(base=""))
    if not _api_key(request):
        return await _reject(sink, 403, _NO_KEY)
    models = [
        {
            "name": f"models/{model}",
            "displayName": model,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }
        for model in MODELS
    ]
    await sink.send_body(200, {"Content-Type": _JSON}, orjson.dumps({"models": models}))
    return sink.response


def add_routes(app: web.Application) -> None:
    """Mount the Gemini endpoints on ``app``, under ``/v1beta`` and ``/v1`` (recent SDKs' default).

    ``GET /v1/models`` is shared with the other providers; see ``app``.
    """
    app.router.add_get("/v1beta/models", list_models)
    for version in ("/v1beta", "/v1"):
        app.router.add_post(version + "/models/{target:.+}", model_action)
        app.router.add_post(version + "/tunedModels/{target:.+}", model_action)
