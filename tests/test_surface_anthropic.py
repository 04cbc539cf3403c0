"""End to end: the official ``anthropic`` SDK (and raw bytes) against ``/v1/messages``.

The upstream here is the OpenAI-typed emulator and the built-in mock: the surface must turn any
model's canonical answer into Anthropic's exact shapes. tests/test_surface_matrix.py crosses the
surface with Anthropic- and Gemini-typed upstreams.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrelay.api.anthropic_stream import MessageEncoder
from llmrelay.core.exchange import Exchange
from llmrelay.core.types import Usage
from llmrelay.testing.emulator import count_prompt_tokens
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

SYSTEM = "Be brief."
USER: list[Any] = [{"role": "user", "content": "hello there gateway"}]
# What the canonical request holds, hence what the OpenAI-typed emulator counts.
CANONICAL = [{"role": "system", "content": SYSTEM}, *USER]
ANSWER = "Echo: hello there gateway lorem ipsum dolor sit"
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object"}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]


@pytest.fixture
def key(gateway: RunningGateway) -> str:
    return gateway.create_key(name="user")


@pytest.fixture
def client(gateway: RunningGateway, key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        yield client


def post(
    gateway: RunningGateway, key: str, body: Any, path: str = "/v1/messages"
) -> httpx.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if isinstance(body, bytes):
        headers["content-type"] = "application/json"
        return httpx.post(gateway.base_url + path, content=body, headers=headers, timeout=30)
    return httpx.post(gateway.base_url + path, json=body, headers=headers, timeout=30)


def events(body: bytes) -> list[tuple[str, Any]]:
    """``(event, data)`` of every event; asserts each is exactly ``event: X\\ndata: {...}``."""
    assert body.endswith(b"\n\n")
    out = []
    for block in body[:-2].split(b"\n\n"):
        name, data = block.split(b"\n")
        assert name.startswith(b"event: "), block
        assert data.startswith(b"data: "), block
        payload = orjson.loads(data[len(b"data: ") :])
        assert payload["type"] == name[len(b"event: ") :].decode()
        out.append((payload["type"], payload))
    return out


def blocks_of(message: Any) -> list[Any]:
    """Content blocks as dicts (the stream helper's blocks are subclasses with extra fields)."""
    return [
        {k: v for k, v in block.model_dump().items() if k != "parsed_output"}
        for block in message.content
    ]


def check_sequence(stream: list[tuple[str, Any]]) -> list[Any]:
    """Asserts Anthropic's grammar; returns the content blocks as the events built them."""
    names = [name for name, _ in stream if name != "ping"]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    blocks: list[Any] = []
    open_index: int | None = None
    for name, payload in stream:
        if name == "content_block_start":
            assert open_index is None, "a block opened before the previous one closed"
            assert payload["index"] == len(blocks), "block indices are contiguous from 0"
            blocks.append(dict(payload["content_block"]))
            open_index = payload["index"]
        elif name == "content_block_delta":
            assert payload["index"] == open_index
            delta = payload["delta"]
            block = blocks[open_index]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                block["json"] = block.get("json", "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert payload["index"] == open_index
            open_index = None
    assert open_index is None
    return blocks


# -- answers ------------------------------------------------------------------------------------


def test_create_answers_a_message_with_the_gateways_ids(
    gateway: RunningGateway, client: anthropic.Anthropic, emulator: ThreadedEmulator
) -> None:
    raw = client.messages.with_raw_response.create(
        model="emu/gpt", max_tokens=100, system=SYSTEM, messages=USER
    )
    message = raw.parse()
    assert message.id == raw.headers["x-request-id"] == raw.headers["request-id"]
    assert raw.headers["x-resolved-model"] == message.model == "emu/gpt"
    assert message.type == "message"
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == ANSWER  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    prompt = count_prompt_tokens(CANONICAL)
    assert message.usage.input_tokens == prompt
    assert message.usage.output_tokens == 8
    assert message.usage.cache_read_input_tokens == 0
    upstream = emulator.requests[-1]
    assert upstream.json["messages"] == CANONICAL
    assert upstream.json["max_tokens"] == 100
    # The client's gateway key never travels upstream.
    assert upstream.headers["authorization"] == "Bearer sk-upstream-secret"
    row = gateway.ledger_row(message.id)
    assert (row.surface, row.status, row.model) == ("anthropic", "ok", "emu/gpt")
    assert (row.prompt_tokens, row.completion_tokens, row.estimated) == (prompt, 8, False)


def test_stream_is_anthropics_exact_event_sequence(gateway: RunningGateway, key: str) -> None:
    body = {"model": "emu/gpt", "max_tokens": 100, "system": SYSTEM, "messages": USER}
    response = post(gateway, key, {**body, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    stream = events(response.content)
    blocks = check_sequence(stream)
    assert blocks == [{"type": "text", "text": ANSWER}]
    start = stream[0][1]["message"]
    assert start["id"] == response.headers["x-request-id"]
    assert (start["content"], start["stop_reason"], start["model"]) == ([], None, "emu/gpt")
    delta = stream[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    prompt = count_prompt_tokens(CANONICAL)
    assert delta["usage"] == {
        "input_tokens": prompt,
        "output_tokens": 8,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    # An OpenAI-style upstream reports usage only at the end: message_start carries the
    # gateway's estimate of the prompt (documented), message_delta the real count.
    assert start["usage"]["input_tokens"] > 0
    assert start["usage"]["output_tokens"] == 0


def test_stream_helper_final_message_equals_create(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model="emu/gpt", max_tokens=100, system=SYSTEM, messages=USER)
    with client.messages.stream(
        model="emu/gpt", max_tokens=100, system=SYSTEM, messages=USER
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == ANSWER
    assert final.id != whole.id
    assert blocks_of(final) == blocks_of(whole)
    assert final.usage == whole.usage  # message_delta's counts replace message_start's estimate
    assert final.stop_reason == "end_turn"


def test_parallel_tool_calls_each_get_a_block_and_round_trip(
    client: anthropic.Anthropic, emulator: ThreadedEmulator
) -> None:
    with client.messages.stream(
        model="emu/gpt+tools=2", max_tokens=100, messages=USER, tools=TOOLS
    ) as stream:
        final = stream.get_final_message()
    whole = client.messages.create(
        model="emu/gpt+tools=2", max_tokens=100, messages=USER, tools=TOOLS
    )
    for message in (final, whole):
        assert message.stop_reason == "tool_use"
        calls = [block for block in message.content if block.type == "tool_use"]
        assert [c.name for c in calls] == ["get_weather", "get_time"]
        assert [c.input for c in calls] == [
            {"query": "hello", "index": 0},
            {"query": "there", "index": 1},
        ]
        assert len({c.id for c in calls}) == 2
    calls = [block for block in final.content if block.type == "tool_use"]
    upstream_tools = emulator.requests[-1].json["tools"]
    assert upstream_tools[0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object"},
            "description": "Weather now",
        },
    }
    answer = client.messages.create(
        model="emu/gpt",
        max_tokens=100,
        tools=TOOLS,
        messages=[
            *USER,
            {"role": "assistant", "content": final.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": calls[1].id,
                        "content": [{"type": "text", "text": "noon"}],
                    },
                    {"type": "text", "text": "and now?"},
                ],
            },
        ],
    )
    assert answer.content[0].text.startswith("Echo: and now?")  # type: ignore[union-attr]
    sent = emulator.requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == calls[0].id
    assert orjson.loads(sent[1]["tool_calls"][1]["function"]["arguments"]) == calls[1].input
    assert sent[2] == {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}
    assert sent[3] == {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"}
    assert sent[4] == {"role": "user", "content": "and now?"}


def test_request_fields_map_to_the_canonical_request(
    client: anthropic.Anthropic, emulator: ThreadedEmulator
) -> None:
    image = "iVBORw0KGgo="
    client.messages.create(
        model="emu/gpt",
        max_tokens=50,
        # This SDK release no longer has these arguments; older clients still send them.
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5},
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
        system=[{"type": "text", "text": "Rule one.", "cache_control": {"type": "ephemeral"}}],
        tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": image},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ],
            }
        ],
    )
    sent = emulator.requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Rule one."},  # cache_control is for Anthropic only
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            ],
        },
    ]
    assert (sent["temperature"], sent["top_p"], sent["stop"]) == (0.5, 0.9, ["END"])
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    assert sent["user"] == "user-42"
    assert "top_k" not in sent
    assert "metadata" not in sent


