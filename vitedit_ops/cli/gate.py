"""``vitedit-ops suite build|show``, ``vitedit-ops gate`` and ``vitedit-ops export``.

Exit codes: 0 passed, 3 the gate (or export parity) failed, 2 bad input (any engine error).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import InvalidInputError
from .model_options import Arch, DataArg, ModelArg, ModelConfig, describe, load

EXIT_GATE_FAILED = 3
console = Console()


def suite_build(
    out: Path = typer.Option(..., "--out", "-o", help="New suite directory (must not exist)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="Base model "
                                           "weights (default: the reference model)."),
    arch: Arch = None,
    model_arg: ModelArg = [],  # noqa: B006 - typer reads the default
    data: DataArg = [],  # noqa: B006
    model_config: ModelConfig = None,
    images: Path | None = typer.Option(None, help="Image folder; class subfolders give labels "
                                       "(default: the reference locality pool)."),
    sensitive_margin: float = typer.Option(0.05, help="Top-2 margin of the sensitive subset."),
    sensitive_min: int = typer.Option(32, help="Minimum sensitive images (smallest margins)."),
) -> None:
    """Write version 1 of a lineage's locality suite from a base model and clean images."""
    from ..gate import build_suite

    if checkpoint is None:
        from ..reference import load_reference

        reference = load_reference()
        model, spec = reference.model, reference.spec
    else:
        model, spec = load(checkpoint, describe(arch, model_arg, data, model_config))
    if images is None:
        from ..reference import load_reference_data

        pool = load_reference_data().locality
        pixels, labels, ids = pool.pixels, pool.labels, pool.ids
    else:
        from ..imagefiles import read_image_folder

        found = read_image_folder(images, spec, require_labels=False)
        pixels, labels, ids = found.pixels, found.labels, found.ids
    suite = build_suite(out, model, spec, pixels, labels, ids, sensitive_margin, sensitive_min)
    _print_summary(suite)


def suite_show(
    path: Path = typer.Argument(..., help="Suite directory."),
    version: int | None = typer.Option(None, help="Version (default: the latest)."),
    expect_hash: str | None = typer.Option(None, help="Fail unless the suite has this hash."),
) -> None:
    """Verify a suite's whole hash chain and print what it holds."""
    from ..gate import load_suite

    _print_summary(load_suite(path, version, expect_hash))


def _print_summary(suite) -> None:
    info = suite.summary()
    console.print(f"suite {info['path']} version {info['version']}\n"
                  f"hash {info['hash']}\nbase {info['base_fingerprint']}\n"
                  f"clean {info['clean']} (labelled {info['labelled']}), sensitive "
                  f"{info['sensitive']} ({info['sensitive_rule']}), retention "
                  f"{info['retention']}", highlight=False)


