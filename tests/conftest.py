"""Suite-wide fixtures: an isolated VITEDIT_HOME per test and one real reference build.

The reference model is trained with the real recipe once per session (the slow tests of
several packages share it, read-only); its hypernetwork is meta-trained with a short budget,
enough for real masks, not for quality figures (those come from `vitedit-ops bench`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TEST_METATRAIN_ITERATIONS = 30


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Tests never touch the user's real cache: each test gets an empty VITEDIT_HOME."""
    monkeypatch.setenv("VITEDIT_HOME", str(tmp_path_factory.mktemp("vitedit-home")))
    yield


@pytest.fixture(scope="session")
def trained_reference(tmp_path_factory: pytest.TempPathFactory):
    """(Reference, its directory, MaskHypernet): the default training recipe, built once.

    Shared read-only: copy the directory before changing anything in it.
    """
    from vitedit_ops.hypernet import MaskHypernet
    from vitedit_ops.reference import TrainConfig, build_reference, hypernet_path
    from vitedit_ops.reference.hypernet import REFERENCE_METATRAIN, hypernet_builder

    directory = Path(tmp_path_factory.mktemp("real-reference"))
    config = replace(REFERENCE_METATRAIN, iterations=TEST_METATRAIN_ITERATIONS)
    reference = build_reference(TrainConfig(seed=0), reference_dir=directory, device="cpu",
                                progress=False, hypernet_builder=hypernet_builder(config))
    return reference, directory, MaskHypernet.load(hypernet_path(reference.card, directory))
