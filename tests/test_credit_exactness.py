"""Credits stay exact through every interleaving of requests, key-cache refreshes and ledger writes.

Each test pins one way a figure held in memory could drift from ``Σ ledger costs``: a refresh
reading the database in the middle of a ledger write (from either side), a journal of an earlier
process replayed while its key is cached, a row the database refuses, and an outage whose retries
must neither hammer the database nor wait for traffic to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy.exc import OperationalError

from llmrelay.accounting.credits import CreditBook
from llmrelay.accounting.keys import CachedKey, KeyService
from llmrelay.accounting.ledger import LedgerWriter
from llmrelay.accounting.limits_local import LocalLimiter
from llmrelay.accounting.records import KeyRecord, LedgerRow, hash_secret
from llmrelay.accounting.store import SqlStore
from llmrelay.config import LedgerConfig


class GatedStore(SqlStore):
    """The SQL store, with optional pauses *after* a ledger write commits or a key read returns
    (the moments a race would need), and an outage switch."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.after_write: asyncio.Event | None = None
        self.after_read: asyncio.Event | None = None
        self.down = False
        self.attempts = 0

    def _check(self) -> None:
        if self.down:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("database stopped"))

    async def write_ledger(self, rows: Sequence[LedgerRow]) -> None:
        self.attempts += 1
        self._check()
        await super().write_ledger(rows)
        if self.after_write is not None:
            await self.after_write.wait()

    async def get_keys(self, key_ids: Sequence[str]) -> list[KeyRecord]:
        self._check()
        records = await super().get_keys(key_ids)
        if self.after_read is not None:
            await self.after_read.wait()
        return records

    async def ledger_ids(self, row_ids: Sequence[str]) -> set[str]:
        self._check()
        return await super().ledger_ids(row_ids)


class Rig:
    def __init__(self, store: GatedStore, tmp_path: Path, **ledger: Any) -> None:
        self.store = store
        self.book = CreditBook()
        self.keys = KeyService(store, 3600, self.book)
        self.limiter = LocalLimiter(self.book, store)
        config = {"flush_interval_seconds": 0.01, "journal_path": str(tmp_path / "j"), **ledger}
        self.ledger = LedgerWriter(store, LedgerConfig(**config), self.limiter)

    async def key(self, key_id: str = "key_a", credits_nanos: int | None = 10**12) -> CachedKey:
        await self.store.create_key(
            KeyRecord(
                id=key_id,
                name=key_id,
                key_hash=hash_secret(key_id),
                prefix="lr-t",
                credits_nanos=credits_nanos,
            )
        )
        return await self.keys.authenticate(key_id)

    async def request(self, key: CachedKey, row_id: str, cost: int, **fields: Any) -> LedgerRow:
        """One request through the limiter, its row handed to the ledger (as the pipeline does)."""
        ticket = await self.limiter.admit(key, row_id, cost)
        self.limiter.settle(key, ticket, cost, 10, row_id)
        ledger_row = row(row_id, key.record.id, cost, **fields)
        self.ledger.record(ledger_row)
        return ledger_row

    async def stored_spend(self, key_id: str = "key_a") -> int:
        record = await SqlStore.get_key(self.store, key_id)
        assert record is not None
        return record.credits_used_nanos


def row(row_id: str, key_id: str, cost: int, **fields: Any) -> LedgerRow:
    values: dict[str, Any] = {
        "requested_model": "mock/echo",
        "model": "mock/echo",
        "provider": "mock",
        "basket": None,
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "estimated": False,
        "ttft_ms": None,
        "latency_ms": 1.0,
        "created": time.time(),
        **fields,
    }
    return LedgerRow(id=row_id, key_id=key_id, cost_nanos=cost, **values)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatedStore]:
    store = GatedStore(f"sqlite:///{tmp_path / 'exact.db'}")
    await store.open()
    yield store
    await store.close()


async def eventually(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.01)


# -- the key cache and the ledger ---------------------------------------------------------------


async def test_a_refresh_during_a_commit_does_not_count_the_batch_twice(
    store: GatedStore, tmp_path: Path
) -> None:
    rig = Rig(store, tmp_path)
    key = await rig.key()
    await rig.request(key, "r1", 100)
    store.after_write = asyncio.Event()

    flushing = asyncio.create_task(rig.ledger.flush())
    await eventually(lambda: store.attempts == 1)  # committed, the writer not told yet
    await rig.keys.refresh()  # reads credits_used = 100 from the database
    during = key.credits_used_nanos
    store.after_write.set()
    await flushing

    assert during == 100
    assert key.credits_used_nanos == 100 == await rig.stored_spend()
    await rig.keys.refresh()
    assert key.credits_used_nanos == 100


async def test_a_refresh_read_before_a_commit_does_not_drop_the_batch(
    store: GatedStore, tmp_path: Path
) -> None:
    rig = Rig(store, tmp_path)
    key = await rig.key()
    await rig.request(key, "r1", 100)
    store.after_read = asyncio.Event()

    refreshing = asyncio.create_task(rig.keys.refresh())  # reads credits_used = 0...
    await asyncio.sleep(0.05)
    await rig.ledger.flush()  # ...the batch commits...
    store.after_read.set()
    await refreshing  # ...and the stale read arrives

    assert key.credits_used_nanos == 100 == await rig.stored_spend()


