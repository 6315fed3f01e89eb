"""Editors behind one interface, built by name (timm-style registry).

>>> editor = create_editor("random_mask", keep_fraction=0.1, lr=1e-3)
>>> result = editor.edit(model, images, labels)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, replace
from typing import Any

from ..errors import InvalidInputError
from .base import EditResult, Editor, OptimConfig
from .finetune import WindowFinetuneEditor, ft_l1, ft_l2
from .full_ft import FullFinetuneEditor
from .localized import LocalizedEditor
from .lora import LoRAEditor
from .random_mask import RandomMaskEditor

_REGISTRY: dict[str, Callable[..., Editor]] = {
    "localized": LocalizedEditor,
    "random_mask": RandomMaskEditor,
    "window_ft": WindowFinetuneEditor,
    "ft_l1": ft_l1,
    "ft_l2": ft_l2,
    "lora": LoRAEditor,
    "full_ft": FullFinetuneEditor,
}
_OPTIM_KEYS = ("lr", "optimizer", "max_steps", "ce_target")


def register_editor(name: str) -> Callable[[Callable[..., Editor]], Callable[..., Editor]]:
    """Decorator: make an editor class or builder available to ``create_editor``."""
    def wrap(builder: Callable[..., Editor]) -> Callable[..., Editor]:
        _REGISTRY[name] = builder
        return builder
    return wrap


def list_editors() -> list[str]:
    return sorted(_REGISTRY)


def create_editor(name: str, **kwargs: Any) -> Editor:
    """Build an editor; optimiser settings (lr, optimizer, max_steps, ce_target) may be flat."""
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown editor {name!r}; available: {', '.join(list_editors())}")
    optim = {k: kwargs.pop(k) for k in _OPTIM_KEYS if k in kwargs}
    if optim:  # flat keys override the editor's own optimiser defaults, not OptimConfig's
        kwargs["optim"] = replace(default_optim(name), **optim)
    return _REGISTRY[name](**kwargs)


def default_optim(name: str) -> OptimConfig:
    """The optimiser settings an editor uses unless told otherwise."""
    builder = _REGISTRY[name]
    field = getattr(builder, "__dataclass_fields__", {}).get("optim")
    if field is not None and field.default_factory is not MISSING:
        return field.default_factory()
    return OptimConfig()


__all__ = ["EditResult", "Editor", "OptimConfig", "create_editor", "default_optim",
           "list_editors", "register_editor", "LocalizedEditor", "RandomMaskEditor", "WindowFinetuneEditor",
           "LoRAEditor", "FullFinetuneEditor"]
