"""Schema migrations (Alembic), run programmatically: ``llmrelay db upgrade`` and at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

# Any constant: instances starting together on one PostgreSQL database take turns migrating.
_PG_MIGRATION_LOCK = 0x6C6D7279


def _config(connection: Connection) -> Config:
    config = Config()
    location = resources.files("llmrelay.accounting").joinpath("migrations")
    config.set_main_option("script_location", str(location))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (idempotent, safe to run from several processes:
    they take turns, and the later ones find the schema current)."""
    sqlite_path = engine.url.database if engine.dialect.name == "sqlite" else None
    async with _file_lock(sqlite_path), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held to the end of the transaction.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK}
            )
        await connection.run_sync(_upgrade)


@contextlib.asynccontextmanager
async def _file_lock(database_path: str | None) -> AsyncIterator[None]:
    """SQLite has no advisory locks: a lock file next to the database stands in."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one process at a time is up to the user
        fcntl = None  # type: ignore[assignment]
    if not database_path or database_path == ":memory:" or fcntl is None:
        yield
        return
    try:
        descriptor = os.open(database_path + ".migrate-lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield  # no directory to lock in: opening the database will say what is wrong
        return
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
