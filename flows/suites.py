"""The ``build-suite`` flow: write a new lineage's locality suite, and optionally register the
base model with it (version 1, champion), which is how a lineage starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from monitoring import open_store
from monitoring.audit import StoreAuditTrail
from registry.base import register_base
from vitedit_ops.gate import build_suite
from vitedit_ops.imagefiles import read_image_folder
from vitedit_ops.metrics import DEFAULT_SENSITIVE_MARGIN, DEFAULT_SENSITIVE_MIN
from vitedit_ops.models import ModelDescription


@task(name="build-suite", cache_policy=NO_CACHE)
def write_suite(checkpoint: str, described: ModelDescription, images: str, out: str,
                sensitive_margin: float, sensitive_min: int) -> dict[str, Any]:
    model, spec = described.load(checkpoint)
    found = read_image_folder(Path(images), spec, require_labels=False)
    return build_suite(out, model, spec, found.pixels, found.labels, found.ids, sensitive_margin,
                       sensitive_min).summary()


@task(name="register-base", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def register(checkpoint: str, described: ModelDescription, suite_dir: str, name: str) -> str:
    """Register the base; its first champion move goes into the store's promotion audit."""
    with open_store() as store:
        return register_base(checkpoint, suite_dir, name=name, spec=described,
                             audit=StoreAuditTrail(store)).version


@flow(name="build-suite")
def build_suite_flow(checkpoint: str, images: str, out: str, register_as: str | None = None,
                     sensitive_margin: float = DEFAULT_SENSITIVE_MARGIN,
                     sensitive_min: int = DEFAULT_SENSITIVE_MIN, arch: str | None = None,
                     model_kwargs: dict[str, Any] = {},  # noqa: B006 - shown in the form
                     data_config: dict[str, Any] = {},  # noqa: B006
                     spec_file: str | None = None) -> dict[str, Any]:
    """Build a base model's locality suite from an image folder; optionally register the base
    with it. Returns the suite's summary (and the registered version).

    Args:
        checkpoint: Base model weights (safetensors or a weights-only torch file).
        images: Image folder; class subfolders give labels.
        out: New suite directory (must not exist).
        register_as: Register the base under this model name with the suite (version 1,
            champion).
        sensitive_margin: Top-2 margin below which an image is in the sensitive subset.
        sensitive_min: Least number of sensitive images (the smallest margins).
        arch: timm model name or class path (package.module:Class), when no model config is
            beside the checkpoint.
        model_kwargs: Constructor keyword arguments with ``arch`` (e.g. img_size).
        data_config: Data config the model was trained with (mean, std, input_size,
            interpolation, crop_pct, crop_mode); overrides the config's.
        spec_file: Model description JSON (ours, timm's config.json or a class-key JSON)
            instead of the one beside the checkpoint.
    """
    described = ModelDescription(config=spec_file, architecture=arch,
                                 model_kwargs=model_kwargs, data_config=data_config)
    summary = write_suite(checkpoint, described, images, out, sensitive_margin,
                          sensitive_min)
    if register_as:
        summary["registered_version"] = register(checkpoint, described, out, register_as)
    return summary
