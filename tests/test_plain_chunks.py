"""Plain content chunks of an OpenAI-type upstream are relayed as their bytes to an OpenAI client
(``core/chunks.py``): whatever the upstream sends, the client gets what the parsed path gives it,
and metering counts the same."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrelay.api.openai import ChunkEncoder
from llmrelay.api.streaming import encode_batch
from llmrelay.config import ModelConfig, ProviderConfig
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.chunks import PlainChunks, RawChunk, string_chars
from llmrelay.core.errors import UpstreamProtocolError
from llmrelay.core.exchange import Exchange
from llmrelay.core.types import Usage
from llmrelay.providers.openai import OpenAIProvider, _Events

MODEL = ModelEntry.from_config(ModelConfig(id="up/gpt", provider="up", upstream="gpt"))
USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def _provider() -> OpenAIProvider:
    return OpenAIProvider("up", ProviderConfig(type="openai", base_url="http://up"), None)  # type: ignore[arg-type]


def _exchange() -> Exchange:
    exchange = Exchange(key=None, surface="openai", id="chatcmpl-gw", created=42)  # type: ignore[arg-type]
    exchange.model = MODEL
    return exchange


def chunk(delta: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """One upstream chunk as OpenAI lays it out (``fields`` override or add top-level keys)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "gpt-2025",
        "service_tier": "default",
        "system_fingerprint": "fp_x",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    body.update(fields)
    return body


def text(content: str, **fields: Any) -> dict[str, Any]:
    return chunk({"content": content}, **fields)


def events(
    *chunks: dict[str, Any] | bytes,
    ascii_escapes: bool = False,
    newline: bytes = b"\n",
    field: bytes = b"data: ",
    extra_lines: bool = False,
) -> bytes:
    """An SSE stream of ``chunks`` then ``[DONE]``; ``extra_lines`` puts a comment or an ``id:``
    line in every other event."""
    out = b""
    for n, item in enumerate((*chunks, b"[DONE]")):
        if isinstance(item, bytes):
            data = item
        elif ascii_escapes:  # Python's json escapes every non-ASCII character
            data = json.dumps(item, separators=(",", ":")).encode()
        else:
            data = orjson.dumps(item)
        if extra_lines and n % 2:
            out += (b": keep-alive" if n % 4 == 1 else b"id: %d" % n) + newline
        out += field + data + newline + newline
    return out


def relay(stream: bytes, *, raw: bool, reads: int = 1, include_usage: bool = True) -> Any:
    """``stream``, cut into ``reads`` reads, through the provider's reading of a stream and the
    OpenAI surface's encoder: the client's events (parsed), the exchange's metering, and how
    many chunks went as bytes."""
    provider = _provider()
    exchange = _exchange()
    encoder = ChunkEncoder(exchange, include_usage)
    reader = _Events(provider, PlainChunks() if raw else None)
    size = max(1, len(stream) // reads)
    out = b""
    as_bytes = 0
    batches = [
        batch for i in range(0, len(stream), size) for batch in reader.read(stream[i : i + size])
    ]
    batches += list(reader.end())
    assert reader.finished
    for batch in batches:
        as_bytes += sum(len(item) for item in batch if isinstance(item, RawChunk))
        out += encode_batch(exchange, encoder, batch)
    usage, estimated = exchange.usage or Usage(), exchange.usage is None
    out += encoder.close(usage)
    assert out.endswith(b"data: [DONE]\n\n")
    parsed = [
        orjson.loads(line[6:]) for line in out.split(b"\n\n") if line and line != b"data: [DONE]"
    ]
    metering = (exchange.output_chars, exchange.first_token_at is not None, usage, estimated)
    return parsed, metering, as_bytes, out


def assert_same(stream: bytes, **kwargs: Any) -> int:
    """The raw path's client events equal the parsed path's, key order included; metering too.
    Returns how many chunks the raw path relayed as bytes."""
    parsed, metering, _, _ = relay(stream, raw=False, **kwargs)
    raw_parsed, raw_metering, as_bytes, _ = relay(stream, raw=True, **kwargs)
    assert raw_parsed == parsed
    assert [list(event) for event in raw_parsed] == [list(event) for event in parsed]
    assert raw_metering == metering
    return as_bytes


def test_plain_chunks_go_as_bytes_and_read_as_the_parsed_path_writes_them() -> None:
    stream = events(
        chunk({"role": "assistant", "content": "", "refusal": None}),
        text("Hello"),
        text(" wor"),
        text("ld"),
        {**chunk(), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk(), "choices": [], "usage": USAGE},
    )
    assert assert_same(stream) == 3
    parsed, (chars, first, usage, estimated), _, out = relay(stream, raw=True)
    contents = [event["choices"][0]["delta"].get("content") for event in parsed[:4]]
    assert contents == ["", "Hello", " wor", "ld"]
    for event in parsed:
        assert (event["id"], event["object"], event["created"], event["model"]) == (
            "chatcmpl-gw",
            "chat.completion.chunk",
            42,
            "up/gpt",
        )
    assert [("role" in event["choices"][0]["delta"]) for event in parsed[:4]] == [
        True,
        False,
        False,
        False,
    ]
    assert all("usage" not in event for event in parsed[:-1])
    assert parsed[-1]["usage"]["total_tokens"] == 8
    assert parsed[-1]["choices"] == []
    assert (chars, first, usage.completion_tokens, estimated) == (11, True, 5, False)
    assert b"chatcmpl-up" not in out
    assert b"gpt-2025" not in out


def test_the_first_text_without_a_role_chunk_gets_the_role() -> None:
    stream = events(text("a"), text("b"), text("c"))
    assert assert_same(stream) == 3
    parsed = relay(stream, raw=True)[0]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert parsed[1]["choices"][0]["delta"] == {"content": "b"}


def test_obfuscation_passes_through_with_each_chunks_own_value() -> None:
    stream = events(
        text("a", obfuscation="Xy1"), text("b", obfuscation="q"), text("c", obfuscation="")
    )
    assert assert_same(stream) == 3
    parsed = relay(stream, raw=True)[0]
    assert [event["obfuscation"] for event in parsed[:3]] == ["Xy1", "q", ""]


@pytest.mark.parametrize(
    "variant",
    [
        {"id": "per-chunk-1"},  # an upstream whose id changes every chunk
        {"usage": None, "x_extra": {"nested": [1, {"usage": None}]}},
        {"model": "m\u00e9"},
    ],
)
def test_other_layouts_still_relay_the_same(variant: dict[str, Any]) -> None:
    stream = events(text("a"), text("b", **variant), text("c", **variant), text("d"))
    assert_same(stream)


def test_a_chunk_that_differs_only_after_its_text_is_not_taken_for_the_shape() -> None:
    # Same prefix, a suffix of the same length but other bytes: it must not pass for the shape.
    other = text("b")
    other["choices"][0]["logprobs"] = True
    stream = events(text("a"), text("x"), other, text("c"))
    assert assert_same(stream) == 4  # `other` is plain too, of a shape of its own
    assert relay(stream, raw=True)[0][2]["choices"][0]["logprobs"] is True


def test_layouts_that_are_not_plain_take_the_parsed_path() -> None:
    two_choices = text("x")
    two_choices["choices"].append({"index": 1, "content_filter_results": {}})
    no_finish = text("x")
    del no_finish["choices"][0]["finish_reason"]
    stream = events(
        text("a"),
        two_choices,
        no_finish,
        chunk({"content": "x", "role": "assistant"}),
        chunk({"reasoning_content": "hm"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {}}]}),
        text("b", usage={"prompt_tokens": 1}),
        b'{"id":"chatcmpl-up","id":"again","object":"chat.completion.chunk","created":7,'
        b'"model":"gpt-2025","choices":[{"index":0,"delta":{"content":"dup"},'
        b'"finish_reason":null}]}',
    )
    # Only the first `a` could go as bytes (nothing else has the plain layout).
    assert assert_same(stream) == 1