@pytest.mark.parametrize(
    ("choice", "canonical"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_time"},
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
)
def test_tool_choice(
    client: anthropic.Anthropic, emulator: ThreadedEmulator, choice: Any, canonical: Any
) -> None:
    client.messages.create(
        model="emu/gpt", max_tokens=10, messages=USER, tools=TOOLS, tool_choice=choice
    )
    assert emulator.requests[-1].json["tool_choice"] == canonical


def test_named_tool_choice_with_finish_stop_is_still_tool_use(client: anthropic.Anthropic) -> None:
    # OpenAI answers a named tool_choice with finish_reason "stop"; Anthropic says tool_use.
    message = client.messages.create(
        model="mock/echo",
        max_tokens=100,
        messages=USER,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use"
    assert call.input == {"echo": "hello there gateway"}


def test_reasoning_becomes_a_thinking_block(gateway_factory: Any) -> None:
    gateway = gateway_factory(
        models=[
            {"id": "emu/gpt+reasoning", "provider": "emu"},
            {"id": "mock/echo", "provider": "mock"},
            {"id": "mock/lorem", "provider": "mock"},
            {"id": "emu/gpt", "provider": "emu"},
        ]
    )
    key = gateway.create_key(name="user")
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        whole = client.messages.create(model="emu/gpt+reasoning", max_tokens=100, messages=USER)
        with client.messages.stream(
            model="emu/gpt+reasoning", max_tokens=100, messages=USER
        ) as stream:
            final = stream.get_final_message()
    for message in (whole, final):
        assert [block.type for block in message.content] == ["thinking", "text"]
        thinking = message.content[0]
        assert thinking.type == "thinking"
        assert thinking.thinking
        assert thinking.signature == ""
    assert blocks_of(whole) == blocks_of(final)


def test_max_tokens_becomes_max_tokens_stop(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="mock/echo", max_tokens=2, messages=USER)
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "hello there "  # type: ignore[union-attr]


def test_auto_and_bare_model_names(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=50, messages=USER)
    assert raw.headers["x-route-basket"] == "chat"
    assert raw.parse().model == "mock/echo"
    # A bare name unique in the catalogue, as clients that know only Anthropic's names send.
    assert client.messages.create(model="echo", max_tokens=50, messages=USER).model == "mock/echo"
    with client.messages.stream(model="auto", max_tokens=50, messages=USER) as stream:
        assert stream.get_final_message().model == "mock/lorem"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        ({"max_tokens": 10, "messages": USER}, "model"),
        ({"model": "emu/gpt", "messages": USER}, "max_tokens"),
        ({"model": "emu/gpt", "max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"model": "emu/gpt", "max_tokens": 10, "messages": []}, "messages"),
        (
            {
                "model": "emu/gpt",
                "max_tokens": 10,
                "messages": [{"role": "system", "content": "x"}],
            },
            "messages[0].role",
        ),
        (
            {"model": "emu/gpt", "max_tokens": 10, "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        (
            {
                "model": "emu/gpt",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "emu/gpt",
                "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
                ],
            },
            "messages[0].content[0].source.type",
        ),
        (
            {"model": "emu/gpt", "max_tokens": 10, "messages": USER, "temperature": 1.5},
            "temperature",
        ),
        (
            {"model": "emu/gpt", "max_tokens": 10, "messages": USER, "tools": [{"name": "x"}]},
            "tools[0].input_schema",
        ),
        (
            {
                "model": "emu/gpt",
                "max_tokens": 10,
                "messages": USER,
                "thinking": {"type": "enabled", "budget_tokens": 100},
            },
            "thinking.budget_tokens",
        ),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    gateway: RunningGateway, key: str, body: Any, field: str
) -> None:
    response = post(gateway, key, orjson.dumps(body) if isinstance(body, dict) else body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert field in error["error"]["message"]
    row = gateway.ledger_row(response.headers["request-id"])
    assert (row.surface, row.status, row.http_status) == ("anthropic", "error", 400)


def test_sdk_exceptions_for_each_status(gateway: RunningGateway, key: str) -> None:
    def create(client: anthropic.Anthropic, model: str = "emu/gpt", **kwargs: Any) -> Any:
        return client.messages.create(model=model, max_tokens=10, messages=USER, **kwargs)

    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as auth,
    ):
        create(bad)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "wrong" not in auth.value.response.text
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            create(client, "emu/nope")
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.RateLimitError) as limited:
            create(client, "emu/gpt+status=429+retry_after=7")
        assert limited.value.response.headers["retry-after"] == "7"
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert limited.value.request_id == limited.value.response.headers["x-request-id"]
        with pytest.raises(anthropic.InternalServerError) as unavailable:
            create(client, "emu/gpt+status=503")
        assert unavailable.value.status_code == 503
        assert unavailable.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        with pytest.raises(anthropic.InternalServerError) as upstream:
            create(client, "emu/gpt+status=500")
        assert upstream.value.status_code == 502
        assert upstream.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError):
            create(client, "emu/gpt+status=400")
        # An error known before the first event is an HTTP status, streaming or not.
        with (
            pytest.raises(anthropic.InternalServerError),
            client.messages.stream(
                model="emu/gpt+error_first", max_tokens=10, messages=USER
            ) as stream,
        ):
            stream.get_final_message()
    denied = gateway.create_key(name="denied", models=("mock/*",))
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=denied, max_retries=0) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            create(client)
        assert forbidden.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    broke = gateway.create_key(name="broke", credits_nanos=0)
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=broke, max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError) as credits:
            create(client)
        assert credits.value.status_code == 402
        assert credits.value.body["error"]["type"] == "billing_error"  # type: ignore[index]


