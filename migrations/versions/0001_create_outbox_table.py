"""Create the outbox table: one row per (event, destination) with its delivery state.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLE = context.config.attributes["outbox_table"]
SCHEMA = context.config.attributes["outbox_schema"]


def upgrade() -> None:
    op.create_table(
        TABLE,
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
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_token", sa.Uuid(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("event_id", "destination", name=f"{TABLE}_event_destination_key"),
        schema=SCHEMA,
    )
    pending = sa.text("state = 'pending'")
    op.create_index(
        f"{TABLE}_claim_idx",
        TABLE,
        ["available_at", "id"],
        schema=SCHEMA,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    keyed = sa.text("state = 'pending' AND key IS NOT NULL")
    op.create_index(
        f"{TABLE}_ordering_idx",
        TABLE,
        ["destination", "key", "id"],
        schema=SCHEMA,
        postgresql_where=keyed,
        sqlite_where=keyed,
    )


def downgrade() -> None:
    op.drop_table(TABLE, schema=SCHEMA)
