"""The ``build-suite`` flow: write a new lineage's locality suite, and optionally register the
base model with it (version 1, champion), which is how a lineage starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from registry.base import register_base
from vitedit_ops.gate import build_suite
from vitedit_ops.imagefiles import read_image_folder
from vitedit_ops.metrics import DEFAULT_SENSITIVE_MARGIN, DEFAULT_SENSITIVE_MIN
from vitedit_ops.models import load_model


@task(name="build-suite", cache_policy=NO_CACHE)
def write_suite(checkpoint: str, images: str, out: str, sensitive_margin: float,
                sensitive_min: int) -> dict[str, Any]:
    model, spec = load_model(checkpoint)
    found = read_image_folder(Path(images), spec, require_labels=False)
    return build_suite(out, model, spec, found.pixels, found.labels, found.ids, sensitive_margin,
                       sensitive_min).summary()


@task(name="register-base", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def register(checkpoint: str, suite_dir: str, name: str) -> str:
    return register_base(checkpoint, suite_dir, name=name).version


@flow(name="build-suite")
def build_suite_flow(checkpoint: str, images: str, out: str, register_as: str | None = None,
                     sensitive_margin: float = DEFAULT_SENSITIVE_MARGIN,
                     sensitive_min: int = DEFAULT_SENSITIVE_MIN) -> dict[str, Any]:
    """Build a base model's locality suite from an image folder; optionally register the base
    with it. Returns the suite's summary (and the registered version).

    Args:
        checkpoint: Base model weights, with its model config beside them (ours or timm's
            config.json).
        images: Image folder; class subfolders give labels.
        out: New suite directory (must not exist).
        register_as: Register the base under this model name with the suite (version 1,
            champion).
        sensitive_margin: Top-2 margin below which an image is in the sensitive subset.
        sensitive_min: Least number of sensitive images (the smallest margins).
    """
    summary = write_suite(checkpoint, images, out, sensitive_margin, sensitive_min)
    if register_as:
        summary["registered_version"] = register(checkpoint, out, register_as)
    return summary
