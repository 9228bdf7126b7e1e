"""The real ``outbox-relay run`` process under faults: kill -9, several relays at once,
SIGTERM, PostgreSQL going away, poison rows.

Every test starts relays as subprocesses over a real database and waits (bounded, by polling)
for an outcome; the handler (``fault_app``) appends one line per delivery to a shared file, so
the tests see exactly what was delivered, how often, and in which order.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from outbox_events import ConfigurationError, Event, Outbox, OutboxError, dispatch
from outbox_events.handlers.local import LocalHandler
from outbox_events.store.tables import DEAD, DELIVERED, PENDING
from tests.private_postgres import (
    PrivatePostgres,
    private_postgres_fixture,  # noqa: F401 (fixture)
)

ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("outbox-relay"))
APP = "tests.acceptance.fault_app:outbox"
DESTINATION = "recorder"  # the name fault_app gives its handler
WAIT = 60.0  # seconds any single outcome may take before the test gives up
POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


# -- processes -------------------------------------------------------------------------------


class RelayProcess:
    """One ``outbox-relay run`` subprocess; its stdout and stderr go to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [RELAY, "--log-level", "INFO", "run", APP, *args],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout: float = WAIT) -> int:
        """The exit status, once the process has ended (fails the test after ``timeout``)."""
        await wait_until(lambda: not self.alive, f"relay {self.pid} to exit", [self], timeout)
        returncode = self.process.returncode
        assert returncode is not None
        return returncode


