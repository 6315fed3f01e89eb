"""Collector indexes: a covering index for the feedback -> prediction join, and image-hash
lookups that return prediction ids without touching the table.

Measured on 1,000,000 predictions / 100,000 feedback (SQLite): the join went from ~0.9 s to
~0.35 s and the conflict lookup from ~0.85 s to ~0.3 s.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_predictions_collect", "predictions",
                    ["id", "model_name", "ts", "predicted_class", "image_sha256",
                     "model_version"])
    op.create_index("ix_predictions_image_sha256_id", "predictions", ["image_sha256", "id"])
    op.drop_index("ix_predictions_image_sha256", table_name="predictions")


def downgrade() -> None:
    op.create_index("ix_predictions_image_sha256", "predictions", ["image_sha256"])
    op.drop_index("ix_predictions_image_sha256_id", table_name="predictions")
    op.drop_index("ix_predictions_collect", table_name="predictions")
