"""The provider contract: ``complete``, ``stream``, ``close``; everything else is the provider's.

A provider receives the canonical (OpenAI-shaped) request and answers canonical completions or
chunks. It translates its wire format at its edge and its failures into the error tree at exactly
one place. ``stream_batches`` is an async generator of chunk *batches*, one batch per upstream read
that produced any (a fast model or a burst after a pause puts many events in one read, and the
gateway then relays them in one write to its client); a provider may yield the stream's first chunk
alone, ahead of the rest of its read, so that the first token does not wait for the parsing of the
rest. Its first ``__anext__`` makes the upstream
call, so an error known before the first chunk (a 429, an error-first stream) surfaces there,
before the gateway commits its response; an error after some chunks of a read is raised after
those chunks were yielded; ``aclose()`` closes the upstream connection at once. ``stream`` is the
same chunks one by one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.chunks import Chunk
from llmrelay.core.types import ChatRequest, Completion
from llmrelay.providers.capabilities import ProviderCapabilities


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    request: ChatRequest
    model: ModelEntry
    request_id: str
    raw_chunks: bool = False
    """The caller relays to an OpenAI client and takes ``RawChunk`` items (``core/chunks.py``):
    a provider whose wire format is OpenAI's may yield its plain content chunks as their bytes.
    Any other provider ignores it."""


class Provider(ABC):
    """One configured upstream (an entry of ``providers:`` in the config)."""

    def __init__(self, name: str, capabilities: ProviderCapabilities) -> None:
        self.name = name
        self.capabilities = capabilities

    @abstractmethod
    async def complete(self, call: UpstreamRequest) -> Completion:
        """One whole answer in the ``chat.completion`` shape."""

    @abstractmethod
    def stream_batches(self, call: UpstreamRequest) -> AsyncIterator[Sequence[Chunk]]:
        """Non-empty lists of ``chat.completion.chunk`` objects, one per upstream read; usage,
        when known, on a chunk's ``usage`` key. ``RawChunk`` items only if ``call.raw_chunks``."""

    async def stream(self, call: UpstreamRequest) -> AsyncIterator[Chunk]:
        """The chunks of ``stream_batches`` one at a time."""
        batches = self.stream_batches(call)
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def count_tokens(self, call: UpstreamRequest) -> int | None:
        """The exact input token count of ``call``'s prompt from the provider's own counter.

        None (the default) when the provider has none: the gateway then says so rather than
        answering its estimate as if it were a count.
        """
        return None

    async def close(self) -> None:  # noqa: B027 - most providers hold nothing of their own
        """Release what the provider holds (the shared HTTP client is closed by the app)."""
