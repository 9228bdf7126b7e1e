"""Operator commands of ``outbox-relay`` (``status``, ``dead-letter list|requeue|purge``,
``purge``) as an operator runs them: a real process against both databases, over rows that a
real relay delivered or dead-lettered.

Rows are made old by moving their timestamps back with SQLAlchemy, never by waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from outbox_events import Event, Outbox, PermanentDeliveryError, RetryPolicy, dispatch
from outbox_events.handlers.local import LocalHandler
from outbox_events.store.tables import DEAD, DELIVERED, PENDING

ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("outbox-relay"))
STATUS_COLUMNS = [
    "destination",
    "pending",
    "in_flight",
    "dead",
    "delivered",
    "oldest_pending_age_s",
]
DEAD_LETTER_FIELDS = {
    "id",
    "event_id",
    "destination",
    "name",
    "key",
    "attempts",
    "last_error",
    "created_at",
    "finished_at",
}


def outbox_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``outbox-relay ARGS`` the way an operator's shell does."""
    return subprocess.run(
        [RELAY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args[1:]} failed:\n{result.stdout}{result.stderr}"
    return result


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclasses.dataclass
class Shop:
    """An outbox with three destinations, and switches that make two of them fail.

    ``audit`` takes every event and always succeeds; ``billing`` takes ``order.*`` and rejects
    for good (``PermanentDeliveryError``); ``mailer`` takes every event and fails with an
    ordinary error, which dead-letters at once because the policy allows a single attempt.
    """

    outbox: Outbox
    url: str
    failing: set[str]
    delivered: list[tuple[str, uuid.UUID]]

    @property
    def table(self) -> sa.Table:
        return self.outbox.store.table

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An operator command against this shop's database, given by ``--database-url``."""
        return outbox_relay(*args, "--database-url", self.url)

    def cli_json(self, *args: str) -> Any:
        return json.loads(succeeded(self.cli(*args, "--json")).stdout)

    async def dispatch(self, *names: str) -> list[uuid.UUID]:
        async with self.outbox.unit_of_work():
            return [dispatch(name, {"n": n}, key=f"k{n}") for n, name in enumerate(names)]

    async def rows(self, *where: Any) -> list[dict[str, Any]]:
        """Every row of the outbox table (optionally filtered), by id."""
        query = sa.select(self.table).where(*where).order_by(self.table.c.id)
        async with self.outbox.engine.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def ids(self, *where: Any) -> list[int]:
        return [row["id"] for row in await self.rows(*where)]

    async def set_times(self, ids: Iterable[int], **columns: datetime) -> None:
        """Move timestamps of the rows ``ids`` (``finished_at=...``, ``created_at=...``)."""
        async with self.outbox.engine.begin() as connection:
            await connection.execute(
                sa.update(self.table).where(self.table.c.id.in_(list(ids))).values(**columns)
            )


def make_shop(make_outbox: Callable[..., Outbox], database_url: str) -> Shop:
    handlers = LocalHandler()
    failing = {"billing", "mailer"}
    delivered: list[tuple[str, uuid.UUID]] = []

    @handlers.register(event_name="*", name="audit")
    async def audit(event: Event) -> None:
        delivered.append(("audit", event.id))

    @handlers.register(event_name="order.*", name="billing")
    async def billing(event: Event) -> None:
        if "billing" in failing:
            raise PermanentDeliveryError(f"card declined for order {event.payload['n']}")
        delivered.append(("billing", event.id))

    @handlers.register(event_name="*", name="mailer")
    async def mailer(event: Event) -> None:
        if "mailer" in failing:
            raise RuntimeError("smtp server down")
        delivered.append(("mailer", event.id))

    outbox = make_outbox(handlers=[handlers], relay="external", retry=RetryPolicy(max_attempts=1))
    return Shop(outbox, database_url, failing, delivered)


@pytest.fixture
async def shop(make_outbox: Callable[..., Outbox], database_url: str) -> Shop:
    """Three orders and two sign-ups, drained once: 5 delivered to audit, 3 dead for billing
    (permanent), 5 dead for mailer (out of attempts)."""
    shop = make_shop(make_outbox, database_url)
    await shop.dispatch("order.placed", "order.placed", "order.paid", "user.signed_up")
    await shop.dispatch("user.deleted")
    result = await shop.outbox.drain()
    assert (result.delivered, result.dead_lettered) == (5, 8), "the setup drain went wrong"
    return shop


def by_destination(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["destination"]: row for row in rows}


# -- status ----------------------------------------------------------------------------------


async def test_status_counts_each_destinations_deliveries_and_the_oldest_pending_age(
    shop: Shop,
) -> None:
    waiting = await shop.dispatch("order.refunded", "order.refunded")
    # the waiting events were written two hours ago (as seen from the command's clock)
    waiting_rows = await shop.ids(shop.table.c.event_id.in_(waiting))
    await shop.set_times(waiting_rows, created_at=utc_now() - timedelta(hours=2))

    report = by_destination(shop.cli_json("status"))

    assert sorted(report) == ["audit", "billing", "mailer"]
    for destination, (pending, dead, delivered) in {
        "audit": (2, 0, 5),
        "billing": (2, 3, 0),
        "mailer": (2, 5, 0),
    }.items():
        row = report[destination]
        assert set(row) == set(STATUS_COLUMNS)
        assert (row["pending"], row["in_flight"], row["dead"], row["delivered"]) == (
            pending,
            0,
            dead,
            delivered,
        ), f"counts of {destination}"
        # two hours, plus however long the command took to start
        assert 7200 <= row["oldest_pending_age_s"] < 7200 + 600, row


async def test_status_reports_no_age_when_nothing_waits(shop: Shop) -> None:
    report = by_destination(shop.cli_json("status"))

    assert report["billing"] == {
        "destination": "billing",
        "pending": 0,
        "in_flight": 0,
        "dead": 3,
        "delivered": 0,
        "oldest_pending_age_s": None,
    }


async def test_status_table_has_a_header_and_one_line_per_destination(shop: Shop) -> None:
    lines = succeeded(shop.cli("status")).stdout.splitlines()

    assert lines[0].split() == STATUS_COLUMNS
    assert [line.split() for line in lines[1:]] == [
        ["audit", "0", "0", "0", "5", "-"],
        ["billing", "0", "0", "3", "0", "-"],
        ["mailer", "0", "0", "5", "0", "-"],
    ]


async def test_status_shows_a_delivery_in_flight_while_a_relay_holds_it(
    make_outbox: Callable[..., Outbox], database_url: str
) -> None:
    handlers = LocalHandler()
    entered, release = asyncio.Event(), asyncio.Event()

    @handlers.register(event_name="report.*", name="slow")
    async def slow(event: Event) -> None:
        entered.set()
        await release.wait()

    outbox = make_outbox(handlers=[handlers], relay="external")
    async with outbox.unit_of_work():
        dispatch("report.ready", {"id": 1})
        dispatch("report.ready", {"id": 2}, key="same")
        dispatch("report.ready", {"id": 3}, key="same")  # waits behind id 2: not claimed yet
    outbox.relay.configure(batch_size=1, concurrency=1)  # one row in flight at a time
    draining = asyncio.ensure_future(outbox.drain())
    await asyncio.wait_for(entered.wait(), 60)
    try:
        during = await asyncio.to_thread(
            outbox_relay, "status", "--json", "--database-url", database_url
        )
    finally:
        release.set()
        result = await draining
    after = await asyncio.to_thread(
        outbox_relay, "status", "--json", "--database-url", database_url
    )

    assert result.delivered == 3
    [slow_row] = json.loads(succeeded(during).stdout)
    assert (slow_row["in_flight"], slow_row["pending"]) == (1, 2), slow_row
    assert slow_row["oldest_pending_age_s"] is not None
    [slow_after] = json.loads(succeeded(after).stdout)
    assert (slow_after["in_flight"], slow_after["pending"], slow_after["delivered"]) == (0, 0, 3)


# -- dead-letter list ------------------------------------------------------------------------


async def test_dead_letter_list_shows_each_dead_delivery_with_its_reason(shop: Shop) -> None:
    listed = shop.cli_json("dead-letter", "list")
    dead = await shop.rows(shop.table.c.state == DEAD)

    assert [row["id"] for row in listed] == [row["id"] for row in dead], "oldest first, all 8"
    for entry, row in zip(listed, dead, strict=True):
        assert set(entry) == DEAD_LETTER_FIELDS
        assert entry["event_id"] == str(row["event_id"])
        assert (entry["destination"], entry["name"], entry["attempts"]) == (
            row["destination"],
            row["name"],
            1,
        )
        assert datetime.fromisoformat(entry["finished_at"]) == row["finished_at"]
        if entry["destination"] == "billing":
            assert entry["last_error"].startswith("PermanentDeliveryError: card declined")
        else:
            assert entry["last_error"] == "RuntimeError: smtp server down"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--destination", "billing"],
            [("billing", "order.placed")] * 2 + [("billing", "order.paid")],
        ),
        (["--name", "user.%"], [("mailer", "user.signed_up"), ("mailer", "user.deleted")]),
        (["--name", "order.paid"], [("billing", "order.paid"), ("mailer", "order.paid")]),
        (["--destination", "mailer", "--name", "%.placed"], [("mailer", "order.placed")] * 2),
        (["--destination", "nobody"], []),
    ],
    ids=["destination", "name-pattern", "exact-name", "both", "no-match"],
)
async def test_dead_letter_list_filters_by_destination_and_name_pattern(
    shop: Shop, options: list[str], expected: list[tuple[str, str]]
) -> None:
    listed = shop.cli_json("dead-letter", "list", *options)

    assert sorted((row["destination"], row["name"]) for row in listed) == sorted(expected)


