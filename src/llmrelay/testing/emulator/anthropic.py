"""Anthropic Messages emulator: ``POST /v1/messages``, ``/v1/messages/count_tokens``, models list.

Speaks the exact wire format of api.anthropic.com (wire-formats.md §2): the ``message`` object, and
the event stream ``message_start`` (``content: []``, input usage) → ``ping`` → per block
``content_block_start`` / ``content_block_delta``* / ``content_block_stop`` with contiguous
indices (thinking with ``thinking_delta`` + ``signature_delta``; text with ``text_delta``;
tool_use with ``input_json_delta`` whose first ``partial_json`` is ``""``) → ``message_delta``
(stop reason, cumulative usage) → ``message_stop``. Errors are
``{"type": "error", "error": {"type", "message"}}``; in a stream, ``event: error``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from llmrelay.testing.emulator.behaviour import Behaviour, parse_behaviour
from llmrelay.testing.emulator.recording import RECORD_KEY
from llmrelay.testing.emulator.script import (
    Script,
    build_script,
    count_prompt_tokens,
    last_user_words,
)
from llmrelay.testing.emulator.wire import Frame, Sink, answer_fault, play

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (emulated)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low (emulated)."),
    403: ("permission_error", "Your API key does not have permission (emulated)."),
    404: ("not_found_error", "Not found (emulated)."),
    413: ("request_too_large", "Request exceeds the maximum allowed size (emulated)."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit (emulated)."),
    500: ("api_error", "Internal server error (emulated)."),
    504: ("timeout_error", "Request timed out (emulated)."),
    529: ("overloaded_error", "Overloaded"),
}
# OpenAI finish reasons (the `stop=` option's vocabulary) in Anthropic's terms.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}
_OVERLOADED = 529
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_SIGNATURE = "RW11bGF0b3Igc2lnbmF0dXJl"  # base64 of "Emulator signature"


def error_object(status: int, message: str | None = None) -> dict[str, Any]:
    """Anthropic's error object for ``status`` (``{"type": "error", "error": {type, message}}``)."""
    default = "invalid_request_error" if status < 500 else "api_error"
    kind, default_message = _ERRORS.get(status, (default, f"Error {status} (emulated)."))
    return {"type": "error", "error": {"type": kind, "message": message or default_message}}


def error_body(status: int, message: str | None = None) -> bytes:
    """The JSON body of an Anthropic error answer."""
    body = error_object(status, message)
    body["request_id"] = _request_id()
    return orjson.dumps(body)


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)


def _event(name: bytes, payload: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + payload + b"\n\n"


def _stop_reason(behaviour: Behaviour, script: Script) -> str:
    if behaviour.stop:
        return _STOP_REASONS.get(behaviour.stop, behaviour.stop)
    return "tool_use" if script.tool_calls else "end_turn"


def _input_usage(script: Script) -> dict[str, Any]:
    return {
        "input_tokens": script.prompt_tokens - script.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": script.cached_tokens,
    }


def _output_usage(script: Script) -> dict[str, Any]:
    usage: dict[str, Any] = {"output_tokens": script.completion_tokens}
    if script.reasoning:
        usage["output_tokens_details"] = {"thinking_tokens": len(script.reasoning)}
    return usage


def _usage(script: Script) -> dict[str, Any]:
    usage = _input_usage(script)
    usage["cache_creation"] = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
    usage.update(_output_usage(script))
    usage["service_tier"] = "standard"
    return usage


def _tool_id(message_id: str, index: int) -> str:
    return f"toolu_{message_id[-12:]}{index}"


def message_body(
    behaviour: Behaviour, script: Script, *, message_id: str, model: str
) -> dict[str, Any]:
    """The non-stream ``message`` object."""
    content: list[dict[str, Any]] = []
    if script.reasoning:
        thinking = {"type": "thinking", "thinking": script.reasoning_text, "signature": _SIGNATURE}
        content.append(thinking)
    if script.content:
        content.append({"type": "text", "text": script.text})
    content.extend(
        {
            "type": "tool_use",
            "id": _tool_id(message_id, call.index),
            "name": call.name,
            "input": call.args,
        }
        for call in script.tool_calls
    )
    body: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(behaviour, script),
        "stop_sequence": None,
    }
    if not behaviour.no_usage:
        body["usage"] = _usage(script)
    return body


def _delta(index: int, delta: bytes) -> bytes:
    payload = (
        b'{"type":"content_block_delta","index":'
        + str(index).encode()
        + b',"delta":'
        + delta
        + b"}"
    )
    return _event(b"content_block_delta", payload)


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    payload = orjson.dumps({"type": "content_block_start", "index": index, "content_block": block})
    return _event(b"content_block_start", payload)


def _block_stop(index: int) -> bytes:
    payload = b'{"type":"content_block_stop","index":' + str(index).encode() + b"}"
    return _event(b"content_block_stop", payload)


