"""Binding events to the application's own SQLAlchemy transactions (DESIGN rule 1).

``Outbox.instrument(async_sessionmaker)`` gives the factory a Session subclass of its own and
listens to that subclass only, so sessions from other factories are untouched. When such a
session commits inside a unit of work (a request, ``outbox.unit_of_work()``), the events
dispatched so far are inserted in that transaction; when it rolls back they are discarded.

A session *holds* the unit's events while it has writes that are not committed yet: objects
added, changed or deleted but not flushed, or a transaction in which it flushed or executed
a write. The middleware then leaves the events to that session's commit instead of writing
them itself (DESIGN rule 2). A transaction that only read holds nothing back. Writes that end
without a commit (rollback, or the session closed while they were pending) discard the events
like a rollback; a savepoint is not a commit: releasing one leaves the events waiting for the
outer transaction, rolling one back discards only the events dispatched inside it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from outbox_events import unit_of_work
from outbox_events.exceptions import ConfigurationError
from outbox_events.store.store import translated_errors

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox

__all__ = ["holds_events", "instrument"]

logger = logging.getLogger(__name__)

# session.info keys
_WRITTEN = "outbox_events.written"  # events this transaction inserted
_WROTE = "outbox_events.wrote"  # this transaction wrote rows of the app's own
_SAVEPOINTS = "outbox_events.savepoints"  # (savepoint, unit.added when it began), innermost last

# First words of textual statements that only read (anything else counts as a write).
_READING_WORDS = frozenset({"select", "with", "values", "show", "explain", "pragma"})


def instrument(outbox: Outbox, factory: async_sessionmaker[Any]) -> None:
    """Make sessions of ``factory`` carry the outbox's events in their transactions."""
    if not isinstance(factory, async_sessionmaker):
        raise ConfigurationError(
            f"instrument() takes an async_sessionmaker, got {type(factory).__name__}"
        )
    base: type[Session] = factory.kw.get("sync_session_class") or Session
    if getattr(base, "_outbox", None) is outbox:
        return  # already instrumented by this outbox
    session_class = _session_class(base, outbox)
    factory.configure(sync_session_class=session_class)
    for name, hook in _HOOKS.items():
        sa.event.listen(session_class, name, hook)


def holds_events(unit: unit_of_work.UnitOfWork) -> bool:
    """Whether an instrumented session of ``unit`` has writes that are not committed yet, so
    that the unit's events must wait for its commit (or rollback)."""
    return any(_has_uncommitted_writes(session) for session in unit.sessions)


def _session_class(base: type[Session], outbox: Outbox) -> type[Session]:
    def expunge_all(self: Session) -> None:
        # close(), reset() and invalidate() come through here too: writes that were never
        # flushed are abandoned, which discards the events like a rollback.
        if _has_unflushed_writes(self):
            _abandon(self)
        base.expunge_all(self)

    namespace = {"_outbox": outbox, "expunge_all": expunge_all, "__module__": __name__}
    return type(f"Outbox{base.__name__}", (base,), namespace)


def _has_uncommitted_writes(session: Session) -> bool:
    return _has_unflushed_writes(session) or (
        bool(session.info.get(_WROTE)) and session.in_transaction()
    )


def _has_unflushed_writes(session: Session) -> bool:
    if session.new or session.deleted:
        return True
    return any(session.is_modified(instance) for instance in session.dirty)


def _unit_for(session: Session) -> unit_of_work.UnitOfWork | None:
    unit = unit_of_work.current()
    if unit is None or unit.outbox is not getattr(session, "_outbox", None):
        return None
    return unit


def _track(session: Session) -> None:
    unit = _unit_for(session)
    if unit is not None:
        unit.sessions.add(session)


def _discard_for(session: Session) -> None:
    unit = _unit_for(session)
    if unit is not None:
        unit.discard()


def _abandon(session: Session) -> None:
    """The session was closed with writes that were never committed: like a rollback."""
    unit = _unit_for(session)
    if unit is not None and unit.pending:
        logger.warning(
            "a session was closed with uncommitted writes; the %d event(s) dispatched so far "
            "are discarded with them (commit the session to keep them)",
            len(unit.pending),
            extra={"action": "events_discarded"},
        )
        unit.discard()


# -- hooks --------------------------------------------------------------------------------


def _before_attach(session: Session, _instance: object) -> None:
    _track(session)  # it may hold unflushed writes before any transaction begins


def _after_begin(session: Session, _transaction: SessionTransaction, _connection: Any) -> None:
    _track(session)


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        unit = _unit_for(session)
        mark = unit.added if unit is not None else 0
        session.info.setdefault(_SAVEPOINTS, []).append((transaction, mark))


def _after_flush(session: Session, _flush_context: Any) -> None:
    session.info[_WROTE] = True
    _track(session)


def _do_orm_execute(state: ORMExecuteState) -> None:
    if _is_write(state):
        state.session.info[_WROTE] = True
        _track(state.session)


def _is_write(state: ORMExecuteState) -> bool:
    if state.is_select:
        return False
    statement = state.statement
    if isinstance(statement, sa.TextClause):
        words = statement.text.split(None, 1)
        return bool(words) and words[0].lower() not in _READING_WORDS
    return True


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # releasing a savepoint: the events wait for the real commit
    unit = _unit_for(session)
    if unit is None or not unit.pending:
        return
    events = unit.take()
    outbox: Outbox = session._outbox  # type: ignore[attr-defined]
    with translated_errors("write events to the outbox in the session's transaction"):
        outbox.store.write_in(session.connection(), outbox.rows_for(events))
    session.info.setdefault(_WRITTEN, []).extend(events)


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    session.info.pop(_WROTE, None)
    if session.info.pop(_WRITTEN, None):
        unit = _unit_for(session)
        if unit is not None:
            unit.committed = True  # the unit wakes the relay when it ends (after the response)
        else:
            session._outbox.wake()  # type: ignore[attr-defined]


def _after_rollback(session: Session) -> None:
    nested = session.get_nested_transaction()
    if nested is not None:  # a savepoint rolled back: so do the events dispatched inside it
        unit = _unit_for(session)
        for savepoint, mark in session.info.get(_SAVEPOINTS, ()):
            if savepoint is nested and unit is not None:
                unit.discard_since(mark)
        return
    session.info.pop(_WRITTEN, None)  # rolled back with the transaction
    session.info.pop(_WROTE, None)
    _discard_for(session)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        savepoints = session.info.get(_SAVEPOINTS, [])
        savepoints[:] = [entry for entry in savepoints if entry[0] is not transaction]
        return
    if transaction.parent is not None:
        return
    session.info.pop(_WRITTEN, None)  # a commit that failed: gone with the transaction
    if session.info.pop(_WROTE, None):  # ended without commit or rollback (closed)
        _abandon(session)


_HOOKS: dict[str, Any] = {
    "before_attach": _before_attach,
    "after_begin": _after_begin,
    "after_transaction_create": _after_transaction_create,
    "after_flush": _after_flush,
    "do_orm_execute": _do_orm_execute,
    "before_commit": _before_commit,
    "after_commit": _after_commit,
    "after_rollback": _after_rollback,
    "after_transaction_end": _after_transaction_end,
}
