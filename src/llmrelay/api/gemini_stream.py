"""Canonical chunks → Gemini's ``streamGenerateContent``: one ``GenerateContentResponse`` per chunk.

With ``?alt=sse`` each response is a ``data: {json}\\r\\n\\r\\n`` frame and nothing else (the
google-genai SDK refuses comments, ``event:`` lines and ``[DONE]``; its keep-alive is therefore a
bare blank line). Without ``alt`` the body is one JSON array, ``[{...},\\r\\n{...}]``, written as it
goes (blank-line keep-alives are whitespace between its elements).

Text and thoughts stream as they come. A function call's arguments arrive in fragments but a
Gemini ``functionCall`` part carries whole ``args``, so calls are gathered and sent, whole and in
order, in the last response, with each candidate's ``finishReason`` and the ``usageMetadata`` (the
final counts are only known at the end). A failure after the commit is a last element whose first
key is ``error``: ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from llmrelay.api.asgi import SSE_HEADERS, Headers
from llmrelay.api.gemini_answer import (
    call_part,
    finish_reason,
    signature_of,
    thought_parts,
    usage_metadata,
)
from llmrelay.core.chunks import RawChunk
from llmrelay.core.errors import GatewayError
from llmrelay.core.exchange import Exchange
from llmrelay.core.types import JSONObject, Usage
from llmrelay.providers.canonical import REASONING_CONTENT, THINKING_BLOCKS

KEEPALIVE = b"\r\n"
JSON_STREAM_HEADERS: Headers = [
    (b"content-type", b"application/json; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def error_payload(error: GatewayError) -> JSONObject:
    """Google's ``Status``; ``error`` first, with an integer ``code`` (the SDK relies on both)."""
    payload: JSONObject = {
        "code": error.http_status,
        "message": error.message,
        "status": error.gemini_status,
    }
    retry_after = error.retry_after_header()
    if retry_after is not None:
        payload["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}
        ]
    return {"error": payload}


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    signature: str | None = None


@dataclass(slots=True)
class _Candidate:
    calls: dict[int, _Call] = field(default_factory=dict)
    finish: str | None = None


class GenerateEncoder:
    __slots__ = ("_candidates", "_exchange", "_frames", "_sse")

    def __init__(self, exchange: Exchange, *, sse: bool) -> None:
        self._exchange = exchange
        self._sse = sse
        self._frames = 0
        self._candidates: dict[int, _Candidate] = {}

    @property
    def headers(self) -> Headers:
        return SSE_HEADERS if self._sse else JSON_STREAM_HEADERS

    def encode_raw(self, chunk: RawChunk) -> bytes:
        return b"".join([self.encode(parsed) for parsed in chunk.parse_all()])

    def encode(self, chunk: JSONObject) -> bytes:
        out = []
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            state = self._candidates.setdefault(index, _Candidate())
            delta = choice.get("delta") or {}
            parts = self._parts(delta, state, index)
            if choice.get("finish_reason"):
                state.finish = choice["finish_reason"]
            if parts:
                out.append({"content": {"role": "model", "parts": parts}, "index": index})
        if not out:
            return b""
        return self._frame(self._response(out))

    def close(self, usage: Usage) -> bytes:
        candidates = []
        for index, state in sorted((self._candidates or {0: _Candidate()}).items()):
            parts = [
                call_part(call.id, call.name, "".join(call.arguments), call.signature)
                for _, call in sorted(state.calls.items())
            ]
            candidates.append(
                {
                    "content": {"role": "model", "parts": parts or [{"text": ""}]},
                    "finishReason": finish_reason(state.finish),
                    "index": index,
                }
            )
        final = self._response(candidates)
        final["usageMetadata"] = usage_metadata(usage)
        return self._frame(final) + self._tail()

    def fail(self, error: GatewayError) -> bytes:
        return self._frame(error_payload(error)) + self._tail()

    # -- pieces ------------------------------------------------------------------------------

    def _parts(self, delta: JSONObject, state: _Candidate, index: int) -> list[JSONObject]:
        parts: list[JSONObject] = []
        reasoning = delta.get(REASONING_CONTENT)
        if reasoning:
            parts.append({"text": reasoning, "thought": True})
        for part in thought_parts(delta.get(THINKING_BLOCKS)):
            # An Anthropic block's text already streamed as reasoning: only its signature is new.
            part["text"] = ""
            parts.append(part)
        text = delta.get("content") or delta.get("refusal")
        if text:
            parts.append({"text": text})
        signature = signature_of(delta)
        if signature is not None:
            # A Gemini upstream's signature rides on the part it came with.
            if parts:
                parts[-1]["thoughtSignature"] = signature
            else:
                parts.append({"text": "", "thoughtSignature": signature})
        for position, call in enumerate(delta.get("tool_calls") or ()):
            self._gather(call, state, index, position)
        return parts

    def _gather(self, call: JSONObject, state: _Candidate, index: int, position: int) -> None:
        position = int(call.get("index", position))
        function = call.get("function") or {}
        known = state.calls.get(position)
        if known is None:
            call_id = call.get("id") or f"call_{self._exchange.id}_{index}_{position}"
            known = state.calls[position] = _Call(call_id, function.get("name") or "")
        arguments = function.get("arguments")
        if arguments:
            known.arguments.append(arguments)
        signature = signature_of(call)
        if signature is not None:
            known.signature = signature

    def _response(self, candidates: list[JSONObject]) -> JSONObject:
        exchange = self._exchange
        return {
            "candidates": candidates,
            "modelVersion": exchange.model.id if exchange.model is not None else "",
            "responseId": exchange.id,
        }

    def _frame(self, payload: JSONObject) -> bytes:
        data = orjson.dumps(payload)
        self._frames += 1
        if self._sse:
            return b"data: " + data + b"\r\n\r\n"
        return (b"[" if self._frames == 1 else b",\r\n") + data

    def _tail(self) -> bytes:
        if self._sse:
            return b""
        return b"]" if self._frames else b"[]"
