"""Shared fixtures: real databases for every test that needs one.

``database_url`` runs a test once on a fresh SQLite file and once on a fresh PostgreSQL database
(cloned from a migrated template). PostgreSQL comes from ``OUTBOX_TEST_POSTGRES_URL``, which
``make test`` sets after making sure the server is up.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url

from outbox_events import Outbox

T = TypeVar("T")

POSTGRES_URL_VARIABLE = "OUTBOX_TEST_POSTGRES_URL"
DATABASES = ("sqlite", "postgres")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous fixture code on a private event loop (asyncio.run
    would reset the loop that pytest-asyncio keeps for the async tests)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.fail(
            f"{POSTGRES_URL_VARIABLE} is not set: run the suite with `make test`, which starts "
            "PostgreSQL and sets it",
            pytrace=False,
        )
    return url


async def _admin(url: str, *statements: str) -> None:
    import asyncpg

    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    outbox = Outbox(url)
    try:
        await outbox.migrate()
    finally:
        await outbox.close()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated PostgreSQL database that per-test databases are cloned from."""
    admin = postgres_admin_url()
    name = f"outbox_template_{os.getpid()}"
    run_sync(_admin(admin, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    run_sync(_migrate(make_url(admin).set(database=name).render_as_string(False)))
    yield name
    run_sync(_admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that per-test databases are copied from."""
    path = tmp_path_factory.mktemp("template") / "outbox.db"
    run_sync(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, migrated database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "outbox.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    admin = postgres_admin_url()
    name = f"outbox_test_{uuid.uuid4().hex[:16]}"
    run_sync(_admin(admin, f"CREATE DATABASE {name} TEMPLATE {template}"))
    yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    run_sync(_admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_database_url(database_url: str) -> str:
    """The test database without the outbox table (as before any migration)."""

    async def drop() -> None:
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(database_url)
        async with engine.begin() as connection:
            await connection.execute(sa.text("DROP TABLE outbox_events"))
            await connection.execute(sa.text("DROP TABLE outbox_events_alembic_version"))
            if engine.dialect.name == "postgresql":
                await connection.execute(sa.text("DROP FUNCTION outbox_events_notify()"))
        await engine.dispose()

    run_sync(drop())
    return database_url


@pytest.fixture
async def make_outbox(database_url: str) -> AsyncIterator[Callable[..., Outbox]]:
    """Build Outboxes over the test's database; all are closed when the test ends.

    Unless a test says otherwise, delivered rows are kept (``retention``) so that tests can
    inspect their final state; ``test_delivery`` covers the default, which deletes them.
    """
    made: list[Outbox] = []

    def make(**options: Any) -> Outbox:
        options.setdefault("retention", timedelta(days=1))
        outbox = Outbox(database_url, **options)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        await outbox.close()


# -- per-database counts in the summary ------------------------------------------------------

_outcomes: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    database = "no database"
    for name in DATABASES:
        if (
            f"[{name}" in report.nodeid
            or f"-{name}]" in report.nodeid
            or f"-{name}-" in report.nodeid
        ):
            database = name
    counts = _outcomes.setdefault(database, {})
    counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("tests per database")
    for database in (*DATABASES, "no database"):
        counts = _outcomes.get(database, {})
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"
        terminalreporter.write_line(f"{database}: {text}")
