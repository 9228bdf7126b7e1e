"""The relay's hot path on PostgreSQL: statements of ``queries`` sent straight through asyncpg.

A claim or the delete that settles a delivered batch runs hundreds of times a second under
load. SQLAlchemy builds and compiles these statements once; this module then runs them on the
asyncpg connection underneath a pooled SQLAlchemy connection, skipping SQLAlchemy's execution
and result layers, which cost more client CPU than the statement itself (see
docs/benchmarks.md). The pool still owns the connection: when the driver reports it broken,
SQLAlchemy is made to see the disconnect, so that it renews the pool as it would for its own
statements.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler


class DriverStatement:
    """One statement compiled for asyncpg, with its positional parameters in order."""

    def __init__(self, statement: sa.Executable, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, cast(sa.ClauseElement, statement).compile(dialect=dialect))
        self.sql = compiled.string
        self._names = tuple(compiled.positiontup or ())
        self._literals = {  # values fixed in the statement, such as state = 'pending'
            name: value
            for name, value in compiled.params.items()
            if not compiled.binds[name].required
        }

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] if name in values else self._literals[name] for name in self._names]


async def fetch(
    engine: AsyncEngine, statement: DriverStatement, values: Mapping[str, Any]
) -> Sequence[Any]:
    """Run ``statement`` autocommitted on a pooled connection and return its rows (asyncpg
    records). Driver errors are raised as they are (``errors()`` names their classes)."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            return await driver.fetch(statement.sql, *statement.arguments(values))  # type: ignore[no-any-return]
        except BaseException:
            if driver.is_closed():
                await _let_sqlalchemy_see_the_disconnect(connection)
            raise


async def _let_sqlalchemy_see_the_disconnect(connection: AsyncConnection) -> None:
    """The connection died under the driver (a database restart, say). Any statement through
    SQLAlchemy now fails as a disconnect, which makes SQLAlchemy do what it does for its own
    statements: invalidate this connection and every other one the pool opened before now,
    so that the next checkouts reconnect instead of failing one by one."""
    with contextlib.suppress(Exception):
        await connection.exec_driver_sql("SELECT 1")
    if not connection.invalidated:
        await connection.invalidate()  # not back into the pool in any case


def errors() -> tuple[type[BaseException], ...]:
    """The errors ``fetch`` may raise from the driver, besides OSError."""
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        asyncio.TimeoutError,  # asyncpg's command_timeout; an OSError only from Python 3.11
    )
