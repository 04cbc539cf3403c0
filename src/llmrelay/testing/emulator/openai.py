"""OpenAI Chat Completions emulator: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Speaks the exact wire format of api.openai.com (wire-formats.md §1): ``chat.completion`` bodies,
``chat.completion.chunk`` streams (role only in the first delta, tool-call ``id``/``type``/``name``
only in the first fragment per index, a final ``delta: {}`` with the finish reason, usage only
when ``stream_options.include_usage`` is true, ``data: [DONE]``), and OpenAI error bodies.
``delta.reasoning_content`` carries reasoning, as OpenAI-compatible hosts send it.
"""

from __future__ import annotations

import secrets
import time
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

MODELS = ("gpt-4o", "gpt-4o-mini", "o4-mini", "emulator")
SYSTEM_FINGERPRINT = "fp_emulator"
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_COMMENT_BLOCK = b": OPENROUTER PROCESSING\n\n"
# status -> (type, code, message), as api.openai.com answers them.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (emulated)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("request_forbidden", "unsupported_country_region_territory", "Country not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    409: ("invalid_request_error", None, "Conflict (emulated)."),
    422: ("invalid_request_error", None, "Unprocessable entity (emulated)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (emulated)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_STREAM_ERROR = orjson.dumps(
    {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }
)


