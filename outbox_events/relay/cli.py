"""The ``outbox-relay`` command: run the relay, migrate the table, inspect and repair the outbox.

Only this module reads environment variables (every option also as ``OUTBOX_<NAME>``), installs
signal handlers or configures logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click

from outbox_events import metrics as relay_metrics
from outbox_events.exceptions import ConfigurationError, OutboxError
from outbox_events.outbox import Outbox
from outbox_events.store.engine import mask
from outbox_events.store.tables import DEAD, DEFAULT_TABLE, DELIVERED

T = TypeVar("T")

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=36525)  # a hundred years: any cutoff before it is still a date
MAX_ROW_ID = 2**63 - 1  # the table's bigint


def parse_duration(
    _ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> timedelta | None:
    """A length of time: ``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match:
        raise click.BadParameter(
            f"{value!r} is not a duration such as 90s, 15m, 12h or 7d", param=param
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds > MAX_DURATION.total_seconds():
        raise click.BadParameter(f"{value!r} is longer than 100 years", param=param)
    return timedelta(seconds=seconds)


def load_outbox(target: str) -> Outbox:
    """Import ``MODULE:ATTR`` and return the Outbox it names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected MODULE:ATTR, got {target!r}", param_hint="APP")
    # The current directory comes first (as with uvicorn), so that the app's modules win over
    # installed packages of the same name (an editable install puts it after site-packages).
    if sys.path[:1] != [os.getcwd()]:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise click.BadParameter(
            f"cannot import module {module_name!r}: {exc}", param_hint="APP"
        ) from exc
    try:
        value = getattr(module, attribute)
    except AttributeError as exc:
        raise click.BadParameter(
            f"module {module_name!r} has no attribute {attribute!r}", param_hint="APP"
        ) from exc
    if not isinstance(value, Outbox):
        raise click.BadParameter(
            f"{target} is a {type(value).__name__}, not an outbox_events.Outbox",
            param_hint="APP",
        )
    return value


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


def _env(name: str) -> dict[str, Any]:
    return {"envvar": f"OUTBOX_{name}", "show_envvar": True}


def outbox_argument(command: Callable[..., Any]) -> Callable[..., Any]:
    """APP, or the database options for commands that need no handlers."""
    for option in reversed(
        [
            click.argument("app", required=False, envvar="OUTBOX_APP"),
            click.option(
                "--database-url", **_env("DATABASE_URL"), help="Database URL, when no APP is given."
            ),
            click.option(
                "--table",
                default=DEFAULT_TABLE,
                show_default=True,
                **_env("TABLE"),
                help="Outbox table name, when no APP is given.",
            ),
            click.option(
                "--schema",
                default=None,
                **_env("SCHEMA"),
                help="Database schema of the table, when no APP is given.",
            ),
        ]
    ):
        command = option(command)
    return command


def _outbox_from(
    app: str | None, database_url: str | None, table: str, schema: str | None
) -> Outbox:
    if app:
        return load_outbox(app)
    if database_url:
        return Outbox(database_url, table=table, schema=schema, relay="external")
    raise click.UsageError("give APP (MODULE:ATTR) or --database-url / OUTBOX_DATABASE_URL")


def _echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    text = " ".join(str(value).split())  # multi-line errors stay on their row
    return text if len(text) <= 60 else text[:57] + "..."


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


@click.group()
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    **_env("LOG_LEVEL"),
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """Relay and operator commands of outbox_events."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@outbox_argument
def migrate(app: str | None, database_url: str | None, table: str, schema: str | None) -> None:
    """Create or upgrade the outbox table (idempotent)."""
    outbox = _outbox_from(app, database_url, table, schema)
    _run(outbox, lambda o: o.migrate())
    click.echo(f"outbox table {outbox.table_name!r} is up to date in {mask(outbox.engine.url)}")


@main.command()
@click.argument("app", envvar="OUTBOX_APP")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=None,
    **_env("CONCURRENCY"),
    help="Batches in flight at once.  [default: the Outbox's]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=None,
    **_env("BATCH_SIZE"),
    help="Deliveries claimed per round trip.  [default: the Outbox's]",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.01),
    default=None,
    **_env("POLL_INTERVAL"),
    help="Seconds between polls when nothing wakes the relay.  [default: the Outbox's]",
)
@click.option(
    "--lease",
    type=click.FloatRange(1),
    default=None,
    **_env("LEASE"),
    help="Seconds a claim holds its rows before another relay may take them.  "
    "[default: the Outbox's]",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    **_env("SHUTDOWN_TIMEOUT"),
    help="Seconds to finish in-flight deliveries after SIGTERM/SIGINT before releasing them.",
)
@click.option(
    "--until-idle",
    is_flag=True,
    **_env("UNTIL_IDLE"),
    help="Deliver what is deliverable now, then exit.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    **_env("METRICS_PORT"),
    help="Serve Prometheus metrics on this port (all interfaces; needs the [metrics] extra).",
)
def run(
    app: str,
    concurrency: int | None,
    batch_size: int | None,
    poll_interval: float | None,
    lease: float | None,
    shutdown_timeout: float,
    until_idle: bool,
    metrics_port: int | None,
) -> None:
    """Deliver the events of APP's Outbox until SIGTERM/SIGINT (a graceful stop, exit 0).

    APP is MODULE:ATTR naming the Outbox (also as OUTBOX_APP).
    """
    outbox = load_outbox(app)
    relay = outbox.relay
    relay.configure(
        concurrency=concurrency,
        batch_size=batch_size,
        poll_interval=poll_interval,
        lease=lease,
        shutdown_timeout=shutdown_timeout,
    )
    if metrics_port is not None:
        _serve_metrics(outbox, metrics_port)
    logger.info(
        "relay starting on %s (concurrency %d, batch size %d)",
        mask(outbox.engine.url),
        relay.concurrency,
        relay.batch_size,
        extra={"action": "relay_started"},
    )

    async def work(o: Outbox) -> None:
        # Cancelling run() or drain() is the relay's graceful stop: claiming stops, the
        # batches in flight get the shutdown timeout to finish, then are released.
        running = asyncio.ensure_future(o.drain() if until_idle else relay.run())
        loop = asyncio.get_running_loop()
        stopping = False

        def stop(signum: signal.Signals) -> None:
            nonlocal stopping
            if stopping:
                return
            stopping = True
            logger.info(
                "%s received: finishing in-flight deliveries (up to %.0f s)",
                signum.name,
                shutdown_timeout,
                extra={"action": "relay_stopping"},
            )
            running.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        with contextlib.suppress(asyncio.CancelledError):
            result = await running
            if result is not None:
                logger.info(
                    "idle: delivered %d, retrying %d, dead-lettered %d",
                    result.delivered,
                    result.retried,
                    result.dead_lettered,
                    extra={"action": "relay_idle"},
                )
        if stopping:
            logger.info("relay stopped", extra={"action": "relay_stopped"})

    _run_relay(outbox, work)


