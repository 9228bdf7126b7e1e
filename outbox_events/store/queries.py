"""Every SQL statement the library runs, built with SQLAlchemy Core for both dialects.

Statements are built per table (the table name is configurable) and cached by the store; the
values that change per call are bound parameters.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from outbox_events.store.tables import DEAD, DELIVERED, PENDING

CLAIMED_COLUMNS = (
    "id",
    "event_id",
    "destination",
    "name",
    "payload",
    "key",
    "headers",
    "trace_context",
    "created_at",
    "attempts",
)


def insert_rows(table: sa.Table) -> sa.Insert:
    """Insert delivery rows; executed with a list of parameter dicts (one multi-row INSERT)."""
    return sa.insert(table)


def _any_of(column: sa.ColumnElement[Any], name: str, dialect: str) -> sa.ColumnElement[bool]:
    """``column = ANY(:name)`` with one array parameter on PostgreSQL (no per-call rendering of
    a parameter list); an expanding ``IN`` elsewhere."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sa.any_(sa.bindparam(name, type_=ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


# The state in the claim's WHERE is written into the SQL, not bound: only then can a plan made
# without the parameter values (PostgreSQL's generic plan for a prepared statement, SQLite's
# prepared statement) use the partial indexes, whose predicate is state = 'pending'.
_PENDING: sa.ColumnElement[str] = sa.literal_column(f"'{PENDING}'")


def claim(table: sa.Table, dialect: str, limit: int | None = None) -> sa.Update:
    """Lease up to ``:limit`` deliverable rows of ``:destinations`` and count the attempt.

    A row is deliverable when it is pending, its ``available_at`` has come (a live lease pushes
    it into the future) and no earlier row of the same destination and ordering key is still
    pending. ``FOR UPDATE SKIP LOCKED`` lets several relays claim side by side on PostgreSQL;
    SQLite has a single writer and ignores it. A ``limit`` given here is written into the SQL
    (one prepared statement per batch size), so that PostgreSQL's generic plan knows how few
    rows it needs; otherwise it is the parameter ``:limit``.
    """
    t = table
    earlier = table.alias("earlier")
    earlier_of_same_key_pending = (
        sa.exists()
        .where(earlier.c.destination == t.c.destination)
        .where(earlier.c.key == t.c.key)
        .where(earlier.c.state == _PENDING)
        .where(earlier.c.id < t.c.id)
    )
    candidates = (
        sa.select(t.c.id)
        .where(t.c.state == _PENDING)
        .where(t.c.available_at <= sa.bindparam("now"))
        .where(_any_of(t.c.destination, "destinations", dialect))
        .where(~earlier_of_same_key_pending)
        .order_by(t.c.available_at, t.c.id)
        .limit(sa.bindparam("limit") if limit is None else sa.literal_column(str(int(limit))))
        .with_for_update(skip_locked=True, of=t)
    )
    return (
        sa.update(t)
        .where(t.c.id.in_(candidates.scalar_subquery()))
        .values(
            attempts=t.c.attempts + 1,
            lease_token=sa.bindparam("token"),
            available_at=sa.bindparam("lease_until"),
        )
        .returning(*(t.c[name] for name in CLAIMED_COLUMNS))
    )


def complete(table: sa.Table, dialect: str) -> sa.Executable:
    """Mark the rows ``:ids`` delivered, if the lease ``:token`` still holds them."""
    t = table
    return (
        sa.update(t)
        .where(_any_of(t.c.id, "ids", dialect))
        .where(t.c.lease_token == sa.bindparam("token"))
        .values(state=DELIVERED, finished_at=sa.bindparam("now"), lease_token=None)
        .returning(t.c.id)
    )


def delete_completed(table: sa.Table, dialect: str) -> sa.Executable:
    """Delete the delivered rows ``:ids``, if the lease ``:token`` still holds them (the
    default: delivered rows are not kept)."""
    t = table
    return (
        sa.delete(t)
        .where(_any_of(t.c.id, "ids", dialect))
        .where(t.c.lease_token == sa.bindparam("token"))
        .returning(t.c.id)
    )


def reschedule(table: sa.Table) -> sa.Update:
    """Give one leased row its next attempt time and last error; executed once per batch with
    a list of parameter dicts."""
    t = table
    return (
        sa.update(t)
        .where(t.c.id == sa.bindparam("b_id"))
        .where(t.c.lease_token == sa.bindparam("b_token"))
        .values(
            available_at=sa.bindparam("b_available_at"),
            last_error=sa.bindparam("b_error"),
            lease_token=None,
        )
    )


