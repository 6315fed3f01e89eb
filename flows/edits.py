"""One edit unit, end to end: its edit and the checks it must pass alone.

A unit is a subpopulation (edited as a scoped patch) or a (true, predicted) group (``units``).
Each is edited on its own copy of the champion, so units can run in parallel (threads or Dask
workers) and one unit's failure touches nothing else. A unit is accepted when its edit fixes
every edit image it covers (reliability), keeps its confirmed-correct images right, keeps the
champion's prediction on at least ``group_locality_min`` of the gate suite, keeps
``group_retention_min`` of the images earlier nights fixed right and fixes at least
``group_generalization_min`` of its held-out errors, at least ``group_min_heldout`` of them
(a unit that does not generalize would fail the night's gate for every other unit, and a
two-image group passes 50% by luck; their errors wait for a night with more of them);
the night then combines accepted units. What happened to a unit is the registry's own record type
(``registry.GroupEdit``), so the flow and the registry never keep two versions of it.
"""

from __future__ import annotations

import copy
import os
import socket
from dataclasses import dataclass, replace

import torch
from torch import nn

from registry.record import ACCEPTED, ERROR, REJECTED, GroupEdit
from vitedit_ops.device import resolve_device
from vitedit_ops.editors import Editor, ScopedEditor, create_editor
from vitedit_ops.editors.serac import newest_scope_covers
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.groups import ImageRef
from vitedit_ops.metrics import accuracy, predict_logits
from vitedit_ops.scope import window_keys
from vitedit_ops.scoped import ScopedPatch
from vitedit_ops.side import SidePatch

from .config import EditSettings
from .lineage import ChampionContext, updater_for
from .preserved import PreservedPool


@dataclass(frozen=True)
class GroupImages:
    """A unit's pixels (in [0, 1], model input size) with their true classes: the errors it
    edits on, its held-out errors (generalization, never shown to the editor) and, for a
    subpopulation, the confirmed-correct images among them that must stay right. ``scoped``
    units are edited as scoped patches."""

    key: str
    edit_pixels: torch.Tensor
    edit_labels: torch.Tensor
    edit_refs: tuple[ImageRef, ...]
    heldout_pixels: torch.Tensor
    heldout_labels: torch.Tensor
    heldout_refs: tuple[ImageRef, ...]
    keep_pixels: torch.Tensor
    keep_labels: torch.Tensor
    scoped: bool = False
    not_outside: frozenset[str] = frozenset()  # hashes of preserved images off the clean
    # manifold: shifted images of some subpopulation, never what a scope calibrates against
    neighbours: torch.Tensor | None = None  # other subpopulations' images of the night: this
    # unit's scope keeps out of them, so the night's patches stack

    def covered(self, mask: list[bool]) -> GroupImages:
        """The unit restricted to the edit and keep images ``mask`` (edit images first)
        marks as covered by its scope."""
        n = len(self.edit_pixels)
        edit = torch.tensor(mask[:n], dtype=torch.bool)
        keep = torch.tensor(mask[n:], dtype=torch.bool)
        return replace(self, edit_pixels=self.edit_pixels[edit], edit_labels=self.edit_labels[edit],
                       edit_refs=tuple(r for r, m in zip(self.edit_refs, mask[:n]) if m),
                       keep_pixels=self.keep_pixels[keep], keep_labels=self.keep_labels[keep])


@dataclass(frozen=True)
class GroupOutcome:
    """A group's record (``edit.patch`` is set only for an accepted edit) and, once its
    images loaded, the pixels the checks, the stacking and the gate use again."""

    edit: GroupEdit
    images: GroupImages | None = None

    @property
    def key(self) -> str:
        return self.edit.key

    @property
    def accepted(self) -> bool:
        return self.edit.accepted

    @classmethod
    def failed(cls, images: GroupImages, error: str) -> GroupOutcome:
        """A unit whose edit raised: reported, nothing applied."""
        return cls(GroupEdit(key=images.key, num_edit_images=len(images.edit_pixels),
                             num_heldout_images=len(images.heldout_pixels), patch=None,
                             outcome=ERROR, note=f"raised: {error}"), images)


