"""Events ride with the app's own transactions (DESIGN §3 rules 1 and 2), seen through real
FastAPI and Starlette apps writing to an ``orders`` table in the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal

import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message

from outbox_events import Outbox, StoreError, dispatch
from tests.apps import (
    Order,
    Shop,
    fastapi_app,
    http_client,
    make_shop,
    observed,
    starlette_app,
)


@pytest.fixture
async def shop(make_outbox: Callable[..., Outbox]) -> Shop:
    return await make_shop(make_outbox)


# -- commit and rollback inside the endpoint -----------------------------------------------


async def test_order_and_its_event_commit_together_and_the_event_is_delivered_once(
    shop: Shop,
) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def place_order() -> dict[str, int]:
        async with shop.sessions() as session:
            order = Order(total=10)
            session.add(order)
            await session.flush()
            dispatch("order.placed", {"id": order.id})
            await session.commit()
        return {"id": order.id}

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == 200, response.text
    assert await shop.order_totals() == [10], "the order was not committed"
    assert await shop.stored_event_names() == ["order.placed"], "the event was not stored"
    assert await shop.delivered_names() == ["order.placed"]
    assert await shop.delivered_names() == ["order.placed"], "a second drain delivered again"
    [event] = shop.recorder.events
    assert event.payload == {"id": response.json()["id"]}


@pytest.mark.parametrize("status", [200, 400])
async def test_rolled_back_endpoint_stores_and_delivers_nothing(shop: Shop, status: int) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def place_order(response: Response) -> dict[str, str]:
        async with shop.sessions() as session:
            session.add(Order(total=10))
            await session.flush()
            dispatch("order.placed", {"total": 10})
            await session.rollback()
        response.status_code = status
        return {"result": "rolled back"}

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == status
    assert await shop.order_totals() == [], "the rolled-back order was stored"
    assert await shop.stored_event_names() == [], "an event of a rolled-back transaction was stored"
    assert await shop.delivered_names() == [], "an event of a rolled-back transaction was delivered"


async def test_plain_starlette_app_commits_order_and_event_together(shop: Shop) -> None:
    async def place_order(request: Request) -> JSONResponse:
        async with shop.sessions() as session:
            session.add(Order(total=25))
            dispatch("order.placed", {"total": 25})
            await session.commit()
        return JSONResponse({"ok": True}, status_code=201)

    app = starlette_app(shop.outbox, [Route("/orders", place_order, methods=["POST"])])
    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == 201
    assert await shop.order_totals() == [25]
    assert await shop.stored_event_names() == ["order.placed"]
    assert await shop.delivered_names() == ["order.placed"]


# -- several transactions in one request ---------------------------------------------------


async def test_each_commit_takes_the_events_dispatched_before_it(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)
    seen: dict[str, list[str]] = {}

    @app.post("/orders")
    async def place_two_orders() -> dict[str, bool]:
        async with shop.sessions() as session:
            session.add(Order(total=1))
            dispatch("order.first", {})
            await session.commit()
            seen["after first commit"] = await shop.stored_event_names()
            dispatch("order.second", {})
            seen["before second commit"] = await shop.stored_event_names()
            session.add(Order(total=2))
            await session.commit()
            seen["after second commit"] = await shop.stored_event_names()
        return {"ok": True}

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == 200
    assert seen == {
        "after first commit": ["order.first"],
        "before second commit": ["order.first"],
        "after second commit": ["order.first", "order.second"],
    }, "events did not ride with the commit that followed them"
    assert await shop.order_totals() == [1, 2]
    assert await shop.stored_event_names() == ["order.first", "order.second"]


async def test_second_transaction_rolling_back_keeps_the_events_of_the_first(shop: Shop) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def place_then_abandon() -> dict[str, bool]:
        async with shop.sessions() as session:
            session.add(Order(total=1))
            dispatch("order.placed", {})
            await session.commit()
            session.add(Order(total=2))
            dispatch("order.abandoned", {})
            await session.rollback()
        return {"ok": True}

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == 200
    assert await shop.order_totals() == [1]
    assert await shop.stored_event_names() == ["order.placed"], (
        "the rollback of the second transaction did not discard exactly its own events"
    )


async def test_events_of_a_request_that_only_read_are_stored_by_the_middleware(
    shop: Shop,
) -> None:
    stored_at_response_start: list[list[str]] = []

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            stored_at_response_start.append(await shop.stored_event_names())

    app = fastapi_app(shop.outbox)

    @app.get("/orders/count")
    async def count_orders() -> dict[str, int]:
        async with shop.sessions() as session:
            count = await session.scalar(sa.select(sa.func.count()).select_from(Order))
            dispatch("orders.counted", {"count": count})
        return {"count": count or 0}

    async with http_client(observed(app, record)) as client:
        response = await client.get("/orders/count")

    assert response.status_code == 200
    assert stored_at_response_start == [["orders.counted"]], (
        "the event of a read-only request was not durable when the response started"
    )
    assert await shop.delivered_names() == ["orders.counted"]


# -- savepoints -------------------------------------------------------------------------------


async def test_savepoint_rollback_discards_only_the_events_dispatched_inside_it(
    shop: Shop,
) -> None:
    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def get_or_create() -> dict[str, bool]:
        async with shop.sessions() as session:
            session.add(Order(total=1, reference="taken"))
            dispatch("order.placed", {"reference": "taken"})
            await session.flush()
            created = True
            try:
                async with session.begin_nested():
                    dispatch("order.duplicated", {"reference": "taken"})
                    session.add(Order(total=2, reference="taken"))
            except IntegrityError:
                created = False
            dispatch("order.checked", {"created": created})
            await session.commit()
        return {"created": created}

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.json() == {"created": False}, "the savepoint did not fail as set up"
    assert await shop.order_totals() == [1]
    assert await shop.stored_event_names() == ["order.placed", "order.checked"], (
        "a savepoint rollback must discard the events dispatched inside it, and only those"
    )


async def test_savepoint_release_leaves_events_waiting_for_the_outer_transaction(
    shop: Shop,
) -> None:
    async def get_session() -> AsyncIterator[AsyncSession]:
        async with shop.sessions() as session:
            yield session
            await session.rollback()  # after the response

    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def place_orders(session: AsyncSession = Depends(get_session)) -> dict[str, bool]:
        session.add(Order(total=1))
        await session.flush()  # the outer transaction has written before the savepoint
        async with session.begin_nested():
            dispatch("order.in_savepoint", {})
            session.add(Order(total=2))
        dispatch("order.after_savepoint", {})
        return {"ok": True}

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == 200
    assert await shop.order_totals() == [], "the outer transaction was rolled back"
    assert await shop.stored_event_names() == [], (
        "a released savepoint is not a commit: the events must follow the outer rollback"
    )


# -- a FastAPI dependency with yield owns the transaction -------------------------------------

Scope = Literal["request", "function"]


def _dependency_app(shop: Shop, *, teardown: str, flush: bool, scope: Scope = "request") -> FastAPI:
    """An app whose session comes from a yield dependency that ends the transaction with
    ``teardown`` ("commit", "rollback" or "close") after the endpoint returned."""

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with shop.sessions() as session:
            yield session
            if teardown == "commit":
                await session.commit()
            elif teardown == "rollback":
                await session.rollback()

    app = fastapi_app(shop.outbox)

    @app.post("/orders")
    async def place_order(
        session: AsyncSession = Depends(get_session, scope=scope),
    ) -> dict[str, bool]:
        session.add(Order(total=10, reference="r-1"))
        if flush:
            await session.flush()
        dispatch("order.placed", {"reference": "r-1"})
        return {"ok": True}

    return app


@pytest.mark.parametrize("scope", ["request", "function"])
@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "unflushed"])
async def test_events_follow_a_dependency_that_commits_after_the_endpoint(
    shop: Shop, flush: bool, scope: Scope
) -> None:
    app = _dependency_app(shop, teardown="commit", flush=flush, scope=scope)

    async with http_client(app) as client:
        response = await client.post("/orders")

    assert response.status_code == 200
    assert await shop.order_totals() == [10], "the dependency's commit did not store the order"
    assert await shop.stored_event_names() == ["order.placed"]
    assert await shop.delivered_names() == ["order.placed"]


@pytest.mark.parametrize("teardown", ["rollback", "close"])
@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "unflushed"])
async def test_events_follow_a_dependency_that_ends_without_committing(
    shop: Shop, flush: bool, teardown: str
) -> None:
    app = _dependency_app(shop, teardown=teardown, flush=flush)

    async with http_client(app) as client:
        await client.post("/orders")

    assert await shop.order_totals() == [], "the order was stored without a commit"
    assert await shop.stored_event_names() == [], (
        f"the order's transaction ended with {teardown} but its event was stored"
    )


async def test_events_follow_a_dependency_commit_that_fails(shop: Shop) -> None:
    async with shop.sessions() as session:
        session.add(Order(total=1, reference="r-1"))
        await session.commit()
    app = _dependency_app(shop, teardown="commit", flush=False)

    async with http_client(app, raise_app_exceptions=False) as client:
        await client.post("/orders")

    assert await shop.order_totals() == [1], "the duplicate order was stored"
    assert await shop.stored_event_names() == [], (
        "the order's commit failed, yet its event was stored: an event that did not happen"
    )


async def test_read_only_dependency_session_does_not_hold_back_events(shop: Shop) -> None:
    stored_at_response_start: list[list[str]] = []

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            stored_at_response_start.append(await shop.stored_event_names())

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with shop.sessions() as session:
            yield session  # closed after the response, never committed

    app = fastapi_app(shop.outbox)

    @app.get("/orders/{order_id}")
    async def view_order(
        order_id: int, session: AsyncSession = Depends(get_session)
    ) -> dict[str, bool]:
        found = await session.get(Order, order_id)
        dispatch("order.viewed", {"id": order_id})
        return {"found": found is not None}

    async with http_client(observed(app, record)) as client:
        response = await client.get("/orders/1")

    assert response.json() == {"found": False}
    assert stored_at_response_start == [["order.viewed"]], (
        "a transaction that only read must not keep the events from being written before the "
        "response starts"
    )
    assert await shop.delivered_names() == ["order.viewed"]


async def test_commit_fails_with_the_order_when_its_events_cannot_be_stored(
    make_outbox: Callable[..., Outbox],
) -> None:
    shop = await make_shop(make_outbox, table="no_such_outbox")
    app = fastapi_app(shop.outbox)
    errors: list[BaseException] = []

    @app.post("/orders")
    async def place_order() -> dict[str, bool]:
        async with shop.sessions() as session:
            session.add(Order(total=10))
            dispatch("order.placed", {})
            try:
                await session.commit()
            except Exception as exc:
                errors.append(exc)
                raise
        return {"ok": True}

    async with http_client(app, raise_app_exceptions=False) as client:
        response = await client.post("/orders")

    assert response.status_code == 500
    assert await shop.order_totals() == [], "the order committed without its event"
    assert [type(error) for error in errors] == [StoreError], (
        f"commit() should raise the library's StoreError, raised {errors!r}"
    )