def stream_frames(
    behaviour: Behaviour, script: Script, *, message_id: str, model: str
) -> Iterator[Frame]:
    """The event stream for ``script``."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if not behaviour.no_usage:
        start["usage"] = {**_input_usage(script), "output_tokens": 1}
    message_start = orjson.dumps({"type": "message_start", "message": start})
    yield Frame(_event(b"message_start", message_start), lead=True)
    yield Frame(_PING, lead=True)
    index = 0
    if script.reasoning:
        yield Frame(_block_start(index, {"type": "thinking", "thinking": "", "signature": ""}))
        for piece in script.reasoning:
            thinking = orjson.dumps({"type": "thinking_delta", "thinking": piece})
            yield Frame(_delta(index, thinking), 1)
        signature = orjson.dumps({"type": "signature_delta", "signature": _SIGNATURE})
        yield Frame(_delta(index, signature))
        yield Frame(_block_stop(index))
        index += 1
    if script.content:
        yield Frame(_block_start(index, {"type": "text", "text": ""}))
        for piece in script.content:
            yield Frame(_delta(index, orjson.dumps({"type": "text_delta", "text": piece})), 1)
        yield Frame(_block_stop(index))
        index += 1
    for call in script.tool_calls:
        block = {"type": "tool_use", "id": _tool_id(message_id, call.index), "name": call.name}
        yield Frame(_block_start(index, {**block, "input": {}}))
        yield Frame(_delta(index, b'{"type":"input_json_delta","partial_json":""}'))
        for fragment in call.fragments:
            partial = orjson.dumps({"type": "input_json_delta", "partial_json": fragment})
            yield Frame(_delta(index, partial), 1)
        yield Frame(_block_stop(index))
        index += 1
    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(behaviour, script), "stop_sequence": None},
    }
    if not behaviour.no_usage:
        message_delta["usage"] = {**_input_usage(script), **_output_usage(script)}
    yield Frame(_event(b"message_delta", orjson.dumps(message_delta)))
    yield Frame(_MESSAGE_STOP)


_STREAM_ERROR = _event(b"error", orjson.dumps(error_object(_OVERLOADED)))
_MALFORMED = _event(
    b"content_block_delta",
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"',
)


async def _reject(sink: Sink, status: int, message: str) -> web.StreamResponse:
    headers = {"Content-Type": _JSON, "request-id": _request_id()}
    await sink.send_body(status, headers, error_body(status, message))
    return sink.response


def _has_key(request: web.BaseRequest) -> bool:
    if request.headers.get("x-api-key", "").strip():
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _check_headers(request: web.BaseRequest) -> tuple[int, str] | None:
    if not _has_key(request):
        return 401, "x-api-key header is required"
    if not request.headers.get("anthropic-version"):
        return 400, "anthropic-version: header is required"
    return None


def _validate(body: object, *, needs_max_tokens: bool) -> str | None:
    """An ``invalid_request_error`` message for a bad body, else ``None``."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if needs_max_tokens and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required"
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    return count_prompt_tokens(body["messages"], body.get("system"))


def _tool_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or ()
    return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    record = request[RECORD_KEY]
    body = record.json
    sink = Sink(request, record, Behaviour(base=""))
    problem = _check_headers(request)
    if problem is not None:
        return await _reject(sink, *problem)
    invalid = _validate(body, needs_max_tokens=True)
    if invalid is not None:
        return await _reject(sink, 400, invalid)
    model: str = body["model"]
    behaviour = parse_behaviour(model)
    record.model = model
    sink = Sink(request, record, behaviour)
    headers = {"request-id": _request_id()}
    if await answer_fault(sink, behaviour, headers, error_body):
        return sink.response
    script = build_script(
        behaviour,
        prompt_tokens=_prompt_tokens(body),
        user_words=last_user_words(body["messages"]),
        tool_names=_tool_names(body),
    )
    message_id = "msg_" + secrets.token_hex(12)
    if not body.get("stream"):
        json_headers = {**headers, "Content-Type": _JSON}
        if behaviour.streams_error:
            await sink.send_body(_OVERLOADED, json_headers, error_body(_OVERLOADED))
            return sink.response
        message = message_body(behaviour, script, message_id=message_id, model=model)
        await sink.send_body(200, json_headers, orjson.dumps(message))
        return sink.response
    await sink.open(200, {**headers, **_SSE_HEADERS})
    frames = stream_frames(behaviour, script, message_id=message_id, model=model)
    await play(sink, frames, behaviour, error=lambda: _STREAM_ERROR, malformed=lambda: _MALFORMED)
    return sink.response


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": <prompt tokens>}``."""
    record = request[RECORD_KEY]
    body = record.json
    sink = Sink(request, record, Behaviour(base=""))
    problem = _check_headers(request)
    if problem is not None:
        return await _reject(sink, *problem)
    invalid = _validate(body, needs_max_tokens=False)
    if invalid is not None:
        return await _reject(sink, 400, invalid)
    record.model = body["model"]
    counted = orjson.dumps({"input_tokens": _prompt_tokens(body)})
    await sink.send_body(200, {"Content-Type": _JSON, "request-id": _request_id()}, counted)
    return sink.response


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` in Anthropic's shape (chosen by the ``anthropic-version`` header)."""
    record = request[RECORD_KEY]
    sink = Sink(request, record, Behaviour(base=""))
    problem = _check_headers(request)
    if problem is not None:
        return await _reject(sink, *problem)
    data = [
        {"type": "model", "id": model, "display_name": model, "created_at": "2025-09-29T00:00:00Z"}
        for model in MODELS
    ]
    page = {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    await sink.send_body(200, {"Content-Type": _JSON}, orjson.dumps(page))
    return sink.response


def add_routes(app: web.Application) -> None:
    """Mount the Anthropic endpoints on ``app`` (``GET /v1/models`` is shared; see ``app``)."""
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
