"""Plain content chunks of an OpenAI-type upstream, relayed to an OpenAI client as their bytes.

Most of a stream is chunks that differ from the one before only in the text of their delta:
``{"id":..,"object":"chat.completion.chunk","created":..,"model":..,<extras>,"choices":[{"index":0,
"delta":{"content":"<text>"},"logprobs":null,"finish_reason":null}],"usage":null}``. Parsing each
into dicts and serialising it again costs more than the rest of the relay. Instead, the first such
chunk (parsed and checked whole) teaches a :class:`PlainShape`: the bytes before the text and after
it. A later chunk whose bytes start and end with exactly those, and whose middle is a valid JSON
string, is that same object with another text: it becomes a :class:`RawChunk` without being parsed,
metered by the length of its text, and written to the client as the gateway's own ``id``/``object``/
``created``/``model`` followed by the upstream's bytes (``"usage":null`` dropped, as the parsed path
drops it). Anything else (the role chunk, tool calls, the finish and usage chunks, errors, other
hosts' layouts) takes the parsed path, so what the client receives means the same either way.

OpenAI's ``obfuscation`` field (random padding, a new value in every chunk) may end the object;
it is passed through, as the parsed path passes it.
"""

from __future__ import annotations

import re
from typing import NamedTuple, TypeAlias

import orjson

from llmrelay.core.types import JSONObject

_CONTENT = b'"delta":{"content":"'
_USAGE = b',"usage":null'
_OBFUSCATION = b',"obfuscation":"'
_HEAD_OBJECT = b',"object":"chat.completion.chunk","created":'
# What a JSON string body may hold without a closer look: no quote, escape or control character.
_UNSAFE = re.compile(rb'["\\\x00-\x1f]')
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)


class PlainShape:
    """The bytes around the text of one stream's plain chunks, and what replaces them."""

    __slots__ = ("after_head", "index", "obfuscated", "prefix", "suffix", "suffix_out")

    def __init__(
        self,
        prefix: bytes,
        after_head: bytes,
        suffix: bytes,
        suffix_out: bytes,
        index: int,
        obfuscated: bool,
    ) -> None:
        self.prefix = prefix
        """The upstream's bytes up to the text's opening quote (included)."""
        self.after_head = after_head
        """``prefix`` after the upstream's ``id``/``object``/``created``/``model``, as relayed."""
        self.suffix = suffix
        """The upstream's bytes from the text's closing quote to the ``obfuscation`` field, or to
        the end when the chunks carry none."""
        self.suffix_out = suffix_out
        """``suffix`` as relayed (without ``"usage":null``)."""
        self.index = index
        """The choice the text belongs to."""
        self.obfuscated = obfuscated


class RawChunk(NamedTuple):
    """A plain content chunk in its upstream bytes: prefix + ``text`` + suffix + ``tail``.

    ``chars`` is the length of the decoded text (what metering counts); ``tail`` is the chunk's
    ``obfuscation`` field and closing brace when it has one, else empty.
    """

    data: bytes
    shape: PlainShape
    text: bytes
    tail: bytes
    chars: int

    def parse(self) -> JSONObject:
        """The canonical chunk, for a consumer that needs the dict (usage dropped, as metered)."""
        chunk: JSONObject = orjson.loads(self.data)
        chunk.pop("usage", None)
        return chunk


_new_raw = tuple.__new__


Chunk: TypeAlias = JSONObject | RawChunk
"""What a provider's stream yields: a chunk dict, or a plain chunk kept as bytes (only to a caller
that asked for them, see ``UpstreamRequest.raw_chunks``)."""


def string_chars(body: bytes) -> int | None:
    """The length of the text a JSON string body (without its quotes) encodes; None if it is not
    a valid one."""
    if _UNSAFE.search(body) is None:
        if body.isascii():
            return len(body)
        try:
            return len(body.decode())
        except UnicodeDecodeError:
            return None
    try:
        text = orjson.loads(b'"' + body + b'"')
    except orjson.JSONDecodeError:
        return None
    return len(text) if type(text) is str else None


