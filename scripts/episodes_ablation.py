"""The paper's Fig. 6a ablation on the reference model: a hypernetwork meta-trained on PGD
episodes against the reference's own (CutMix), each driving the same editor families through
the same edit cases of the edit benchmark.

    .venv/bin/python scripts/episodes_ablation.py OUT_DIR ["localized (product)" ...]

Meta-trains the PGD hypernetwork with the reference recipe (``REFERENCE_METATRAIN``, episodes
swapped; resumable in OUT_DIR/pgd-hypernet), then runs ``benchmarks.run.run_benchmark`` once per
hypernetwork without cost or component benchmarks; each run's report is OUT_DIR/NAME/BENCHMARKS.md.
Both runs draw the same cases (same seed), so the two hypernetworks are compared case by case:
each family's operating point is chosen on the select half of each run's own rows at every
locality threshold, and the per-case GR difference (PGD - CutMix) on the evaluation half gets a
95% Student-t interval; OUT_DIR/paired.json and OUT_DIR/paired.md hold them.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.frontier import paired_across_runs
from benchmarks.run import BenchConfig, run_benchmark
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.reference.hypernet import (REFERENCE_METATRAIN, hypernet_builder,
                                            load_reference_with_hypernet)


THRESHOLDS = (0.995, 0.99, 0.95, 0.90)
_NUMERIC = ("reliability", "gr", "lr_locality", "lr_sensitive", "steps", "seconds")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["k"], row["case"] = int(row["k"]), int(row["case"])
        for name in _NUMERIC:
            row[name] = float(row[name]) if row[name] not in ("", "nan") else float("nan")
    return rows


def paired_markdown(results: list[dict]) -> str:
    lines = ["| family | k | LR >= | CutMix: GR / LR | PGD: GR / LR | PGD - CutMix (95% CI, n) |",
             "|---|---:|---:|---|---|---|"]
    for r in results:
        if "missing" in r:
            lines.append(f"| {r['family']} | {r['k']} | {r['threshold']} | "
                         f"no point of the {r['missing']} run reaches it | | |")
            continue
        d = r["difference"]
        lines.append(f"| {r['family']} | {r['k']} | {r['threshold']} | "
                     f"{r['cutmix']['gr']:.3f} / {r['cutmix']['lr_locality']:.4f} | "
                     f"{r['pgd']['gr']:.3f} / {r['pgd']['lr_locality']:.4f} | "
                     f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], {r['n']} |")
    return "\n".join(lines) + "\n"


def compare(out: Path, families: tuple[str, ...]) -> list[dict]:
    """The paired table of two finished runs in ``out`` (cutmix/, pgd/)."""
    cutmix, pgd = _rows(out / "cutmix" / "rows.csv"), _rows(out / "pgd" / "rows.csv")
    ks = sorted({r["k"] for r in cutmix})
    results = [paired_across_runs(cutmix, pgd, f, k, th, names=("cutmix", "pgd"))
               for f in families for k in ks for th in THRESHOLDS]
    (out / "paired.json").write_text(json.dumps(results, indent=2))
    (out / "paired.md").write_text(paired_markdown(results))
    return results


def main(out: Path, families: tuple[str, ...]) -> None:
    reference, cutmix = load_reference_with_hypernet()
    started = time.perf_counter()
    # the reference's own builder (same images, one thread, its window), episodes swapped
    hypernet_builder(replace(REFERENCE_METATRAIN, episodes="pgd"))(
        reference.model, reference.spec, reference.data, out / "pgd-hypernet")
    print(f"PGD meta-training: {time.perf_counter() - started:.0f} s", flush=True)
    pgd = MaskHypernet.load(out / "pgd-hypernet")
    if tuple(pgd.config.window) != tuple(cutmix.config.window):
        raise SystemExit(f"the PGD hypernetwork's window {pgd.config.window} is not the "
                         f"reference's {cutmix.config.window}")
    config = BenchConfig(families=families, include_cost=False, include_components=False)
    for name, hypernet in (("cutmix", cutmix), ("pgd", pgd)):
        run_benchmark(reference, hypernet, config, out / name, log=lambda _m: None)
        print(f"{name}: {out / name / 'BENCHMARKS.md'}", flush=True)
    compare(out, families)
    print((out / "paired.md").read_text(), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), tuple(sys.argv[2:]) or ("localized (product)", "localized (paper)"))
