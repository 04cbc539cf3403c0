"""A CI-sized run of the gateway bench (bench/gateway.py): the gateway against the direct path.

No wrk, no nginx: the emulator is the upstream and a small aiohttp client the load, all in this
process, for whole answers and for streams (time to the first ``data:`` event). The only timing
bound is a gross one (the gateway must not add tens of milliseconds to a request or to a stream's
first event); the real figures come from ``bench/gateway.py`` and are in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import orjson

from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

REQUESTS = 300
IN_FLIGHT = 12
GROSS_ADDED_P50_SECONDS = 0.050
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there gateway"},
]


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, key: str) -> float:
    """One POST, its body read; its latency in seconds. Fails on any status but 200."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        payload = await response.read()
        assert response.status == 200, payload[:300]
    elapsed = time.perf_counter() - started
    assert orjson.loads(payload)["choices"][0]["message"]["content"], payload[:300]
    return elapsed


async def _sequential(
    session: aiohttp.ClientSession, url: str, body: bytes, key: str, count: int
) -> list[float]:
    return [await _post(session, url, body, key) for _ in range(count)]


async def test_gateway_adds_little_over_the_direct_path(
    gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = gateway.create_key(name="bench-smoke")
    direct_url = emulator.base_url + "/v1/chat/completions"
    relay_url = gateway.base_url + "/v1/chat/completions"
    direct_body = orjson.dumps({"model": "gpt", "messages": MESSAGES})
    relay_body = orjson.dumps({"model": "emu/gpt", "messages": MESSAGES})
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _sequential(session, direct_url, direct_body, "sk-direct", 10)  # warm-up
        direct = await _sequential(session, direct_url, direct_body, "sk-direct", REQUESTS)
        relayed = await _sequential(session, relay_url, relay_body, key, REQUESTS)
        # The same number again with IN_FLIGHT at once: every one must succeed.
        share = REQUESTS // IN_FLIGHT
        concurrent = await asyncio.gather(
            *(_sequential(session, relay_url, relay_body, key, share) for _ in range(IN_FLIGHT))
        )

    added = statistics.median(relayed) - statistics.median(direct)
    assert added < GROSS_ADDED_P50_SECONDS, (
        f"the gateway added {added * 1000:.1f} ms at p50 over the direct path "
        f"(direct p50 {statistics.median(direct) * 1000:.2f} ms)"
    )
    assert sum(len(c) for c in concurrent) == share * IN_FLIGHT
    # Accounting was on: every relayed request has its ledger row, billed.
    rows = gateway.ledger_rows()
    assert len(rows) == REQUESTS + share * IN_FLIGHT
    assert {row.status for row in rows} == {"ok"}
    assert all(row.cost_nanos > 0 for row in rows)


async def _first_event(session: aiohttp.ClientSession, url: str, body: bytes, key: str) -> float:
    """One stream read to its end; seconds until its first ``data:`` line. Fails on a bad end."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    first = None
    lines = []
    async with session.post(url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if first is None and line.startswith(b"data: "):
                first = time.perf_counter() - started
            lines.append(line)
    assert first is not None, lines[:3]
    assert lines[-2:] == [b"data: [DONE]\n", b"\n"], lines[-3:]
    return first


async def test_streams_reach_their_first_event_quickly(
    gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = gateway.create_key(name="bench-smoke-streams")
    direct_url = emulator.base_url + "/v1/chat/completions"
    relay_url = gateway.base_url + "/v1/chat/completions"
    direct_body = orjson.dumps({"model": "gpt", "messages": MESSAGES, "stream": True})
    relay_body = orjson.dumps({"model": "emu/gpt", "messages": MESSAGES, "stream": True})
    async with aiohttp.ClientSession() as session:
        for _ in range(5):  # warm-up
            await _first_event(session, direct_url, direct_body, "sk-direct")
            await _first_event(session, relay_url, relay_body, key)
        direct = [
            await _first_event(session, direct_url, direct_body, "sk-direct") for _ in range(60)
        ]
        relayed = [await _first_event(session, relay_url, relay_body, key) for _ in range(60)]
    added = statistics.median(relayed) - statistics.median(direct)
    assert added < GROSS_ADDED_P50_SECONDS, f"the gateway added {added * 1000:.1f} ms of TTFT"
