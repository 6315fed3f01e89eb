"""``vitedit-ops register-base | register-hypernet | register-updater | promote | rollback |
history | signing-key create``.

Hooked into the main CLI through the ``vitedit_ops.commands`` entry point. MLflow is imported
inside the commands, so other commands do not pay for it. These commands compose the two
adapters: every move of an alias is recorded in the monitoring store's append-only promotion
audit (``VITEDIT_STORE_URL``), and ``history`` reads it back and checks MLflow's copy against
it. Exit codes: 0 done, 2 bad input, 3 promotion refused (gate/verification, or the
authenticated user lacks MANAGE), 4 registry or store unreachable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from vitedit_ops.cli.model_options import Arch, DataArg, ModelArg, ModelConfig

if TYPE_CHECKING:
    from vitedit_ops.audit import AliasEvent, AuditTrail

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

TrackingUri = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="VITEDIT_MLFLOW_TRACKING_URI",
    help="MLflow tracking/registry URI (default: SQLite under VITEDIT_HOME).")]
ModelName = Annotated[str | None, typer.Option(
    "--model", help="Registered model name (default: VITEDIT_REGISTERED_MODEL).")]
Alias = Annotated[str, typer.Option("--alias", help="Alias to move.")]
ShownAlias = Annotated[str, typer.Option("--alias", help="Alias whose moves to print.")]
TrainedFor = Annotated[str, typer.Option(
    "--version", help="Base version (lineage root) it was meta-trained for.")]


def _guard(action: Callable[[], T]) -> T:
    """Registry errors become one line and their exit code (``vitedit_ops.errors``);
    refusals list their reasons and exit 3."""
    from vitedit_ops.errors import EXIT_REFUSED, VitEditError

    from .errors import PromotionRefusedError

    try:
        return action()
    except PromotionRefusedError as exc:
        err_console.print("[bold red]refused:[/] " + exc.headline, highlight=False)
        for problem in exc.problems:
            err_console.print(f"  - {problem}", highlight=False, soft_wrap=True)
        err_console.print("  (override with --force --reason TEXT)", highlight=False)
        raise typer.Exit(EXIT_REFUSED) from None
    except VitEditError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _audited(action: Callable[[AuditTrail], T]) -> T:
    """Run ``action`` with the promotion audit of the configured monitoring store."""
    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail

    with open_store() as store:
        return action(StoreAuditTrail(store))


def register_base_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Weights (safetensors or "
                                             "a weights-only torch file).")],
    suite: Annotated[Path, typer.Option("--suite", help="Gate suite directory to store.")],
    model: ModelName = None,
    arch: Arch = None,
    model_arg: ModelArg = [],  # noqa: B006 - typer reads the default
    data: DataArg = [],  # noqa: B006
    model_config: ModelConfig = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Register a base model as version 1 of a registered model, with alias champion."""
    from vitedit_ops.cli.model_options import describe

    from .base import register_base

    reg = _guard(lambda: _audited(lambda audit: register_base(
        checkpoint, suite, name=model, spec=describe(arch, model_arg, data, model_config),
        tracking_uri=tracking_uri, audit=audit)))
    state = "registered" if reg.created else "already registered"
    console.print(f"{reg.name} v{reg.version} {state} (run {reg.run_id}), aliases: "
                  f"{', '.join(reg.aliases) or '-'}")


