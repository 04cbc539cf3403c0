"""Anthropic's event stream → canonical chunks: a small state machine fed one event at a time.

``message_start`` opens the answer (role chunk; input usage); each content block streams as its
kind says — text as ``content``, thinking as ``reasoning_content`` (then the whole signed block in
``thinking_blocks`` when it stops), ``tool_use`` as a tool call whose ``index`` counts tool blocks
only, so parallel calls stay distinct; ``message_delta`` carries the stop reason and cumulative
usage; ``message_stop`` ends it with the finish chunk and one usage chunk. Unknown events and
block types are ignored, as Anthropic's versioning policy asks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmrelay.core.errors import UpstreamProtocolError
from llmrelay.core.types import JSONObject
from llmrelay.providers.anthropic.convert import finish_reason, usage_from_wire
from llmrelay.providers.canonical import REASONING_CONTENT, THINKING_BLOCKS, ChunkFactory


@dataclass(slots=True)
class _Block:
    kind: str
    tool_index: int = -1
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    has_arguments: bool = False


class MessageStream:
    """Feed it each decoded event; it answers the chunks that event produces."""

    __slots__ = (
        "_blocks",
        "_chunks",
        "_done",
        "_provider",
        "_stop_reason",
        "_thinking_count",
        "_tool_count",
        "_usage",
    )

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._chunks: ChunkFactory | None = None
        self._blocks: dict[int, _Block] = {}
        self._tool_count = 0
        self._thinking_count = 0
        self._usage: JSONObject = {}
        self._stop_reason: str | None = None
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: JSONObject) -> list[JSONObject]:
        kind = event.get("type")
        if kind == "message_start":
            return self._start(event.get("message") or {})
        chunks = self._chunks
        if chunks is None:
            if kind == "ping":
                return []
            raise UpstreamProtocolError(
                f"provider {self._provider!r} sent {kind!r} before message_start",
                provider=self._provider,
            )
        if kind == "content_block_start":
            return self._block_start(chunks, event)
        if kind == "content_block_delta":
            return self._block_delta(chunks, event)
        if kind == "content_block_stop":
            return self._block_stop(chunks, event)
        if kind == "message_delta":
            delta = event.get("delta") or {}
            if delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            # Cumulative counts that overwrite, as the SDK's accumulator does.
            self._usage.update(event.get("usage") or {})
            return []
        if kind == "message_stop":
            self._done = True
            out = [chunks.delta({}, finish_reason=finish_reason(self._stop_reason))]
            if self._usage:
                out.append(chunks.usage(usage_from_wire(self._usage)))
            return out
        return []  # ping, and event types newer than this module

    def _start(self, message: JSONObject) -> list[JSONObject]:
        self._chunks = ChunkFactory(
            str(message.get("id") or ""), str(message.get("model") or ""), int(time.time())
        )
        self._usage.update(message.get("usage") or {})
        return [self._chunks.delta({"role": "assistant", "content": ""})]

    def _block_start(self, chunks: ChunkFactory, event: JSONObject) -> list[JSONObject]:
        block = event.get("content_block") or {}
        kind = str(block.get("type"))
        state = _Block(kind)
        self._blocks[int(event.get("index", -1))] = state
        if kind == "text" and block.get("text"):
            return [chunks.delta({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            state.thinking.append(block["thinking"])
            return [chunks.delta({REASONING_CONTENT: block["thinking"]})]
        if kind == "redacted_thinking":
            entry = {"index": self._thinking_count, "type": kind, "data": block.get("data") or ""}
            self._thinking_count += 1
            return [chunks.delta({THINKING_BLOCKS: [entry]})]
        if kind == "tool_use":
            state.tool_index = self._tool_count
            self._tool_count += 1
            call = {
                "index": state.tool_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [chunks.delta({"tool_calls": [call]})]
        return []

    def _block_delta(self, chunks: ChunkFactory, event: JSONObject) -> list[JSONObject]:
        state = self._blocks.get(int(event.get("index", -1)))
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if state is None:
            return []
        if kind == "text_delta" and delta.get("text"):
            return [chunks.delta({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            state.thinking.append(delta["thinking"])
            return [chunks.delta({REASONING_CONTENT: delta["thinking"]})]
        if kind == "signature_delta":
            state.signature += delta.get("signature") or ""
            return []
        if kind == "input_json_delta" and state.kind == "tool_use" and delta.get("partial_json"):
            state.has_arguments = True
            fragment = {"index": state.tool_index, "function": {"arguments": delta["partial_json"]}}
            return [chunks.delta({"tool_calls": [fragment]})]
        return []

    def _block_stop(self, chunks: ChunkFactory, event: JSONObject) -> list[JSONObject]:
        state = self._blocks.pop(int(event.get("index", -1)), None)
        if state is None:
            return []
        if state.kind == "thinking":
            entry = {
                "index": self._thinking_count,
                "type": "thinking",
                "thinking": "".join(state.thinking),
                "signature": state.signature,
            }
            self._thinking_count += 1
            return [chunks.delta({THINKING_BLOCKS: [entry]})]
        if state.kind == "tool_use" and not state.has_arguments:
            # A call without arguments streams no non-empty partial_json; OpenAI clients parse
            # the arguments string, so it must at least be an empty object.
            fragment = {"index": state.tool_index, "function": {"arguments": "{}"}}
            return [chunks.delta({"tool_calls": [fragment]})]
        return []
