"""The paper's Fig. 6a ablation on the reference model: a hypernetwork meta-trained on PGD
episodes against the reference's own (CutMix), each driving the same editor families through
the same edit cases of the edit benchmark.

    .venv/bin/python scripts/episodes_ablation.py OUT_DIR ["localized (product)" ...]

Meta-trains the PGD hypernetwork with the reference recipe (``REFERENCE_METATRAIN``, episodes
swapped; resumable in OUT_DIR/pgd-hypernet), then runs ``benchmarks.run.run_benchmark`` once per
hypernetwork without cost or component benchmarks; each run's report is OUT_DIR/NAME/BENCHMARKS.md.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.run import BenchConfig, run_benchmark
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.reference.hypernet import (REFERENCE_METATRAIN, hypernet_builder,
                                            load_reference_with_hypernet)


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


if __name__ == "__main__":
    main(Path(sys.argv[1]), tuple(sys.argv[2:]) or ("localized (product)", "localized (paper)"))
