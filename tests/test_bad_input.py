"""Bad input and failing upstreams: the documented status, a JSON error, a ledger row, and the
server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from llmrelay.testing.harness import RunningGateway

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def key(gateway: RunningGateway) -> str:
    return gateway.create_key(name="user")


def post(gateway: RunningGateway, key: str, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    if isinstance(body, bytes | str):
        return httpx.post(
            gateway.base_url + "/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=30,
            **kwargs,
        )
    return httpx.post(
        gateway.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30, **kwargs
    )


def assert_error(response: httpx.Response, status: int, error_type: str, param: Any = ...) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == status
    assert error["type"] == error_type
    assert error["message"]
    if param is not ...:
        assert error["param"] == param


def still_serving(gateway: RunningGateway, key: str) -> None:
    response = post(gateway, key, {"model": "mock/echo", "messages": USER})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hello"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        ({"messages": USER}, "model"),
        ({"model": "mock/echo"}, "messages"),
        ({"model": "mock/echo", "messages": []}, "messages"),
        ({"model": "mock/echo", "messages": "hi"}, "messages"),
        (
            {"model": "mock/echo", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        (
            {"model": "mock/echo", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        ({"model": "mock/echo", "messages": USER, "max_tokens": -1}, "max_tokens"),
        ({"model": "mock/echo", "messages": USER, "max_tokens": "ten"}, "max_tokens"),
        ({"model": "mock/echo", "messages": USER, "temperature": 3}, "temperature"),
        ({"model": "mock/echo", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "mock/echo", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (
            {"model": "mock/echo", "messages": USER, "tools": [{"type": "function"}]},
            "tools[0].function.name",
        ),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    gateway: RunningGateway, key: str, body: Any, param: str | None
) -> None:
    response = post(gateway, key, body)
    assert_error(response, 400, "invalid_request_error", param)
    assert response.headers["x-request-id"].startswith("chatcmpl-")
    row = gateway.ledger_row(response.headers["x-request-id"])
    assert (row.status, row.http_status, row.cost_nanos) == ("error", 400, 0)
    still_serving(gateway, key)


def test_wrong_content_type(gateway: RunningGateway, key: str) -> None:
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=orjson.dumps({"model": "mock/echo", "messages": USER}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
    )
    assert_error(response, 400, "invalid_request_error")
    assert "Content-Type" in response.json()["error"]["message"]


def test_huge_body_is_413(gateway_factory: Any) -> None:
    gateway = gateway_factory(max_request_bytes=4096)
    key = gateway.create_key(name="user")
    big = {"model": "mock/echo", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_error(post(gateway, key, big), 413, "request_too_large")
    # Without Content-Length (chunked upload) the cap still holds.
    chunks = iter([orjson.dumps(big)[i : i + 1000] for i in range(0, 10_100, 1000)])
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=chunks,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert_error(response, 413, "request_too_large")
    still_serving(gateway, key)


def test_unknown_model_is_404(gateway: RunningGateway, key: str) -> None:
    assert_error(
        post(gateway, key, {"model": "nope/model", "messages": USER}),
        404,
        "model_not_found",
        "model",
    )


def test_missing_and_bad_keys_are_401_and_never_echoed(gateway: RunningGateway) -> None:
    response = httpx.post(gateway.base_url + "/v1/chat/completions", json={"model": "mock/echo"})
    assert_error(response, 401, "authentication_error")
    secret = "lr-this-is-not-a-real-key-0123456789"
    response = post(gateway, secret, {"model": "mock/echo", "messages": USER})
    assert_error(response, 401, "authentication_error")
    assert secret not in response.text


def test_unknown_route_and_method(gateway: RunningGateway, key: str) -> None:
    assert_error(httpx.get(gateway.base_url + "/v2/nothing"), 404, "not_found")
    response = httpx.get(gateway.base_url + "/v1/chat/completions")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("emu/gpt+status=400", 400, "invalid_request_error"),
        ("emu/gpt+status=500", 502, "upstream_error"),
        ("emu/gpt+status=503", 503, "provider_unavailable"),
        ("emu/gpt+html", 502, "upstream_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_keep_their_meaning(
    gateway: RunningGateway, key: str, model: str, status: int, error_type: str, stream: bool
) -> None:
    response = post(gateway, key, {"model": model, "messages": USER, "stream": stream})
    assert_error(response, status, error_type)
    row = gateway.ledger_row(response.headers["x-request-id"])
    assert (row.status, row.http_status, row.model) == ("error", status, model)
    still_serving(gateway, key)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_keeps_retry_after(gateway: RunningGateway, key: str, stream: bool) -> None:
    response = post(
        gateway,
        key,
        {"model": "emu/gpt+status=429+retry_after=7", "messages": USER, "stream": stream},
    )
    assert_error(response, 429, "upstream_rate_limit")
    assert response.headers["retry-after"] == "7"


def test_error_first_stream_becomes_an_http_error(gateway: RunningGateway, key: str) -> None:
    response = post(
        gateway, key, {"model": "emu/gpt+error_first", "messages": USER, "stream": True}
    )
    assert response.status_code >= 500
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()


@pytest.mark.parametrize("model", ["emu/gpt+drop=3", "emu/gpt+error_mid=2", "emu/gpt+malformed=2"])
def test_mid_stream_failure_ends_with_an_error_chunk(
    gateway: RunningGateway, key: str, model: str
) -> None:
    response = post(gateway, key, {"model": model, "messages": USER, "stream": True})
    assert response.status_code == 200
    events = [e for e in response.content.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    last = orjson.loads(events[-2][6:])
    assert last["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
    assert isinstance(last["error"]["code"], int)
    assert last["error"]["code"] >= 400
    assert last["error"]["message"]
    finishes = [orjson.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-2]]
    assert "stop" not in finishes
    row = gateway.ledger_row(last["id"])
    assert row.status == "error"
    assert row.completion_tokens >= 2
    still_serving(gateway, key)


def test_non_stream_body_cut_mid_way_is_502(gateway: RunningGateway, key: str) -> None:
    response = post(gateway, key, {"model": "emu/gpt+drop=3", "messages": USER})
    assert_error(response, 502, "upstream_error")


def test_timeouts_are_504(gateway_factory: Any, emulator: Any) -> None:
    gateway = gateway_factory(
        providers={
            "mock": {"type": "mock"},
            "emu": {
                "type": "openai",
                "base_url": emulator.base_url + "/v1",
                "api_key": "sk-upstream",
                "timeouts": {"connect": 1, "first_byte": 0.5, "idle": 0.5},
            },
        },
        keepalive_seconds=5,
    )
    key = gateway.create_key(name="user")
    for stream in (False, True):
        response = post(gateway, key, {"model": "emu/gpt+hang", "messages": USER, "stream": stream})
        assert_error(response, 504, "upstream_timeout")


def test_connect_failure_is_503(gateway_factory: Any) -> None:
    from llmrelay.testing.harness import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = gateway_factory(
        providers={"mock": {"type": "mock"}, "emu": {"type": "openai", "base_url": dead}},
    )
    key = gateway.create_key(name="user")
    response = post(gateway, key, {"model": "emu/gpt", "messages": USER})
    assert_error(response, 503, "provider_unavailable")
    still_serving(gateway, key)
