"""Wake listening relays when events are inserted (PostgreSQL).

A statement-level trigger sends ``NOTIFY "<table>"`` after each INSERT into the outbox table:
no extra round trip for the writer, and PostgreSQL folds identical notifications of one
transaction into one. SQLite has no NOTIFY; its relay is woken in-process.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = context.config.attributes["outbox_table"]
SCHEMA = context.config.attributes["outbox_schema"]
QUALIFIED = f'"{SCHEMA}"."{TABLE}"' if SCHEMA else f'"{TABLE}"'
FUNCTION = f'"{SCHEMA}"."{TABLE}_notify"' if SCHEMA else f'"{TABLE}_notify"'
CHANNEL = f"{SCHEMA}.{TABLE}" if SCHEMA else TABLE  # what relays LISTEN on


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {TABLE}_notify AFTER INSERT ON {QUALIFIED} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_notify ON {QUALIFIED}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