def register_hypernet_command(
    version: TrainedFor,
    hypernet: Annotated[Path, typer.Option("--hypernet", help="Directory `vitedit-ops "
                                           "meta-train` wrote (hypernet.json + weights).")],
    model: ModelName = None,
    preserved_images: Annotated[Path | None, typer.Option(
        "--preserved-images", help="Held-out clean images of the base (the lineage's preserved "
                                   "pool; enables subpopulation edits).")] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Attach a meta-trained hypernetwork (and preserved pool) to a registered base version,
    as the meta-train flow does, without Prefect."""
    from vitedit_ops.settings import get_settings

    from .lineage_assets import register_hypernet
    from .loading import load_version

    name = model or get_settings().registered_model

    def attach():
        preserved = None
        if preserved_images is not None:
            from vitedit_ops.imagefiles import read_image_folder

            _, spec, _ = load_version(name, version, tracking_uri=tracking_uri)
            preserved = read_image_folder(preserved_images, spec, require_labels=False).pixels
        return register_hypernet(name, version, hypernet, preserved, tracking_uri=tracking_uri)

    found = _guard(attach)
    state = "attached to" if found.created else "already attached to"
    console.print(f"hypernetwork {state} {found.name} v{found.base_version} "
                  f"(run {found.run_id}, sha256 {found.sha256[:12]})")


def register_updater_command(
    version: TrainedFor,
    updater: Annotated[Path, typer.Option("--updater", help="Directory `vitedit-ops "
                                          "meta-train --updater ke|mend` wrote.")],
    model: ModelName = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Attach a meta-trained KE or MEND update network to a registered base version (signed;
    one per kind), so nights with method or scoped.method ke|mend can edit with it."""
    from vitedit_ops.settings import get_settings

    from .lineage_assets import register_updater

    name = model or get_settings().registered_model
    found = _guard(lambda: register_updater(name, version, updater, tracking_uri=tracking_uri))
    state = "attached to" if found.created else "already attached to"
    console.print(f"update network {state} {found.name} v{found.base_version} "
                  f"(run {found.run_id}, sha256 {found.sha256[:12]})")


def promote_command(
    run_id: Annotated[str, typer.Option("--run-id", help="Run that registered the version.")],
    alias: Alias = "champion",
    force: Annotated[bool, typer.Option("--force", help="Promote although the gate failed or "
                                        "the artifacts do not verify (needs --reason).")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "",
    tracking_uri: TrackingUri = None,
) -> None:
    """Move an alias (default champion) to the version of RUN_ID once it verifies."""
    from .promotion import promote

    event = _guard(lambda: _audited(lambda audit: promote(
        run_id, alias, force=force, reason=reason, tracking_uri=tracking_uri, audit=audit)))
    if event is None:
        console.print(f"the version of run {run_id} already holds {alias}; nothing changed")
        return
    forced = " [bold yellow](forced)[/]" if event.forced else ""
    console.print(f"{alias} -> v{event.version} (was v{event.previous or '-'}){forced}, "
                  f"by {_who(event)}")


def rollback_command(
    model: ModelName = None,
    alias: Alias = "champion",
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "",
    tracking_uri: TrackingUri = None,
) -> None:
    """Move an alias (default champion) back to the version that held it before."""
    from vitedit_ops.settings import get_settings

    from .promotion import rollback

    name = model or get_settings().registered_model
    event = _guard(lambda: _audited(lambda audit: rollback(
        name, alias, reason=reason, tracking_uri=tracking_uri, audit=audit)))
    console.print(f"{name}@{alias} rolled back to v{event.version} (was v{event.previous}), "
                  f"by {_who(event)}")


def _who(event: AliasEvent) -> str:
    return event.by if event.authenticated else f"{event.by} (unauthenticated)"


def history_command(
    model: ModelName = None,
    alias: ShownAlias = "champion",
    tracking_uri: TrackingUri = None,
) -> None:
    """Print the alias's timeline from the promotion audit, oldest first, and every place
    where MLflow's copy of it disagrees."""
    from vitedit_ops.settings import get_settings

    from . import versions
    from .client import connect
    from .promotion import history

    name = model or get_settings().registered_model

    def load():
        timeline = _audited(lambda audit: history(name, alias, tracking_uri, audit=audit))
        conn = connect(tracking_uri)
        found = {v.version: v for v in versions.search(conn.client, f"name = '{name}'")}
        # searches do not fill in aliases on every backend: ask for the holder by name
        held = versions.by_alias(conn.client, name, alias)
        return timeline, found, held.version if held is not None else None

    timeline, found, holder = _guard(load)
    events = timeline.events
    table = Table(title=f"{name}@{alias} timeline (promotion audit)")
    for column in ("#", "when (UTC)", "action", "version", "previous", "gate", "groups", "by",
                   "forced", "reason"):
        table.add_column(column)
    for e in events:
        info = found.get(e.version)
        gate = info.tags.get(versions.GATE, info.kind) if info else "deleted"
        groups = info.tags.get(versions.EDITED_GROUPS, "") if info else ""
        current = " *" if e is events[-1] and e.version == holder else ""
        table.add_row(str(e.seq), e.at.replace("+00:00", ""), e.action, f"v{e.version}{current}",
                      f"v{e.previous}" if e.previous else "-", gate, groups, _who(e),
                      "yes" if e.forced else "", e.reason)
    console.print(table)
    if not events:
        console.print(f"no recorded moves of {alias} for {name}")
    if events and holder != events[-1].version:
        err_console.print(f"[bold red]warning:[/] {name}@{alias} is v{holder or '-'}, but the "
                          f"audit's last move put it on v{events[-1].version}: moved outside "
                          "vitedit-ops", highlight=False)
    for line in timeline.disagreements:
        err_console.print(f"[bold red]MLflow mirror disagrees with the audit:[/] {line}",
                          highlight=False, soft_wrap=True)


def signing_key_create_command(
    path: Annotated[Path, typer.Argument(help="New key file (mode 0600); keep it off the "
                                         "MLflow server.")],
) -> None:
    """Make a new signing key for VITEDIT_SIGNING_KEY_FILE (never overwrites a file)."""
    from .signing import create_key_file, read_key_file

    def make() -> str:
        return read_key_file(create_key_file(path)).key_id  # read back: the file is usable

    key_id = _guard(make)
    console.print(f"signing key {key_id} written to {path}; set VITEDIT_SIGNING_KEY_FILE={path} "
                  f"where versions are registered, promoted and served")


def register(app: typer.Typer) -> None:
    signing_key = typer.Typer(help="The key that signs registered versions and champion moves.")
    signing_key.command("create")(signing_key_create_command)
    app.add_typer(signing_key, name="signing-key")
    app.command("register-base")(register_base_command)
    app.command("register-hypernet")(register_hypernet_command)
    app.command("register-updater")(register_updater_command)
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("history")(history_command)
