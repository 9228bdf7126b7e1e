"""SQS forwarding: the same N events sent to the same moto server (its own process), by
fastapi-events' ``SQSForwardHandler`` and by this library's, through ``Outbox.drain()``.

Baselines (fastapi-events 0.12.2, synchronous boto3 on the event loop):
  * ``handle_many(all N)``: its best case, ``SendMessageBatch`` requests of 10, one after another;
  * ``handle_many([event])`` per event: how its middleware forwards a request that dispatched
    one event (one request per event).
Candidate: N pending events in an outbox table (PostgreSQL, or SQLite with ``--sqlite``), then
``await outbox.drain()`` with ``SQSForwardHandler``: batches of 10 in concurrent worker threads,
message attributes (id, name), claim and settle in the database. Storing the events is not
timed (the baseline stores nothing).

Every run gets a fresh queue (moto's cost per message grows with the queue's depth, so each run
sees the same depths), runs alternate, and each run checks that all N messages arrived.

Reading the result: the line "moto server CPU s per wall s" tells whether the server was the
bottleneck. Near 1.0 the single moto process is saturated (its send path scans the whole queue
for every message, several ms per message at a few hundred messages deep), and no client can
forward faster than it; the ratios then measure moto, not the clients.

    python bench/sqs_forwarding.py [--events 300] [--rounds 3] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import boto3
from _common import (
    Result,
    Timer,
    add_common_arguments,
    median,
    pending_rows,
    print_table,
    rate,
    scratch_postgres,
    scratch_sqlite,
    write_rows,
)

from outbox_events import Outbox
from outbox_events.handlers.aws import SQSForwardHandler

TARGET_RATIO = 3.0
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
DESTINATION = "bench.sqs"
EVENT_NAME = "order.placed"
STARTUP_TIMEOUT = 30.0  # seconds for the moto server to answer


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """A moto server in a process of its own (as SQS is remote); yields its endpoint URL and
    process id."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        yield endpoint, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


class Queues:
    def __init__(self, endpoint: str) -> None:
        self.client = boto3.session.Session().client(
            "sqs", region_name=REGION, endpoint_url=endpoint, **CREDENTIALS
        )

    def create(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        url: str = self.client.create_queue(QueueName=name)["QueueUrl"]
        return url

    def count(self, url: str) -> int:
        attributes = self.client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    def delete(self, url: str) -> None:
        self.client.delete_queue(QueueUrl=url)


def payloads(count: int) -> list[dict[str, Any]]:
    return [{"order_id": i, "total": "10.00"} for i in range(count)]


async def baseline(endpoint: str, queue_url: str, events: int, *, per_event: bool) -> float:
    """Seconds fastapi-events' handler takes to forward the events."""
    from fastapi_events.handlers.aws import SQSForwardHandler as FastapiEventsSQS

    handler = FastapiEventsSQS(queue_url, REGION, endpoint_url=endpoint, **CREDENTIALS)
    batch = [(EVENT_NAME, payload) for payload in payloads(events)]
    with Timer() as timer:
        if per_event:
            for event in batch:
                await handler.handle_many([event])
        else:
            await handler.handle_many(batch)
    handler._client.close()
    return timer.seconds


@contextlib.asynccontextmanager
async def database(args: argparse.Namespace, label: str) -> AsyncIterator[str]:
    if args.sqlite:
        with tempfile.TemporaryDirectory() as directory:
            async with scratch_sqlite(directory, label) as url:
                yield url
    else:
        async with scratch_postgres(args.postgres_url, label) as url:
            yield url


async def candidate(args: argparse.Namespace, endpoint: str, queue_url: str) -> float:
    """Seconds ``Outbox.drain()`` takes to forward the stored events."""
    async with database(args, "sqs") as url:
        handler = SQSForwardHandler(
            queue_url,
            REGION,
            name=DESTINATION,
            max_concurrency=args.concurrency,
            endpoint_url=endpoint,
            **CREDENTIALS,
        )
        outbox = Outbox(url, handlers=[handler], batch_size=args.batch_size)
        try:
            rows = pending_rows(outbox, args.events, name=EVENT_NAME)
            await write_rows(outbox, rows)
            await handler._get_client()  # client creation is not part of the forwarding
            with Timer() as timer:
                result = await outbox.drain()
            if result.delivered != args.events:
                raise RuntimeError(f"drain() delivered {result.delivered} of {args.events}")
            return timer.seconds
        finally:
            await outbox.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(
    queues: Queues, events: int, server_pid: int, run: Callable[[str], Awaitable[float]]
) -> tuple[float, float]:
    """Run against a fresh queue and check that every message arrived; return events/s and
    how busy the moto server was (its CPU seconds per wall second)."""
    url = await asyncio.to_thread(queues.create)
    try:
        before = cpu_seconds(server_pid)
        seconds = await run(url)
        busy = (cpu_seconds(server_pid) - before) / seconds
        arrived = await asyncio.to_thread(queues.count, url)
        if arrived != events:
            raise RuntimeError(f"{arrived} of {events} messages arrived")
        return events / seconds, busy
    finally:
        await asyncio.to_thread(queues.delete, url)


async def main(args: argparse.Namespace) -> None:
    runs: dict[str, Callable[[str, str], Awaitable[float]]] = {
        "batched": lambda endpoint, url: baseline(endpoint, url, args.events, per_event=False),
        "outbox": lambda endpoint, url: candidate(args, endpoint, url),
        "per_event": lambda endpoint, url: baseline(endpoint, url, args.events, per_event=True),
    }
    rates: dict[str, list[float]] = {kind: [] for kind in runs}
    busy: dict[str, list[float]] = {kind: [] for kind in runs}
    with moto_server() as (endpoint, pid):
        queues = Queues(endpoint)
        for _ in range(args.rounds):  # alternate, so that load changes hit every kind
            for kind, run in runs.items():
                events_per_second, server_busy = await timed(
                    queues, args.events, pid, functools.partial(run, endpoint)
                )
                rates[kind].append(events_per_second)
                busy[kind].append(server_busy)
        queues.client.close()
    ours = median(rates["outbox"])
    store = "SQLite" if args.sqlite else "PostgreSQL"
    results = []
    for label, kind in (
        ("handle_many(all N), batches of 10", "batched"),
        ("handle_many([event]) per event", "per_event"),
    ):
        theirs = median(rates[kind])
        results.append(
            Result(
                name=f"SQS forwarding, {args.events} events vs fastapi-events {label}",
                baseline=rate(theirs),
                candidate=rate(ours),
                ratio=f"{ours / theirs:.2f}x",
                target=f">= {TARGET_RATIO:.0f}x",
                passed=ours / theirs >= TARGET_RATIO,
            )
        )
    print_table(
        "SQS forwarding to one moto server (own process)",
        results,
        notes=[
            f"candidate: Outbox.drain() on {store}, batch_size={args.batch_size}, "
            f"max_concurrency={args.concurrency}; medians of {args.rounds} rounds",
            "moto server CPU s per wall s (median): "
            + ", ".join(f"{kind} {median(values):.2f}" for kind, values in busy.items()),
            "runs (events/s): "
            + "; ".join(
                f"{kind} " + ", ".join(f"{value:,.0f}" for value in values)
                for kind, values in rates.items()
            ),
        ],
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--events", type=int, default=300, help="events per run (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--batch-size", type=int, default=100, help="Outbox batch_size")
    parser.add_argument("--concurrency", type=int, default=8, help="handler max_concurrency")
    parser.add_argument("--sqlite", action="store_true", help="store the outbox in SQLite")
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    asyncio.run(main(parse_arguments()))
