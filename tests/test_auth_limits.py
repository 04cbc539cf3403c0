"""Authentication styles, key state, model patterns, rate limits, credits, ``/v1/key`` and
``/v1/generation`` against a real gateway."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from llmrelay.accounting.pricing import NANOS_PER_USD
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

HELLO: Any = [{"role": "user", "content": "hello there"}]

GENERATION_FIELDS = {
    "id",
    "requested_model",
    "model",
    "provider",
    "basket",
    "stream",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost",
    "estimated",
    "ttft_ms",
    "latency_ms",
    "created",
}


@pytest.fixture(scope="module")
def gateway(module_gateway: RunningGateway) -> RunningGateway:
    return module_gateway


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def chat(http: httpx.Client, secret: str, model: str = "mock/echo", **extra: Any) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        headers=bearer(secret),
        json={"model": model, "messages": HELLO, **extra},
    )


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == status
    assert error["type"] == error_type
    return error


def key_info(http: httpx.Client, secret: str) -> dict[str, Any]:
    response = http.get("/v1/key", headers=bearer(secret))
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


# -- authentication styles ----------------------------------------------------------------------

AUTH_STYLES = [
    pytest.param(lambda k: ({"Authorization": f"Bearer {k}"}, {}), id="authorization-bearer"),
    pytest.param(lambda k: ({"Authorization": f"bearer {k}"}, {}), id="authorization-lowercase"),
    pytest.param(lambda k: ({"apikey": k}, {}), id="apikey"),
    pytest.param(lambda k: ({"x-api-key": k}, {}), id="x-api-key"),
    pytest.param(lambda k: ({"x-goog-api-key": k}, {}), id="x-goog-api-key"),
    pytest.param(lambda k: ({}, {"key": k}), id="query-key"),
]


@pytest.mark.parametrize("style", AUTH_STYLES)
def test_every_auth_style_of_the_contract_works(
    http: httpx.Client, gateway: RunningGateway, style: Any
) -> None:
    secret = gateway.create_key(name="styled")
    headers, params = style(secret)

    completion = http.post(
        "/v1/chat/completions",
        headers=headers,
        params=params,
        json={"model": "mock/echo", "messages": HELLO},
    )
    own = http.get("/v1/key", headers=headers, params=params)

    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["message"]["content"] == "hello there"
    assert own.status_code == 200
    assert own.json()["name"] == "styled"


@pytest.mark.parametrize("style", AUTH_STYLES)
def test_a_wrong_key_in_any_style_is_401_and_never_echoed(http: httpx.Client, style: Any) -> None:
    wrong = "lr-not-a-key-in-this-gateway-7731"
    headers, params = style(wrong)

    response = http.post(
        "/v1/chat/completions",
        headers=headers,
        params=params,
        json={"model": "mock/echo", "messages": HELLO},
    )

    error = assert_error(response, 401, "authentication_error")
    assert wrong not in response.text
    assert "7731" not in error["message"]


def test_a_missing_key_is_401(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": "mock/echo", "messages": HELLO})

    error = assert_error(response, 401, "authentication_error")
    assert "Authorization" in error["message"]


def test_the_openai_sdk_authenticates_with_a_user_key(gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="sdk")
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=secret, max_retries=0) as sdk:
        completion = sdk.chat.completions.create(model="mock/echo", messages=HELLO)
        assert completion.choices[0].message.content == "hello there"
    with (
        openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="lr-wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError),
    ):
        sdk.chat.completions.create(model="mock/echo", messages=HELLO)


# -- key state ----------------------------------------------------------------------------------


def test_a_revoked_key_is_401(http: httpx.Client, gateway: RunningGateway) -> None:
    new = gateway.call(gateway.app.keys.create(name="soon-revoked"))
    assert chat(http, new.secret).status_code == 200

    gateway.call(gateway.app.keys.revoke(new.record.id))

    error = assert_error(chat(http, new.secret), 401, "authentication_error")
    assert "revoked" in error["message"]
    assert_error(http.get("/v1/key", headers=bearer(new.secret)), 401, "authentication_error")


def test_an_expired_key_is_401(http: httpx.Client, gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="expired", expires_at=time.time() - 1)

    error = assert_error(chat(http, secret), 401, "authentication_error")
    assert "expired" in error["message"]


def test_a_key_stops_working_when_it_expires(http: httpx.Client, gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="short-lived", expires_at=time.time() + 0.5)
    assert chat(http, secret).status_code == 200
    assert key_info(http, secret)["expires_at"] is not None

    time.sleep(0.6)

    assert_error(chat(http, secret), 401, "authentication_error")


# -- model patterns -----------------------------------------------------------------------------


def test_model_patterns_allow_matching_models_only(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="mock-only", models=("mock/*",))

    assert chat(http, secret, "mock/echo").status_code == 200
    denied = chat(http, secret, "emu/gpt")

    error = assert_error(denied, 403, "permission_denied")
    assert error["param"] == "model"
    assert "emu/gpt" in error["message"]
    assert key_info(http, secret)["models"] == ["mock/*"]


def test_an_exact_model_list_denies_everything_else(
    http: httpx.Client, gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    secret = gateway.create_key(name="one-model", models=("emu/gpt", "mock/lorem"))
    upstream_before = len(emulator.requests)

    assert_error(chat(http, secret, "mock/echo"), 403, "permission_denied")
    assert_error(chat(http, secret, "emu/gpt+chunks=3"), 403, "permission_denied")
    assert len(emulator.requests) == upstream_before  # a denied request never reaches upstream
    assert chat(http, secret, "emu/gpt").status_code == 200


def test_model_patterns_apply_to_the_model_auto_resolves_to(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="emu-only", models=("emu/*",))

    # "hello there" routes to the chat basket, mock/echo: not allowed for this key.
    assert_error(chat(http, secret, "auto"), 403, "permission_denied")


# -- rate limits --------------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="rpm", rpm=2)
    other = gateway.create_key(name="rpm-other", rpm=2)

    first, second, third = (chat(http, secret) for _ in range(3))

    assert (first.status_code, second.status_code) == (200, 200)
    error = assert_error(third, 429, "rate_limit_exceeded")
    assert "2 requests per minute" in error["message"]
    retry_after = third.headers["retry-after"]
    assert retry_after.isdigit()
    assert 0 < int(retry_after) <= 60
    assert chat(http, other).status_code == 200  # limits are per key
    assert key_info(http, secret)["rpm"] == 2


def test_the_keys_own_429_is_distinct_from_an_upstream_429(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="upstream-429")

    response = chat(http, secret, "emu/gpt+status=429+retry_after=7")

    assert_error(response, 429, "upstream_rate_limit")
    assert response.headers["retry-after"] == "7"


def test_tpm_limit_answers_429_once_the_tokens_are_spent(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="tpm", tpm=5)

    first = chat(http, secret)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] >= 5
    second = chat(http, secret)

    error = assert_error(second, 429, "rate_limit_exceeded")
    assert "tokens per minute" in error["message"]
    assert 0 < int(second.headers["retry-after"]) <= 60


def test_a_rate_limited_request_is_in_the_ledger_as_an_error(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="rpm-ledger", rpm=1)
    chat(http, secret)

    limited = chat(http, secret)

    row = gateway.ledger_row(limited.headers["x-request-id"])
    assert (row.status, row.http_status, row.error_type) == ("error", 429, "rate_limit_exceeded")
    assert row.cost_nanos == 0


# -- credits ------------------------------------------------------------------------------------


def test_a_key_with_tiny_credits_gets_402_once_spent(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="tiny", credits_nanos=1_000)

    first = chat(http, secret)
    assert first.status_code == 200
    row = gateway.ledger_row(first.headers["x-request-id"])
    assert row.cost_nanos > 1_000
    second = chat(http, secret)

    error = assert_error(second, 402, "insufficient_credits")
    assert "top-up" in error["message"]
    info = key_info(http, secret)
    assert info["credits_remaining"] < 0
    assert info["credits_used"] == row.cost_nanos / NANOS_PER_USD


def test_a_key_with_zero_credits_is_402_at_once(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="empty", credits_nanos=0)

    assert_error(chat(http, secret), 402, "insufficient_credits")
    assert_error(chat(http, secret, stream=True), 402, "insufficient_credits")


def test_an_unlimited_key_shows_null_credits(http: httpx.Client, gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="unlimited")
    chat(http, secret)

    info = key_info(http, secret)

    assert info["credits"] is None
    assert info["credits_remaining"] is None
    assert info["credits_used"] > 0


# -- GET /v1/key --------------------------------------------------------------------------------


def test_v1_key_shows_the_keys_limits_and_credits(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    expires = time.time() + 3600
    new = gateway.call(
        gateway.app.keys.create(
            name="shown",
            credits_nanos=2_500_000_000,
            rpm=30,
            tpm=10_000,
            models=("mock/*", "emu/gpt"),
            expires_at=expires,
        )
    )

    info = key_info(http, new.secret)

    assert info == {
        "id": new.record.id,
        "name": "shown",
        "credits": 2.5,
        "credits_used": 0.0,
        "credits_remaining": 2.5,
        "credits_reserved": 0.0,
        "rpm": 30,
        "tpm": 10_000,
        "daily_tokens": None,
        "tokens_today": 0,
        "models": ["mock/*", "emu/gpt"],
        "expires_at": expires,
    }
    assert new.secret not in http.get("/v1/key", headers=bearer(new.secret)).text


def test_credits_used_is_exactly_the_sum_of_the_keys_ledger_costs(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    credits_nanos = 3 * NANOS_PER_USD
    secret = gateway.create_key(name="summed", credits_nanos=credits_nanos)
    # The stream goes first: its row is settled after its last byte, the others before theirs.
    streamed = http.post(
        "/v1/chat/completions",
        headers=bearer(secret),
        json={"model": "mock/echo", "messages": HELLO, "stream": True},
    )
    assert streamed.status_code == 200
    ids = [streamed.headers["x-request-id"]]
    ids += [
        chat(http, secret, model, messages=[{"role": "user", "content": text}]).headers[
            "x-request-id"
        ]
        for model, text in (
            ("mock/echo", "one"),
            ("mock/echo", "a somewhat longer message with more tokens in it"),
            ("emu/gpt", "hi"),
            ("emu/gpt+cached=5", "cache me if you can please"),
        )
    ]

    # Settled in the process already, before the ledger rows are in the database...
    before_flush = key_info(http, secret)
    rows = [gateway.ledger_row(request_id) for request_id in ids]
    spent = sum(row.cost_nanos for row in rows)
    # ...and the same once they are.
    after_flush = key_info(http, secret)

    assert all(row.cost_nanos > 0 for row in rows)
    for info in (before_flush, after_flush):
        assert info["credits_used"] == spent / NANOS_PER_USD
        assert info["credits_remaining"] == (credits_nanos - spent) / NANOS_PER_USD
    key_id = before_flush["id"]
    stored = gateway.call(gateway.app.store.get_key(key_id))
    assert stored is not None
    assert stored.credits_used_nanos == spent


def test_credits_used_survives_a_key_cache_refresh(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="refreshed", credits_nanos=NANOS_PER_USD)
    ids = [chat(http, secret).headers["x-request-id"] for _ in range(3)]
    spent = sum(gateway.ledger_row(request_id).cost_nanos for request_id in ids)

    gateway.call(gateway.app.keys.refresh())

    assert key_info(http, secret)["credits_used"] == spent / NANOS_PER_USD


# -- GET /v1/generation -------------------------------------------------------------------------


def generation(
    http: httpx.Client, secret: str, request_id: str, timeout: float = 2.0
) -> httpx.Response:
    """Poll until the row is written (the contract: within a second) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get("/v1/generation", headers=bearer(secret), params={"id": request_id})
        if response.status_code != 404 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def test_generation_returns_the_callers_own_row(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="gen")
    started = time.time()
    completion = chat(http, secret)
    request_id = completion.headers["x-request-id"]

    response = generation(http, secret, request_id)

    assert response.status_code == 200, response.text
    row = response.json()
    assert set(row) >= GENERATION_FIELDS
    usage = completion.json()["usage"]
    ledger = gateway.ledger_row(request_id)
    assert row["id"] == request_id == completion.json()["id"]
    assert (row["requested_model"], row["model"], row["provider"]) == (
        "mock/echo",
        "mock/echo",
        "mock",
    )
    assert row["basket"] is None
    assert row["stream"] is False
    assert row["status"] == "ok"
    assert row["prompt_tokens"] == usage["prompt_tokens"]
    assert row["completion_tokens"] == usage["completion_tokens"]
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (0, 0)
    assert row["cost"] == ledger.cost_nanos / NANOS_PER_USD > 0
    assert row["estimated"] is False
    assert row["latency_ms"] > 0
    assert row["ttft_ms"] is not None
    assert 0 <= row["ttft_ms"] <= row["latency_ms"]
    assert isinstance(row["created"], int)
    assert int(started) <= row["created"] <= time.time() + 1


