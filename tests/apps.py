"""Real ASGI apps for the middleware and session-binding tests.

A ``Shop`` is one test's world: an ``Outbox`` over the test database with a recording
destination, an ``orders`` table in the same database and an instrumented session factory.
The drivers below talk to apps the way servers do: ``http_client`` goes through httpx's ASGI
transport, ``running_lifespan`` and ``run_websocket`` exchange hand-written ASGI messages, and
``observed`` lets a test look at the database at the moment a message reaches the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox_events import Event, Outbox
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.middleware import EventHandlerASGIMiddleware

DELIVERY_WAIT = 10.0  # seconds to wait for the embedded relay before giving up
LIFESPAN_WAIT = 10.0  # seconds to wait for a lifespan answer before giving up


class Base(DeclarativeBase):
    pass


class Order(Base):
    """The app's own table: its rows must commit or roll back together with their events."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]
    reference: Mapped[str | None] = mapped_column(sa.String(64), unique=True, default=None)


class Recorder(BaseEventHandler):
    """A destination that records what it receives, and can be told to fail."""

    def __init__(self, name: str = "recorder", *, fail: bool = False) -> None:
        super().__init__(name=name)
        self.events: list[Event] = []
        self.fail = fail

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        if self.fail:
            raise RuntimeError(f"destination {self.destination_name} refuses {event.name}")

    @property
    def names(self) -> list[str]:
        return [event.name for event in self.events]


@dataclasses.dataclass
class Shop:
    """An outbox, its recording destination and the app's instrumented session factory, all
    over the test's database."""

    outbox: Outbox
    recorder: Recorder
    sessions: async_sessionmaker[AsyncSession]

    async def stored_event_names(self) -> list[str]:
        """Names of the events in the outbox table, in insertion order."""
        table = self.outbox.store.table
        async with self.outbox.engine.connect() as connection:
            result = await connection.execute(sa.select(table.c.name).order_by(table.c.id))
            return list(result.scalars())

    async def order_totals(self) -> list[int]:
        """Totals of the committed orders, in insertion order."""
        async with self.outbox.engine.connect() as connection:
            result = await connection.execute(sa.select(Order.total).order_by(Order.id))
            return list(result.scalars())

    async def delivered_names(self) -> list[str]:
        """Drain the outbox, then return what the destination received so far."""
        await self.outbox.drain()
        return self.recorder.names


async def make_shop(
    make_outbox: Callable[..., Outbox], *, recorder: Recorder | None = None, **options: Any
) -> Shop:
    """A ``Shop`` over the test's database (``relay="external"`` unless told otherwise)."""
    recorder = recorder or Recorder()
    options.setdefault("relay", "external")
    outbox = make_outbox(handlers=[recorder], **options)
    async with outbox.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(outbox.engine, expire_on_commit=False)
    outbox.instrument(sessions)
    return Shop(outbox=outbox, recorder=recorder, sessions=sessions)


def fastapi_app(outbox: Outbox, **middleware_options: Any) -> FastAPI:
    """A FastAPI app with the outbox middleware installed; add routes with its decorators."""
    app = FastAPI()
    app.add_middleware(EventHandlerASGIMiddleware, outbox=outbox, **middleware_options)
    return app


def starlette_app(outbox: Outbox, routes: list[BaseRoute], **middleware_options: Any) -> Starlette:
    """A plain Starlette app with the outbox middleware installed."""
    middleware = [Middleware(EventHandlerASGIMiddleware, outbox=outbox, **middleware_options)]
    return Starlette(routes=routes, middleware=middleware)


@contextlib.asynccontextmanager
async def http_client(
    app: ASGIApp, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client that sends its requests straight to ``app``."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def observed(app: ASGIApp, on_send: Callable[[Message], Awaitable[None]]) -> ASGIApp:
    """``app`` with ``on_send`` awaited for every message it sends, before the server gets it."""

    async def observing_app(scope: Scope, receive: Receive, send: Send) -> None:
        async def observing_send(message: Message) -> None:
            await on_send(message)
            await send(message)

        await app(scope, receive, observing_send)

    return observing_app


@contextlib.asynccontextmanager
async def running_lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run ``app``'s lifespan as a server does: startup before the block, shutdown after."""
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    outgoing: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task: asyncio.Future[None] = asyncio.ensure_future(app(scope, incoming.get, outgoing.put))

    async def exchange(message_type: str) -> None:
        await incoming.put({"type": message_type})
        answer = await asyncio.wait_for(outgoing.get(), LIFESPAN_WAIT)
        assert answer["type"] == f"{message_type}.complete", f"{message_type} answered {answer}"

    try:
        await exchange("lifespan.startup")
        yield
        await exchange("lifespan.shutdown")
        await asyncio.wait_for(task, LIFESPAN_WAIT)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_websocket(app: ASGIApp, path: str, texts: Iterable[str]) -> list[Message]:
    """Open a websocket on ``path``, send ``texts``, then disconnect; return what the app sent."""
    incoming: list[Message] = [{"type": "websocket.connect"}]
    incoming += [{"type": "websocket.receive", "text": text} for text in texts]
    incoming.append({"type": "websocket.disconnect", "code": 1000})
    sent: list[Message] = []
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "server": None,
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "subprotocols": [],
        "state": {},
    }

    async def receive() -> Message:
        if len(incoming) > 1:
            return incoming.pop(0)
        return incoming[0]  # disconnected for good

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (up to ``DELIVERY_WAIT``) until ``condition()`` holds; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DELIVERY_WAIT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {DELIVERY_WAIT} s waiting for {what}")
        await asyncio.sleep(0.02)
