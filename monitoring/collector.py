"""The collector: production feedback -> error groups to edit on, plus replay pools.

It reads references only (ids, hashes, classes); pixels are fetched later through
``ImageStore.load_image``. It never writes the edit ledger (the flow does, with
``MonitoringStore.record_edit_usage``, once an edit has really used the images); it does
quarantine what it refuses to guess about: an image whose feedback names two true classes,
feedback for a class the model lacks, and feedback whose prediction never arrived.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.groups import ErrorGroup, ImageRef

from .images import ImageStore
from .schema import RELEASED, EditLedger, Feedback, ModelClasses, Prediction
from .store import MonitoringStore, QuarantineEntry
from .validation import Reason

DEFAULT_ORPHAN_GRACE = timedelta(days=7)


@dataclass(frozen=True)
class LabeledImage:
    """A production image with the class feedback confirmed, and the version that saw it."""

    image: ImageRef
    true_class: int
    predicted_class: int
    model_version: str


@dataclass(frozen=True)
class EditedImage:
    """An image an earlier edit run used (for re-checking that its fix still holds)."""

    image: ImageRef
    true_class: int
    predicted_class: int
    run_id: str
    model_version: str


@dataclass(frozen=True)
class CollectSummary:
    """What the collector saw and why images were left out."""

    model: str
    since: datetime
    until: datetime | None
    version: str | None
    seed: int
    misclassified_feedback: int   # feedback rows disagreeing with their prediction
    images: int                   # distinct misclassified images among them
    duplicate_records: int        # extra rows (predictions, repeat feedback) of a counted image
    already_used: int             # images an earlier edit of this model used
    conflicts: int                # images with feedback naming two true classes
    unknown_class: int            # feedback quarantined: class the model lacks
    orphans_expired: int          # feedback quarantined: prediction never arrived
    small_groups_skipped: int
    groups: int
    edit_images: int
    heldout_images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"] = self.since.isoformat()
        out["until"] = self.until.isoformat() if self.until else None
        return out


@dataclass(frozen=True)
class Collection:
    """The collector's result: error groups (largest first) and the summary."""

    groups: tuple[ErrorGroup, ...]
    summary: CollectSummary

    def prediction_ids(self) -> list[str]:
        """Ids of every image in every group, for ``record_edit_usage`` after the edit."""
        return [ref.record_id for g in self.groups
                for ref in (*g.edit_images, *g.heldout_images) if ref.record_id]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups], "summary": self.summary.to_dict()}


def split_rank(seed: int, sha256: str) -> str:
    """Order of an image within its group: seeded, and independent of the other images and
    of query order, so the split only shifts at the margin when new images join a group."""
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def split_group(shas: list[str], *, seed: int, heldout_fraction: float,
                max_edit_images: int | None) -> tuple[list[str], list[str]]:
    """(edit, held-out): at least one edit image; held-out gets ``floor(n * fraction)`` and
    anything beyond ``max_edit_images``."""
    ranked = sorted(shas, key=lambda sha: split_rank(seed, sha))
    n_edit = max(1, len(ranked) - int(len(ranked) * heldout_fraction))
    if max_edit_images is not None:
        n_edit = min(n_edit, max_edit_images)
    return ranked[:n_edit], ranked[n_edit:]


