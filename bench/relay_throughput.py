"""Relay throughput: N pending events for one no-op local handler, delivered by one relay.

Baseline: a hand-written asyncpg loop running the library's own claim and delete-on-complete
statements (compiled from ``outbox_events.store.queries`` exactly as SQLAlchemy sends them),
each autocommitted, one claim and one delete per batch, at the same batch size, on a
connection with the server settings the library's relay connections use.
Candidate: ``await Outbox(...).drain()`` in this process (and, unless ``--no-cli``, the
``outbox-relay run --until-idle`` process, reported with and without its start-up time).
Baseline and candidate alternate, each on the same freshly loaded table.

Also reports the embedded SQLite relay (``drain()`` on a SQLite file; no baseline).

    python bench/relay_throughput.py [--events 100000] [--rounds 2] [--sqlite-events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

from _common import (
    NOOP_DESTINATION,
    RELAY_SERVER_SETTINGS,
    Result,
    Timer,
    add_common_arguments,
    copy_rows,
    library_statements,
    median,
    noop_handler,
    pending_rows,
    print_table,
    rate,
    raw_connect,
    scratch_postgres,
    scratch_sqlite,
    write_rows,
)

from outbox_events import Outbox

TARGET_RATIO = 0.5
TARGET_RATE = 20_000  # events/s
TARGET_SQLITE_RATE = 5_000  # events/s
LEASE = timedelta(seconds=30)
HERE = os.path.dirname(os.path.abspath(__file__))


def noop(_row: object) -> None:
    """The baseline's destination."""


async def baseline_loop(url: str, batch_size: int) -> int:
    """Claim, 'deliver', delete: the library's statements, by hand, on one connection."""
    statements = library_statements(keep_delivered=False)
    claim, complete = statements["claim"], statements["complete"]
    destinations = [NOOP_DESTINATION]
    connection = await raw_connect(url, server_settings=RELAY_SERVER_SETTINGS)
    delivered = 0
    try:
        while True:
            now = datetime.now(timezone.utc)
            token = uuid.uuid4()
            sql, args = claim(
                now=now,
                destinations=destinations,
                limit=batch_size,
                token=token,
                lease_until=now + LEASE,
            )
            rows = await connection.fetch(sql, *args)
            if not rows:
                return delivered
            for row in rows:
                noop(row)
            sql, args = complete(ids=[row[0] for row in rows], token=token)
            await connection.fetch(sql, *args)
            delivered += len(rows)
    finally:
        await connection.close()


async def load(url: str, outbox: Outbox, events: int) -> None:
    connection = await raw_connect(url)
    try:
        await connection.execute("TRUNCATE outbox_events")
    finally:
        await connection.close()
    await copy_rows(url, pending_rows(outbox, events))


async def run_cli(url: str, batch_size: int) -> float:
    """Wall time of ``outbox-relay run _relay_app:outbox --until-idle`` (a new process)."""
    env = dict(
        os.environ,
        OUTBOX_BENCH_DATABASE_URL=url,
        PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])),
    )
    command = [
        os.path.join(os.path.dirname(sys.executable), "outbox-relay"),
        "run",
        "_relay_app:outbox",
        "--until-idle",
        "--batch-size",
        str(batch_size),
    ]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"outbox-relay failed ({process.returncode}):\n{stderr.decode()}")
    return elapsed


