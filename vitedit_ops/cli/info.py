"""``vitedit-ops info``: versions, device and where the embedded state lives (for bug reports)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer
from rich.console import Console
from rich.table import Table

_PACKAGES = ("vitedit-ops", "torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "mlflow",
             "prefect", "sqlalchemy")


def info() -> None:
    """Print package versions, the compute device and the embedded-state directory."""
    from ..device import resolve_device
    from ..settings import get_settings

    table = Table(title="vitedit-ops", show_header=False)
    for name in _PACKAGES:
        try:
            table.add_row(name, version(name))
        except PackageNotFoundError:
            continue
    settings = get_settings()
    table.add_row("device", str(resolve_device(settings.device)))
    table.add_row("VITEDIT_HOME", str(settings.home))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
