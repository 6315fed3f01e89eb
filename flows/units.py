"""A night's edit units: subpopulations edited as scoped patches, and (true, predicted) groups.

The collector hands over every misclassified image of the window, grouped by (true,
predicted). Their pixels are loaded one by one (an unreadable image is left out and counted,
never the whole group), and, with ``subpopulations`` on, their keys at the edit window's input
sort them (``vitedit_ops.subpopulations``): errors off the clean manifold (shifted images)
are clustered into subpopulations, each one unit with all its labelled images (its errors to
fix, split into edit and held-out images, and the confirmed-correct production images that lie
with them, to keep right), edited inside a scope of its own. Errors on the clean manifold (hard
clean digits, which no scope can tell from the clean images they resemble) stay in
(true, predicted) groups edited the classic way, as do subpopulations too small to edit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

import numpy as np
import torch

from monitoring.collector import split_group
from monitoring.images import ImageStore
from vitedit_ops.gate import image_hashes
from vitedit_ops.groups import ErrorGroup, ImageRef
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.scope import window_keys
from vitedit_ops.sites import EditWindow
from vitedit_ops.subpopulations import Manifold, cluster, split_large

from .config import EditSettings
from .edits import GroupImages
from .lineage import ChampionContext
from .preserved import PreservedPool


@dataclass(frozen=True)
class Plan:
    """The units of a night, and what was left out while loading."""

    units: list[GroupImages]
    unreadable: int           # images whose blob failed to load or decode
    in_suite: int             # images the gate suite holds (never edited on)
    waiting: int              # errors in no unit tonight (small groups and subpopulations)
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, object]:
        return {"units": len(self.units),
                "subpopulations": sum(1 for u in self.units if u.scoped),
                "waiting": self.waiting, "unreadable": self.unreadable,
                "in_suite": self.in_suite, "notes": list(self.notes)}


@dataclass(frozen=True)
class _Error:
    ref: ImageRef
    true_class: int
    predicted_class: int
    pixels: torch.Tensor


def plan_units(context: ChampionContext, groups: list[ErrorGroup], store: ImageStore,
               preserved: PreservedPool | None, settings: EditSettings) -> Plan:
    """Load every collected error and sort the night's errors into edit units."""
    errors, unreadable, in_suite = _load(context, groups, store)
    notes: list[str] = []
    pairs_from = errors
    units: list[GroupImages] = []
    if settings.edits_subpopulations and errors:
        subpopulations, pairs_from, why = _subpopulations(context, errors, preserved, settings)
        units += subpopulations
        if why:
            notes.append(why)
    pair_units, waiting = _pairs(pairs_from, settings)
    units += pair_units
    return Plan(units, unreadable, in_suite, waiting, tuple(notes))


def _load(context: ChampionContext, groups: list[ErrorGroup], store: ImageStore
          ) -> tuple[list[_Error], int, int]:
    preprocessor = Preprocessor(context.spec)
    suite_hashes = set(context.suite.hashes) | set(context.suite.retention_hashes)
    errors, unreadable, in_suite = [], 0, 0
    for group in groups:
        for ref in (*group.edit_images, *group.heldout_images):
            try:
                pixels = preprocessor.pixels_from_pil(store.load_image(ref.sha256))
            except Exception:  # noqa: BLE001 - a bad blob costs that image, not the night
                unreadable += 1
                continue
            if image_hashes(pixels[None])[0] in suite_hashes:
                in_suite += 1
                continue
            errors.append(_Error(ref, group.true_class, group.predicted_class, pixels))
    return errors, unreadable, in_suite


def _subpopulations(context: ChampionContext, errors: list[_Error],
                    preserved: PreservedPool | None, settings: EditSettings
                    ) -> tuple[list[GroupImages], list[_Error], str]:
    """Subpopulation units, and the errors left for (true, predicted) groups.

    Every labelled production image off the clean manifold is clustered, errors and
    confirmed-correct images alike (a shift's correct images make its cluster denser); a
    cluster with at least ``min_errors`` errors is a unit: its errors to fix, its correct
    images to keep right.
    """
    if context.base_preserved is None or len(context.base_preserved) < 10:
        return [], errors, ("subpopulations off: the lineage registered no held-out preserved "
                            "pool to tell clean images from shifted ones")
    inputs = context.suite.inputs
    window = context.hypernet.window(context.model)
    manifold = Manifold.fit(window_keys(context.model, window,
                                        inputs(context.base_preserved)))
    error_keys = window_keys(context.model, window,
                             inputs(torch.stack([e.pixels for e in errors])))
    error_off = np.flatnonzero(manifold.off(error_keys).numpy())
    correct_pixels, correct_labels, correct_keys = _confirmed(context, window, preserved)
    correct_off = np.flatnonzero(manifold.off(correct_keys).numpy()) if len(correct_keys) \
        else np.zeros(0, dtype=int)
    clusters = _clusters(errors, error_off, error_keys, correct_off, correct_keys,
                         manifold, settings)
    big = sorted((c for c in clusters if len(c[0]) >= settings.scoped.min_errors),
                 key=lambda c: (-len(c[0]), min(c[0])))[:settings.scoped.max_units]
    claimed: set[int] = set()  # a confirmed-correct image is kept by one unit, the largest
    for n, (wrong, right) in enumerate(big):
        big[n] = (wrong, [i for i in right if i not in claimed])
        claimed.update(big[n][1])
    used = {i for wrong, _ in big for i in wrong}
    shifted = frozenset(image_hashes(correct_pixels[correct_off])) if len(correct_off) \
        else frozenset()
    units = [_unit(f"sub{n}", [errors[i] for i in wrong], settings, scoped=True,
                   keep=(correct_pixels[right], correct_labels[right]),
                   max_edit=settings.scoped.max_edit_images, off_manifold=shifted)
             for n, (wrong, right) in enumerate(big, start=1)]
    units = [replace(unit, neighbours=torch.cat(
                 [torch.cat([u.edit_pixels, u.keep_pixels]) for u in units if u is not unit]))
             if len(units) > 1 else unit for unit in units]
    return units, [e for i, e in enumerate(errors) if i not in used], ""


