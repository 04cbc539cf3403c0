"""The admin HTTP API (``/admin/...``) against a real gateway: keys, credits, usage, auth."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrelay.testing.harness import RunningGateway

HELLO = [{"role": "user", "content": "hello there"}]

# Every admin route, with a body that would be valid for it.
ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/admin/keys", {"name": "intruder"}),
    ("GET", "/admin/keys", None),
    ("DELETE", "/admin/keys/key_0000000000000000", None),
    ("POST", "/admin/keys/key_0000000000000000/credits", {"amount": 1}),
    ("GET", "/admin/usage", None),
]


@pytest.fixture(scope="module")
def gateway(module_gateway: RunningGateway) -> RunningGateway:
    return module_gateway


def admin(gateway: RunningGateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.admin_key}"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def chat(http: httpx.Client, secret: str, model: str = "mock/echo") -> httpx.Response:
    return http.post(
        "/v1/chat/completions", headers=bearer(secret), json={"model": model, "messages": HELLO}
    )


def create(http: httpx.Client, gateway: RunningGateway, **body: Any) -> dict[str, Any]:
    response = http.post("/admin/keys", headers=admin(gateway), json={"name": "k", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def list_keys(http: httpx.Client, gateway: RunningGateway) -> list[dict[str, Any]]:
    response = http.get("/admin/keys", headers=admin(gateway))
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == status
    assert error["type"] == error_type
    assert error["message"]
    return error


# -- creating keys ------------------------------------------------------------------------------


def test_create_key_answers_201_with_a_working_key(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    response = http.post(
        "/admin/keys",
        headers=admin(gateway),
        json={"name": "alice", "credits": 5, "rpm": 10, "tpm": 1000, "models": ["mock/*"]},
    )

    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("key_")
    assert body["key"].startswith("lr-")
    assert body["name"] == "alice"
    assert body["credits"] == 5.0
    assert body["credits_used"] == 0.0
    assert (body["rpm"], body["tpm"], body["models"]) == (10, 1000, ["mock/*"])
    assert body["revoked"] is False
    answer = chat(http, body["key"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hello there"
    assert http.get("/v1/key", headers=bearer(body["key"])).json()["id"] == body["id"]


def test_created_keys_are_distinct_and_limits_default_to_none(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    first = create(http, gateway)
    second = create(http, gateway)

    assert first["id"] != second["id"]
    assert first["key"] != second["key"]
    assert (first["credits"], first["rpm"], first["tpm"], first["models"]) == (None, None, None, [])


def test_create_key_with_an_unknown_field_is_400_naming_it(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    before = list_keys(http, gateway)

    response = http.post(
        "/admin/keys", headers=admin(gateway), json={"name": "a", "credits": 1, "colour": "red"}
    )

    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == "colour"
    assert "colour" in error["message"]
    assert list_keys(http, gateway) == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "a", "credits": -1}, "credits"),
        ({"name": "a", "credits": -0.000001}, "credits"),
        ({"name": "a", "credits": "abc"}, "credits"),
        ({"name": "a", "credits": "5"}, "credits"),
        ({"name": "a", "credits": True}, "credits"),
        ({"name": "a", "credits": [5]}, "credits"),
        ({"name": "a", "credits": 1e11}, "credits"),  # past what 64-bit nano-dollars can hold
        ({"name": "a", "rpm": 0}, "rpm"),
        ({"name": "a", "rpm": 2.5}, "rpm"),
        ({"name": "a", "tpm": -5}, "tpm"),
        ({"name": "a", "models": "mock/*"}, "models"),
        ({"name": ""}, "name"),
        ({"credits": 1}, "name"),
    ],
)
def test_create_key_rejects_invalid_fields_and_writes_nothing(
    http: httpx.Client, gateway: RunningGateway, body: dict[str, Any], param: str
) -> None:
    before = list_keys(http, gateway)

    response = http.post("/admin/keys", headers=admin(gateway), json=body)

    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == param
    assert list_keys(http, gateway) == before


@pytest.mark.parametrize(
    "content", [b"", b"not json", b"[1, 2]", b'{"name": "a", "credits": 1e400}']
)
def test_create_key_rejects_a_body_that_is_not_a_json_object(
    http: httpx.Client, gateway: RunningGateway, content: bytes
) -> None:
    before = list_keys(http, gateway)

    response = http.post(
        "/admin/keys",
        headers={**admin(gateway), "Content-Type": "application/json"},
        content=content,
    )

    assert_error(response, 400, "invalid_request_error")
    assert list_keys(http, gateway) == before


def test_credits_are_stored_exactly(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway, credits=0.1)

    shown = http.get("/v1/key", headers=bearer(created["key"])).json()

    assert created["credits"] == 0.1
    assert shown["credits"] == 0.1
    assert shown["credits_remaining"] == 0.1


# -- listing ------------------------------------------------------------------------------------


def test_list_keys_never_returns_a_secret_or_its_hash(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    created = create(http, gateway, credits=2, models=["mock/echo"])
    assert chat(http, created["key"]).status_code == 200  # a cached key is listed too

    response = http.get("/admin/keys", headers=admin(gateway))

    assert response.status_code == 200
    listed = {entry["id"]: entry for entry in response.json()["data"]}
    assert created["id"] in listed
    entry = listed[created["id"]]
    assert entry["name"] == "k"
    assert entry["credits"] == 2.0
    assert entry["models"] == ["mock/echo"]
    for secret in (created["key"], gateway.admin_key):
        assert secret not in response.text
        assert hashlib.sha256(secret.encode()).hexdigest() not in response.text
    for view in listed.values():
        assert "key" not in view
        assert "key_hash" not in view
        assert len(view["prefix"]) < 10


def test_list_shows_spend_settled_by_requests(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway, credits=1)
    request_id = chat(http, created["key"]).headers["x-request-id"]
    cost = gateway.ledger_row(request_id).cost_nanos
    assert cost > 0

    entry = next(e for e in list_keys(http, gateway) if e["id"] == created["id"])

    assert entry["credits_used"] == cost / 1e9


# -- revoking -----------------------------------------------------------------------------------


def test_revoked_key_gets_401(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway)
    assert chat(http, created["key"]).status_code == 200

    response = http.delete(f"/admin/keys/{created['id']}", headers=admin(gateway))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == created["id"]
    assert response.json()["revoked"] is True
    assert "key" not in response.json()
    assert_error(chat(http, created["key"]), 401, "authentication_error")
    assert_error(http.get("/v1/key", headers=bearer(created["key"])), 401, "authentication_error")
    entry = next(e for e in list_keys(http, gateway) if e["id"] == created["id"])
    assert entry["revoked"] is True


def test_revoking_leaves_other_keys_working(http: httpx.Client, gateway: RunningGateway) -> None:
    doomed = create(http, gateway)
    kept = create(http, gateway)

    http.delete(f"/admin/keys/{doomed['id']}", headers=admin(gateway))

    assert chat(http, kept["key"]).status_code == 200


def test_revoking_a_missing_key_is_404(http: httpx.Client, gateway: RunningGateway) -> None:
    response = http.delete("/admin/keys/key_doesnotexist", headers=admin(gateway))

    error = assert_error(response, 404, "not_found")
    assert error["param"] == "key_id"


# -- credits ------------------------------------------------------------------------------------


def test_top_up_adds_credits(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway, credits=1)
    assert chat(http, created["key"]).status_code == 200  # cached in the gateway before the top-up

    response = http.post(
        f"/admin/keys/{created['id']}/credits", headers=admin(gateway), json={"amount": 2.5}
    )

    assert response.status_code == 200, response.text
    assert response.json()["credits"] == 3.5
    shown = http.get("/v1/key", headers=bearer(created["key"])).json()
    assert shown["credits"] == 3.5
    assert shown["credits_remaining"] == pytest.approx(3.5 - shown["credits_used"], abs=1e-9)


def test_top_up_unblocks_a_key_without_credits(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway, credits=0)
    assert_error(chat(http, created["key"]), 402, "insufficient_credits")

    http.post(f"/admin/keys/{created['id']}/credits", headers=admin(gateway), json={"amount": 1})

    assert chat(http, created["key"]).status_code == 200


def test_top_up_of_a_missing_key_is_404(http: httpx.Client, gateway: RunningGateway) -> None:
    response = http.post(
        "/admin/keys/key_doesnotexist/credits", headers=admin(gateway), json={"amount": 1}
    )

    assert_error(response, 404, "not_found")


def test_top_up_of_an_unlimited_key_is_400(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway)

    response = http.post(
        f"/admin/keys/{created['id']}/credits", headers=admin(gateway), json={"amount": 1}
    )

    error = assert_error(response, 400, "invalid_request_error")
    assert "unlimited" in error["message"]
    entry = next(e for e in list_keys(http, gateway) if e["id"] == created["id"])
    assert entry["credits"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0},
        {"amount": -1},
        {"amount": "2"},
        {"amount": True},
        {"amount": 1e10},
        {"amount": 999_999_999.5},  # the total would pass the ceiling
        {},
        {"amount": 1, "x": 1},
    ],
)
def test_top_up_rejects_a_bad_amount_and_changes_nothing(
    http: httpx.Client, gateway: RunningGateway, body: dict[str, Any]
) -> None:
    created = create(http, gateway, credits=1)

    response = http.post(f"/admin/keys/{created['id']}/credits", headers=admin(gateway), json=body)

    assert_error(response, 400, "invalid_request_error")
    entry = next(e for e in list_keys(http, gateway) if e["id"] == created["id"])
    assert entry["credits"] == 1.0


# -- who may call -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_a_user_key_on_an_admin_route_is_403(
    http: httpx.Client,
    gateway: RunningGateway,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    user = create(http, gateway)
    before = list_keys(http, gateway)

    response = http.request(method, path, headers=bearer(user["key"]), json=body)

    assert_error(response, 403, "permission_denied")
    assert user["key"] not in response.text
    assert list_keys(http, gateway) == before


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_no_key_on_an_admin_route_is_401(
    http: httpx.Client,
    gateway: RunningGateway,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response = http.request(method, path, json=body)

    assert_error(response, 401, "authentication_error")


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_a_bad_key_on_an_admin_route_is_401_and_never_echoed(
    http: httpx.Client,
    gateway: RunningGateway,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    bad = "lr-definitely-not-a-real-key-4242"
    before = list_keys(http, gateway)

    for headers, params in (
        (bearer(bad), {}),
        ({"x-api-key": bad}, {}),
        ({}, {"key": bad}),
    ):
        response = http.request(method, path, headers=headers, params=params, json=body)
        assert_error(response, 401, "authentication_error")
        assert bad not in response.text
        assert "4242" not in response.text
        assert all(bad not in value for value in response.headers.values())
    assert list_keys(http, gateway) == before


def test_a_revoked_admin_key_loses_admin_access(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    second = gateway.call(gateway.app.keys.create(name="admin2", is_admin=True))
    assert http.get("/admin/keys", headers=bearer(second.secret)).status_code == 200

    http.delete(f"/admin/keys/{second.record.id}", headers=admin(gateway))

    assert_error(
        http.get("/admin/keys", headers=bearer(second.secret)), 401, "authentication_error"
    )


# -- usage --------------------------------------------------------------------------------------


def usage(http: httpx.Client, gateway: RunningGateway, **params: Any) -> dict[str, Any]:
    response = http.get("/admin/usage", headers=admin(gateway), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_usage_totals_match_the_requests_made(http: httpx.Client, gateway: RunningGateway) -> None:
    alice = create(http, gateway, name="alice")
    bob = create(http, gateway, name="bob")
    responses = [chat(http, alice["key"]) for _ in range(3)]
    responses.append(chat(http, alice["key"], "emu/gpt"))
    bob_response = chat(http, bob["key"])
    assert all(r.status_code == 200 for r in [*responses, bob_response])

    # No waiting for the ledger: the report flushes the writer before it reads.
    report = usage(http, gateway, key_id=alice["id"])

    totals = report["totals"]
    assert totals["requests"] == 4
    assert totals["prompt_tokens"] == sum(r.json()["usage"]["prompt_tokens"] for r in responses)
    assert totals["completion_tokens"] == sum(
        r.json()["usage"]["completion_tokens"] for r in responses
    )
    rows = [gateway.ledger_row(r.headers["x-request-id"]) for r in responses]
    assert totals["cost"] == sum(row.cost_nanos for row in rows) / 1e9
    assert totals["cost"] > 0
    assert {row["id"] for row in report["data"]} == {r.headers["x-request-id"] for r in responses}
    assert report["filters"]["key_id"] == alice["id"]
    assert bob_response.headers["x-request-id"] not in {row["id"] for row in report["data"]}


def test_usage_groups_by_key_model_provider_and_day(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    alice = create(http, gateway)
    bob = create(http, gateway)
    for secret, model in (
        (alice["key"], "mock/echo"),
        (alice["key"], "mock/echo"),
        (alice["key"], "emu/gpt"),
        (bob["key"], "mock/echo"),
    ):
        assert chat(http, secret, model).status_code == 200

    def groups(**params: Any) -> dict[Any, int]:
        report = usage(http, gateway, **params)
        assert report["group_by"] == params["group_by"]
        assert sum(g["requests"] for g in report["groups"]) == report["totals"]["requests"]
        assert sum(g["cost"] for g in report["groups"]) == pytest.approx(report["totals"]["cost"])
        return {g["group"]: g["requests"] for g in report["groups"]}

    by_key = groups(group_by="key")
    assert by_key[alice["id"]] == 3
    assert by_key[bob["id"]] == 1
    assert groups(group_by="model", key_id=alice["id"]) == {"mock/echo": 2, "emu/gpt": 1}
    assert groups(group_by="provider", key_id=alice["id"]) == {"mock": 2, "emu": 1}
    today = int(time.time() // 86400 * 86400)
    assert {int(day): n for day, n in groups(group_by="day", key_id=alice["id"]).items()} == {
        today: 3
    }
    assert usage(http, gateway)["group_by"] == "model"


def test_usage_since_filters_by_time(http: httpx.Client, gateway: RunningGateway) -> None:
    created = create(http, gateway)
    chat(http, created["key"])
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    later = chat(http, created["key"])

    assert usage(http, gateway, key_id=created["id"])["totals"]["requests"] == 2
    recent = usage(http, gateway, key_id=created["id"], since=cutoff)
    assert recent["totals"]["requests"] == 1
    assert [row["id"] for row in recent["data"]] == [later.headers["x-request-id"]]
    assert recent["filters"]["since"] == cutoff
    future = usage(http, gateway, key_id=created["id"], since=time.time() + 3600)
    assert future["totals"] == {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": 0,
    }
    assert future["data"] == []
    iso = usage(http, gateway, key_id=created["id"], since="2000-01-01T00:00:00+00:00")
    assert iso["totals"]["requests"] == 2


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"colour": "red"}, "colour"),
        ({"key_id": "x", "sinec": "1"}, "sinec"),
        ({"group_by": "week"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"since": "nan"}, "since"),
        ({"until": "inf"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_usage_rejects_bad_query_parameters(
    http: httpx.Client, gateway: RunningGateway, params: dict[str, str], param: str
) -> None:
    response = http.get("/admin/usage", headers=admin(gateway), params=params)

    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == param
    assert param in error["message"]


def test_usage_of_an_unknown_key_is_empty(http: httpx.Client, gateway: RunningGateway) -> None:
    report = usage(http, gateway, key_id="key_nobody")

    assert report["totals"]["requests"] == 0
    assert report["groups"] == []


def test_the_key_creation_example_in_the_docs_works(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "accounting.md").read_text()
    match = re.search(r"curl -s http://127.0.0.1:8080/admin/keys.*?-d '(\{.*?\})'", doc, re.S)
    assert match, "the curl example is gone from docs/accounting.md"
    body = json.loads(match.group(1))

    response = http.post("/admin/keys", headers=admin(gateway), json=body)

    assert response.status_code == 201, response.text
    created = response.json()
    assert {k: created[k] for k in body} == {**body, "credits": float(body["credits"])}
    assert chat(http, created["key"]).status_code == 200
