"""An example FastAPI app on the embedded default: SQLite file + in-process relay.

Run it with ``uvicorn examples.app:app`` (``make demo`` drives it for you). The database is
``DEMO_DATABASE_URL`` or ``sqlite+aiosqlite:///demo.db``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox_events import Event, Outbox, dispatch
from outbox_events.handlers.local import local_handler
from outbox_events.middleware import EventHandlerASGIMiddleware

# The embedded default: a SQLite file and the relay inside this process. The Outbox's engine
# (WAL, real transactions) serves the app's own sessions too.
outbox = Outbox(
    os.environ.get("DEMO_DATABASE_URL", "sqlite+aiosqlite:///demo.db"),
    handlers=[local_handler],
    retention=timedelta(hours=1),  # keep delivered rows an hour, to show them
)
engine = outbox.engine
Session = async_sessionmaker(engine, expire_on_commit=False)
outbox.instrument(Session)  # events ride with these sessions' transactions

received: list[Event] = []  # what the handlers got, for the demo to show


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


@local_handler.register(event_name="order.*")
async def send_receipt(event: Event) -> None:
    name, payload = event
    received.append(event)
    print(f"  handler send_receipt got {name} {payload} (id {event.id}, attempt {event.attempt})")


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await outbox.migrate()
    yield
    await outbox.close()


app = FastAPI(lifespan=lifespan)
app.add_middleware(EventHandlerASGIMiddleware, outbox=outbox)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


@app.post("/orders")
async def place_order(
    total: int, outcome: str = "commit", session: AsyncSession = Depends(get_session)
) -> dict[str, int]:
    order = Order(total=total)
    session.add(order)
    await session.flush()
    dispatch("order.placed", {"id": order.id, "total": total}, key=f"order-{order.id}")
    if outcome == "rollback":
        await session.rollback()  # the order and its event vanish together
        raise HTTPException(status_code=409, detail="order rolled back")
    if outcome == "raise":
        raise RuntimeError("payment service exploded")  # a 500: nothing is sent
    await session.commit()  # the order row and its event commit together
    return {"id": order.id}


@app.post("/ping")
async def ping() -> dict[str, str]:
    dispatch("order.pinged", {"note": "no session: the middleware stores this event"})
    return {"status": "ok"}