def suite_checks(context: ChampionContext, model: nn.Module) -> dict[str, float]:
    """What the gate will measure on the suite, for one group or a stack of them: locality
    against the champion and, once earlier nights fixed images, their retention."""
    suite = context.suite
    predictions = predict_logits(model, suite.inputs(suite.pixels)).argmax(-1)
    checks = {"locality": float((predictions == context.suite_predictions).float().mean())}
    if len(suite.retention_pixels):
        checks["retention"] = accuracy(model, suite.inputs(suite.retention_pixels),
                                       suite.retention_labels)
    return checks


def suite_problems(checks: dict[str, float], settings: EditSettings) -> list[str]:
    """Why ``checks`` fall short of the group floors (empty: they do not)."""
    problems = []
    if checks["locality"] < settings.group_locality_min:
        problems.append(f"suite locality {checks['locality']:.4f} < "
                        f"{settings.group_locality_min}")
    if checks.get("retention", 1.0) < settings.group_retention_min:
        problems.append(f"undoes earlier fixes: retention {checks['retention']:.4f} < "
                        f"{settings.group_retention_min}")
    return problems


def generalization_problems(after: dict[str, float], heldout: int,
                            settings: EditSettings) -> list[str]:
    """Why a unit's edit generalizes too little to ship, or has too few held-out images to tell
    (empty: it generalizes)."""
    if heldout < settings.group_min_heldout:
        return [f"{heldout} held-out image(s) cannot show it generalizes (at least "
                f"{settings.group_min_heldout}; waits for more data)"]
    if heldout and after["generalization"] < settings.group_generalization_min:
        return [f"fixes {after['generalization']:.0%} of its {heldout} held-out images < "
                f"{settings.group_generalization_min:.0%} (waits for more data)"]
    return []


def edit_group(context: ChampionContext, images: GroupImages, settings: EditSettings,
               device: str | None = None, preserved: PreservedPool | None = None
               ) -> GroupOutcome:
    """Edit a private copy of the champion on the unit and check the edit on its own."""
    worker = f"{socket.gethostname()}/{os.getpid()}"
    target = resolve_device(device)
    model = copy.deepcopy(context.model).to(target)
    inputs = context.suite.inputs
    pool = inputs(preserved.pixels) if preserved is not None and len(preserved.pixels) \
        else None
    notes = []
    if images.scoped:
        editor = _scoped_editor(context, images, settings, preserved)
    else:
        fixes = context.suite.retention_pixels
        protected = inputs(fixes) if settings.protect_fixes and len(fixes) else None
        editor = create_editor(settings.method, hypernet=context.hypernet, preserved=pool,
                               protected=protected,
                               updater=updater_for(context, settings.method),
                               **settings.editor_options())
    train = torch.cat([images.edit_pixels, images.keep_pixels])
    train_labels = torch.cat([images.edit_labels, images.keep_labels])
    before = {**_measure(context, model, images, target), "locality": 1.0}
    result = editor.edit(model, inputs(train).to(target), train_labels)
    if "covered" in result.settings:
        outside = len(train) - sum(result.settings["covered"])
        images = images.covered(result.settings["covered"])
        if outside:
            notes.append(f"{outside} image(s) outside the fitted scope (errors among them are "
                         "left for a later night)")
    if len(images.edit_pixels) == 0:
        return GroupOutcome(GroupEdit(
            key=images.key, num_edit_images=0, num_heldout_images=len(images.heldout_pixels),
            patch=None, outcome=REJECTED, note="; ".join(["no edit image left to fix"] + notes),
            worker=f"{worker} ({target})"), images)
    result.patch.apply(model)
    after = {**_measure(context, model, images, target), **suite_checks(context, model)}
    if isinstance(result.patch, ScopedPatch) and len(images.heldout_pixels):
        # a held-out error outside the scope cannot be fixed by this patch: say how many are in
        keys = window_keys(model, editor.window, inputs(images.heldout_pixels).to(target))
        after["heldout_in_scope"] = float(result.patch.scope.covers(keys).float().mean())
    elif isinstance(result.patch, SidePatch) and result.patch.kind == "serac" \
            and len(images.heldout_pixels):
        inside = newest_scope_covers(result.patch, model, inputs(images.heldout_pixels))
        after["heldout_in_scope"] = float(inside.float().mean())
    problems = suite_problems(after, settings)
    if after["reliability"] < 1.0:
        problems.insert(0, f"fixes {after['reliability']:.0%} of its edit images "
                           f"in {result.steps} steps")
    problems += generalization_problems(after, len(images.heldout_pixels), settings)
    if after.get("kept", 1.0) < 1.0:
        problems.append(f"keeps {after['kept']:.0%} of its confirmed-correct images right")
    note = "; ".join(problems + notes)
    return GroupOutcome(GroupEdit(
        key=images.key, num_edit_images=len(images.edit_pixels),
        num_heldout_images=len(images.heldout_pixels), patch=None if problems else result.patch,
        outcome=REJECTED if problems else ACCEPTED, success=result.success, steps=result.steps,
        seconds=result.seconds, before=before, after=after, mask_scores=result.mask_scores,
        kept_units=dict(result.kept_units), note=note, worker=f"{worker} ({target})"), images)


