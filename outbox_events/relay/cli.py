"""The ``outbox-relay`` command: run the relay, migrate the table, inspect the outbox.

Only this module reads environment variables, installs signal handlers or configures logging.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from outbox_events.exceptions import OutboxError
from outbox_events.outbox import Outbox
from outbox_events.store.engine import mask
from outbox_events.store.tables import DEFAULT_TABLE

T = TypeVar("T")

logger = logging.getLogger(__name__)

APP_HELP = "The Outbox to use, as MODULE:ATTR (e.g. myapp.events:outbox)."


def load_outbox(target: str) -> Outbox:
    """Import ``MODULE:ATTR`` and return the Outbox it names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected MODULE:ATTR, got {target!r}", param_hint="APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise click.BadParameter(f"cannot import module {module_name!r}: {exc}",
                                 param_hint="APP") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError as exc:
        raise click.BadParameter(f"module {module_name!r} has no attribute {attribute!r}",
                                 param_hint="APP") from exc
    if not isinstance(value, Outbox):
        raise click.BadParameter(
            f"{target} is a {type(value).__name__}, not an outbox_events.Outbox",
            param_hint="APP",
        )
    return value


def _outbox_from(app: str | None, database_url: str | None, table: str,
                 schema: str | None) -> Outbox:
    if app:
        return load_outbox(app)
    if database_url:
        return Outbox(database_url, table=table, schema=schema, relay="external")
    raise click.UsageError("give APP (MODULE:ATTR) or --database-url / OUTBOX_DATABASE_URL")


def _run(outbox: Outbox, work: Callable[[Outbox], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await work(outbox)
        finally:
            await outbox.close()

    try:
        return asyncio.run(main())
    except OutboxError as exc:
        raise click.ClickException(str(exc)) from exc


database_options = [
    click.option("--database-url", envvar="OUTBOX_DATABASE_URL", show_envvar=True,
                 help="Database URL, when no APP is given."),
    click.option("--table", envvar="OUTBOX_TABLE", show_envvar=True, default=DEFAULT_TABLE,
                 show_default=True, help="Outbox table name, when no APP is given."),
    click.option("--schema", envvar="OUTBOX_SCHEMA", show_envvar=True, default=None,
                 help="Database schema of the table, when no APP is given."),
]


def with_database_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(database_options):
        command = option(command)
    return command


@click.group()
@click.option("--log-level", envvar="OUTBOX_LOG_LEVEL", show_envvar=True, default="INFO",
              show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def main(log_level: str) -> None:
    """Relay and operator commands of outbox_events."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("app", required=False, envvar="OUTBOX_APP")
@with_database_options
def migrate(app: str | None, database_url: str | None, table: str, schema: str | None) -> None:
    """Create or upgrade the outbox table (idempotent)."""
    outbox = _outbox_from(app, database_url, table, schema)
    _run(outbox, lambda o: o.migrate())
    click.echo(f"outbox table {outbox.table_name!r} is up to date in {mask(outbox.engine.url)}")


@main.command()
@click.argument("app", envvar="OUTBOX_APP")
@click.option("--until-idle", is_flag=True, envvar="OUTBOX_UNTIL_IDLE", show_envvar=True,
              help="Deliver what is deliverable now, then exit.")
def run(app: str, until_idle: bool) -> None:
    """Deliver events of APP's Outbox until stopped (SIGTERM/SIGINT stop it gracefully)."""
    outbox = load_outbox(app)
    logger.info("relay starting on %s", mask(outbox.engine.url),
                extra={"action": "relay_started"})

    async def work(o: Outbox) -> None:
        if until_idle:
            result = await o.drain()
            logger.info("delivered %d, retrying %d, dead-lettered %d", result.delivered,
                        result.retried, result.dead_lettered, extra={"action": "relay_idle"})
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, o.relay.request_stop)
        await o.relay.run()

    _run(outbox, work)


@main.command()
@click.argument("app", required=False, envvar="OUTBOX_APP")
@with_database_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(app: str | None, database_url: str | None, table: str, schema: str | None,
           as_json: bool) -> None:
    """Rows per destination and state."""
    outbox = _outbox_from(app, database_url, table, schema)
    counts = _run(outbox, lambda o: o.store.counts())
    rows = [{"destination": d, "state": s, "count": n} for (d, s), n in sorted(counts.items())]
    width = max([len("destination"), *(len(d) for d, _ in counts)])
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'destination':<{width}}  {'state':<10}  count")
    for row in rows:
        click.echo(f"{row['destination']:<{width}}  {row['state']:<10}  {row['count']}")
