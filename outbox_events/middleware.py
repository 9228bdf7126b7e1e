"""``EventHandlerASGIMiddleware``: binds a unit of work to each request (DESIGN rules 1-3).

Pure ASGI. Per request it:

- binds a fresh unit of work, so ``dispatch()`` anywhere in the request finds it;
- when the response starts, writes the events that no transaction took in a transaction of its
  own, before passing ``http.response.start`` on (a failed write turns the response into a 500),
  unless an instrumented session still holds uncommitted writes (for instance a FastAPI
  dependency that commits after the response), whose commit or rollback the events then follow;
- discards uncommitted events when the app raises or answers 5xx (unless
  ``deliver_on_failure=True``);
- wakes the embedded relay once the response has been sent.

It also starts the embedded relay on lifespan startup (or lazily on the first request) and
stops it on shutdown.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from outbox_events import session as session_hooks
from outbox_events import unit_of_work
from outbox_events.exceptions import ConfigurationError
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.outbox import Outbox

__all__ = ["EventHandlerASGIMiddleware"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Messages before which the request's events must be durable.
_FLUSH_BEFORE = frozenset(
    {"http.response.start", "websocket.accept", "websocket.send", "websocket.close"}
)

# Lifespan messages after which the app serves no more requests.
_LIFESPAN_ENDS = frozenset(
    {"lifespan.shutdown.complete", "lifespan.shutdown.failed", "lifespan.startup.failed"}
)

_outboxes: weakref.WeakValueDictionary[int, Outbox] = weakref.WeakValueDictionary()


def outbox_for_id(middleware_id: int) -> Outbox | None:
    """The outbox of the middleware created with ``middleware_id`` (fastapi-events' way of
    dispatching outside a request)."""
    return _outboxes.get(middleware_id)


class EventHandlerASGIMiddleware:
    """Stores the events each request dispatches, durably and only if the request succeeds.

    Args:
        app: The ASGI app to wrap.
        outbox: The :class:`~outbox_events.Outbox` that stores and delivers the events.
        handlers: fastapi-events style destinations; added to the outbox's handlers.
        middleware_id: Lets ``dispatch(..., middleware_id=...)`` find this middleware's outbox
            outside a request (default: ``id(self)``).
        deliver_on_failure: Store the request's events even when the app raises or answers
            5xx (fastapi-events' behaviour); off by default.
    """

    def __init__(
        self,
        app: ASGIApp,
        outbox: Outbox | None = None,
        handlers: Iterable[BaseEventHandler] = (),
        middleware_id: int | None = None,
        *,
        deliver_on_failure: bool = False,
    ) -> None:
        if not isinstance(outbox, Outbox):
            raise ConfigurationError(
                "EventHandlerASGIMiddleware needs outbox=Outbox(database, handlers=[...]): "
                "the outbox is where events are stored before they are delivered"
            )
        outbox.add_handlers(handlers)
        self.app = app
        self.outbox = outbox
        self.middleware_id = id(self) if middleware_id is None else middleware_id
        self.deliver_on_failure = deliver_on_failure
        _outboxes[self.middleware_id] = outbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] in ("http", "websocket"):
            self.outbox.ensure_started()
            await self._request(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        outbox = self.outbox
        unit = unit_of_work.UnitOfWork(outbox)
        replaced = False  # the app's response was replaced by a 500

        async def send_with_events(message: Message) -> None:
            nonlocal replaced
            kind = message["type"]
            if replaced:
                return
            failed = kind == "http.response.start" and message["status"] >= 500
            if failed and not self.deliver_on_failure:
                unit.fail()
            if kind in _FLUSH_BEFORE:
                error = await self._write_pending(unit)
                if error is not None and kind == "http.response.start":
                    replaced = True
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 500,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                        }
                    )
                    await send({"type": "http.response.body", "body": b"Internal Server Error"})
                    return
                if error is not None:
                    raise error
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                self._wake_if_committed(unit)

        with unit_of_work.bound(unit):
            try:
                await self.app(scope, receive, send_with_events)
            except BaseException:
                if self.deliver_on_failure:
                    await self._write_pending(unit)
                unit.fail()
                unit.sessions.clear()
                raise
        try:  # events dispatched after the response started (e.g. background tasks)
            await outbox.finish_unit(unit)
        except Exception:
            logger.exception(
                "could not store the events dispatched after the response",
                extra={"action": "event_write_failed"},
            )

    async def _write_pending(self, unit: unit_of_work.UnitOfWork) -> Exception | None:
        """Write what no transaction took, unless a session of the request holds uncommitted
        writes (the events then follow its commit or rollback). Returns the error when the
        write failed (the events are then discarded)."""
        if not unit.pending or session_hooks.holds_events(unit):
            return None
        events = unit.take()
        try:
            await self.outbox.write(events)
        except Exception as exc:
            logger.exception(
                "could not store %d event(s) of the request",
                len(events),
                extra={"action": "event_write_failed"},
            )
            unit.fail()
            return exc
        unit.committed = True
        return None

    def _wake_if_committed(self, unit: unit_of_work.UnitOfWork) -> None:
        if unit.committed:
            unit.committed = False
            self.outbox.wake()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def start_stop_and_send(message: Message) -> None:
            # The relay starts once the app's own startup is done (it may create the tables).
            if message["type"] == "lifespan.startup.complete":
                self.outbox.ensure_started()
            elif message["type"] in _LIFESPAN_ENDS:
                await self.outbox.relay.stop()
                await self.outbox.flush_detached_writes()
            await send(message)

        await self.app(scope, receive, start_stop_and_send)
