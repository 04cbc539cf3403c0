"""The upstream SSE decoder survives anything a real server sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrelay.core.errors import UpstreamProtocolError
from llmrelay.core.sse import DONE, SSEDecoder, SSEEvent, encode_data, encode_event


def decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def test_basic_events_and_done() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\n' + DONE
    assert decode_all([stream]) == [
        SSEEvent(None, b'{"a":1}'),
        SSEEvent(None, b'{"b":2}'),
        SSEEvent(None, b"[DONE]"),
    ]


def test_comments_and_fields_never_become_data() -> None:
    stream = (
        b": OPENROUTER PROCESSING\n\n"
        b"retry: 3000\n\n"
        b'id: 7\nevent: message_start\ndata: {"x":1}\n\n'
        b": another comment\n"
        b'data:{"no_space":true}\n\n'
    )
    decoder = SSEDecoder()
    events = decoder.feed(stream) + decoder.close()
    assert events == [SSEEvent("message_start", b'{"x":1}'), SSEEvent(None, b'{"no_space":true}')]
    assert decoder.last_event_id == "7"


def test_multiline_data_is_joined_with_newline() -> None:
    assert decode_all([b"data: line one\ndata: line two\n\n"]) == [
        SSEEvent(None, b"line one\nline two")
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: e", b"data: 1", b"", b"data: 2", b"", b""])
    assert decode_all([stream]) == [SSEEvent("e", b"1"), SSEEvent(None, b"2")]


def test_crlf_split_between_reads_is_one_terminator() -> None:
    assert decode_all([b"data: 1\r", b"\n\r", b"\ndata: 2\r\n\r\n"]) == [
        SSEEvent(None, b"1"),
        SSEEvent(None, b"2"),
    ]


def test_missing_final_blank_line_still_dispatches() -> None:
    assert decode_all([b'data: {"usage":1}']) == [SSEEvent(None, b'{"usage":1}')]
    assert decode_all([b'data: {"usage":1}\n']) == [SSEEvent(None, b'{"usage":1}')]


def test_multibyte_utf8_split_across_reads() -> None:
    payload = '{"t":"héllo 日本 🎉"}'.encode()
    stream = b"data: " + payload + b"\n\n"
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    events = decode_all(chunks)
    assert events == [SSEEvent(None, payload)]
    assert events[0].data.decode("utf-8") == '{"t":"héllo 日本 🎉"}'


def test_one_line_events_next_to_every_other_kind_of_line() -> None:
    # One-line `data:` events are sliced out whole (the common case); around them, a pending
    # multi-line event, an event name, an id, a comment, a bare `data` and an empty `data:`.
    stream = (
        b'data: {"a":1}\n\ndata:{"b":2}\n\ndata: x\ndata: y\n\nevent: e\ndata: z\n\n'
        b"id: 9\ndata: w\n\n: note\ndata: v\n\ndata\n\ndata:\n\ndata: u\n\n"
    )
    expected = [
        SSEEvent(None, b'{"a":1}'),
        SSEEvent(None, b'{"b":2}'),
        SSEEvent(None, b"x\ny"),
        SSEEvent("e", b"z"),
        SSEEvent(None, b"w"),
        SSEEvent(None, b"v"),
        SSEEvent(None, b""),
        SSEEvent(None, b""),
        SSEEvent(None, b"u"),
    ]
    assert decode_all([stream]) == expected
    for cut in range(len(stream) + 1):
        assert decode_all([stream[:cut], stream[cut:]]) == expected


def test_an_endless_line_is_refused() -> None:
    decoder = SSEDecoder(max_line_bytes=64)
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"data: " + b"x" * 100)


def test_encoders() -> None:
    assert encode_data(b"{}") == b"data: {}\n\n"
    assert encode_event(b"ping", b'{"type":"ping"}') == b'event: ping\ndata: {"type":"ping"}\n\n'


_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=30,
)
_event = st.tuples(
    st.one_of(st.none(), st.text(alphabet="abcdefghij_", min_size=1, max_size=8)),
    st.lists(_text, min_size=1, max_size=3),
    st.lists(_text, max_size=2),
    st.sampled_from([b"data: ", b"data:"]),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=6),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    final_blank=st.booleans(),
)
def test_any_split_of_any_stream_decodes_the_same(
    events: list[tuple[str | None, list[str], list[str], bytes]],
    newline: bytes,
    cuts: list[int],
    final_blank: bool,
) -> None:
    lines: list[bytes] = []
    expected: list[SSEEvent] = []
    for name, data_lines, comments, field in events:
        lines.extend(b":" + c.encode() for c in comments)
        if name is not None:
            lines.append(b"event: " + name.encode())
        lines.extend(field + d.encode() for d in data_lines)
        lines.append(b"")
        # After "data:", one leading space is the separator and not part of the value (WHATWG);
        # after "data: " the value is the text as given.
        values = [d[1:] if field == b"data:" and d.startswith(" ") else d for d in data_lines]
        expected.append(SSEEvent(name, "\n".join(values).encode()))
    stream = newline.join(lines)
    if final_blank:
        stream += newline
    else:
        stream = stream[: -len(newline)]  # the last event loses its blank line
    assert decode_all(split_at(stream, cuts)) == expected
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == expected
