"""The edit ledger's states on real stores: a challenger's fixes are pending, committed once
its version serves, released when another challenger supersedes it, so its images are
collected again; and an existing store's rows survive the migration that adds the states."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from monitoring.collector import Collector
from monitoring.schema import COMMITTED, PENDING, RELEASED, EditLedger
from monitoring.store import LedgerSettlement, open_store

from .test_error_collector import World


@pytest.fixture
def world(store: Any, images: Any) -> World:
    return World(store, images)


def _collected(world: World) -> set[str]:
    return {ref.record_id for g in world.collect().groups
            for ref in (*g.edit_images, *g.heldout_images)}


def _states(store: Any) -> dict[str, str]:
    with store.read() as conn:
        return dict(conn.execute(sa.select(EditLedger.prediction_id, EditLedger.state)).tuples().all())


def test_a_superseded_challenger_releases_its_fixes_and_they_are_collected_again(
        world: World) -> None:
    """v2 and v3 are both children of champion v1; v3 replaced v2 as challenger unpromoted.
    v2's fixes are in neither model, so its images must come back."""
    store = world.store
    for i in range(4):
        world.add(f"a{i}", i, predicted=8, true=3)
    assert store.record_edit_usage("run-2", "2", ["a0", "a1"]) == 2
    assert _states(store) == {"a0": PENDING, "a1": PENDING}
    assert _collected(world) == {"a2", "a3"}  # the challenger's pending fixes stay out

    # still under review: nothing changes, the images stay out
    assert not store.settle_edit_usage("vit", committed={"1"}, under_review={"2"})
    assert _collected(world) == {"a2", "a3"}

    assert store.record_edit_usage("run-3", "3", ["a2"]) == 1
    settled = store.settle_edit_usage("vit", committed={"1"}, under_review={"3"})
    assert settled == LedgerSettlement(committed={}, released={"2": 2})
    assert _states(store) == {"a0": RELEASED, "a1": RELEASED, "a2": PENDING}
    assert _collected(world) == {"a0", "a1", "a3"}
    assert world.collect().summary.already_used == 1
    # a retried ledger task of the superseded night does not revive its rows
    assert store.record_edit_usage("run-2", "2", ["a0", "a1"]) == 0
    assert _collected(world) == {"a0", "a1", "a3"}
    edited = Collector(store, world.images).previously_edited("vit")
    assert [e.image.record_id for e in edited] == ["a2"]  # released fixes are not re-checked


def test_fixes_of_a_version_that_serves_are_committed_for_good(world: World) -> None:
    store = world.store
    for i in range(3):
        world.add(f"a{i}", i, predicted=8, true=3)
    store.record_edit_usage("run-2", "2", ["a0"])
    store.record_edit_usage("run-3", "3", ["a1"])
    # v2 promoted, v3 (a later child of v1) is the challenger; then v2 rolled back
    assert store.settle_edit_usage("vit", committed={"1", "2"}, under_review={"3"}) == (
        LedgerSettlement(committed={"2": 1}))
    assert store.settle_edit_usage("vit", committed={"1"}, under_review=set()) == (
        LedgerSettlement(released={"3": 1}))
    assert _states(store) == {"a0": COMMITTED, "a1": RELEASED}  # committed stays committed
    assert _collected(world) == {"a1", "a2"}
    # a superseded version promoted after all: its released rows are committed
    assert store.settle_edit_usage("vit", committed={"1", "2", "3"}, under_review=set()) == (
        LedgerSettlement(committed={"3": 1}))
    assert _collected(world) == {"a2"}
    assert store.ledger_states("vit") == {"2": {COMMITTED: 1}, "3": {COMMITTED: 1}}


def test_settling_one_model_leaves_the_others_ledger_alone(world: World) -> None:
    store = world.store
    store.register_model("other", 10)
    world.add("a", 1, predicted=8, true=3)
    world.add("b", 2, predicted=8, true=3, model="other")
    store.record_edit_usage("run-x", "2", ["a"])
    store.record_edit_usage("run-y", "2", ["b"])
    assert store.settle_edit_usage("vit", committed=set(), under_review=set()) == (
        LedgerSettlement(released={"2": 1}))
    assert _states(store) == {"a": RELEASED, "b": PENDING}


def test_an_existing_ledger_is_kept_through_the_upgrade_as_pending(empty_url: str,
                                                                   at_revision) -> None:
    """A store at 0003 with ledger rows (written the old way, at registration): upgraded on
    open, every row kept, pending until the next night settles it from the registry."""
    rows = []
    for i in range(3):
        rows += [("INSERT INTO predictions VALUES (:id, '2026-11-01 00:00:00', 'vit', '1', "
                  "NULL, 'x.png', :sha, 8, '[]', '{}', :sha, '2026-11-01 00:00:00')",
                  {"id": f"p{i}", "sha": f"{i}" * 64}),
                 ("INSERT INTO edit_ledger (run_id, model_name, model_version, prediction_id, "
                  "image_sha256, recorded_at) VALUES (:run, 'vit', :version, :id, :sha, "
                  "'2026-11-02 00:00:00')",
                  {"run": f"run-{i}", "version": str(2 + i), "id": f"p{i}", "sha": f"{i}" * 64})]
    at_revision("0003", *rows)
    with open_store(empty_url) as store:
        assert store.counts()["edit_ledger"] == 3
        assert store.ledger_states("vit") == {"2": {PENDING: 1}, "3": {PENDING: 1},
                                              "4": {PENDING: 1}}
        # the first night after the upgrade: v2 served, v4 is the challenger, v3 superseded
        assert store.settle_edit_usage("vit", committed={"1", "2"}, under_review={"4"}) == (
            LedgerSettlement(committed={"2": 1}, released={"3": 1}))
