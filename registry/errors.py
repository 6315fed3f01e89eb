"""Registry errors; every one is a ``VitEditError`` so the CLI prints one line for it."""

from __future__ import annotations

from vitedit_ops.errors import InfrastructureError, InvalidInputError, RefusedError, VitEditError


class RegistryError(VitEditError):
    """A registry operation failed or was asked for something that does not exist (exit 2)."""


class MissingAssetError(RegistryError, InvalidInputError):
    """The lineage has no asset the night's settings need (an update network): retrying will
    not make one (exit 2)."""


class AssetRefusedError(RegistryError, RefusedError):
    """A lineage asset does not verify: its files do not hash to its tag, or its tags'
    signature does not hold (exit 3)."""


class RegistryUnavailableError(RegistryError, InfrastructureError):
    """The tracking server did not answer within the bounded retries (exit 4)."""


class PromotionRefusedError(RegistryError, RefusedError):
    """The version's gate failed or its artifacts do not match its tags (exit 3)."""

    def __init__(self, headline: str, problems: list[str]):
        super().__init__(f"{headline}: {'; '.join(problems)}")
        self.headline = headline
        self.problems = problems


class PermissionRefusedError(RegistryError, RefusedError):
    """The authenticated user lacks the permission the move needs (exit 3): an owner of the
    registered model grants it, or someone who holds it promotes."""
