"""Building, caching, loading and rebuilding the reference model, its card, and its CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from vitedit_ops.errors import CheckpointError
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.models import fingerprint
from vitedit_ops.reference import (DEFAULT_SHIFTS, POOLS, ModelCard, build_reference,
                                   default_config, hypernet_path, load_reference, recipe_hash,
                                   reference_recipe)
from vitedit_ops.reference import build as build_module

from ..cli_run import run
from .conftest import TINY


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real trainings, to tell a cache hit from a rebuild."""
    calls: list[int] = []
    original = build_module.train_reference

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(build_module, "train_reference", counting)
    return calls


@pytest.fixture
def cached(home, tiny_build) -> ModelCard:
    """``home`` holding a copy of the session's tiny build (a current cache for TINY)."""
    shutil.copytree(tiny_build[1], home)
    return tiny_build[0].card


def test_card_records_the_build(tiny_build, data):
    reference, directory = tiny_build
    card = reference.card
    assert card.recipe_hash == recipe_hash(reference_recipe(TINY))
    assert card.fingerprint == fingerprint(reference.model)
    assert card.split_hashes == data.split_hashes()
    assert card.pool_sizes == data.sizes()
    assert set(card.accuracy) == set(POOLS)
    assert all(0.0 <= a <= 1.0 for a in card.accuracy.values())
    assert list(card.shifts) == list(DEFAULT_SHIFTS)
    for outcome in card.shifts.values():
        assert {"accuracy", "errors", "groups"} <= set(outcome)
        assert all(size >= card.recipe["shifts"]["min_size"] for size in outcome["groups"].values())
    assert card.training["steps"] == TINY.max_steps
    assert card.recipe["train"]["seed"] == TINY.seed
    assert {"torch", "timm", "scikit-learn", "python"} <= set(card.versions)
    assert card.build_seconds > 0 and card.hypernet is None
    assert (directory / "model.safetensors").is_file() and (directory / "model.json").is_file()
    assert ModelCard.load(directory / "card.json") == card
    markdown = (directory / "card.md").read_text()
    assert card.fingerprint in markdown and "| locality |" in markdown


