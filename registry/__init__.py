"""registry adapter of vitedit-ops: MLflow runs, registered versions, aliases.

The public API is re-exported lazily, so ``import registry.cli`` (done by every
``vitedit-ops`` invocation) does not import MLflow::

    from registry import publish_edit, promote, load_version, champion

See docs/registry.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "register_base": "base",
    "publish_edit": "mlflow_registry", "register_run": "mlflow_registry",
    "Registration": "mlflow_registry",
    "EditRunRecord": "record", "GroupEdit": "record",
    "load_version": "loading", "download_suite": "loading", "model_uri": "loading",
    "register_hypernet": "lineage_assets", "load_assets": "lineage_assets",
    "LineageAssets": "lineage_assets", "RegisteredAsset": "lineage_assets",
    "register_updater": "lineage_assets", "load_lineage_updater": "lineage_assets",
    "champion": "lookup", "verified_champion": "lookup", "version_by_key": "lookup",
    "gate_report": "lookup",
    "run_url": "lookup", "standing": "lookup", "Standing": "lookup",
    "promote": "promotion", "rollback": "promotion", "history": "promotion",
    "AliasEvent": "promotion", "Timeline": "promotion",
    "fail_orphaned_edit_runs": "runs",
    "VersionInfo": "versions",
    "RegistryError": "errors", "RegistryUnavailableError": "errors",
    "PromotionRefusedError": "errors", "PermissionRefusedError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