async def test_dead_letter_list_older_than_shows_only_what_died_long_enough_ago(
    shop: Shop,
) -> None:
    old = await shop.ids(shop.table.c.destination == "billing")
    await shop.set_times(old, finished_at=utc_now() - timedelta(hours=3))

    listed = shop.cli_json("dead-letter", "list", "--older-than", "2h")

    assert [row["id"] for row in listed] == old


async def test_dead_letter_list_pages_with_limit_and_after_id(shop: Shop) -> None:
    dead = await shop.ids(shop.table.c.state == DEAD)  # 8 rows
    pages: list[list[int]] = []
    hints: list[str] = []
    after = "0"
    while True:
        result = succeeded(shop.cli("dead-letter", "list", "--limit", "3", "--after-id", after))
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["id", "event_id", "destination"]
        pages.append([int(line.split()[0]) for line in lines[1:]])
        hints.append(result.stderr.strip())
        if not result.stderr.strip():
            break
        assert len(pages) < 5, "the pages never ended"
        after = result.stderr.strip().removeprefix("more: --after-id ")

    assert pages == [dead[0:3], dead[3:6], dead[6:8]]
    assert hints == [f"more: --after-id {dead[2]}", f"more: --after-id {dead[5]}", ""]


async def test_dead_letter_list_hints_no_more_page_when_the_last_page_is_full(
    shop: Shop,
) -> None:
    dead = await shop.ids(shop.table.c.state == DEAD)  # 8 rows: two full pages of 4

    first = succeeded(shop.cli("dead-letter", "list", "--limit", "4", "--json"))
    second = succeeded(
        shop.cli("dead-letter", "list", "--limit", "4", "--json", "--after-id", str(dead[3]))
    )

    assert [row["id"] for row in json.loads(first.stdout)] == dead[:4]
    assert first.stderr.strip() == f"more: --after-id {dead[3]}"
    assert [row["id"] for row in json.loads(second.stdout)] == dead[4:]
    assert "more" not in second.stderr, "no page follows the last one"


