"""The database stopped for 30 seconds under load: requests keep being served (keys from the
cache, limits and credits from Redis), the ledger buffers then spills to its journal, and once the
database is back every row is written (the journal too, with no new traffic to prompt it) and
credits_used is still exactly the sum of the ledger's costs.

A real ``llmrelay serve`` process on a PostgreSQL cluster of the test's own, stopped with
``pg_ctl stop -m fast`` (sessions are terminated, as in a real outage) and started again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis

from processes import ADMIN_KEY, GatewayProcess, Load, gateway_config
from services import REDIS_URL, PrivatePostgres, isolated_prefix

OUTAGE_SECONDS = 30.0

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


async def admin_key(session: aiohttp.ClientSession, base_url: str, name: str) -> dict[str, Any]:
    async with session.post(
        base_url + "/admin/keys",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": name, "credits": 1000},
    ) as response:
        assert response.status == 201, await response.text()
        created: dict[str, Any] = await response.json()
        return created


async def get(session: aiohttp.ClientSession, url: str, secret: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def chat(session: aiohttp.ClientSession, base_url: str, secret: str) -> Any:
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(
        base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
    ) as response:
        return response.status, await response.json()


async def outage(
    gateway: GatewayProcess, database: PrivatePostgres, journal: Path
) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        key = await admin_key(session, gateway.base_url, "busy")
        stranger = await admin_key(session, gateway.base_url, "never-seen")
        load = Load(gateway.base_url, key["key"], workers=8)
        async with load:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(database.stop)
            started = time.monotonic()
            await asyncio.sleep(3.0)
            seen["own_key"] = await get(session, gateway.base_url + "/v1/key", key["key"])
            seen["stranger"] = await chat(session, gateway.base_url, stranger["key"])
            seen["health"] = await get(session, gateway.base_url + "/health")
            while time.monotonic() - started < OUTAGE_SECONDS:
                seen["spilled"] = seen.get("spilled") or await asyncio.to_thread(journal.exists)
                await asyncio.sleep(0.5)
        # No traffic any more: the journal must be written all the same.
        await asyncio.to_thread(database.start)
        seen["key"] = key
        seen["load"] = load
    return seen


async def ledger(database: str, key_id: str, expected: set[str]) -> tuple[set[str], int, int]:
    """The key's row ids once ``expected`` are all there (or after 30 s), the sum of their
    costs, and the key's credits_used."""
    conn = await asyncpg.connect(database)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = await conn.fetch("SELECT id, cost_nanos FROM ledger WHERE key_id = $1", key_id)
            ids = {r["id"] for r in rows}
            if expected <= ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        used = await conn.fetchval("SELECT credits_used_nanos FROM api_keys WHERE id = $1", key_id)
    finally:
        await conn.close()
    return ids, sum(r["cost_nanos"] for r in rows), int(used)


def test_thirty_seconds_without_the_database_lose_no_row(tmp_path: Path) -> None:
    database = PrivatePostgres()
    gateway: GatewayProcess | None = None
    try:
        with isolated_prefix() as prefix:
            config = gateway_config(
                tmp_path,
                "gateway",
                database_url=database.url,
                redis_url=REDIS_URL,
                key_cache_seconds=1,
                accounting={"redis_key_prefix": prefix},
                ledger={"batch_size": 50, "buffer_rows": 200},
            )
            journal = tmp_path / "gateway.journal"
            gateway = GatewayProcess(config).start()
            gateway.wait_ready()
            seen = asyncio.run(outage(gateway, database, journal))
            key_id = seen["key"]["id"]
            answered = set(seen["load"].answered())
            written, costs, used = asyncio.run(ledger(database.url, key_id, answered))
            client = redis.Redis.from_url(REDIS_URL)
            shared = client.hget(f"{prefix}{{{key_id}}}:acct", "used")
            client.close()
            status = gateway.terminate()
    finally:
        if gateway is not None:
            gateway.kill()
        database.close()

    sent = seen["load"].sent
    assert {s.status for s in sent} == {200}, "every request was served through the outage"
    assert len(answered) > 400
    assert seen["own_key"][0] == 200
    assert seen["stranger"][0] == 503
    assert seen["stranger"][1]["error"]["type"] == "service_unavailable"
    assert seen["health"][0] == 200
    assert seen["health"][1]["ledger_pending"] > 0
    assert seen["spilled"], "the buffer never spilled to the journal"
    assert written == answered  # every row, once
    assert not journal.exists()
    assert not (tmp_path / "gateway.journal.replaying").exists()
    assert not (tmp_path / "gateway.journal.rejected").exists()
    assert costs == used
    assert shared is not None
    assert int(shared) == used
    assert status == 0
