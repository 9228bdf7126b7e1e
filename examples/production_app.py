"""The example app deployed the production way (see ``docker-compose.yml``): PostgreSQL, web
processes that only write events, and separate relay processes that deliver them.

- web: ``uvicorn examples.production_app:app``
- relay: ``outbox-relay run examples.production_app:outbox`` (as many processes as needed)
- table: ``outbox-relay migrate examples.production_app:outbox`` once per deployment

Both sides import this module, so they share one ``Outbox``: the same database, table and
destinations. The database is ``DATABASE_URL`` (``postgresql+asyncpg://user:password@host/db``).
The model, the routes and the handler are those of ``examples/app.py``; only the wiring differs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from examples import app as example
from outbox_events import Outbox
from outbox_events.handlers.local import local_handler
from outbox_events.middleware import EventHandlerASGIMiddleware

# relay="external": this process only writes events; `outbox-relay run` delivers them.
outbox = Outbox(os.environ["DATABASE_URL"], handlers=[local_handler], relay="external")
engine = outbox.engine
Session = async_sessionmaker(engine, expire_on_commit=False)
outbox.instrument(Session)  # events ride with these sessions' transactions


async def get_session() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # The app's own table; the outbox table is the migration job's (`outbox-relay migrate`).
    async with engine.begin() as connection:
        await connection.run_sync(example.Base.metadata.create_all)
    yield
    await outbox.close()


app = FastAPI(lifespan=lifespan)
app.add_middleware(EventHandlerASGIMiddleware, outbox=outbox)
app.add_api_route("/orders", example.place_order, methods=["POST"])
app.add_api_route("/ping", example.ping, methods=["POST"])
app.dependency_overrides[example.get_session] = get_session
