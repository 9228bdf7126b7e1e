"""Committed events wake relays: a NOTIFY per writing transaction on PostgreSQL, an in-process
signal for the embedded relay on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from outbox_events import Event, Outbox, dispatch
from outbox_events.handlers.base import BaseEventHandler

WAIT = 30.0  # seconds: a bound on waiting for an outcome, not a timing claim


class Recorder(BaseEventHandler):
    def __init__(self) -> None:
        super().__init__(name="recorder")
        self.events: list[Event] = []
        self.arrived = asyncio.Event()

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_each_writing_transaction_sends_one_notification(
    make_outbox: Callable[..., Outbox], database_url: str
) -> None:
    import asyncpg

    outbox = make_outbox(handlers=[Recorder()], relay="external")
    url = make_url(database_url)
    listener = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(outbox.store.channel, lambda *args: received.put_nowait(args[2]))
    try:
        async with outbox.unit_of_work():
            for n in range(3):
                dispatch("order.placed", {"n": n})

        channel = await asyncio.wait_for(received.get(), WAIT)
        await asyncio.sleep(0.2)  # let a second notification, if any, arrive
        assert channel == "outbox_events"
        assert received.empty(), "one transaction of three events sent more than one NOTIFY"
    finally:
        await listener.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_relay_in_another_process_is_woken_without_polling(
    make_outbox: Callable[..., Outbox],
) -> None:
    writer = make_outbox(handlers=[Recorder()], relay="external")
    recorder = Recorder()
    relay = make_outbox(handlers=[recorder], poll_interval=3600)
    relay.relay.start()
    await _until(lambda: relay.relay.listening)

    async with writer.unit_of_work():
        event_id = dispatch("order.placed", {"n": 1})

    await asyncio.wait_for(recorder.arrived.wait(), WAIT)
    assert [event.id for event in recorder.events] == [event_id]


async def test_the_embedded_relay_delivers_a_commit_without_drain(
    make_outbox: Callable[..., Outbox],
) -> None:
    recorder = Recorder()
    outbox = make_outbox(handlers=[recorder], poll_interval=3600)
    outbox.relay.start()

    async with outbox.unit_of_work():
        event_id = dispatch("order.placed", {"n": 1})

    await asyncio.wait_for(recorder.arrived.wait(), WAIT)
    assert [event.id for event in recorder.events] == [event_id]


async def _until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        assert loop.time() < deadline, "the relay never started listening"
        await asyncio.sleep(0.01)


async def test_the_relay_wakes_itself_for_a_retry_it_scheduled(
    make_outbox: Callable[..., Outbox],
) -> None:
    class FailsOnce(Recorder):
        async def handle(self, event: Event) -> None:
            if event.attempt == 1:
                raise RuntimeError("first attempt refused")
            await super().handle(event)

    from outbox_events import RetryPolicy

    recorder = FailsOnce()
    outbox = make_outbox(
        handlers=[recorder], poll_interval=3600, retry=RetryPolicy(initial_delay=0.2)
    )
    outbox.relay.start()

    async with outbox.unit_of_work():
        event_id = dispatch("order.placed", {"n": 1})

    await asyncio.wait_for(recorder.arrived.wait(), WAIT)  # no poll would come for an hour
    assert [(event.id, event.attempt) for event in recorder.events] == [(event_id, 2)]
