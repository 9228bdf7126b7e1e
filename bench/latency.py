"""Commit -> handler latency of an idle relay, one event at a time.

Each sample commits one event and waits until its handler has run; then the benchmark pauses
(``--gap``) so that the relay is idle again before the next one. Latency is measured from the
moment the writer sends COMMIT (SQLAlchemy's ``commit`` engine event, or just before the
COMMIT of the raw baseline) to the first line of the handler, with ``time.perf_counter()``
(CLOCK_MONOTONIC, comparable across processes).

Modes:

- ``notify``: PostgreSQL + LISTEN/NOTIFY, in one process: a writer ``Outbox(relay="external")``
  commits through ``outbox.unit_of_work()`` and a second ``Outbox`` (its own engine and
  listener connection) runs ``relay.run()`` as a task. Only NOTIFY (or the 1 s poll) can
  wake it.
- ``process``: the same, but the relay is a real ``outbox-relay run`` process; its handler sends
  the time over UDP.
- ``embedded-sqlite``, ``embedded-postgres``: one ``Outbox`` (the embedded default); the relay
  task is woken in-process when the unit of work ends (on PostgreSQL NOTIFY also arrives).

Baseline (interleaved sample by sample with the PostgreSQL modes): a raw asyncpg writer does
BEGIN; INSERT one row (the outbox's shape, into a copy of the table); SELECT pg_notify; COMMIT,
and a second asyncpg connection LISTENs; latency = COMMIT sent -> listener callback. With the
``notify`` mode a "floor" row is also measured: the same wake-up followed by the library's claim
statement run once by raw asyncpg (autocommit), i.e. the least any relay has to do.

    python bench/latency.py [--samples 300] [--modes notify,process,embedded-sqlite,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from _common import (
    CompiledStatement,
    Result,
    add_common_arguments,
    ms,
    percentile,
    print_table,
    raw_connect,
    scratch_postgres,
    scratch_sqlite,
)

from outbox_events import Outbox, dispatch
from outbox_events.handlers.local import LocalHandler
from outbox_events.store import queries
from outbox_events.store.tables import outbox_table

TARGET_P50 = 0.003  # seconds
TARGET_P99 = 0.015
TARGET_EMBEDDED_P50 = 0.002
TIMEOUT = 5.0  # seconds to wait for one event before giving up on the run
HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("notify", "process", "embedded-sqlite", "embedded-postgres")
EVENT = "bench.latency"

Sampler = Callable[[], Awaitable[float]]


class Waiters:
    """Futures resolved with the time the handler saw each event."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[float]] = {}

    def expect(self, event_id: uuid.UUID) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        self.futures[str(event_id)] = future
        return future

    def arrived(self, event_id: uuid.UUID | str, at: float) -> None:
        future = self.futures.pop(str(event_id), None)
        if future is not None and not future.done():
            future.set_result(at)


def latency_handler(waiters: Waiters, name: str = "bench.latency") -> LocalHandler:
    """A local handler (the destination ``name``) that reports when each event arrives."""
    handler = LocalHandler()

    async def on_event(event: Any) -> None:
        waiters.arrived(event.id, time.perf_counter())

    handler.register(on_event, event_name="*", name=name)
    return handler


