"""``EventHandlerASGIMiddleware`` in real FastAPI and Starlette apps (DESIGN §3 rules 2, 3, 8
and 10): events without a transaction are durable before the response starts, failed requests
send nothing, and the embedded relay follows the app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import BackgroundTasks, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket

from outbox_events import MissingContextError, Outbox, dispatch
from outbox_events.middleware import EventHandlerASGIMiddleware
from tests.apps import (
    Order,
    Recorder,
    Shop,
    fastapi_app,
    http_client,
    make_shop,
    observed,
    run_websocket,
    running_lifespan,
    starlette_app,
    wait_until,
)


@pytest.fixture
async def shop(make_outbox: Callable[..., Outbox]) -> Shop:
    return await make_shop(make_outbox)


class PaymentDeclined(Exception):
    pass


# -- requests without a session ---------------------------------------------------------------


async def test_event_is_stored_before_the_response_starts(shop: Shop) -> None:
    stored_at: dict[str, list[str]] = {}

    async def record(message: Message) -> None:
        if message["type"].startswith("http.response."):
            stored_at.setdefault(message["type"], await shop.stored_event_names())

    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> dict[str, bool]:
        dispatch("payment.received", {"amount": 5})
        return {"ok": True}

    async with http_client(observed(app, record)) as client:
        response = await client.post("/pay")

    assert response.status_code == 200
    assert stored_at["http.response.start"] == ["payment.received"], (
        "the event was not durable when the response started"
    )
    assert await shop.delivered_names() == ["payment.received"]


async def test_sync_endpoint_dispatches_from_its_thread(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    def pay() -> dict[str, bool]:  # FastAPI runs it in a worker thread
        dispatch("payment.received", {"amount": 5})
        return {"ok": True}

    async with http_client(app) as client:
        response = await client.post("/pay")

    assert response.status_code == 200
    assert await shop.stored_event_names() == ["payment.received"]
    assert await shop.delivered_names() == ["payment.received"]


async def test_client_errors_still_store_their_events(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> JSONResponse:
        dispatch("payment.rejected", {"reason": "card expired"})
        return JSONResponse({"error": "card expired"}, status_code=402)

    async with http_client(app) as client:
        response = await client.post("/pay")

    assert response.status_code == 402
    assert await shop.stored_event_names() == ["payment.rejected"], (
        "a 4xx answer is not a failed request; its events must be stored"
    )


async def test_events_dispatched_in_background_tasks_are_stored(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    def send_receipt() -> None:
        dispatch("receipt.sent", {})

    @app.post("/pay")
    async def pay(background: BackgroundTasks) -> dict[str, bool]:
        dispatch("payment.received", {})
        background.add_task(send_receipt)
        return {"ok": True}

    async with http_client(app) as client:
        response = await client.post("/pay")

    assert response.status_code == 200
    assert await shop.stored_event_names() == ["payment.received", "receipt.sent"]


async def test_concurrent_requests_keep_their_events_apart(shop: Shop) -> None:
    dispatched: list[str] = []
    both_dispatched = asyncio.Event()

    async def wait_for_the_other(name: str) -> None:
        dispatched.append(name)
        if len(dispatched) == 2:
            both_dispatched.set()
        await both_dispatched.wait()

    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def place_order() -> dict[str, bool]:
        async with shop.sessions() as session:
            session.add(Order(total=1))
            dispatch("order.placed", {})
            await wait_for_the_other("order.placed")
            await session.commit()
        return {"ok": True}

    @app.post("/refunds")
    async def refund() -> Response:
        dispatch("refund.issued", {})
        await wait_for_the_other("refund.issued")
        return Response("ledger down", status_code=503)

    async with http_client(app) as client:
        placed, refunded = await asyncio.gather(client.post("/orders"), client.post("/refunds"))

    assert (placed.status_code, refunded.status_code) == (200, 503)
    assert await shop.stored_event_names() == ["order.placed"], (
        "one request's outcome decided the fate of another request's events"
    )


# -- failed requests send nothing ---------------------------------------------------------------


async def test_unhandled_exception_propagates_and_stores_nothing(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> None:
        async with shop.sessions() as session:
            session.add(Order(total=5))
            await session.flush()
            dispatch("payment.received", {})
            raise PaymentDeclined("card declined")

    async with http_client(app) as client:
        with pytest.raises(PaymentDeclined):
            await client.post("/pay")
    async with http_client(app, raise_app_exceptions=False) as client:
        response = await client.post("/pay")

    assert response.status_code == 500
    assert await shop.order_totals() == []
    assert await shop.stored_event_names() == [], "a failed request stored its events"
    assert await shop.delivered_names() == []


@pytest.mark.parametrize("handled_as", [Exception, PaymentDeclined], ids=["catch-all", "specific"])
async def test_exception_handler_answering_500_stores_nothing(
    shop: Shop, handled_as: type[Exception]
) -> None:
    app = fastapi_app(shop.outbox)

    @app.exception_handler(handled_as)
    async def answer_500(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.post("/pay")
    async def pay() -> None:
        dispatch("payment.received", {})
        raise PaymentDeclined("card declined")

    async with http_client(app, raise_app_exceptions=False) as client:
        response = await client.post("/pay")

    assert response.status_code == 500
    assert response.json() == {"error": "card declined"}, "the app's own 500 was not passed on"
    assert await shop.stored_event_names() == []


async def test_server_error_response_stores_nothing(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> Response:
        dispatch("payment.received", {})
        return Response("upstream down", status_code=503)

    async with http_client(app) as client:
        response = await client.post("/pay")

    assert response.status_code == 503
    assert await shop.stored_event_names() == [], "a 5xx request stored its events"
    assert await shop.delivered_names() == []


async def test_deliver_on_failure_stores_events_of_failed_requests(shop: Shop) -> None:
    app = fastapi_app(shop.outbox, deliver_on_failure=True)

    @app.post("/unavailable")
    async def unavailable() -> Response:
        dispatch("payment.attempted", {})
        return Response("upstream down", status_code=503)

    @app.post("/crash")
    async def crash() -> None:
        dispatch("payment.crashed", {})
        raise PaymentDeclined("card declined")

    async with http_client(app, raise_app_exceptions=False) as client:
        unavailable_response = await client.post("/unavailable")
        crash_response = await client.post("/crash")

    assert (unavailable_response.status_code, crash_response.status_code) == (503, 500)
    assert await shop.stored_event_names() == ["payment.attempted", "payment.crashed"], (
        "deliver_on_failure=True must store the events of failed requests"
    )
    assert await shop.delivered_names() == ["payment.attempted", "payment.crashed"]


# -- a failed write never yields a success -----------------------------------------------------


@pytest.mark.parametrize("breakage", ["dropped table", "unknown table"])
async def test_failed_event_write_turns_the_response_into_a_500(
    make_outbox: Callable[..., Outbox], breakage: str
) -> None:
    if breakage == "unknown table":
        shop = await make_shop(make_outbox, table="no_such_outbox")
    else:
        shop = await make_shop(make_outbox)
        async with shop.outbox.engine.begin() as connection:
            await connection.execute(sa.text(f"DROP TABLE {shop.outbox.table_name}"))
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> dict[str, bool]:
        dispatch("payment.received", {})
        return {"ok": True}

    async with http_client(app) as client:
        response = await client.post("/pay")

    assert response.status_code == 500, (
        f"the events could not be stored ({breakage}), yet the client got {response.status_code}"
    )


# -- websockets ---------------------------------------------------------------------------------


async def test_events_dispatched_in_a_websocket_are_stored_before_each_send(shop: Shop) -> None:
    stored_at_send: list[list[str]] = []

    async def record(message: Message) -> None:
        if message["type"] == "websocket.send":
            stored_at_send.append(await shop.stored_event_names())

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            dispatch("chat.message", {"text": text})
            await websocket.send_text(f"echo {text}")
        await websocket.close()

    app = starlette_app(shop.outbox, [WebSocketRoute("/chat", chat)])
    sent = await run_websocket(observed(app, record), "/chat", ["hi", "bye"])

    assert [m.get("text") for m in sent if m["type"] == "websocket.send"] == ["echo hi", "echo bye"]
    assert stored_at_send == [["chat.message"], ["chat.message", "chat.message"]], (
        "a websocket's events were not durable before the message that followed them"
    )
    assert await shop.delivered_names() == ["chat.message", "chat.message"]


# -- the embedded relay and the lifespan ------------------------------------------------------


async def test_lifespan_starts_and_stops_the_embedded_relay(
    make_outbox: Callable[..., Outbox],
) -> None:
    shop = await make_shop(make_outbox, relay="embedded")
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> dict[str, bool]:
        async with shop.sessions() as session:
            session.add(Order(total=5))
            dispatch("payment.received", {})
            await session.commit()
        return {"ok": True}

    assert not shop.outbox.relay.running
    async with running_lifespan(app):
        assert shop.outbox.relay.running, "lifespan startup did not start the embedded relay"
        async with http_client(app) as client:
            response = await client.post("/pay")
        await wait_until(
            lambda: shop.recorder.names == ["payment.received"],
            "the embedded relay to deliver the committed event",
        )
        assert response.status_code == 200
    assert not shop.outbox.relay.running, "lifespan shutdown did not stop the embedded relay"


async def test_first_request_starts_the_embedded_relay_without_lifespan(
    make_outbox: Callable[..., Outbox],
) -> None:
    shop = await make_shop(make_outbox, relay="embedded")
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> dict[str, bool]:
        dispatch("payment.received", {})
        return {"ok": True}

    assert not shop.outbox.relay.running
    async with http_client(app) as client:
        await client.post("/pay")

    assert shop.outbox.relay.running, "the first request did not start the embedded relay"
    await wait_until(
        lambda: shop.recorder.names == ["payment.received"],
        "the embedded relay to deliver the event",
    )


async def test_external_relay_mode_never_starts_a_relay_in_the_app(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> dict[str, bool]:
        dispatch("payment.received", {})
        return {"ok": True}

    async with running_lifespan(app), http_client(app) as client:
        await client.post("/pay")
        assert not shop.outbox.relay.running, 'relay="external" must leave delivery to workers'
    assert shop.recorder.events == []


async def test_failing_handler_does_not_change_the_response(
    make_outbox: Callable[..., Outbox],
) -> None:
    shop = await make_shop(make_outbox, recorder=Recorder(fail=True), relay="embedded")
    app = fastapi_app(shop.outbox)

    @app.post("/pay")
    async def pay() -> dict[str, bool]:
        dispatch("payment.received", {})
        return {"ok": True}

    async with running_lifespan(app), http_client(app) as client:
        first = await client.post("/pay")
        await wait_until(
            lambda: len(shop.recorder.events) >= 1, "the embedded relay to call the failing handler"
        )
        second = await client.post("/pay")
        assert shop.outbox.relay.running, "a failing handler stopped the embedded relay"

    assert (first.status_code, first.json()) == (200, {"ok": True})
    assert (second.status_code, second.json()) == (200, {"ok": True})


# -- outside a request ---------------------------------------------------------------------------


async def test_dispatch_with_middleware_id_outside_a_request(shop: Shop) -> None:
    async def homepage(scope: Any, receive: Any, send: Any) -> None:
        await Response("ok")(scope, receive, send)

    EventHandlerASGIMiddleware(homepage, outbox=shop.outbox, middleware_id=4242)

    dispatch("report.ready", {"n": 1}, middleware_id=4242)
    with pytest.raises(LookupError) as raised:
        dispatch("report.ready", {"n": 2})
    with pytest.raises(MissingContextError):
        dispatch("report.ready", {"n": 3}, middleware_id=4343)

    assert "unit_of_work" in str(raised.value), "the error does not say what to do"
    assert await shop.delivered_names() == ["report.ready"]
    assert [event.payload for event in shop.recorder.events] == [{"n": 1}]
