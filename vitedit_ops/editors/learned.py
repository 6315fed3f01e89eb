"""The editor shared by the methods that learn *how* to edit (KE, MEND): apply the update
network's output to the window's FFN matrices, as a revertible dense patch.

A learned editor edits in one step (``max_steps=1``, as the papers do): the gradient of the
edit images' cross-entropy goes through the network and the result is subtracted from each
window matrix. ``lr`` multiplies the meta-learned step (1.0: as trained); more steps repeat
the update from the edited weights until every edit image is right and CE <= ``ce_target``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..forward import SplitForward, pooled_embedding
from ..learned_update import EditInputs, UpdateNet, window_factors
from ..models import fingerprint
from ..patch import Patch
from .base import Editor, EditResult, OptimConfig, frozen


def _one_step() -> OptimConfig:
    return OptimConfig(lr=1.0, optimizer="sgd", max_steps=1, ce_target=0.01)


@dataclass(kw_only=True)
class LearnedUpdateEditor(Editor):
    """Edits with a meta-trained update network of kind ``kind``."""

    updater: UpdateNet
    optim: OptimConfig = field(default_factory=_one_step)
    kind = ""

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> EditResult:
        images, labels = self.checked_inputs(model, images, labels)
        if self.updater.kind != self.kind:
            raise InvalidInputError(f"the {self.name} editor needs a {self.kind} update "
                                    f"network, got a {self.updater.kind} one")
        lineage = self.updater.check_base(model)
        window = self.updater.window(model)
        start = time.perf_counter()
        base_fp = fingerprint(model)
        updater = self.updater.to(images.device).eval()
        config = self.optim
        with frozen(model):
            with torch.no_grad():
                before = model(images).argmax(-1).cpu()
                split = SplitForward(model, window.sites[0].block_path)
                split.verify(images[:2])
                hidden = split.prefix(images)
                onehot = F.one_hot(labels, int(model.num_classes)).float()
                inputs = EditInputs(pooled_embedding(model, images).mean(0, keepdim=True),
                                    onehot.mean(0, keepdim=True))
            total: list[torch.Tensor] | None = None
            history: list[float] = []
            steps = 0
            while True:
                logits, factors = window_factors(model, window, split, hidden, labels, 1,
                                                 total)
                ce = F.cross_entropy(logits, labels)
                history.append(float(ce))
                right = bool((logits.argmax(-1) == labels).all())
                if (right and history[-1] <= config.ce_target) or steps >= config.max_steps:
                    break
                with torch.no_grad():
                    step = [config.lr * u for u in updater.updates(factors, inputs)]
                total = step if total is None else [t + s for t, s in zip(total, step)]
                steps += 1
        shapes = [tuple(s) for s in updater.config.shapes]
        deltas = [-t[0] for t in total] if total is not None else \
            [torch.zeros(s) for s in shapes]
        patch = Patch.from_deltas(
            model, [(name, "dense", None, d) for name, d in zip(window.weight_names, deltas)],
            base_fp, metadata={"method": self.name, "window": f"{window.start}-{window.end}"})
        after = logits.argmax(-1).cpu()
        labels_cpu = labels.cpu()
        return EditResult(
            method=self.name, patch=patch, success=bool((after == labels_cpu).all()),
            steps=steps, seconds=time.perf_counter() - start, loss_history=history,
            labels=labels_cpu, predictions_before=before, predictions_after=after,
            settings={"lr": config.lr, "optimizer": config.optimizer,
                      "max_steps": config.max_steps, "ce_target": config.ce_target,
                      "window": [window.start, window.end], "lineage": lineage.relation,
                      "updater": self.kind})
