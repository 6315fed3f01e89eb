"""Promotion audit: an append-only table of alias moves (promote, rollback, register-base).

MLflow's registered-model tags, where the timeline used to live alone, can be rewritten by
anyone who may edit the model; this table is written only by the promotion commands, and a
trigger refuses UPDATE and DELETE on it (SQLite and PostgreSQL alike), so a row once
committed stays as it was.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "promotion_audit"
REFUSAL = "promotion_audit is append-only"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("previous", sa.String(200), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("authenticated", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("overridden", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_promotion_audit"),
        sa.UniqueConstraint("model_name", "alias", "seq",
                            name="uq_promotion_audit_model_name_alias_seq"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION promotion_audit_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$ LANGUAGE plpgsql""")
        op.execute(f"""
            CREATE TRIGGER promotion_audit_append_only BEFORE UPDATE OR DELETE ON {TABLE}
            FOR EACH ROW EXECUTE FUNCTION promotion_audit_append_only()""")
        op.execute(f"""
            CREATE TRIGGER promotion_audit_no_truncate BEFORE TRUNCATE ON {TABLE}
            FOR EACH STATEMENT EXECUTE FUNCTION promotion_audit_append_only()""")
    else:
        for what in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER promotion_audit_no_{what.lower()} BEFORE {what} ON {TABLE}
                BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END""")


def downgrade() -> None:
    op.drop_table(TABLE)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS promotion_audit_append_only()")
