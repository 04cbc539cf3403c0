"""End to end: the official openai SDK (and raw bytes) against a real gateway on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from llmrelay.testing.emulator import count_prompt_tokens
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there gateway"},
]


@pytest.fixture
def key(gateway: RunningGateway) -> str:
    return gateway.create_key(name="user")


@pytest.fixture
def client(gateway: RunningGateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as client:
        yield client


def sse_events(body: bytes) -> list[bytes]:
    """Every event's raw text; asserts the framing is exactly ``data: ...\\n\\n`` or a comment."""
    assert body.endswith(b"\n\n")
    events = body[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith((b"data: ", b": ")), event
        assert b"\n" not in event, event
    return [e[len(b"data: ") :] for e in events if e.startswith(b"data: ")]


def stream_raw(gateway: RunningGateway, key: str, **body: Any) -> httpx.Response:
    payload = {"messages": MESSAGES, "stream": True, **body}
    return httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}", "Accept-Encoding": "gzip"},
        timeout=30,
    )


def test_non_streaming_answer_and_headers(
    gateway: RunningGateway, client: openai.OpenAI, emulator: ThreadedEmulator
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="emu/gpt", messages=MESSAGES)
    completion = raw.parse()
    assert completion.id == raw.headers["x-request-id"]
    assert raw.headers["x-resolved-model"] == "emu/gpt"
    assert completion.model == "emu/gpt"
    assert (
        completion.choices[0].message.content == "Echo: hello there gateway lorem ipsum dolor sit"
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_prompt_tokens(MESSAGES)
    assert completion.usage.completion_tokens == 8
    seen = emulator.requests[-1]
    assert seen.json["model"] == "gpt"
    # The client's gateway key never travels upstream; the provider's own key does.
    assert seen.headers["authorization"] == "Bearer sk-upstream-secret"
    row = gateway.ledger_row(completion.id)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == (
        "ok",
        completion.usage.prompt_tokens,
        8,
    )
    assert row.cost_nanos == completion.usage.prompt_tokens * 1000 + 8 * 2000
    assert row.estimated is False


def test_streaming_with_usage(gateway: RunningGateway, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="emu/gpt",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    content = [c for c in chunks if c.choices]
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert content[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == "Echo: hello there gateway lorem ipsum dolor sit"
    row = gateway.ledger_row(chunks[0].id)
    assert row.stream is True
    assert row.completion_tokens == 8
    assert row.ttft_ms is not None
    assert row.ttft_ms <= row.latency_ms


def test_usage_is_requested_upstream_but_not_sent_unasked(
    gateway: RunningGateway, key: str, emulator: ThreadedEmulator
) -> None:
    response = stream_raw(gateway, key, model="emu/gpt")
    assert response.status_code == 200
    assert emulator.requests[-1].json["stream_options"] == {"include_usage": True}
    events = sse_events(response.content)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    # Billing still used the upstream's real usage.
    row = gateway.ledger_row(chunks[0]["id"])
    assert (row.completion_tokens, row.estimated) == (8, False)


def test_stream_headers_and_no_gzip(gateway: RunningGateway, key: str) -> None:
    response = stream_raw(gateway, key, model="emu/gpt+chunks=3")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers
    assert response.headers["x-resolved-model"] == "emu/gpt+chunks=3"
    first = orjson.loads(sse_events(response.content)[0])
    assert first["id"] == response.headers["x-request-id"]


def test_upstream_comments_crlf_and_fields_never_reach_the_client(
    gateway: RunningGateway, key: str
) -> None:
    response = stream_raw(gateway, key, model="emu/gpt+comments+crlf")
    events = sse_events(response.content)
    assert events[-1] == b"[DONE]"
    for event in events[:-1]:
        assert isinstance(orjson.loads(event), dict)
    assert b"\r" not in response.content


def test_split_utf8_bytewise_upstream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="emu/gpt+utf8+bytewise", messages=MESSAGES, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    direct = client.chat.completions.create(model="emu/gpt+utf8", messages=MESSAGES)
    assert text == direct.choices[0].message.content
    assert any(ord(ch) > 0x7F for ch in text)


def test_parallel_tool_calls_stream_through_the_sdk_helper(client: openai.OpenAI) -> None:
    tools: list[Any] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    ]
    with client.chat.completions.stream(
        model="emu/gpt+tools=2", messages=MESSAGES, tools=tools
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert len(calls) == 2
    assert len({c.id for c in calls}) == 2
    for call in calls:
        assert call.type == "function"
        assert isinstance(orjson.loads(call.function.arguments), dict)
    assert final.choices[0].finish_reason == "tool_calls"
    plain = client.chat.completions.create(model="emu/gpt+tools=2", messages=MESSAGES, tools=tools)
    assert [c.function.arguments for c in plain.choices[0].message.tool_calls or []] == [
        c.function.arguments for c in calls
    ]


def test_no_upstream_usage_is_estimated(gateway: RunningGateway, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="emu/gpt+no_usage",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    row = gateway.ledger_row(chunks[0].id)
    assert row.estimated is True
    assert row.prompt_tokens > 0
    assert row.completion_tokens > 0


def test_cached_tokens_priced_once(gateway: RunningGateway, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="emu/gpt+cached=5", messages=MESSAGES)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 5
    row = gateway.ledger_row(completion.id)
    prompt = completion.usage.prompt_tokens
    assert row.cached_tokens == 5
    assert row.cost_nanos == (prompt - 5) * 1000 + 5 * 500 + row.completion_tokens * 2000


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1", "/llm/v1"])
def test_path_aliases(gateway: RunningGateway, key: str, prefix: str) -> None:
    with openai.OpenAI(base_url=gateway.base_url + prefix, api_key=key, max_retries=0) as client:
        completion = client.chat.completions.create(model="mock/echo", messages=MESSAGES)
        assert completion.choices[0].message.content == "hello there gateway"
        assert [m.id for m in client.models.list()][:1] == ["emu/gpt"]


def test_models_list_has_prices_and_capabilities(gateway: RunningGateway) -> None:
    data = httpx.get(gateway.base_url + "/v1/models").json()["data"]
    echo = next(m for m in data if m["id"] == "mock/echo")
    assert echo["object"] == "model"
    assert echo["owned_by"] == "mock"
    assert echo["pricing"] == {"input": 1.0, "output": 2.0, "cached_input": None}
    assert echo["capabilities"] == ["json", "tools", "vision"]


def test_mock_provider_stream_and_auto(gateway: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-resolved-model"] == "mock/echo"
    assert raw.headers["x-route-basket"] == "chat"
    assert raw.parse().model == "mock/echo"
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].model == "mock/lorem"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Lorem ipsum")


def test_health(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.base_url + "/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