async def test_spend_from_another_process_is_adopted_by_a_refresh(
    store: GatedStore, tmp_path: Path
) -> None:
    rig = Rig(store, tmp_path)
    key = await rig.key()
    await rig.request(key, "mine", 100)
    await store.write_ledger([row("theirs", "key_a", 40)])  # another instance's row

    await rig.keys.refresh()
    await rig.ledger.flush()

    assert key.credits_used_nanos == 140 == await rig.stored_spend()


async def test_an_earlier_process_journal_replayed_for_a_cached_key_is_counted_once(
    store: GatedStore, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    inherited = [row(f"old{i}", "key_a", 100) for i in range(3)]
    journal.write_bytes(b"".join(orjson.dumps(asdict(r)) + b"\n" for r in inherited))
    rig = Rig(store, tmp_path)
    key = await rig.key()  # cached before the replay: its figure is the database's, 0
    assert key.credits_used_nanos == 0

    rig.ledger.start()
    await eventually(lambda: not journal.exists() and rig.ledger.written == 3)
    await rig.request(key, "new", 50)
    await rig.ledger.close()

    assert key.credits_used_nanos == 350 == await rig.stored_spend()


async def test_a_row_the_database_refuses_is_not_counted_anywhere(
    store: GatedStore, tmp_path: Path
) -> None:
    rig = Rig(store, tmp_path)
    key = await rig.key()
    await rig.request(key, "good1", 100)
    await rig.request(key, "bad", 70, surface=None)  # NOT NULL: refused on its own
    await rig.request(key, "good2", 100)
    assert key.credits_used_nanos == 270

    await rig.ledger.flush()

    assert rig.ledger.rejected == 1
    assert key.credits_used_nanos == 200 == await rig.stored_spend()
    assert b'"bad"' in (tmp_path / "j.rejected").read_bytes()


async def test_a_commit_whose_answer_was_lost_is_counted_once(
    store: GatedStore, tmp_path: Path
) -> None:
    rig = Rig(store, tmp_path)
    key = await rig.key()
    first = await rig.request(key, "r1", 100)
    await SqlStore.write_ledger(store, [first])  # in the database, the writer never heard so
    await rig.request(key, "r2", 30)

    await rig.ledger.flush()

    assert key.credits_used_nanos == 130 == await rig.stored_spend()
    assert rig.ledger.pending == 0


# -- outages ------------------------------------------------------------------------------------


async def test_retries_back_off_while_rows_keep_coming(store: GatedStore, tmp_path: Path) -> None:
    rig = Rig(store, tmp_path, batch_size=5)
    key = await rig.key()
    store.down = True
    rig.ledger.start()

    for n in range(200):  # a row every 7 ms for 1.4 s, 40 full batches
        await rig.request(key, f"r{n}", 1)
        await asyncio.sleep(0.007)
    attempts = store.attempts
    store.down = False
    await eventually(lambda: rig.ledger.pending == 0)
    await rig.ledger.close()

    # 0.2 + 0.4 + 0.8 s of backoff fit in 1.4 s: a handful of attempts, not one per row or batch.
    assert 2 <= attempts <= 6, attempts
    assert key.credits_used_nanos == 200 == await rig.stored_spend()


async def test_journaled_rows_are_written_when_the_database_returns_without_traffic(
    store: GatedStore, tmp_path: Path
) -> None:
    rig = Rig(store, tmp_path, batch_size=10, buffer_rows=20)
    key = await rig.key()
    store.down = True
    rig.ledger.start()
    for n in range(100):
        await rig.request(key, f"r{n}", 3)
    await eventually(lambda: (tmp_path / "j").exists() and rig.ledger.pending <= 20)

    store.down = False  # and no request comes any more

    journals = (tmp_path / "j", tmp_path / "j.replaying")
    await eventually(lambda: rig.ledger.pending == 0 and not any(j.exists() for j in journals), 10)
    ids = await store.ledger_ids([f"r{n}" for n in range(100)])
    assert len(ids) == 100
    assert key.credits_used_nanos == 300 == await rig.stored_spend()
    await rig.ledger.close()


async def test_a_journal_found_at_start_with_the_database_down_is_written_when_it_returns(
    store: GatedStore, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    journal.write_bytes(
        b"".join(orjson.dumps(asdict(row(f"old{i}", "key_a", 7))) + b"\n" for i in range(30))
    )
    rig = Rig(store, tmp_path)
    await rig.key()
    store.down = True
    rig.ledger.start()
    await eventually(lambda: store.attempts >= 1)
    await asyncio.sleep(0.3)

    store.down = False  # and not a single request comes

    journals = (journal, tmp_path / "j.replaying")
    await eventually(lambda: not any(j.exists() for j in journals), 10)
    await rig.ledger.close()
    assert len(await store.ledger_ids([f"old{i}" for i in range(30)])) == 30
    assert await rig.stored_spend() == 210
