"""What NOTIFY costs the writers: commits/s of concurrent writers with NOTIFY on vs off.

``--writers`` tasks (one process, one ``Outbox(relay="external")`` whose pool holds one
connection per writer) each loop ``async with outbox.unit_of_work(): dispatch(...)``: one event,
one transaction (INSERT and its NOTIFY, COMMIT). "Off" is the same Outbox with NOTIFY switched
off inside this script only: the store's ``_notify`` statement set to None where the store sends
``pg_notify`` itself, and the table's notify trigger disabled where migration 0002 installed
one (``ALTER TABLE ... DISABLE TRIGGER USER``). A raw asyncpg connection LISTENs on the outbox
channel throughout, as a relay would. Runs of
``--seconds`` alternate on/off (the order flips every round); the table is emptied between runs.

    python bench/notify_overhead.py [--writers 32] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from _common import (
    Result,
    add_common_arguments,
    median,
    noop_handler,
    print_table,
    rate,
    raw_connect,
    scratch_postgres,
)

from outbox_events import Outbox, dispatch

TARGET_RATIO = 0.9


async def measure(outbox: Outbox, writers: int, seconds: float) -> float:
    """Commits per second of ``writers`` concurrent tasks over ``seconds``."""
    deadline = time.perf_counter() + seconds
    counts = [0] * writers

    async def writer(index: int) -> None:
        sequence = 0
        while time.perf_counter() < deadline:
            async with outbox.unit_of_work():
                dispatch("bench.write", {"writer": index, "sequence": sequence})
            sequence += 1
        counts[index] = sequence

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return sum(counts) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--writers", type=int, default=32, help="concurrent writer tasks")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs (medians)")
    args = parser.parse_args()

    on_rates: list[float] = []
    off_rates: list[float] = []
    ratios: list[float] = []
    notifications = 0
    async with scratch_postgres(args.postgres_url, "notify") as url:
        outbox = Outbox(
            url,
            handlers=[noop_handler()],
            relay="external",
            engine_options={"pool_size": args.writers, "max_overflow": 0},
        )
        notify_statement = getattr(outbox.store, "_notify", None)
        listener = await raw_connect(url)
        admin = await raw_connect(url)
        triggers = await admin.fetchval(
            "SELECT count(*) FROM pg_trigger "
            "WHERE tgrelid = 'outbox_events'::regclass AND NOT tgisinternal"
        )
        if notify_statement is None and not triggers:
            print("this outbox sends no NOTIFY (no _notify statement, no trigger)", file=sys.stderr)

        async def switch(notify: bool) -> None:
            if notify_statement is not None:
                outbox.store._notify = notify_statement if notify else None
            if triggers:
                verb = "ENABLE" if notify else "DISABLE"
                await admin.execute(f"ALTER TABLE outbox_events {verb} TRIGGER USER")

        def notified(*_args: object) -> None:
            nonlocal notifications
            notifications += 1

        await listener.add_listener(outbox.store.channel, notified)
        try:
            await measure(outbox, args.writers, 0.5)  # warm: open the pool's connections
            for round_ in range(args.rounds):
                speeds: dict[bool, float] = {}
                for notify in (True, False) if round_ % 2 == 0 else (False, True):
                    await switch(notify)
                    await admin.execute("TRUNCATE outbox_events")
                    speeds[notify] = await measure(outbox, args.writers, args.seconds)
                on_rates.append(speeds[True])
                off_rates.append(speeds[False])
                ratios.append(speeds[True] / speeds[False])
                print(
                    f"round {round_ + 1}: notify on {rate(speeds[True])}, "
                    f"off {rate(speeds[False])}, ratio {ratios[-1]:.2f}",
                    file=sys.stderr,
                )
        finally:
            await switch(True)
            await listener.close()
            await admin.close()
            await outbox.close()

    ratio = median(ratios)
    print_table(
        "writer commits/s with NOTIFY on vs off",
        [
            Result(
                f"{args.writers} writers, unit_of_work() + 1 dispatch per commit",
                f"{rate(median(off_rates))} (NOTIFY off)",
                f"{rate(median(on_rates))} (NOTIFY on)",
                f"{ratio:.2f}x",
                f">= {TARGET_RATIO}x",
                ratio >= TARGET_RATIO,
            )
        ],
        [
            "NOTIFY sent by: "
            + ", ".join(
                what
                for what, present in (
                    ("store's pg_notify statement", notify_statement is not None),
                    (f"{triggers} table trigger(s)", bool(triggers)),
                )
                if present
            ),
            f"ratio = median of {args.rounds} paired {args.seconds:.0f} s runs; a listener "
            f"connection received {notifications:,} notifications",
            "writers share one Python process (2 cores): see docs/benchmarks.md for what bounds it",
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