def error_body(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI's error body for ``status`` (``{"error": {message, type, param, code}}``)."""
    default_type = "invalid_request_error" if status < 500 else "server_error"
    kind, default_code, default_message = _ERRORS.get(
        status, (default_type, None, f"Error {status} (emulated).")
    )
    error = {
        "message": message or default_message,
        "type": kind,
        "param": param,
        "code": code or default_code,
    }
    return orjson.dumps({"error": error})


def _usage(script: Script) -> dict[str, Any]:
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": script.completion_tokens,
        "total_tokens": script.prompt_tokens + script.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": len(script.reasoning),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(behaviour: Behaviour, script: Script) -> str:
    if behaviour.stop:
        return behaviour.stop
    return "tool_calls" if script.tool_calls else "stop"


def _call_id(response_id: str, index: int) -> str:
    return f"call_{response_id[-12:]}{index}"


def completion_body(
    behaviour: Behaviour, script: Script, *, response_id: str, model: str, created: int
) -> dict[str, Any]:
    """The non-stream ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": script.text if script.content else None,
        "refusal": None,
        "annotations": [],
    }
    if script.reasoning:
        message["reasoning_content"] = script.reasoning_text
    if script.tool_calls:
        message["tool_calls"] = [
            {
                "id": _call_id(response_id, call.index),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in script.tool_calls
        ]
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(behaviour, script),
            }
        ],
    }
    if not behaviour.no_usage:
        body["usage"] = _usage(script)
    body["service_tier"] = "default"
    body["system_fingerprint"] = SYSTEM_FINGERPRINT
    return body


class _ChunkEncoder:
    """Pre-encodes the constant parts of every chunk of one stream."""

    __slots__ = ("_comments", "_count", "_head", "_tail_open", "_usage_field")

    def __init__(self, *, response_id: str, model: str, created: int, usage_field: bool) -> None:
        self._head = (
            b'{"id":'
            + orjson.dumps(response_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"system_fingerprint":"'
            + SYSTEM_FINGERPRINT.encode()
            + b'"'
        )
        self._usage_field = b',"usage":null' if usage_field else b""
        self._tail_open = b',"logprobs":null,"finish_reason":null}]' + self._usage_field + b"}"
        self._comments = False
        self._count = 0

    def with_comments(self) -> None:
        """Decorate events with OpenRouter-style comment, ``event:``, ``id:``, ``retry:`` lines."""
        self._comments = True

    def _frame(self, payload: bytes) -> bytes:
        if not self._comments:
            return b"data: " + payload + b"\n\n"
        # Comments, `event:` and `retry:` lines ride inside an event's block: a stand-alone block
        # after an `id:` line would make openai-python dispatch an event with empty data.
        self._count += 1
        n = self._count
        lines = b": OPENROUTER PROCESSING\n"
        if n % 2:
            lines += b"event: message\n"
        if n % 3 == 0:
            lines += b"id: " + str(n).encode() + b"\n"
        if n % 4 == 0:
            lines += b"retry: 3000\n"
        return lines + b"data: " + payload + b"\n\n"

    def delta(self, delta: dict[str, Any]) -> bytes:
        """A chunk with one choice carrying ``delta`` and no finish reason."""
        payload = (
            self._head + b',"choices":[{"index":0,"delta":' + orjson.dumps(delta) + self._tail_open
        )
        return self._frame(payload)

    def finish(self, reason: str) -> bytes:
        """The chunk with ``delta: {}`` and the finish reason."""
        payload = (
            self._head
            + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
            + orjson.dumps(reason)
            + b"}]"
            + self._usage_field
            + b"}"
        )
        return self._frame(payload)

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The final ``choices: []`` chunk with the usage."""
        return self._frame(self._head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}")

    def malformed(self) -> bytes:
        """A ``data:`` line that is not valid JSON (a truncated chunk)."""
        return b"data: " + self._head + b',"choices":[{"index":0,"delta":{"content":"\n\n'

    def done(self) -> bytes:
        """The ``[DONE]`` terminator."""
        return self._frame(b"[DONE]") if self._comments else _DONE


def stream_frames(
    behaviour: Behaviour,
    script: Script,
    encoder: _ChunkEncoder,
    *,
    response_id: str,
    include_usage: bool,
) -> Iterator[Frame]:
    """The frames of a ``chat.completion.chunk`` stream for ``script``."""
    if behaviour.comments:
        yield Frame(_COMMENT_BLOCK, lead=True)
        yield Frame(_COMMENT_BLOCK, lead=True)
    # OpenAI opens a text answer with `content: ""` and a tool-call answer with `content: null`.
    opening_content = None if script.tool_calls else ""
    role_delta = {"role": "assistant", "content": opening_content, "refusal": None}
    yield Frame(encoder.delta(role_delta), lead=True)
    for piece in script.reasoning:
        yield Frame(encoder.delta({"reasoning_content": piece}), 1)
    for piece in script.content:
        yield Frame(encoder.delta({"content": piece}), 1)
    for call in script.tool_calls:
        opening = {
            "index": call.index,
            "id": _call_id(response_id, call.index),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield Frame(encoder.delta({"tool_calls": [opening]}))
        for fragment in call.fragments:
            tool_delta = {"index": call.index, "function": {"arguments": fragment}}
            yield Frame(encoder.delta({"tool_calls": [tool_delta]}), 1)
    yield Frame(encoder.finish(_finish_reason(behaviour, script)))
    if include_usage and not behaviour.no_usage:
        yield Frame(encoder.usage(_usage(script)))
    yield Frame(encoder.done())


def _bearer(request: web.BaseRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _reject(
    sink: Sink, status: int, message: str, **fields: str | None
) -> web.StreamResponse:
    await sink.send_body(status, {"Content-Type": _JSON}, error_body(status, message, **fields))
    return sink.response


def _validate(body: object) -> tuple[str, str | None, str | None] | None:
    """Return ``(message, param, code)`` for an invalid request body, else ``None``."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None, None
    if "model" not in body:
        return "you must provide a model parameter", None, None
    if not isinstance(body["model"], str):
        return "Invalid type for 'model': expected a string.", "model", "invalid_type"
    if "messages" not in body:
        return "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': expected a non-empty array.", "messages", "invalid_value"
    if body.get("stream_options") is not None and not body.get("stream"):
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return message, "stream_options", None
    return None


def _tool_names(body: dict[str, Any]) -> list[str]:
    names = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            name = tool["function"].get("name")
            if isinstance(name, str):
                names.append(name)
    return names


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    record = request[RECORD_KEY]
    body = record.json
    default = Behaviour(base="")
    if not _bearer(request):
        sink = Sink(request, record, default)
        message = "You didn't provide an API key (Authorization: Bearer)."
        return await _reject(sink, 401, message)
    problem = _validate(body)
    if problem is not None:
        message, param, code = problem
        return await _reject(Sink(request, record, default), 400, message, param=param, code=code)
    model: str = body["model"]
    behaviour = parse_behaviour(model)
    record.model = model
    sink = Sink(request, record, behaviour)
    response_id = "chatcmpl-" + secrets.token_hex(12)
    headers = {"x-request-id": "req_" + secrets.token_hex(16)}
    if await answer_fault(sink, behaviour, headers, error_body):
        return sink.response
    messages = body["messages"]
    script = build_script(
        behaviour,
        prompt_tokens=count_prompt_tokens(messages),
        user_words=last_user_words(messages),
        tool_names=_tool_names(body),
    )
    created = int(time.time())
    if not body.get("stream"):
        if behaviour.streams_error:
            await sink.send_body(500, {**headers, "Content-Type": _JSON}, error_body(500))
            return sink.response
        completion = completion_body(
            behaviour, script, response_id=response_id, model=model, created=created
        )
        await sink.send_body(200, {**headers, "Content-Type": _JSON}, orjson.dumps(completion))
        return sink.response
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    encoder = _ChunkEncoder(
        response_id=response_id,
        model=model,
        created=created,
        usage_field=include_usage and not behaviour.no_usage,
    )
    if behaviour.comments:
        encoder.with_comments()
    await sink.open(200, {**headers, **_SSE_HEADERS})
    frames = stream_frames(
        behaviour, script, encoder, response_id=response_id, include_usage=include_usage
    )
    await play(
        sink,
        frames,
        behaviour,
        error=lambda: b"data: " + _STREAM_ERROR + b"\n\n",
        malformed=encoder.malformed,
    )
    return sink.response


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models``."""
    record = request[RECORD_KEY]
    sink = Sink(request, record, Behaviour(base=""))
    if not _bearer(request):
        return await _reject(sink, 401, "You didn't provide an API key (Authorization: Bearer).")
    data = [
        {"id": model, "object": "model", "created": 1700000000, "owned_by": "system"}
        for model in MODELS
    ]
    body = orjson.dumps({"object": "list", "data": data})
    await sink.send_body(200, {"Content-Type": _JSON}, body)
    return sink.response


def add_routes(app: web.Application) -> None:
    """Mount the OpenAI endpoints on ``app`` (``GET /v1/models`` is shared; see ``app``)."""
    app.router.add_post("/v1/chat/completions", chat_completions)
