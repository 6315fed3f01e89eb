"""``vitedit-ops reference build|show``: the digits reference model other commands default to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from ..reference import ModelCard

reference_app = typer.Typer(no_args_is_help=True, add_completion=False,
                            help="Build and inspect the reference model (digits ViT).")


@reference_app.command("build")
def build(
    force: bool = typer.Option(False, "--force", help="Rebuild even if the cache is current."),
    seed: int | None = typer.Option(None, "--seed",
                                    help="Training seed (default: VITEDIT_SEED, else 0)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1,
                                      help="Training epochs (default: the recipe's 40)."),
    metatrain_iterations: int | None = typer.Option(
        None, "--metatrain-iterations", min=1,
        help="Hypernetwork meta-training iterations (default: 300). Fewer build faster and "
             "predict worse masks; a later default load retrains to the default."),
) -> None:
    """Train the reference ViT on the digits train pool and cache it under VITEDIT_HOME."""
    from dataclasses import replace

    from ..reference import build_reference, default_config

    config = default_config()
    if seed is not None:
        config = replace(config, seed=seed)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..reference.hypernet import REFERENCE_METATRAIN, hypernet_builder

    metatrain = REFERENCE_METATRAIN
    if metatrain_iterations is not None:
        metatrain = replace(metatrain, iterations=metatrain_iterations)
    with Progress(TextColumn("meta-training hypernetwork"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("meta-train", total=metatrain.iterations)
        builder = hypernet_builder(metatrain,
                                   on_iteration=lambda i, _n, _e: bar.update(task, completed=i))
        reference = build_reference(config, force=force, progress=True,
                                    hypernet_builder=builder)
    _print_card(reference.card)


@reference_app.command("show")
def show() -> None:
    """Print the cached reference model's card."""
    from ..errors import CheckpointError
    from ..reference import ModelCard
    from ..reference.build import CARD_FILE
    from ..settings import get_settings

    path = get_settings().reference_dir / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"no reference model in {path.parent}; "
                              f"run `vitedit-ops reference build`")
    _print_card(ModelCard.load(path))


def _print_card(card: ModelCard) -> None:
    from ..reference.card import describe_training_time

    console = Console()
    spec, train = card.recipe["spec"], card.recipe["train"]
    facts = Table(title="reference model", show_header=False)
    facts.add_column("fact")
    facts.add_column("value", overflow="fold")  # hashes in full: they are compared, not read
    facts.add_row("architecture", f"{spec['architecture']} "
                  + " ".join(f"{k}={v}" for k, v in sorted(spec["model_kwargs"].items())))
    facts.add_row("fingerprint", card.fingerprint)
    facts.add_row("recipe hash", card.recipe_hash)
    facts.add_row("seed / split seed", f"{train['seed']} / {card.recipe['data']['split_seed']}")
    facts.add_row("training", f"{card.training['steps']} steps "
                  f"({card.training['epochs']} epochs), {describe_training_time(card.training)}")
    facts.add_row("build", f"{card.build_seconds:.1f} s, {card.created}")
    facts.add_row("hypernetwork", card.hypernet["path"] if card.hypernet else "none")
    facts.add_row("versions", ", ".join(f"{k} {v}" for k, v in sorted(card.versions.items())))
    console.print(facts)

    pools = Table(title="pools")
    for column in ("pool", "images", "accuracy", "ids sha256"):
        pools.add_column(column, justify="right" if column in ("images", "accuracy") else "left")
    for name, size in card.pool_sizes.items():
        pools.add_row(name, str(size), f"{card.accuracy[name]:.4f}", card.split_hashes[name][:16])
    console.print(pools)

    shifts = Table(title=f"shifted error groups (>= {card.recipe['shifts']['min_size']} images)")
    for column in ("shift", "accuracy", "errors", "groups"):
        shifts.add_column(column)
    for name, outcome in card.shifts.items():
        shifts.add_row(name, f"{outcome['accuracy']:.4f}", str(outcome["errors"]),
                       " ".join(f"{k}:{v}" for k, v in outcome["groups"].items()) or "none")
    console.print(shifts)


def register(app: typer.Typer) -> None:
    app.add_typer(reference_app, name="reference")
