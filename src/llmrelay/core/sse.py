"""Server-Sent Events at the two edges: an incremental decoder for upstream streams, and encoders.

The decoder follows the WHATWG event-stream rules: lines end in CRLF, LF or CR (a CRLF split across
two reads is still one terminator); ``:`` lines are comments; ``data:`` lines of one event are
joined with ``\\n``; a blank line dispatches; ``event:``/``id:``/``retry:`` are fields, never data.
It works on bytes, so a multi-byte UTF-8 character split across reads is reassembled before anything
decodes it (terminators are ASCII and can never fall inside one). Unlike a browser it also
dispatches an event left pending when the stream ends without a final blank line, because real
servers do that and the last event usually carries the usage.
"""

from __future__ import annotations

from typing import NamedTuple

from llmrelay.core.errors import UpstreamProtocolError

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024

_LF = 10
_COLON = 58
_SPACE = 32


class SSEEvent(NamedTuple):
    event: str | None
    data: bytes


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    __slots__ = ("_buf", "_data", "_event", "_max_line", "_skip_lf", "last_event_id")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._skip_lf = False
        self._max_line = max_line_bytes
        self.last_event_id: str | None = None

    @property
    def idle(self) -> bool:
        """Nothing pending: the next byte fed starts a line of a new event."""
        return not self._buf and not self._data and self._event is None and not self._skip_lf

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if not chunk:
            return events
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        size = len(buf)
        start = 0
        if b"\r" not in buf:
            start = self._feed_lf(buf, size, events)
        while start < size:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, size if lf == -1 else lf)
            if cr != -1:
                end = cr
                if cr + 1 < size:
                    nxt = cr + 2 if buf[cr + 1] == _LF else cr + 1
                else:
                    nxt = size
                    self._skip_lf = True
            elif lf != -1:
                end = lf
                nxt = lf + 1
            else:
                break
            self._line(buf[start:end], events)
            start = nxt
        self._buf = buf[start:] if start < size else b""
        if len(self._buf) > self._max_line:
            raise UpstreamProtocolError(
                f"upstream sent an SSE line longer than {self._max_line} bytes"
            )
        return events

    def _feed_lf(self, buf: bytes, size: int, events: list[SSEEvent]) -> int:
        """The lines of ``buf`` (no CR in it) up to its last LF; where the rest starts.

        An event that is one ``data:`` line and its blank line, with nothing pending before it
        (what OpenAI-style upstreams send), is sliced out in one step; any other line goes
        through ``_line``.
        """
        start = 0
        append = events.append
        new = tuple.__new__
        while True:
            lf = buf.find(b"\n", start)
            if lf == -1:
                return start
            nxt = lf + 1
            if (
                nxt < size
                and buf[nxt] == _LF
                and buf.startswith(b"data:", start)
                and not self._data
                and self._event is None
            ):
                value = start + 6 if buf[start + 5] == _SPACE else start + 5
                append(new(SSEEvent, (None, buf[value:lf])))
                start = nxt + 1
            else:
                self._line(buf[start:lf], events)
                start = nxt

    def close(self) -> list[SSEEvent]:
        """End of stream: complete a final unterminated line and a pending event."""
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, events)
            self._buf = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEEvent(self._event, data))
                self._data = []
            self._event = None
            return
        if line[0] == _COLON:
            return
        colon = line.find(b":")
        if colon == -1:
            field, value = line, b""
        else:
            field = line[:colon]
            value = line[colon + 1 :]
            if value and value[0] == _SPACE:
                value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id" and b"\0" not in value:
            self.last_event_id = value.decode("utf-8", "replace")
        # `retry:` and unknown fields are ignored, as the spec says.


def encode_data(payload: bytes) -> bytes:
    """One ``data:`` event (the OpenAI and Gemini surfaces)."""
    return b"data: " + payload + b"\n\n"


def encode_event(name: bytes, payload: bytes) -> bytes:
    """One named event (the Anthropic surface)."""
    return b"event: " + name + b"\ndata: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