def test_huge_body_is_413(gateway_factory: Any) -> None:
    gateway = gateway_factory(max_request_bytes=4096)
    key = gateway.create_key(name="user")
    body = {
        "model": "emu/gpt",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x" * 9000}],
    }
    response = post(gateway, key, body)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_mid_stream_failure_is_an_error_event(
    gateway: RunningGateway, key: str, client: anthropic.Anthropic
) -> None:
    response = post(
        gateway,
        key,
        {"model": "emu/gpt+error_mid=2", "max_tokens": 10, "messages": USER, "stream": True},
    )
    assert response.status_code == 200
    stream = events(response.content)
    names = [name for name, _ in stream]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert "message_stop" not in names
    error = stream[-1][1]
    assert error["error"]["type"] == "api_error"
    assert error["error"]["message"]
    row = gateway.ledger_row(response.headers["request-id"])
    assert (row.status, row.http_status) == ("error", 502)
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(
            model="emu/gpt+error_mid=2", max_tokens=10, messages=USER
        ) as sdk_stream,
    ):
        sdk_stream.get_final_message()
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_keepalive_pings_precede_a_slow_first_token(
    gateway: RunningGateway, key: str, client: anthropic.Anthropic
) -> None:
    started = time.monotonic()
    body = {"model": "emu/gpt+first=3000", "max_tokens": 10, "messages": USER, "stream": True}
    response = post(gateway, key, body)
    assert time.monotonic() - started >= 2.9
    stream = events(response.content)
    names = [name for name, _ in stream]
    assert names[:2] == ["ping", "ping"]  # keepalive_seconds is 1 in the test config
    assert response.content.startswith(b'event: ping\ndata: {"type": "ping"}\n\n')
    check_sequence(stream)
    with client.messages.stream(
        model="emu/gpt+first=3000", max_tokens=10, messages=USER
    ) as sdk_stream:
        assert sdk_stream.get_final_message().content[0].text.startswith("Echo:")  # type: ignore[union-attr]


