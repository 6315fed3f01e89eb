"""``vitedit-ops search-window``: the reference model's edit window, chosen by greedy search."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def search_window(
    max_length: int = typer.Option(3, help="Largest window (blocks)."),
    cases: int = typer.Option(16, help="Validation edits per window and learning rate."),
    min_locality: float = typer.Option(0.95, help="LR a window must keep to count."),
) -> None:
    """Greedy FFN-window search for the reference model on its validation pool; the result is
    saved beside the weights and becomes the window later meta-training uses."""
    from ..edit_cases import GroupInputs
    from ..preprocess import Preprocessor
    from ..reference import DEFAULT_SHIFTS, load_reference, shifted_error_groups
    from ..reference.build import WEIGHTS_FILE
    from ..settings import get_settings
    from ..sites import save_default_window
    from ..window_search import greedy_window_search

    reference = load_reference(progress=True)
    pre = Preprocessor(reference.spec)
    groups = [GroupInputs(shift, g.true_class, g.predicted_class, pre.normalize(g.images.pixels),
                          list(g.images.ids))
              for shift in DEFAULT_SHIFTS
              for g in shifted_error_groups(reference.model, reference.spec,
                                            reference.data.validation, shift, min_size=3).groups]
    # locality proxy: training images, never the evaluation locality pool
    locality_inputs = pre.normalize(reference.data.train.pixels[:200])
    search = greedy_window_search(reference.model, groups, locality_inputs,
                                  max_length=max_length, cases=cases, min_locality=min_locality,
                                  log=lambda m: console.print(m, highlight=False))
    path = save_default_window(get_settings().reference_dir / WEIGHTS_FILE, search.best,
                               search.to_dict())
    console.print(f"best window: blocks {search.best[0]}-{search.best[1]} (saved to {path})")


def register(app: typer.Typer) -> None:
    app.command("search-window")(search_window)