def _serve_metrics(outbox: Outbox, port: int) -> None:
    """Turn the Outbox's metrics on (default registry, unless it has its own) and serve them
    over HTTP from a thread of prometheus-client's."""
    try:
        if outbox.metrics is None:
            outbox.metrics = relay_metrics.for_setting(True)
        assert outbox.metrics is not None
        relay_metrics.prometheus().start_http_server(port, registry=outbox.metrics.registry)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise click.UsageError(f"cannot serve metrics on port {port}: {exc}") from exc
    logger.info("serving Prometheus metrics on port %d", port, extra={"action": "metrics_serving"})


HANDLER_THREADS = "outbox-handler"  # name prefix of the threads that run sync handlers
THREAD_GRACE = 1.0  # seconds handler threads get to end once the relay has stopped


def _run_relay(outbox: Outbox, work: Callable[[Outbox], Awaitable[None]]) -> None:
    """``_run`` for the relay: a sync handler stuck in its thread cannot keep the process
    alive once the relay has stopped (its delivery was released, or will come back when its
    lease runs out): the process exits without waiting for that thread."""
    executor = ThreadPoolExecutor(thread_name_prefix=HANDLER_THREADS)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        error: BaseException | None = None
        try:
            await work(outbox)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await outbox.close()
            stuck = await _stuck_threads(executor)
            if stuck:
                logger.warning(
                    "%d handler thread(s) still running after the relay stopped; exiting "
                    "without waiting for them",
                    stuck,
                    extra={"action": "handler_threads_abandoned"},
                )
                if error is not None:
                    logger.error("%s", error)
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0 if error is None else 1)

    try:
        asyncio.run(main())
    except OutboxError as exc:
        raise click.ClickException(str(exc)) from exc