def test_client_disconnect_mid_stream_is_cancelled(
    gateway: RunningGateway, key: str, emulator: ThreadedEmulator
) -> None:
    body = orjson.dumps(
        {
            "model": "emu/gpt+chunks=400+delay=10",
            "max_tokens": 500,
            "messages": USER,
            "stream": True,
        }
    )
    host, port = gateway.base_url.removeprefix("http://").split(":")
    before = len(emulator.requests)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"x-api-key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.settimeout(10)
        head = b""
        while b"text_delta" not in head:
            head += sock.recv(65536)
    request_id = head.split(b"request-id: ")[1].split(b"\r\n")[0].decode()
    (upstream,) = emulator.wait_for_requests(before + 1, timeout=5)[before:]
    assert upstream.client_disconnected
    row = gateway.ledger_row(request_id)
    assert (row.status, row.surface) == ("cancelled", "anthropic")


def test_count_tokens_without_a_provider_counter_is_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.count_tokens(model="emu/gpt", messages=USER)
    error = raised.value.body["error"]  # type: ignore[index]
    assert error["type"] == "not_found_error"
    assert "no exact token count" in error["message"]


# -- the event state machine, fed canonical chunks directly -----------------------------------


def _encoder(stops: list[str] | None = None) -> MessageEncoder:
    exchange = Exchange(key=None, surface="anthropic")  # type: ignore[arg-type]
    exchange.messages = USER
    return MessageEncoder(exchange, stops or [])


