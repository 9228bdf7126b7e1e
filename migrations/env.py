"""Alembic environment of the outbox tables.

Used by ``outbox-relay migrate`` / ``Outbox.migrate()`` (which hand over a connection) and by
plain Alembic::

    alembic -c migrations/alembic.ini -x url=postgresql+asyncpg://... upgrade head

Options (``-x name=value`` or config attributes): ``url``, ``table`` (default
``outbox_events``), ``schema``. The version table is ``<table>_alembic_version``, so a host
application's own migration history is never touched.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from outbox_events.store.migrate import version_table
from outbox_events.store.tables import DEFAULT_TABLE, outbox_table, validate_identifier

config = context.config
x_args = context.get_x_argument(as_dictionary=True)
table = validate_identifier(
    config.attributes.get("outbox_table") or x_args.get("table") or DEFAULT_TABLE, "table name"
)
schema = config.attributes.get("outbox_schema") or x_args.get("schema") or None
config.attributes["outbox_table"], config.attributes["outbox_schema"] = table, schema
target_metadata = outbox_table(table, schema).metadata


def run_with(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=version_table(table),
        version_table_schema=schema,
        include_name=lambda name, type_, _parent: type_ != "table" or name == table,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_url(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_with)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=x_args.get("url") or config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=version_table(table),
        version_table_schema=schema,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run_with(config.attributes["connection"])
else:
    url = x_args.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "give the database URL: alembic -x url=postgresql+asyncpg://... upgrade head"
        )
    asyncio.run(run_with_url(url))
