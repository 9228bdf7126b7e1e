"""Where a relay batch spends its client CPU: claim, deliver, settle (a diagnostic, no target).

Runs the same workload as ``relay_throughput.py`` and wraps, inside this script only, the
store's ``claim``/``settle`` and the relay's ``deliver`` with ``time.process_time()`` counters
(the relay runs with ``concurrency=1`` here, one batch at a time, so CPU spent while one of
them is awaited belongs to it).
The raw asyncpg loop running the library's own SQL is measured the same way. CPU, unlike wall
time, hardly depends on how busy the shared machine is, so this is the number to watch when
changing the relay's hot path.

    python bench/relay_profile.py [--events 30000] [--rounds 3]

For a sampling profile of the same run: ``py-spy record -r 500 -i -f raw -o relay.raw --
python bench/relay_profile.py`` (``pip install py-spy``; not a project dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from _common import (
    NOOP_DESTINATION,
    RELAY_SERVER_SETTINGS,
    Result,
    add_common_arguments,
    library_statements,
    noop_handler,
    print_table,
    raw_connect,
    scratch_postgres,
)
from relay_throughput import LEASE, load

from outbox_events import Outbox
from outbox_events.relay import worker

cpu: collections.Counter[str] = collections.Counter()


def counted(name: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return await function(*args, **kwargs)
        finally:
            cpu[name] += time.process_time() - started

    return wrapper


async def baseline(url: str, batch_size: int) -> None:
    statements = library_statements(keep_delivered=False)
    claim, complete = statements["claim"], statements["complete"]
    connection = await raw_connect(url, server_settings=RELAY_SERVER_SETTINGS)
    try:
        while True:
            now = datetime.now(timezone.utc)
            token = uuid.uuid4()
            started = time.process_time()
            sql, args = claim(
                now=now,
                destinations=[NOOP_DESTINATION],
                limit=batch_size,
                token=token,
                lease_until=now + LEASE,
            )
            rows = await connection.fetch(sql, *args)
            claimed = time.process_time()
            cpu["baseline claim"] += claimed - started
            if not rows:
                return
            sql, args = complete(ids=[row[0] for row in rows], token=token)
            await connection.fetch(sql, *args)
            cpu["baseline settle"] += time.process_time() - claimed
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--events", type=int, default=30_000, help="events per run")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per claim")
    parser.add_argument("--rounds", type=int, default=3, help="baseline/library pairs")
    args = parser.parse_args()

    async with scratch_postgres(args.postgres_url, "profile") as url:
        # One batch in flight at a time, so that CPU spent while a phase is awaited is its own.
        outbox = Outbox(url, handlers=[noop_handler()], batch_size=args.batch_size, concurrency=1)
        store = outbox.store
        original_deliver = worker.deliver
        try:
            await outbox.drain()
            store.claim = counted("claim", store.claim)  # type: ignore[method-assign]
            store.settle = counted("settle", store.settle)  # type: ignore[method-assign]
            worker.deliver = counted("deliver", original_deliver)  # type: ignore[assignment]
            for _ in range(args.rounds):
                await load(url, outbox, args.events)
                started = time.process_time()
                await baseline(url, args.batch_size)
                cpu["baseline total"] += time.process_time() - started
                await load(url, outbox, args.events)
                started = time.process_time()
                await outbox.drain()
                cpu["drain total"] += time.process_time() - started
        finally:
            worker.deliver = original_deliver  # type: ignore[assignment]
            await outbox.close()

    batches = args.rounds * args.events / args.batch_size

    def per_batch(name: str) -> float:
        return cpu[name] / batches * 1000

    rest = per_batch("drain total") - sum(per_batch(n) for n in ("claim", "deliver", "settle"))
    rows = [
        ("claim", per_batch("baseline claim"), per_batch("claim")),
        ("deliver (to_event, tasks, handler)", 0.0, per_batch("deliver")),
        ("settle", per_batch("baseline settle"), per_batch("settle")),
        ("relay loop, outcomes", 0.0, rest),
        ("total", per_batch("baseline total"), per_batch("drain total")),
    ]
    print_table(
        f"client CPU per batch of {args.batch_size} (ms; diagnostic, no target)",
        [
            Result(
                name,
                f"{base:.2f} ms",
                f"{lib:.2f} ms",
                f"{lib / base:.1f}x" if base else "-",
                "-",
                None,
            )
            for name, base, lib in rows
        ],
        ["baseline: raw asyncpg loop, library's SQL; candidate: Outbox.drain()"],
    )


if __name__ == "__main__":
    asyncio.run(main())