def _chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]}


_LEADING = st.one_of(
    st.builds(lambda t: {"content": t}, st.text(min_size=1, max_size=3)),
    st.builds(lambda t: {"reasoning_content": t}, st.text(min_size=1, max_size=3)),
    st.just(
        {"thinking_blocks": [{"index": 0, "type": "thinking", "thinking": "x", "signature": "s"}]}
    ),
    st.just({"thinking_blocks": [{"index": 0, "type": "redacted_thinking", "data": "r"}]}),
    st.just({"extra_content": {"google": {"thought_signature": "g"}}}),
    st.just({}),
)


def _tool_phase(fragments: list[list[str]]) -> list[dict[str, Any]]:
    """Each call's first fragment names it, the rest only carry arguments, calls in order (as
    every known upstream streams them)."""
    deltas = []
    for i, pieces in enumerate(fragments):
        first = {"index": i, "id": f"call_{i}", "function": {"name": f"f{i}", "arguments": ""}}
        deltas.append({"tool_calls": [first]})
        deltas += [{"tool_calls": [{"index": i, "function": {"arguments": p}}]} for p in pieces]
    return deltas


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_LEADING, max_size=8),
    st.lists(st.lists(st.sampled_from(['{"a"', ": 1}", ""]), max_size=3), max_size=3),
    st.sampled_from([None, "stop", "length", "tool_calls"]),
)
def test_any_chunk_sequence_gives_anthropics_grammar(
    leading: list[dict[str, Any]], fragments: list[list[str]], finish: str | None
) -> None:
    encoder = _encoder()
    deltas = leading + _tool_phase(fragments)
    body = b"".join(encoder.encode(_chunk(delta)) for delta in deltas)
    if finish is not None:
        body += encoder.encode(_chunk({}, finish))
    body += encoder.close(Usage(prompt_tokens=5, completion_tokens=3))
    stream = events(body)
    blocks = check_sequence(stream)
    text = "".join(d.get("content", "") for d in deltas)
    assert "".join(b.get("text", "") for b in blocks if b["type"] == "text") == text
    calls = [b for b in blocks if b["type"] == "tool_use"]
    assert [c["id"] for c in calls] == [f"call_{i}" for i in range(len(fragments))]
    assert [c.get("json", "") for c in calls] == ["".join(pieces) for pieces in fragments]
    reason = stream[-2][1]["delta"]["stop_reason"]
    if finish == "length":
        assert reason == "max_tokens"
    elif calls:
        assert reason == "tool_use"
    assert stream[-2][1]["usage"]["output_tokens"] == 3


def test_a_stop_sequence_the_upstream_names_is_reported() -> None:
    encoder = _encoder(["END"])
    body = encoder.encode(_chunk({"content": "done"}))
    body += encoder.encode(_chunk({}, "stop", stop_reason="END"))  # vLLM names the sequence
    body += encoder.close(Usage())
    assert events(body)[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
