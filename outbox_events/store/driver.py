"""The relay's hot path on PostgreSQL: statements of ``queries`` sent straight through asyncpg.

A claim or the delete that settles a delivered batch runs hundreds of times a second under
load. SQLAlchemy builds and compiles these statements once; this module then runs them on the
asyncpg connection underneath a pooled SQLAlchemy connection, skipping SQLAlchemy's execution
and result layers, which cost more client CPU than the statement itself (see
docs/benchmarks.md). The pool still owns the connection: a connection the driver reports
broken is invalidated there, so the next checkout opens a fresh one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
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
                await connection.invalidate()  # not back into the pool
            raise


def errors() -> tuple[type[Exception], ...]:
    """The asyncpg errors ``fetch`` may raise besides OSError."""
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError)