def commit_clock(outbox: Outbox) -> list[float]:
    """A one-item list holding the time the latest transaction that inserted outbox rows sent
    its COMMIT. Other commits on the engine (the embedded relay's claims and settles share it)
    are ignored."""
    mark = [0.0]
    table = outbox.store.table.name

    def on_execute(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT") and table in statement:
            connection.info["bench_inserted"] = True

    def on_commit(connection: Any) -> None:
        if connection.info.pop("bench_inserted", False):
            mark[0] = time.perf_counter()

    sa.event.listen(outbox.engine.sync_engine, "before_cursor_execute", on_execute)
    sa.event.listen(outbox.engine.sync_engine, "commit", on_commit)
    return mark


def library_sampler(writer: Outbox, waiters: Waiters) -> Sampler:
    mark = commit_clock(writer)
    counter = iter(range(10**9))

    async def sample() -> float:
        async with writer.unit_of_work():
            future = waiters.expect(dispatch(EVENT, {"i": next(counter)}))
        handled = await asyncio.wait_for(future, TIMEOUT)
        return handled - mark[0]

    return sample


async def raw_notify_sampler(
    url: str, stack: contextlib.AsyncExitStack, *, claim: bool = False
) -> Sampler:
    """Baseline: INSERT + pg_notify + COMMIT on one asyncpg connection, LISTEN on another;
    the sample ends in the listener's callback. With ``claim``, the callback also runs the
    library's claim statement (one autocommit statement on a third connection) and the sample
    ends when it returns: the least a relay must do before it can call a handler."""
    table = "bench_raw_claim" if claim else "bench_raw"
    setup = await raw_connect(url)
    try:
        await setup.execute(
            f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (LIKE outbox_events INCLUDING ALL)"
        )
    finally:
        await setup.close()
    listener = await raw_connect(url)
    stack.push_async_callback(listener.close)
    writer = await raw_connect(url)
    stack.push_async_callback(writer.close)
    claimer = await raw_connect(url) if claim else None
    if claimer is not None:
        stack.push_async_callback(claimer.close)
    claim_statement = CompiledStatement(queries.claim(outbox_table(table), "postgresql"))
    pending: list[asyncio.Future[float]] = []
    tasks: set[asyncio.Task[None]] = set()

    async def claim_then_resolve(future: asyncio.Future[float]) -> None:
        assert claimer is not None
        now = datetime.now(timezone.utc)
        sql, args = claim_statement(
            now=now,
            destinations=["bench.nobody"],
            limit=100,
            token=uuid.uuid4(),
            lease_until=now + timedelta(seconds=30),
        )
        await claimer.fetch(sql, *args)
        if not future.done():
            future.set_result(time.perf_counter())

    def notified(*_args: Any) -> None:
        at = time.perf_counter()
        if not pending or pending[0].done():
            return
        if claimer is None:
            pending[0].set_result(at)
        else:
            task = asyncio.ensure_future(claim_then_resolve(pending[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    await listener.add_listener(table, notified)
    insert = (
        f"INSERT INTO {table} (event_id, destination, name, payload, key, headers, "
        "trace_context, created_at, state, attempts, available_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )
    notify = f"SELECT pg_notify('{table}', '')"

    async def sample() -> float:
        future = asyncio.get_running_loop().create_future()
        pending[:] = [future]
        now = datetime.now(timezone.utc)
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute(
            insert,
            uuid.uuid4(),
            "bench.nobody",
            EVENT,
            '{"i": 0}',
            None,
            None,
            None,
            now,
            "pending",
            0,
            now,
        )
        await writer.execute(notify)
        sent = time.perf_counter()
        await transaction.commit()
        return await asyncio.wait_for(future, TIMEOUT) - sent

    return sample


async def relay_process_sampler(
    url: str, writer: Outbox, waiters: Waiters, stack: contextlib.AsyncExitStack
) -> Sampler:
    """Start ``outbox-relay run _latency_app:outbox``; its handler reports over UDP."""
    loop = asyncio.get_running_loop()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: Any) -> None:
            at, event_id = data.decode().split()
            waiters.arrived(event_id, float(at))

    transport, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    stack.callback(transport.close)
    port = transport.get_extra_info("sockname")[1]
    env = dict(
        os.environ,
        OUTBOX_BENCH_DATABASE_URL=url,
        OUTBOX_BENCH_UDP_PORT=str(port),
        PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])),
    )
    process = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "outbox-relay"),
        "run",
        "_latency_app:outbox",
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def stop() -> None:
        if process.returncode is None:
            process.terminate()
            await process.wait()

    stack.push_async_callback(stop)
    sample = library_sampler(writer, waiters)
    # The first event waits for the process to start (imports, connect, LISTEN, catch-up).
    async with writer.unit_of_work():
        first = waiters.expect(dispatch(EVENT, {"i": -1}))
    await asyncio.wait_for(first, 60)
    return sample


async def collect(
    samplers: dict[str, Sampler], samples: int, warmup: int, gap: float
) -> dict[str, list[float]]:
    """Run the samplers in turn, sample by sample; drop the first ``warmup`` rounds."""
    results: dict[str, list[float]] = {name: [] for name in samplers}
    for index in range(warmup + samples):
        for name, sampler in samplers.items():
            latency = await sampler()
            if index >= warmup:
                results[name].append(latency)
            await asyncio.sleep(gap)
    return results


def summary(values: list[float]) -> str:
    return f"p50 {ms(percentile(values, 0.5))}, p99 {ms(percentile(values, 0.99))}"


