"""Pub/Sub publishing: N pending events published by ``GoogleCloudSimplePubSubHandler``.

Baseline: google-cloud-pubsub's ``PublisherClient`` on its own, with the handler's batch
settings and publisher options, publishing the same N messages (same bodies, same ``event_id``
and ``event_name`` attributes, same ordering keys) as fast as it can: publish them all, then
wait for every future. Candidate: ``await Outbox(...).drain()`` over a PostgreSQL table holding
the N events as pending rows: claim a batch, publish it, wait for Pub/Sub's confirmations,
settle, next batch. Both publish to the same emulator (a topic without subscriptions), and
alternate each round.

The emulator is started on a free port (Google's, where installed; ``--fake`` uses the test
tree's fake instead), or ``--emulator-host HOST:PORT`` uses one that is running.

    python bench/pubsub_publish.py [--events 20000] [--rounds 2] [--batch-size 100] [--keys 0]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from _common import (
    Result,
    Timer,
    add_common_arguments,
    copy_rows,
    median,
    pending_rows,
    print_table,
    rate,
    raw_connect,
    scratch_postgres,
)

from outbox_events import Outbox
from outbox_events.handlers.gcp import GoogleCloudSimplePubSubHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "outbox-bench"
TOPIC = "bench-events"
DESTINATION = "bench.pubsub"


@contextlib.contextmanager
def pubsub_server(args: argparse.Namespace) -> Iterator[str]:
    """The address of a Pub/Sub server for the run (started here unless given)."""
    if args.emulator_host:
        yield args.emulator_host
        return
    sys.path.insert(0, ROOT)  # the servers the tests use
    from tests.servers.pubsub import EmulatorServer, FakeServer, emulator_launcher, free_port

    launcher = None if args.fake else emulator_launcher()
    if launcher is None and not args.fake:
        raise SystemExit("the Pub/Sub emulator is not installed; pass --fake or --emulator-host")
    server: Any = FakeServer(free_port()) if args.fake else EmulatorServer(launcher, free_port())
    try:
        server.start()
        yield server.address
    finally:
        server.close()


def create_topic() -> None:
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    try:
        with contextlib.suppress(exceptions.AlreadyExists):
            publisher.create_topic(name=publisher.topic_path(PROJECT, TOPIC))
    finally:
        publisher.transport.close()


def messages_of(rows: list[dict[str, Any]]) -> list[tuple[bytes, str, dict[str, str]]]:
    """What the handler sends for each row: body, ordering key, attributes."""
    return [
        (
            json.dumps([row["name"], json.loads(row["payload"])]).encode(),
            row["key"] or "",
            {"event_id": str(row["event_id"]), "event_name": row["name"]},
        )
        for row in rows
    ]


def baseline_publish(client: Any, messages: list[tuple[bytes, str, dict[str, str]]]) -> int:
    """The raw client: publish everything, then wait for every confirmation."""
    topic = client.topic_path(PROJECT, TOPIC)
    futures = [
        client.publish(topic, data, ordering_key=key, retry=None, timeout=60, **attributes)
        for data, key, attributes in messages
    ]
    for future in concurrent.futures.as_completed(futures):
        future.result()
    return len(futures)


def raw_client() -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000),
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
    )


async def load(url: str, rows: list[dict[str, Any]]) -> None:
    connection = await raw_connect(url)
    try:
        await connection.execute("TRUNCATE outbox_events")
    finally:
        await connection.close()
    await copy_rows(url, rows)


def make_rows(outbox: Outbox, events: int, keys: int) -> list[dict[str, Any]]:
    rows = pending_rows(outbox, events)
    if keys:
        for index, row in enumerate(rows):
            row["key"] = f"key-{index % keys}"
    return rows


async def run(args: argparse.Namespace) -> tuple[list[Result], list[str]]:
    baseline_rates: list[float] = []
    candidate_rates: list[float] = []
    ratios: list[float] = []
    with pubsub_server(args) as address:
        os.environ["PUBSUB_EMULATOR_HOST"] = address
        await asyncio.to_thread(create_topic)
        client = await asyncio.to_thread(raw_client)
        handler = GoogleCloudSimplePubSubHandler(PROJECT, TOPIC, name=DESTINATION)
        async with scratch_postgres(args.postgres_url, "pubsub") as url:
            outbox = Outbox(url, handlers=[handler], batch_size=args.batch_size)
            try:
                await load(url, make_rows(outbox, 100, args.keys))  # warm both clients up
                await outbox.drain()
                await asyncio.to_thread(
                    baseline_publish, client, messages_of(make_rows(outbox, 100, args.keys))
                )
                for round_ in range(args.rounds):
                    speeds: dict[str, float] = {}
                    for which in (
                        ("baseline", "drain") if round_ % 2 == 0 else ("drain", "baseline")
                    ):
                        rows = make_rows(outbox, args.events, args.keys)
                        if which == "baseline":
                            messages = messages_of(rows)
                            with Timer() as timer:
                                sent = await asyncio.to_thread(baseline_publish, client, messages)
                        else:
                            await load(url, rows)
                            with Timer() as timer:
                                result = await outbox.drain()
                            sent = result.delivered
                            assert result.attempted == sent, result
                        assert sent == args.events, (which, sent)
                        speeds[which] = sent / timer.seconds
                    baseline_rates.append(speeds["baseline"])
                    candidate_rates.append(speeds["drain"])
                    ratios.append(speeds["drain"] / speeds["baseline"])
                    print(
                        f"round {round_ + 1}: raw client {rate(speeds['baseline'])}, "
                        f"drain() {rate(speeds['drain'])}, ratio {ratios[-1]:.2f}",
                        file=sys.stderr,
                    )
            finally:
                await outbox.close()
                await asyncio.to_thread(client.stop)
    keys = f"{args.keys} keys" if args.keys else "no keys"
    results = [
        Result(
            f"Pub/Sub drain(), {args.events:,} events, batch {args.batch_size}, {keys}",
            rate(median(baseline_rates)),
            rate(median(candidate_rates)),
            f"{median(ratios):.2f}x",
            "-",
            None,
        )
    ]
    notes = [
        "baseline: the raw PublisherClient publishing the same messages, all at once",
        f"rates: medians of {args.rounds} rounds; ratio: median of the rounds' paired ratios "
        "(order alternates each round)",
    ]
    return results, notes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per claim")
    parser.add_argument(
        "--rounds", type=int, default=2, help="baseline/candidate pairs (median reported)"
    )
    parser.add_argument(
        "--keys", type=int, default=0, help="spread events over this many ordering keys (0: none)"
    )
    parser.add_argument("--emulator-host", help="HOST:PORT of a running Pub/Sub emulator")
    parser.add_argument("--fake", action="store_true", help="use the tests' fake, not Google's")
    args = parser.parse_args()
    results, notes = await run(args)
    server = args.emulator_host or ("fake" if args.fake else "emulator")
    print_table(f"Pub/Sub publishing ({server}, PostgreSQL)", results, notes)


if __name__ == "__main__":
    asyncio.run(main())
