"""Helpers shared by the benchmark scripts: scratch databases, the library's own SQL compiled
for a raw asyncpg baseline, fast bulk inserts, statistics and the result table.

Not part of the library; nothing here is imported by ``outbox_events``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from outbox_events import Outbox
from outbox_events.store import queries
from outbox_events.store.tables import outbox_table

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://outbox:outbox@127.0.0.1:5432/outbox"
POSTGRES_URL_VARIABLE = "OUTBOX_BENCH_POSTGRES_URL"
TABLE = "outbox_events"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL),
        help="admin URL of a PostgreSQL server whose role may CREATE DATABASE; scratch "
        f"databases are created and dropped there (env {POSTGRES_URL_VARIABLE}; "
        f"default {DEFAULT_POSTGRES_URL})",
    )


# -- scratch databases ---------------------------------------------------------------------


async def raw_connect(url: str, **options: Any) -> Any:
    """A plain asyncpg connection to the database of a SQLAlchemy URL (``options`` go to
    ``asyncpg.connect``)."""
    import asyncpg

    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
        **options,
    )


@contextlib.asynccontextmanager
async def scratch_postgres(admin_url: str, label: str) -> AsyncIterator[str]:
    """Create a fresh database, migrate the outbox table into it, yield its URL, drop it."""
    name = f"outbox_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await raw_connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        outbox = Outbox(url)
        try:
            await outbox.migrate()
        finally:
            await outbox.close()
        yield url
    finally:
        admin = await raw_connect(admin_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def scratch_sqlite(directory: str, label: str) -> AsyncIterator[str]:
    """A fresh, migrated SQLite file under ``directory``; removed afterwards."""
    path = os.path.join(directory, f"outbox_bench_{label}_{os.getpid()}.db")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
    url = f"sqlite+aiosqlite:///{path}"
    outbox = Outbox(url)
    try:
        await outbox.migrate()
    finally:
        await outbox.close()
    try:
        yield url
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)


# -- bulk inserts ------------------------------------------------------------------------------

ROW_COLUMNS = (
    "event_id",
    "destination",
    "name",
    "payload",
    "key",
    "headers",
    "trace_context",
    "created_at",
    "state",
    "attempts",
    "available_at",
)


def pending_rows(outbox: Outbox, count: int, name: str = "bench.event") -> list[dict[str, Any]]:
    """``count`` events as the library would store them: ``PendingEvent``s turned into rows by
    ``Outbox.rows_for`` (one per destination that takes ``name``)."""
    from outbox_events.ids import uuid7
    from outbox_events.unit_of_work import PendingEvent

    now = datetime.now(timezone.utc)
    events = [
        PendingEvent(
            id=uuid7(),
            name=name,
            payload=f'{{"order_id": {i}, "total": "10.00"}}',
            key=None,
            headers=None,
            trace_context=None,
            created_at=now,
            available_at=now,
        )
        for i in range(count)
    ]
    return outbox.rows_for(events)


async def copy_rows(url: str, rows: Sequence[dict[str, Any]]) -> None:
    """Load rows made by ``Outbox.rows_for`` with COPY (PostgreSQL)."""
    connection = await raw_connect(url)
    try:
        await connection.copy_records_to_table(
            TABLE,
            records=[tuple(row[c] for c in ROW_COLUMNS) for row in rows],
            columns=ROW_COLUMNS,
        )
        await connection.execute(f"VACUUM ANALYZE {TABLE}")
    finally:
        await connection.close()


async def write_rows(outbox: Outbox, rows: Sequence[dict[str, Any]], chunk: int = 5000) -> None:
    """Insert rows through the library's own store (any dialect)."""
    for start in range(0, len(rows), chunk):
        await outbox.store.write(rows[start : start + chunk])


# -- the library's SQL, for a hand-written asyncpg loop ------------------------------------------

_EXPANDED = re.compile(r"^(?P<name>\w+?)_(?P<index>\d+)$")


class CompiledStatement:
    """One statement of ``outbox_events.store.queries`` compiled for asyncpg, exactly as
    SQLAlchemy sends it (expanding ``IN`` lists rendered per list length and cached)."""

    def __init__(self, statement: sa.Executable, expanding: Sequence[str] = ()) -> None:
        self.compiled = statement.compile(dialect=postgresql.asyncpg.dialect())
        self.expanding = tuple(expanding)
        self._cache: dict[tuple[int, ...], tuple[str, list[str]]] = {}

    def __call__(self, **values: Any) -> tuple[str, list[Any]]:
        """The SQL text and the positional arguments for ``values``."""
        shape = tuple(len(values[name]) for name in self.expanding)
        cached = self._cache.get(shape)
        if cached is None:
            state = self.compiled.construct_expanded_state(values)
            cached = (state.statement, list(state.positiontup or ()))
            self._cache[shape] = cached
        sql, names = cached
        defaults = self.compiled.params
        args = []
        for name in names:
            if name in values:
                args.append(values[name])
                continue
            match = _EXPANDED.match(name)
            if match and match["name"] in self.expanding:
                args.append(values[match["name"]][int(match["index"]) - 1])
            else:
                args.append(defaults[name])
        return sql, args


# What the library's relay connections set (``store/engine.py: create_relay_engine``); the
# hand-written baselines use the same, so that they compare code, not server settings.
RELAY_SERVER_SETTINGS = {"synchronous_commit": "off"}


def library_statements(keep_delivered: bool = False) -> dict[str, CompiledStatement]:
    """The claim and settle statements the library runs for a no-op destination."""
    table = outbox_table(TABLE)
    complete = (
        queries.complete(table, "postgresql")
        if keep_delivered
        else queries.delete_completed(table, "postgresql")
    )
    return {
        "claim": CompiledStatement(queries.claim(table, "postgresql")),
        "complete": CompiledStatement(complete),
    }


# -- measuring and reporting ------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass
class Result:
    """One line of the result table."""

    name: str
    baseline: str
    candidate: str
    ratio: str
    target: str
    passed: bool | None  # None: informational, no target

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")


def print_table(title: str, results: Sequence[Result], notes: Sequence[str] = ()) -> None:
    header = ("benchmark", "baseline", "candidate", "ratio", "target", "result")
    rows = [header] + [
        (r.name, r.baseline, r.candidate, r.ratio, r.target, r.verdict) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    print(f"{title}  ({machine()})")
    line = "  ".join("-" * w for w in widths)
    print(line)
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if index == 0:
            print(line)
    print(line)
    for note in notes:
        print(f"  {note}")


def machine() -> str:
    return (
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


# -- destinations --------------------------------------------------------------------------------

NOOP_DESTINATION = "bench.noop"


def noop_handler(name: str = NOOP_DESTINATION) -> Any:
    """A ``LocalHandler`` with one async no-op function, the destination ``name``."""
    from outbox_events.handlers.local import LocalHandler

    handler = LocalHandler()

    async def noop(event: Any) -> None:
        """Does nothing: the benchmark measures the relay, not the destination."""

    handler.register(noop, event_name="*", name=name)
    return handler
