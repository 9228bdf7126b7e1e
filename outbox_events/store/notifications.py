"""PostgreSQL LISTEN/NOTIFY: how committed events wake relays in other processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox_events.exceptions import StoreError
from outbox_events.store.store import translated_errors


def supported(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


@contextlib.asynccontextmanager
async def listening(
    engine: AsyncEngine, channel: str, on_notify: Callable[[], None]
) -> AsyncIterator[asyncio.Future[None]]:
    """LISTEN on ``channel`` on a connection of its own while the block runs; ``on_notify`` is
    called for each notification. Yields a future that completes if the connection is lost."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()

    def notified(*_args: Any) -> None:
        on_notify()

    def terminated(*_args: Any) -> None:
        if not lost.done():
            lost.set_result(None)

    with translated_errors("listen for notifications"):
        connection = await engine.connect()
    try:
        with translated_errors("listen for notifications"):
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            driver.add_termination_listener(terminated)
            try:
                await driver.add_listener(channel, notified)
            except Exception as exc:  # the driver's own errors: SQLAlchemy is not in between
                raise StoreError(f"could not listen for notifications: {exc}") from exc
        yield lost
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(connection.invalidate() if lost.done() else connection.close())
