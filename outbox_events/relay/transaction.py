"""The delivery's own transaction: a handler's database writes and the "delivered" mark of its
event commit together (DESIGN rule 9, the exactly-once effect).

A handler asks for it with ``delivery_session()``, as a dependency
(``session: AsyncSession = Depends(delivery_session)``) or by awaiting it. The relay then
commits, in that one transaction of the Outbox's database: what the handler wrote through the
session, the events it dispatched, and the record that its event was delivered, provided the
relay's lease on the event still holds. If the handler fails, or the lease was lost to another
relay meanwhile, all of it is rolled back and the event is delivered again later.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncTransaction

from outbox_events import unit_of_work
from outbox_events.exceptions import DeliveryError, NoDeliveryError
from outbox_events.store import engine as engines
from outbox_events.store.store import ClaimedDelivery, translated_errors

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox

logger = logging.getLogger(__name__)


class DeliverySession(AsyncSession):
    """The session ``delivery_session()`` gives: the relay ends its transaction.

    ``close()`` from the handler (``async with session:``, say) flushes what it added and
    keeps the transaction open, instead of discarding unflushed objects. ``commit()`` does
    not end the transaction either (the session joined it); ``rollback()`` does, and the
    delivery then fails and is tried again: raise instead to roll back on purpose.
    """

    async def close(self) -> None:
        if self.is_active:
            await self.flush()

    async def _end(self) -> None:
        await super().close()


class DeliveryTransaction:
    """One delivery's transaction, opened when its handler first asks for the session."""

    def __init__(self, outbox: Outbox, delivery: ClaimedDelivery, token: uuid.UUID) -> None:
        self.outbox = outbox
        self.delivery = delivery
        self.token = token
        self._connection: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None
        self._session: DeliverySession | None = None
        self._opening = asyncio.Lock()  # two first calls at once share one transaction
        self._closed = False

    async def session(self) -> DeliverySession:
        async with self._opening:
            if self._closed:
                raise NoDeliveryError("this delivery is over; delivery_session() belongs to it")
            if self._session is None:
                await self._open()
            assert self._session is not None
            return self._session

    async def _open(self) -> None:
        engine = self.outbox.engine
        with translated_errors("open the delivery's transaction"):
            connection = await engine.connect()
            try:
                if engine.dialect.name == "sqlite":
                    # Take SQLite's write lock at BEGIN: a deferred transaction that read
                    # first could not write once another writer had committed.
                    await connection.execution_options(**{engines.BEGIN: "BEGIN IMMEDIATE"})
                self._transaction = await connection.begin()
            except BaseException:
                await connection.close()
                raise
        self._connection = connection
        # The session joins the transaction: its commit() does not end it, the relay does.
        self._session = DeliverySession(bind=connection, expire_on_commit=False)

    async def commit(self, chained: list[unit_of_work.PendingEvent]) -> bool:
        """Flush the handler's writes, record the delivery, write the events the handler
        dispatched and commit; False (everything rolled back) if the lease was lost.

        Raises:
            DeliveryError: the handler rolled the transaction back.
            StoreError: the database failed; nothing was committed.
        """
        assert self._session is not None and self._connection is not None
        assert self._transaction is not None
        if not self._transaction.is_active:
            raise DeliveryError(
                "the handler rolled back the delivery's transaction (delivery_session); "
                "raise an exception instead to have the event delivered again"
            )
        outbox, delivery = self.outbox, self.delivery
        rows = outbox.rows_for(chained)
        with translated_errors("record the delivery with the handler's writes"):
            await self._session.flush()
            settled = await self._connection.run_sync(
                lambda connection: outbox.store.settle_one_in(
                    connection, delivery.id, self.token, now=outbox.clock(), chained=rows
                )
            )
            if not settled:
                await self._transaction.rollback()
                return False
            await self._transaction.commit()
        return True

    async def close(self) -> None:
        """Roll back what was not committed and give the connection back; errors are
        logged, never raised (the outcome of the delivery is already decided)."""
        self._closed = True
        session, connection = self._session, self._connection
        self._session = self._connection = self._transaction = None
        try:
            if session is not None:
                await session._end()
        except Exception:
            logger.warning("closing a delivery's session failed", exc_info=True)
        finally:
            if connection is not None:
                try:
                    await connection.close()
                except Exception:
                    logger.warning("closing a delivery's connection failed", exc_info=True)


async def delivery_session() -> AsyncSession:
    """The session of the delivery being handled: what a handler writes through it commits
    together with the record that the event was delivered, and with the events it dispatched.

    Use it from handlers that take one event at a time (local handler functions, including
    as ``Depends(delivery_session)``, and ``BaseEventHandler.handle``). Do not commit or roll
    back its transaction yourself; raise to roll it back.

    Raises:
        NoDeliveryError: called outside a delivery, or from ``handle_many``.
        StoreError: the database could not be reached.
    """
    unit = unit_of_work.current()
    if unit is None or unit.delivery is None:
        raise NoDeliveryError()
    transaction: DeliveryTransaction | None = unit.transaction
    if transaction is None:
        delivery, token = unit.delivery
        transaction = unit.transaction = DeliveryTransaction(unit.outbox, delivery, token)
    return await transaction.session()
