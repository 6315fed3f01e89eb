"""The ``vitedit-ops`` command line.

The engine's own commands live here; the adapters (monitoring/, registry/, flows/) add theirs
through the ``vitedit_ops.commands`` entry-point group, so this package never imports them
and ``vitedit-ops edit`` does not pay for MLflow or Prefect.
"""

from __future__ import annotations

import errno
import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console

from ..errors import EXIT_INFRASTRUCTURE, VitEditError

app = typer.Typer(name="vitedit-ops", no_args_is_help=True, add_completion=False,
                  help="Continual, gated repair of deployed Vision Transformers.")
err_console = Console(stderr=True)

ENTRY_POINT_GROUP = "vitedit_ops.commands"


def _register_commands() -> None:
    from .engine_commands import register_all

    register_all(app)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()(app)


@app.callback()
def _root() -> None:
    """Continual, gated repair of deployed Vision Transformers."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every known error becomes one clear line and its exit code
    (``vitedit_ops.errors``: 2 bad input, 3 refused, 4 infrastructure)."""
    _register_commands()
    try:
        app(args=argv, prog_name="vitedit-ops")
    except VitEditError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        err_console.print(f"[bold red]error:[/] disk full: {exc}", highlight=False,
                          soft_wrap=True)
        sys.exit(EXIT_INFRASTRUCTURE)
