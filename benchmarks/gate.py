"""Serving and gate speed on a reference-sized ViT: onnxruntime vs torch eager, gate wall time.

Why: the ONNX graph is what serves, so it must be worth exporting (goal: >= 1.5x torch eager
throughput at batch 64 on CPU), and the gate runs on every nightly candidate (goal: < 10 s on
the reference suite on CPU). Both engines are timed in the same process, in alternating rounds,
so a busy host slows both alike, and with the same number of CPU threads; the median round is
reported with the host's load.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vitedit_ops.export import active_provider, export_onnx, load_session
from vitedit_ops.gate import build_suite, run_gate
from vitedit_ops.models import ModelSpec
from vitedit_ops.patch import Patch
from vitedit_ops.reference import load_reference_data, reference_spec

GATE_GOAL_SECONDS = 10.0
SPEEDUP_GOAL = 1.5
RETENTION_IMAGES = 20  # images fixed by earlier edits
EDIT_IMAGES, HELDOUT_IMAGES = 4, 20


def reference_sized_model(seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    """The reference architecture with seeded random weights (speed does not depend on them)."""
    spec = reference_spec()
    torch.manual_seed(seed)
    return spec.build().eval(), spec


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall time and the CPU time the whole process spent meanwhile.

    On a shared host the CPU time is the steadier figure: other processes stretch the wall
    time, not the work done.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _rates(fn: Callable[[], Any], batch: int, seconds: float) -> tuple[float, float]:
    """Images per wall second and per CPU second of ``fn`` run for about ``seconds``."""
    fn()  # warm-up

    def loop() -> int:
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < seconds:
            fn()
            runs += 1
        return runs

    runs, wall, cpu = _timed(loop)
    return runs * batch / wall, runs * batch / max(cpu, 1e-9)


def _throughput(model: torch.nn.Module, session, batch: int, rounds: int,
                seconds: float) -> dict[str, float]:
    images = torch.randn(batch, *reference_spec().input_size)
    feed = {session.get_inputs()[0].name: images.numpy()}
    torch_rates, ort_rates = [], []
    with torch.inference_mode():
        for _ in range(rounds):  # alternate, so load changes hit both engines
            torch_rates.append(_rates(lambda: model(images), batch, seconds))
            ort_rates.append(_rates(lambda: session.run(None, feed), batch, seconds))
    result = {}
    for kind, i in (("s", 0), ("cpu_s", 1)):
        torch_rate = statistics.median(r[i] for r in torch_rates)
        ort_rate = statistics.median(r[i] for r in ort_rates)
        result.update({f"torch_images_per_{kind}": round(torch_rate, 1),
                       f"onnxruntime_images_per_{kind}": round(ort_rate, 1),
                       "speedup" if kind == "s" else "speedup_cpu":
                       round(ort_rate / torch_rate, 2)})
    return result


def _gate_seconds(workdir: Path, model: torch.nn.Module, spec: ModelSpec, runs: int
                  ) -> dict[str, Any]:
    """Gate a small localized-looking edit on the reference suite (the locality pool plus
    earlier fixes), with and without a given ONNX file (without, the gate exports itself)."""
    data = load_reference_data()
    suite = build_suite(workdir / "suite", model, spec, data.locality.pixels,
                        data.locality.labels, data.locality.ids)
    fixed = data.validation.subset(range(RETENTION_IMAGES))
    suite = suite.extend_with_fixes(fixed.pixels, fixed.labels, "bench")
    candidate = copy.deepcopy(model)
    name = "blocks.3.mlp.fc1.weight"
    index = torch.arange(0, candidate.get_parameter(name).shape[0], 10)  # ~10% of the units
    delta = 1e-3 * torch.randn(len(index), candidate.get_parameter(name).shape[1])
    Patch.from_deltas(candidate, [(name, "rows", index, delta)], suite.base_fingerprint
                      ).apply(candidate)
    edit = data.shift.subset(range(EDIT_IMAGES))
    heldout = data.shift.subset(range(EDIT_IMAGES, EDIT_IMAGES + HELDOUT_IMAGES))
    sets = {"edit_images": edit.pixels, "edit_labels": edit.labels,
            "heldout_images": heldout.pixels, "heldout_labels": heldout.labels}
    onnx_path = export_onnx(candidate, spec.input_size, workdir / "candidate.onnx").path
    with_export, with_file, report = [], [], None
    for _ in range(runs):
        report, *times = _timed(lambda: run_gate(model, candidate, suite, **sets))
        with_export.append(times)
        with_file.append(_timed(lambda: run_gate(model, candidate, suite, onnx_path=onnx_path,
                                                 **sets))[1:])
    def median(times: list[list[float]], which: int) -> float:  # 0: wall, 1: CPU seconds
        return round(statistics.median(t[which] for t in times), 2)

    return {"suite_images": len(suite.pixels) + len(suite.retention_pixels),
            "gated_images": report.check("onnx_max_abs_diff").details.get("images"),
            "seconds_gate_exports_onnx": median(with_export, 0),
            "seconds_onnx_given": median(with_file, 0),
            "cpu_seconds_gate_exports_onnx": median(with_export, 1),
            "cpu_seconds_onnx_given": median(with_file, 1),
            "per_check_seconds": {c.name: c.details["seconds"] for c in report.checks},
            "goal_seconds": GATE_GOAL_SECONDS,
            "goal_met": median(with_export, 0) < GATE_GOAL_SECONDS}


def run_benchmark(quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Measure ORT vs torch eager (batch 1 and 64) and the gate's wall time; returns plain data.

    ``quick`` shortens every measurement (for smoke tests); figures are then noisier.
    ``threads`` sets the CPU threads of both engines for the run (default: torch's own count);
    on a busy shared CPU, one thread keeps an engine's threads from waiting on each other.
    """
    rounds, seconds, gate_runs = (2, 0.3, 1) if quick else (5, 2.0, 3)
    load_before = os.getloadavg()[0]
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(quick, rounds, seconds, gate_runs, load_before)
    finally:
        torch.set_num_threads(threads_before)


def _measure(quick: bool, rounds: int, seconds: float, gate_runs: int, load_before: float
             ) -> dict[str, Any]:
    import onnxruntime

    model, spec = reference_sized_model()
    with tempfile.TemporaryDirectory(prefix="vitedit-bench-") as tmp:
        workdir = Path(tmp)
        exported, export_seconds, export_cpu = _timed(
            lambda: export_onnx(model, spec.input_size, workdir / "model.onnx"))
        session = load_session(exported.path, threads=torch.get_num_threads())
        throughput = {f"batch_{b}": _throughput(model, session, b, rounds, seconds)
                      for b in (1, 64)}
        gate = _gate_seconds(workdir, model, spec, gate_runs)
    return {
        "model": {"architecture": spec.architecture, **spec.model_kwargs,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "quick": quick,
        "throughput": throughput,
        "speedup_goal": SPEEDUP_GOAL,
        "speedup_goal_met": throughput["batch_64"]["speedup"] >= SPEEDUP_GOAL,
        "export_seconds": round(export_seconds, 2),
        "export_cpu_seconds": round(export_cpu, 2),
        "gate": gate,
        "environment": {
            "provider": active_provider(session), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),  # torch intra-op = onnxruntime intra-op
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        },
    }
