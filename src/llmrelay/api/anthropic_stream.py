"""Canonical chunks → Anthropic's exact event sequence: a state machine fed one chunk at a time.

``message_start`` (``content: []``; usage with the input tokens) goes out with the first upstream
chunk, so that it can carry the upstream's input count when that chunk brings one; otherwise
(OpenAI-style upstreams report usage only at the end) it carries the gateway's estimate of the
prompt, and ``message_delta`` at the end repeats every usage field with the real counts, which the
SDK's accumulator takes over. In between, one block at a time, indices 0, 1, 2...: reasoning text
→ a ``thinking`` block (``thinking_delta``; an Anthropic upstream's signature → ``signature_delta``
before its ``content_block_stop``), ``redacted_thinking`` blocks whole, text → a ``text`` block
(``text_delta``), each tool call → its own ``tool_use`` block (``input_json_delta``). A Gemini
upstream's signatures ride in thinking blocks as ``anthropic_answer`` writes them: the answer's as
a ``signature_delta`` of the open thinking block (or of a block of its own), a call's in a
signature-only thinking block just before the call. A block is closed before the next opens;
then ``message_delta`` (stop reason, cumulative usage) and ``message_stop``. A failure after the
commit is one ``event: error``.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmrelay.api.anthropic_answer import gemini_signature, stop_reason, usage_payload
from llmrelay.api.asgi import SSE_HEADERS, Headers
from llmrelay.api.signatures import gemini_for_anthropic
from llmrelay.core.chunks import RawChunk
from llmrelay.core.errors import GatewayError
from llmrelay.core.exchange import Exchange
from llmrelay.core.tokens import estimate_prompt_tokens
from llmrelay.core.types import JSONObject, Usage
from llmrelay.providers.canonical import REASONING_CONTENT, THINKING_BLOCKS

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_THINKING_START: JSONObject = {"type": "thinking", "thinking": "", "signature": ""}


def event(name: bytes, payload: JSONObject) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_payload(error: GatewayError) -> JSONObject:
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


class MessageEncoder:
    """One stream's state: which block is open, which block each tool call streams into."""

    __slots__ = (
        "_called",
        "_exchange",
        "_finish",
        "_index",
        "_matched",
        "_open",
        "_started",
        "_stops",
        "_tools",
    )

    def __init__(self, exchange: Exchange, stops: list[str]) -> None:
        self._exchange = exchange
        self._stops = stops
        self._started = False
        self._index = -1
        self._open: str | None = None
        self._tools: dict[int, int] = {}
        self._called = False
        self._finish: str | None = None
        self._matched: Any = None

    @property
    def headers(self) -> Headers:
        return SSE_HEADERS

    def encode_raw(self, chunk: RawChunk) -> bytes:
        return b"".join([self.encode(parsed) for parsed in chunk.parse_all()])

    def encode(self, chunk: JSONObject) -> bytes:
        out = bytearray()
        if not self._started:
            out += self._message_start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # an Anthropic message has one answer
            delta = choice.get("delta") or {}
            reasoning = delta.get(REASONING_CONTENT)
            if reasoning:
                out += self._open_block("thinking", dict(_THINKING_START))
                out += self._delta({"type": "thinking_delta", "thinking": reasoning})
            for block in delta.get(THINKING_BLOCKS) or ():
                if isinstance(block, dict):
                    out += self._signed_block(block)
            signature = gemini_signature(delta)
            if signature is not None:
                out += self._gemini_signature(signature, call=False)
            text = delta.get("content") or delta.get("refusal")
            if text:
                out += self._open_block("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for position, call in enumerate(delta.get("tool_calls") or ()):
                out += self._tool_call(call, position)
            finish = choice.get("finish_reason")
            if finish:
                self._finish = finish
                self._matched = choice.get("stop_reason")
                out += self._close_block()
        return bytes(out)

    def close(self, usage: Usage) -> bytes:
        out = bytearray()
        if not self._started:
            out += self._message_start()
        out += self._close_block()
        reason, sequence = stop_reason(self._finish, self._called, self._matched, self._stops)
        out += event(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage_payload(usage),
            },
        )
        out += _STOP_EVENT
        return bytes(out)

    def fail(self, error: GatewayError) -> bytes:
        return event(b"error", error_payload(error))

    # -- the states -------------------------------------------------------------------------

    def _message_start(self) -> bytes:
        self._started = True
        exchange = self._exchange
        usage = exchange.usage
        if usage is None:
            usage = Usage(prompt_tokens=estimate_prompt_tokens(exchange.messages or []))
        start_usage = usage_payload(usage)
        start_usage["output_tokens"] = 0
        model = exchange.model.id if exchange.model is not None else exchange.requested_model
        message: JSONObject = {
            "id": exchange.id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        return event(b"message_start", {"type": "message_start", "message": message})

    def _open_block(self, kind: str, start: JSONObject, *, fresh: bool = False) -> bytes:
        if self._open == kind and kind != "tool_use" and not fresh:
            return b""
        out = self._close_block()
        self._index += 1
        self._open = kind
        payload = {"type": "content_block_start", "index": self._index, "content_block": start}
        return out + event(b"content_block_start", payload)

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return event(b"content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _delta(self, delta: JSONObject, index: int | None = None) -> bytes:
        payload = {
            "type": "content_block_delta",
            "index": self._index if index is None else index,
            "delta": delta,
        }
        return event(b"content_block_delta", payload)

    def _signed_block(self, block: JSONObject) -> bytes:
        """A whole block from an Anthropic upstream, sent when its own block stopped."""
        if block.get("type") == "redacted_thinking":
            start = {"type": "redacted_thinking", "data": block.get("data") or ""}
            return self._open_block("redacted_thinking", start) + self._close_block()
        out = b""
        if self._open != "thinking":
            # Its text did not stream as reasoning deltas: send the block whole.
            out = self._open_block("thinking", dict(_THINKING_START))
            if block.get("thinking"):
                out += self._delta({"type": "thinking_delta", "thinking": block["thinking"]})
        if block.get("signature"):
            out += self._delta({"type": "signature_delta", "signature": block["signature"]})
        return out + self._close_block()

    def _gemini_signature(self, signature: str, *, call: bool) -> bytes:
        marked = gemini_for_anthropic(signature, call=call)
        out = b""
        if call or self._open != "thinking":
            out = self._open_block("thinking", dict(_THINKING_START), fresh=True)
        out += self._delta({"type": "signature_delta", "signature": marked})
        return out + self._close_block()

    def _tool_call(self, call: JSONObject, position: int) -> bytes:
        position = call.get("index", position)
        function = call.get("function") or {}
        out = b""
        block = self._tools.get(position)
        if block is None:
            self._called = True
            signature = gemini_signature(call)
            if signature is not None:
                out = self._gemini_signature(signature, call=True)
            start: JSONObject = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{self._exchange.id}_{position}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open_block("tool_use", start)
            block = self._tools[position] = self._index
        arguments = function.get("arguments")
        if arguments:
            # An interleaved fragment of an earlier call (no known upstream does this) still
            # goes to that call's block: the SDK places deltas by index, so nothing is lost.
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += self._delta(delta, block)
        return out
