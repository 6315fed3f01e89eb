"""The promotion audit on real stores: appended only when the move completes, read back as it
was written, and the database itself refuses to change or remove a row (SQLite, PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from monitoring.audit import StoreAuditTrail
from vitedit_ops.audit import AliasEvent, disagreements
from vitedit_ops.errors import InfrastructureError


def _event(seq: int, version: str, **fields: Any) -> AliasEvent:
    return AliasEvent(**{"seq": seq, "alias": "champion", "action": "promote",
                         "version": version, "previous": str(int(version) - 1), "by": "alice",
                         "at": "2026-12-02T10:00:00+00:00", "authenticated": True, **fields})


@pytest.fixture
def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"  # the audit keeps every row: one model per test


def test_moves_are_appended_and_read_back_as_written(store: Any, model: str) -> None:
    trail = StoreAuditTrail(store)
    first = _event(1, "1", action="register-base", previous="")
    second = _event(2, "2", forced=True, reason="hotfix", overridden="gate failed")
    for event in (first, second):
        with trail.recording(model, event):
            pass
    assert trail.events(model, "champion") == [first, second]
    assert trail.events(model, "challenger") == []


def test_a_move_that_fails_leaves_no_row(store: Any, model: str) -> None:
    trail = StoreAuditTrail(store)
    with pytest.raises(RuntimeError), trail.recording(model, _event(1, "2")):
        raise RuntimeError("the MLflow server went away mid-move")
    assert trail.events(model, "champion") == []


def test_two_promoters_cannot_both_record_the_same_move(store: Any, model: str) -> None:
    trail = StoreAuditTrail(store)
    with trail.recording(model, _event(1, "2")):
        pass
    with pytest.raises(InfrastructureError, match="recorded as #1 meanwhile"):
        with trail.recording(model, _event(1, "3", by="mallory")):
            pass
    assert [e.by for e in trail.events(model, "champion")] == ["alice"]


@pytest.mark.parametrize("statement", [
    "UPDATE promotion_audit SET actor = 'mallory'",
    "DELETE FROM promotion_audit",
])
def test_the_database_refuses_to_change_or_remove_a_row(store: Any, model: str,
                                                        statement: str) -> None:
    trail = StoreAuditTrail(store)
    with trail.recording(model, _event(1, "2")):
        pass
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        with store.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert [e.by for e in trail.events(model, "champion")] == ["alice"]


@pytest.mark.postgres
def test_postgresql_refuses_truncate_too(pg_url: str, model: str) -> None:
    from monitoring.store import open_store

    with open_store(pg_url) as store:
        with StoreAuditTrail(store).recording(model, _event(1, "2")):
            pass
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(sa.text("TRUNCATE promotion_audit"))
        assert len(StoreAuditTrail(store).events(model, "champion")) == 1


def test_disagreements_name_what_the_mirror_changed_added_or_lost() -> None:
    audit = [_event(1, "1"), _event(2, "2"), _event(3, "3")]
    mirror = [_event(1, "1"), _event(2, "2", by="mallory"), _event(4, "9")]
    assert disagreements(audit, mirror) == [
        "#2: by is 'mallory' in the MLflow mirror, 'alice' in the audit",
        "#3: in the audit (promote v3 by alice), missing from the MLflow mirror",
        "#4: in the MLflow mirror (promote v9 by alice), not in the audit",
    ]
    assert disagreements(audit, audit) == []
