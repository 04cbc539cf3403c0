"""Parse an emulator model name into the :class:`Behaviour` it asks for.

One emulator serves every scenario: the behaviour is chosen by the model name the client sends.

Grammar::

    model   := base ( "+" option )*
    option  := name | name "=" value

``base`` is any text without ``+`` (it may contain ``/``); it is echoed back as the model. Options
(all optional, combinable, in any order; unknown names and unparsable values are ignored; a
repeated option keeps its last value):

============== =================================================================================
``chunks=N``   content chunks in the answer, one completion token each (default 8)
``delay=MS``   milliseconds between two token chunks of a stream
``first=MS``   milliseconds before anything is sent (no headers either): the time to first token
``drop=N``     stream: after N token chunks, reset the TCP connection (no terminator);
               non-stream: send the headers and half the body, then reset
``status=C``   answer HTTP status C (400-599) with the provider's own error body
``retry_after=S`` add ``Retry-After: S`` to the error answer
``error_first`` 200, then a stream whose first event is the provider's error event
``error_mid=N`` the provider's error event after N token chunks (then the stream ends)
``tools=N``    answer with N parallel tool calls (no text); arguments stream in fragments
``utf8``       the answer contains multi-byte characters (é, 日本, emoji)
``bytewise``   write the body one byte per TCP write, so UTF-8 sequences and lines split everywhere
``no_usage``   never report usage
``html``       status 502 with an HTML body, as a misconfigured proxy would answer
``hang``       accept the request and never answer; ends when the client disconnects
``comments``   OpenAI format only: SSE comments and ``event:``/``id:``/``retry:`` lines, like
               OpenRouter
``reasoning``  reasoning before the answer (``reasoning=N`` chunks, default 4)
``cached=N``   report N cached prompt tokens (clamped to the prompt size)
``malformed=N`` after N token chunks, one ``data:`` line that is not valid JSON (then the stream
               goes on)
``crlf``       CRLF line endings in the stream
``stop=R``     the finish reason to report, in OpenAI terms (``stop``, ``length``,
               ``content_filter``, ``tool_calls``) or in the provider's own (passed through)
============== =================================================================================

Examples: ``gpt-4o-mini``, ``emu+chunks=50+delay=20``, ``x+status=429+retry_after=7``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNKS = 8
DEFAULT_REASONING = 4

_INT_OPTIONS = {
    "chunks": "chunks",
    "delay": "delay_ms",
    "first": "first_ms",
    "drop": "drop",
    "status": "status",
    "retry_after": "retry_after",
    "error_mid": "error_mid",
    "tools": "tools",
    "cached": "cached",
    "malformed": "malformed",
}
_FLAG_OPTIONS = {
    "error_first": "error_first",
    "utf8": "utf8",
    "bytewise": "bytewise",
    "no_usage": "no_usage",
    "html": "html",
    "hang": "hang",
    "comments": "comments",
    "crlf": "crlf",
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the emulator does for one request; see the module docstring for the grammar."""

    base: str
    chunks: int = DEFAULT_CHUNKS
    delay_ms: int = 0
    first_ms: int = 0
    drop: int | None = None
    status: int | None = None
    retry_after: int | None = None
    error_first: bool = False
    error_mid: int | None = None
    tools: int = 0
    utf8: bool = False
    bytewise: bool = False
    no_usage: bool = False
    html: bool = False
    hang: bool = False
    comments: bool = False
    reasoning: int = 0
    cached: int = 0
    malformed: int | None = None
    crlf: bool = False
    stop: str | None = None

    @property
    def streams_error(self) -> bool:
        """Whether a stream carries a provider error event (first or mid-stream)."""
        return self.error_first or self.error_mid is not None


def _non_negative_int(value: str) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def parse_behaviour(model: str) -> Behaviour:
    """Parse ``model`` (``base+opt+opt=value...``) into a :class:`Behaviour`.

    Never fails: unknown options and bad values are ignored, so any model name is valid.
    """
    base, *options = model.split("+")
    values: dict[str, object] = {}
    for option in options:
        name, has_value, raw = option.partition("=")
        name = name.strip().lower()
        if name in _INT_OPTIONS and has_value:
            number = _non_negative_int(raw)
            if number is not None and (name != "status" or 400 <= number <= 599):
                values[_INT_OPTIONS[name]] = number
        elif name in _FLAG_OPTIONS and not has_value:
            values[_FLAG_OPTIONS[name]] = True
        elif name == "reasoning":
            count = _non_negative_int(raw) if has_value else DEFAULT_REASONING
            if count is not None:
                values["reasoning"] = count
        elif name == "stop" and raw:
            values["stop"] = raw
    return Behaviour(base=base, **values)  # type: ignore[arg-type]
