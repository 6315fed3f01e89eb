"""What an edit costs: iteration time, FLOPs, meta-training throughput and peak memory.

Every figure is a ratio of two things measured side by side in the same run (same model,
batch and process state), never an absolute time compared against a constant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitedit_ops.editors import create_editor, updater_kind
from vitedit_ops.editors.base import OptimConfig, frozen, optimize_window
from vitedit_ops.editors.units import select_top_units, unit_deltas
from vitedit_ops.forward import SplitForward
from vitedit_ops.learned_update import UpdateNet, new_updater
from vitedit_ops.metatrain import MetaTrainConfig, meta_train
from vitedit_ops.sites import edit_window

NEVER_STOP = -1.0  # a CE target no loss reaches: the edit runs exactly max_steps steps


def _edit_seconds(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str,
                  steps: int, **kwargs: Any) -> float:
    editor = create_editor(method, max_steps=steps, ce_target=NEVER_STOP, **kwargs)
    start = time.perf_counter()
    editor.edit(model, images, labels)
    return time.perf_counter() - start


def iteration_time_ratio(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         localized_kwargs: dict[str, Any], steps: int = 30, repeats: int = 3,
                         lr: float = 1e-4) -> dict[str, float]:
    """Seconds per edit step, localized vs full fine-tuning, by differencing a ``steps``-step
    edit and a 0-step edit (so set-up cost cancels); interleaved repeats, the fastest of each
    (the least disturbed by other load). A difference lost in timing noise gives ``None``
    and a note, never a made-up ratio."""
    seconds: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for method, kwargs in (("localized", localized_kwargs), ("full_ft", {})):
            for n in (steps, 0):
                seconds.setdefault((method, n), []).append(
                    _edit_seconds(model, images, labels, method, n, lr=lr, **kwargs))
    loc, full = ((min(seconds[(m, steps)]) - min(seconds[(m, 0)])) / steps
                 for m in ("localized", "full_ft"))
    out: dict[str, Any] = {"localized_s_per_step": loc, "full_ft_s_per_step": full,
                           "ratio": loc / full if loc > 0 and full > 0 else None,
                           "steps": steps, "repeats": repeats, "batch": len(images)}
    if out["ratio"] is None:
        out["note"] = "timing noise exceeded the steps' cost: rerun on a quiet machine"
    return out


def _flops(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def flops_per_iteration(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        keep_fraction: float = 0.1) -> dict[str, float]:
    """FLOPs of one edit iteration (forward + backward), localized vs full fine-tuning.

    Steady-state iterations are counted as (1 step) - (0 steps); the first iteration also
    pays for the prefix (blocks before the window), counted separately.
    """
    window = edit_window(model)
    units = select_top_units([torch.rand(s, generator=torch.Generator().manual_seed(i))
                              for i, s in enumerate(window.mask_sizes)], keep_fraction)

    def localized(steps: int) -> Callable[[], Any]:
        config = OptimConfig(lr=1e-6, max_steps=steps, ce_target=NEVER_STOP)
        return lambda: optimize_window(model, window, unit_deltas(window, units), images,
                                       labels, config)

    def full(steps: int) -> Callable[[], Any]:
        editor = create_editor("full_ft", lr=1e-6, max_steps=steps, ce_target=NEVER_STOP)
        return lambda: editor.edit(model, images, labels)

    with frozen(model):
        loc0, loc1 = _flops(localized(0)), _flops(localized(1))
        split = SplitForward(model, window.sites[0].block_path)
        prefix = _flops(lambda: split.prefix(images))
    full0, full1 = _flops(full(0)), _flops(full(1))
    # full_ft's 0-step edit runs two forwards (before-predictions + the stop check)
    forward = _flops(lambda: model(images))
    loc_step, full_step = loc1 - loc0, full1 - full0
    # torch counts 2 FLOPs per multiply-add; the paper's GFLOPs are multiply-adds (GMACs)
    return {"localized_gflops": loc_step / 1e9, "localized_first_gflops":
            (loc_step + prefix) / 1e9, "full_ft_gflops": full_step / 1e9,
            "forward_gflops": forward / 1e9, "ratio": loc_step / full_step,
            "first_iteration_ratio": (loc_step + prefix) / full_step,
            "localized_gmacs": loc_step / 2e9, "full_ft_gmacs": full_step / 2e9,
            "keep_fraction": keep_fraction, "window": f"{window.start}-{window.end}"}


def vit_b16_flops(keep_fraction: float = 0.1) -> dict[str, float]:
    """The paper's setting: ViT-B/16 at 224 px, one image, random weights (FLOPs only)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000).eval()
    images = torch.randn(1, 3, 224, 224)
    return flops_per_iteration(model, images, torch.tensor([3]), keep_fraction)


