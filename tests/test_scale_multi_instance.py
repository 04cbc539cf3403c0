"""Three ``llmrelay serve`` processes sharing one PostgreSQL database and one Redis, under 500
concurrent requests at a time: the rate limit is exact across them, credits are never overspent
beyond what reservations allow, and every request has exactly one ledger row."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis

from processes import ADMIN_KEY, GatewayProcess, gateway_config
from services import REDIS_URL, isolated_database, isolated_prefix

CROWD = 500
RPM = 137
CREDITS_NANOS = 1_000_000
HELLO = [{"role": "user", "content": "hello there"}]
# At 1 and 2 USD per million tokens: the prompt is 10 tokens (10,000 nano-dollars) and the echo 2
# tokens (4,000); a request with max_tokens 50 reserves 10,000 + 100,000.
COST = 14_000
ESTIMATE = 110_000

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def call(
    session: aiohttp.ClientSession, method: str, url: str, secret: str, body: Any = None
) -> Answer:
    headers = {"Authorization": f"Bearer {secret}"}
    async with session.request(method, url, json=body, headers=headers) as response:
        payload = await response.json(content_type=None)
        return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, payload)


async def crowd(
    session: aiohttp.ClientSession, gateways: list[GatewayProcess], secret: str, **extra: Any
) -> list[Answer]:
    """CROWD requests at once, spread over the instances."""
    body = {"model": "mock/echo", "messages": HELLO, **extra}
    return await asyncio.gather(
        *(
            call(session, "POST", gateways[n % 3].base_url + "/v1/chat/completions", secret, body)
            for n in range(CROWD)
        )
    )


async def scenario(gateways: list[GatewayProcess], database: str) -> dict[str, Any]:
    # aiohttp, not httpx: the client must not be the bottleneck of 500 requests at once.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        keys = {}
        for name, fields in (
            ("rpm", {"rpm": RPM}),
            ("credits", {"credits": CREDITS_NANOS / 1e9}),
        ):
            url = gateways[0].base_url + "/admin/keys"
            created = await call(session, "POST", url, ADMIN_KEY, {"name": name, **fields})
            assert created.status == 201, created.body
            keys[name] = created.body
        limited = await crowd(session, gateways, keys["rpm"]["key"])
        spent = await crowd(session, gateways, keys["credits"]["key"], max_tokens=50)
        ids = [r.headers["x-request-id"] for r in limited + spent]
        rows = await ledger_rows(database, [k["id"] for k in keys.values()], len(ids))
        views = [
            (await call(session, "GET", g.base_url + "/v1/key", keys["credits"]["key"])).body
            for g in gateways
        ]
    return {
        "keys": keys,
        "limited": limited,
        "spent": spent,
        "ids": ids,
        "rows": rows,
        "views": views,
    }


async def ledger_rows(database: str, key_ids: list[str], expected: int) -> dict[str, Any]:
    """The keys' rows once ``expected`` of them are written (the ledger is asynchronous)."""
    conn = await asyncpg.connect(database)
    try:
        deadline = time.monotonic() + 20
        while True:
            rows = await conn.fetch(
                "SELECT id, key_id, status, http_status, cost_nanos FROM ledger "
                "WHERE key_id = ANY($1::text[])",
                key_ids,
            )
            if len(rows) >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        used = dict(
            await conn.fetch(
                "SELECT id, credits_used_nanos FROM api_keys WHERE id = ANY($1::text[])", key_ids
            )
        )
    finally:
        await conn.close()
    return {"rows": [dict(r) for r in rows], "used": used}


def redis_spend(prefix: str, key_id: str) -> int | None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + 5
        value = client.hget(f"{prefix}{{{key_id}}}:acct", "used")
        while (client.hget(f"{prefix}{{{key_id}}}:acct", "reserved") or b"0") != b"0":
            assert time.monotonic() < deadline, "reservations never all settled"
            time.sleep(0.05)
        value = client.hget(f"{prefix}{{{key_id}}}:acct", "used")
    finally:
        client.close()
    return None if value is None else int(value)


def test_three_instances_share_limits_credits_and_one_ledger(tmp_path: Path) -> None:
    with isolated_database() as database, isolated_prefix() as prefix:
        gateways = [
            GatewayProcess(
                gateway_config(
                    tmp_path,
                    f"gateway{n}",
                    database_url=database,
                    redis_url=REDIS_URL,
                    accounting={"redis_key_prefix": prefix},
                )
            ).start()
            for n in range(3)
        ]
        try:
            for gateway in gateways:
                gateway.wait_ready()
            result = asyncio.run(scenario(gateways, database))
            credits_id = result["keys"]["credits"]["id"]
            shared_spend = redis_spend(prefix, credits_id)
            statuses = [gateway.terminate() for gateway in gateways]
        finally:
            for gateway in gateways:
                gateway.kill()

    # The rate limit: exactly RPM of the crowd, whichever instance each request reached. (Each
    # instance got about 167 requests, more than RPM: windows of their own would let through
    # up to three times RPM.)
    limited = Counter(r.status for r in result["limited"])
    assert limited == {200: RPM, 429: CROWD - RPM}, limited
    for response in result["limited"]:
        if response.status == 429:
            assert response.body["error"]["type"] == "rate_limit_exceeded"
            assert 1 <= int(response.headers["retry-after"]) <= 60

    # Credits: admitted while anything was left after the reservations in flight, so the spend
    # passes the limit by less than one reservation, however the crowd interleaved.
    spent = Counter(r.status for r in result["spent"])
    assert set(spent) == {200, 402}, spent
    served = spent[200]
    used = result["rows"]["used"][credits_id]
    assert used == served * COST
    assert served >= CREDITS_NANOS // ESTIMATE
    assert used < CREDITS_NANOS + ESTIMATE
    assert shared_spend == used
    for view in result["views"]:
        assert view["credits_used"] == used / 1e9
        assert view["credits_reserved"] == 0

    # The ledger: one row per request (the refused ones too), none twice, costs summing exactly.
    rows = result["rows"]["rows"]
    assert sorted(r["id"] for r in rows) == sorted(result["ids"])
    by_key = Counter(r["key_id"] for r in rows)
    assert by_key == {result["keys"]["rpm"]["id"]: CROWD, credits_id: CROWD}
    assert sum(r["cost_nanos"] for r in rows if r["key_id"] == credits_id) == used
    assert Counter(r["http_status"] for r in rows if r["key_id"] == credits_id) == spent
    assert statuses == [0, 0, 0]
