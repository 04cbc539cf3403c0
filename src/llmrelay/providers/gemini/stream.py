"""Gemini's SSE stream → canonical chunks: a state machine fed one ``GenerateContentResponse``.

Each event is a whole response object holding the next parts of each candidate. A candidate's
first appearance opens its choice (role chunk); its parts stream as ``reasoning_content``,
``content`` or one whole tool call each (Gemini never splits a ``functionCall``), numbered per
candidate so parallel calls stay distinct; ``finishReason`` closes the choice. ``usageMetadata``
is cumulative and repeated, so only the last one counts, sent once in a final usage chunk.
"""

from __future__ import annotations

import time

from llmrelay.core.errors import UpstreamProtocolError
from llmrelay.core.types import JSONObject
from llmrelay.providers.canonical import ChunkFactory
from llmrelay.providers.gemini.convert import CandidateReader, usage_from_wire


class GenerateStream:
    __slots__ = ("_chunks", "_finished", "_provider", "_readers", "_request_id", "_usage")

    def __init__(self, provider: str, request_id: str) -> None:
        self._provider = provider
        self._request_id = request_id
        self._chunks: ChunkFactory | None = None
        self._readers: dict[int, CandidateReader] = {}
        self._finished: set[int] = set()
        self._usage: JSONObject | None = None

    def feed(self, response: JSONObject) -> list[JSONObject]:
        if self._chunks is None:
            self._chunks = ChunkFactory(
                str(response.get("responseId") or ""),
                str(response.get("modelVersion") or ""),
                int(time.time()),
            )
        chunks = self._chunks
        if isinstance(response.get("usageMetadata"), dict):
            self._usage = response["usageMetadata"]
        out: list[JSONObject] = []
        for candidate in response.get("candidates") or ():
            index = int(candidate.get("index") or 0)
            reader = self._readers.get(index)
            if reader is None:
                reader = self._readers[index] = CandidateReader(self._request_id, index)
                out.append(chunks.delta({"role": "assistant", "content": ""}, index=index))
            parts = (candidate.get("content") or {}).get("parts") or []
            out.extend(chunks.delta(delta, index=index) for delta in reader.deltas(parts))
            reason = candidate.get("finishReason")
            if reason and index not in self._finished:
                self._finished.add(index)
                out.append(
                    chunks.delta({}, index=index, finish_reason=reader.finish_reason(reason))
                )
        return out

    def finish(self) -> list[JSONObject]:
        """At the end of the body: the usage chunk, or a protocol error if no choice finished."""
        if self._chunks is None or not self._finished:
            raise UpstreamProtocolError(
                f"provider {self._provider!r} ended the stream before a finish reason",
                provider=self._provider,
            )
        if self._usage is None:
            return []
        return [self._chunks.usage(usage_from_wire(self._usage))]
