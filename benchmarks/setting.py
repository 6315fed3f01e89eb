"""The benchmark's setting on the reference model: error groups, locality sets, method grid.

Held-out pools only: groups come from shifted images of the ``shift`` pool, locality is
measured on the ``locality`` pool (and its sensitive subset), and the editor never sees either
except the edit images themselves. ``assert_disjoint`` guards that at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitedit_ops.edit_cases import GroupInputs
from vitedit_ops.editors import PAPER, PRODUCT
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.learned_update import UpdateNet
from vitedit_ops.metrics import predict_logits, select_sensitive
from vitedit_ops.models import ModelSpec
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference import (DEFAULT_SHIFTS, ReferenceData, assert_disjoint,
                                   shifted_error_groups)

from .grid import EvalSets, MethodPoint

SHIFT_SEED = 0
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
QUICK_MAX_STEPS = 20  # --quick checks structure and sanity, not the frontier
KEEPS = (0.25, 0.10, 0.05)


@dataclass
class Setting:
    evals: EvalSets
    sensitive_rule: str
    pools: dict[str, int]


def build_setting(model: nn.Module, spec: ModelSpec, data: ReferenceData,
                  shifts: tuple[str, ...] = DEFAULT_SHIFTS, min_size: int = 8) -> Setting:
    """Error groups of every shift and the evaluation sets, with disjointness checked."""
    pre = Preprocessor(spec)
    groups: list[GroupInputs] = []
    for shift in shifts:
        outcome = shifted_error_groups(model, spec, data.shift, shift, seed=SHIFT_SEED,
                                       min_size=min_size)
        groups += [GroupInputs(shift, g.true_class, g.predicted_class,
                               pre.normalize(g.images.pixels), list(g.images.ids))
                   for g in outcome.groups]
    assert_disjoint({"train": data.train, "locality": data.locality, "preserved": data.preserved,
                     "groups": [i for g in groups for i in g.ids]})
    inputs = pre.normalize(data.locality.pixels)
    logits = predict_logits(model, inputs)
    sensitive = select_sensitive(logits, data.locality.labels)
    evals = EvalSets(inputs, logits.argmax(-1), sensitive.indices, groups)
    return Setting(evals, sensitive.rule, {"groups": len(groups),
                                           "group_images": sum(len(g.inputs) for g in groups),
                                           "locality": len(inputs),
                                           "sensitive": len(sensitive.indices)})


@dataclass(frozen=True)
class Family:
    """A method as the benchmark sweeps it: its learning rates and its own knob."""

    name: str
    editor: str
    knob: str                      # option name swept as the knob ("" for none)
    knob_values: tuple = ()
    lrs: tuple[float, ...] = LRS
    options: tuple[tuple[str, Any], ...] = ()
    ablation: bool = False  # a variant of the product's options, not a baseline to beat

    def points(self, quick: bool) -> list[MethodPoint]:
        lrs = self.lrs[len(self.lrs) // 2:][:1] if quick else self.lrs
        values = self.knob_values[len(self.knob_values) // 2:][:1] if quick else self.knob_values
        common = (("max_steps", QUICK_MAX_STEPS),) if quick and self.knob != "max_steps" \
            else ()
        if not self.knob:
            return [MethodPoint(self.name, self.editor, "-", lr, self.options + common)
                    for lr in lrs]
        return [MethodPoint(self.name, self.editor, f"{self.knob}={v:g}", lr,
                            ((self.knob, v),) + self.options + common)
                for lr in lrs for v in values]


PAPER_OPTIONS = tuple(PAPER.options.items()) + (("replay_weight", 0.0),
                                                ("null_space_energy", 0.0), ("jitter_copies", 0))
# the product's options beyond the paper's, on a random mask: does *where* matter?
PRODUCT_OPTIONS = tuple((k, v) for k, v in PRODUCT.options.items()
                        if k in ("null_space_energy", "jitter_copies", "jitter_max_images",
                                 "ce_target"))
# what the product ran before null-space edits (confusable KL replay, weight 10)
PREVIOUS_DEFAULT = (("null_space_energy", 0.0), ("jitter_copies", 0), ("replay_weight", 10.0))
# a null-space edit moves only part of each gradient, so its useful rates sit higher
NULL_SPACE_LRS = (1e-3, 3e-3, 6e-3, 1e-2)
REPLAY_LRS = (3e-4, 1e-3, 3e-3)
# a rank-one value and added parameters start from nothing: their useful rates sit higher
# (ROME at 1e-2 fixed a third of the quick run's single edits within its 20 steps)
LOCATE_LRS = (1e-2, 3e-2, 1e-1)
SIDE_LRS = (3e-3, 1e-2, 3e-2, 1e-1)
# KE and MEND: the rate multiplies the meta-learned step (1: as trained); steps repeat it
UPDATE_LRS = (0.5, 1.0, 2.0, 4.0)
PRODUCT_FAMILY = Family("localized (product)", PRODUCT.method, "",
                        lrs=(PRODUCT.get("lr"),),
                        options=tuple((k, v) for k, v in PRODUCT.options.items() if k != "lr"))
FAMILIES = (
    PRODUCT_FAMILY,
    Family("localized (product, lr swept)", PRODUCT.method, "keep_fraction", (0.25, 0.10),
           NULL_SPACE_LRS, options=tuple((k, v) for k, v in PRODUCT.options.items()
                                         if k not in ("lr", "keep_fraction")), ablation=True),
    Family("localized (paper)", "localized", "keep_fraction", KEEPS,
           options=tuple((k, v) for k, v in PAPER_OPTIONS if k not in ("lr", "keep_fraction"))),
    Family("random mask", "random_mask", "keep_fraction", KEEPS,
           options=tuple((k, v) for k, v in PAPER_OPTIONS if k not in ("lr", "keep_fraction"))),
    Family("random mask + product options", "random_mask", "keep_fraction", (0.25, 0.10),
           NULL_SPACE_LRS, options=PRODUCT_OPTIONS, ablation=True),
    Family("localized, previous default", "localized", "keep_fraction", (0.10,), REPLAY_LRS,
           options=PREVIOUS_DEFAULT, ablation=True),
    Family("window FT", "window_ft", ""),
    Family("FT-L1", "ft_l1", "strength", (1e-3, 1e-2)),
    Family("FT-L2", "ft_l2", "strength", (1e-2, 1e-1)),
    Family("LoRA", "lora", "rank", (2, 8)),
    Family("full FT", "full_ft", "", lrs=(1e-5, 3e-5, 1e-4)),
    # the paper's other baselines; GRACE's radius is relative to the key's norm (on the
    # reference model an error group's other images sit at 0.5-1.3 of it, clean ones >= 0.3)
    Family("KN", "kn", "keep_fraction", KEEPS),
    Family("ROME", "rome", "site", (0, 1, 2), LOCATE_LRS),
    Family("ROME+LoRA", "rome_lora", "rank", (2, 8)),
    Family("T-Patcher", "t_patcher", "neurons", (1, 4), SIDE_LRS),
    Family("GRACE", "grace", "epsilon", (0.3, 0.6, 0.9), SIDE_LRS),
    # SERAC's counterfactual classifier starts at the base's: its knob is the scope's ratio
    Family("SERAC", "serac", "margin", (0.6, 0.8), SIDE_LRS),
    # the review's "fair comparison": networks that learn how to edit, meta-trained on the
    # hypernetwork's CutMix episodes (vitedit_ops/reference/updaters.py)
    Family("KE", "ke", "max_steps", (1, 3), UPDATE_LRS),
    Family("MEND", "mend", "max_steps", (1, 3), UPDATE_LRS),
)


def select_families(names: Sequence[str] | None) -> tuple[Family, ...]:
    """The named families (all of them for None), in the benchmark's order."""
    if not names:
        return FAMILIES
    known = {f.name for f in FAMILIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInputError(f"unknown method famil{'ies' if len(unknown) > 1 else 'y'} "
                                f"{', '.join(map(repr, unknown))}; available: "
                                f"{', '.join(repr(f.name) for f in FAMILIES)}")
    return tuple(f for f in FAMILIES if f.name in names)


def method_grid(quick: bool, families: tuple[Family, ...] = FAMILIES) -> list[MethodPoint]:
    """Every family swept over its learning rate and its own knob, on the same footing."""
    return [point for family in families for point in family.points(quick)]


@dataclass
class EditorArgs:
    """Per-point constructor arguments (picklable, so parallel workers get them too): the
    hypernetwork (the localized editor's, and every window method's window), the preserved
    pool (held out from every evaluation set) and the update networks of KE and MEND by
    editor name; ``create_editor`` passes each editor what it takes."""

    hypernet: MaskHypernet
    preserved: torch.Tensor
    updaters: dict[str, UpdateNet] = field(default_factory=dict)

    def __call__(self, point: MethodPoint) -> dict[str, Any]:
        return {"hypernet": self.hypernet, "preserved": self.preserved,
                "updater": self.updaters.get(point.editor)}
