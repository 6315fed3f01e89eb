"""What a night fixed: the images it now gets right, the ledger ids and the grown suite.

The same function serves a fresh run (the candidate it just built) and a re-run that finds
its version already registered (that version's weights), so both record the same ledger.
Every fixed image goes into the ledger; the *edit* images (what the night was made to fix)
become retention images of the lineage's suite, so every later night's gate checks that these
fixes still hold. Held-out images a night fixed in passing are not held to that: they were
right by generalization, often by a hair, and would make every later edit look like it undoes
earlier work.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitedit_ops.gate import load_suite
from vitedit_ops.metrics import predict_logits

from .edits import GroupImages
from .lineage import ChampionContext


@dataclass(frozen=True)
class Fixes:
    """Images of applied groups that the new model classifies right."""

    pixels: torch.Tensor
    labels: torch.Tensor
    edited: torch.Tensor             # True: an edit image (retention); False: held-out
    groups: tuple[str, ...]          # the group key of each image
    prediction_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def fixed_images(model: nn.Module, context: ChampionContext, images: Iterable[GroupImages],
                 applied: Iterable[str]) -> Fixes:
    """Edit and held-out images of the ``applied`` units that ``model`` now gets right."""
    wanted = set(applied)
    pixels, labels, edited, groups, ids = [], [], [], [], []
    for unit in images:
        if unit.key not in wanted:
            continue
        batch = torch.cat([unit.edit_pixels, unit.heldout_pixels])
        truth = torch.cat([unit.edit_labels, unit.heldout_labels])
        refs = (*unit.edit_refs, *unit.heldout_refs)
        right = predict_logits(model, context.suite.inputs(batch)).argmax(-1) == truth
        for i in torch.nonzero(right).flatten().tolist():
            pixels.append(batch[i])
            labels.append(int(truth[i]))
            edited.append(i < len(unit.edit_pixels))
            groups.append(unit.key)
            if refs[i].record_id:
                ids.append(refs[i].record_id)
    empty = torch.empty(0, *context.spec.input_size)
    return Fixes(torch.stack(pixels) if pixels else empty, torch.tensor(labels, dtype=torch.long),
                 torch.tensor(edited, dtype=torch.bool), tuple(groups), tuple(ids))


def grow_suite(context: ChampionContext, fixes: Fixes, source: str, workdir: Path) -> Path:
    """A copy of the champion's suite extended with the fixed edit images (one new version)."""
    target = workdir / "suite"
    shutil.copytree(context.suite.path, target)
    if fixes.edited.any():
        chosen = torch.nonzero(fixes.edited).flatten().tolist()
        load_suite(target).extend_with_fixes(fixes.pixels[chosen], fixes.labels[chosen],
                                             [f"{source}:{fixes.groups[i]}" for i in chosen])
    return target
