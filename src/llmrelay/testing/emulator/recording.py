"""What the emulator saw: one :class:`RecordedRequest` per request, kept by a :class:`Recorder`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_POLL_SECONDS = 0.005


@dataclass(slots=True)
class RecordedRequest:
    """One request as the upstream saw it, updated while it is answered.

    Times are ``time.monotonic()`` seconds. ``chunks_written`` counts token chunks (one per
    completion token) and ``events_written`` every write of a frame (SSE event, array piece, body).
    ``completed`` is true when the whole answer was written; ``aborted`` when the emulator itself
    reset the connection (``drop``); ``client_disconnected`` when the client went away first.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    model: str | None = None
    status: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_byte_at: float | None = None
    finished_at: float | None = None
    client_disconnected: bool = False
    disconnected_at: float | None = None
    bytes_written: int = 0
    events_written: int = 0
    chunks_written: int = 0
    completed: bool = False
    aborted: bool = False

    @property
    def finished(self) -> bool:
        """Whether the emulator is done with this request (answered, failed or abandoned)."""
        return self.finished_at is not None

    def mark_disconnected(self) -> None:
        """Note that the client closed the connection (idempotent)."""
        if not self.client_disconnected and not self.aborted:
            self.client_disconnected = True
            self.disconnected_at = time.monotonic()


@dataclass(slots=True)
class Recorder:
    """The requests one emulator app has seen, oldest first.

    With ``enabled=False`` nothing is kept (a long-running ``mock-upstream`` or a benchmark would
    otherwise grow without bound); each request is still tracked while it is answered.
    """

    requests: list[RecordedRequest] = field(default_factory=list)
    enabled: bool = True

    def add(self, record: RecordedRequest) -> None:
        """Keep ``record`` (when enabled)."""
        if self.enabled:
            self.requests.append(record)

    def clear(self) -> None:
        """Forget every request seen so far."""
        self.requests.clear()

    async def wait_for(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for polling, part of the test API
        *,
        finished: bool = True,
    ) -> list[RecordedRequest]:
        """Wait until ``count`` requests arrived (and, by default, are finished); return them.

        Raises :class:`TimeoutError` naming what was seen when ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests[:count]
            if len(seen) == count and (not finished or all(r.finished for r in seen)):
                return seen
            if time.monotonic() >= deadline:
                done = sum(r.finished for r in self.requests)
                raise TimeoutError(
                    f"expected {count} request(s) within {timeout}s; "
                    f"saw {len(self.requests)}, {done} finished"
                )
            await asyncio.sleep(_POLL_SECONDS)


RECORDER_KEY = web.AppKey("llmrelay_emulator_recorder", Recorder)
RECORD_KEY = web.RequestKey("llmrelay_emulator_record", RecordedRequest)
