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

import uuid
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from outbox_events import unit_of_work
from outbox_events.exceptions import NoDeliveryError
from outbox_events.store.store import ClaimedDelivery, translated_errors

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox


class DeliveryTransaction:
    """One delivery's transaction, opened when its handler first asks for the session."""

    def __init__(self, outbox: Outbox, delivery: ClaimedDelivery, token: uuid.UUID) -> None:
        self.outbox = outbox
        self.delivery = delivery
        self.token = token
        self._connection: AsyncConnection | None = None
        self._session: AsyncSession | None = None

    async def session(self) -> AsyncSession:
        if self._session is None:
            with translated_errors("open the delivery's transaction"):
                connection = await self.outbox.engine.connect()
                try:
                    await connection.begin()
                except BaseException:
                    await connection.close()
                    raise
            self._connection = connection
            # The session joins the transaction: its commit() does not end it, the relay does.
            self._session = AsyncSession(bind=connection, expire_on_commit=False)
        return self._session

    async def commit(self, chained: list[unit_of_work.PendingEvent]) -> bool:
        """Flush the handler's writes, record the delivery, write the events the handler
        dispatched and commit; False (everything rolled back) if the lease was lost."""
        assert self._session is not None and self._connection is not None
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
                await self._connection.rollback()
                return False
            await self._connection.commit()
        return True

    async def close(self) -> None:
        """Roll back what was not committed and give the connection back."""
        session, connection = self._session, self._connection
        self._session = self._connection = None
        if session is not None:
            await session.close()
        if connection is not None:
            await connection.close()


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
