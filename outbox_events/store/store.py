"""The narrow interface between the library and its database: write, claim, settle, count.

Both dialects run the same statements (see ``queries``); what differs between PostgreSQL and
SQLite is kept in ``engine``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox_events.exceptions import StoreError
from outbox_events.store import driver, queries
from outbox_events.store import engine as engines

Row = Mapping[str, Any]
CHUNK = 1000  # rows per transaction in bulk operator commands


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """One leased row: an event on its way to one destination."""

    id: int
    event_id: uuid.UUID
    destination: str
    name: str
    payload: str
    key: str | None
    headers: str | None
    trace_context: str | None
    created_at: datetime
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """A failed delivery and when to try it next."""

    id: int
    available_at: datetime
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that will not be tried again, and why."""

    id: int
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """The rows one claim leased, all under one lease token."""

    token: uuid.UUID
    deliveries: list[ClaimedDelivery]


@contextlib.contextmanager
def translated_errors(
    action: str, driver_errors: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn SQLAlchemy and driver errors into StoreError, with the cause attached."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(
            f"could not {action}: {type(exc.__cause__ or exc).__name__}: {_first_line(exc)}"
        ) from exc
    except driver_errors as exc:  # raised by the driver directly (``driver.fetch``)
        raise StoreError(f"could not {action}: {type(exc).__name__}: {_first_line(exc)}") from exc
    except (OSError, UnicodeError) as exc:
        raise StoreError(f"could not {action}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


class OutboxStore:
    """Reads and writes the outbox table of one database."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: sa.Table,
        *,
        keep_delivered: bool,
        relay_engine: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        # Claims, settlements and releases may use an engine of their own (see
        # ``engine.create_relay_engine``); everything else uses ``engine``.
        self.relay_engine = relay_engine or engine
        self.table = table
        self._insert = queries.insert_rows(table)
        dialect = engine.dialect.name
        self._claim = queries.claim(table, dialect)
        # Claims, and settles that are a single statement, run autocommitted: no BEGIN and
        # COMMIT round trips (on SQLite: hops through aiosqlite's thread). One statement is
        # atomic on its own.
        self._claim_engine = (
            self.relay_engine.execution_options(isolation_level="AUTOCOMMIT")
            if dialect == "postgresql"
            else self.relay_engine.execution_options(**{engines.SINGLE_STATEMENT: True})
        )
        self._complete = (
            queries.complete(table, dialect)
            if keep_delivered
            else queries.delete_completed(table, dialect)
        )
        # PostgreSQL sends the claim and the settling delete or update through asyncpg
        # directly (see ``driver``).
        self._driver = dialect == "postgresql"
        self._driver_claims: dict[int, driver.DriverStatement] = {}  # by batch size
        self._driver_complete: driver.DriverStatement | None = None
        self._driver_errors: tuple[type[BaseException], ...] = ()
        if self._driver:
            self._driver_complete = driver.DriverStatement(self._complete, engine.dialect)
            self._driver_errors = driver.errors()
        self._reschedule = queries.reschedule(table)
        self._dead_letter = queries.dead_letter(table)
        self._release = queries.release(table)
        # A trigger (migration 0002) notifies this channel after every insert (PostgreSQL).
        self.channel = f"{table.schema}.{table.name}" if table.schema else table.name

    def write_in(self, connection: sa.Connection, rows: Sequence[Row]) -> None:
        """Insert ``rows`` in the caller's open transaction (a session's commit hook)."""
        if rows:  # one row: a plain execute, cheaper than an executemany
            connection.execute(self._insert, rows[0] if len(rows) == 1 else list(rows))

    async def write(self, rows: Sequence[Row]) -> None:
        """Insert ``rows`` in a transaction of their own."""
        if not rows:
            return
        with translated_errors("write events to the outbox"):
            async with self.engine.begin() as connection:
                await connection.execute(self._insert, rows[0] if len(rows) == 1 else list(rows))

    async def claim(
        self, *, destinations: Sequence[str], limit: int, now: datetime, lease_until: datetime
    ) -> Claim:
        """Lease up to ``limit`` deliverable rows of ``destinations``, oldest first."""
        token = uuid.uuid4()
        values = {
            "now": now,
            "destinations": list(destinations),
            "limit": limit,
            "token": token,
            "lease_until": lease_until,
        }
        with translated_errors("claim events", self._driver_errors):
            if self._driver:
                statement = self._driver_claims.get(limit)
                if statement is None:
                    statement = driver.DriverStatement(
                        queries.claim(self.table, "postgresql", limit), self.engine.dialect
                    )
                    self._driver_claims[limit] = statement
                rows = await driver.fetch(self.relay_engine, statement, values)
                deliveries = [ClaimedDelivery(*row) for row in rows]
            else:
                async with self._claim_engine.begin() as connection:
                    result = await connection.execute(self._claim, values)
                    deliveries = [ClaimedDelivery(*row) for row in result]
        deliveries.sort(key=lambda delivery: delivery.id)
        return Claim(token, deliveries)

    async def settle(
        self,
        token: uuid.UUID,
        *,
        delivered: Sequence[int],
        retries: Sequence[Retry] = (),
        dead: Sequence[DeadLetter] = (),
        chained: Mapping[int, Sequence[Row]] | None = None,
        now: datetime,
    ) -> None:
        """Record the outcome of a claim in one transaction. Rows whose lease was lost to a
        newer claim are left alone, and so are the events their handlers dispatched
        (``chained``, by row id): those are written only with their row's success."""
        with translated_errors("record delivery results", self._driver_errors):
            if delivered and not (retries or dead or chained):  # the common case
                values = {"ids": list(delivered), "token": token, "now": now}
                if self._driver_complete is not None:
                    await driver.fetch(self.relay_engine, self._driver_complete, values)
                else:
                    async with self._claim_engine.begin() as connection:  # one statement
                        await connection.execute(self._complete, values)
                return
            async with self.relay_engine.begin() as connection:
                if delivered:
                    result = await connection.execute(
                        self._complete, {"ids": list(delivered), "token": token, "now": now}
                    )
                    settled = set(result.scalars())
                    new_rows = [
                        row
                        for row_id, rows in (chained or {}).items()
                        if row_id in settled
                        for row in rows
                    ]
                    if new_rows:
                        await connection.execute(self._insert, new_rows)
                if retries:
                    await connection.execute(
                        self._reschedule,
                        [
                            {
                                "b_id": r.id,
                                "b_token": token,
                                "b_available_at": r.available_at,
                                "b_error": r.error,
                            }
                            for r in retries
                        ],
                    )
                if dead:
                    await connection.execute(
                        self._dead_letter,
                        [
                            {"b_id": d.id, "b_token": token, "b_error": d.error, "b_now": now}
                            for d in dead
                        ],
                    )

    def settle_one_in(
        self,
        connection: sa.Connection,
        row_id: int,
        token: uuid.UUID,
        *,
        now: datetime,
        chained: Sequence[Row],
    ) -> bool:
        """Record one delivered row and write the events its handler dispatched, in the
        caller's open transaction (a delivery's own, see ``relay/transaction.py``); False,
        with nothing written, if the lease ``token`` no longer holds the row."""
        result = connection.execute(self._complete, {"ids": [row_id], "token": token, "now": now})
        if not list(result.scalars()):
            return False
        if chained:
            connection.execute(self._insert, list(chained))
        return True

    async def release(self, token: uuid.UUID, *, now: datetime) -> None:
        """Make the unsettled rows of a claim claimable again, without counting the attempt."""
        with translated_errors("release claimed events"):
            async with self.relay_engine.begin() as connection:
                await connection.execute(self._release, {"token": token, "now": now})

    async def status(self, *, now: datetime) -> list[dict[str, Any]]:
        """Per destination: pending, in_flight, dead, delivered, oldest_pending."""
        with translated_errors("read the outbox status"):
            async with self.engine.connect() as connection:
                result = await connection.execute(queries.status(self.table), {"now": now})
                return [dict(row._mapping) for row in result]

    async def dead_letters(
        self,
        *,
        destination: str | None = None,
        name: str | None = None,
        dead_before: datetime | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """A page of dead-lettered rows, oldest first (continue with ``after_id``)."""
        query = queries.dead_letters(
            self.table,
            destination=destination is not None,
            name=name is not None,
            older_than=dead_before is not None,
        )
        params = {
            "after_id": after_id,
            "limit": limit,
            "destination": destination,
            "name": name,
            "cutoff": dead_before,
        }
        with translated_errors("list dead-lettered events"):
            async with self.engine.connect() as connection:
                result = await connection.execute(query, params)
                return [dict(row._mapping) for row in result]

    async def requeue(
        self,
        *,
        now: datetime,
        ids: Sequence[int | uuid.UUID] | None = None,
        destination: str | None = None,
        chunk: int = CHUNK,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Put dead rows back in line (all, some ids, or one destination's) in chunks of one
        transaction each; returns how many."""
        query = queries.requeue(
            self.table, ids=ids is not None, destination=destination is not None
        )
        params: dict[str, Any] = {"now": now, "limit": chunk}
        if destination is not None:
            params["b_destination"] = destination
        if ids is not None:
            params["ids"] = [i for i in ids if isinstance(i, int)]
            params["event_ids"] = [i for i in ids if isinstance(i, uuid.UUID)]
        return await self._in_chunks("requeue dead-lettered events", query, params, on_progress)

    async def purge(
        self,
        *,
        states: Sequence[str],
        finished_before: datetime,
        chunk: int = CHUNK,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete rows in ``states`` that finished before ``finished_before``, in chunks of
        one transaction each; returns how many."""
        params = {"states": list(states), "cutoff": finished_before, "limit": chunk}
        return await self._in_chunks("purge events", queries.purge(self.table), params, on_progress)

    async def _in_chunks(
        self,
        action: str,
        statement: sa.Executable,
        params: dict[str, Any],
        on_progress: Callable[[int], None] | None,
    ) -> int:
        total = 0
        with translated_errors(action):
            while True:
                async with self.engine.begin() as connection:
                    result = await connection.execute(statement, params)
                done = result.rowcount
                total += done
                if on_progress is not None and done:
                    on_progress(total)
                if done < params["limit"]:
                    return total