BASELINES = ("localized", "kn", "rome", "rome_lora", "t_patcher", "grace", "serac", "ke",
             "mend")


def _whole_editor(method: str, model: nn.Module, hypernet: Any, preserved: torch.Tensor,
                  steps: int, updaters: dict[str, UpdateNet] | None) -> Any:
    """The editor of a whole-edit cost figure: ``steps`` steps, never stopping early (KE and
    MEND: one step, as they are used; an untrained network where ``updaters`` has none)."""
    kind = updater_kind(method)
    updater = (updaters or {}).get(method) or (new_updater(kind, model) if kind else None)
    return create_editor(method, hypernet=hypernet, preserved=preserved, lr=1e-6,
                         max_steps=1 if kind else steps, ce_target=NEVER_STOP, updater=updater)


def _ratios_to_full_ft(measure: Callable[[str], float], methods: tuple[str, ...],
                       hypernet: Any) -> tuple[float, dict[str, float]]:
    """Full FT's figure and every method's as a ratio to it (the localized editor only with
    a hypernetwork)."""
    full = measure("full_ft")
    return full, {f"{m}_ratio": measure(m) / full for m in methods
                  if m != "localized" or hypernet is not None}


def edit_seconds_ratios(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        preserved: torch.Tensor, hypernet: Any = None, steps: int = 10,
                        methods: tuple[str, ...] = BASELINES,
                        updaters: dict[str, UpdateNet] | None = None, repeats: int = 3
                        ) -> dict[str, Any]:
    """Wall time of the same whole edits as :func:`edit_flops_ratios`, as a ratio to full
    fine-tuning's, measured side by side (best of ``repeats``, after one warm-up each)."""
    def best(method: str) -> float:
        editor = _whole_editor(method, model, hypernet, preserved, steps, updaters)
        editor.edit(model, images, labels)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            editor.edit(model, images, labels)
            times.append(time.perf_counter() - start)
        return min(times)

    full, ratios = _ratios_to_full_ft(best, methods, hypernet)
    return {"steps": steps, "batch": len(images), "full_ft_seconds": full, **ratios}


def metatrain_seconds(reference: Any, updaters: dict[str, UpdateNet]) -> dict[str, Any]:
    """Meta-training time of KE/MEND's networks against the mask hypernetwork's, as each
    build recorded it (one thread each; built at different times, so load may differ)."""
    hypernet = float((reference.card.hypernet or {}).get("seconds", float("nan")))
    out: dict[str, Any] = {"hypernet_seconds": hypernet}
    for name, net in sorted(updaters.items()):
        seconds = float(net.config.training.get("seconds", float("nan")))
        out[f"{name}_seconds"] = seconds
        out[f"{name}_ratio"] = seconds / hypernet if hypernet > 0 else float("nan")
    return out


