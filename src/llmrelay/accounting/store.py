"""Storage for keys and the ledger: one narrow protocol, one SQLAlchemy implementation.

The same code and the same Alembic migrations serve SQLite (aiosqlite, the embedded default) and
PostgreSQL (asyncpg). Nothing here runs on the request path except a key lookup on a cache miss.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from sqlalchemy import case, event, func, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llmrelay.accounting import migrate
from llmrelay.accounting.records import KeyRecord, LedgerRow
from llmrelay.accounting.schema import api_keys, ledger


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def find_key(self, key_hash: str) -> KeyRecord | None: ...
    async def get_key(self, key_id: str) -> KeyRecord | None: ...
    async def get_keys(self, key_ids: Sequence[str]) -> list[KeyRecord]: ...
    async def list_keys(self) -> list[KeyRecord]: ...
    async def count_admin_keys(self) -> int: ...
    async def create_key(self, record: KeyRecord) -> None: ...
    async def revoke_key(self, key_id: str) -> KeyRecord | None: ...
    async def add_credits(self, key_id: str, nanos: int) -> KeyRecord | None: ...
    async def write_ledger(self, rows: Sequence[LedgerRow]) -> None: ...
    async def get_ledger_row(self, row_id: str) -> LedgerRow | None: ...
    async def ledger_ids(self, row_ids: Sequence[str]) -> set[str]: ...
    async def tokens_since(self, key_id: str, since: float) -> int: ...
    async def ledger_rows(
        self,
        key_id: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        *,
        model: str | None = None,
        provider: str | None = None,
    ) -> list[LedgerRow]: ...
    async def usage_totals(
        self,
        key_id: str | None,
        since: float | None,
        until: float | None,
        group_by: str,
        *,
        model: str | None = None,
        provider: str | None = None,
    ) -> list[dict[str, Any]]: ...
    async def ledger_search(
        self,
        key_id: str | None,
        model: str | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[LedgerRow]: ...
    async def usage_series(
        self,
        since: float,
        until: float,
        bucket_seconds: int,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[dict[str, Any]]: ...
    async def latency_samples(
        self, since: float, until: float, limit: int
    ) -> list[tuple[float, float]]: ...


def async_url(database_url: str) -> str:
    if database_url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + database_url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url.removeprefix(prefix)
    return database_url


_INSERT_SLICE = 100
"""Ledger rows per ``executemany``."""


class SqlStore:
    """Keys and ledger in SQLite or PostgreSQL through SQLAlchemy Core (async)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._sqlite = database_url.startswith("sqlite")
        # A file database has no connection to lose: a ping would only be a round trip to
        # aiosqlite's thread before every transaction.
        options: dict[str, Any] = {"pool_pre_ping": not self._sqlite}
        if not self._sqlite:
            # A database that stops answering must fail a call (the ledger then buffers and
            # retries), not hang it: bounded connect and statement times.
            options["connect_args"] = {"timeout": 5, "command_timeout": 30}
            options["pool_timeout"] = 10
        self.engine: AsyncEngine = create_async_engine(async_url(database_url), **options)
        if self._sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # The ledger insert, compiled once for this database: a batch then goes to the driver's
        # executemany as plain tuples, without SQLAlchemy's per-row parameter processing, which
        # ran on the event loop at ~15 µs a row (docs/performance.md).
        compiled = ledger.insert().compile(dialect=self.engine.dialect)
        self._ledger_insert = str(compiled)
        self._ledger_tuple = operator.attrgetter(*(compiled.positiontup or ()))

    async def open(self) -> None:
        await migrate.upgrade(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- keys ---------------------------------------------------------------------------------

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash))
            ).first()
        return _key(row) if row else None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def get_keys(self, key_ids: Sequence[str]) -> list[KeyRecord]:
        if not key_ids:
            return []
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).where(api_keys.c.id.in_(key_ids)))).all()
        return [_key(row) for row in rows]

    async def list_keys(self) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [_key(row) for row in rows]

    async def count_admin_keys(self) -> int:
        query = (
            select(func.count())
            .select_from(api_keys)
            .where(api_keys.c.is_admin.is_(True), api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def create_key(self, record: KeyRecord) -> None:
        values = asdict(record)
        values["models"] = list(record.models)
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))

    async def revoke_key(self, key_id: str) -> KeyRecord | None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def add_credits(self, key_id: str, nanos: int) -> KeyRecord | None:
        async with self.engine.begin() as conn:
            # An unlimited key stays unlimited; a limited one grows by the amount, atomically.
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.credits_nanos.is_not(None))
                .values(credits_nanos=api_keys.c.credits_nanos + nanos)
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    # -- ledger -------------------------------------------------------------------------------

    async def write_ledger(self, rows: Sequence[LedgerRow]) -> None:
        """Insert rows and settle their costs onto the keys, in one transaction."""
        if not rows:
            return
        spend: dict[str, int] = {}
        for row in rows:
            if row.cost_nanos:
                spend[row.key_id] = spend.get(row.key_id, 0) + row.cost_nanos
        async with self.engine.begin() as conn:
            # In slices: between two, the event loop serves requests instead of waiting for
            # the whole batch (the tail latency of the requests that arrive meanwhile).
            for start in range(0, len(rows), _INSERT_SLICE):
                values = list(map(self._ledger_tuple, rows[start : start + _INSERT_SLICE]))
                await conn.exec_driver_sql(self._ledger_insert, values)
            # Always in the same order, so two instances settling the same keys cannot deadlock.
            for key_id, nanos in sorted(spend.items()):
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key_id)
                    .values(credits_used_nanos=api_keys.c.credits_used_nanos + nanos)
                )

    async def get_ledger_row(self, row_id: str) -> LedgerRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ledger).where(ledger.c.id == row_id))).first()
        return LedgerRow(**row._asdict()) if row else None

    async def ledger_ids(self, row_ids: Sequence[str]) -> set[str]:
        """Which of these ids the ledger holds already."""
        if not row_ids:
            return set()
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(ledger.c.id).where(ledger.c.id.in_(row_ids)))).all()
        return {row.id for row in found}

    async def tokens_since(self, key_id: str, since: float) -> int:
        """Prompt plus completion tokens of the key's rows created at or after ``since``."""
        total = func.coalesce(func.sum(ledger.c.prompt_tokens + ledger.c.completion_tokens), 0)
        query = select(total).where(*_ledger_filters(key_id, since, None))
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def ledger_rows(
        self,
        key_id: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        *,
        model: str | None = None,
        provider: str | None = None,
    ) -> list[LedgerRow]:
        query = select(ledger).order_by(ledger.c.created.desc()).limit(limit)
        query = query.where(*_ledger_filters(key_id, since, until, model, provider))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [LedgerRow(**row._asdict()) for row in rows]

    async def usage_totals(
        self,
        key_id: str | None,
        since: float | None,
        until: float | None,
        group_by: str,
        *,
        model: str | None = None,
        provider: str | None = None,
    ) -> list[dict[str, Any]]:
        column = {
            "key": ledger.c.key_id,
            "model": ledger.c.model,
            "provider": ledger.c.provider,
            "day": func.floor(ledger.c.created / 86400) * 86400,
        }[group_by]
        query = (
            select(
                column.label("group"),
                func.count().label("requests"),
                func.sum(ledger.c.prompt_tokens).label("prompt_tokens"),
                func.sum(ledger.c.completion_tokens).label("completion_tokens"),
                func.sum(ledger.c.cost_nanos).label("cost_nanos"),
            )
            .where(*_ledger_filters(key_id, since, until, model, provider))
            .group_by(column)
            .order_by(column)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "group": row.group,
                "requests": int(row.requests),
                "prompt_tokens": int(row.prompt_tokens or 0),
                "completion_tokens": int(row.completion_tokens or 0),
                "cost_nanos": int(row.cost_nanos or 0),
            }
            for row in rows
        ]

    # -- read-only views for the dashboard -------------------------------------------------------

    async def ledger_search(
        self,
        key_id: str | None,
        model: str | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[LedgerRow]:
        """The newest rows first; ``model`` matches the resolved or the requested model."""
        filters = list(_ledger_filters(key_id, since, until))
        if model is not None:
            filters.append(or_(ledger.c.model == model, ledger.c.requested_model == model))
        query = select(ledger).where(*filters).order_by(ledger.c.created.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [LedgerRow(**row._asdict()) for row in rows]

    async def usage_series(
        self,
        since: float,
        until: float,
        bucket_seconds: int,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[dict[str, Any]]:
        """Per time bucket (its start, Unix seconds): requests, errors, tokens and cost."""
        bucket = func.floor(ledger.c.created / bucket_seconds) * bucket_seconds
        filters = list(_ledger_filters(key_id, since, until))
        if model is not None:
            filters.append(or_(ledger.c.model == model, ledger.c.requested_model == model))
        query = (
            select(
                bucket.label("bucket"),
                func.count().label("requests"),
                func.sum(case((ledger.c.status == "error", 1), else_=0)).label("errors"),
                func.sum(ledger.c.prompt_tokens).label("prompt_tokens"),
                func.sum(ledger.c.completion_tokens).label("completion_tokens"),
                func.sum(ledger.c.cost_nanos).label("cost_nanos"),
            )
            .where(*filters)
            .group_by(bucket)
            .order_by(bucket)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "bucket": float(row.bucket),
                "requests": int(row.requests),
                "errors": int(row.errors or 0),
                "prompt_tokens": int(row.prompt_tokens or 0),
                "completion_tokens": int(row.completion_tokens or 0),
                "cost_nanos": int(row.cost_nanos or 0),
            }
            for row in rows
        ]

    async def latency_samples(
        self, since: float, until: float, limit: int
    ) -> list[tuple[float, float]]:
        """``(created, latency_ms)`` of the newest ``limit`` rows in the window."""
        query = (
            select(ledger.c.created, ledger.c.latency_ms)
            .where(*_ledger_filters(None, since, until))
            .order_by(ledger.c.created.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(float(row.created), float(row.latency_ms)) for row in rows]


def _ledger_filters(
    key_id: str | None,
    since: float | None,
    until: float | None,
    model: str | None = None,
    provider: str | None = None,
) -> Iterable[Any]:
    filters = []
    if key_id is not None:
        filters.append(ledger.c.key_id == key_id)
    if model is not None:
        filters.append(ledger.c.model == model)
    if provider is not None:
        filters.append(ledger.c.provider == provider)
    if since is not None:
        filters.append(ledger.c.created >= since)
    if until is not None:
        filters.append(ledger.c.created < until)
    return filters


def _key(row: Row[Any]) -> KeyRecord:
    values = row._asdict()
    values["models"] = tuple(values["models"] or ())
    values["metadata"] = dict(values["metadata"] or {})
    return KeyRecord(**values)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI and the server use one file at once; NORMAL is durable across crashes of
    # the process (not of the machine), which is the ledger's contract on SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