class Relays:
    """Starts relay processes for a test and kills whatever is left when it ends."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.received = tmp_path / "received.jsonl"
        self.started: list[RelayProcess] = []

    def start(self, *args: str, **env: str) -> RelayProcess:
        environment = {
            **os.environ,
            "FAULT_DATABASE_URL": self.database_url,
            "FAULT_RECEIVED": str(self.received),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        log = self.tmp_path / f"relay-{len(self.started)}.log"
        relay = RelayProcess(list(args), environment, log)
        self.started.append(relay)
        return relay

    def run_until_idle(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``outbox-relay run --until-idle``, to completion."""
        return subprocess.run(
            [RELAY, "run", APP, "--until-idle", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "FAULT_DATABASE_URL": self.database_url,
                "FAULT_RECEIVED": str(self.received),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def deliveries(self) -> list[dict[str, Any]]:
        """Every delivery the handler recorded, in the order they happened."""
        if not self.received.exists():
            return []
        return [json.loads(line) for line in self.received.read_text().splitlines()]

    def logs(self) -> str:
        return "\n".join(
            f"--- relay {relay.pid} {' '.join(relay.args)} ---\n{relay.output()}"
            for relay in self.started
        )

    def kill_all(self) -> None:
        for relay in self.started:
            if relay.alive:
                relay.process.kill()
            relay.process.wait(timeout=WAIT)


@pytest.fixture
def relays(tmp_path: Path, database_url: str) -> Iterator[Relays]:
    started = Relays(tmp_path, database_url)
    try:
        yield started
    finally:
        started.kill_all()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    processes: list[RelayProcess] | Relays,
    timeout: float = WAIT,
) -> None:
    """Poll ``condition`` until it holds; fail with the relays' logs after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if loop.time() > deadline:
            logs = processes.logs() if isinstance(processes, Relays) else _logs(processes)
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}\n{logs}")
        await asyncio.sleep(0.02)


def _logs(processes: list[RelayProcess]) -> str:
    return "\n".join(f"--- relay {p.pid} ---\n{p.output()}" for p in processes)


# -- the web side: dispatching and looking at the table ----------------------------------------


def web_outbox(database_url: str) -> Outbox:
    """The writing side's Outbox: same destination name as the relay's app, no relay."""
    handlers = LocalHandler()

    @handlers.register(event_name="*", name=DESTINATION)
    def unused(event: Event) -> None:  # the relay process delivers, never this process
        raise AssertionError("the web process must not deliver")

    return Outbox(database_url, handlers=[handlers], relay="external")


@pytest.fixture
async def web(database_url: str) -> AsyncIterator[Outbox]:
    outbox = web_outbox(database_url)
    yield outbox
    await outbox.close()


def key_of(seq: int, keys: int) -> str | None:
    """Every fourth event has no key; the others are spread over ``keys`` keys."""
    return None if seq % 4 == 3 else f"k{seq % keys}"


async def dispatch_events(
    outbox: Outbox, count: int, *, start: int = 0, keys: int = 10, per_transaction: int = 50
) -> list[str]:
    """Commit ``count`` events (payload ``{"seq": n}``) in transactions of ``per_transaction``;
    return their ids in dispatch order."""
    ids: list[str] = []
    for first in range(start, start + count, per_transaction):
        async with outbox.unit_of_work():
            for seq in range(first, min(first + per_transaction, start + count)):
                ids.append(str(dispatch("fault.test", {"seq": seq}, key=key_of(seq, keys))))
    return ids


async def table_rows(outbox: Outbox) -> list[dict[str, Any]]:
    t = outbox.store.table
    query = sa.select(
        t.c.id, t.c.event_id, t.c.state, t.c.attempts, t.c.lease_token, t.c.last_error
    ).order_by(t.c.id)
    async with outbox.engine.connect() as connection:
        return [dict(row._mapping) for row in await connection.execute(query)]


async def all_delivered(outbox: Outbox, count: int) -> bool:
    rows = await table_rows(outbox)
    return len(rows) == count and all(row["state"] == DELIVERED for row in rows)


def in_flight(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows a relay has claimed and not settled."""
    return [row for row in rows if row["state"] == PENDING and row["lease_token"] is not None]


def duplicates(deliveries: list[dict[str, Any]]) -> dict[str, int]:
    counts = collections.Counter(d["id"] for d in deliveries)
    return {event_id: n for event_id, n in counts.items() if n > 1}


def assert_key_order(deliveries: list[dict[str, Any]], relays: Relays) -> None:
    """Events of one key were delivered in dispatch (``seq``) order: the first delivery of
    each event comes after the first delivery of the event before it."""
    first: dict[str, dict[str, Any]] = {}
    for delivery in deliveries:
        first.setdefault(delivery["id"], delivery)
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    for delivery in first.values():
        if delivery["key"] is not None:
            by_key[delivery["key"]].append(delivery["seq"])
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"key {key} delivered out of order: {seqs}\n{relays.logs()}"


# -- kill -9 ----------------------------------------------------------------------------------


async def test_kill_9_mid_batch_loses_nothing_and_duplicates_at_most_the_batches_in_flight(
    relays: Relays, web: Outbox
) -> None:
    batch_size, concurrency, count, slow = 20, 2, 600, 199  # event 199 has no key
    ids = await dispatch_events(web, count)
    first = relays.start(
        f"--batch-size={batch_size}",
        f"--concurrency={concurrency}",
        "--lease=3",
        "--poll-interval=0.2",
        FAULT_DELAY="0.01",
        FAULT_JITTER="0.1",
        FAULT_SLOW_SEQS=str(slow),  # holds its batch in flight for 1.5 s
    )

    async def slow_event_in_flight() -> bool:
        return ids[slow] in {str(row["event_id"]) for row in in_flight(await table_rows(web))}

    await wait_until(slow_event_in_flight, f"event {slow} in flight", relays)

    first.process.kill()
    assert await first.wait() == -signal.SIGKILL
    rows = await table_rows(web)
    claimed_at_kill = {str(row["event_id"]) for row in in_flight(rows)}
    assert claimed_at_kill, "the kill should land while batches are in flight\n" + relays.logs()
    assert len(claimed_at_kill) <= batch_size * concurrency
    delivered_before = len(relays.deliveries())
    assert delivered_before < count, "the kill should land mid-run\n" + relays.logs()

    second = relays.start(
        f"--batch-size={batch_size}",
        f"--concurrency={concurrency}",
        "--lease=3",
        "--poll-interval=0.2",
    )
    await wait_until(lambda: all_delivered(web, count), "every row delivered", relays)
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0, relays.logs()

    deliveries = relays.deliveries()
    assert {d["id"] for d in deliveries} == set(ids), "an event was lost\n" + relays.logs()
    repeated = duplicates(deliveries)
    assert sum(n - 1 for n in repeated.values()) <= batch_size * concurrency, repeated
    assert set(repeated) <= claimed_at_kill, "only the batches in flight may be delivered twice"
    assert_key_order(deliveries, relays)
    attempts = {str(row["event_id"]): row["attempts"] for row in await table_rows(web)}
    assert all(attempts[i] == 1 for i in set(ids) - claimed_at_kill), (
        "rows nobody had claimed when the relay died are delivered at their first attempt"
    )


# -- several relays ---------------------------------------------------------------------------


async def listeners(outbox: Outbox) -> int:
    """Relay processes whose notification listener is connected to the test's database."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    async with outbox.engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


@POSTGRES_ONLY
async def test_four_relay_processes_deliver_every_event_exactly_once_in_key_order(
    relays: Relays, web: Outbox
) -> None:
    count, processes = 1200, 4
    started = [
        relays.start("--batch-size=10", "--concurrency=2", FAULT_JITTER="0.005")
        for _ in range(processes)
    ]
    await wait_until(lambda: _at_least(listeners(web), processes), "every relay listening", relays)

    ids = await dispatch_events(web, count, keys=30, per_transaction=40)
    await wait_until(lambda: all_delivered(web, count), "every row delivered", relays)
    for relay in started:
        relay.signal(signal.SIGTERM)
    for relay in started:
        assert await relay.wait() == 0, relays.logs()

    deliveries = relays.deliveries()
    assert sorted(d["id"] for d in deliveries) == sorted(ids), (
        f"lost: {len(set(ids) - {d['id'] for d in deliveries})}, "
        f"twice: {len(duplicates(deliveries))}\n{relays.logs()}"
    )
    assert_key_order(deliveries, relays)
    pids = {d["pid"] for d in deliveries}
    assert len(pids) > 1, "the relays should have shared the work"


async def _at_least(count: Awaitable[int], expected: int) -> bool:
    return await count >= expected


# -- SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["run", "until-idle"])
async def test_sigterm_finishes_the_batches_in_flight_and_exits_0(
    relays: Relays, web: Outbox, mode: str
) -> None:
    count = 200
    ids = await dispatch_events(web, count)
    relay = relays.start(
        "--batch-size=10",
        "--concurrency=2",
        "--shutdown-timeout=30",
        *(["--until-idle"] if mode == "until-idle" else []),
        FAULT_DELAY="0.3",
    )
    await wait_until(lambda: len(relays.deliveries()) >= 15, "the first deliveries", relays)

    relay.signal(signal.SIGTERM)

    assert await relay.wait() == 0, relays.logs()
    assert "SIGTERM received" in relay.output()
    rows = await table_rows(web)
    assert in_flight(rows) == [], "the batches in flight should have been settled"
    delivered = [row for row in rows if row["state"] == DELIVERED]
    assert 0 < len(delivered) < count, "SIGTERM should have stopped the relay mid-run"
    assert sorted(d["id"] for d in relays.deliveries()) == sorted(
        str(row["event_id"]) for row in delivered
    ), "what the handler got and what the table says was delivered should agree"
    assert all(row["attempts"] == 0 for row in rows if row["state"] == PENDING)

    rest = relays.run_until_idle()

    assert rest.returncode == 0, rest.stderr
    deliveries = relays.deliveries()
    assert sorted(d["id"] for d in deliveries) == sorted(ids), "lost or repeated events"
    assert_key_order(deliveries, relays)


@pytest.mark.parametrize("handler", ["async", "sync"])
async def test_sigterm_past_the_shutdown_timeout_releases_the_batch_without_using_an_attempt(
    relays: Relays, web: Outbox, handler: str
) -> None:
    """A handler that never returns cannot hold the process: past the shutdown timeout its
    batch is released (an async handler is cancelled; a sync one is left in its thread) and
    the relay exits 0."""
    count = 30
    ids = await dispatch_events(web, count, keys=count)  # no key waits for another
    kind = {"FAULT_SYNC": "1"} if handler == "sync" else {}
    relay = relays.start(
        "--batch-size=10", "--concurrency=2", "--shutdown-timeout=1", FAULT_DELAY="3600", **kind
    )

    async def claimed() -> bool:
        return len(in_flight(await table_rows(web))) == 20

    await wait_until(claimed, "two batches in flight", relays)

    relay.signal(signal.SIGTERM)

    assert await relay.wait() == 0, relays.logs()
    assert "releasing" in relay.output(), relay.output()
    rows = await table_rows(web)
    assert [(row["state"], row["attempts"], row["lease_token"]) for row in rows] == [
        (PENDING, 0, None)
    ] * count, "released rows are claimable at once and their attempt is not counted"
    assert relays.deliveries() == []

    rest = relays.run_until_idle(**kind)

    assert rest.returncode == 0, rest.stderr
    deliveries = relays.deliveries()
    assert sorted(d["id"] for d in deliveries) == sorted(ids)
    assert {d["attempt"] for d in deliveries} == {1}


# -- PostgreSQL going away ----------------------------------------------------------------------


async def test_postgres_restart_mid_run_reconnects_and_loses_nothing(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    server = private_postgres
    batch_size, concurrency, count = 20, 2, 600
    relays = Relays(tmp_path, server.url)
    web = web_outbox(server.url)
    try:
        ids = await dispatch_events(web, count)
        relay = relays.start(
            f"--batch-size={batch_size}",
            f"--concurrency={concurrency}",
            "--lease=2",
            "--poll-interval=0.2",
            FAULT_DELAY="0.01",
            FAULT_JITTER="0.05",
        )
        await wait_until(
            lambda: len(relays.deliveries()) >= count // 4, "a quarter of the deliveries", relays
        )

        server.stop()
        await wait_until(
            lambda: "database unavailable" in relay.output(), "the relay to notice", relays
        )
        assert len(relays.deliveries()) < count, "the restart should land mid-run"
        server.start()
        await web.engine.dispose()  # the test's own pooled connections died with the server

        await wait_until(lambda: all_delivered(web, count), "every row delivered", relays)
        assert relay.alive, relays.logs()
        assert "database reachable again" in relay.output()
        await wait_until(
            lambda: "listening for notifications again" in relay.output(),
            "the notification listener to reconnect",
            relays,
        )
        relay.signal(signal.SIGTERM)
        assert await relay.wait() == 0, relays.logs()
        deliveries = relays.deliveries()
        assert {d["id"] for d in deliveries} == set(ids), "an event was lost\n" + relays.logs()
        repeated = duplicates(deliveries)
        assert sum(n - 1 for n in repeated.values()) <= batch_size * concurrency, repeated
    finally:
        relays.kill_all()
        await web.close()


async def test_relay_started_while_postgres_is_down_retries_then_delivers(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    server = private_postgres
    server.stop()
    relays = Relays(tmp_path, server.url)
    web = web_outbox(server.url)
    try:
        relay = relays.start("--poll-interval=0.2")
        await wait_until(
            lambda: relay.output().count("database unavailable") >= 2,
            "the relay to retry while the database is down",
            relays,
        )
        assert relay.alive, relays.logs()

        server.start()
        ids = await dispatch_events(web, 50)

        await wait_until(lambda: all_delivered(web, len(ids)), "every row delivered", relays)
        assert "database reachable again" in relay.output()
        await wait_until(
            lambda: "listening for notifications again" in relay.output(),
            "the notification listener to connect",
            relays,
        )
        assert sorted(d["id"] for d in relays.deliveries()) == sorted(ids)
        relay.signal(signal.SIGTERM)
        assert await relay.wait() == 0, relays.logs()
    finally:
        relays.kill_all()
        await web.close()


# -- poison rows --------------------------------------------------------------------------------


async def insert_poison(outbox: Outbox) -> list[str]:
    """Rows no relay can turn into an Event, written behind the library's back."""
    now = outbox.clock()
    poisons: list[dict[str, str | None]] = [
        {"payload": "{not json", "headers": None},
        {"payload": "[" * 100_000 + "]" * 100_000, "headers": None},
        {"payload": "{}", "headers": '"a string, not an object"'},
    ]
    rows: list[dict[str, Any]] = [
        {
            "event_id": uuid.uuid4(),
            "destination": DESTINATION,
            "name": "fault.poison",
            "key": None,
            "trace_context": None,
            "created_at": now,
            "state": PENDING,
            "attempts": 0,
            "available_at": now,
            **poison,
        }
        for poison in poisons
    ]
    async with outbox.engine.begin() as connection:
        await connection.execute(sa.insert(outbox.store.table), rows)
    return [str(row["event_id"]) for row in rows]


async def test_poison_rows_are_dead_lettered_while_others_flow_and_the_relay_keeps_running(
    relays: Relays, web: Outbox
) -> None:
    relay = relays.start("--poll-interval=0.2", "--batch-size=10")
    poison = await insert_poison(web)
    ids = await dispatch_events(web, 40)

    async def settled() -> bool:
        rows = await table_rows(web)
        return all(row["state"] != PENDING for row in rows) and len(rows) == 43

    await wait_until(settled, "every row settled", relays)
    rows = {str(row["event_id"]): row for row in await table_rows(web)}
    for event_id in poison:
        assert rows[event_id]["state"] == DEAD
        assert rows[event_id]["attempts"] == 1, "undecodable rows are not retried"
        assert "cannot be decoded" in rows[event_id]["last_error"]
    assert sorted(d["id"] for d in relays.deliveries()) == sorted(ids)
    assert relay.alive, relays.logs()
    assert "dead-lettered event" in relay.output()

    more = await dispatch_events(web, 10, start=40)
    await wait_until(lambda: all_delivered_but(web, set(poison), 53), "the later events", relays)
    assert sorted(d["id"] for d in relays.deliveries()) == sorted(ids + more)
    relay.signal(signal.SIGTERM)
    assert await relay.wait() == 0, relays.logs()


async def all_delivered_but(outbox: Outbox, dead: set[str], count: int) -> bool:
    rows = await table_rows(outbox)
    return len(rows) == count and all(
        row["state"] == (DEAD if str(row["event_id"]) in dead else DELIVERED) for row in rows
    )


# -- the relay's own tasks (in process) ---------------------------------------------------------


async def test_a_relay_task_that_dies_stops_the_relay_loudly(
    make_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture
) -> None:
    """The retention purge runs beside the delivery loop; if it dies the relay must not go on
    without it unnoticed: the loop finishes its batches and ``run()`` raises."""

    def clock() -> datetime:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "outbox-events-purge":
            raise RuntimeError("the clock broke")
        return datetime.now(timezone.utc)

    handlers = LocalHandler()
    received: list[Event] = []
    handlers.register(event_name="*", name=DESTINATION)(received.append)
    outbox = make_outbox(handlers=[handlers], relay="external", clock=clock, retention=60)

    with pytest.raises(OutboxError, match="outbox-events-purge died: RuntimeError: the clock"):
        await asyncio.wait_for(outbox.relay.run(), WAIT)

    assert "relay task outbox-events-purge died" in caplog.text
    async with outbox.unit_of_work():
        dispatch("after.the.failure", {})
    assert (await outbox.drain()).delivered == 1, "the relay stopped cleanly, nothing is stuck"


def test_a_retention_beyond_ten_years_is_refused_before_anything_runs() -> None:
    # A retention past the calendar once crashed the relay's purge task; it is now refused
    # where it is configured, with a message that says the bound.
    for retention in (timedelta.max, timedelta(days=3651), -1):
        with pytest.raises(ConfigurationError, match="ten years"):
            Outbox("sqlite+aiosqlite://", retention=retention)


# -- metrics ----------------------------------------------------------------------------------


async def test_metrics_port_serves_the_relays_prometheus_metrics(
    relays: Relays, web: Outbox
) -> None:
    import urllib.request

    from tests.private_postgres import free_port

    port = free_port()
    await dispatch_events(web, 30)
    relay = relays.start(f"--metrics-port={port}")
    await wait_until(lambda: all_delivered(web, 30), "30 deliveries", relays)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    async def counted_all() -> bool:
        text = await asyncio.to_thread(scrape)
        return (
            f'outbox_events_deliveries_total{{destination="{DESTINATION}",outcome="delivered"}} '
            "30.0" in text
        )

    await wait_until(counted_all, "the metrics to count 30 deliveries", relays)
    relay.signal(signal.SIGTERM)
    assert await relay.wait() == 0, relays.logs()
    assert "serving Prometheus metrics" in relay.output()


async def test_after_a_postgres_restart_one_failed_claim_renews_the_whole_pool(
    private_postgres: PrivatePostgres,
) -> None:
    server = private_postgres
    outbox = web_outbox(server.url)
    try:
        # Several relay connections in the pool, as batches in flight and settles leave them.
        pooled = [await outbox.store.relay_engine.connect() for _ in range(4)]
        for connection in pooled:
            await connection.get_raw_connection()
        for connection in pooled:
            await connection.close()
        server.stop()
        server.start()

        outcomes = []
        for _ in range(4):
            now = outbox.clock()
            try:
                await outbox.store.claim(
                    destinations=[DESTINATION], limit=10, now=now, lease_until=now + timedelta(30)
                )
                outcomes.append("ok")
            except OutboxError as exc:
                outcomes.append(type(exc).__name__)
    finally:
        await outbox.close()

    assert outcomes in (["StoreError", "ok", "ok", "ok"], ["ok"] * 4), (
        f"each dead pooled connection failed a claim of its own: {outcomes}"
    )


async def test_a_relay_backs_off_while_postgres_is_down_even_with_a_retry_due(
    private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_postgres
    attempts: list[int] = []
    handlers = LocalHandler()

    @handlers.register(event_name="*", name=DESTINATION)
    async def flaky(event: Event) -> None:
        attempts.append(event.attempt)
        if event.attempt == 1:
            raise RuntimeError("not yet")

    from outbox_events import RetryPolicy

    outbox = Outbox(
        server.url,
        handlers=[handlers],
        retry=RetryPolicy(initial_delay=0.5, max_delay=0.5, jitter=0),
    )
    try:
        async with outbox.unit_of_work():
            dispatch("fault.test", {"seq": 1})
        outbox.relay.start()
        await wait_until(lambda: attempts == [1], "the first, failing attempt", [])
        server.stop()  # the retry falls due while the database is down
        await asyncio.sleep(2.5)
        unavailable = [
            r for r in caplog.records if r.getMessage().startswith("database unavailable")
        ]
        server.start()
        await wait_until(lambda: attempts == [1, 2], "the retry once the database is back", [])
    finally:
        await outbox.close()

    assert 1 <= len(unavailable) <= 3, (
        f"{len(unavailable)} claims in 2.5 s: the relay did not back off (1 s, 2 s, ...)"
    )
