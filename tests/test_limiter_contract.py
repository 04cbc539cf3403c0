"""The limiter contract, run over both limiters: in-process and Redis (Lua scripts).

Then what only the shared one does: several instances on one Redis, settlements applied once even
when delivered twice, reservations of a dead instance lapsing, and Redis going away (the failure
policy) and coming back without a restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from llmrelay.accounting.credits import CreditBook
from llmrelay.accounting.keys import CachedKey
from llmrelay.accounting.limits import DAY_SECONDS, Limiter, Ticket, utc_day
from llmrelay.accounting.limits_local import LocalLimiter
from llmrelay.accounting.limits_redis import RedisLimiter
from llmrelay.accounting.records import KeyRecord, LedgerRow, hash_secret
from llmrelay.accounting.store import SqlStore
from llmrelay.config import AccountingConfig
from llmrelay.core.errors import InsufficientCredits, RateLimited, ServiceUnavailable
from services import REDIS_URL, PrivateRedis, isolated_prefix

BACKENDS = ["local", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with isolated_prefix() as prefix:
        yield prefix


@dataclass
class Rig:
    """A limiter with its store and credit book, and helpers to make keys and requests."""

    store: SqlStore
    book: CreditBook
    limiter: Limiter
    make: Any = None
    others: list[Limiter] = field(default_factory=list)

    async def key(self, **fields: Any) -> CachedKey:
        key_id = "key_" + uuid.uuid4().hex[:16]
        record = KeyRecord(
            id=key_id, name=key_id, key_hash=hash_secret(key_id), prefix="lr-test", **fields
        )
        await self.store.create_key(record)
        return CachedKey(record, self.book.open(record))

    async def admit(self, key: CachedKey, estimate: int = 0) -> Ticket:
        return await self.limiter.admit(key, "req-" + uuid.uuid4().hex, estimate)

    async def outcome(self, key: CachedKey, estimate: int = 0) -> Ticket | Exception:
        try:
            return await self.admit(key, estimate)
        except (RateLimited, InsufficientCredits) as exc:
            return exc

    def settle(self, key: CachedKey, ticket: Ticket | None, cost: int = 0, tokens: int = 0) -> None:
        request_id = ticket.request_id if ticket is not None else "req-" + uuid.uuid4().hex
        self.limiter.settle(key, ticket, cost, tokens, request_id)


def redis_limiter(
    book: CreditBook, store: SqlStore, prefix: str, url: str = REDIS_URL, **config: Any
) -> RedisLimiter:
    settings = AccountingConfig(redis_key_prefix=prefix, **config)
    return RedisLimiter(url, settings, book, store, LocalLimiter(book, store))


@pytest.fixture(params=BACKENDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqlStore(f"sqlite:///{tmp_path / 'limits.db'}")
    await store.open()
    book = CreditBook()
    if request.param == "local":
        limiter: Limiter = LocalLimiter(book, store)
        make = None
    else:
        prefix = request.getfixturevalue("redis_prefix")

        def make(book: CreditBook, **config: Any) -> RedisLimiter:
            return redis_limiter(book, store, prefix, **config)

        limiter = make(book)
    await limiter.start()
    rig = Rig(store, book, limiter, make)
    yield rig
    for each in (limiter, *rig.others):
        await each.close()
    await store.close()


def kinds(outcomes: list[Ticket | Exception]) -> list[str]:
    return sorted(type(o).__name__ for o in outcomes)


# -- the contract -------------------------------------------------------------------------------


async def test_a_key_without_limits_is_admitted_and_its_spend_counted(rig: Rig) -> None:
    key = await rig.key()

    ticket = await rig.admit(key, estimate=10_000)
    rig.settle(key, ticket, cost=123, tokens=10)
    usage = await rig.limiter.usage(key)

    assert ticket.reserved == 0  # nothing to reserve against unlimited credits
    assert (usage.credits_used, usage.credits_reserved) == (123, 0)
    assert usage.tokens_today == 10


async def test_rpm_admits_exactly_rpm_of_a_crowd(rig: Rig) -> None:
    key = await rig.key(rpm=7)
    other = await rig.key(rpm=7)

    outcomes = await asyncio.gather(*(rig.outcome(key) for _ in range(20)))

    admitted = [o for o in outcomes if isinstance(o, Ticket)]
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert (len(admitted), len(refused)) == (7, 13)
    for error in refused:
        assert error.error_type == "rate_limit_exceeded"
        assert "7 requests per minute" in error.message
        assert error.retry_after is not None
        assert 55 < error.retry_after <= 60
    assert isinstance(await rig.outcome(other), Ticket)  # limits are per key


async def test_429_comes_before_402_and_only_402_counts_against_the_window(rig: Rig) -> None:
    key = await rig.key(rpm=2, credits_nanos=0)

    outcomes = [await rig.outcome(key) for _ in range(4)]

    assert [type(o).__name__ for o in outcomes] == [
        "InsufficientCredits",
        "InsufficientCredits",
        "RateLimited",
        "RateLimited",
    ]


async def test_tpm_counts_the_tokens_of_settled_requests(rig: Rig) -> None:
    key = await rig.key(tpm=100)

    first = await rig.admit(key)
    rig.settle(key, first, tokens=60)
    await rig.limiter.usage(key)
    second = await rig.admit(key)  # 60 < 100: the request that crosses the limit is served
    rig.settle(key, second, tokens=60)
    await rig.limiter.usage(key)
    refused = await rig.outcome(key)

    assert isinstance(refused, RateLimited)
    assert "100 tokens per minute" in refused.message
    assert refused.retry_after is not None
    assert 55 < refused.retry_after <= 60


async def test_the_daily_quota_starts_from_the_ledger_and_ends_at_utc_midnight(
    rig: Rig,
) -> None:
    key = await rig.key(daily_tokens=100)
    _, midnight = utc_day()
    key_id = key.record.id
    await rig.store.write_ledger(
        [
            ledger_row("yesterday", key_id, prompt_tokens=500, created=midnight - 5),
            ledger_row("today", key_id, prompt_tokens=80, completion_tokens=10, created=midnight),
        ]
    )

    ticket = await rig.admit(key)
    rig.settle(key, ticket, tokens=15)
    usage = await rig.limiter.usage(key)
    refused = await rig.outcome(key)

    assert usage.tokens_today == 105
    assert isinstance(refused, RateLimited)
    assert "daily quota of 100 tokens" in refused.message
    assert refused.retry_after is not None
    assert abs(refused.retry_after - (midnight + DAY_SECONDS - time.time())) < 5


async def test_reservations_bound_what_concurrent_requests_can_spend(rig: Rig) -> None:
    key = await rig.key(credits_nanos=1_000)

    crowd = await asyncio.gather(*(rig.outcome(key, estimate=100) for _ in range(30)))
    admitted = [o for o in crowd if isinstance(o, Ticket)]
    during = await rig.limiter.usage(key)
    for ticket in admitted:
        rig.settle(key, ticket, cost=30)
    after = await rig.limiter.usage(key)
    second = await asyncio.gather(*(rig.outcome(key, estimate=100) for _ in range(30)))

    assert kinds(crowd) == ["InsufficientCredits"] * 20 + ["Ticket"] * 10
    refusal = next(o for o in crowd if isinstance(o, InsufficientCredits))
    assert "in flight" in refusal.message
    assert (during.credits_used, during.credits_reserved) == (0, 1_000)
    assert (after.credits_used, after.credits_reserved) == (300, 0)
    assert kinds(second).count("Ticket") == 7


async def test_a_key_past_its_credits_gets_402_saying_so(rig: Rig) -> None:
    key = await rig.key(credits_nanos=1_000)

    ticket = await rig.admit(key, estimate=50)
    rig.settle(key, ticket, cost=1_500)  # the request cost more than was left: served anyway
    await rig.limiter.usage(key)
    refused = await rig.outcome(key, estimate=50)

    assert isinstance(refused, InsufficientCredits)
    assert "no credits left" in refused.message
    assert (await rig.limiter.usage(key)).credits_used == 1_500


async def test_the_ledger_moves_spend_without_changing_it_and_rejections_refund(
    rig: Rig,
) -> None:
    key = await rig.key(credits_nanos=10_000)
    tickets = [await rig.admit(key, estimate=100) for _ in range(3)]
    for ticket, cost in zip(tickets, (100, 200, 300), strict=True):
        rig.settle(key, ticket, cost=cost)
    rows = [
        ledger_row(t.request_id, key.record.id, cost_nanos=c)
        for t, c in zip(tickets, (100, 200, 300), strict=True)
    ]

    rig.limiter.write_started()
    await rig.store.write_ledger(rows[:2])
    rig.limiter.write_ended()
    rig.limiter.committed(rows[:2], True)
    stored = await rig.limiter.usage(key)
    rig.limiter.rejected(rows[2:], True)
    refunded = await rig.limiter.usage(key)

    assert stored.credits_used == 600
    assert refunded.credits_used == 300  # what the ledger holds, exactly
    assert key.account.stored == 300
    assert key.account.unstored == 0


async def test_spend_lists_every_keys_figure(rig: Rig) -> None:
    keys = [await rig.key() for _ in range(3)]
    for index, key in enumerate(keys):
        rig.settle(key, await rig.admit(key), cost=index * 10)
    await asyncio.gather(*(rig.limiter.usage(key) for key in keys))

    spend = await rig.limiter.spend([key.record for key in keys])

    assert spend == {key.record.id: index * 10 for index, key in enumerate(keys)}


# -- Redis only ---------------------------------------------------------------------------------


def ledger_row(row_id: str, key_id: str, cost_nanos: int = 0, **fields: Any) -> LedgerRow:
    values: dict[str, Any] = {
        "requested_model": "mock/echo",
        "model": "mock/echo",
        "provider": "mock",
        "basket": None,
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "estimated": False,
        "ttft_ms": None,
        "latency_ms": 1.0,
        "created": time.time(),
        **fields,
    }
    return LedgerRow(id=row_id, key_id=key_id, cost_nanos=cost_nanos, **values)


@pytest.fixture
async def shared(tmp_path: Path, redis_prefix: str) -> AsyncIterator[Rig]:
    """A Redis rig whose ``make`` builds more instances on the same Redis and prefix."""
    store = SqlStore(f"sqlite:///{tmp_path / 'shared.db'}")
    await store.open()
    book = CreditBook()

    def make(book: CreditBook, **config: Any) -> RedisLimiter:
        return redis_limiter(book, store, redis_prefix, **config)

    limiter = make(book)
    await limiter.start()
    rig = Rig(store, book, limiter, make)
    yield rig
    for each in (limiter, *rig.others):
        await each.close()
    await store.close()


async def instance(rig: Rig, **config: Any) -> tuple[RedisLimiter, CreditBook]:
    book = CreditBook()
    limiter: RedisLimiter = rig.make(book, **config)
    await limiter.start()
    rig.others.append(limiter)
    return limiter, book


@pytest.mark.redis
async def test_instances_share_windows_and_credits(shared: Rig) -> None:
    key = await shared.key(rpm=9, credits_nanos=500)
    others = [await instance(shared) for _ in range(2)]
    views = [(shared.limiter, key)] + [
        (limiter, CachedKey(key.record, book.open(key.record))) for limiter, book in others
    ]

    async def attempt(n: int) -> Ticket | Exception:
        limiter, view = views[n % 3]
        try:
            return await limiter.admit(view, f"req-{n}", 100)
        except (RateLimited, InsufficientCredits) as exc:
            return exc

    outcomes = await asyncio.gather(*(attempt(n) for n in range(30)))

    # 9 pass the shared window; of those, 5 fit the shared credits (500 / 100 each).
    assert kinds(outcomes) == ["InsufficientCredits"] * 4 + ["RateLimited"] * 21 + ["Ticket"] * 5


@pytest.mark.redis
async def test_a_settlement_delivered_twice_counts_once(shared: Rig) -> None:
    key = await shared.key(credits_nanos=10_000, tpm=1_000)
    ticket = await shared.admit(key, estimate=100)

    shared.settle(key, ticket, cost=70, tokens=10)
    shared.settle(key, ticket, cost=70, tokens=10)  # a retry after a lost answer, say
    shared.settle(key, None, cost=5)
    usage = await shared.limiter.usage(key)

    assert (usage.credits_used, usage.credits_reserved, usage.tokens_today) == (75, 0, 10)


@pytest.mark.redis
async def test_a_dead_instances_reservations_lapse_and_still_settle_once(shared: Rig) -> None:
    key = await shared.key(credits_nanos=100)
    limiter, book = await instance(shared, reservation_seconds=0.05)
    view = CachedKey(key.record, book.open(key.record))

    held = await limiter.admit(view, "held", 100)
    blocked = await shared.outcome(key, estimate=100)
    await asyncio.sleep(0.1)
    after_lapse = await limiter.admit(view, "after", 10)  # lapses "held" on its way
    limiter.settle(view, held, 40, 0, "held")  # the slow request finishes after all
    limiter.settle(view, held, 40, 0, "held")
    usage = await limiter.usage(view)

    assert held.reserved == 100
    assert isinstance(blocked, InsufficientCredits)
    assert after_lapse.reserved == 10
    assert (usage.credits_used, usage.credits_reserved) == (40, 10)


@pytest.mark.redis
async def test_spend_starts_from_the_database_and_this_instances_unstored_costs(
    shared: Rig,
) -> None:
    key = await shared.key(credits_nanos=10_000)
    await shared.store.write_ledger([ledger_row("old", key.record.id, cost_nanos=4_000)])
    key.account.unstored = 250  # settled here, its row still buffered

    await shared.admit(key, estimate=1)

    assert (await shared.limiter.usage(key)).credits_used == 4_250


# -- Redis going away ---------------------------------------------------------------------------


@pytest.fixture
async def private(tmp_path: Path) -> AsyncIterator[tuple[PrivateRedis, SqlStore]]:
    server = PrivateRedis()
    store = SqlStore(f"sqlite:///{tmp_path / 'outage.db'}")
    await store.open()
    try:
        yield server, store
    finally:
        await store.close()
        server.close()


async def new_key(store: SqlStore, book: CreditBook, **fields: Any) -> CachedKey:
    key_id = "key_" + uuid.uuid4().hex[:16]
    record = KeyRecord(
        id=key_id, name=key_id, key_hash=hash_secret(key_id), prefix="lr-t", **fields
    )
    await store.create_key(record)
    return CachedKey(record, book.open(record))


def redis_used(server: PrivateRedis, key_id: str) -> int | None:
    client = redis.Redis(port=server.port, socket_timeout=2)
    value = client.hget(f"p:{{{key_id}}}:acct", "used")
    client.close()
    return None if value is None else int(value)


@pytest.mark.redis
async def test_fail_open_admits_in_process_and_delivers_spend_when_redis_returns(
    private: tuple[PrivateRedis, SqlStore],
) -> None:
    server, store = private
    book = CreditBook()
    limiter = redis_limiter(book, store, "p:", server.url, redis_failure_policy="open")
    await limiter.start()
    key = await new_key(store, book, rpm=3, credits_nanos=1_000)
    try:
        limiter.settle(key, await limiter.admit(key, "before", 10), 100, 0, "before")
        await limiter.usage(key)

        server.freeze()
        started = time.monotonic()
        during = [await limiter.admit(key, f"during-{n}", 10) for n in range(2)]
        took = time.monotonic() - started
        for ticket in during:
            limiter.settle(key, ticket, 50, 0, ticket.request_id)
        refused = await Rig(store, book, limiter).outcome(key)  # the local window: 3 per minute
        server.thaw()
        await asyncio.sleep(1.1)  # the next probe
        back = await limiter.admit(key, "back", 10)
        usage = await limiter.usage(key)
    finally:
        await limiter.close()

    assert [t.via for t in during] == ["local", "local"]
    assert took < 2.0  # one socket timeout, then no waiting while Redis is known to be down
    assert isinstance(refused, RateLimited)
    assert back.via == "redis"
    assert usage.credits_used == 200
    assert redis_used(server, key.record.id) == 200


@pytest.mark.redis
async def test_fail_closed_answers_503_until_redis_returns(
    private: tuple[PrivateRedis, SqlStore],
) -> None:
    server, store = private
    book = CreditBook()
    limiter = redis_limiter(book, store, "p:", server.url, redis_failure_policy="closed")
    await limiter.start()
    key = await new_key(store, book)
    try:
        server.freeze()
        with pytest.raises(ServiceUnavailable) as caught:
            await limiter.admit(key, "during", 10)
        server.thaw()
        await asyncio.sleep(1.1)
        back = await limiter.admit(key, "back", 10)
    finally:
        await limiter.close()

    assert caught.value.http_status == 503
    assert "Redis" in caught.value.message
    assert back.via == "redis"


@pytest.mark.redis
async def test_a_redis_that_lost_its_data_starts_again_from_the_database(
    private: tuple[PrivateRedis, SqlStore],
) -> None:
    server, store = private
    book = CreditBook()
    limiter = redis_limiter(book, store, "p:", server.url)
    await limiter.start()
    key = await new_key(store, book, credits_nanos=10_000)
    try:
        ticket = await limiter.admit(key, "r1", 10)
        limiter.settle(key, ticket, 300, 0, "r1")
        await limiter.usage(key)
        await store.write_ledger([ledger_row("r1", key.record.id, cost_nanos=300)])
        book.committed([ledger_row("r1", key.record.id, cost_nanos=300)], True)

        server.kill()
        server.start()
        await asyncio.sleep(1.1)
        limiter.settle(key, await limiter.admit(key, "r2", 10), 50, 0, "r2")
        usage = await limiter.usage(key)
    finally:
        await limiter.close()

    assert usage.credits_used == 350
