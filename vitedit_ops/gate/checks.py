"""The gate's checks: each one measures one way an edited model can do harm.

A check is a name, the :class:`GateConfig` field holding its threshold, a comparison and a
``measure`` function. Measures share one :class:`GateContext`, which computes each expensive
thing (logits, the ONNX export and its parity) once, and remembers a failure too, so every check
that depends on a broken computation fails with the same error instead of recomputing it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..export import Parity, export_onnx, file_sha256, onnx_parity
from ..metrics import norm_growth, predict_logits
from ..scoped import scoped_patches
from .config import GateConfig
from .report import CheckResult, Comparison
from .suite import Suite, image_hashes

_SHOWN = 10  # how many offending names a check lists in its details


@dataclass(frozen=True)
class GateInputs:
    """What one gate run looks at. Images are pixels in [0, 1] at the model's input size."""

    base: nn.Module
    candidate: nn.Module
    suite: Suite
    edit_pixels: torch.Tensor | None = None
    edit_labels: torch.Tensor | None = None
    heldout_pixels: torch.Tensor | None = None
    heldout_labels: torch.Tensor | None = None
    onnx_path: Path | None = None
    edited_params: Sequence[str] | None = None
    preserved_hashes: Sequence[str] | None = None


class _Failed:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class GateContext:
    """Lazily computed, shared intermediate results of one gate run."""

    def __init__(self, inputs: GateInputs, workdir: Path) -> None:
        self.inputs = inputs
        self.suite = inputs.suite
        self.workdir = workdir
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = compute()
            except Exception as exc:  # remembered: dependent checks fail with the same error
                self._cache[key] = _Failed(exc)
        value = self._cache[key]
        if isinstance(value, _Failed):
            raise value.exc
        return value

    # -- inputs -----------------------------------------------------------------------------
    def _given(self, which: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pixels and labels of ``clean``, ``retention``, ``edit`` or ``heldout`` (the last two
        may be absent)."""
        suite, inputs = self.suite, self.inputs
        return {"clean": (suite.pixels, suite.labels),
                "retention": (suite.retention_pixels, suite.retention_labels),
                "edit": (inputs.edit_pixels, inputs.edit_labels),
                "heldout": (inputs.heldout_pixels, inputs.heldout_labels)}[which]

    def pixels(self, which: str) -> torch.Tensor:
        found = self._given(which)[0]
        if found is None:
            raise InvalidInputError(f"no {which} images were given to the gate")
        return found

    def labels(self, which: str) -> torch.Tensor:
        found = self._given(which)[1]
        if found is None:
            raise InvalidInputError(f"no labels for the {which} images were given to the gate")
        labels = torch.as_tensor(found).to("cpu", torch.int64)
        if labels.shape != (len(self.pixels(which)),):
            raise InvalidInputError(f"{len(labels)} {which} labels for "
                                    f"{len(self.pixels(which))} images")
        return labels

    def model_inputs(self, which: str) -> torch.Tensor:
        return self._once(f"inputs.{which}", lambda: self.suite.inputs(self.pixels(which)))

    def logits(self, model: str, which: str) -> torch.Tensor:
        """``base`` or ``candidate`` logits on one image set (on CPU)."""
        module = self.inputs.base if model == "base" else self.inputs.candidate
        return self._once(f"logits.{model}.{which}",
                          lambda: predict_logits(module, self.model_inputs(which)))

    def present(self) -> list[str]:
        """The non-empty image sets of this run: the suite's, plus edit/heldout when given."""
        return [w for w in ("clean", "retention", "edit", "heldout")
                if self._given(w)[0] is not None and len(self._given(w)[0])]

    # -- ONNX -------------------------------------------------------------------------------
    def parity(self) -> tuple[Parity, dict[str, Any]]:
        return self._once("parity", self._parity)

    def _parity(self) -> tuple[Parity, dict[str, Any]]:
        path = self.inputs.onnx_path
        exported = path is None
        if exported:
            path = export_onnx(self.inputs.candidate, self.suite.spec.input_size,
                               self.workdir / "candidate.onnx").path
        sets = self.present()
        images = torch.cat([self.model_inputs(w) for w in sets])
        torch_logits = torch.cat([self.logits("candidate", w) for w in sets])
        parity = onnx_parity(self.inputs.candidate, path, images, torch_logits=torch_logits)
        info = {"provider": parity.provider, "images": parity.num_images,
                "onnx_sha256": file_sha256(path), "exported_by_gate": exported,
                "image_sets": sets}
        return parity, info


Measure = Callable[[GateContext, "Check", float | None], CheckResult]


@dataclass(frozen=True)
class Check:
    """One gate check and where its threshold comes from."""

    name: str
    setting: str | None  # GateConfig field; None: the threshold is fixed
    comparison: Comparison
    description: str
    measure: Measure
    fixed_threshold: float | None = None

    def threshold(self, config: GateConfig) -> float | None:
        return getattr(config, self.setting) if self.setting else self.fixed_threshold

    def result(self, value: float, threshold: float | None, **details: Any) -> CheckResult:
        return CheckResult.evaluate(self.name, value, threshold, self.comparison,
                                    self.description, **details)

    def vacuous(self, threshold: float | None, note: str, **details: Any) -> CheckResult:
        """Nothing to measure (e.g. no earlier fixes yet): a pass with no value, and why."""
        return CheckResult(self.name, None, threshold, self.comparison, True, self.description,
                           details={"note": note, **details})


def _share(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if len(hits) else float("nan")


# -- measures -----------------------------------------------------------------------------------
def _finite_weights(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    bad = {name: int((~torch.isfinite(t)).sum())
           for name, t in ctx.inputs.candidate.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()}
    return check.result(sum(bad.values()), threshold, tensors=sorted(bad)[:_SHOWN],
                        tensors_affected=len(bad))


def _disjoint(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    seen: set[str] = set(ctx.inputs.preserved_hashes or ())
    if ctx.inputs.edit_pixels is not None:
        seen |= set(image_hashes(ctx.pixels("edit")))
    measured = {"suite": set(ctx.suite.hashes) | set(ctx.suite.retention_hashes),
                "heldout": set(image_hashes(ctx.pixels("heldout")))
                if ctx.inputs.heldout_pixels is not None else set()}
    overlaps = {name: len(seen & hashes) for name, hashes in measured.items()}
    return check.result(sum(overlaps.values()), threshold, seen_by_edit=len(seen),
                        overlap_with=overlaps)


def _correct_share(which: str) -> Measure:
    def measure(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
        right = ctx.logits("candidate", which).argmax(-1) == ctx.labels(which)
        return check.result(_share(right), threshold, images=len(right),
                            wrong=int((~right).sum()))
    return measure


def _locality(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    candidate = ctx.logits("candidate", "clean").argmax(-1)
    same = candidate == ctx.logits("base", "clean").argmax(-1)
    root = _share(candidate == ctx.suite.base_predictions)
    return check.result(_share(same), threshold, images=len(same), changed=int((~same).sum()),
                        unchanged_vs_lineage_base=root)


def _sensitive(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    idx = ctx.suite.sensitive
    same = (ctx.logits("candidate", "clean")[idx].argmax(-1)
            == ctx.logits("base", "clean")[idx].argmax(-1))
    return check.result(_share(same), threshold, images=len(same), changed=int((~same).sum()),
                        rule=ctx.suite.sensitive_rule)


def _retention(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    if len(ctx.suite.retention_pixels) == 0:
        return check.vacuous(threshold, f"suite version {ctx.suite.version} holds no earlier "
                                        "fixes yet", images=0)
    right = ctx.logits("candidate", "retention").argmax(-1) == ctx.labels("retention")
    undone = Counter(s for s, ok in zip(ctx.suite.retention_sources, right.tolist()) if not ok)
    return check.result(_share(right), threshold, images=len(right),
                        undone_by_source=dict(undone.most_common(_SHOWN)))


def _accuracy_drop(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    known = ctx.suite.labelled
    if not known.any():
        raise InvalidInputError("the suite has no labelled images: accuracy cannot be compared")
    labels = ctx.suite.labels[known]
    base = _share(ctx.logits("base", "clean")[known].argmax(-1) == labels)
    candidate = _share(ctx.logits("candidate", "clean")[known].argmax(-1) == labels)
    return check.result((base - candidate) * 100.0, threshold, base_accuracy=base,
                        candidate_accuracy=candidate, labelled_images=int(known.sum()))


def _norm_growth(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    base = {n: p.detach() for n, p in ctx.inputs.base.named_parameters()}
    candidate = dict(ctx.inputs.candidate.named_parameters())
    if set(candidate) != set(base):
        raise InvalidInputError("candidate and base do not have the same parameters "
                                f"(e.g. {sorted(set(candidate) ^ set(base))[0]})")
    changed = {n for n, p in candidate.items()
               if not torch.equal(p.detach().cpu(), base[n].cpu())}
    declared = set(ctx.inputs.edited_params or ())
    undeclared = sorted(changed - declared) if ctx.inputs.edited_params is not None else []
    # a side module's own tensors (SERAC's memory, GRACE's codebook) are no base weight: only
    # the base's weights can grow
    side = sorted(declared - set(base))
    names = sorted((changed | declared) & set(base))
    ratios = norm_growth(base, ctx.inputs.candidate, names) if names else {}
    # a scoped patch changes no weight: inputs inside its scope see weight + its change
    for patch in scoped_patches(ctx.inputs.candidate):
        for delta in patch.deltas:
            weight = candidate[delta.weight_name].detach().cpu().double()
            ratio = float((weight + delta.dense().double()).norm()
                          / base[delta.weight_name].detach().cpu().double().norm()
                          .clamp_min(1e-12))
            ratios[delta.weight_name] = max(ratios.get(delta.weight_name, 0.0), ratio)
    if not ratios:
        return check.vacuous(threshold, "no weight differs from the base",
                             changed_params=0, side_module_tensors=len(side))
    worst = sorted(ratios.items(), key=lambda kv: -kv[1])[:_SHOWN]
    return check.result(max(ratios.values()), threshold, changed_params=len(names),
                        scoped_patches=len(scoped_patches(ctx.inputs.candidate)),
                        side_module_tensors=len(side),
                        largest=dict(worst), undeclared_changes=undeclared[:_SHOWN])


def _onnx_diff(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    parity, info = ctx.parity()
    return check.result(parity.max_abs_diff, threshold, **info)


def _onnx_agreement(ctx: GateContext, check: Check, threshold: float | None) -> CheckResult:
    parity, info = ctx.parity()
    return check.result(parity.top1_agreement, threshold, **info)


CHECKS: tuple[Check, ...] = (
    Check("finite_weights", None, "==", "NaN or Inf values in the candidate's weights",
          _finite_weights, fixed_threshold=0.0),
    Check("disjoint", None, "==", "images the edit saw (edit + preserved pool) that the gate "
          "measures (suite, held-out)", _disjoint, fixed_threshold=0.0),
    Check("reliability", "reliability_min", ">=", "edit images now predicted right",
          _correct_share("edit")),
    Check("generalization", "generalization_min", ">=",
          "held-out images of the edited groups now predicted right", _correct_share("heldout")),
    Check("locality", "locality_min", ">=", "clean suite images whose top-1 class is unchanged",
          _locality),
    Check("sensitive", "sensitive_min", ">=", "sensitive (small top-2 margin) suite images "
          "whose top-1 class is unchanged", _sensitive),
    Check("retention", "retention_min", ">=", "images fixed by earlier accepted edits still "
          "right", _retention),
    Check("accuracy_drop", "accuracy_drop_max", "<=", "labelled clean accuracy lost vs the base, "
          "in percentage points", _accuracy_drop),
    Check("norm_growth", "norm_growth_max", "<=", "largest Frobenius-norm ratio candidate/base "
          "of any changed weight (for a scoped patch: the weight plus its change)",
          _norm_growth),
    Check("onnx_max_abs_diff", "onnx_max_abs_diff", "<=", "max |logit difference| between the "
          "ONNX graph in onnxruntime and the torch model", _onnx_diff),
    Check("onnx_top1_agreement", "onnx_top1_agreement_min", ">=", "share of images where "
          "onnxruntime and torch pick the same class", _onnx_agreement),
)
