"""Running the shipped Alembic migrations against an outbox database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox_events.store.store import translated_errors

_PACKAGE = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """The migrations folder: inside the installed wheel, or at the top of a source checkout."""
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("outbox_events migrations are missing from this installation")


def version_table(table: str) -> str:
    """The Alembic version table of the outbox migrations, apart from the host app's own."""
    return f"{table}_alembic_version"


def alembic_config(table: str, schema: str | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["outbox_table"] = table
    config.attributes["outbox_schema"] = schema
    return config


async def upgrade(
    engine: AsyncEngine, *, table: str, schema: str | None, revision: str = "head"
) -> None:
    """Bring the outbox table(s) in ``engine``'s database to ``revision``."""
    config = alembic_config(table, schema)

    def _upgrade(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    with translated_errors("migrate the outbox table"):
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