class PlainChunks:
    """One stream's recogniser: :meth:`match` before parsing an event, :meth:`learn` after."""

    __slots__ = ("_shape",)

    def __init__(self) -> None:
        self._shape: PlainShape | None = None

    def match(self, data: bytes) -> RawChunk | None:
        """``data`` as a plain chunk of the known shape, without parsing it; else None."""
        shape = self._shape
        if shape is None or not data.startswith(shape.prefix):
            return None
        end = len(data)
        tail = b""
        if shape.obfuscated:
            cut = data.rfind(_OBFUSCATION)
            if cut == -1 or not data.endswith(b'"}') or _UNSAFE.search(data, cut + 16, end - 2):
                return None
            tail = data[cut:]
            if not tail.isascii():
                return None
            end = cut
        start = len(shape.prefix)
        stop = end - len(shape.suffix)
        if stop < start or not data.startswith(shape.suffix, stop):
            return None
        text = data[start:stop]
        chars = string_chars(text)
        if chars is None:
            return None
        return _new_raw(RawChunk, (data, shape, text, tail, chars))

    def learn(self, data: bytes, chunk: JSONObject) -> RawChunk | None:
        """After ``data`` was parsed (and checked) into ``chunk``: if it is a plain chunk, remember
        its shape and return it as one; else None."""
        shape = _shape_of(data, chunk)
        if shape is None:
            return None
        self._shape = shape
        return self.match(data)


def _shape_of(data: bytes, chunk: JSONObject) -> PlainShape | None:
    """The shape of ``data`` if ``chunk`` (its parse) is one text delta of one choice, with its
    fields laid out as OpenAI does; else None."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or chunk.get("usage") is not None:
        return None
    choice = choices[0]
    if type(choice) is not dict:
        return None
    delta = choice.get("delta")
    if (
        type(delta) is not dict
        or len(delta) != 1
        or type(delta.get("content")) is not str
        or "finish_reason" not in choice
        or choice["finish_reason"] is not None
    ):
        return None
    index = choice.get("index", 0)
    ident, created, model = chunk.get("id"), chunk.get("created"), chunk.get("model")
    if type(ident) is not str or type(created) is not int or type(model) is not str:
        return None
    if type(index) is not int:
        return None
    head = (
        b'{"id":' + orjson.dumps(ident) + _HEAD_OBJECT + b"%d" % created + b',"model":'
    ) + orjson.dumps(model)
    if not data.startswith(head) or data[len(head) : len(head) + 1] != b",":
        return None
    for key in (b'"id":', b'"created":', b'"model":', b'"object":', b'"choices":'):
        if data.count(key) != 1:
            return None  # a repeated key: whichever the client would read is not clear
    at = data.find(_CONTENT, len(head))
    if at == -1 or data.find(_CONTENT, at + 1) != -1:
        return None
    start = at + len(_CONTENT)
    stop = _STRING_BODY.match(data, start).end()  # type: ignore[union-attr]
    if data[stop : stop + 2] != b'"}':
        return None
    try:
        if orjson.loads(data[start - 1 : stop + 1]) != delta["content"]:
            return None
    except orjson.JSONDecodeError:
        return None
    rest = data[stop:]
    obfuscation = chunk.get("obfuscation")
    obfuscated = False
    if obfuscation is not None:
        if type(obfuscation) is not str:
            return None
        field = _OBFUSCATION + orjson.dumps(obfuscation)[1:] + b"}"
        if not rest.endswith(field):
            return None
        rest = rest[: -len(field)]
        obfuscated = True
    prefix = data[:start]
    after_head = prefix[len(head) :]
    suffix_out = rest
    if "usage" in chunk:
        # Dropped as the parsed path drops it: exactly one, null, where it can be cut out.
        if data.count(b'"usage"') != 1:
            return None
        if _USAGE in rest:
            suffix_out = rest.replace(_USAGE, b"", 1)
        elif _USAGE in after_head:
            after_head = after_head.replace(_USAGE, b"", 1)
        else:
            return None
    return PlainShape(prefix, after_head, rest, suffix_out, index, obfuscated)