async def run_postgres_modes(args: argparse.Namespace, modes: list[str]) -> list[Result]:
    results: list[Result] = []
    async with scratch_postgres(args.postgres_url, "latency") as url:
        for mode in modes:
            async with contextlib.AsyncExitStack() as stack:
                waiters = Waiters()
                samplers = {"baseline": await raw_notify_sampler(url, stack)}
                if mode == "notify":
                    samplers["floor"] = await raw_notify_sampler(url, stack, claim=True)
                if mode == "embedded-postgres":
                    outbox = Outbox(url, handlers=[latency_handler(waiters)])
                    stack.push_async_callback(outbox.close)
                    outbox.ensure_started()
                    candidate = library_sampler(outbox, waiters)
                    label = "embedded PostgreSQL (in-process wake + NOTIFY)"
                else:
                    writer = Outbox(url, handlers=[latency_handler(waiters)], relay="external")
                    stack.push_async_callback(writer.close)
                    if mode == "notify":
                        relay = Outbox(url, handlers=[latency_handler(waiters)], relay="external")
                        stack.push_async_callback(relay.close)
                        task = asyncio.ensure_future(relay.relay.run())

                        async def stop_relay(task: asyncio.Future[None] = task) -> None:
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await task

                        stack.push_async_callback(stop_relay)
                        candidate = library_sampler(writer, waiters)
                        label = "PostgreSQL NOTIFY, relay.run() task, own Outbox"
                    else:
                        candidate = await relay_process_sampler(url, writer, waiters, stack)
                        label = "PostgreSQL NOTIFY, outbox-relay run process"
                samplers["candidate"] = candidate
                measured = await collect(samplers, args.samples, args.warmup, args.gap)
            base, cand = measured["baseline"], measured["candidate"]
            if "floor" in measured:
                floor = measured["floor"]
                results.append(
                    Result(
                        "(floor: raw NOTIFY + one raw claim statement)",
                        summary(base),
                        summary(floor),
                        f"{percentile(floor, 0.5) / percentile(base, 0.5):.1f}x p50",
                        "-",
                        None,
                    )
                )
            p50, p99 = percentile(cand, 0.5), percentile(cand, 0.99)
            if mode == "embedded-postgres":
                target, passed = f"p50 <= {ms(TARGET_EMBEDDED_P50)}", p50 <= TARGET_EMBEDDED_P50
            else:
                target = f"p50 <= {ms(TARGET_P50)}, p99 <= {ms(TARGET_P99)}"
                passed = p50 <= TARGET_P50 and p99 <= TARGET_P99
            results.append(
                Result(
                    label,
                    summary(base),
                    summary(cand),
                    f"{p50 / percentile(base, 0.5):.1f}x p50",
                    target,
                    passed,
                )
            )
            print(f"{mode}: baseline {summary(base)}; candidate {summary(cand)}", file=sys.stderr)
    return results


async def run_sqlite(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as directory:
        async with scratch_sqlite(directory, "latency") as url:
            waiters = Waiters()
            outbox = Outbox(url, handlers=[latency_handler(waiters)])
            try:
                outbox.ensure_started()
                measured = await collect(
                    {"candidate": library_sampler(outbox, waiters)},
                    args.samples,
                    args.warmup,
                    args.gap,
                )
            finally:
                await outbox.close()
    cand = measured["candidate"]
    p50 = percentile(cand, 0.5)
    print(f"embedded-sqlite: {summary(cand)}", file=sys.stderr)
    return Result(
        "embedded SQLite (in-process wake)",
        "-",
        summary(cand),
        "-",
        f"p50 <= {ms(TARGET_EMBEDDED_P50)}",
        p50 <= TARGET_EMBEDDED_P50,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    parser.add_argument("--samples", type=int, default=300, help="samples per mode")
    parser.add_argument("--warmup", type=int, default=20, help="samples dropped first")
    parser.add_argument(
        "--gap", type=float, default=0.02, help="seconds between samples (relay goes idle)"
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated subset of {', '.join(MODES)}",
    )
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    results = await run_postgres_modes(args, [m for m in modes if m != "embedded-sqlite"])
    if "embedded-sqlite" in modes:
        results.append(await run_sqlite(args))
    print_table(
        "commit -> handler latency, idle relay, one event at a time",
        results,
        [
            "baseline: raw asyncpg INSERT + pg_notify + COMMIT -> LISTEN callback, interleaved",
            f"{args.samples} samples per mode after {args.warmup} warm-up, {args.gap * 1000:.0f}"
            " ms apart; ratio = candidate p50 / baseline p50 (informational)",
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
