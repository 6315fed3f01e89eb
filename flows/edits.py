"""One error group, end to end: its pixels, its edit, and the checks it must pass alone.

Each group is edited on its own copy of the champion, so groups can run in parallel (threads
or Dask workers) and one group's failure touches nothing else. A group is accepted when its
edit fixes every edit image (reliability), keeps the champion's prediction on at least
``group_locality_min`` of the gate suite and keeps ``group_retention_min`` of the images earlier
nights fixed right; the night then combines accepted groups. What happened to a group is the
registry's own record type (``registry.GroupEdit``), so the flow and the registry never keep
two versions of it.
"""

from __future__ import annotations

import copy
import os
import socket
from dataclasses import dataclass

import torch
from torch import nn

from monitoring.images import ImageStore
from registry.record import ACCEPTED, ERROR, REJECTED, GroupEdit
from vitedit_ops.device import resolve_device
from vitedit_ops.editors import create_editor
from vitedit_ops.gate import image_hashes
from vitedit_ops.groups import ErrorGroup, ImageRef
from vitedit_ops.metrics import accuracy, predict_logits
from vitedit_ops.preprocess import Preprocessor

from .config import EditSettings
from .lineage import ChampionContext
from .preserved import PreservedPool


@dataclass(frozen=True)
class GroupImages:
    """A group's pixels (in [0, 1], model input size) and the predictions they came from."""

    group: ErrorGroup
    edit_pixels: torch.Tensor
    edit_refs: tuple[ImageRef, ...]
    heldout_pixels: torch.Tensor
    heldout_refs: tuple[ImageRef, ...]
    in_suite: int = 0           # images left out because the gate suite holds them

    @property
    def labels(self) -> torch.Tensor:
        return torch.full((len(self.edit_pixels),), self.group.true_class, dtype=torch.long)

    @property
    def heldout_labels(self) -> torch.Tensor:
        return torch.full((len(self.heldout_pixels),), self.group.true_class, dtype=torch.long)


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
    def failed(cls, group: ErrorGroup, error: str) -> GroupOutcome:
        """A group whose images or edit raised: reported, nothing applied."""
        return cls(GroupEdit(key=group.key, num_edit_images=len(group.edit_images),
                             num_heldout_images=len(group.heldout_images), patch=None,
                             outcome=ERROR, note=f"raised: {error}"))


def load_group_images(context: ChampionContext, group: ErrorGroup,
                      store: ImageStore) -> GroupImages:
    """Verified pixels of a group's images, minus any the gate suite already holds."""
    preprocessor = Preprocessor(context.spec)
    suite_hashes = set(context.suite.hashes) | set(context.suite.retention_hashes)

    def pixels(refs: tuple[ImageRef, ...]) -> tuple[torch.Tensor, tuple[ImageRef, ...]]:
        if not refs:
            return torch.empty(0, *context.spec.input_size), ()
        stacked = torch.stack([preprocessor.pixels_from_pil(store.load_image(r.sha256))
                               for r in refs])
        keep = [i for i, h in enumerate(image_hashes(stacked)) if h not in suite_hashes]
        return stacked[keep], tuple(refs[i] for i in keep)

    edit, edit_refs = pixels(group.edit_images)
    heldout, heldout_refs = pixels(group.heldout_images)
    dropped = group.size - len(edit_refs) - len(heldout_refs)
    return GroupImages(group, edit, edit_refs, heldout, heldout_refs, dropped)


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


def edit_group(context: ChampionContext, images: GroupImages, settings: EditSettings,
               device: str | None = None, preserved: PreservedPool | None = None
               ) -> GroupOutcome:
    """Edit a private copy of the champion on the group and check the edit on its own."""
    worker = f"{socket.gethostname()}/{os.getpid()}"
    sizes = {"key": images.group.key, "num_edit_images": len(images.edit_pixels),
             "num_heldout_images": len(images.heldout_pixels)}
    in_suite = (f"{images.in_suite} image(s) left out: in the gate suite"
                if images.in_suite else "")
    if len(images.edit_pixels) == 0:
        return GroupOutcome(GroupEdit(**sizes, patch=None, outcome=REJECTED,
                                      note="every edit image is in the gate suite",
                                      worker=worker), images)
    target = resolve_device(device)
    model = copy.deepcopy(context.model).to(target)
    inputs = context.suite.inputs
    edit_inputs = inputs(images.edit_pixels).to(target)
    heldout_inputs = inputs(images.heldout_pixels)
    before = {"reliability": accuracy(model, edit_inputs, images.labels),
              "generalization": accuracy(model, heldout_inputs, images.heldout_labels),
              "locality": 1.0}
    pool = inputs(preserved.pixels) if preserved is not None and len(preserved.pixels) \
        else None
    editor = create_editor(settings.method, hypernet=context.hypernet, preserved=pool,
                           **settings.editor_options())
    result = editor.edit(model, edit_inputs, images.labels)
    result.patch.apply(model)
    after = {"reliability": accuracy(model, edit_inputs, images.labels),
             "generalization": accuracy(model, heldout_inputs, images.heldout_labels),
             **suite_checks(context, model)}
    problems = suite_problems(after, settings)
    if after["reliability"] < 1.0:
        problems.insert(0, f"fixes {after['reliability']:.0%} of its edit images "
                           f"in {result.steps} steps")
    note = "; ".join(filter(None, ["; ".join(problems), in_suite]))
    return GroupOutcome(GroupEdit(
        **sizes, patch=None if problems else result.patch,
        outcome=REJECTED if problems else ACCEPTED, success=result.success, steps=result.steps,
        seconds=result.seconds, before=before, after=after, mask_scores=result.mask_scores,
        kept_units=dict(result.kept_units), note=note, worker=f"{worker} ({target})"), images)
