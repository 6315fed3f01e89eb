"""``make demo``: two simulated production days and nights, end to end, on this machine.

Builds (or loads) the digits reference model and its hypernetwork, builds the lineage's suite,
registers the base as champion in the embedded MLflow, then twice: serves a day of traffic
with ONNX Runtime (the champion loaded by alias), collects the reviewers' feedback, runs the
nightly-edit flow and shows its gate report. The first night's challenger is promoted, so the
second night edits a descendant and its gate re-checks the first night's fixes.

Demo state (MLflow, monitoring store, images) lives in ``VITEDIT_HOME/demo`` and is recreated
on every run; the reference model and its hypernetwork stay cached in ``VITEDIT_HOME``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from vitedit_ops.settings import get_settings

if TYPE_CHECKING:
    from .steps import Demo

MODEL = "digits-vit"


class Timer:
    """Wall time per demo step, printed at the end."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self.started = time.perf_counter()

    @contextmanager
    def step(self, console: Console, title: str) -> Iterator[None]:
        console.rule(f"[bold]{title}")
        started = time.perf_counter()
        yield
        self.steps.append((title, time.perf_counter() - started))

    def table(self) -> Table:
        table = Table(title=f"demo wall time {time.perf_counter() - self.started:.0f} s")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        for title, seconds in self.steps:
            table.add_row(title, f"{seconds:.1f}")
        return table


def _quiet_prefect() -> None:
    """Flow runs log to the Prefect UI in full; the terminal shows the demo's own output."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def run_demo(fresh: bool = False, console: Console | None = None) -> None:
    """The whole demo; see the module docstring."""
    console = console or Console()
    home = get_settings().home
    demo_home = home / "demo"
    shutil.rmtree(demo_home, ignore_errors=True)
    os.environ["VITEDIT_HOME"] = str(demo_home)  # MLflow, stores, images: a fresh lineage
    for variable in ("VITEDIT_MLFLOW_TRACKING_URI", "VITEDIT_STORE_URL",
                     "VITEDIT_IMAGE_STORE_URL", "VITEDIT_REGISTERED_MODEL"):
        os.environ.pop(variable, None)
    from registry.signing import use_local_key

    use_local_key(demo_home)  # no key configured: the demo's own, so versions are signed
    _quiet_prefect()
    timer = Timer()
    from ..prefect_api import prefect_api
    from .steps import Demo  # after the environment is set: settings are read at use

    with prefect_api():
        _steps(Demo(console, home / "reference", MODEL), fresh, timer, console)
    console.print(timer.table())


def _steps(demo: Demo, fresh: bool, timer: Timer, console: Console) -> None:
    """The demo's steps in order, each timed."""
    with timer.step(console, "1. reference model and its hypernetwork"):
        demo.reference(fresh)
    with timer.step(console, "2. locality suite, base registered as champion"):
        demo.register_base()
    first = None
    for day in (1, 2):
        with timer.step(console, f"{3 * day}. day {day}: production traffic and feedback"):
            demo.serve(day)
        with timer.step(console, f"{3 * day + 1}. night {day}: nightly-edit flow"):
            night = demo.night(day)
        if day == 1:
            first = night
            with timer.step(console, "5. review and promote the challenger"):
                demo.promote(night)
    demo.where_to_look(first)
