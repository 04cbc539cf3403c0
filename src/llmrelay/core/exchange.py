"""One request's journey through the gateway, as the ledger will remember it."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

from llmrelay.accounting.keys import CachedKey
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.chunks import Chunk, RawChunk
from llmrelay.core.types import JSONObject, LedgerStatus, Usage

# 96 random bits per id from a generator seeded by the OS once per process: an id only has to be
# unique (it is the ledger's key) and unguessable enough to be no handle on anything (/v1/generation
# answers only the key's own rows). os.urandom per request was a system call on the hot path.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))  # a forked worker's own


def new_request_id() -> str:
    return f"chatcmpl-{_ids.getrandbits(96):024x}"


@dataclass(slots=True)
class Exchange:
    key: CachedKey
    surface: str
    id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    requested_model: str | None = None
    model: ModelEntry | None = None
    basket: str | None = None
    route_confidence: float | None = None
    stream: bool = False
    messages: list[JSONObject] | None = None
    usage: Usage | None = None
    output_chars: int = 0
    first_token_at: float | None = None
    status: LedgerStatus = "ok"
    http_status: int = 200
    error_type: str | None = None
    client_gone: bool = False
    finished: bool = False

    @property
    def provider(self) -> str | None:
        return self.model.provider if self.model is not None else None

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def observe_chunk(self, chunk: Chunk) -> None:
        """Take usage off an upstream chunk and count what it carries, for metering."""
        if isinstance(chunk, RawChunk):
            self.observe_text(chunk.chars)
            return
        usage = chunk.pop("usage", None)
        if usage:
            self.usage = Usage.from_openai(usage)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not delta:
                continue
            content = delta.get("content")
            if content:
                self.output_chars += len(content)
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
            reasoning = delta.get("reasoning_content")
            if reasoning:
                self.output_chars += len(reasoning)
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
            calls = delta.get("tool_calls")
            if calls:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                for call in calls:
                    function = call.get("function")
                    if function:
                        self.output_chars += len(function.get("arguments") or "") + len(
                            function.get("name") or ""
                        )

    def observe_text(self, chars: int) -> None:
        """``chars`` characters of output text (a plain chunk's, already counted)."""
        if chars:
            self.output_chars += chars
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
