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
    write_docs: bool | None = typer.Option(None, "--write-docs/--no-write-docs",
                                           help="Copy the report to docs/ (default: full runs of every "
                                           "family)."),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="Measure cost figures."),
    components: bool = typer.Option(True, "--components/--no-components",
                                    help="Run the monitoring/gate benchmarks too."),
    workers: int = typer.Option(1, help="Parallel edit processes (one per free core)."),
    family: list[str] = typer.Option([], "--family", help="Run only this method family "
                                     "(repeatable), e.g. --family 'localized (product)'."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: skip the "
                                "grid jobs it finished (refused if its settings differ)."),
) -> None:
    """Run the benchmark on the reference model; write JSON, CSV, plots and BENCHMARKS.md."""
    # benchmarks/ is a top-level package outside the engine: imported only when bench runs
    from benchmarks.run import BenchConfig, run_benchmark

    from ..reference.hypernet import load_reference_with_hypernet

    if resume and out is None:
        raise typer.BadParameter("--resume continues a run: name its directory with --out")
    out = out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    console.print("loading (or building) the reference model and its hypernetwork ...")
    reference, hypernet = load_reference_with_hypernet(progress=True)
    config = BenchConfig(quick=quick, cases=cases, include_cost=cost,
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
        (DOCS / "BENCHMARKS.md").write_text(text)
        shutil.copy(out / "results.json", DOCS / "benchmark-results.json")
        console.print("docs/BENCHMARKS.md updated")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
