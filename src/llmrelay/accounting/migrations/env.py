"""Alembic environment: runs on the connection llmrelay hands it (see accounting/migrate.py)."""

from alembic import context

from llmrelay.accounting.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