def test_generation_of_an_auto_stream_names_the_basket(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    secret = gateway.create_key(name="gen-auto")
    streamed = http.post(
        "/v1/chat/completions",
        headers=bearer(secret),
        json={"model": "emu/gpt", "messages": HELLO, "stream": True},
    )
    routed = chat(http, secret, "auto")

    stream_row = generation(http, secret, streamed.headers["x-request-id"]).json()
    auto_row = generation(http, secret, routed.headers["x-request-id"]).json()

    assert stream_row["stream"] is True
    assert (stream_row["model"], stream_row["provider"]) == ("emu/gpt", "emu")
    assert stream_row["completion_tokens"] > 0
    assert auto_row["requested_model"] == "auto"
    assert auto_row["model"] == routed.headers["x-resolved-model"]
    assert auto_row["basket"] == routed.headers["x-route-basket"]


def test_generation_of_another_keys_request_is_404(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    owner = gateway.create_key(name="owner")
    snoop = gateway.create_key(name="snoop")
    request_id = chat(http, owner).headers["x-request-id"]
    gateway.ledger_row(request_id)  # the row exists

    response = http.get("/v1/generation", headers=bearer(snoop), params={"id": request_id})

    assert_error(response, 404, "not_found")
    assert generation(http, owner, request_id).status_code == 200


def test_generation_of_an_unknown_id_is_404(http: httpx.Client, gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="unknown-gen")

    response = http.get(
        "/v1/generation", headers=bearer(secret), params={"id": "chatcmpl-000000000000"}
    )

    error = assert_error(response, 404, "not_found")
    assert error["param"] == "id"


def test_generation_needs_an_id_and_a_key(http: httpx.Client, gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="no-id")

    assert_error(http.get("/v1/generation", headers=bearer(secret)), 400, "invalid_request_error")
    assert_error(http.get("/v1/generation", params={"id": "x"}), 401, "authentication_error")