def dead_letter(table: sa.Table) -> sa.Update:
    """Dead-letter one leased row with its reason; executed with a list of parameter dicts."""
    t = table
    return (
        sa.update(t)
        .where(t.c.id == sa.bindparam("b_id"))
        .where(t.c.lease_token == sa.bindparam("b_token"))
        .values(
            state=DEAD,
            last_error=sa.bindparam("b_error"),
            finished_at=sa.bindparam("b_now"),
            lease_token=None,
        )
    )


def release(table: sa.Table) -> sa.Update:
    """Give back the rows of the lease ``:token`` that were not settled (a relay stopping
    before it finished them): claimable at once, and the attempt is not counted."""
    t = table
    return (
        sa.update(t)
        .where(t.c.lease_token == sa.bindparam("token"))
        .where(t.c.state == PENDING)
        .values(lease_token=None, available_at=sa.bindparam("now"), attempts=t.c.attempts - 1)
    )


def status(table: sa.Table) -> sa.Select[Any]:
    """Per destination: waiting, in flight (leased, lease live at ``:now``), dead, delivered
    (retained), and the creation time of the oldest undelivered row."""
    t = table
    pending = t.c.state == PENDING
    leased = pending & t.c.lease_token.isnot(None) & (t.c.available_at > sa.bindparam("now"))
    return (
        sa.select(
            t.c.destination,
            sa.func.count().filter(pending & ~leased).label("pending"),
            sa.func.count().filter(leased).label("in_flight"),
            sa.func.count().filter(t.c.state == DEAD).label("dead"),
            sa.func.count().filter(t.c.state == DELIVERED).label("delivered"),
            sa.func.min(t.c.created_at).filter(pending).label("oldest_pending"),
        )
        .group_by(t.c.destination)
        .order_by(t.c.destination)
    )


def dead_letters(
    table: sa.Table, *, destination: bool, name: bool, older_than: bool
) -> sa.Select[Any]:
    """Dead rows after ``:after_id``, oldest first, at most ``:limit``; optional filters on
    ``:destination``, ``:name`` (a LIKE pattern) and ``:cutoff`` (dead-lettered before)."""
    t = table
    query = (
        sa.select(
            t.c.id,
            t.c.event_id,
            t.c.destination,
            t.c.name,
            t.c.key,
            t.c.attempts,
            t.c.last_error,
            t.c.created_at,
            t.c.finished_at,
        )
        .where(t.c.state == DEAD)
        .where(t.c.id > sa.bindparam("after_id"))
        .order_by(t.c.id)
        .limit(sa.bindparam("limit"))
    )
    if destination:
        query = query.where(t.c.destination == sa.bindparam("destination"))
    if name:
        query = query.where(t.c.name.like(sa.bindparam("name")))
    if older_than:
        query = query.where(t.c.finished_at < sa.bindparam("cutoff"))
    return query


def requeue(table: sa.Table, *, ids: bool, destination: bool) -> sa.Update:
    """Put up to ``:limit`` dead rows back in line at ``:now``, with fresh attempts; optionally
    only the rows ``:ids`` / ``:event_ids`` or those of ``:b_destination``.

    Parameter names must not be column names: an UPDATE takes a parameter named like a column
    as a value for that column.
    """
    t = table
    chosen = sa.select(t.c.id).where(t.c.state == DEAD)
    if ids:
        chosen = chosen.where(
            t.c.id.in_(sa.bindparam("ids", expanding=True))
            | t.c.event_id.in_(sa.bindparam("event_ids", expanding=True))
        )
    if destination:
        chosen = chosen.where(t.c.destination == sa.bindparam("b_destination"))
    chosen = chosen.order_by(t.c.id).limit(sa.bindparam("limit"))
    return (
        sa.update(t)
        .where(t.c.id.in_(chosen.scalar_subquery()))
        .values(
            state=PENDING,
            attempts=0,
            available_at=sa.bindparam("now"),
            finished_at=None,
            lease_token=None,
        )
    )


def purge(table: sa.Table) -> sa.Delete:
    """Delete up to ``:limit`` rows in ``:states`` that finished before ``:cutoff``."""
    t = table
    chosen = (
        sa.select(t.c.id)
        .where(t.c.state.in_(sa.bindparam("states", expanding=True)))
        .where(t.c.finished_at < sa.bindparam("cutoff"))
        .order_by(t.c.id)
        .limit(sa.bindparam("limit"))
    )
    return sa.delete(t).where(t.c.id.in_(chosen.scalar_subquery()))