def test_text_that_is_not_a_valid_json_string_is_refused_as_before() -> None:
    good = orjson.dumps(text("ok"))
    prefix, _, suffix = good.partition(b'"ok"')
    for bad in (b'"a\x01b"', b'"\xff"', b'"a"b"', b'"a\\"', b'"\\ud800"'):
        stream = events(text("a"), text("b"), prefix + bad + suffix)
        for raw in (False, True):
            with pytest.raises(UpstreamProtocolError):
                relay(stream, raw=raw)


def test_string_chars_counts_the_decoded_text() -> None:
    assert string_chars(b"abc") == 3
    assert string_chars("h\u00e9 \U0001f389".encode()) == 4
    assert string_chars(b'a\\n\\u00e9\\"') == 4
    assert string_chars(b"a\\ud83c\\udf89") == 2
    for bad in (b'a"', b"a\\", b"\x00", b"\xc3", b"\\x", b"\\ud800"):
        assert string_chars(bad) is None


_texts = st.text(max_size=12) | st.sampled_from(["", '"', "\\", "\n", "\u2028", "\x00", "é"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int]:
    items: list[dict[str, Any] | bytes] = []
    if draw(st.booleans()):
        items.append(chunk({"role": "assistant", "content": "", "refusal": None}))
    obfuscate = draw(st.booleans())
    usage_field = draw(st.booleans())
    for piece in draw(st.lists(_texts, max_size=8)):
        kind = draw(st.integers(0, 9))
        extra: dict[str, Any] = {}
        if obfuscate:
            extra["obfuscation"] = draw(st.text("abcXYZ019", max_size=6))
        item = text(piece, **extra)
        if not usage_field:
            del item["usage"]
        if kind == 0:
            item = chunk({"reasoning_content": piece})
        elif kind == 1:
            item["choices"][0]["index"] = 1
        elif kind == 2:
            item["id"] = "chatcmpl-other"
        items.append(item)
    items.append({**chunk(), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if draw(st.booleans()):
        items.append({**chunk(), "choices": [], "usage": USAGE})
    stream = events(
        *items,
        ascii_escapes=draw(st.booleans()),
        newline=draw(st.sampled_from([b"\n", b"\n", b"\r\n"])),
        field=draw(st.sampled_from([b"data: ", b"data: ", b"data:"])),
        extra_lines=draw(st.booleans()),
    )
    return stream, draw(st.integers(1, 7))


@settings(max_examples=300, deadline=None)
@given(stream=streams(), include_usage=st.booleans())
def test_any_stream_relays_the_same_as_bytes_as_parsed(
    stream: tuple[bytes, int], include_usage: bool
) -> None:
    data, reads = stream
    assert_same(data, reads=reads, include_usage=include_usage)