async def test_dead_letter_list_table_keeps_one_line_per_delivery(shop: Shop) -> None:
    [row] = await shop.ids(shop.table.c.destination == "billing", shop.table.c.name == "order.paid")
    async with shop.outbox.engine.begin() as connection:
        await connection.execute(
            sa.update(shop.table)
            .where(shop.table.c.id == row)
            .values(last_error="Traceback:\n  line 1\nValueError: bad\tthing")
        )

    lines = succeeded(shop.cli("dead-letter", "list", "--destination", "billing")).stdout
    table = lines.splitlines()

    assert table[0].split() == [
        "id",
        "event_id",
        "destination",
        "name",
        "attempts",
        "finished_at",
        "last_error",
    ]
    assert len(table) == 4, "one line per dead delivery, multi-line errors flattened"
    [paid] = [line for line in table if " order.paid " in line]
    assert "Traceback: line 1 ValueError: bad thing" in paid
    assert all("card declined" in line for line in table[1:] if line is not paid)


# -- dead-letter requeue ---------------------------------------------------------------------


async def test_requeue_by_row_id_and_by_event_id_gives_fresh_attempts(shop: Shop) -> None:
    billing_paid = await shop.rows(
        shop.table.c.destination == "billing", shop.table.c.name == "order.paid"
    )
    signed_up = await shop.rows(shop.table.c.name == "user.signed_up", shop.table.c.state == DEAD)
    [row_id] = [row["id"] for row in billing_paid]
    [event_id] = [row["event_id"] for row in signed_up]

    result = succeeded(
        shop.cli("dead-letter", "requeue", "--id", str(row_id), "--id", str(event_id))
    )

    assert "requeued 2 " in result.stdout
    requeued = await shop.rows(shop.table.c.state == PENDING)
    assert sorted(row["id"] for row in requeued) == sorted(
        [row_id, *(row["id"] for row in signed_up)]
    )
    assert all(row["attempts"] == 0 and row["finished_at"] is None for row in requeued)
    assert len(await shop.rows(shop.table.c.state == DEAD)) == 6