def _clusters(errors: list[_Error], error_off: np.ndarray, error_keys: torch.Tensor,
              correct_off: np.ndarray, correct_keys: torch.Tensor, manifold: Manifold,
              settings: EditSettings) -> list[tuple[list[int], list[int]]]:
    """(errors, confirmed-correct images) of every cluster, as indices into ``errors`` and
    the preserved pool. With ``scoped.cluster_per_day`` each serving day's errors are
    clustered on their own (with every confirmed-correct image), so a shift that arrived
    tonight is not merged with the leftovers of earlier nights."""
    days: dict[date | None, list[int]] = defaultdict(list)
    for position, index in enumerate(error_off.tolist()):
        served = errors[index].ref.served_at
        day = datetime.fromisoformat(served).astimezone(UTC).date() \
            if settings.scoped.cluster_per_day and served else None
        days[day].append(position)
    out: list[tuple[list[int], list[int]]] = []
    for positions in days.values():
        wrong = error_off[positions]
        keys = torch.cat([error_keys[wrong], correct_keys[correct_off]])
        labels = cluster(keys, manifold.whitening, settings.scoped.cluster_scale)
        if settings.scoped.max_unit_errors is not None:
            counted = np.arange(len(keys)) < len(wrong)
            labels = split_large(keys, manifold.whitening, labels, counted,
                                 settings.scoped.max_unit_errors)
        found: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for position, label in enumerate(labels.tolist()):
            if position < len(wrong):
                found[label][0].append(int(wrong[position]))
            else:
                found[label][1].append(int(correct_off[position - len(wrong)]))
        out += found.values()
    return out


def _confirmed(context: ChampionContext, window: EditWindow, preserved: PreservedPool | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The preserved pool's confirmed-correct production images: pixels, labels, keys."""
    if preserved is None or preserved.from_production == 0:
        return (torch.empty(0, *context.spec.input_size), torch.empty(0, dtype=torch.long),
                torch.empty(0, window.sites[0].in_features))
    pixels = preserved.pixels[:preserved.from_production]
    return (pixels, preserved.labels[:preserved.from_production],
            window_keys(context.model, window, context.suite.inputs(pixels)))


def _unit(key: str, errors: list[_Error], settings: EditSettings, scoped: bool,
          keep: tuple[torch.Tensor, torch.Tensor] | None = None,
          max_edit: int | None = None, off_manifold: frozenset[str] = frozenset()
          ) -> GroupImages:
    """A unit of ``errors``: split by each image's seeded rank, as the collector splits."""
    by_sha = {e.ref.sha256: e for e in errors}
    fraction = settings.scoped.heldout_fraction if scoped else settings.heldout_fraction
    edit, heldout = split_group(list(by_sha), seed=settings.seed, heldout_fraction=fraction,
                                max_edit_images=max_edit)

    def stack(shas: list[str]) -> tuple[torch.Tensor, torch.Tensor, tuple[ImageRef, ...]]:
        chosen = [by_sha[s] for s in shas]
        pixels = torch.stack([e.pixels for e in chosen]) if chosen else \
            torch.empty(0, *next(iter(by_sha.values())).pixels.shape)
        return (pixels, torch.tensor([e.true_class for e in chosen], dtype=torch.long),
                tuple(e.ref for e in chosen))

    edit_pixels, edit_labels, edit_refs = stack(edit)
    heldout_pixels, heldout_labels, heldout_refs = stack(heldout)
    keep_pixels, keep_labels = keep if keep is not None else (
        torch.empty(0, *edit_pixels.shape[1:]), torch.empty(0, dtype=torch.long))
    return GroupImages(key, edit_pixels, edit_labels, edit_refs, heldout_pixels,
                       heldout_labels, heldout_refs, keep_pixels, keep_labels, scoped=scoped,
                       not_outside=off_manifold)


def _pairs(errors: list[_Error], settings: EditSettings) -> tuple[list[GroupImages], int]:
    """(true, predicted) groups of at least ``min_group_size`` images, largest first, at most
    ``max_groups``; returns them and how many errors wait for a later night."""
    by_pair: dict[tuple[int, int], list[_Error]] = defaultdict(list)
    for error in errors:
        by_pair[(error.true_class, error.predicted_class)].append(error)
    eligible = sorted((g for g in by_pair.items() if len(g[1]) >= settings.min_group_size),
                      key=lambda kv: (-len(kv[1]), kv[0]))
    chosen = eligible[:settings.max_groups] if settings.max_groups is not None else eligible
    units = [_unit(f"{t}->{p}", members, settings, scoped=False,
                   max_edit=settings.max_edit_images)
             for (t, p), members in chosen]
    return units, len(errors) - sum(len(m) for _, m in chosen)
