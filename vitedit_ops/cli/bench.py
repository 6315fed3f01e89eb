"""``vitedit-ops bench``: edit quality at matched locality, sequential editing, and cost."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

console = Console()
DOCS = Path("docs")


def bench(
    quick: bool = typer.Option(False, "--quick", help="CI-sized run (a few minutes)."),
    out: Path | None = typer.Option(None, help="Results directory (default bench-results/<time>)."),
    cases: int | None = typer.Option(None, min=2, help="Paired edit cases (half select, half "
                                     "report; default 60, 6 with --quick)."),
    sequential_edits: int | None = typer.Option(None, "--sequential-edits", min=1,
                                                help="Groups edited in a row by the "
                                                "sequential benchmark (default 20, 3 with "
                                                "--quick)."),
    write_docs: bool | None = typer.Option(None, "--write-docs/--no-write-docs",
                                           help="Copy the report to docs/ (default: full runs "
                                           "of every family or variant)."),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="Measure cost figures."),
    components: bool = typer.Option(True, "--components/--no-components",
                                    help="Run the monitoring/gate benchmarks too."),
    workers: int = typer.Option(1, help="Parallel edit processes (one per free core)."),
    family: list[str] = typer.Option([], "--family", help="Run only this method family "
                                     "(repeatable), e.g. --family 'localized (product)'."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: skip the "
                                "grid jobs it finished (refused if its settings differ)."),
    continual: bool = typer.Option(False, "--continual", help="The continual benchmark "
                                   "instead: the real nightly loop over many nights of new "
                                   "shifts (the product's scoreboard)."),
    variant: list[str] = typer.Option([], "--variant", help="With --continual: run only "
                                      "this variant (repeatable), e.g. --variant product."),
    merge: list[Path] = typer.Option([], "--merge", help="With --continual: run nothing; "
                                     "write one report from these finished runs' directories "
                                     "(repeatable), e.g. variants run in parallel."),
    across_seeds: bool = typer.Option(False, "--across-seeds", help="With --continual "
                                      "--merge: the runs were made at several --seed values; "
                                      "write each variant's figures seed by seed and its "
                                      "paired difference from the product (seeds.md)."),
    serving: bool = typer.Option(False, "--serving", help="Only the serving benchmark: "
                                 "logger and file-ingest records/s, served vs bare "
                                 "onnxruntime, latency under load, alias swaps."),
    serving_images: int | None = typer.Option(None, "--serving-images", min=2, max=32,
                                              help="With --serving: images per multipart "
                                              "request, measured beside one per request "
                                              "(default 16)."),
    serving_arch: str | None = typer.Option(None, "--serving-arch", help="With --serving: "
                                            "the timm model served beside the reference, "
                                            "random weights, for throughput only (default "
                                            "vit_tiny_patch16_224)."),
    seed: int = typer.Option(0, "--seed", help="With --continual or --ceiling: the "
                             "scenario's seed (which images each day serves)."),
    ceiling: bool = typer.Option(False, "--ceiling", help="Only the generalization ceiling: "
                                 "how much of each shift one night's labelled images teach "
                                 "the product's scoped patch, full fine-tuning and a "
                                 "retrained head."),
) -> None:
    """Run the benchmark on the reference model; write JSON, CSV, plots and BENCHMARKS.md."""
    if serving:
        _serving(quick, out, write_docs, serving_images, serving_arch)
        return
    if ceiling:
        _ceiling(quick, out, write_docs, seed)
        return
    if continual:
        if across_seeds:
            _seeds(merge, out)
            return
        _continual(quick, out, tuple(variant), write_docs, merge, seed)
        return
    # benchmarks/ is a top-level package outside the engine: imported only when bench runs
    from benchmarks.docs import write_section
    from benchmarks.run import BenchConfig, run_benchmark

    from ..reference.hypernet import load_reference_with_hypernet

    if resume and out is None:
        raise typer.BadParameter("--resume continues a run: name its directory with --out")
    out = out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    console.print("loading (or building) the reference model and its hypernetwork ...")
    reference, hypernet = load_reference_with_hypernet(progress=True)
    config = BenchConfig(quick=quick, cases=cases, sequential_edits=sequential_edits,
                         include_cost=cost,
                         include_components=components, workers=workers, resume=resume,
                         families=tuple(family))
    results = run_benchmark(reference, hypernet, config, out,
                            log=lambda msg: console.print(msg, highlight=False))
    console.print(f"results in {out} ({results['seconds'] / 60:.1f} min)")
    if write_docs if write_docs is not None else not (quick or family):
        DOCS.mkdir(exist_ok=True)
        (DOCS / "img").mkdir(exist_ok=True)
        for name in ("pareto.png", "sequential.png"):
            if (out / name).is_file():
                shutil.copy(out / name, DOCS / "img" / f"bench-{name}")
        text = (out / "BENCHMARKS.md").read_text().replace("](./", "](img/bench-")
        write_section(DOCS / "BENCHMARKS.md", "edit", text.removeprefix("# Benchmarks"))
        shutil.copy(out / "results.json", DOCS / "benchmark-results.json")
        console.print("docs/BENCHMARKS.md updated")


def _continual(quick: bool, out: Path | None, variants: tuple[str, ...],
               write_docs: bool | None, merge: list[Path], seed: int = 0) -> None:
    """``bench --continual``: every variant through the nights of the scenario (or, with
    ``--merge``, one report from runs already made)."""
    from benchmarks.continual.run import (ContinualConfig, merge_results, run_continual,
                                          write_results)
    from benchmarks.docs import write_section
    from flows.prefect_api import prefect_api

    from ..reference.hypernet import load_reference_with_hypernet
    from ..settings import get_settings

    out = out or Path("bench-results") / datetime.now().strftime("continual-%Y%m%d-%H%M%S")
    if merge:
        results = write_results(merge_results(merge), out)
        quick, variants = results["quick"], ()
    else:
        console.print("loading (or building) the reference model and its hypernetwork ...")
        reference, hypernet = load_reference_with_hypernet(progress=True)
        config = ContinualConfig(quick=quick, variants=variants, seed=seed)
        with prefect_api():
            results = run_continual(reference, get_settings().reference_dir, hypernet, config,
                                    out, log=lambda msg: console.print(msg, highlight=False))
    console.print(f"results in {out} ({results['seconds'] / 60:.1f} min)")
    for name, s in results["summary"].items():
        kept = "n/a" if s["earlier_fixes_kept"] is None else f"{s['earlier_fixes_kept']:.1%}"
        console.print(f"{name}: {s['nights_passed']}/{s['nights']} nights passed, shown-shift "
                      f"errors {s['errors_before']} -> {s['errors_after']}, clean agreement "
                      f"{s['clean_agreement']:.3f}, earlier fixes kept {kept}",
                      highlight=False)
    if write_docs if write_docs is not None else not (quick or variants):
        (DOCS / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "img" / "continual-errors.png", DOCS / "img" / "continual-errors.png")
        write_section(DOCS / "BENCHMARKS.md", "continual", (out / "continual.md").read_text())
        shutil.copy(out / "continual.json", DOCS / "continual-results.json")
        console.print("docs/BENCHMARKS.md updated")


def _seeds(merge: list[Path], out: Path | None) -> None:
    """``bench --continual --merge ... --across-seeds``: one table over the seeds."""
    from benchmarks.continual.seeds import across_seeds, write_results

    out = out or Path("bench-results") / datetime.now().strftime("seeds-%Y%m%d-%H%M%S")
    results = write_results(across_seeds(merge), out)
    console.print(f"{len(results['variants'])} variant(s) over seeds "
                  f"{', '.join(map(str, results['seeds']))}: {out / 'seeds.md'}")
    console.print((out / "seeds.md").read_text(), highlight=False, markup=False, soft_wrap=True)


def _ceiling(quick: bool, out: Path | None, write_docs: bool | None, seed: int = 0) -> None:
    """``bench --ceiling``: benchmarks/ceiling.py alone, its section of docs/BENCHMARKS.md."""
    from benchmarks.ceiling import markdown, run_ceiling

    from ..reference.hypernet import load_reference_with_hypernet

    out = out or Path("bench-results") / datetime.now().strftime("ceiling-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    console.print("loading (or building) the reference model and its hypernetwork ...")
    reference, hypernet = load_reference_with_hypernet(progress=True)
    results = run_ceiling(reference, hypernet, quick=quick, seed=seed,
                          log=lambda msg: console.print(msg, highlight=False))
    _publish("ceiling", results, markdown(results), out,
             write_docs if write_docs is not None else not quick)


def _serving(quick: bool, out: Path | None, write_docs: bool | None,
             images_per_request: int | None = None, arch: str | None = None) -> None:
    """``bench --serving``: benchmarks/serving.py alone, its section of docs/BENCHMARKS.md."""
    from benchmarks.serving import markdown, run_benchmark

    out = out or Path("bench-results") / datetime.now().strftime("serving-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(quick=quick, images_per_request=images_per_request,
                            throughput_model=arch)
    _publish("serving", results, markdown(results), out,
             write_docs if write_docs is not None else not quick)


def _publish(name: str, results: dict, text: str, out: Path, to_docs: bool) -> None:
    """A one-section benchmark's outputs: ``NAME.json`` and ``NAME.md`` in ``out``, the
    report on the console and, with ``to_docs``, its section of docs/BENCHMARKS.md and
    ``docs/NAME-results.json``."""
    import json

    from benchmarks.docs import write_section

    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(text)
    console.print(text, highlight=False)
    console.print(f"results in {out}")
    if to_docs:
        write_section(DOCS / "BENCHMARKS.md", name, text)
        shutil.copy(out / f"{name}.json", DOCS / f"{name}-results.json")
        console.print("docs/BENCHMARKS.md updated")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
