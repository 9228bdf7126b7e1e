"""The shipped migrations create exactly the table the code expects, on both databases, and
keep their own version history apart from the host application's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox_events import Outbox
from outbox_events.store.migrate import script_location, version_table
from outbox_events.store.tables import outbox_table
from tests.conftest import run_sync

ROOT = Path(__file__).resolve().parents[2]


async def _drift(engine: AsyncEngine, table: sa.Table) -> list[object]:
    def compare(connection: sa.Connection) -> list[object]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_name": lambda name, type_, _p: type_ != "table" or name == table.name,
                "compare_type": True,
            },
        )
        return list(compare_metadata(context, table.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


async def test_upgrade_to_head_matches_the_table_metadata(empty_database_url: str) -> None:
    outbox = Outbox(empty_database_url, table="events_outbox")
    try:
        await outbox.migrate()
        await outbox.migrate()  # idempotent
        assert await _drift(outbox.engine, outbox_table("events_outbox")) == []
    finally:
        await outbox.close()


async def test_host_application_alembic_history_is_left_alone(empty_database_url: str) -> None:
    engine = create_async_engine(empty_database_url)
    async with engine.begin() as connection:
        await connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        await connection.execute(sa.text("INSERT INTO alembic_version VALUES ('host_app_0042')"))
    outbox = Outbox(engine)
    await outbox.migrate()
    async with engine.connect() as connection:
        host = (await connection.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
        ours = (
            await connection.execute(
                sa.text(f"SELECT version_num FROM {version_table('outbox_events')}")
            )
        ).all()
    await engine.dispose()
    assert host == [("host_app_0042",)], "the host app's alembic_version was modified"
    assert len(ours) == 1


def test_plain_alembic_with_the_shipped_scripts_creates_the_table(
    empty_database_url: str,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(script_location() / "alembic.ini"),
            "-x",
            f"url={empty_database_url}",
            "upgrade",
            "head",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    async def tables() -> list[str]:
        engine = create_async_engine(empty_database_url)
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        await engine.dispose()
        return names

    assert "outbox_events" in run_sync(tables())


def test_table_and_schema_names_must_be_identifiers() -> None:
    from outbox_events import ConfigurationError

    for bad in ("outbox; DROP TABLE users", "1outbox", "", "a" * 41, "out-box"):
        with pytest.raises(ConfigurationError, match="identifier"):
            Outbox("sqlite+aiosqlite:///:memory:", table=bad)
    with pytest.raises(ConfigurationError, match="identifier"):
        Outbox("sqlite+aiosqlite:///:memory:", schema="public; --")
