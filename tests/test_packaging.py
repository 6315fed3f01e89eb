"""What the installed distribution promises: every entry point resolves, every top-level
package ships, and the engine imports neither the benchmarks nor an adapter's dependencies."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _entry_points() -> list[tuple[str, str, str]]:
    groups = PYPROJECT["project"]["entry-points"]
    return [(group, name, target) for group in ("vitedit_ops.commands", "vitedit_ops.benchmarks")
            for name, target in groups[group].items()]


@pytest.mark.parametrize("group, name, target", _entry_points())
def test_every_entry_point_names_a_callable_that_exists(group, name, target):
    module, _, attribute = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute)), (group, name)


def test_every_top_level_package_is_in_the_distribution():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert {"vitedit_ops", "flows", "registry", "monitoring", "serving",
            "benchmarks"} <= packages
    assert {f"{p}*" for p in packages} <= set(include)


def test_the_engine_imports_no_benchmark_and_no_adapter_dependency():
    """Every module of vitedit_ops/ imported in a fresh interpreter: benchmarks/, the adapters
    and their stores/orchestrators stay out of sys.modules."""
    code = (
        "import importlib, pkgutil, sys, vitedit_ops\n"
        "for m in pkgutil.walk_packages(vitedit_ops.__path__, 'vitedit_ops.'):\n"
        "    if not m.name.endswith('__main__'):  # that one runs the CLI\n"
        "        importlib.import_module(m.name)\n"
        "print(' '.join(sorted(sys.modules)))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = set(run.stdout.split())
    forbidden = ("benchmarks", "flows", "registry", "monitoring", "serving", "mlflow",
                 "prefect", "sqlalchemy", "uvicorn", "prometheus_client")
    assert not {m for m in loaded if m.split(".")[0] in forbidden}
