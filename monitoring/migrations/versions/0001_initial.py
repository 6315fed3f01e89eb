"""Initial schema: predictions, feedback, edit ledger, quarantine, model classes.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_classes",
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("registered_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("model_name", name="pk_model_classes"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("model_alias", sa.String(200), nullable=True),
        sa.Column("image_uri", sa.Text(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("predicted_class", sa.Integer(), nullable=False),
        sa.Column("topk", sa.JSON(), nullable=False),
        sa.Column("request_metadata", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("ingested_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
    )
    op.create_index("ix_predictions_image_sha256", "predictions", ["image_sha256"])
    op.create_index("ix_predictions_model_name_ts", "predictions", ["model_name", "ts"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prediction_id", sa.String(200), nullable=False),
        sa.Column("true_class", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("ingested_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("prediction_id", "true_class", "source",
                            name="uq_feedback_prediction_id_true_class_source"),
    )
    op.create_index("ix_feedback_ingested_at", "feedback", ["ingested_at"])
    op.create_table(
        "edit_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("prediction_id", sa.String(200), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_edit_ledger"),
        sa.UniqueConstraint("run_id", "prediction_id", name="uq_edit_ledger_run_id_prediction_id"),
    )
    op.create_index("ix_edit_ledger_model_name_image_sha256", "edit_ledger",
                    ["model_name", "image_sha256"])
    op.create_index("ix_edit_ledger_prediction_id", "edit_ledger", ["prediction_id"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("record_id", sa.String(200), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("quarantined_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
        sa.UniqueConstraint("fingerprint", name="uq_quarantine_fingerprint"),
    )
    op.create_index("ix_quarantine_reason", "quarantine", ["reason"])


def downgrade() -> None:
    for table in ("quarantine", "edit_ledger", "feedback", "predictions", "model_classes"):
        op.drop_table(table)
