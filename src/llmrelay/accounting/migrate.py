"""Schema migrations (Alembic), run programmatically: ``llmrelay db upgrade`` and at start-up."""

from __future__ import annotations

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
    """Bring the database to the newest schema (idempotent, safe to run from several processes)."""
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held to the end of the transaction; the next process then finds the schema current.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK}
            )
        await connection.run_sync(_upgrade)
