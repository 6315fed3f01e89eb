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

import torch

from benchmarks.run import BenchConfig, run_benchmark
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.metatrain import meta_train
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference.hypernet import (REFERENCE_METATRAIN, load_reference_with_hypernet,
                                            reference_window)
from vitedit_ops.settings import get_settings


def main(out: Path, families: tuple[str, ...]) -> None:
    reference, cutmix = load_reference_with_hypernet()
    model, spec = reference.model, reference.spec
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference's own hypernetwork was trained
    try:
        meta_train(model, Preprocessor(spec).normalize(reference.data.train.pixels),
                   replace(REFERENCE_METATRAIN, episodes="pgd"),
                   window=reference_window(model, get_settings().reference_dir),
                   out_dir=out / "pgd-hypernet", architecture=spec.architecture)
    finally:
        torch.set_num_threads(threads)
    print(f"PGD meta-training: {time.perf_counter() - started:.0f} s", flush=True)
    pgd = MaskHypernet.load(out / "pgd-hypernet")
    config = BenchConfig(families=families, include_cost=False, include_components=False)
    for name, hypernet in (("cutmix", cutmix), ("pgd", pgd)):
        run_benchmark(reference, hypernet, config, out / name, log=lambda _m: None)
        print(f"{name}: {out / name / 'BENCHMARKS.md'}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), tuple(sys.argv[2:]) or ("localized (product)", "localized (paper)"))
