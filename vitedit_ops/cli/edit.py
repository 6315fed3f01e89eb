"""``vitedit-ops edit`` and ``vitedit-ops meta-train``: the engine from the command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InvalidInputError
from .model_options import Arch, DataArg, ModelArg, ModelConfig, describe, load
from .choices import EDITOR, EPISODE_KIND, OPTIMIZER, UPDATER_KIND

PRODUCT_METHOD = "localized"  # checked against editors.PRODUCT by the CLI tests

console = Console()


def _parse_window(window: str | None) -> tuple[int | None, int | None]:
    if not window:
        return None, None
    try:
        start, end = (int(v) for v in window.split("-"))
    except ValueError as exc:
        raise InvalidInputError(f"window must look like START-END (e.g. 2-4), got {window!r}"
                                ) from exc
    return start, end


def _preserved_pool(folder: Path, preprocessor, edit_pixels):
    """The images in ``folder`` as model inputs, minus any edit image (by pixel hash): a pool
    image is one whose prediction must hold, an edit image one whose prediction must change."""
    import torch

    from ..gate import image_hashes
    from ..imagefiles import image_paths

    pixels = torch.stack([preprocessor.pixels_from_file(p) for p in image_paths([], folder)])
    edited = set(image_hashes(edit_pixels))
    keep = [i for i, digest in enumerate(image_hashes(pixels)) if digest not in edited]
    if not keep:
        raise InvalidInputError(f"every image in {folder} is an edit image: the preserved pool "
                                "must hold images whose predictions stay")
    return preprocessor.normalize(pixels[keep])


def edit(
    images: list[Path] = typer.Argument(None, help="Image files (or .npy arrays) to fix."),
    label: int = typer.Option(..., "--label", "-l", help="True class of the images."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Model weights."),
    arch: Arch = None,
    model_arg: ModelArg = [],  # noqa: B006 - typer reads the default
    data: DataArg = [],  # noqa: B006
    model_config: ModelConfig = None,
    folder: Path | None = typer.Option(None, help="Folder of edit images."),
    method: str = typer.Option(PRODUCT_METHOD, parser=EDITOR,
                               help="Editor (default: the product's)."),
    hypernet: Path | None = typer.Option(None, help="Hypernetwork dir (localized editor; also "
                                                   "gives the window methods their window); "
                                                   "default: <checkpoint dir>/hypernet."),
    updater: Path | None = typer.Option(None, help="Update network dir of ke / mend (from "
                                                  "`meta-train --updater`); default: "
                                                  "<checkpoint dir>/updater-KIND."),
    keep: float | None = typer.Option(None, help="Share of window units to edit (masked "
                                                 "editors; default: the product's)."),
    lr: float | None = typer.Option(None, help="Edit learning rate (default: the product's)."),
    optimizer: str | None = typer.Option(None, parser=OPTIMIZER,
                                         help="Optimiser (default: the product's)."),
    steps: int | None = typer.Option(None, help="Step limit (default: the product's)."),
    window: str | None = typer.Option(None, help="FFN blocks START-END (default: the "
                                                "hypernetwork's, else ~3/4 depth)."),
    preserved: Path | None = typer.Option(
        None, help="Folder of images whose predictions must hold (never the gate suite's): "
                   "ROME's key covariance, T-Patcher's memory loss, the product's null-space "
                   "confinement. Needed by rome and t_patcher."),
    out: Path = typer.Option(Path("patch.safetensors"), "--out", "-o",
                             help="Where to write the patch."),
) -> None:
    """Fix misclassified images of one class with the product's edit recipe (options override
    it); print the result and write the sparse patch."""
    import torch

    from ..editors import PRODUCT, create_editor, needs_preserved, takes_preserved, updater_kind
    from ..hypernet import MaskHypernet
    from ..imagefiles import image_paths
    from ..learned_update import load_updater
    from ..preprocess import Preprocessor

    if preserved is None and needs_preserved(method):
        raise InvalidInputError(f"--method {method} needs a preserved pool: pass --preserved "
                                "FOLDER (images whose predictions must hold)")
    paths = image_paths(images or [], folder)
    model, spec = load(checkpoint, describe(arch, model_arg, data, model_config))
    if not 0 <= label < spec.num_classes:
        raise InvalidInputError(f"label {label} is out of range 0..{spec.num_classes - 1}")
    preprocessor = Preprocessor(spec)
    pixels = torch.stack([preprocessor.pixels_from_file(p) for p in paths])
    inputs = preprocessor.normalize(pixels)
    labels = torch.full((len(inputs),), label, dtype=torch.long)
    pool = (_preserved_pool(preserved, preprocessor, pixels)
            if preserved is not None and takes_preserved(method) else None)
    directory = hypernet or checkpoint.parent / "hypernet"
    found = (directory / "hypernet.json").is_file()
    if method == "localized" and not found:
        raise InvalidInputError(f"no hypernetwork at {directory}: run `vitedit-ops "
                                "meta-train` first or pass --hypernet")
    kind = updater_kind(method)
    learned = None
    if kind:
        learned_dir = updater or checkpoint.parent / f"updater-{kind}"
        if not learned_dir.is_dir():
            raise InvalidInputError(f"no {kind} update network at {learned_dir}: run "
                                    f"`vitedit-ops meta-train --updater {kind}` or pass --updater")
        learned = load_updater(learned_dir)
    start, end = _parse_window(window)
    # a learned editor's rate multiplies its meta-learned step: the product's rate is not one
    options = {**({} if kind else PRODUCT.options), "keep_fraction": keep, "lr": lr,
               "optimizer": optimizer, "max_steps": steps}
    editor = create_editor(method, hypernet=MaskHypernet.load(directory) if found else None,
                           window=(start, end) if window else None, preserved=pool,
                           updater=learned,
                           **{k: v for k, v in options.items() if v is not None})
    result = editor.edit(model, inputs, labels)
    result.patch.save(out)

    table = Table(title=f"edit ({result.method}) -> {out}")
    for column in ("image", "before", "after", "label"):
        table.add_column(column)
    for path, b, a in zip(paths, result.predictions_before, result.predictions_after):
        table.add_row(path.name, str(int(b)), str(int(a)), str(label),
                      style="green" if int(a) == label else "red")
    console.print(table)
    console.print(f"success={result.success} steps={result.steps} "
                  f"time={result.seconds:.2f}s changed values={result.patch.num_values} "
                  f"kept fraction={result.kept_fraction:.3f} "
                  f"preserved images={0 if pool is None else len(pool)}")
    if not result.success:
        raise typer.Exit(1)


def meta_train(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Base model weights."),
    images: Path = typer.Option(..., help="Folder of unlabeled images like the training data."),
    arch: Arch = None,
    model_arg: ModelArg = [],  # noqa: B006 - typer reads the default
    data: DataArg = [],  # noqa: B006
    model_config: ModelConfig = None,
    out: Path | None = typer.Option(None, help="Output dir (default <checkpoint dir>/hypernet, "
                                              "or updater-KIND); a hypernetwork's re-run "
                                              "resumes from its checkpoint."),
    updater: str | None = typer.Option(None, parser=UPDATER_KIND, help="Meta-train the update "
                                       "network of a baseline that learns how to edit (ke or "
                                       "mend) on the same episodes, instead of the hypernetwork."),
    iterations: int = typer.Option(500, help="Episode batches."),
    batch_size: int = typer.Option(8, help="Episodes per batch."),
    inner_lr: float = typer.Option(1e-2, help="Inner masked-step learning rate."),
    window: str | None = typer.Option(None, help="FFN blocks START-END (default ~3/4 depth)."),
    episodes: str = typer.Option("cutmix", parser=EPISODE_KIND, help="Pseudo edit episodes: "
                                         "cutmix (the paper's default) or pgd (adversarial "
                                         "perturbations, its Fig. 6a ablation)."),
    seed: int = typer.Option(0),
) -> None:
    """Meta-train the mask hypernetwork for a base model (once per base model)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..imagefiles import image_paths
    from ..metatrain import MetaTrainConfig, meta_train as run
    from ..preprocess import Preprocessor
    from ..sites import edit_window

    model, spec = load(checkpoint, describe(arch, model_arg, data, model_config))
    inputs = Preprocessor(spec).from_files(image_paths([], images))
    if updater is not None:
        _meta_train_updater(model, spec, inputs, updater, out, checkpoint, iterations,
                            batch_size, episodes, seed, window)
        return
    config = MetaTrainConfig(iterations=iterations, batch_size=batch_size, inner_lr=inner_lr,
                             episodes=episodes, seed=seed)
    out = out or checkpoint.parent / "hypernet"
    with Progress(TextColumn("meta-train"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} bce={task.fields[bce]:.4f}"), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("meta-train", total=iterations, bce=float("nan"))
        result = run(model, inputs, config, window=edit_window(model, *_parse_window(window)),
                     out_dir=out, architecture=spec.architecture,
                     on_iteration=lambda i, _n, e: progress.update(task, completed=i,
                                                                   bce=e["bce"]))
    console.print(f"hypernetwork written to {out} (resumed from iteration "
                  f"{result.resumed_from}); attach it to the registered base with "
                  f"`vitedit-ops register-hypernet --model NAME --version N --hypernet {out}`",
                  highlight=False, soft_wrap=True)


def _meta_train_updater(model, spec, inputs, kind: str, out: Path | None, checkpoint: Path,
                        iterations: int, batch_size: int, episodes: str, seed: int,
                        window: str | None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..sites import edit_window
    from ..update_metatrain import UpdaterTrainConfig, meta_train_updater

    config = UpdaterTrainConfig(kind=kind, iterations=iterations, batch_size=batch_size,
                                episodes=episodes, seed=seed)
    out = out or checkpoint.parent / f"updater-{kind}"
    with Progress(TextColumn(f"meta-train {kind}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total} loss={task.fields[loss]:.4f}"),
            TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(kind, total=iterations, loss=float("nan"))
        result = meta_train_updater(
            model, inputs, config, window=edit_window(model, *_parse_window(window)),
            architecture=spec.architecture,
            on_iteration=lambda i, _n, e: progress.update(task, completed=i, loss=e["loss"]))
    result.updater.config.training["seconds"] = round(result.seconds, 1)
    result.updater.save(out)
    console.print(f"{kind} update network written to {out} ({result.seconds:.0f} s); edit "
                  f"with `vitedit-ops edit --method {kind} --updater {out} ...`",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("edit")(edit)
    app.command("meta-train")(meta_train)
