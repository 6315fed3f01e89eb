"""Scoped editing: any editor's change, applied only to inputs inside a fitted scope.

The scope is fitted first (``scope.fit_scope``): inside are the images the edit is made for,
outside the images whose predictions must hold (the preserved pool) and the images earlier
scoped patches were made for, so a new patch keeps out of both. The inner editor then fits the
change on the images the scope covers (an image it does not cover could never be fixed by
this patch: it is left out and counted), and the result's patch is a
:class:`~vitedit_ops.scoped.ScopedPatch`. Outside its scope the model is untouched, so the
change may be as strong as the subpopulation needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import InvalidInputError
from ..scope import fit_nearest_scope, fit_scope, prefix_tokens, window_keys
from ..scoped import ScopedPatch, all_keys, scoped_patches
from ..sites import EditWindow
from .base import Editor, EditResult, validate_edit_inputs


@dataclass(kw_only=True)
class ScopedEditor(Editor):
    """``inner``'s edit, scoped against ``outside`` (model inputs that must stay outside).

    ``window`` is the edit window (its first block's input is where the scope reads);
    ``rule`` is ``nearest`` (``scope.fit_nearest_scope``, ``margin`` the ratio, default 0.8)
    or ``router`` (``scope.fit_scope``, ``margin`` in router score, default 0);
    ``avoid_earlier`` keeps the images of the model's earlier scoped patches outside too.
    """

    inner: Editor
    window: EditWindow
    outside: torch.Tensor
    rule: str = "nearest"
    margin: float | None = None
    avoid_earlier: bool = True
    avoid: torch.Tensor | None = None  # model inputs of other patches made alongside this one
    radius_scale: float | None = None  # nearest: bound (``scope.fit_nearest_scope``)
    per_key: bool = False  # nearest: a ratio per key (``scope.fit_nearest_scope``)
    name: str = "scoped"

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        if len(self.outside) == 0:
            raise InvalidInputError("a scoped edit needs images that must stay outside its "
                                    "scope (a preserved pool)")
        inside_keys = window_keys(model, self.window, images)
        outside_keys = window_keys(model, self.window, self.outside)
        earlier = all_keys(scoped_patches(model)) if self.avoid_earlier else None
        if self.avoid is not None and len(self.avoid):
            alongside = window_keys(model, self.window, self.avoid)
            earlier = alongside if earlier is None else torch.cat([earlier, alongside])
        if self.rule == "nearest":
            fit = fit_nearest_scope(inside_keys, outside_keys, prefix_tokens(model),
                                    margin=0.8 if self.margin is None else self.margin,
                                    avoid=earlier, radius_scale=self.radius_scale,
                                    per_key=self.per_key)
        elif self.rule == "router":
            fit = fit_scope(inside_keys, outside_keys, outside_keys, prefix_tokens(model),
                            margin=self.margin or 0.0, avoid=earlier)
        else:
            raise InvalidInputError(f"unknown scope rule {self.rule!r}; use nearest or router")
        covered = fit.inside_covered
        if not covered.any():
            raise InvalidInputError("the fitted scope covers none of the edit images")
        result = self.inner.edit(model, images[covered], labels[covered])
        beyond = sorted(set(result.patch.params) - set(self.window.weight_names))
        if beyond:  # the scope is read at the window's first block: nothing before it gates
            raise InvalidInputError(
                f"the {result.method} edit changed {', '.join(beyond)}, outside the scope's "
                f"window {self.window.describe()}: give the inner editor the same window (a KE "
                "or MEND network meta-trained for it)")
        patch = ScopedPatch.from_patch(result.patch, model, fit.scope,
                                       self.window.sites[0].block_path,
                                       inside_keys[covered.cpu()])
        return replace(result, method=f"{result.method}+scope", patch=patch, settings={
            **result.settings, "scoped": True, "covered": covered.cpu().tolist(),
            "outside_scope": int((~covered).sum()), "scope_rule": self.rule,
            "scope_threshold": fit.threshold,
            "scope_outside": len(outside_keys),
            "scope_avoided": 0 if earlier is None else len(earlier),
            "earlier_scoped_patches": len(scoped_patches(model))})