class Collector:
    """Turns the store's predictions and feedback into error groups and replay pools."""

    def __init__(self, store: MonitoringStore, images: ImageStore) -> None:
        self.store = store
        self.images = images

    def _ref(self, sha256: str, prediction_id: str, served_at: datetime | None = None
             ) -> ImageRef:
        return ImageRef(sha256=sha256, uri=self.images.uri_for(sha256), record_id=prediction_id,
                        served_at=served_at.isoformat() if served_at is not None else None)

    def collect(self, since: datetime, model: str, *, until: datetime | None = None,
                version: str | None = None, heldout_fraction: float = 0.5,
                max_edit_images: int | None = None, min_group_size: int = 1, seed: int = 0,
                orphan_grace: timedelta | None = DEFAULT_ORPHAN_GRACE) -> Collection:
        """Error groups of ``model`` from predictions made in ``[since, until)``.

        Joins predictions with feedback, keeps those whose true class differs from the
        prediction, drops images an earlier edit of this model fixed (ledger rows pending or
        committed; released rows of a superseded challenger do not count), de-duplicates by image
        hash (the latest prediction of an image wins), quarantines conflicting feedback,
        groups by (true, predicted) and splits each group deterministically by ``seed``.
        """
        if not 0 <= heldout_fraction < 1:
            raise InvalidInputError("heldout_fraction must be in [0, 1)")
        started = time.perf_counter()
        orphans = self.store.settle_pending_feedback(orphan_grace)
        window = self._window(model, since, until, version)
        with self.store.read() as conn:
            num_classes = self._num_classes(conn, model)
            # Walking feedback in prediction-id order keeps the lookups into predictions
            # (a covering index) local: about 2x faster than feedback's insertion order.
            rows = conn.execute(
                sa.select(Prediction.id, Prediction.image_sha256, Prediction.ts,
                          Prediction.predicted_class, Prediction.model_version, Feedback.id,
                          Feedback.true_class)
                .select_from(Feedback).join(Prediction, Prediction.id == Feedback.prediction_id)
                .where(window, Feedback.true_class != Prediction.predicted_class)
                .order_by(Feedback.prediction_id)).tuples().all()
            conflicts = self._conflict_details(
                conn, {row[1] for row in rows} & self._conflicting_images(conn))
            used = set(conn.execute(sa.select(EditLedger.image_sha256.distinct())
                                    .where(EditLedger.model_name == model,
                                           EditLedger.state != RELEASED)).scalars())

        bad_class = [row[5] for row in rows if row[6] >= num_classes]
        if bad_class:
            self.store.quarantine_feedback(
                bad_class, Reason.UNKNOWN_CLASS,
                f"true_class is not one of the model's {num_classes} classes")
        if conflicts:
            self.store.add_quarantine([self._conflict_entry(sha, labels)
                                       for sha, labels in sorted(conflicts.items())])

        latest: dict[str, tuple[str, str, datetime, int, str, int, int]] = {}
        used_images: set[str] = set()
        for row in rows:
            sha = row[1]
            if row[6] >= num_classes or sha in conflicts:
                continue
            if sha in used:
                used_images.add(sha)
                continue
            best = latest.get(sha)
            if best is None or (row[2], row[0]) > (best[2], best[0]):
                latest[sha] = row
        duplicates = sum(1 for r in rows if r[1] in latest) - len(latest)

        by_key: dict[tuple[int, int], list[str]] = defaultdict(list)
        for sha, row in latest.items():
            by_key[(row[6], row[3])].append(sha)
        groups: list[ErrorGroup] = []
        skipped = 0
        for (true_class, predicted), shas in by_key.items():
            if len(shas) < min_group_size:
                skipped += 1
                continue
            edit, heldout = split_group(shas, seed=seed, heldout_fraction=heldout_fraction,
                                        max_edit_images=max_edit_images)
            groups.append(ErrorGroup(
                true_class=true_class, predicted_class=predicted,
                edit_images=tuple(self._ref(s, latest[s][0], latest[s][2]) for s in edit),
                heldout_images=tuple(self._ref(s, latest[s][0], latest[s][2])
                                     for s in heldout),
                metadata={"model": model,
                          "model_versions": sorted({latest[s][4] for s in shas}),
                          "seed": seed, "since": since.isoformat()}))
        groups.sort(key=lambda g: (-g.size, g.true_class, g.predicted_class))
        summary = CollectSummary(
            model=model, since=since, until=until, version=version, seed=seed,
            misclassified_feedback=len(rows), images=len(latest) + len(used_images),
            duplicate_records=duplicates, already_used=len(used_images),
            conflicts=len(conflicts), unknown_class=len(bad_class), orphans_expired=orphans,
            small_groups_skipped=skipped, groups=len(groups),
            edit_images=sum(len(g.edit_images) for g in groups),
            heldout_images=sum(len(g.heldout_images) for g in groups),
            seconds=time.perf_counter() - started)
        return Collection(tuple(groups), summary)

    def confirmed_correct(self, since: datetime, model: str, limit: int = 1000, *,
                          version: str | None = None) -> list[LabeledImage]:
        """Production images whose prediction feedback confirmed correct (newest first,
        one per image, images with conflicting feedback left out): a replay pool."""
        self.store.settle_pending_feedback(None)  # link late predictions' feedback first
        window = self._window(model, since, None, version)
        with self.store.read() as conn:
            rows = list(conn.execute(
                sa.select(Prediction.ts, Prediction.id, Prediction.image_sha256,
                          Prediction.predicted_class, Prediction.model_version)
                .select_from(Feedback).join(Prediction, Prediction.id == Feedback.prediction_id)
                .where(window, Feedback.true_class == Prediction.predicted_class)
                .order_by(Feedback.prediction_id)).tuples())
            conflicting = self._conflicting_images(conn)
        rows.sort(reverse=True)  # newest first (ties: highest id)
        out: list[LabeledImage] = []
        seen: set[str] = set()
        for _, pid, sha, cls, version_ in rows:
            if sha in seen or sha in conflicting:
                continue
            seen.add(sha)
            out.append(LabeledImage(self._ref(sha, pid), cls, cls, version_))
            if len(out) >= limit:
                break
        return out

    def previously_edited(self, model: str, *, run_id: str | None = None) -> list[EditedImage]:
        """Images earlier edit runs of ``model`` fixed, with their (unambiguous) true class;
        not those of a superseded challenger (released: its fixes are in no served model)."""
        query = (sa.select(EditLedger.run_id, EditLedger.model_version, Prediction.id,
                           Prediction.image_sha256, Prediction.predicted_class,
                           sa.func.min(Feedback.true_class), sa.func.max(Feedback.true_class))
                 .join(Prediction, Prediction.id == EditLedger.prediction_id)
                 .join(Feedback, Feedback.prediction_id == Prediction.id)
                 .where(EditLedger.model_name == model, EditLedger.state != RELEASED)
                 .group_by(EditLedger.id, EditLedger.run_id, EditLedger.model_version,
                           Prediction.id, Prediction.image_sha256, Prediction.predicted_class)
                 .order_by(EditLedger.id))
        if run_id is not None:
            query = query.where(EditLedger.run_id == run_id)
        with self.store.read() as conn:
            rows = conn.execute(query).all()
        return [EditedImage(self._ref(sha, pid), lo, predicted, run, ver)
                for run, ver, pid, sha, predicted, lo, hi in rows if lo == hi]

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _window(model: str, since: datetime, until: datetime | None,
                version: str | None) -> sa.ColumnElement[bool]:
        clauses = [Prediction.model_name == model, Prediction.ts >= since]
        if until is not None:
            clauses.append(Prediction.ts < until)
        if version is not None:
            clauses.append(Prediction.model_version == version)
        return sa.and_(*clauses)

    @staticmethod
    def _num_classes(conn: Connection, model: str) -> int:
        num = conn.execute(sa.select(ModelClasses.num_classes)
                           .where(ModelClasses.model_name == model)).scalar_one_or_none()
        if num is None:
            raise InvalidInputError(f"model {model!r} is not registered in the monitoring store")
        return num

    @staticmethod
    def _conflicting_images(conn: Connection) -> set[str | None]:
        """Images whose feedback, over all time and every prediction of the image, names more
        than one true class (one pass over the feedback (image, class) index)."""
        return set(conn.execute(
            sa.select(Feedback.image_sha256).where(Feedback.image_sha256.is_not(None))
            .group_by(Feedback.image_sha256)
            .having(sa.func.min(Feedback.true_class) != sa.func.max(Feedback.true_class))
        ).scalars())

    @staticmethod
    def _conflict_details(conn: Connection,
                          shas: set[str]) -> dict[str, list[tuple[str, int, str]]]:
        """The (prediction, class, source) triples behind each conflicting image."""
        labels: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
        ordered = sorted(shas)
        for start in range(0, len(ordered), 5000):
            for sha, pid, cls, source in conn.execute(
                    sa.select(Feedback.image_sha256, Feedback.prediction_id,
                              Feedback.true_class, Feedback.source)
                    .where(Feedback.image_sha256.in_(ordered[start:start + 5000]))):
                labels[sha].append((pid, cls, source))
        return {sha: sorted(found) for sha, found in labels.items()}

    @staticmethod
    def _conflict_entry(sha: str, labels: list[tuple[str, int, str]]) -> QuarantineEntry:
        classes = sorted({cls for _, cls, _ in labels})
        raw = json.dumps({"image_sha256": sha, "feedback": [
            {"prediction_id": pid, "true_class": cls, "source": src} for pid, cls, src in labels]})
        return QuarantineEntry("feedback", Reason.CONFLICTING_FEEDBACK,
                               f"image {sha[:12]}... has feedback naming classes {classes}",
                               f"image:{sha}", raw, labels[0][0])