def _measure(context: ChampionContext, model: nn.Module, images: GroupImages,
             device: torch.device) -> dict[str, float]:
    """Reliability (edit images right), generalization (held-out images right) and, for a
    unit with confirmed-correct images, how many of them are right."""
    inputs = context.suite.inputs
    out = {"reliability": accuracy(model, inputs(images.edit_pixels).to(device),
                                   images.edit_labels),
           "generalization": accuracy(model, inputs(images.heldout_pixels),
                                      images.heldout_labels)}
    if len(images.keep_pixels):
        out["kept"] = accuracy(model, inputs(images.keep_pixels), images.keep_labels)
    return out


def _scoped_editor(context: ChampionContext, images: GroupImages, settings: EditSettings,
                   preserved: PreservedPool | None) -> Editor:
    """The subpopulation recipe inside a scope fitted against the preserved pool's clean
    images: shifted confirmed-correct images (this unit's own keep images among them) are
    not what a scope must leave out. SERAC fits its own scope (the same rule, against the
    same images) for its counterfactual classifier."""
    if preserved is None or len(preserved.pixels) == 0:
        raise InvalidInputError(f"{images.key}: a scoped edit needs a preserved pool "
                                "(EditSettings.preserve)")
    outside = [i for i, h in enumerate(preserved.hashes) if h not in images.not_outside]
    scoped = settings.scoped
    neighbours = None if images.neighbours is None or not scoped.avoid_neighbours \
        else context.suite.inputs(images.neighbours)
    if scoped.method == "serac":
        return create_editor("serac", hypernet=context.hypernet,
                             preserved=context.suite.inputs(preserved.pixels[outside]),
                             rule=scoped.rule, margin=scoped.margin,
                             avoid_earlier=scoped.avoid_earlier, avoid=neighbours,
                             **scoped.editor_options())
    inner = create_editor(scoped.method, hypernet=context.hypernet,
                          updater=updater_for(context, scoped.method),
                          **scoped.editor_options())
    return ScopedEditor(inner=inner, window=context.hypernet.window(context.model),
                        outside=context.suite.inputs(preserved.pixels[outside]),
                        rule=scoped.rule, margin=scoped.margin,
                        avoid_earlier=scoped.avoid_earlier,
                        avoid=neighbours, radius_scale=scoped.radius_scale,
                        per_key=scoped.per_key_ratio)
