"""Engines for the two supported databases, and what differs between them."""

from __future__ import annotations

import importlib.util
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox_events.exceptions import ConfigurationError

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for the lock
# Execution options of SQLite connections: one that runs a single statement, in autocommit
# (no BEGIN); the statement that begins a transaction (default "BEGIN", i.e. deferred).
SINGLE_STATEMENT = "outbox_events_single_statement"
BEGIN = "outbox_events_begin"
DRIVERS = {"postgresql": ("asyncpg", "postgres"), "sqlite": ("aiosqlite", None)}


def create_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An async engine for ``url`` (``postgresql+asyncpg://`` or ``sqlite+aiosqlite://``)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {mask(str(url))!r}") from exc
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in DRIVERS:
        raise ConfigurationError(
            f"unsupported database {backend!r} in {mask(parsed)}; use postgresql+asyncpg:// "
            "or sqlite+aiosqlite://"
        )
    expected, extra = DRIVERS[backend]
    if driver != expected:
        raise ConfigurationError(
            f"{mask(parsed)} names the driver {driver!r}; outbox_events needs an async driver: "
            f"{backend}+{expected}://"
        )
    if importlib.util.find_spec(expected) is None:
        hint = f"pip install 'outbox-events[{extra}]'" if extra else f"pip install {expected}"
        raise ConfigurationError(f"the {expected} driver is not installed: {hint}")
    if backend == "sqlite":
        options.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        engine = create_async_engine(parsed, **options)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_connect)
        sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # No pool_pre_ping: it costs a round trip per checkout; a connection that died with the
    # server fails its statement once, SQLAlchemy then discards the pool, and callers retry
    # (the relay backs off; a request answers 500 without losing anything).
    return create_async_engine(parsed, **options)


def create_relay_engine(url: str | URL, options: dict[str, Any]) -> AsyncEngine | None:
    """The relay's own engine for ``url``, or None where it must share the main one.

    The relay's claims and settlements commit without waiting for the disk: on PostgreSQL
    ``synchronous_commit=off``, on SQLite ``synchronous=NORMAL`` (in WAL mode: durable across
    a crash of the process, not of the machine). If the machine crashes, the last few of them
    may be lost, which only makes those rows deliverable again (at-least-once), and a lost
    settlement takes the events its handlers chained with it, so nothing forks. The app's
    event writes keep the database's durable default, and the log is written in order, so a
    durable commit also makes every relay commit before it durable.

    An in-memory SQLite database is private to its connection's engine: it gets no relay
    engine of its own.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        connect_args = dict(options.get("connect_args", {}))
        server_settings = dict(connect_args.get("server_settings", {}))
        server_settings.setdefault("synchronous_commit", "off")
        connect_args["server_settings"] = server_settings
        return create_engine(parsed, **{**options, "connect_args": connect_args})
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if parsed.query.get("mode") == "memory":
            return None
        engine = create_engine(parsed, **options)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_relay_connect)
        return engine
    return None


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's recipe for real SQLite transactions: the driver's own transaction handling
    # starts them late and lets a released savepoint commit; BEGIN is emitted in _sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.close()


def _sqlite_relay_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")  # see create_relay_engine
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    options = connection.get_execution_options()
    if not options.get(SINGLE_STATEMENT):
        connection.exec_driver_sql(options.get(BEGIN, "BEGIN"))


def mask(url: str | URL) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"


def dialect_name(engine: AsyncEngine) -> str:
    return engine.dialect.name
