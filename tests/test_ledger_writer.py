"""The asynchronous ledger writer, against an in-memory store that can fail on demand, and the
SQL store's settlement of costs onto keys."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from llmrelay.accounting.ledger import LedgerWriter
from llmrelay.accounting.records import KeyRecord, LedgerRow, hash_secret
from llmrelay.accounting.store import SqlStore, Store
from llmrelay.config import LedgerConfig


def row(row_id: str, key_id: str = "key_a", cost_nanos: int = 100) -> LedgerRow:
    return LedgerRow(
        id=row_id,
        key_id=key_id,
        requested_model="mock/echo",
        model="mock/echo",
        provider="mock",
        basket=None,
        stream=False,
        status="ok",
        http_status=200,
        error_type=None,
        prompt_tokens=10,
        completion_tokens=2,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_nanos=cost_nanos,
        estimated=False,
        ttft_ms=1.0,
        latency_ms=2.0,
        created=time.time(),
    )


def rows(count: int, prefix: str = "r") -> list[LedgerRow]:
    return [row(f"{prefix}{i}") for i in range(count)]


class FakeStore:
    """The ledger half of ``Store``, in memory.

    ``down`` makes every call fail as an unreachable database does; a batch holding an id in
    ``poison`` is refused as a constraint violation (``poison_error``); writing an id twice is an
    ``IntegrityError``, as the primary key would make it. ``gate``, when set, holds every write
    until it opens.
    """

    def __init__(self) -> None:
        self.rows: dict[str, LedgerRow] = {}
        self.batches: list[list[str]] = []
        self.attempts = 0
        self.down = False
        self.poison: set[str] = set()
        self.poison_error: type[Exception] = IntegrityError
        self.gate: asyncio.Event | None = None

    def _check_up(self) -> None:
        if self.down:
            raise OperationalError("INSERT INTO ledger", {}, ConnectionRefusedError("refused"))

    async def write_ledger(self, batch: Sequence[LedgerRow]) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        self._check_up()
        ids = [r.id for r in batch]
        if self.poison.intersection(ids):
            raise self.poison_error("INSERT INTO ledger", {}, ValueError("value out of range"))
        if any(i in self.rows for i in ids) or len(set(ids)) != len(ids):
            raise IntegrityError("INSERT INTO ledger", {}, ValueError("UNIQUE constraint failed"))
        self.batches.append(ids)
        for r in batch:
            self.rows[r.id] = r

    async def get_ledger_row(self, row_id: str) -> LedgerRow | None:
        self._check_up()
        return self.rows.get(row_id)

    async def ledger_ids(self, row_ids: Sequence[str]) -> set[str]:
        self._check_up()
        return {row_id for row_id in row_ids if row_id in self.rows}


class SpendLog:
    """A ledger listener that hands ``on_commit`` the spend per key of each committed write."""

    def __init__(self, on_commit: Callable[[dict[str, int]], None]) -> None:
        self.on_commit = on_commit
        self.rejected_ids: list[str] = []

    def write_started(self) -> None:
        pass

    def write_ended(self) -> None:
        pass

    def committed(self, rows: list[LedgerRow], settled_here: bool) -> None:
        spend: dict[str, int] = {}
        for r in rows:
            if r.cost_nanos:
                spend[r.key_id] = spend.get(r.key_id, 0) + r.cost_nanos
        if spend:
            self.on_commit(spend)

    def rejected(self, rows: list[LedgerRow], settled_here: bool) -> None:
        self.rejected_ids.extend(r.id for r in rows)


def config(tmp_path: Path, **overrides: Any) -> LedgerConfig:
    values: dict[str, Any] = {
        "batch_size": 10,
        "flush_interval_seconds": 0.01,
        "buffer_rows": 1000,
        "journal_path": str(tmp_path / "ledger.journal"),
        **overrides,
    }
    return LedgerConfig(**values)


def writer_for(
    store: FakeStore,
    settings: LedgerConfig,
    on_commit: Callable[[dict[str, int]], None] | None = None,
) -> LedgerWriter:
    listener = None if on_commit is None else SpendLog(on_commit)
    return LedgerWriter(cast(Store, store), settings, listener)


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    assert condition(), f"not true within {within} s"


# The files are tiny: these helpers keep the tests' async bodies free of blocking calls.


def present(path: Path | str) -> bool:
    return Path(path).exists()


def journal_ids(path: Path | str) -> list[str]:
    path = Path(path)
    if not path.exists():
        return []
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines() if line.strip()]


def write_journal(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def running(store: FakeStore, tmp_path: Path) -> AsyncIterator[LedgerWriter]:
    writer = writer_for(store, config(tmp_path))
    writer.start()
    yield writer
    store.down = False
    if store.gate is not None:
        store.gate.set()
    await writer.close()


# -- the request path ---------------------------------------------------------------------------


async def test_record_is_synchronous_and_returns_at_once_while_the_store_hangs(
    store: FakeStore, running: LedgerWriter
) -> None:
    assert not inspect.iscoroutinefunction(LedgerWriter.record)
    store.gate = asyncio.Event()  # every write now waits
    running.record(row("first"))
    await eventually(lambda: store.attempts > 0)  # a write is in flight, and stuck

    started = time.perf_counter()
    for r in rows(2000):
        assert running.record(r) is None  # type: ignore[func-returns-value]
    elapsed = time.perf_counter() - started

    assert elapsed < 0.5
    assert running.pending == 2001
    assert store.rows == {}
    store.gate.set()
    await eventually(lambda: len(store.rows) == 2001)
    assert running.pending == 0


async def test_record_never_raises_during_an_outage(
    store: FakeStore, running: LedgerWriter
) -> None:
    store.down = True

    for r in rows(50):
        running.record(r)
    await eventually(lambda: running.failures > 0)

    assert running.pending == 50


# -- batching -----------------------------------------------------------------------------------


async def test_flush_writes_in_batches_of_batch_size(store: FakeStore, tmp_path: Path) -> None:
    writer = writer_for(store, config(tmp_path, batch_size=10))
    for r in rows(25):
        writer.record(r)

    await writer.flush()

    assert [len(batch) for batch in store.batches] == [10, 10, 5]
    assert [i for batch in store.batches for i in batch] == [f"r{i}" for i in range(25)]
    assert writer.pending == 0
    assert writer.written == 25


async def test_the_background_task_batches_rows(store: FakeStore, tmp_path: Path) -> None:
    writer = writer_for(store, config(tmp_path, batch_size=50, flush_interval_seconds=0.05))
    writer.start()
    try:
        for r in rows(120):
            writer.record(r)
        await eventually(lambda: len(store.rows) == 120)
    finally:
        await writer.close()

    assert all(len(batch) <= 50 for batch in store.batches)
    assert len(store.batches) <= 5  # not one transaction per row


async def test_a_backlog_is_written_without_waiting_an_interval_per_batch(
    store: FakeStore, tmp_path: Path
) -> None:
    writer = writer_for(store, config(tmp_path, batch_size=10, flush_interval_seconds=1.0))
    store.gate = asyncio.Event()
    writer.start()
    try:
        for r in rows(100):
            writer.record(r)
        await eventually(lambda: store.attempts > 0)
        store.gate.set()
        await eventually(lambda: len(store.rows) == 100, within=0.5)
    finally:
        await writer.close()


async def test_a_lone_row_is_written_within_the_flush_interval(
    store: FakeStore, tmp_path: Path
) -> None:
    writer = writer_for(store, config(tmp_path, batch_size=500, flush_interval_seconds=0.05))
    writer.start()
    try:
        writer.record(row("alone"))
        await eventually(lambda: "alone" in store.rows, within=1.0)
    finally:
        await writer.close()


# -- outages ------------------------------------------------------------------------------------


async def test_rows_stay_buffered_during_an_outage_and_are_written_after_it(
    store: FakeStore, running: LedgerWriter
) -> None:
    store.down = True
    for r in rows(5):
        running.record(r)
    await eventually(lambda: running.failures >= 2)
    assert store.rows == {}
    assert running.pending == 5

    store.down = False

    await eventually(lambda: len(store.rows) == 5)
    assert running.pending == 0
    assert sorted(store.rows) == sorted(f"r{i}" for i in range(5))


async def test_past_buffer_rows_the_oldest_spill_to_the_journal_and_are_replayed(
    store: FakeStore, tmp_path: Path
) -> None:
    settings = config(tmp_path, batch_size=2, buffer_rows=3)
    journal = Path(settings.journal_path)
    writer = writer_for(store, settings)
    store.down = True
    writer.start()
    try:
        for r in rows(10):
            writer.record(r)
        await eventually(lambda: present(journal) and writer.pending <= 3)

        assert journal_ids(journal) == [f"r{i}" for i in range(7)]  # the oldest, in order
        assert writer.pending == 3

        store.down = False
        await eventually(lambda: len(store.rows) == 10)
        await eventually(lambda: not present(journal))
    finally:
        await writer.close()

    assert sorted(store.rows) == sorted(f"r{i}" for i in range(10))
    assert sum(len(batch) for batch in store.batches) == 10  # each row exactly once
    assert not present(settings.journal_path + ".replaying")


# -- rows the database refuses ------------------------------------------------------------------


@pytest.mark.parametrize("error", [IntegrityError, DataError])
async def test_a_bad_row_goes_to_the_dead_letter_file_and_its_neighbours_are_written(
    store: FakeStore, tmp_path: Path, error: type[Exception]
) -> None:
    settings = config(tmp_path)
    dead_letter = Path(settings.journal_path + ".rejected")
    store.poison = {"r3"}
    store.poison_error = error
    committed: list[dict[str, int]] = []
    writer = writer_for(store, settings, committed.append)
    for r in rows(6):
        writer.record(r)

    await writer.flush()

    assert sorted(store.rows) == ["r0", "r1", "r2", "r4", "r5"]
    assert writer.pending == 0
    assert journal_ids(dead_letter) == ["r3"]
    assert writer.failures == 1
    assert sum(spend["key_a"] for spend in committed) == 500  # r3's cost is not settled
    assert not present(settings.journal_path)


class GoingDownStore(FakeStore):
    """A database that fails a write with an error the writer cannot classify, then stops
    answering reads: what a server shutting down can look like mid-isolation."""

    going_down = True

    async def write_ledger(self, batch: Sequence[LedgerRow]) -> None:
        if self.going_down and any(r.id == "r3" for r in batch):
            self.down = True
            raise RuntimeError("connection closed in an unexpected way")
        await super().write_ledger(batch)


async def test_an_unclassified_error_while_the_database_goes_down_keeps_the_row(
    tmp_path: Path,
) -> None:
    store = GoingDownStore()
    settings = config(tmp_path)
    dead_letter = Path(settings.journal_path + ".rejected")
    writer = writer_for(store, settings)
    for r in rows(6):
        writer.record(r)

    await writer.flush()

    assert not present(dead_letter)  # no row was declared bad while the database was going away
    assert writer.pending == 6 - len(store.rows)
    store.down = False
    store.going_down = False
    await writer.flush()
    assert sorted(store.rows) == [f"r{i}" for i in range(6)]


async def test_a_row_already_in_the_database_is_not_dead_lettered(
    store: FakeStore, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    writer = writer_for(store, settings)
    store.rows["r1"] = row("r1")  # e.g. written just before a crash that kept it in the journal
    for r in rows(3):
        writer.record(r)

    await writer.flush()

    assert sorted(store.rows) == ["r0", "r1", "r2"]
    assert writer.pending == 0
    assert not present(settings.journal_path + ".rejected")


async def test_an_outage_during_isolation_keeps_the_unwritten_rows(
    store: FakeStore, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    writer = writer_for(store, settings)
    store.poison = {"r0"}
    for r in rows(4):
        writer.record(r)
    real_write = store.write_ledger
    calls = 0

    async def fail_after_two(batch: Sequence[LedgerRow]) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:  # the batch, r0 (refused), r1; then the database goes away
            store.down = True
        await real_write(batch)

    store.write_ledger = fail_after_two  # type: ignore[method-assign]

    await writer.flush()

    assert sorted(store.rows) == ["r1"]
    assert writer.pending == 2  # r2 and r3 wait for the database
    store.down = False
    await writer.flush()
    assert sorted(store.rows) == ["r1", "r2", "r3"]
    assert journal_ids(Path(settings.journal_path + ".rejected")) == ["r0"]


# -- shutdown -----------------------------------------------------------------------------------


async def test_close_flushes_everything(store: FakeStore, tmp_path: Path) -> None:
    writer = writer_for(store, config(tmp_path, batch_size=7, flush_interval_seconds=10))
    writer.start()
    for r in rows(30):
        writer.record(r)

    await writer.close()

    assert len(store.rows) == 30
    assert writer.pending == 0
    assert not present(config(tmp_path).journal_path)


async def test_close_journals_rows_when_the_store_is_down_and_a_new_writer_replays_them(
    store: FakeStore, tmp_path: Path
) -> None:
    settings = config(tmp_path, flush_interval_seconds=10)
    journal = Path(settings.journal_path)
    writer = writer_for(store, settings)
    writer.start()
    store.down = True
    for r in rows(12):
        writer.record(r)

    await writer.close()

    assert store.rows == {}
    assert writer.pending == 0
    assert journal_ids(journal) == [f"r{i}" for i in range(12)]

    store.down = False
    committed: list[dict[str, int]] = []
    successor = writer_for(store, settings, committed.append)
    successor.start()
    try:
        await eventually(lambda: len(store.rows) == 12)
        await eventually(lambda: not present(journal))
    finally:
        await successor.close()
    assert sum(spend["key_a"] for spend in committed) == 1200


async def test_a_journal_left_mid_replay_is_replayed_at_start(
    store: FakeStore, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    replaying = Path(settings.journal_path + ".replaying")
    write_journal(replaying, [*(orjson.dumps(asdict(r)) for r in rows(3)), b"{not json"])
    store.rows["r0"] = row("r0")  # the crash came after the first batch was in
    writer = writer_for(store, settings)
    writer.start()
    try:
        await eventually(lambda: not present(replaying))
    finally:
        await writer.close()

    assert sorted(store.rows) == ["r0", "r1", "r2"]


# -- spend reported to the key cache ------------------------------------------------------------


async def test_on_commit_receives_the_spend_per_key(store: FakeStore, tmp_path: Path) -> None:
    committed: list[dict[str, int]] = []
    writer = writer_for(store, config(tmp_path, batch_size=3), committed.append)
    for r in (
        row("a1", "key_a", 100),
        row("b1", "key_b", 7),
        row("a2", "key_a", 250),
        row("c1", "key_c", 0),
        row("b2", "key_b", 1),
    ):
        writer.record(r)

    await writer.flush()

    totals: dict[str, int] = {}
    for spend in committed:
        assert all(nanos > 0 for nanos in spend.values())
        for key_id, nanos in spend.items():
            totals[key_id] = totals.get(key_id, 0) + nanos
    assert totals == {"key_a": 350, "key_b": 8}
    assert len(committed) == 2  # one report per committed batch


async def test_on_commit_is_not_called_for_rows_still_buffered(
    store: FakeStore, tmp_path: Path
) -> None:
    committed: list[dict[str, int]] = []
    writer = writer_for(store, config(tmp_path), committed.append)
    store.down = True
    writer.record(row("x"))

    await writer.flush()

    assert committed == []
    assert writer.pending == 1


# -- the real SQL store -------------------------------------------------------------------------


def key(key_id: str, credits_nanos: int | None = None) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        name=key_id,
        key_hash=hash_secret(key_id),
        prefix="lr-test",
        credits_nanos=credits_nanos,
        created_at=time.time(),
    )


@pytest.fixture
async def sql_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path}/x.db")
    await store.open()
    yield store
    await store.close()


async def test_write_ledger_settles_costs_onto_the_keys_exactly(sql_store: SqlStore) -> None:
    await sql_store.create_key(key("key_a", credits_nanos=10**18))
    await sql_store.create_key(key("key_b"))
    await sql_store.create_key(key("key_idle"))
    costs_a = [1, 999_999_999, 123_456_789, 3, 10**15 + 1]
    costs_b = [7, 0, 333_333_333]

    await sql_store.write_ledger(
        [row(f"a{i}", "key_a", c) for i, c in enumerate(costs_a[:3])]
        + [row(f"b{i}", "key_b", c) for i, c in enumerate(costs_b)]
    )
    await sql_store.write_ledger([row(f"a{i}", "key_a", c) for i, c in enumerate(costs_a)][3:])

    stored = {k.id: k for k in await sql_store.list_keys()}
    assert stored["key_a"].credits_used_nanos == sum(costs_a)
    assert stored["key_b"].credits_used_nanos == sum(costs_b)
    assert stored["key_idle"].credits_used_nanos == 0
    assert isinstance(stored["key_a"].credits_used_nanos, int)
    by_key = {g["group"]: g for g in await sql_store.usage_totals(None, None, None, "key")}
    assert by_key["key_a"]["cost_nanos"] == sum(costs_a)
    assert by_key["key_a"]["requests"] == len(costs_a)
    assert by_key["key_b"]["cost_nanos"] == sum(costs_b)


async def test_a_rejected_batch_writes_no_row_and_settles_no_cost(sql_store: SqlStore) -> None:
    await sql_store.create_key(key("key_a"))
    await sql_store.write_ledger([row("dup", "key_a", 5)])

    with pytest.raises(IntegrityError):
        await sql_store.write_ledger([row("new", "key_a", 1_000), row("dup", "key_a", 5)])

    assert await sql_store.get_ledger_row("new") is None
    stored = await sql_store.get_key("key_a")
    assert stored is not None
    assert stored.credits_used_nanos == 5


async def test_the_writer_isolates_a_duplicate_against_the_sql_store(
    sql_store: SqlStore, tmp_path: Path
) -> None:
    await sql_store.create_key(key("key_a"))
    await sql_store.write_ledger([row("r1", "key_a", 50)])
    committed: list[dict[str, int]] = []
    writer = LedgerWriter(sql_store, config(tmp_path), SpendLog(committed.append))
    for r in (row("r0", "key_a", 10), row("r1", "key_a", 50), row("r2", "key_a", 20)):
        writer.record(r)

    await writer.flush()

    stored = await sql_store.get_key("key_a")
    assert stored is not None
    assert stored.credits_used_nanos == 80  # r1 once, not twice
    assert {r.id for r in await sql_store.ledger_rows("key_a", None, None, 10)} == {
        "r0",
        "r1",
        "r2",
    }
    # r1 was stored already (e.g. by a write whose answer was lost): it counts as committed too.
    assert sum(spend.get("key_a", 0) for spend in committed) == 80
    assert not present(config(tmp_path).journal_path + ".rejected")
