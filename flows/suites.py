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
    """Register the base; its first champion move goes into the store's promotion audit."""
    with open_store() as store:
        return register_base(checkpoint, suite_dir, name=name,
                             audit=StoreAuditTrail(store)).version


@flow(name="build-suite")
def build_suite_flow(checkpoint: str, images: str, out: str, register_as: str | None = None,
                     sensitive_margin: float = DEFAULT_SENSITIVE_MARGIN,
                     sensitive_min: int = DEFAULT_SENSITIVE_MIN) -> dict[str, Any]:
    """Build the suite of the base model at ``checkpoint`` from an image folder (class
    subfolders give labels) into ``out``; with ``register_as``, register the base under that
    name with the suite. Returns the suite's summary (and the registered version)."""
    summary = write_suite(checkpoint, images, out, sensitive_margin, sensitive_min)
    if register_as:
        summary["registered_version"] = register(checkpoint, out, register_as)
    return summary