async def test_requeue_by_destination_leaves_other_destinations_dead(shop: Shop) -> None:
    result = succeeded(shop.cli("dead-letter", "requeue", "--destination", "billing"))

    assert "requeued 3 " in result.stdout
    report = by_destination(shop.cli_json("status"))
    assert (report["billing"]["pending"], report["billing"]["dead"]) == (3, 0)
    assert (report["mailer"]["pending"], report["mailer"]["dead"]) == (0, 5)


async def test_requeued_deliveries_are_delivered_by_the_next_drain(shop: Shop) -> None:
    shop.failing.clear()  # the outage is over
    before = len(shop.delivered)

    requeue = succeeded(shop.cli("dead-letter", "requeue", "--all"))
    result = await shop.outbox.drain()

    assert "requeued 8 " in requeue.stdout
    assert result.delivered == 8 and result.dead_lettered == 0
    assert sorted(d for d, _ in shop.delivered[before:]) == ["billing"] * 3 + ["mailer"] * 5
    assert shop.cli_json("dead-letter", "list") == []
    report = by_destination(shop.cli_json("status"))
    assert {name: row["delivered"] for name, row in report.items()} == {
        "audit": 5,
        "billing": 3,
        "mailer": 5,
    }


async def test_requeue_through_the_apps_outbox(
    make_outbox: Callable[..., Outbox], database_url: str, tmp_path: Path
) -> None:
    """``APP`` instead of ``--database-url``: the relay's own app module names the database."""
    handlers = LocalHandler()

    @handlers.register(event_name="*", name="recorder")
    async def recorder(event: Event) -> None:
        raise PermanentDeliveryError("not yet")

    outbox = make_outbox(handlers=[handlers], relay="external")
    async with outbox.unit_of_work():
        event_id = dispatch("invoice.sent", {"n": 1})
    await outbox.drain()
    received = tmp_path / "received.jsonl"
    env = {"ACCEPTANCE_DATABASE_URL": database_url, "ACCEPTANCE_RECEIVED": str(received)}
    app = "tests.acceptance.relay_app:outbox"

    requeue = outbox_relay("dead-letter", "requeue", app, "--id", str(event_id), env=env)
    run = outbox_relay("run", app, "--until-idle", env=env)

    assert "requeued 1 " in succeeded(requeue).stdout
    succeeded(run)
    assert [json.loads(line)["id"] for line in received.read_text().splitlines()] == [str(event_id)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "say which: --id ..., --destination NAME or --all"),
        (["--id", "not-an-id"], "'not-an-id' is neither a row id nor an event id"),
        (["--id", "²"], "is neither a row id nor an event id"),
        (["--id", "99999999999999999999"], "is neither a row id nor an event id"),
    ],
    ids=["no-selector", "garbage-id", "unicode-digit", "huge-id"],
)
async def test_requeue_refuses_unclear_requests_with_a_usage_error(
    shop: Shop, options: list[str], message: str
) -> None:
    result = shop.cli("dead-letter", "requeue", *options)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(await shop.rows(shop.table.c.state == DEAD)) == 8, "nothing was requeued"


