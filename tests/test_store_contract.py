"""The store contract, run over every backend: SQLite (aiosqlite) and PostgreSQL (asyncpg).

Keys, credits and the ledger must behave identically on both: the same migrations, exact integer
sums, atomic batches, no lost updates under concurrency, and the same answers to every query.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from llmrelay.accounting.ledger import LedgerWriter, is_outage
from llmrelay.accounting.limits import utc_day
from llmrelay.accounting.records import KeyRecord, LedgerRow, hash_secret
from llmrelay.accounting.store import SqlStore
from llmrelay.config import LedgerConfig
from services import create_database, drop_database, free_port

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'contract.db'}"
        return
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(database_url)
    await store.open()
    yield store
    await store.close()


def key(key_id: str | None = None, credits_nanos: int | None = None, **fields: Any) -> KeyRecord:
    key_id = key_id or "key_" + uuid.uuid4().hex[:16]
    return KeyRecord(
        id=key_id,
        name=fields.pop("name", key_id),
        key_hash=hash_secret(key_id),
        prefix="lr-test",
        credits_nanos=credits_nanos,
        created_at=fields.pop("created_at", time.time()),
        **fields,
    )


def row(row_id: str, key_id: str, cost_nanos: int = 100, **fields: Any) -> LedgerRow:
    values: dict[str, Any] = {
        "requested_model": "auto",
        "model": "mock/echo",
        "provider": "mock",
        "basket": "chat",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "estimated": False,
        "ttft_ms": 1.5,
        "latency_ms": 2.5,
        "created": time.time(),
        **fields,
    }
    return LedgerRow(id=row_id, key_id=key_id, cost_nanos=cost_nanos, **values)


# -- schema -------------------------------------------------------------------------------------


async def test_migrations_are_idempotent_and_reach_the_newest_revision(
    store: SqlStore, database_url: str
) -> None:
    again = SqlStore(database_url)
    await again.open()  # a second process starting on the same database
    async with again.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    await again.close()

    assert version == "0002"


async def test_instances_starting_together_migrate_once(database_url: str) -> None:
    stores = [SqlStore(database_url) for _ in range(4)]

    await asyncio.gather(*(s.open() for s in stores))

    await stores[0].create_key(key("key_after"))
    assert [k.id for k in await stores[3].list_keys()] == ["key_after"]
    for s in stores:
        await s.close()


# -- keys ---------------------------------------------------------------------------------------


async def test_a_key_round_trips_every_field(store: SqlStore) -> None:
    record = key(
        "key_full",
        credits_nanos=2_500_000_000,
        rpm=60,
        tpm=10_000,
        daily_tokens=5_000_000_000,
        models=("mock/*", "emu/gpt"),
        expires_at=2_000_000_000.5,
        metadata={"team": "ünïcode ✓", "n": 3},
        is_admin=False,
    )

    await store.create_key(record)

    assert await store.get_key("key_full") == record
    assert await store.find_key(hash_secret("key_full")) == record
    assert await store.find_key(hash_secret("nope")) is None
    assert await store.get_key("key_missing") is None
    assert await store.get_keys(["key_full", "key_missing"]) == [record]
    assert await store.get_keys([]) == []


async def test_keys_are_listed_in_creation_order(store: SqlStore) -> None:
    for index, key_id in enumerate(["key_b", "key_a", "key_c"]):
        await store.create_key(key(key_id, created_at=1000.0 + index))

    assert [k.id for k in await store.list_keys()] == ["key_b", "key_a", "key_c"]


async def test_a_duplicate_key_hash_is_refused(store: SqlStore) -> None:
    await store.create_key(key("key_one"))

    with pytest.raises(IntegrityError):
        await store.create_key(
            KeyRecord(id="key_two", name="x", key_hash=hash_secret("key_one"), prefix="lr-x")
        )
    assert [k.id for k in await store.list_keys()] == ["key_one"]


async def test_revoking_keeps_the_first_revocation_time(store: SqlStore) -> None:
    await store.create_key(key("key_admin", is_admin=True))
    await store.create_key(key("key_user"))
    assert await store.count_admin_keys() == 1

    first = await store.revoke_key("key_admin")
    second = await store.revoke_key("key_admin")

    assert first is not None
    assert second is not None
    assert first.revoked_at is not None
    assert second.revoked_at == first.revoked_at
    assert await store.count_admin_keys() == 0
    assert await store.revoke_key("key_missing") is None


async def test_top_ups_add_exactly_and_concurrently_without_losing_any(store: SqlStore) -> None:
    await store.create_key(key("key_limited", credits_nanos=1))
    await store.create_key(key("key_unlimited"))

    await asyncio.gather(*(store.add_credits("key_limited", 1_000_000_007) for _ in range(40)))
    unlimited = await store.add_credits("key_unlimited", 5)

    limited = await store.get_key("key_limited")
    assert limited is not None
    assert limited.credits_nanos == 1 + 40 * 1_000_000_007
    assert unlimited is not None
    assert unlimited.credits_nanos is None
    assert await store.add_credits("key_missing", 5) is None


# -- the ledger ---------------------------------------------------------------------------------


async def test_a_ledger_row_round_trips_every_field(store: SqlStore) -> None:
    original = row(
        "chatcmpl-full",
        "key_a",
        cost_nanos=9_000_000_000_000_000_001,  # near the top of a signed 64-bit integer
        basket=None,
        stream=True,
        status="cancelled",
        http_status=499,
        error_type="client_disconnected",
        prompt_tokens=2_000_000_000,
        cached_tokens=7,
        reasoning_tokens=3,
        estimated=True,
        ttft_ms=None,
        surface="anthropic",
        route_confidence=0.875,
    )
    await store.create_key(key("key_a"))

    await store.write_ledger([original])

    assert await store.get_ledger_row("chatcmpl-full") == original
    assert await store.get_ledger_row("chatcmpl-none") is None


async def test_writing_rows_settles_their_costs_exactly(store: SqlStore) -> None:
    await store.create_key(key("key_a", credits_nanos=10**18))
    await store.create_key(key("key_b"))
    costs = [1, 999_999_999, 123_456_789_012_345, 3, 0, 10**15 + 1]

    await store.write_ledger([row(f"a{i}", "key_a", c) for i, c in enumerate(costs[:3])])
    await store.write_ledger(
        [*(row(f"a{i}", "key_a", c) for i, c in enumerate(costs) if i >= 3), row("b0", "key_b", 7)]
    )

    stored = {k.id: k.credits_used_nanos for k in await store.list_keys()}
    assert stored == {"key_a": sum(costs), "key_b": 7}
    totals = {g["group"]: g for g in await store.usage_totals(None, None, None, "key")}
    assert totals["key_a"]["cost_nanos"] == sum(costs)
    assert totals["key_a"]["requests"] == len(costs)


async def test_a_batch_is_atomic(store: SqlStore) -> None:
    await store.create_key(key("key_a"))
    await store.write_ledger([row("dup", "key_a", 5)])

    with pytest.raises(IntegrityError):
        await store.write_ledger([row("new", "key_a", 1_000), row("dup", "key_a", 5)])

    assert await store.get_ledger_row("new") is None
    assert await store.ledger_ids(["new", "dup", "other"]) == {"dup"}
    stored = await store.get_key("key_a")
    assert stored is not None
    assert stored.credits_used_nanos == 5


async def test_concurrent_batches_on_the_same_keys_lose_no_update(store: SqlStore) -> None:
    await store.create_key(key("key_x"))
    await store.create_key(key("key_y"))

    async def batch(n: int) -> None:
        # Alternating orders of the same two keys: a store that locked them in row order
        # would deadlock on PostgreSQL.
        first, second = ("key_x", "key_y") if n % 2 else ("key_y", "key_x")
        await store.write_ledger(
            [row(f"r{n}-{i}", first if i % 2 else second, n + i) for i in range(10)]
        )

    await asyncio.gather(*(batch(n) for n in range(30)))

    rows = await store.ledger_rows(None, None, None, 10_000)
    assert len(rows) == 300
    for key_id in ("key_x", "key_y"):
        stored = await store.get_key(key_id)
        assert stored is not None
        assert stored.credits_used_nanos == sum(r.cost_nanos for r in rows if r.key_id == key_id)


async def test_tokens_since_counts_the_keys_rows_from_that_moment(store: SqlStore) -> None:
    _, midnight = utc_day()
    await store.write_ledger(
        [
            row("old", "key_a", prompt_tokens=1000, created=midnight - 1),
            row("t1", "key_a", prompt_tokens=10, completion_tokens=5, created=midnight),
            row("t2", "key_a", prompt_tokens=20, completion_tokens=7, created=midnight + 60),
            row("other", "key_b", prompt_tokens=500, created=midnight + 60),
        ]
    )

    assert await store.tokens_since("key_a", midnight) == 42
    assert await store.tokens_since("key_c", midnight) == 0


async def test_usage_is_grouped_and_filtered_the_same_way(store: SqlStore) -> None:
    day = 86_400 * 20_000  # a UTC midnight
    await store.write_ledger(
        [
            row("r1", "key_a", 100, model="mock/echo", provider="mock", created=day + 10),
            row("r2", "key_a", 20, model="emu/gpt", provider="emu", created=day + 20),
            row("r3", "key_b", 3, model="mock/echo", provider="mock", created=day + 86_400),
        ]
    )

    by_day = await store.usage_totals(None, None, None, "day")
    by_model = await store.usage_totals("key_a", None, None, "model")
    only_mock = await store.usage_totals(None, None, None, "key", provider="mock")
    only_gpt = await store.ledger_rows(None, None, None, 10, model="emu/gpt")
    window = await store.ledger_rows(None, day + 15, day + 86_400, 10)

    assert [(float(g["group"]), g["requests"], g["cost_nanos"]) for g in by_day] == [
        (day, 2, 120),
        (day + 86_400, 1, 3),
    ]
    assert [(g["group"], g["cost_nanos"]) for g in by_model] == [
        ("emu/gpt", 20),
        ("mock/echo", 100),
    ]
    assert [(g["group"], g["requests"]) for g in only_mock] == [("key_a", 1), ("key_b", 1)]
    assert [r.id for r in only_gpt] == ["r2"]
    assert [r.id for r in window] == ["r2"]
    newest_first = await store.ledger_rows(None, None, None, 2)
    assert [r.id for r in newest_first] == ["r3", "r2"]


async def test_the_dashboards_read_only_queries(store: SqlStore) -> None:
    await store.write_ledger(
        [
            row("s1", "key_a", 5, created=1000.0, latency_ms=10.0),
            row("s2", "key_a", 6, created=1030.0, status="error", requested_model="x/y"),
            row("s3", "key_b", 7, created=1070.0, model="emu/gpt", latency_ms=30.0),
        ]
    )

    found = await store.ledger_search(None, "x/y", None, None, 10)
    series = await store.usage_series(1000.0, 1100.0, 60)
    samples = await store.latency_samples(0, 2000, 2)

    assert [r.id for r in found] == ["s2"]
    assert [(s["bucket"], s["requests"], s["errors"], s["cost_nanos"]) for s in series] == [
        (960.0, 1, 0, 5),
        (1020.0, 2, 1, 13),
    ]
    assert samples == [(1070.0, 30.0), (1030.0, 2.5)]


# -- the writer on the real backends ------------------------------------------------------------


def ledger_config(tmp_path: Path) -> LedgerConfig:
    return LedgerConfig(
        batch_size=50, flush_interval_seconds=0.01, journal_path=str(tmp_path / "ledger.journal")
    )


async def test_one_bad_row_never_drops_its_neighbours(store: SqlStore, tmp_path: Path) -> None:
    await store.create_key(key("key_a"))
    await store.write_ledger([row("already", "key_a", 1_000)])
    writer = LedgerWriter(store, ledger_config(tmp_path))
    batch = [row(f"n{i}", "key_a", 10) for i in range(20)]
    batch.insert(5, row("too-big", "key_a", 2**70))  # past any 64-bit column: refused by both
    batch.insert(9, row("already", "key_a", 1_000))  # a replay of a row already written

    for r in batch:
        writer.record(r)
    await writer.flush()

    assert writer.pending == 0
    ids = await store.ledger_ids([r.id for r in batch])
    assert ids == {"already", *(f"n{i}" for i in range(20))}
    stored = await store.get_key("key_a")
    assert stored is not None
    assert stored.credits_used_nanos == 1_000 + 20 * 10
    rejected = (tmp_path / "ledger.journal.rejected").read_text()
    assert '"too-big"' in rejected
    assert '"n0"' not in rejected


async def test_an_unreachable_database_is_an_outage_not_a_bad_row(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'no-such-directory' / 'x.db'}"
    else:
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    store = SqlStore(url)
    writer = LedgerWriter(store, ledger_config(tmp_path))
    writer.record(row("r1", "key_a"))

    await writer.flush()

    assert writer.pending == 1
    assert writer.failures == 1
    assert not (tmp_path / "ledger.journal.rejected").exists()
    with pytest.raises((SQLAlchemyError, OSError)) as caught:
        await store.write_ledger([row("r2", "key_a")])
    assert is_outage(caught.value), repr(caught.value)
    await store.close()
    # A failed aiosqlite connection is finalised by the garbage collector, which queues work on
    # its thread that reports back to this loop: let that happen while the loop is still open.
    gc.collect()
    await asyncio.sleep(0.1)
