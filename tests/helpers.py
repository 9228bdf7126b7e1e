"""Small helpers shared by the test modules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

if TYPE_CHECKING:
    from outbox_events import Outbox

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """A clock the test moves forward by hand (``Outbox(clock=...)``), so that retries and
    delayed events become due without waiting."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sampled_span() -> NonRecordingSpan:
    """A sampled span with a trace state, to make as current where a test dispatches, so that
    the event carries a known W3C trace context."""
    return NonRecordingSpan(
        SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState([("vendor", "opaque")]),
        )
    )


async def outbox_rows(outbox: Outbox, **where: Any) -> list[dict[str, Any]]:
    """The outbox table's rows matching the column values in ``where``, oldest first."""
    table = outbox.store.table
    query = sa.select(table).order_by(table.c.id)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with outbox.engine.connect() as connection:
        return [dict(row._mapping) for row in await connection.execute(query)]


async def outbox_row(outbox: Outbox, **where: Any) -> dict[str, Any]:
    """The one outbox row matching ``where``."""
    [row] = await outbox_rows(outbox, **where)
    return row
