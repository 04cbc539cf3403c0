"""Schema migrations (Alembic), run programmatically: ``llmrelay db upgrade`` and at start-up."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


def _config(connection: Connection) -> Config:
    config = Config()
    location = resources.files("llmrelay.accounting").joinpath("migrations")
    config.set_main_option("script_location", str(location))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (idempotent)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