# -- purge -----------------------------------------------------------------------------------


async def test_dead_letter_purge_deletes_only_dead_rows_older_than_the_age(shop: Shop) -> None:
    long_ago = utc_now() - timedelta(days=10)
    old_dead = await shop.ids(shop.table.c.destination == "billing")
    old_delivered = await shop.ids(shop.table.c.destination == "audit")
    await shop.set_times([*old_dead, *old_delivered], finished_at=long_ago)

    result = succeeded(shop.cli("dead-letter", "purge", "--older-than", "7d"))

    assert result.stdout.startswith("purged 3 dead row(s) finished before ")
    remaining = await shop.rows()
    assert not {row["id"] for row in remaining} & set(old_dead)
    assert {row["id"] for row in remaining if row["state"] == DELIVERED} == set(old_delivered)
    assert len([row for row in remaining if row["state"] == DEAD]) == 5


async def test_purge_deletes_old_delivered_rows_by_default_and_dead_rows_when_asked(
    shop: Shop,
) -> None:
    long_ago = utc_now() - timedelta(hours=5)
    await shop.set_times(
        await shop.ids(shop.table.c.destination == "billing"),
        finished_at=utc_now() - timedelta(minutes=10),
    )
    every_finished = await shop.ids(shop.table.c.destination.in_(["audit", "mailer"]))
    await shop.set_times(every_finished, finished_at=long_ago)
    waiting = await shop.dispatch("order.placed")  # pending rows are never purged
    waiting_rows = await shop.ids(shop.table.c.event_id.in_(waiting))
    await shop.set_times(waiting_rows, created_at=long_ago)

    delivered = succeeded(shop.cli("purge", "--older-than", "4h"))
    states_after_default = sorted({row["state"] for row in await shop.rows()})
    dead = succeeded(shop.cli("purge", "--older-than", "4h", "--state", "dead"))
    both = succeeded(
        shop.cli("purge", "--older-than", "1m", "--state", "dead", "--state", "delivered")
    )

    assert delivered.stdout.startswith("purged 5 delivered row(s)")
    assert states_after_default == [DEAD, PENDING]
    assert dead.stdout.startswith("purged 5 dead row(s)"), "mailer's old dead rows"
    assert both.stdout.startswith("purged 3 dead/delivered row(s)"), "billing's recent dead rows"
    assert [row["state"] for row in await shop.rows()] == [PENDING] * 3


async def test_purge_rejects_an_unknown_state(shop: Shop) -> None:
    result = shop.cli("purge", "--older-than", "1h", "--state", "pending")

    assert result.returncode == 2
    assert "'pending' is not one of 'delivered', 'dead'" in result.stderr


# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "length"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
async def test_older_than_understands_durations(
    shop: Shop, duration: str, length: timedelta
) -> None:
    older, newer = await shop.ids(
        shop.table.c.destination == "billing", shop.table.c.name == "order.placed"
    )
    now = utc_now()
    # one row died half as long again ago as the duration, the other half as long ago
    await shop.set_times([older], finished_at=now - length * 1.5)
    await shop.set_times([newer], finished_at=now - length / 2)

    listed = shop.cli_json(
        "dead-letter", "list", "--older-than", duration, "--destination", "billing"
    )

    assert [row["id"] for row in listed] == [older]