async def postgres(args: argparse.Namespace) -> tuple[list[Result], list[str]]:
    baseline_rates: list[float] = []
    candidate_rates: list[float] = []
    ratios: list[float] = []
    cpu = {"baseline": 0.0, "drain": 0.0}  # client CPU seconds
    cli_walls: list[float] = []
    async with scratch_postgres(args.postgres_url, "throughput") as url:
        outbox = Outbox(url, handlers=[noop_handler()], batch_size=args.batch_size)
        try:
            await outbox.drain()  # warm: pool connection, compiled statements
            for round_ in range(args.rounds):
                speeds: dict[str, float] = {}
                # alternate which goes first, so that a trend in the machine's load cancels
                for which in ("baseline", "drain") if round_ % 2 == 0 else ("drain", "baseline"):
                    await load(url, outbox, args.events)
                    started_cpu = time.process_time()
                    with Timer() as timer:
                        if which == "baseline":
                            delivered = await baseline_loop(url, args.batch_size)
                        else:
                            delivered = (await outbox.drain()).delivered
                    cpu[which] += time.process_time() - started_cpu
                    assert delivered == args.events, (which, delivered)
                    speeds[which] = delivered / timer.seconds
                baseline_rates.append(speeds["baseline"])
                candidate_rates.append(speeds["drain"])
                ratios.append(speeds["drain"] / speeds["baseline"])
                print(
                    f"round {round_ + 1}: baseline {rate(speeds['baseline'])}, "
                    f"drain() {rate(speeds['drain'])}, ratio {ratios[-1]:.2f}",
                    file=sys.stderr,
                )
            if args.cli:
                await load(url, outbox, 0)
                startup = await run_cli(url, args.batch_size)
                await load(url, outbox, args.events)
                cli_walls.append(await run_cli(url, args.batch_size))
        finally:
            await outbox.close()

    base, cand = median(baseline_rates), median(candidate_rates)
    ratio = median(ratios)
    batches = args.rounds * args.events / args.batch_size
    notes = [
        f"client CPU per batch of {args.batch_size}: "
        f"baseline {cpu['baseline'] / batches * 1000:.2f} ms, "
        f"drain() {cpu['drain'] / batches * 1000:.2f} ms",
    ]
    results = [
        Result(
            f"PostgreSQL drain(), {args.events:,} events, batch {args.batch_size}",
            rate(base),
            rate(cand),
            f"{ratio:.2f}x",
            f">= {TARGET_RATIO}x and >= {TARGET_RATE:,}/s",
            ratio >= TARGET_RATIO and cand >= TARGET_RATE,
        )
    ]
    if cli_walls:
        wall = cli_walls[0]
        net = max(wall - startup, 1e-9)
        results.append(
            Result(
                "outbox-relay run --until-idle (process)",
                rate(base),
                f"{rate(args.events / net)} ({rate(args.events / wall)} incl. "
                f"{startup:.1f} s start-up)",
                f"{args.events / net / base:.2f}x",
                f">= {TARGET_RATIO}x and >= {TARGET_RATE:,}/s",
                args.events / net / base >= TARGET_RATIO and args.events / net >= TARGET_RATE,
            )
        )
    return results, notes


async def sqlite(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as directory:
        async with scratch_sqlite(directory, "throughput") as url:
            outbox = Outbox(url, handlers=[noop_handler()], batch_size=args.batch_size)
            try:
                await outbox.drain()
                await write_rows(outbox, pending_rows(outbox, args.sqlite_events))
                with Timer() as timer:
                    result = await outbox.drain()
            finally:
                await outbox.close()
    assert result.delivered == args.sqlite_events, result
    speed = result.delivered / timer.seconds
    return Result(
        f"SQLite embedded drain(), {args.sqlite_events:,} events",
        "-",
        rate(speed),
        "-",
        f">= {TARGET_SQLITE_RATE:,}/s",
        speed >= TARGET_SQLITE_RATE,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--events", type=int, default=100_000, help="events per run")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per claim")
    parser.add_argument(
        "--rounds", type=int, default=2, help="baseline/candidate pairs (median reported)"
    )
    parser.add_argument(
        "--sqlite-events", type=int, default=20_000, help="events for the SQLite run (0: skip)"
    )
    parser.add_argument(
        "--no-cli", dest="cli", action="store_false", help="skip the outbox-relay process run"
    )
    args = parser.parse_args()
    results, notes = await postgres(args)
    if args.sqlite_events:
        results.append(await sqlite(args))
    print_table(
        "relay throughput (1 relay, no-op local handler)",
        results,
        [
            "baseline: asyncpg loop running the library's compiled claim + delete statements",
            f"rates: medians of {args.rounds} rounds; ratio: median of the rounds' paired ratios "
            "(order alternates each round)",
            "process row: one run, wall time minus the start-up of an idle run",
            *notes,
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