def edit_flops_ratios(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      preserved: torch.Tensor, hypernet: Any = None, steps: int = 10,
                      methods: tuple[str, ...] = BASELINES,
                      updaters: dict[str, UpdateNet] | None = None) -> dict[str, Any]:
    """FLOPs of a whole ``steps``-step edit per method, as a ratio to full fine-tuning's.

    Whole edits, set-up included: KN's attribution, ROME's key covariance, T-Patcher's reading
    of the pool and the localized editor's hypernetwork forward are part of what an edit
    costs (the review thread's "KN at 77% of full fine-tuning" is per edit). KE and MEND edit
    in one step, as they are used: theirs is a one-step edit (the network's forward
    included; an untrained network where ``updaters`` has none, same FLOPs).
    """
    def whole(method: str) -> int:
        editor = _whole_editor(method, model, hypernet, preserved, steps, updaters)
        return _flops(lambda: editor.edit(model, images, labels))

    full, ratios = _ratios_to_full_ft(whole, methods, hypernet)
    return {"steps": steps, "batch": len(images), "pool": len(preserved),
            "full_ft_gflops": full / 1e9, **ratios}


def vit_b16_edit_flops(steps: int = 10) -> dict[str, Any]:
    """:func:`edit_flops_ratios` in the paper's setting: ViT-B/16 at 224 px, one image, a
    pool of 16 images (SERAC's scope needs at least 10 outside), random weights (FLOPs only;
    no hypernetwork for it here)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000).eval()
    return edit_flops_ratios(model, torch.randn(1, 3, 224, 224), torch.tensor([3]),
                             torch.randn(16, 3, 224, 224), steps=steps,
                             methods=tuple(m for m in BASELINES if m != "localized"))


def metatrain_speedup(model: nn.Module, images: torch.Tensor, iterations: int = 4,
                      batch_size: int = 8) -> dict[str, float]:
    """Episodes per second, vectorised vs one episode at a time, same settings and data."""
    out: dict[str, float] = {}
    for vectorized in (False, True):
        config = MetaTrainConfig(iterations=iterations, batch_size=batch_size,
                                 vectorized=vectorized)
        meta_train(model, images, MetaTrainConfig(iterations=1, batch_size=batch_size,
                                                  vectorized=vectorized))  # warm-up
        start = time.perf_counter()
        meta_train(model, images, config)
        key = "vectorized" if vectorized else "loop"
        out[f"{key}_episodes_per_s"] = iterations * batch_size / (time.perf_counter() - start)
    out["speedup"] = out["vectorized_episodes_per_s"] / out["loop_episodes_per_s"]
    return out


# -- peak memory, each measurement in a fresh process ----------------------------------------
class _PeakSampler:
    """Polls resident memory every millisecond: a peak that allocator reuse cannot hide."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _release_free_heap() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the baseline is just less tight
        pass


def _memory_probe(what: str, arch: str, batch: int) -> dict[str, float]:
    import psutil

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    size = model.pretrained_cfg["input_size"]
    images, labels = torch.randn(batch, *size), torch.randint(0, 10, (batch,))
    _release_free_heap()
    baseline = psutil.Process().memory_info().rss
    with _PeakSampler() as sampler:
        if what == "forward_backward":
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        else:
            create_editor("random_mask", max_steps=3, ce_target=NEVER_STOP, lr=1e-5).edit(
                model, images, labels)
    return {"baseline_bytes": baseline, "peak_bytes": sampler.peak}


def peak_memory_ratio(arch: str = "vit_base_patch16_224", batch: int = 8) -> dict[str, float]:
    """Peak RSS growth of a masked edit vs one plain forward+backward, fresh process each.

    Measured as resident memory above the baseline (model and inputs loaded, free heap
    returned to the OS), polled every millisecond; no GPU figure is claimed.
    """
    results = {}
    for what in ("forward_backward", "edit"):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.cost", what, arch, str(batch)],
            capture_output=True, text=True, check=True, env={**os.environ})
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        results[what] = data["peak_bytes"] - data["baseline_bytes"]
    return {"edit_mb": results["edit"] / 2**20,
            "forward_backward_mb": results["forward_backward"] / 2**20,
            "ratio": results["edit"] / max(results["forward_backward"], 1), "arch": arch,
            "batch": batch}


if __name__ == "__main__":
    print(json.dumps(_memory_probe(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
