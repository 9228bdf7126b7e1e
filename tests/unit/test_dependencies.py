"""FastAPI ``Depends`` in local handlers, resolved per event.

These call ``LocalHandler.handle(event)``, the path the relay takes for each registered
function, without a database.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from fastapi import Depends

from outbox_events import Event
from outbox_events.handlers.local import LocalHandler

if TYPE_CHECKING:  # only for annotations: get_type_hints() cannot resolve it
    from outbox_events.typing import Event as LateEvent


class Settings:
    """A dependency given as a class (``Depends()`` with no argument)."""

    def __init__(self) -> None:
        self.region = "eu-central-1"


def get_settings() -> Settings:
    return Settings()


def get_region(settings: Settings = Depends(get_settings)) -> str:
    return settings.region


def make_event(name: str = "order.placed", **payload: Any) -> Event:
    return Event(name=name, payload=payload, id=uuid.uuid4(), headers={"tenant": "acme"})


class Calls:
    """Counts calls of a dependency; ``dependency`` returns the running count."""

    def __init__(self) -> None:
        self.count = 0

    def dependency(self) -> Callable[[], Any]:
        async def counter() -> int:
            self.count += 1
            return self.count

        return counter


async def test_param_default_depends_receives_the_dependency_value() -> None:
    handlers = LocalHandler()
    received: list[tuple[str, Settings]] = []

    @handlers.register
    async def handler(event: Event, settings: Settings = Depends(get_settings)) -> None:
        received.append((event.name, settings))

    await handlers.handle(make_event())

    [(name, settings)] = received
    assert name == "order.placed" and isinstance(settings, Settings)


async def test_annotated_depends_and_class_dependencies_are_resolved() -> None:
    handlers = LocalHandler()
    received: list[tuple[str, Settings]] = []

    @handlers.register
    async def handler(
        event: Event,
        region: Annotated[str, Depends(get_region)],
        settings: Annotated[Settings, Depends()],
    ) -> None:
        received.append((region, settings))

    await handlers.handle(make_event())

    [(region, settings)] = received
    assert region == "eu-central-1", "nested dependency of an Annotated Depends not resolved"
    assert isinstance(settings, Settings), "Depends() did not build the annotated class"


async def test_annotated_depends_works_when_another_annotation_cannot_be_resolved() -> None:
    handlers = LocalHandler()
    received: list[str] = []

    @handlers.register
    async def handler(event: LateEvent, region: Annotated[str, Depends(get_region)]) -> None:
        received.append(region)

    await handlers.handle(make_event())

    assert received == ["eu-central-1"]


async def test_dependency_used_twice_runs_once_per_event_and_again_for_the_next() -> None:
    handlers = LocalHandler()
    calls = Calls()
    counter = calls.dependency()
    received: list[tuple[int, int, int]] = []

    async def doubled(value: int = Depends(counter)) -> int:
        return value * 2

    @handlers.register
    async def handler(
        event: Event,
        first: int = Depends(counter),
        second: int = Depends(counter),
        twice: int = Depends(doubled),
    ) -> None:
        received.append((first, second, twice))

    await handlers.handle(make_event())
    await handlers.handle(make_event())

    assert received == [(1, 1, 2), (2, 2, 4)], "the cache must live for one event exactly"
    assert calls.count == 2


async def test_use_cache_false_calls_the_dependency_again() -> None:
    handlers = LocalHandler()
    calls = Calls()
    counter = calls.dependency()
    received: list[tuple[int, int]] = []

    @handlers.register
    async def handler(
        event: Event,
        cached: int = Depends(counter),
        fresh: int = Depends(counter, use_cache=False),
    ) -> None:
        received.append((cached, fresh))

    await handlers.handle(make_event())

    assert received == [(1, 2)] and calls.count == 2


async def test_sync_dependency_runs_in_a_thread() -> None:
    handlers = LocalHandler()
    loop_thread = threading.get_ident()

    def current_thread() -> int:
        return threading.get_ident()

    received: list[int] = []

    @handlers.register
    async def handler(event: Event, thread: int = Depends(current_thread)) -> None:
        received.append(thread)

    await handlers.handle(make_event())

    assert received and received[0] != loop_thread, "a sync dependency blocked the event loop"


async def test_dependency_takes_the_event_as_a_plain_parameter() -> None:
    handlers = LocalHandler()
    received: list[str] = []

    def tenant_of(event: Event) -> str:
        return event.headers["tenant"]

    async def greeting(event: Event, tenant: str = Depends(tenant_of)) -> str:
        return f"{event.name} for {tenant}"

    @handlers.register
    def handler(event: Event, text: str = Depends(greeting)) -> None:
        received.append(text)

    await handlers.handle(make_event("user.created"))

    assert received == ["user.created for acme"]


def _generator_dependencies(log: list[str]) -> dict[str, Callable[..., Any]]:
    async def async_resource() -> AsyncIterator[str]:
        log.append("setup")
        try:
            yield "resource"
        finally:
            log.append("teardown")

    def sync_resource() -> Iterator[str]:
        log.append("setup")
        try:
            yield "resource"
        finally:
            log.append("teardown")

    return {"async": async_resource, "sync": sync_resource}


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("handler_fails", [False, True], ids=["handler ok", "handler raised"])
async def test_generator_dependency_is_torn_down_after_the_handler(
    kind: str, handler_fails: bool
) -> None:
    handlers = LocalHandler()
    log: list[str] = []
    resource = _generator_dependencies(log)[kind]

    @handlers.register
    async def handler(event: Event, value: str = Depends(resource)) -> None:
        log.append(f"handler got {value}")
        if handler_fails:
            raise RuntimeError("handler failed")

    if handler_fails:
        with pytest.raises(RuntimeError, match="handler failed"):
            await handlers.handle(make_event())
    else:
        await handlers.handle(make_event())

    assert log == ["setup", "handler got resource", "teardown"]


async def test_handler_failure_is_reported_even_if_a_dependency_swallows_it() -> None:
    handlers = LocalHandler()

    async def careless_session() -> AsyncIterator[str]:
        with contextlib.suppress(Exception):  # rolls back and forgets to re-raise
            yield "session"

    @handlers.register
    async def handler(event: Event, session: str = Depends(careless_session)) -> None:
        raise RuntimeError("write failed")

    with pytest.raises(RuntimeError, match="write failed"):
        await handlers.handle(make_event())
