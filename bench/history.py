"""Relay throughput with a long history of delivered rows kept in the table, vs an empty table.

Two scratch databases, both used through ``Outbox(retention=7 days)`` so that delivered rows
stay in the table (state 'delivered'): one starts empty, the other holds ``--history`` delivered
rows (inserted with ``INSERT ... SELECT generate_series``, then ``VACUUM ANALYZE``). Each round
loads ``--events`` pending rows (made by ``Outbox.rows_for``, loaded with COPY) into both and
times ``drain()`` on each in turn, alternating which goes first; afterwards the round's rows are
deleted again so every round starts from the same table.

    python bench/history.py [--history 1000000] [--events 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from _common import (
    Result,
    Timer,
    add_common_arguments,
    copy_rows,
    median,
    noop_handler,
    pending_rows,
    print_table,
    rate,
    raw_connect,
    scratch_postgres,
)

from outbox_events import Outbox

TARGET_RATIO = 0.9
RETENTION = timedelta(days=7)

HISTORY_SQL = """
INSERT INTO outbox_events (event_id, destination, name, payload, key, headers, trace_context,
                           created_at, state, attempts, available_at, lease_token, last_error,
                           finished_at)
SELECT gen_random_uuid(), $2, 'bench.event',
       '{"order_id": ' || g || ', "total": "10.00"}', NULL, NULL, NULL,
       now() - interval '2 days' + g * interval '1 ms', 'delivered', 1,
       now() - interval '2 days' + g * interval '1 ms', NULL, NULL,
       now() - interval '2 days' + g * interval '1 ms'
FROM generate_series(1, $1) AS g
"""


async def fill_history(url: str, rows: int, destination: str) -> int:
    """Insert ``rows`` delivered rows; return the highest id (rows above it are the bench's)."""
    connection = await raw_connect(url)
    try:
        if rows:
            await connection.execute(HISTORY_SQL, rows, destination)
        await connection.execute("VACUUM ANALYZE outbox_events")
        return int(await connection.fetchval("SELECT coalesce(max(id), 0) FROM outbox_events"))
    finally:
        await connection.close()


async def reset(url: str, above: int) -> None:
    connection = await raw_connect(url)
    try:
        await connection.execute("DELETE FROM outbox_events WHERE id > $1", above)
        await connection.execute("VACUUM ANALYZE outbox_events")
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--history", type=int, default=1_000_000, help="delivered rows kept")
    parser.add_argument("--events", type=int, default=50_000, help="pending events per run")
    parser.add_argument("--rounds", type=int, default=3, help="empty/history pairs (medians)")
    args = parser.parse_args()

    empty_rates: list[float] = []
    history_rates: list[float] = []
    ratios: list[float] = []
    async with (
        scratch_postgres(args.postgres_url, "empty") as empty_url,
        scratch_postgres(args.postgres_url, "history") as history_url,
    ):
        outboxes = {
            url: Outbox(url, handlers=[noop_handler()], retention=RETENTION)
            for url in (empty_url, history_url)
        }
        try:
            destination = next(iter(outboxes[empty_url].destinations))
            with Timer() as timer:
                history_top = await fill_history(history_url, args.history, destination)
            print(
                f"history: {args.history:,} delivered rows in {timer.seconds:.1f} s",
                file=sys.stderr,
            )
            tops = {
                empty_url: await fill_history(empty_url, 0, destination),
                history_url: history_top,
            }
            for outbox in outboxes.values():
                await outbox.drain()  # warm
            for round_ in range(args.rounds):
                order = [empty_url, history_url] if round_ % 2 == 0 else [history_url, empty_url]
                speeds: dict[str, float] = {}
                for url in order:
                    outbox = outboxes[url]
                    await copy_rows(url, pending_rows(outbox, args.events))
                    with Timer() as timer:
                        result = await outbox.drain()
                    assert result.delivered == args.events, result
                    speeds[url] = result.delivered / timer.seconds
                    await reset(url, tops[url])
                empty_rates.append(speeds[empty_url])
                history_rates.append(speeds[history_url])
                ratios.append(speeds[history_url] / speeds[empty_url])
                print(
                    f"round {round_ + 1}: empty {rate(empty_rates[-1])}, "
                    f"history {rate(history_rates[-1])}, ratio {ratios[-1]:.2f}",
                    file=sys.stderr,
                )
        finally:
            for outbox in outboxes.values():
                await outbox.close()

    ratio = median(ratios)
    print_table(
        "relay throughput with retained history",
        [
            Result(
                f"drain() {args.events:,} events, {args.history:,} delivered rows kept",
                f"{rate(median(empty_rates))} (empty table)",
                rate(median(history_rates)),
                f"{ratio:.2f}x",
                f">= {TARGET_RATIO}x",
                ratio >= TARGET_RATIO,
            )
        ],
        [
            "Outbox(retention=7 days): delivered rows are updated to 'delivered', not deleted",
            f"ratio = median of {args.rounds} paired rounds (order alternates each round)",
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