def test_load_uses_a_current_cache(cached, home, train_calls):
    weights_mtime = (home / "model.safetensors").stat().st_mtime_ns
    loaded = load_reference(build_if_missing=False, config=TINY)
    assert not train_calls
    assert fingerprint(loaded.model) == cached.fingerprint == loaded.card.fingerprint
    assert (home / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert loaded.data.split_hashes() == loaded.card.split_hashes
    assert not loaded.model.training
    build_reference(TINY, progress=False)  # current: no retraining without --force
    assert not train_calls
    forced = build_reference(TINY, force=True, progress=False)
    assert len(train_calls) == 1
    assert forced.card.fingerprint == cached.fingerprint  # same seed, same weights
    assert forced.card.accuracy == cached.accuracy and forced.card.shifts == cached.shifts


def test_missing_cache(home):
    with pytest.raises(CheckpointError, match="not built yet.*reference build"):
        load_reference(build_if_missing=False, config=TINY)


def test_stale_cache_is_rebuilt(cached, train_calls):
    other = replace(TINY, seed=1)
    with pytest.raises(CheckpointError, match="another recipe"):
        load_reference(build_if_missing=False, config=other)
    rebuilt = load_reference(config=other)
    assert len(train_calls) == 1
    assert rebuilt.card.recipe["train"]["seed"] == 1
    assert rebuilt.card.fingerprint != cached.fingerprint
    assert load_reference(build_if_missing=False, config=other).card == rebuilt.card


def test_corrupt_weights_are_rebuilt(cached, home, train_calls):
    (home / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_reference(build_if_missing=False, config=TINY)
    repaired = load_reference(config=TINY)
    assert len(train_calls) == 1
    assert fingerprint(repaired.model) == repaired.card.fingerprint == cached.fingerprint


def test_default_config_follows_settings(monkeypatch):
    monkeypatch.setenv("VITEDIT_SEED", "7")
    assert default_config().seed == 7


def test_hypernet_hook_runs_once_and_is_recorded(cached, home, train_calls):
    seen: list[tuple] = []

    def meta_train_hypernet(model, spec, data, out_dir: Path) -> Path:
        seen.append((fingerprint(model), spec.architecture, len(data.train), out_dir))
        (out_dir / "hypernet.safetensors").write_bytes(b"weights")
        return out_dir / "hypernet.safetensors"

    built = build_reference(TINY, hypernet_builder=meta_train_hypernet, progress=False)
    assert not train_calls and len(seen) == 1
    assert seen[0][0] == cached.fingerprint and seen[0][2] == len(built.data.train)
    assert seen[0][3] == home / "hypernet"
    assert built.card.hypernet["path"] == "hypernet/hypernet.safetensors"
    assert built.card.hypernet["builder"].endswith("meta_train_hypernet")
    assert hypernet_path(built.card) == home / "hypernet" / "hypernet.safetensors"
    loaded = load_reference(config=TINY, hypernet_builder=meta_train_hypernet)
    assert len(seen) == 1 and not train_calls
    assert json.loads((home / "card.json").read_text())["hypernet"] == loaded.card.hypernet
    assert loaded.card.fingerprint == cached.fingerprint


def test_cli_build_and_show(home, capsys):
    code, out = run(["reference", "show"], capsys)
    assert code == 2 and "no reference model" in out and "reference build" in out
    code, out = run(["reference", "build", "--epochs", "1", "--seed", "2",
                     "--metatrain-iterations", "2"], capsys)
    assert code == 0
    card = ModelCard.load(home / "card.json")
    assert card.recipe["train"]["epochs"] == 1 and card.recipe["train"]["seed"] == 2
    hypernet = MaskHypernet.load(hypernet_path(card, home))
    assert hypernet.config.training["iterations"] == 2
    code, out = run(["reference", "show"], capsys)
    assert code == 0
    assert card.fingerprint[:20] in out and "locality" in out and "rotate" in out


@pytest.mark.slow
def test_real_build_reaches_the_target(real_build):
    reference, directory = real_build
    card = reference.card
    assert card.accuracy["locality"] >= 0.9
    assert card.accuracy["train"] >= card.accuracy["locality"] - 0.05
    for name in DEFAULT_SHIFTS:
        shifted = card.shifts[name]
        assert shifted["accuracy"] < card.accuracy["shift"] - 0.2, name
        assert shifted["groups"], f"{name} gives no error group"
    assert card.training["epochs"] == default_config().epochs
    loaded = load_reference(build_if_missing=False, config=default_config(),
                            reference_dir=directory)
    assert loaded.card.fingerprint == card.fingerprint


_CONCURRENT_BUILDER = """
import sys, time
from pathlib import Path
from tests.reference.conftest import TINY
from vitedit_ops.reference import load_reference

def meta_train_hypernet(model, spec, data, out_dir):
    with open(sys.argv[1], "a") as calls:  # one line per real hypernetwork build
        calls.write("built\\n")
    time.sleep(2)  # long enough for the other process to arrive while this one builds
    (out_dir / "hypernet.safetensors").write_bytes(b"weights")
    return out_dir / "hypernet.safetensors"

print(load_reference(config=TINY, hypernet_builder=meta_train_hypernet).card.fingerprint)
"""


def test_concurrent_processes_build_the_cache_once(tmp_path):
    """Two commands (or test workers) asking for a missing cache at once: one builds, the
    other waits and loads what it built, instead of both training into the same files."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "VITEDIT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(root)}
    calls = tmp_path / "calls.txt"
    script = tmp_path / "build.py"
    script.write_text(_CONCURRENT_BUILDER)
    processes = [subprocess.Popen([sys.executable, str(script), str(calls)], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    assert calls.read_text().splitlines() == ["built"]
    fingerprints = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(fingerprints) == 1