@pytest.mark.parametrize(
    "command",
    [
        ["dead-letter", "list"],
        ["dead-letter", "purge"],
        ["purge"],
    ],
    ids=["list", "dead-letter-purge", "purge"],
)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "'soon' is not a duration such as 90s, 15m, 12h or 7d"),
        ("15x", "'15x' is not a duration"),
        ("-2h", "'-2h' is not a duration"),
        ("", "'' is not a duration"),
        ("99999999999d", "longer than"),
    ],
    ids=["word", "unit", "negative", "empty", "too-long"],
)
def test_a_bad_duration_is_a_usage_error_that_says_what_is_expected(
    command: list[str], value: str, message: str
) -> None:
    result = outbox_relay(*command, "--older-than", value, "--database-url", "sqlite+aiosqlite://")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Invalid value for '--older-than'" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_operator_commands_show_their_environment_variables_in_help() -> None:
    for command in (["status"], ["dead-letter", "list"], ["dead-letter", "requeue"], ["purge"]):
        help_text = succeeded(outbox_relay(*command, "--help")).stdout
        for variable in ("OUTBOX_DATABASE_URL", "OUTBOX_TABLE", "OUTBOX_SCHEMA"):
            assert variable in help_text, f"{variable} missing from {command} --help"


async def test_database_url_may_come_from_the_environment(shop: Shop) -> None:
    result = outbox_relay("dead-letter", "list", "--json", env={"OUTBOX_DATABASE_URL": shop.url})

    assert len(json.loads(succeeded(result).stdout)) == 8


# -- bulk operations -------------------------------------------------------------------------


async def test_bulk_requeue_and_purge_report_progress_per_chunk(
    make_outbox: Callable[..., Outbox], database_url: str
) -> None:
    shop = make_shop(make_outbox, database_url)
    shop.failing.discard("mailer")
    async with shop.outbox.unit_of_work():
        for n in range(1001):
            dispatch("order.placed", {"n": n})
    shop.outbox.relay.configure(batch_size=1000)
    first = await shop.outbox.drain()
    assert first.dead_lettered == 1001

    requeue = succeeded(shop.cli("dead-letter", "requeue", "--destination", "billing"))
    second = await shop.outbox.drain()  # still failing: dead again
    await shop.set_times(
        await shop.ids(shop.table.c.state == DEAD), finished_at=utc_now() - timedelta(days=2)
    )
    purge = succeeded(shop.cli("dead-letter", "purge", "--older-than", "1d"))

    assert requeue.stderr.splitlines() == ["requeued 1000 ...", "requeued 1001 ..."]
    assert requeue.stdout.strip() == "requeued 1001 delivery(ies)"
    assert second.dead_lettered == 1001
    assert purge.stderr.splitlines() == ["purged 1000 ...", "purged 1001 ..."]
    assert purge.stdout.startswith("purged 1001 dead row(s)")
    assert {row["destination"] for row in await shop.rows()} == {"audit", "mailer"}


async def test_store_requeue_and_purge_work_in_chunks(shop: Shop) -> None:
    store = shop.outbox.store
    requeued: list[int] = []
    purged: list[int] = []

    requeue_count = await store.requeue(
        now=utc_now(), destination="mailer", chunk=2, on_progress=requeued.append
    )
    await shop.outbox.drain()  # mailer still fails: dead again, finished now
    purge_count = await store.purge(
        states=[DEAD],
        finished_before=utc_now() + timedelta(seconds=1),
        chunk=3,
        on_progress=purged.append,
    )

    assert (requeue_count, requeued) == (5, [2, 4, 5])
    assert (purge_count, purged) == (8, [3, 6, 8])
    assert await shop.rows(shop.table.c.state == DEAD) == []
