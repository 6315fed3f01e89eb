"""The collector on real stores: join, filter, de-duplicate, exclude used images, quarantine
conflicts, group and split deterministically; plus the replay and retention pools."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from .monitoring_testlib import png_bytes

from monitoring.collector import Collector, split_group
from monitoring.feedback import submit_feedback
from monitoring.ingest import Ingestor
from monitoring.records import RawRecord
from vitedit_ops.errors import InvalidInputError

T0 = datetime(2026, 11, 1, tzinfo=UTC)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class World:
    """Predictions (with real image bytes) and feedback, added one line at a time."""

    def __init__(self, store: Any, images: Any) -> None:
        self.store, self.images = store, images
        self.ingestor = Ingestor(store, images, workers=1)

    def add(self, pid: str, image: int, predicted: int, true: int | None = None, *,
            day: int = 0, version: str = "1", model: str = "vit") -> None:
        record = {"id": pid, "ts": T0 + timedelta(days=day), "model": model,
                  "model_version": version, "predicted_class": predicted}
        outcome = self.ingestor.prediction_batch(
            [RawRecord.from_mapping(record, "test", image=png_bytes(image))])
        assert outcome.accepted == 1, outcome
        if true is not None:
            self.label(pid, true)

    def label(self, pid: str, true: int, source: str = "review") -> None:
        report = submit_feedback(self.store, [{"prediction_id": pid, "true_class": true,
                                               "source": source}])
        assert report.accepted == 1, report

    def collect(self, **kwargs: Any) -> Any:
        kwargs.setdefault("since", EPOCH)
        kwargs.setdefault("model", "vit")
        return Collector(self.store, self.images).collect(**kwargs)


@pytest.fixture
def world(store: Any, images: Any) -> Any:
    store.register_model("other", 10)
    yield World(store, images)


def test_misclassified_images_are_grouped_and_split(world: World) -> None:
    for i in range(5):
        world.add(f"a{i}", i, predicted=8, true=3)
    for i in range(5, 7):
        world.add(f"b{i}", i, predicted=7, true=2)
    world.add("ok", 20, predicted=4, true=4)       # confirmed correct: not an error
    world.add("unlabelled", 21, predicted=5)        # no feedback yet
    result = world.collect()

    assert [g.key for g in result.groups] == ["3->8", "2->7"]
    big, small = result.groups
    assert (len(big.edit_images), len(big.heldout_images)) == (3, 2)
    assert (len(small.edit_images), len(small.heldout_images)) == (1, 1)
    assert not {r.sha256 for r in big.edit_images} & {r.sha256 for r in big.heldout_images}
    assert {r.record_id for r in (*big.edit_images, *big.heldout_images)} == {
        f"a{i}" for i in range(5)}
    ref = big.edit_images[0]
    assert ref.uri == world.images.uri_for(ref.sha256)
    assert world.images.load_image(ref.sha256).size == (8, 8)  # pixels via the image store
    assert big.metadata["model_versions"] == ["1"]
    assert sorted(result.prediction_ids()) == sorted([f"a{i}" for i in range(5)] + ["b5", "b6"])
    s = result.summary
    assert (s.misclassified_feedback, s.images, s.groups, s.edit_images, s.heldout_images) == (
        7, 7, 2, 4, 3)


def test_the_split_is_deterministic_and_seeded(world: World) -> None:
    for i in range(12):
        world.add(f"a{i}", i, predicted=8, true=3)
    first, again = world.collect(seed=1).groups[0], world.collect(seed=1).groups[0]
    assert first == again
    other = world.collect(seed=2).groups[0]
    assert set(other.edit_images) | set(other.heldout_images) == (
        set(first.edit_images) | set(first.heldout_images))
    assert other.edit_images != first.edit_images


def test_split_options(world: World) -> None:
    for i in range(6):
        world.add(f"a{i}", i, predicted=8, true=3)
    world.add("lonely", 10, predicted=1, true=2)
    result = world.collect(heldout_fraction=0.0, max_edit_images=2, min_group_size=2)
    [group] = result.groups
    assert (len(group.edit_images), len(group.heldout_images)) == (2, 4)
    assert result.summary.small_groups_skipped == 1
    with pytest.raises(InvalidInputError):
        world.collect(heldout_fraction=1.0)


@given(st.lists(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), unique=True,
                min_size=1, max_size=40),
       st.integers(0, 10), st.floats(0, 0.95), st.none() | st.integers(1, 10))
def test_split_group_partitions_with_at_least_one_edit_image(
        shas: list[str], seed: int, fraction: float, cap: int | None) -> None:
    edit, heldout = split_group(shas, seed=seed, heldout_fraction=fraction, max_edit_images=cap)
    assert sorted(edit + heldout) == sorted(shas) and len(edit) >= 1
    assert (edit, heldout) == split_group(list(reversed(shas)), seed=seed,
                                          heldout_fraction=fraction, max_edit_images=cap)


def test_duplicates_by_image_hash_keep_the_latest_prediction(world: World) -> None:
    world.add("old", 1, predicted=8, true=3, day=0)
    world.add("new", 1, predicted=5, true=3, day=2)  # same image, a later model's mistake
    world.label("new", 3, source="second-opinion")
    result = world.collect()
    [group] = result.groups
    assert group.key == "3->5" and [r.record_id for r in group.edit_images] == ["new"]
    assert result.summary.duplicate_records == 2
    # when the kept prediction was served: what a night clusters by (scoped.cluster_per_day)
    assert group.edit_images[0].served_at == (T0 + timedelta(days=2)).isoformat()


def test_images_used_by_an_edit_are_not_collected_again(world: World) -> None:
    for i in range(4):
        world.add(f"a{i}", i, predicted=8, true=3)
    world.add("x", 0, predicted=8, model="other", true=3)  # same image, another model
    store = world.store
    assert store.record_edit_usage("run-1", "2", ["a0", "a1"]) == 2
    assert store.record_edit_usage("run-1", "2", ["a0", "a1"]) == 0  # a retried task
    world.add("a0-again", 0, predicted=8, true=3, day=3)  # same image, served again
    result = world.collect()
    assert {r.record_id for g in result.groups for r in (*g.edit_images, *g.heldout_images)} == {
        "a2", "a3"}
    assert result.summary.already_used == 2
    assert len(world.collect(model="other").groups) == 1  # the ledger is per model
    with pytest.raises(InvalidInputError, match="unknown prediction"):
        store.record_edit_usage("run-2", "3", ["a2", "no-such-id"])
    assert store.counts()["edit_ledger"] == 2  # nothing recorded from the failed call


def test_previously_edited_images_come_back_with_their_labels(world: World) -> None:
    world.add("a", 1, predicted=8, true=3)
    world.add("b", 2, predicted=8, true=3)
    world.store.record_edit_usage("run-1", "2", ["a"])
    world.store.record_edit_usage("run-2", "3", ["b"])
    history = Collector(world.store, world.images).previously_edited("vit")
    assert [(e.run_id, e.model_version, e.image.record_id, e.true_class, e.predicted_class)
            for e in history] == [("run-1", "2", "a", 3, 8), ("run-2", "3", "b", 3, 8)]
    only = Collector(world.store, world.images).previously_edited("vit", run_id="run-2")
    assert [e.image.record_id for e in only] == ["b"]


def test_conflicting_feedback_is_quarantined_not_guessed(world: World) -> None:
    world.add("p1", 1, predicted=8, true=3)
    world.add("p2", 1, predicted=8, true=5, day=1)  # same image, another true class
    world.add("p3", 2, predicted=8, true=3)
    world.add("p4", 4, predicted=4, true=4)
    world.add("p5", 4, predicted=6, true=2)         # correct once, then labelled otherwise
    for _ in range(2):  # collecting again does not quarantine twice
        result = world.collect()
        assert [(g.key, [r.record_id for r in g.edit_images]) for g in result.groups] == [
            ("3->8", ["p3"])]
        assert result.summary.conflicts == 2
    conflicts = world.store.quarantined(reason="conflicting_feedback")
    assert len(conflicts) == 2
    assert all('"true_class": 3' in q.raw and '"true_class": 5' in q.raw
               for q in conflicts if "p1" in q.raw)
    pool = Collector(world.store, world.images).confirmed_correct(EPOCH, "vit")
    assert pool == []  # p4's image has conflicting feedback


def test_window_version_and_model_filters(world: World) -> None:
    world.add("early", 1, predicted=8, true=3, day=0)
    world.add("late", 2, predicted=8, true=3, day=5)
    world.add("v2", 3, predicted=8, true=3, day=5, version="2")
    world.add("elsewhere", 4, predicted=8, true=3, day=5, model="other")

    def ids(**kwargs: Any) -> set[str]:
        return {r.record_id for g in world.collect(**kwargs).groups
                for r in (*g.edit_images, *g.heldout_images)}

    assert ids() == {"early", "late", "v2"}
    assert ids(since=T0 + timedelta(days=1)) == {"late", "v2"}
    assert ids(until=T0 + timedelta(days=1)) == {"early"}
    assert ids(version="2") == {"v2"}
    assert ids(model="other") == {"elsewhere"}
    with pytest.raises(InvalidInputError, match="not registered"):
        world.collect(model="nobody")


def test_confirmed_correct_is_a_replay_pool(world: World) -> None:
    for i in range(5):
        world.add(f"ok{i}", i, predicted=i, true=i, day=i)
    world.add("ok-dup", 0, predicted=0, true=0, day=10)  # same image as ok0, newer
    world.add("wrong", 9, predicted=1, true=2)
    collector = Collector(world.store, world.images)
    pool = collector.confirmed_correct(EPOCH, "vit", limit=3)
    assert [(p.image.record_id, p.true_class) for p in pool] == [
        ("ok-dup", 0), ("ok4", 4), ("ok3", 3)]
    assert all(p.true_class == p.predicted_class for p in pool)
    full = collector.confirmed_correct(T0 + timedelta(days=2), "vit")
    assert [p.image.record_id for p in full] == ["ok-dup", "ok4", "ok3", "ok2"]