def gate(
    base: Path = typer.Option(..., "--base", "-b", help="Base (current champion) weights."),
    suite_dir: Path = typer.Option(..., "--suite", "-s", help="Suite directory."),
    candidate: Path | None = typer.Option(None, "--candidate", help="Candidate weights."),
    patch: list[Path] = typer.Option([], "--patch", "-p", help="Patch(es) applied in order to "
                                     "the base to make the candidate (instead of --candidate)."),
    arch: Arch = None,
    model_arg: ModelArg = [],  # noqa: B006 - typer reads the default
    data: DataArg = [],  # noqa: B006
    model_config: ModelConfig = None,
    config: Path | None = typer.Option(None, help="Gate thresholds (.toml/.json/.yaml)."),
    overrides: list[str] = typer.Option([], "--set",
                                        help="Threshold override NAME=VALUE (repeatable)."),
    edit_images: Path | None = typer.Option(None, help="Edit images in class subfolders."),
    heldout_images: Path | None = typer.Option(None, help="Held-out images of the edited "
                                               "groups, in class subfolders."),
    onnx: Path | None = typer.Option(None, help="ONNX file to check (default: export one)."),
    lineage: str | None = typer.Option(None, help="Base fingerprint of the lineage, when the "
                                       "base is itself an edited descendant."),
    suite_hash: str | None = typer.Option(None, help="Refuse the suite unless it has this "
                                          "hash."),
    out: Path = typer.Option(Path("gate-report"), "--out", "-o", help="Report directory."),
) -> None:
    """Gate a candidate against its base on a suite; write report.json and report.md."""
    import copy

    from ..gate import GateConfig, load_suite, run_gate
    from ..patch import Patch, apply_stack

    if (candidate is None) == (not patch):
        raise InvalidInputError("give either --candidate or one or more --patch files")
    thresholds = GateConfig.load(config, overrides)
    suite = load_suite(suite_dir, expected_hash=suite_hash)
    description = describe(arch, model_arg, data, model_config)
    base_model, spec = load(base, description)
    edited_params = None
    if candidate is not None:
        candidate_model, _ = load(candidate, description, allow_nonfinite=True)
    else:
        patches = [Patch.load(p) for p in patch]
        candidate_model = copy.deepcopy(base_model)
        apply_stack(candidate_model, patches)
        edited_params = sorted({name for p in patches for name in p.params})
    sets = {}
    for name, folder in (("edit", edit_images), ("heldout", heldout_images)):
        if folder is not None:
            from ..imagefiles import read_image_folder

            found = read_image_folder(folder, spec, require_labels=True)
            pixels, labels = found.pixels, found.labels
            sets.update({f"{name}_images": pixels, f"{name}_labels": labels})
    report = run_gate(base_model, candidate_model, suite, thresholds, onnx_path=onnx,
                      edited_params=edited_params, lineage_fingerprint=lineage, **sets)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    (out / "report.md").write_text(report.to_markdown())
    console.print(report.to_markdown(), highlight=False, markup=False)
    console.print(f"report: {out / 'report.json'}", highlight=False)
    if not report.passed:
        raise typer.Exit(EXIT_GATE_FAILED)


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Model weights."),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write."),
    arch: Arch = None,
    model_arg: ModelArg = [],  # noqa: B006 - typer reads the default
    data: DataArg = [],  # noqa: B006
    model_config: ModelConfig = None,
    suite_dir: Path | None = typer.Option(None, "--suite", "-s", help="Check parity on this "
                                          "suite's images."),
    config: Path | None = typer.Option(None, help="Parity thresholds (gate config file)."),
    overrides: list[str] = typer.Option([], "--set",
                                        help="Threshold override NAME=VALUE (repeatable)."),
) -> None:
    """Export a model to one self-contained ONNX file; print its sha256 (and suite parity)."""
    import torch

    from ..export import export_onnx, onnx_parity
    from ..gate import GateConfig, load_suite

    thresholds = GateConfig.load(config, overrides)
    model, spec = load(checkpoint, describe(arch, model_arg, data, model_config))
    result = export_onnx(model, spec.input_size, out)
    console.print(f"{result.path}\nsha256 {result.sha256}\nopset {result.opset}",
                  highlight=False)
    if suite_dir is None:
        return
    suite = load_suite(suite_dir)
    images = suite.inputs(torch.cat([suite.pixels, suite.retention_pixels]))
    parity = onnx_parity(model, result.path, images)
    ok = (parity.max_abs_diff <= thresholds.onnx_max_abs_diff
          and parity.top1_agreement >= thresholds.onnx_top1_agreement_min)
    console.print(f"parity on suite {suite.content_hash[:12]} ({parity.num_images} images, "
                  f"{parity.provider}): max |diff| {parity.max_abs_diff:.3g} "
                  f"(<= {thresholds.onnx_max_abs_diff:g}), top-1 agreement "
                  f"{parity.top1_agreement:.4f} (>= {thresholds.onnx_top1_agreement_min:g}): "
                  f"{'pass' if ok else 'FAIL'}", highlight=False)
    if not ok:
        raise typer.Exit(EXIT_GATE_FAILED)


def register(app: typer.Typer) -> None:
    suite_app = typer.Typer(no_args_is_help=True, help="Build and inspect locality suites.")
    suite_app.command("build")(suite_build)
    suite_app.command("show")(suite_show)
    app.add_typer(suite_app, name="suite")
    app.command("gate")(gate)
    app.command("export")(export)
