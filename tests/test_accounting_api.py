"""Accounting through the HTTP API and the CLI: the daily token quota, reservations seen from a
client, ``/v1/key``'s usage fields, ``/v1/generation`` for the admin key, usage filters, and
accounting turned off."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from conftest import make_settings
from llmrelay.accounting.limits import DAY_SECONDS, utc_day
from llmrelay.cli import main
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator, start_gateway

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def gateway(module_gateway: RunningGateway) -> RunningGateway:
    return module_gateway


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def admin(gateway: RunningGateway) -> dict[str, str]:
    return bearer(gateway.admin_key)


def chat(http: httpx.Client, secret: str, model: str = "mock/echo", **extra: Any) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        headers=bearer(secret),
        json={"model": model, "messages": HELLO, **extra},
    )


# -- the daily token quota ----------------------------------------------------------------------


def test_a_daily_token_quota_set_through_the_admin_api_is_enforced(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    created = http.post(
        "/admin/keys", headers=admin(gateway), json={"name": "daily", "daily_tokens": 20}
    )
    assert created.status_code == 201, created.text
    secret = created.json()["key"]
    assert created.json()["daily_tokens"] == 20

    served = [chat(http, secret) for _ in range(2)]  # about 12 tokens each
    refused = chat(http, secret)
    info = http.get("/v1/key", headers=bearer(secret)).json()

    assert [r.status_code for r in served] == [200, 200]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert "daily quota of 20 tokens" in error["message"]
    _, midnight = utc_day()
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - (midnight + DAY_SECONDS - time.time())) < 5
    spent = sum(r.json()["usage"]["total_tokens"] for r in served)
    assert (info["daily_tokens"], info["tokens_today"]) == (20, spent)
    listed = {k["id"]: k for k in http.get("/admin/keys", headers=admin(gateway)).json()["data"]}
    assert listed[info["id"]]["daily_tokens"] == 20


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("daily_tokens", 0),
        ("daily_tokens", -5),
        ("daily_tokens", "100"),
        ("daily_tokens", 2.5),
        ("daily_tokens", True),
        ("daily_tokens", 10**16),
        ("tpm", 2**31),  # past a 32-bit column: refused, not a 500 from PostgreSQL
        ("rpm", 2**40),
        ("name", "nul\u0000name"),  # PostgreSQL text cannot hold it
        ("models", ["mock/\u0000"]),
    ],
)
def test_a_bad_limit_is_400_and_writes_nothing(
    http: httpx.Client, gateway: RunningGateway, field: str, value: Any
) -> None:
    before = http.get("/admin/keys", headers=admin(gateway)).json()["data"]

    response = http.post("/admin/keys", headers=admin(gateway), json={"name": "bad", field: value})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert http.get("/admin/keys", headers=admin(gateway)).json()["data"] == before


# -- credits ------------------------------------------------------------------------------------


async def test_concurrent_requests_cannot_spend_past_their_reservations(
    gateway: RunningGateway,
) -> None:
    # mock/lorem answers 60 tokens in about a second. At 1 and 2 USD per million tokens, each
    # request reserves its 10 prompt tokens plus max_tokens 100: 210,000 nano-dollars. Credits
    # of 1,000,000 cover the reservations of five requests at once (a request is admitted while
    # anything is left); each then costs 130,000.
    secret = gateway.create_key(name="reserved", credits_nanos=1_000_000)
    body = {"model": "mock/lorem", "messages": HELLO, "max_tokens": 100}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", headers=bearer(secret), json=body)
                for _ in range(20)
            )
        )
        info = (await client.get("/v1/key", headers=bearer(secret))).json()

    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 402]
    assert len(served) + len(refused) == 20
    assert len(served) == 5
    assert all("in flight" in a.json()["error"]["message"] for a in refused)
    costs = [gateway.ledger_row(a.headers["x-request-id"]).cost_nanos for a in served]
    assert info["credits_used"] == sum(costs) / 1e9 == 5 * 130_000 / 1e9
    assert info["credits_reserved"] == 0


# -- /v1/generation -----------------------------------------------------------------------------


def test_the_admin_key_reads_only_its_own_generations(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    user = gateway.create_key(name="someone")
    theirs = chat(http, user).headers["x-request-id"]
    mine = chat(http, gateway.admin_key).headers["x-request-id"]
    gateway.ledger_row(theirs)
    gateway.ledger_row(mine)

    other = http.get("/v1/generation", headers=admin(gateway), params={"id": theirs})
    own = http.get("/v1/generation", headers=admin(gateway), params={"id": mine})

    assert other.status_code == 404
    assert other.json()["error"]["type"] == "not_found"
    assert own.status_code == 200
    usage = http.get("/admin/usage", headers=admin(gateway), params={"key_id": "x"})
    assert usage.status_code == 200  # others' rows: through the admin usage report


# -- /admin/usage filters -----------------------------------------------------------------------


def test_usage_filters_by_model_and_provider(http: httpx.Client, gateway: RunningGateway) -> None:
    secret = gateway.create_key(name="filters")
    key_id = http.get("/v1/key", headers=bearer(secret)).json()["id"]
    ids = [chat(http, secret, model).headers["x-request-id"] for model in ("mock/echo", "emu/gpt")]
    for request_id in ids:
        gateway.ledger_row(request_id)

    def report(**params: str) -> dict[str, Any]:
        response = http.get(
            "/admin/usage", headers=admin(gateway), params={"key_id": key_id, **params}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    by_model = report(model="emu/gpt", group_by="provider")
    by_provider = report(provider="mock")

    assert [g["group"] for g in by_model["groups"]] == ["emu"]
    assert by_model["totals"]["requests"] == 1
    assert [r["id"] for r in by_model["data"]] == [ids[1]]
    assert by_model["filters"]["model"] == "emu/gpt"
    assert [g["group"] for g in by_provider["groups"]] == ["mock/echo"]
    bad = http.get("/admin/usage", headers=admin(gateway), params={"colour": "red"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "colour"


# -- accounting off -----------------------------------------------------------------------------


def test_with_accounting_off_nothing_is_limited_or_written(
    tmp_path: Path, emulator: ThreadedEmulator
) -> None:
    settings = make_settings(tmp_path, emulator.base_url, accounting={"enabled": False})
    with start_gateway(settings) as running, httpx.Client(base_url=running.base_url) as http:
        secret = running.create_key(name="free", rpm=1, credits_nanos=0)
        answers = [chat(http, secret) for _ in range(3)]
        rows = running.ledger_rows()
        denied = http.post("/v1/chat/completions", json={"model": "mock/echo", "messages": HELLO})

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert rows == []
    assert denied.status_code == 401  # keys are still checked


# -- the CLI ------------------------------------------------------------------------------------


def test_keys_create_takes_a_daily_token_quota(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"LLMRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "COLUMNS": "200"}

    created = runner.invoke(
        main, ["keys", "create", "--name", "q", "--daily-tokens", "5000", "--json"], env=env
    )
    refused = runner.invoke(main, ["keys", "create", "--name", "z", "--daily-tokens", "0"], env=env)
    listed = runner.invoke(main, ["keys", "list", "--json"], env=env)
    table = runner.invoke(main, ["keys", "list"], env=env)

    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["daily_tokens"] == 5000
    assert refused.exit_code == 2
    assert [k["daily_tokens"] for k in json.loads(listed.stdout)] == [5000]
    assert "5000" in table.stdout
