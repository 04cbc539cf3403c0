"""SIGTERM under load loses no ledger row: the buffer is flushed before the process exits, and when
the database is down at that moment the rows go to the journal and the next start writes them.

A real ``llmrelay serve`` process on a PostgreSQL cluster of the test's own (so stopping it
disturbs no one) and the shared Redis; the ledger flushes only every two seconds, so at the
signal most rows are still in memory.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from processes import ADMIN_KEY, GatewayProcess, Load, gateway_config
from services import REDIS_URL, PrivatePostgres, isolated_prefix

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


async def under_load(
    gateway: GatewayProcess,
    secret: str,
    seconds: float,
    then: Any = None,
    after: float = 0.0,
) -> tuple[Load, int]:
    """Load for ``seconds`` (calling ``then()`` and loading ``after`` more), SIGTERM under the
    load, and the exit status once the process is gone."""
    async with Load(gateway.base_url, secret) as load:
        await asyncio.sleep(seconds)
        if then is not None:
            await asyncio.to_thread(then)
            await asyncio.sleep(after)
        status = await asyncio.to_thread(gateway.terminate)
    return load, status


async def ledger(database: str, key_id: str) -> tuple[set[str], int, int]:
    """The key's row ids, the sum of their costs, and the key's credits_used."""
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT id, cost_nanos FROM ledger WHERE key_id = $1", key_id)
        used = await conn.fetchval("SELECT credits_used_nanos FROM api_keys WHERE id = $1", key_id)
    finally:
        await conn.close()
    return {r["id"] for r in rows}, sum(r["cost_nanos"] for r in rows), int(used)


def create_key(gateway: GatewayProcess) -> dict[str, Any]:
    response = httpx.post(
        gateway.base_url + "/admin/keys",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": "load", "credits": 1000},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_sigterm_under_load_keeps_every_row_even_with_the_database_down(tmp_path: Path) -> None:
    database = PrivatePostgres()
    started: list[GatewayProcess] = []

    def start(config: Path) -> GatewayProcess:
        gateway = GatewayProcess(config).start()
        started.append(gateway)
        gateway.wait_ready()
        return gateway

    try:
        with isolated_prefix() as prefix:
            config = gateway_config(
                tmp_path,
                "gateway",
                database_url=database.url,
                redis_url=REDIS_URL,
                accounting={"redis_key_prefix": prefix},
                ledger={"flush_interval_seconds": 2.0},
            )
            journal = tmp_path / "gateway.journal"
            first = start(config)
            key = create_key(first)

            # 1. SIGTERM under load, the database up: every answered request is in the ledger
            # the moment the process has exited.
            load, status = asyncio.run(under_load(first, key["key"], 1.5))
            answered = set(load.answered())
            written, costs, used = asyncio.run(ledger(database.url, key["id"]))
            assert status == 0, first.output()
            assert len(answered) > 50
            assert any(s.status == 200 and s.stream for s in load.sent)
            assert answered <= written
            assert costs == used

            # 2. The database stops under load, then SIGTERM: the rows go to the journal...
            second = start(config)
            load, status = asyncio.run(under_load(second, key["key"], 0.5, database.stop, 1.0))
            assert status == 0, second.output()
            during = set(load.answered())
            assert journal.exists()
            assert {s.status for s in load.sent} <= {0, 200}  # served throughout the outage

            # ...and the next start writes them.
            database.start()
            third = start(config)
            deadline = time.monotonic() + 15
            while True:
                written, costs, used = asyncio.run(ledger(database.url, key["id"]))
                if (answered | during) <= written or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert third.terminate() == 0
            client = redis.Redis.from_url(REDIS_URL)
            shared = client.hget(f"{prefix}{{{key['id']}}}:acct", "used")
            client.close()
    finally:
        for gateway in started:
            gateway.kill()
        database.close()

    assert (answered | during) <= written
    assert not journal.exists()
    assert not (tmp_path / "gateway.journal.replaying").exists()
    assert not (tmp_path / "gateway.journal.rejected").exists()
    assert costs == used  # credits_used is the sum of the ledger's costs, across it all
    assert shared is not None
    assert int(shared) == used  # and the shared figure agrees
