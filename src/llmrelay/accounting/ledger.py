"""The asynchronous ledger writer: requests hand it rows and never wait for the database.

Rows are buffered in memory and written in batches (one transaction each, settling costs onto the
keys). When the database is unreachable, rows stay buffered and the writer retries with a backoff
that new rows do not cut short; past ``buffer_rows`` the oldest are spilled to an append-only
journal file, which is replayed as soon as the database answers again (with or without new
traffic) and at the next start. A batch the database rejects is split: rows already in the
database (a replay, a commit whose answer was lost) count as written, the others are written one
by one, and each row refused on its own goes to a dead-letter file, so its neighbours are still
written. ``close()`` flushes everything, journaling what it cannot write, so a SIGTERM loses no row.

A :class:`LedgerListener` hears of every write, so credit figures held in memory move from
"settled here, not stored yet" to "stored" in the same step that makes a row durable, and a row
that is never stored is never counted. Rows replayed from a journal another process left are
reported with ``settled_here=False``: this process never counted them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import orjson
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from llmrelay.accounting.records import LedgerRow
from llmrelay.accounting.store import Store
from llmrelay.config import LedgerConfig

log = logging.getLogger("llmrelay.ledger")

_MAX_BACKOFF_SECONDS = 5.0
_FIRST_BACKOFF_SECONDS = 0.2


class LedgerListener(Protocol):
    def write_started(self) -> None:
        """A write to the database begins (reads of keys overlapping it are not trusted)."""

    def write_ended(self) -> None: ...

    def committed(self, rows: list[LedgerRow], settled_here: bool) -> None:
        """These rows are in the database (with their costs in the keys' ``credits_used``)."""

    def rejected(self, rows: list[LedgerRow], settled_here: bool) -> None:
        """The database refused these rows; they went to the dead-letter file."""


def is_outage(exc: BaseException) -> bool:
    """Whether a database error means "unreachable, try again" rather than "this row is bad"."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        # asyncpg's own connection errors, and the server shutting down or starting up (57P01,
        # 57P03), arrive as the generic DBAPIError.
        original = exc.orig
        name = type(original).__name__ if original is not None else ""
        if isinstance(original, OSError | TimeoutError | ConnectionError):
            return True
        return name in _OUTAGE_ERROR_NAMES or "ConnectionDoesNotExist" in name
    return False


_OUTAGE_ERROR_NAMES = frozenset(
    {
        "AdminShutdownError",
        "CannotConnectNowError",
        "ConnectionFailureError",
        "ConnectionRejectionError",
        "CrashShutdownError",
        "InterfaceError",
        "InternalClientError",
        "TooManyConnectionsError",
        "ConnectionDoesNotExistError",
        "PostgresConnectionError",
    }
)


class LedgerWriter:
    def __init__(
        self, store: Store, config: LedgerConfig, listener: LedgerListener | None = None
    ) -> None:
        self._store = store
        self._config = config
        self._listener = listener
        self._buffer: list[LedgerRow] = []
        self._lock = asyncio.Lock()
        # One event wakes the loop, the flags say why (no helper tasks: the loop is one task).
        self._wake = asyncio.Event()
        self._overflow = False
        self._stopping = False  # read through _stopped(): it changes across awaits
        self._task: asyncio.Task[None] | None = None
        self._journal = Path(config.journal_path)
        self._replaying = self._journal.with_name(self._journal.name + ".replaying")
        self._dead_letter = self._journal.with_name(self._journal.name + ".rejected")
        self._inherited = False
        """Whether ``.replaying`` holds rows of an earlier process (never counted by this one)."""
        self._replayed: set[str] = set()
        """Ids of ``.replaying`` done with, so a replay resumed in this process skips them."""
        self._backoff = 0.0
        self.written = 0
        self.failures = 0
        self.rejected = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, row: LedgerRow) -> None:
        """Queue one row. Never blocks, never raises."""
        self._buffer.append(row)
        size = len(self._buffer)
        batch = self._config.batch_size
        if size % batch == 0:
            self._wake.set()  # a full batch is waiting (once per batch, not once per row)
        excess = size - self._config.buffer_rows
        if excess > 0 and excess % batch == 0:
            self._overflow = True
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="llmrelay-ledger")

    async def close(self) -> None:
        """Stop, then write everything still buffered; journal what the database refuses."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # The loop stops between writes; one under way finishes (or times out) first.
            try:
                await asyncio.wait_for(self._task, timeout=60)
            except TimeoutError:
                log.error("ledger writer did not stop in time")
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

    # -- the background loop ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._adopt_journals()
        except Exception:
            log.exception("replaying the journal at start failed; retrying in the loop")
            self._backoff = _FIRST_BACKOFF_SECONDS
        while not self._stopped():
            try:
                await self._turn()
            except Exception:  # the writer must outlive any surprise: it holds the rows
                log.exception("ledger writer error; retrying")
                self._backoff = min(
                    _MAX_BACKOFF_SECONDS, self._backoff * 2 or _FIRST_BACKOFF_SECONDS
                )

    async def _turn(self) -> None:
        """One wait and one round of writing."""
        if self._backoff:
            await self._back_off(self._backoff)
        else:
            await self._pause(self._config.flush_interval_seconds)
        if self._stopped():
            return
        if await self._write_all():
            self._backoff = 0.0
        else:
            self._backoff = min(_MAX_BACKOFF_SECONDS, self._backoff * 2 or _FIRST_BACKOFF_SECONDS)
            await self._spill_excess()

    async def _back_off(self, seconds: float) -> None:
        """Wait before retrying an outage. New rows do not cut this short (that would become a
        retry per request); a buffer past ``buffer_rows`` is spilled meanwhile, and close()
        ends it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopped():
            left = deadline - loop.time()
            if left <= 0:
                return
            await self._pause(left)
            if self._overflow:
                self._overflow = False
                await self._spill_excess()

    def _stopped(self) -> bool:
        return self._stopping

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` or until woken."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _write_all(self) -> bool:
        """Write the buffer, then any journal; False when the database is unreachable."""
        while self._buffer and not self._stopped():
            full = len(self._buffer) >= self._config.batch_size
            if not await self._flush_once():
                return False
            if not full:
                # Rows that came in during that write wait for the next turn: writing them at
                # once would become a transaction per handful of rows under load, each a round
                # trip to the database's thread (docs/performance.md).
                break
        if self._stopped():
            return True
        if self._journal.exists() or self._replaying.exists():
            async with self._lock:
                return await self._replay_journal()
        return True

    # -- writing ------------------------------------------------------------------------------

    async def _flush_once(self) -> bool:
        """Write one batch; False when the database is unreachable (rows stay buffered)."""
        async with self._lock:
            batch = self._buffer[: self._config.batch_size]
            if not batch:
                return True
            left = await self._write(batch, settled_here=True)
            self._buffer[: len(batch)] = left
            return not left

    async def _write(self, batch: list[LedgerRow], settled_here: bool) -> list[LedgerRow]:
        """Write a batch, isolating bad rows; the rows still to write (after an outage)."""
        try:
            await self._attempt(batch, settled_here)
        except Exception as exc:
            if is_outage(exc):
                self.failures += 1
                log.warning("ledger write failed (%s); will retry", exc.__class__.__name__)
                return batch
            return await self._isolate(batch, settled_here)
        return []

    async def _attempt(self, rows: list[LedgerRow], settled_here: bool) -> None:
        listener = self._listener
        if listener is not None:
            listener.write_started()
        try:
            await self._store.write_ledger(rows)
        finally:
            if listener is not None:
                listener.write_ended()
        self.written += len(rows)
        if listener is not None:
            listener.committed(rows, settled_here)

    async def _isolate(self, batch: list[LedgerRow], settled_here: bool) -> list[LedgerRow]:
        """A batch the database refused: set aside the rows it holds already, then try the
        others together, then one by one; each row refused on its own is dead-lettered."""
        try:
            present = await self._store.ledger_ids([row.id for row in batch])
        except Exception:
            return batch  # the database does not answer a plain read: an outage, not bad rows
        if present:
            self._found_written([row for row in batch if row.id in present], settled_here)
            batch = [row for row in batch if row.id not in present]
            if not batch:
                return []
            try:
                await self._attempt(batch, settled_here)
            except Exception as exc:
                if is_outage(exc):
                    return batch
            else:
                return []
        for index, row in enumerate(batch):
            try:
                await self._attempt([row], settled_here)
            except Exception as exc:
                if is_outage(exc):
                    return batch[index:]
                # Dead-letter a row only when the database demonstrably answers and still
                # refuses it: an unclassified error while it is going down keeps the row.
                try:
                    written = bool(await self._store.ledger_ids([row.id]))
                except Exception:
                    return batch[index:]
                if written:
                    self._found_written([row], settled_here)
                else:
                    await self._reject(row, exc, settled_here)
        return []

    def _found_written(self, rows: list[LedgerRow], settled_here: bool) -> None:
        """Rows the database holds already. Ours were stored by a write whose answer was lost:
        they are committed now. An earlier process's were stored before this one started, so
        every figure this process read includes them already."""
        self.written += len(rows)
        if settled_here and self._listener is not None:
            self._listener.committed(rows, settled_here)

    async def _reject(self, row: LedgerRow, exc: Exception, settled_here: bool) -> None:
        self.failures += 1
        self.rejected += 1
        log.error(
            "ledger row %s rejected by the database (%s): kept in %s",
            row.id,
            exc.__class__.__name__,
            self._dead_letter,
        )
        try:
            await asyncio.to_thread(_append, self._dead_letter, [row])
        except OSError as error:
            log.error("ledger row %s lost: the dead-letter file failed (%s)", row.id, error)
        if self._listener is not None:
            self._listener.rejected([row], settled_here)

    # -- the journal --------------------------------------------------------------------------

    async def _spill_excess(self) -> None:
        async with self._lock:
            excess = len(self._buffer) - self._config.buffer_rows
            if excess > 0:
                await self._spill(excess)

    async def _spill(self, count: int) -> None:
        rows = self._buffer[:count]
        try:
            await asyncio.to_thread(_append, self._journal, rows)
        except OSError as error:
            # A full disk: the rows stay in memory (over the bound) rather than being lost.
            log.error("cannot journal %d ledger rows: %s", len(rows), error)
            return
        del self._buffer[:count]

    async def _adopt_journals(self) -> None:
        """Take over the journals an earlier process left: they go to ``.replaying`` first, so
        this process's own spills (to the journal) never mix with rows it did not count."""
        self._inherited = await asyncio.to_thread(_adopt, self._journal, self._replaying)
        if self._inherited:
            async with self._lock:
                if not await self._replay_journal():
                    self._backoff = _FIRST_BACKOFF_SECONDS

    async def _replay_journal(self) -> bool:
        """Write journaled rows to the database; each file goes once all its rows are in."""
        while not self._stopped():
            if not self._replaying.exists():
                if not self._journal.exists():
                    return True
                await asyncio.to_thread(os.replace, self._journal, self._replaying)
                self._inherited = False
                self._replayed = set()
            settled_here = not self._inherited
            log.info("replaying journaled ledger rows from %s", self._replaying)
            offset = 0
            while True:
                chunk = await asyncio.to_thread(
                    _read_rows, self._replaying, offset, _REPLAY_CHUNK_LINES
                )
                if chunk is None:
                    break
                offset, rows = chunk
                rows = [row for row in rows if row.id not in self._replayed]
                for start in range(0, len(rows), self._config.batch_size):
                    batch = rows[start : start + self._config.batch_size]
                    left = await self._write(batch, settled_here)
                    left_ids = {row.id for row in left}
                    self._replayed.update(row.id for row in batch if row.id not in left_ids)
                    if left:
                        return False  # the file stays; the replay resumes when the database is back
            await asyncio.to_thread(self._replaying.unlink)
            self._inherited = False
            self._replayed = set()
        return True


_REPLAY_CHUNK_LINES = 20_000


class DiscardingLedger(LedgerWriter):
    """Accounting off (``accounting.enabled: false``): rows are not kept."""

    def record(self, row: LedgerRow) -> None:
        return None

    def start(self) -> None:
        return None


def _adopt(journal: Path, replaying: Path) -> bool:
    if journal.exists():
        if replaying.exists():
            with journal.open("rb") as source, replaying.open("ab") as target:
                target.write(source.read())
                target.flush()
                os.fsync(target.fileno())
            journal.unlink()
        else:
            os.replace(journal, replaying)
    return replaying.exists()


def _append(path: Path, rows: list[LedgerRow]) -> None:
    with path.open("ab") as journal:
        journal.write(b"".join(_encode(row) + b"\n" for row in rows))
        journal.flush()
        os.fsync(journal.fileno())


def _encode(row: LedgerRow) -> bytes:
    values = asdict(row)
    try:
        return orjson.dumps(values)
    except TypeError:  # an integer past 64 bits (a row the database refused for it)
        return json.dumps(values, separators=(",", ":")).encode()


def _decode(line: bytes) -> LedgerRow:
    try:
        values = orjson.loads(line)
    except orjson.JSONDecodeError:
        values = json.loads(line)
    return LedgerRow(**values)


def _read_rows(path: Path, offset: int, lines: int) -> tuple[int, list[LedgerRow]] | None:
    """Up to ``lines`` lines of the journal from byte ``offset``: the next offset and the rows;
    None at the end. A line that is not a row (a write torn by a crash) is skipped."""
    rows: list[LedgerRow] = []
    with path.open("rb") as journal:
        journal.seek(offset)
        for _ in range(lines):
            line = journal.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                rows.append(_decode(line))
            except (ValueError, TypeError):
                log.warning("skipping an unreadable line of %s", path)
        end = journal.tell()
    return None if end == offset else (end, rows)
