"""Named builders registered at their definition site (timm's ``@register_model`` rule).

Editors, meta-training episode kinds and reference shifts each keep one :class:`Registry`;
a builder joins it with ``@REGISTRY.register("name")`` where it is defined, and an unknown
name is refused with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import InvalidInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> builder, for one kind of thing (``kind`` names it in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator adding ``builder`` under ``name``; refuses to replace one silently."""
        def decorator(builder: T) -> T:
            if name in self._builders and not overwrite:
                raise InvalidInputError(f"{self.kind} {name!r} is already registered "
                                        "(pass overwrite=True to replace it)")
            self._builders[name] = builder
            return builder
        return decorator

    def get(self, name: str) -> T:
        try:
            return self._builders[name]
        except KeyError:
            raise InvalidInputError(f"unknown {self.kind} {name!r}; available: "
                                    f"{', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders
