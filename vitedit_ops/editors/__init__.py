"""Editors behind one interface, built by name (timm's ``create_model`` rule).

>>> editor = create_editor("random_mask", keep_fraction=0.1, lr=1e-3)
>>> result = editor.edit(model, images, labels)

Each editor registers itself where it is defined (``@register_editor``). ``create_editor``
keeps only the options the named editor declares, and an option given as None means "the
editor's default"; :data:`~vitedit_ops.editors.recipe.PRODUCT` is the one place that says
what the product runs.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, replace
from typing import Any

import torch

from ..errors import InvalidInputError
from ..hypernet import MaskHypernet
from ..learned_update import UpdateNet
from . import (finetune, full_ft, grace, ke, kn, localized,  # noqa: F401 - registration
               lora, mend, random_mask, rome, rome_lora, serac, t_patcher)
from .base import EDITORS, OPTIMIZERS, EditResult, Editor, OptimConfig, register_editor
from .finetune import FTL1Editor, FTL2Editor, WindowFinetuneEditor
from .full_ft import FullFinetuneEditor
from .grace import GraceEditor
from .ke import KEEditor
from .kn import KnowledgeNeuronsEditor
from .learned import LearnedUpdateEditor
from .localized import LocalizedEditor
from .lora import LoRAEditor
from .masked import MaskedEditor
from .mend import MENDEditor
from .random_mask import RandomMaskEditor
from .rome import RomeEditor
from .rome_lora import RomeLoRAEditor
from .recipe import PAPER, PRODUCT, PRODUCT_SCOPED, EditRecipe
from .scoped import ScopedEditor
from .serac import SeracEditor
from .t_patcher import TPatcherEditor

OPTIM_KEYS = tuple(f.name for f in fields(OptimConfig))
_GIVEN_SEPARATELY = ("hypernet", "updater", "window", "preserved", "protected", "name")


def list_editors() -> list[str]:
    return EDITORS.names()


def editor_options(name: str) -> set[str]:
    """The options ``create_editor(name, ...)`` passes on (optimiser keys included)."""
    declared = {f.name for f in fields(EDITORS.get(name)) if f.init}
    options = declared - set(_GIVEN_SEPARATELY)
    return options | set(OPTIM_KEYS) if "optim" in declared else options


def takes_preserved(name: str) -> bool:
    """Whether editor ``name`` uses a preserved pool (``create_editor(preserved=...)``)."""
    return any(f.name == "preserved" for f in fields(EDITORS.get(name)))


def needs_preserved(name: str) -> bool:
    """Whether editor ``name`` refuses to edit without a preserved pool (ROME, T-Patcher,
    SERAC)."""
    return bool(EDITORS.get(name).needs_preserved)


def updater_kind(name: str) -> str:
    """The update network kind editor ``name`` applies ("" for editors that need none)."""
    cls = EDITORS.get(name)
    return cls.kind if issubclass(cls, LearnedUpdateEditor) else ""


def _all_options() -> set[str]:
    return set().union(*(editor_options(n) for n in list_editors()))


def default_optim(name: str) -> OptimConfig:
    """The optimiser settings an editor uses unless told otherwise."""
    field = {f.name: f for f in fields(EDITORS.get(name))}.get("optim")
    if field is not None and field.default_factory is not MISSING:
        return field.default_factory()
    return OptimConfig()


def create_editor(name: str, *, hypernet: MaskHypernet | None = None,
                  window: tuple[int, int] | None = None, preserved: torch.Tensor | None = None,
                  protected: torch.Tensor | None = None, updater: UpdateNet | None = None,
                  **options: Any) -> Editor:
    """Build editor ``name``.

    ``hypernet`` is required by the localized editor and gives every window method its window
    unless ``window`` is given; ``preserved`` (model inputs whose predictions must hold) goes to
    the editors that use one, ``protected`` (inputs of earlier edits' fixes) to those that
    confine against them too; ``updater`` (a meta-trained update network) to KE and MEND,
    whose window is its own. Of ``options``, those the editor declares are kept (optimiser
    keys ``lr``, ``optimizer``, ``max_steps``, ``ce_target`` may be flat) and None means the
    editor's default; options another editor declares are dropped; unknown ones are refused.
    """
    cls = EDITORS.get(name)
    unknown = sorted(set(options) - _all_options() - {"optim"})
    if unknown:
        raise InvalidInputError(f"unknown editor option(s) {', '.join(unknown)}; "
                                f"{name!r} takes {', '.join(sorted(editor_options(name)))}")
    declared = {f.name for f in fields(cls) if f.init}
    kwargs = {k: v for k, v in options.items()
              if v is not None and k in declared and k not in OPTIM_KEYS}
    optim = {k: options[k] for k in OPTIM_KEYS if options.get(k) is not None}
    if optim and "optim" in declared:
        kwargs["optim"] = replace(kwargs.get("optim") or default_optim(name), **optim)
    if "hypernet" in declared:
        if hypernet is None:
            raise InvalidInputError(f"the {name} editor needs a mask hypernetwork "
                                    "(run `vitedit-ops meta-train` first)")
        kwargs["hypernet"] = hypernet
    if "updater" in declared:
        if updater is None:
            raise InvalidInputError(f"the {name} editor needs a meta-trained {updater_kind(name)}"
                                    " update network (`vitedit-ops meta-train --updater "
                                    f"{updater_kind(name)}`)")
        kwargs["updater"] = updater
    if "window" in declared:
        window = window if window is not None else (
            tuple(hypernet.config.window) if hypernet is not None else None)
        if window is not None:
            kwargs["window"] = tuple(int(v) for v in window)
    for name, pool in (("preserved", preserved), ("protected", protected)):
        if name in declared and pool is not None:
            kwargs[name] = pool
    return cls(**kwargs)


__all__ = ["EDITORS", "OPTIMIZERS", "OPTIM_KEYS", "PAPER", "PRODUCT", "PRODUCT_SCOPED",
           "EditRecipe", "EditResult", "Editor", "ScopedEditor", "FTL1Editor",
           "FTL2Editor", "FullFinetuneEditor", "GraceEditor", "KEEditor",
           "KnowledgeNeuronsEditor", "LearnedUpdateEditor", "LoRAEditor", "LocalizedEditor",
           "MENDEditor", "MaskedEditor", "OptimConfig", "RandomMaskEditor",
           "RomeEditor", "RomeLoRAEditor", "SeracEditor", "TPatcherEditor",
           "WindowFinetuneEditor",
           "create_editor", "default_optim", "editor_options", "list_editors", "needs_preserved",
           "register_editor", "takes_preserved", "updater_kind"]
