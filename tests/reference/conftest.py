"""Reference-model fixtures: the data pools, tiny training budgets, and one real build.

Every test works in its own ``VITEDIT_HOME`` (monkeypatched to a tmp dir); the real build is
made once per session in a tmp dir and passed explicitly, never through the user's cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitedit_ops.reference import (Reference, ReferenceData, TrainConfig, build_reference,
                                   load_reference_data)

TINY = TrainConfig(seed=0, max_steps=3, batch_size=16)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model runs fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data() -> ReferenceData:
    return load_reference_data()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh VITEDIT_HOME; returns its reference directory."""
    monkeypatch.setenv("VITEDIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "reference"


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Reference, Path]:
    """A reference build trained for 3 steps: real files and card, seconds to make."""
    directory = tmp_path_factory.mktemp("tiny-reference")
    return build_reference(TINY, reference_dir=directory, device="cpu", progress=False), directory


@pytest.fixture(scope="session")
def real_build(trained_reference) -> tuple[Reference, Path]:
    """The default recipe, built for real once per session (shared with other packages)."""
    reference, directory, _hypernet = trained_reference
    return reference, directory
