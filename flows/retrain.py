"""The peer users would pick instead of editing: fine-tune the champion on all labelled
feedback of the window, with replay of clean images, and gate it like any night.

One candidate a night: the configured editor (``full_ft`` or ``lora`` usually) fitted on
every edit image of every unit, the confirmed-correct production images of the preserved pool
(their reviewers' labels) and the base's held-out pool (the champion's own predictions as
targets, the replay of clean images); the units' held-out images measure generalization at
the gate as for edits. It answers how much of retraining's repair the product gets, at what
cost in clean agreement and compute.
"""

from __future__ import annotations

import copy
import os
import socket

import torch

from registry.record import ACCEPTED, REJECTED, GroupEdit
from vitedit_ops.device import resolve_device
from vitedit_ops.editors import create_editor
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.gate.suite import UNKNOWN_LABEL
from vitedit_ops.metrics import accuracy, predict_logits

from .config import EditSettings
from .edits import GroupImages, GroupOutcome, suite_checks, suite_problems
from .lineage import ChampionContext, updater_for
from .preserved import PreservedPool

KEY = "retrain"


def merged(units: list[GroupImages]) -> GroupImages:
    """Every unit's images as one unit (what a retraining night fixes and is judged on)."""
    if not units:
        raise InvalidInputError("nothing to retrain on: no unit has images")

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(u, name) for u in units])

    return GroupImages(KEY, cat("edit_pixels"), cat("edit_labels"),
                       tuple(r for u in units for r in u.edit_refs), cat("heldout_pixels"),
                       cat("heldout_labels"), tuple(r for u in units for r in u.heldout_refs),
                       cat("keep_pixels"), cat("keep_labels"))


def retrain(context: ChampionContext, units: list[GroupImages], settings: EditSettings,
            device: str | None = None, preserved: PreservedPool | None = None
            ) -> GroupOutcome:
    """Fine-tune a copy of the champion on the night's labelled images plus replay."""
    images = merged(units)
    target = resolve_device(device)
    model = copy.deepcopy(context.model).to(target)
    inputs = context.suite.inputs
    train, labels = [images.edit_pixels, images.keep_pixels], [images.edit_labels,
                                                                images.keep_labels]
    if preserved is not None and len(preserved.pixels):
        pool = inputs(preserved.pixels)
        known = preserved.labels != UNKNOWN_LABEL
        targets = torch.where(known, preserved.labels,
                              predict_logits(model, pool).argmax(-1).cpu())
        train.append(preserved.pixels)
        labels.append(targets)
    train_inputs, train_labels = inputs(torch.cat(train)).to(target), torch.cat(labels)
    before = {"reliability": accuracy(model, inputs(images.edit_pixels).to(target),
                                      images.edit_labels),
              "generalization": accuracy(model, inputs(images.heldout_pixels),
                                         images.heldout_labels), "locality": 1.0}
    editor = create_editor(settings.method, hypernet=context.hypernet,
                           updater=updater_for(context, settings.method),
                           **settings.editor_options())
    result = editor.edit(model, train_inputs, train_labels)
    result.patch.apply(model)
    after = {"reliability": accuracy(model, inputs(images.edit_pixels).to(target),
                                     images.edit_labels),
             "generalization": accuracy(model, inputs(images.heldout_pixels),
                                        images.heldout_labels),
             **suite_checks(context, model)}
    # retraining promises no edit image in particular: the gate's reliability check judges
    # the night, the note says how far it got
    problems = suite_problems(after, settings)
    notes = problems + [f"fits {after['reliability']:.0%} of the edit images in "
                        f"{result.steps} steps"]
    worker = f"{socket.gethostname()}/{os.getpid()} ({target})"
    return GroupOutcome(GroupEdit(
        key=KEY, num_edit_images=len(images.edit_pixels),
        num_heldout_images=len(images.heldout_pixels), patch=None if problems else result.patch,
        outcome=REJECTED if problems else ACCEPTED, success=result.success, steps=result.steps,
        seconds=result.seconds, before=before, after=after, note="; ".join(notes),
        worker=worker), images)
