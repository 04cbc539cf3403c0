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

Consecutive plain chunks of one shape travel as one :class:`RawChunk` (a run of texts), so that
metering and writing them cost a few operations per upstream read rather than per chunk; and
:meth:`PlainChunks.scan` recognises them in the read's own buffer, before the SSE decoder would
cut them out one by one.
"""

from __future__ import annotations

import re
from typing import TypeAlias

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

    __slots__ = ("after_head", "event", "index", "obfuscated", "prefix", "suffix", "suffix_out")

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
        self.event = b"data: " + prefix
        """``prefix`` as an SSE event of one ``data:`` line starts."""
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


class RawChunk:
    """Consecutive plain content chunks of one shape, as their texts (the JSON string bodies).

    Chunk ``i`` is ``shape.prefix + texts[i] + shape.suffix`` followed by ``tails[i]`` (its
    ``obfuscation`` field and the closing brace) when the shape has one (``tails`` is None
    otherwise); ``chars`` is the length of all the decoded texts (what metering counts).
    """

    __slots__ = ("chars", "shape", "tails", "texts")

    def __init__(self, shape: PlainShape) -> None:
        self.shape = shape
        self.texts: list[bytes] = []
        self.tails: list[bytes] | None = [] if shape.obfuscated else None
        self.chars = 0

    def __len__(self) -> int:
        return len(self.texts)

    def data(self, i: int) -> bytes:
        """Chunk ``i``'s upstream bytes."""
        shape = self.shape
        tail = self.tails[i] if self.tails is not None else b""
        return shape.prefix + self.texts[i] + shape.suffix + tail

    def parse(self, i: int) -> JSONObject:
        """Chunk ``i`` as the canonical dict, for a consumer that needs it (usage dropped, as
        metering drops it)."""
        chunk: JSONObject = orjson.loads(self.data(i))
        chunk.pop("usage", None)
        return chunk

    def parse_all(self) -> list[JSONObject]:
        return [self.parse(i) for i in range(len(self.texts))]


Chunk: TypeAlias = JSONObject | RawChunk
"""What a provider's stream yields: a chunk dict, or a run of plain chunks kept as bytes (only to a
caller that asked for them, see ``UpstreamRequest.raw_chunks``)."""


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
    """One stream's recogniser: :meth:`scan` a read's buffer, :meth:`add` an event before parsing
    it, :meth:`learn` from one after. Each appends what it recognises to a batch, extending the
    batch's last ``RawChunk`` when it has the same shape."""

    __slots__ = ("_shape",)

    def __init__(self) -> None:
        self._shape: PlainShape | None = None

    def add(self, data: bytes, batch: list[Chunk]) -> bool:
        """Append ``data`` (an event's data) if it is a plain chunk of the known shape, without
        parsing it; whether it was."""
        shape = self._shape
        if shape is None or not data.startswith(shape.prefix):
            return False
        end = len(data)
        tail = b""
        if shape.obfuscated:
            cut = data.rfind(_OBFUSCATION)
            if cut == -1 or not data.endswith(b'"}') or _UNSAFE.search(data, cut + 16, end - 2):
                return False
            tail = data[cut:]
            if not tail.isascii():
                return False
            end = cut
        start = len(shape.prefix)
        stop = end - len(shape.suffix)
        if stop < start or not data.startswith(shape.suffix, stop):
            return False
        text = data[start:stop]
        chars = string_chars(text)
        if chars is None:
            return False
        run = _run(batch, shape)
        run.texts.append(text)
        if run.tails is not None:
            run.tails.append(tail)
        run.chars += chars
        return True

    def scan(self, buf: bytes, pos: int, batch: list[Chunk]) -> int:
        """Append the plain chunks of the known shape that ``buf`` holds from ``pos`` on, as
        complete one-line ``data:`` events, up to the first event that is not one; where that
        event starts. ``pos`` must be where a line starts, with nothing pending before it."""
        shape = self._shape
        if shape is None:
            return pos
        event = shape.event
        head = len(event)
        suffix = shape.suffix
        run: RawChunk | None = None
        while buf.startswith(event, pos):
            end = buf.find(b"\n\n", pos + head)
            if end == -1:
                break
            if shape.obfuscated:
                if not self.add(buf[pos + 6 : end], batch):
                    break
            else:
                stop = end - len(suffix)
                if stop < pos + head or not buf.startswith(suffix, stop):
                    break
                text = buf[pos + head : stop]
                chars = string_chars(text)
                if chars is None:
                    break
                if run is None:
                    run = _run(batch, shape)
                run.texts.append(text)
                run.chars += chars
            pos = end + 2
        return pos

    def learn(self, data: bytes, chunk: JSONObject, batch: list[Chunk]) -> bool:
        """After ``data`` was parsed (and checked) into ``chunk``: if it is a plain chunk,
        remember its shape and append it; whether it was."""
        shape = _shape_of(data, chunk)
        if shape is None:
            return False
        self._shape = shape
        return self.add(data, batch)


def _run(batch: list[Chunk], shape: PlainShape) -> RawChunk:
    """The batch's last item if it is a run of ``shape``, else a new one appended."""
    if batch:
        last = batch[-1]
        if type(last) is RawChunk and last.shape is shape:
            return last
    run = RawChunk(shape)
    batch.append(run)
    return run


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
