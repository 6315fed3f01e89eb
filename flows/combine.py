"""Stack the accepted group edits on the champion, one after another.

Groups were edited independently, each on the champion, so two patches may touch the same
rows: the second one's recorded before-values are then stale. It is *rebased*: its change
(after - before) is re-expressed on the current weights, which keeps every patch exact and
revertible in application order. After each patch, every group applied so far must still fix
as many of its edit images as it did alone (all of them, for an edit), and the stack must stay
above the per-group suite floors (locality, retention of earlier nights' fixes): groups that
each pass alone can fail together. A group that breaks any of this is taken back out and
reported, as is one whose change cannot be re-expressed on the stack (two codebook edits that
changed the same entry): the night goes on with the others.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from torch import nn

from vitedit_ops.errors import PatchConflictError
from vitedit_ops.metrics import predict_logits
from vitedit_ops.models import fingerprint
from vitedit_ops.patch import Patch
from vitedit_ops.scoped import ScopedPatch
from vitedit_ops.side import SidePatch

from .config import EditSettings
from .edits import GroupOutcome, suite_checks, suite_problems
from .lineage import ChampionContext


@dataclass(frozen=True)
class Combination:
    """The candidate model, the patches applied to make it (in order, rebased where needed),
    and every group's final record: an applied group's record holds the patch as applied,
    an accepted group that broke the stack is marked left out."""

    model: nn.Module
    applied: list[tuple[GroupOutcome, Patch]]
    outcomes: list[GroupOutcome]

    @property
    def patches(self) -> list[Patch]:
        return [patch for _, patch in self.applied]

    @property
    def edited_params(self) -> list[str]:
        return sorted({p for patch in self.patches for p in patch.params})


def rebase(patch: Patch | ScopedPatch | SidePatch, model: nn.Module
           ) -> Patch | ScopedPatch | SidePatch:
    """The same change as ``patch``, with before-values read from ``model`` now (a side
    patch: its entries stacked on the side module the model holds now)."""
    if isinstance(patch, (ScopedPatch, SidePatch)):
        return patch.rebased(model)
    deltas = [(e.param, e.kind, e.index, e.after - e.before) for e in patch.entries]
    return Patch.from_deltas(model, deltas, fingerprint(model), metadata=patch.metadata)


def combine(context: ChampionContext, outcomes: list[GroupOutcome],
            settings: EditSettings) -> Combination:
    """Apply accepted outcomes' patches in order on a copy of the champion."""
    model = copy.deepcopy(context.model).cpu()
    applied: list[tuple[GroupOutcome, Patch]] = []
    final: list[GroupOutcome] = []
    for outcome in outcomes:
        if not outcome.accepted:
            final.append(outcome)
            continue
        try:
            outcome.edit.patch.apply(model)
            patch = outcome.edit.patch
        except PatchConflictError:
            try:
                patch = rebase(outcome.edit.patch, model)
                patch.apply(model)
            except PatchConflictError as exc:  # e.g. two codebook edits changed one entry
                final.append(replace(outcome, edit=outcome.edit.left_out(
                    f"left out when combining: it cannot be stacked on the earlier groups "
                    f"({exc})")))
                continue
        broken = [o.key for o, _ in [*applied, (outcome, patch)]
                  if not _fixes_all(context, model, o)]
        problems = ([f"it breaks {', '.join(broken)}"] if broken else
                    suite_problems(suite_checks(context, model), settings))
        if problems:
            patch.revert(model)
            final.append(replace(outcome, edit=outcome.edit.left_out(
                f"left out when combining, with the earlier groups: {'; '.join(problems)}")))
            continue
        outcome = replace(outcome, edit=replace(outcome.edit, patch=patch))  # as applied
        applied.append((outcome, patch))
        final.append(outcome)
    return Combination(model, applied, final)


def _fixes_all(context: ChampionContext, model: nn.Module, outcome: GroupOutcome) -> bool:
    """The stack still fixes as many of the unit's edit images as the unit did alone (all of
    them for an edit; a retraining fit may have reached fewer)."""
    images = outcome.images
    predictions = predict_logits(model, context.suite.inputs(images.edit_pixels)).argmax(-1)
    alone = outcome.edit.after.get("reliability", 1.0)
    right = float((predictions == images.edit_labels).float().mean()) if len(predictions) \
        else 1.0
    return right >= alone - 1e-9
