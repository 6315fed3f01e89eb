"""``vitedit-ops nightly | deploy | demo``: the flows from the command line.

Hooked into the main CLI through the ``vitedit_ops.commands`` entry point. Prefect, MLflow and
torch are imported inside the commands, so every other command starts as fast as before.
Exit codes of ``nightly``: 0 done (or nothing to do), 3 the gate failed, 2 bad input,
4 infrastructure, 1 any other failure.
"""

from __future__ import annotations

from typing import Annotated

import typer

EXIT_GATE_FAILED = 3
EXIT_FAILED = 1  # a failure no error class names (bad input 2, infrastructure 4)

Model = Annotated[str | None, typer.Option(
    "--model", help="Registered (and monitored) model name (default: VITEDIT_REGISTERED_MODEL).")]


def _assignments(items: list[str], what: str) -> dict[str, str]:
    from vitedit_ops.errors import InvalidInputError

    found: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInputError(f"bad {what} {item!r}: expected NAME=VALUE")
        found[name.strip()] = value.strip()
    return found


def nightly(
    model: Model = None,
    lookback_days: Annotated[float, typer.Option(help="Collect errors of this many days.")] = 7.0,
    auto_promote: Annotated[bool, typer.Option(
        "--auto-promote", help="Make a challenger whose gate passed the champion.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    edit: Annotated[list[str], typer.Option(
        "--edit", help="Edit setting NAME=VALUE, e.g. lr=1e-4 (repeatable; see "
                       "flows.config.EditSettings).")] = [],  # noqa: B006
    gate: Annotated[list[str], typer.Option(
        "--set", help="Gate threshold override NAME=VALUE (repeatable).")] = [],  # noqa: B006
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Print Prefect's progress lines too.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Print Prefect's logging as it is, tracebacks included.")] = False,
) -> None:
    """Run the nightly-edit flow once, here, and print what it did. A failed night prints one
    line (exit 2 bad input, 4 infrastructure, 1 anything else); its traceback is in the
    Prefect run's logs, or on the console with --debug."""
    from pydantic import ValidationError

    from vitedit_ops.errors import InvalidInputError, VitEditError

    from .config import EditSettings

    # the settings are checked before torch, MLflow and Prefect are imported: a typo costs
    # a fraction of a second, not the ~10 s those imports take
    try:
        settings = EditSettings(**_assignments(edit, "--edit"))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"])) or "settings"
        raise InvalidInputError(f"bad --edit {where}: {error['msg']}") from None

    from rich.console import Console

    from registry.client import first_line
    from vitedit_ops.gate import GateConfig
    from vitedit_ops.settings import get_settings

    from .console import flow_console
    from .display import print_night
    from .nightly import nightly_edit
    from .prefect_api import prefect_api
    from .reporting import ALREADY_REGISTERED, REGISTERED

    overrides = GateConfig().with_overrides(gate).to_dict()
    thresholds = {k: overrides[k] for k in _assignments(gate, "--set")}
    with prefect_api(), flow_console(verbose=verbose, debug=debug):
        try:
            result = nightly_edit(model=model, lookback_days=lookback_days,
                                  edit_settings=settings, gate=thresholds,
                                  auto_promote=auto_promote, device=device)
        except VitEditError:
            raise  # one line and its exit code (vitedit_ops.cli.main)
        except Exception as exc:
            if debug:
                raise
            Console(stderr=True).print(
                f"[bold red]error:[/] the night failed: {first_line(exc)} (traceback in the "
                "Prefect run's logs; --debug prints it)", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from None
    print_night(result, Console(), get_settings().resolved_mlflow_uri())
    if result.status in (REGISTERED, ALREADY_REGISTERED) and not result.gate_passed:
        raise typer.Exit(EXIT_GATE_FAILED)


def deploy(
    cron: Annotated[str, typer.Option(help="Schedule of the nightly deployment.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="Timezone of the schedule.")] = "UTC",
    auto_promote: Annotated[bool, typer.Option(
        "--auto-promote", help="The nightly deployment promotes challengers that pass.")] = False,
) -> None:
    """Serve the nightly, meta-train and build-suite deployments until Ctrl-C."""
    from .deploy import serve_deployments

    serve_deployments(cron=cron, timezone=timezone, auto_promote=auto_promote)


def demo(
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Rebuild the reference model and its hypernetwork too.")] = False,
) -> None:
    """Two simulated days and nights end to end on the digits reference model."""
    from .demo import run_demo

    run_demo(fresh=fresh)


def register(app: typer.Typer) -> None:
    """Entry point of ``vitedit_ops.commands``."""
    app.command("nightly")(nightly)
    app.command("deploy")(deploy)
    app.command("demo")(demo)