async def _stuck_threads(executor: ThreadPoolExecutor) -> int:
    """Shut the executor down; how many of its threads are still busy after THREAD_GRACE."""
    executor.shutdown(wait=False, cancel_futures=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + THREAD_GRACE
    while True:
        busy = [
            thread
            for thread in threading.enumerate()
            if thread.name.startswith(HANDLER_THREADS) and thread.is_alive()
        ]
        if not busy or loop.time() >= deadline:
            return len(busy)
        await asyncio.sleep(0.02)


@main.command()
@outbox_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(
    app: str | None, database_url: str | None, table: str, schema: str | None, as_json: bool
) -> None:
    """Per destination: pending, in flight, dead, delivered (kept), oldest pending age."""
    outbox = _outbox_from(app, database_url, table, schema)
    now = outbox.clock()
    rows = _run(outbox, lambda o: o.store.status(now=now))
    for row in rows:
        oldest = row.pop("oldest_pending")
        row["oldest_pending_age_s"] = (
            None if oldest is None else round((now - oldest).total_seconds(), 3)
        )
    if as_json:
        click.echo(json.dumps(rows))
    else:
        _echo_table(
            rows,
            ["destination", "pending", "in_flight", "dead", "delivered", "oldest_pending_age_s"],
        )


@main.group("dead-letter")
def dead_letter() -> None:
    """Inspect, requeue and purge dead-lettered deliveries."""


@dead_letter.command("list")
@outbox_argument
@click.option("--destination", help="Only this destination.")
@click.option(
    "--name", "event_name", help="Only event names matching this SQL LIKE pattern (e.g. 'order.%')."
)
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=parse_duration,
    help="Only dead-lettered more than this long ago (e.g. 90s, 15m, 2h, 7d).",
)
@click.option(
    "--after-id",
    type=click.IntRange(0, MAX_ROW_ID),
    default=0,
    show_default=True,
    help="Page: rows after this row id (the 'more:' hint gives it).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Rows per page.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_dead(
    app: str | None,
    database_url: str | None,
    table: str,
    schema: str | None,
    destination: str | None,
    event_name: str | None,
    older_than: timedelta | None,
    after_id: int,
    limit: int,
    as_json: bool,
) -> None:
    """List dead-lettered deliveries, oldest first, a page at a time.

    When more rows follow, stderr says which --after-id shows the next page.
    """
    outbox = _outbox_from(app, database_url, table, schema)
    cutoff = outbox.clock() - older_than if older_than is not None else None
    rows = _run(
        outbox,
        lambda o: o.store.dead_letters(
            destination=destination,
            name=event_name,
            dead_before=cutoff,
            after_id=after_id,
            limit=limit + 1,  # one more tells whether another page follows
        ),
    )
    more, rows = len(rows) > limit, rows[:limit]
    if as_json:
        click.echo(json.dumps(rows, default=_json_default))
    else:
        _echo_table(
            rows,
            ["id", "event_id", "destination", "name", "attempts", "finished_at", "last_error"],
        )
    if more:
        click.echo(f"more: --after-id {rows[-1]['id']}", err=True)


def _progress(verb: str) -> Callable[[int], None]:
    def report(done: int) -> None:
        click.echo(f"{verb} {done} ...", err=True)

    return report


@dead_letter.command("requeue")
@outbox_argument
@click.option("--id", "ids", multiple=True, help="A row id or event id (repeatable).")
@click.option("--destination", help="Only this destination's dead deliveries.")
@click.option("--all", "everything", is_flag=True, help="Every dead delivery.")
def requeue(
    app: str | None,
    database_url: str | None,
    table: str,
    schema: str | None,
    ids: tuple[str, ...],
    destination: str | None,
    everything: bool,
) -> None:
    """Give dead-lettered deliveries a fresh set of attempts."""
    if not (ids or destination or everything):
        raise click.UsageError("say which: --id ..., --destination NAME or --all")
    parsed: list[int | uuid.UUID] | None = [_parse_id(i) for i in ids] if ids else None
    outbox = _outbox_from(app, database_url, table, schema)
    now = outbox.clock()
    count = _run(
        outbox,
        lambda o: o.store.requeue(
            now=now, ids=parsed, destination=destination, on_progress=_progress("requeued")
        ),
    )
    click.echo(f"requeued {count} delivery(ies)")


def _parse_id(value: str) -> int | uuid.UUID:
    if value.isascii() and value.isdigit():
        if 0 < int(value) <= MAX_ROW_ID:
            return int(value)
        raise click.BadParameter(
            f"{value!r} is neither a row id nor an event id (row ids run from 1 to {MAX_ROW_ID})",
            param_hint="--id",
        )
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a row id nor an event id", param_hint="--id"
        ) from None


def _purge(
    app: str | None,
    database_url: str | None,
    table: str,
    schema: str | None,
    older_than: timedelta,
    states: list[str],
) -> None:
    outbox = _outbox_from(app, database_url, table, schema)
    cutoff = outbox.clock() - older_than
    count = _run(
        outbox,
        lambda o: o.store.purge(
            states=states, finished_before=cutoff, on_progress=_progress("purged")
        ),
    )
    click.echo(
        f"purged {count} {'/'.join(states)} row(s) finished before "
        f"{cutoff.isoformat(timespec='seconds')}"
    )


@dead_letter.command("purge")
@outbox_argument
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=parse_duration,
    required=True,
    help="Delete dead deliveries dead-lettered more than this long ago (e.g. 7d).",
)
def purge_dead(
    app: str | None, database_url: str | None, table: str, schema: str | None, older_than: timedelta
) -> None:
    """Delete dead-lettered deliveries older than a given age."""
    _purge(app, database_url, table, schema, older_than, [DEAD])


@main.command()
@outbox_argument
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=parse_duration,
    required=True,
    help="Delete rows that finished more than this long ago (e.g. 90s, 15m, 2h, 7d).",
)
@click.option(
    "--state",
    "states",
    type=click.Choice([DELIVERED, DEAD]),
    multiple=True,
    default=[DELIVERED],
    show_default=True,
    help="Which finished rows (repeatable).",
)
def purge(
    app: str | None,
    database_url: str | None,
    table: str,
    schema: str | None,
    older_than: timedelta,
    states: tuple[str, ...],
) -> None:
    """Delete delivered (kept for retention) or dead rows older than a given age."""
    _purge(app, database_url, table, schema, older_than, list(states))
