"""The outbox table: one row per (event, destination) with that destination's delivery state.

Fanning out at write time gives every destination its own attempts, next attempt time, lease,
last error and dead-letter status (DESIGN rule 5) while the relay claims from a single table
with a single partial index.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from outbox_events.exceptions import ConfigurationError

DEFAULT_TABLE = "outbox_events"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")  # room for index-name suffixes

# Delivery states.
PENDING = "pending"  # waiting for its next attempt, or leased by a relay (lease_token set)
DELIVERED = "delivered"
DEAD = "dead"  # dead-lettered: no more attempts until requeued


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite stores it naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value  # type: ignore[no-any-return]


def validate_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise ConfigurationError."""
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise ConfigurationError(
            f"{what} must be a plain SQL identifier (letters, digits and _, not starting with a "
            f"digit, at most 40 characters), got {value!r}"
        )
    return value


def outbox_table(name: str = DEFAULT_TABLE, schema: str | None = None) -> sa.Table:
    """Build the outbox table definition for ``name`` in ``schema`` (in a MetaData of its own)."""
    validate_identifier(name, "table name")
    if schema is not None:
        validate_identifier(schema, "schema name")
    table = sa.Table(
        name,
        sa.MetaData(schema=schema),
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("destination", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.Column("trace_context", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default=PENDING),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("available_at", UTCDateTime(), nullable=False),
        sa.Column("lease_token", sa.Uuid(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("event_id", "destination", name=f"{name}_event_destination_key"),
    )
    pending = table.c.state == PENDING
    sa.Index(
        f"{name}_claim_idx",
        table.c.available_at,
        table.c.id,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    sa.Index(
        f"{name}_ordering_idx",
        table.c.destination,
        table.c.key,
        table.c.id,
        postgresql_where=pending & table.c.key.isnot(None),
        sqlite_where=pending & table.c.key.isnot(None),
    )
    return table
