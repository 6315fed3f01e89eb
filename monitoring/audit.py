"""The promotion audit trail in the monitoring store: insert only.

The registry keeps a copy for display (MLflow tags, which anyone who may edit the model can
rewrite); this table is the record. It offers no update or delete, and the database refuses
both by trigger. A move is appended in the same transaction that stays open while the alias
moves, so a move that fails leaves no row, and two promoters racing for the same sequence
number cannot both commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa

from vitedit_ops.audit import AliasEvent
from vitedit_ops.errors import InfrastructureError

from .schema import PromotionAudit, table_of
from .store import MonitoringStore


class StoreAuditTrail:
    """``vitedit_ops.audit.AuditTrail`` on a monitoring store."""

    def __init__(self, store: MonitoringStore) -> None:
        self.store = store

    def events(self, model: str, alias: str) -> list[AliasEvent]:
        """Every recorded move of ``model``'s ``alias``, oldest first."""
        with self.store.read() as conn:
            rows = conn.execute(sa.select(PromotionAudit)
                                .where(PromotionAudit.model_name == model,
                                       PromotionAudit.alias == alias)
                                .order_by(PromotionAudit.seq)).all()
        return [AliasEvent(seq=r.seq, alias=r.alias, action=r.action, version=r.version,
                           previous=r.previous, by=r.actor,
                           at=r.at.isoformat(timespec="seconds"), forced=r.forced,
                           reason=r.reason, overridden=r.overridden,
                           authenticated=r.authenticated) for r in rows]

    @contextmanager
    def recording(self, model: str, event: AliasEvent) -> Iterator[None]:
        """Insert ``event``; it is committed when the block (moving the alias) completes."""
        row = {"model_name": model, "alias": event.alias, "seq": event.seq,
               "action": event.action, "version": event.version, "previous": event.previous,
               "actor": event.by, "authenticated": event.authenticated,
               "at": datetime.fromisoformat(event.at), "forced": event.forced,
               "reason": event.reason, "overridden": event.overridden}
        with self.store.write() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(table_of(PromotionAudit)).values(row))
            except sa.exc.IntegrityError as exc:
                raise InfrastructureError(
                    f"another move of {model}@{event.alias} was recorded as #{event.seq} "
                    "meanwhile; run the command again") from exc
            yield
