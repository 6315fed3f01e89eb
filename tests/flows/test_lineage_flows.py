"""Starting a lineage with the flows: build-suite (and register the base), then meta-train
(and store the hypernetwork and preserved pool with the base), as a new base model would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from vitedit_ops.imagefiles import png_bytes as png
from registry.lineage_assets import load_assets
from flows.metatrain import MetaTrainSettings, meta_train_flow
from flows.suites import build_suite_flow
from registry import versions
from vitedit_ops.gate import load_suite
from vitedit_ops.models import fingerprint, load_model


def _write_images(folder: Path, pixels: torch.Tensor, labels: torch.Tensor | None) -> Path:
    for i, image in enumerate(pixels):
        target = folder / (str(int(labels[i])) if labels is not None else "") / f"{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png(image))
    return folder


@pytest.mark.slow
def test_build_suite_and_meta_train_start_a_lineage(lineage, tracking_uri, tmp_path,
                                                    request, prefect_test_api):
    name = "f-" + request.node.name
    labelled = _write_images(tmp_path / "clean", lineage.production[:40], lineage.labels[:40])
    summary = build_suite_flow(checkpoint=str(lineage.checkpoint), images=str(labelled),
                               out=str(tmp_path / "suite"), register_as=name)
    assert summary["registered_version"] == "1"
    assert summary["clean"] == summary["labelled"] == 40
    suite = load_suite(tmp_path / "suite")
    assert suite.base_fingerprint == fingerprint(load_model(lineage.checkpoint)[0])

    unlabeled = _write_images(tmp_path / "unlabeled", lineage.production[40:56], None)
    preserved = _write_images(tmp_path / "preserved", lineage.production[56:66], None)
    settings = MetaTrainSettings(iterations=2, batch_size=2)
    stored = meta_train_flow(images=str(unlabeled), model=name, settings=settings,
                             preserved_images=str(preserved))
    assert stored.created and stored.base_version == "1"
    base = versions.get(MlflowClient(tracking_uri), name, "1")
    assets = load_assets(base, tracking_uri)
    assert assets.hypernet.config.base_fingerprint == base.fingerprint
    assert assets.hypernet.config.training["iterations"] == 2
    assert assets.preserved.shape == (10, *lineage.spec.input_size)

    # the same settings again: training resumes from its finished checkpoint, nothing new
    again = meta_train_flow(images=str(unlabeled), model=name, settings=settings,
                            preserved_images=str(preserved))
    assert not again.created and again.run_id == stored.run_id
