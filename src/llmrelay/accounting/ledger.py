"""The asynchronous ledger writer: requests hand it rows and never wait for the database.

Rows are buffered in memory and written in batches (one transaction each, settling costs onto the
keys). When the database is unreachable, rows stay buffered and the writer retries with backoff;
past ``buffer_rows`` the oldest are spilled to an append-only journal file, replayed when the
database is back (and at the next start). A row the database rejects is isolated so its neighbours
are still written, and is kept in a dead-letter file next to the journal. ``close()`` flushes
everything, journaling what it cannot write, so a SIGTERM loses no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import orjson
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from llmrelay.accounting.records import LedgerRow
from llmrelay.accounting.store import Store
from llmrelay.config import LedgerConfig

log = logging.getLogger("llmrelay.ledger")

CommitListener = Callable[[dict[str, int]], None]


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class LedgerWriter:
    def __init__(
        self, store: Store, config: LedgerConfig, on_commit: CommitListener | None = None
    ) -> None:
        self._store = store
        self._config = config
        self._on_commit = on_commit
        self._buffer: list[LedgerRow] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._journal = Path(config.journal_path)
        self._replaying = self._journal.with_name(self._journal.name + ".replaying")
        self._dead_letter = self._journal.with_name(self._journal.name + ".rejected")
        self._backoff = 0.0
        self._isolated = 0
        self.written = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, row: LedgerRow) -> None:
        """Queue one row. Never blocks, never raises."""
        self._buffer.append(row)
        if len(self._buffer) >= self._config.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="llmrelay-ledger")

    async def close(self) -> None:
        """Stop, then write everything still buffered; journal what the database refuses."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Each successful flush writes one batch: keep going while the database answers, and
        # give up (to the journal) only after three failed attempts.
        failures = 0
        while self._buffer and failures < 3:
            if not await self._flush_once():
                failures += 1
                await asyncio.sleep(0.2)
        if self._buffer:
            log.error(
                "database unavailable at shutdown: journaling %d ledger rows", len(self._buffer)
            )
            await self._spill(len(self._buffer))

    async def flush(self) -> None:
        """Write everything buffered now (tests and admin reads use it)."""
        while self._buffer:
            if not await self._flush_once():
                return

    async def _run(self) -> None:
        await self._replay_journal()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.flush_interval_seconds + self._backoff):
                    await self._wake.wait()
            self._wake.clear()
            if self._buffer:
                if await self._flush_once():
                    self._backoff = 0.0
                    if len(self._buffer) >= self._config.batch_size:
                        self._wake.set()  # a backlog: write the next batch without waiting
                    if self._journal.exists() or self._replaying.exists():
                        await self._replay_journal()
                else:
                    self._backoff = min(5.0, self._backoff * 2 or 0.2)
                    if len(self._buffer) > self._config.buffer_rows:
                        await self._spill(len(self._buffer) - self._config.buffer_rows)

    async def _flush_once(self) -> bool:
        """Write one batch; False when the database is unreachable (rows stay buffered)."""
        batch = self._buffer[: self._config.batch_size]
        try:
            await self._store.write_ledger(batch)
        except Exception as exc:
            if _is_outage(exc):
                self.failures += 1
                log.warning("ledger write failed (%s); will retry", exc.__class__.__name__)
                return False
            return await self._isolate(batch)
        del self._buffer[: len(batch)]
        self._committed(batch)
        return True

    async def _isolate(self, batch: list[LedgerRow]) -> bool:
        """A batch the database rejected: write its rows one by one, set the bad ones aside."""
        done = await self._write_each(batch)
        del self._buffer[: len(batch) if done else self._isolated]
        return done

    async def _write_each(self, batch: list[LedgerRow]) -> bool:
        """Row by row; False on an outage, with ``_isolated`` rows already handled."""
        self._isolated = 0
        for row in batch:
            try:
                await self._store.write_ledger([row])
            except Exception as exc:
                if _is_outage(exc):
                    return False
                if isinstance(exc, IntegrityError) and await self._already_written(row):
                    self._isolated += 1
                    continue
                self.failures += 1
                log.error("ledger row %s rejected: %s", row.id, exc.__class__.__name__)
                await asyncio.to_thread(_append, self._dead_letter, [row])
            else:
                self._committed([row])
            self._isolated += 1
        return True

    async def _already_written(self, row: LedgerRow) -> bool:
        try:
            return await self._store.get_ledger_row(row.id) is not None
        except Exception:
            return False

    def _committed(self, rows: list[LedgerRow]) -> None:
        self.written += len(rows)
        if self._on_commit is None:
            return
        spend: dict[str, int] = {}
        for row in rows:
            if row.cost_nanos:
                spend[row.key_id] = spend.get(row.key_id, 0) + row.cost_nanos
        if spend:
            self._on_commit(spend)

    async def _spill(self, count: int) -> None:
        rows = self._buffer[:count]
        await asyncio.to_thread(_append, self._journal, rows)
        del self._buffer[:count]

    async def _replay_journal(self) -> None:
        """Write journaled rows straight to the database; the file goes only once all are in."""
        if not self._journal.exists() and not self._replaying.exists():
            return
        if not self._replaying.exists():
            await asyncio.to_thread(os.replace, self._journal, self._replaying)
        rows = await asyncio.to_thread(_read, self._replaying)
        log.info("replaying %d journaled ledger rows", len(rows))
        for start in range(0, len(rows), self._config.batch_size):
            batch = rows[start : start + self._config.batch_size]
            try:
                await self._store.write_ledger(batch)
            except Exception as exc:
                if _is_outage(exc):
                    return  # the file stays; the next successful flush replays it again
                if not await self._write_each(batch):
                    return
            else:
                self._committed(batch)
        await asyncio.to_thread(self._replaying.unlink)


def _append(path: Path, rows: list[LedgerRow]) -> None:
    with path.open("ab") as journal:
        journal.write(b"".join(orjson.dumps(asdict(row)) + b"\n" for row in rows))
        journal.flush()
        os.fsync(journal.fileno())


def _read(path: Path) -> list[LedgerRow]:
    rows: list[LedgerRow] = []
    with path.open("rb") as journal:
        for line in journal:
            if line.strip():
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    rows.append(LedgerRow(**orjson.loads(line)))
    return rows
