"""Tables of the monitoring store (the migrations in ``migrations/`` create exactly these).

Timestamps are stored as UTC and come back aware, on SQLite and PostgreSQL alike. Indexes
exist for the collector's access paths: feedback -> prediction by id (covering), predictions
by (model, time) and by image hash, feedback by (image hash, class) for label conflicts and
pending rows, the ledger by (model, image hash) and (model, state, version), and the
promotion audit by (model, alias, seq).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; naive UTC on disk for SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the monitoring store; use UTC-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    })


class ModelClasses(Base):
    """The class set of a served model; records naming other classes are refused."""

    __tablename__ = "model_classes"

    model_name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    num_classes: Mapped[int] = mapped_column(sa.Integer)
    labels: Mapped[list[str] | None] = mapped_column(sa.JSON)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Prediction(Base):
    """One served prediction; ``id`` is the client's idempotency key."""

    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    model_name: Mapped[str] = mapped_column(sa.String(200))
    model_version: Mapped[str] = mapped_column(sa.String(200))
    model_alias: Mapped[str | None] = mapped_column(sa.String(200))
    image_uri: Mapped[str] = mapped_column(sa.Text)
    image_sha256: Mapped[str] = mapped_column(sa.String(64))
    predicted_class: Mapped[int] = mapped_column(sa.Integer)
    topk: Mapped[list[list[float]]] = mapped_column(sa.JSON)
    request_metadata: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.Index(None, "model_name", "ts"),
        sa.Index(None, "image_sha256", "id"),
        # covering index of the collector's join: feedback -> prediction without the table
        sa.Index("ix_predictions_collect", "id", "model_name", "ts", "predicted_class",
                 "image_sha256", "model_version"),
    )


class Feedback(Base):
    """A true label for a prediction; may precede its prediction, so no foreign key.

    ``image_sha256`` is copied from the prediction (NULL while it has not arrived: pending), so
    label conflicts per image are found from this table's own index.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str] = mapped_column(sa.String(200))
    true_class: Mapped[int] = mapped_column(sa.Integer)
    source: Mapped[str] = mapped_column(sa.String(200))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    image_sha256: Mapped[str | None] = mapped_column(sa.String(64))

    __table_args__ = (
        sa.UniqueConstraint("prediction_id", "true_class", "source"),
        sa.Index(None, "image_sha256", "true_class"),
    )


PENDING, COMMITTED, RELEASED = "pending", "committed", "released"


class EditLedger(Base):
    """Which prediction (and so which image) an edit run fixed, for which model version.

    ``state`` follows the version: ``pending`` while it is a challenger, ``committed`` once
    it is or was champion (its fixes served), ``released`` when another challenger replaced
    it unpromoted (its fixes are in no served model: the images may be collected again).
    """

    __tablename__ = "edit_ledger"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(sa.String(200))
    model_name: Mapped[str] = mapped_column(sa.String(200))
    model_version: Mapped[str] = mapped_column(sa.String(200))
    prediction_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    image_sha256: Mapped[str] = mapped_column(sa.String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(sa.String(20), server_default=PENDING)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("run_id", "prediction_id"),
        sa.Index(None, "model_name", "image_sha256"),
        sa.Index(None, "model_name", "state", "model_version"),
    )


class Quarantine(Base):
    """A refused record, its reason and raw payload; ``fingerprint`` makes re-runs idempotent."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    reason: Mapped[str] = mapped_column(sa.String(40), index=True)
    detail: Mapped[str] = mapped_column(sa.Text)
    origin: Mapped[str] = mapped_column(sa.Text)
    record_id: Mapped[str | None] = mapped_column(sa.String(200))
    raw: Mapped[str] = mapped_column(sa.Text)
    fingerprint: Mapped[str] = mapped_column(sa.String(64), unique=True)
    quarantined_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PromotionAudit(Base):
    """One move of a registered model's alias (promote, rollback, register-base), as recorded
    when it happened. Insert only: the store API has no update or delete, and a trigger
    refuses both on SQLite and PostgreSQL (``migrations/versions/0005``)."""

    __tablename__ = "promotion_audit"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(sa.String(200))
    alias: Mapped[str] = mapped_column(sa.String(200))
    seq: Mapped[int] = mapped_column(sa.Integer)
    action: Mapped[str] = mapped_column(sa.String(40))
    version: Mapped[str] = mapped_column(sa.String(200))
    previous: Mapped[str] = mapped_column(sa.String(200))
    actor: Mapped[str] = mapped_column(sa.String(200))
    authenticated: Mapped[bool] = mapped_column(sa.Boolean)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    forced: Mapped[bool] = mapped_column(sa.Boolean)
    reason: Mapped[str] = mapped_column(sa.Text)
    overridden: Mapped[str] = mapped_column(sa.Text)

    __table_args__ = (sa.UniqueConstraint("model_name", "alias", "seq"),)


metadata = Base.metadata


def table_of(model: type[Base]) -> sa.Table:
    """The Core table of a mapped class (for bulk inserts; typed, unlike ``__table__``)."""
    return cast(sa.Table, model.__table__)
