"""The ``meta-train`` flow: once per new base model, train its mask hypernetwork and store it
with the base version, where every nightly run of the lineage finds it.

Training writes resumable checkpoints under ``VITEDIT_HOME/hypernets/<base>-<settings>``, so
a run that was killed, or retried by Prefect, continues where it stopped, and a second run
with the same settings only registers what is there.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from torch import nn

from registry.lineage_assets import RegisteredAsset, register_hypernet
from registry.errors import RegistryError
from registry.loading import load_version
from registry.lookup import champion
from vitedit_ops.imagefiles import read_image_folder
from vitedit_ops.metatrain import MetaTrainConfig, meta_train
from vitedit_ops.models import ModelSpec, fingerprint
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.settings import get_settings


class MetaTrainSettings(BaseModel):
    """The meta-training knobs worth exposing in a deployment (the rest: engine defaults)."""

    iterations: int = Field(500, ge=1, description="Episode batches.")
    batch_size: int = Field(8, ge=1, description="Episodes per batch.")
    inner_lr: float = Field(1e-2, gt=0, description="Inner masked-step learning rate.")
    seed: int = Field(0, description="Seed of the episodes and the hypernetwork's init.")

    def config(self) -> MetaTrainConfig:
        return MetaTrainConfig(iterations=self.iterations, batch_size=self.batch_size,
                               inner_lr=self.inner_lr, seed=self.seed)


@task(name="meta-train-hypernet", cache_policy=NO_CACHE)
def train(model: nn.Module, spec: ModelSpec, images: str, config: MetaTrainConfig,
          out_dir: Path) -> Path:
    """Meta-train (or resume from the checkpoint in ``out_dir``) on a folder of images."""
    pixels = read_image_folder(Path(images), spec, require_labels=False).pixels
    meta_train(model, Preprocessor(spec).normalize(pixels), config, out_dir=out_dir,
               architecture=spec.architecture)
    return out_dir


@task(name="register-hypernet", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def register(name: str, version: str, directory: Path, spec: ModelSpec,
             preserved_images: str | None) -> RegisteredAsset:
    preserved = None
    if preserved_images:
        preserved = read_image_folder(Path(preserved_images), spec,
                                      require_labels=False).pixels
    return register_hypernet(name, version, directory, preserved)


@flow(name="meta-train")
def meta_train_flow(images: str, model: str | None = None, version: str | None = None,
                    settings: MetaTrainSettings = MetaTrainSettings(),  # noqa: B008 - form
                    preserved_images: str | None = None) -> RegisteredAsset:
    """Train the hypernetwork of a base version on a folder of unlabeled images like
    production's, and store it with that version.

    Args:
        images: Folder of unlabeled images like production's (read on the worker).
        model: Registered model name; default VITEDIT_REGISTERED_MODEL.
        version: Base version to train for; default the champion's lineage root.
        settings: Meta-training knobs (the rest are the engine's defaults).
        preserved_images: Folder of held-out clean images of the base, stored as the
            lineage's preserved pool (enables subpopulation edits).
    """
    settings = MetaTrainSettings.model_validate(settings)
    config = get_settings()
    name = model or config.registered_model
    tracking_uri = config.resolved_mlflow_uri()
    if version is None:
        version = champion(name, tracking_uri).base_version
    base, spec, info = load_version(name, version, tracking_uri=tracking_uri)
    if info.kind != "base":
        raise RegistryError(f"{name} v{version} is an edit; hypernetworks are trained for the "
                            f"lineage root (v{info.base_version})")
    meta = settings.config()
    out_dir = config.home / "hypernets" / f"{fingerprint(base)[:16]}-{meta.fingerprint()}"
    get_run_logger().info("meta-training for %s v%s into %s", name, version, out_dir)
    return register(name, version, train(base, spec, images, meta, out_dir), spec,
                    preserved_images)
