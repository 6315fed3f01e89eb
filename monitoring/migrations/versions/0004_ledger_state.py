"""Edit ledger rows carry a state: pending (challenger), committed (served), released.

A fix reaches the ledger for good only once its version serves as champion; a challenger
replaced unpromoted releases its rows so its images are collected again. Existing rows become
``pending``: the next night settles them from the registry (champion timeline and current
challenger) before it collects, so no row is lost and none stays wrongly used.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edit_ledger") as batch:
        batch.add_column(sa.Column("state", sa.String(20), nullable=False,
                                   server_default="pending"))
        batch.add_column(sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_edit_ledger_model_name_state_model_version", "edit_ledger",
                    ["model_name", "state", "model_version"])


def downgrade() -> None:
    op.drop_index("ix_edit_ledger_model_name_state_model_version", table_name="edit_ledger")
    with op.batch_alter_table("edit_ledger") as batch:
        batch.drop_column("settled_at")
        batch.drop_column("state")
