from __future__ import annotations

import math
import statistics

import pytest

from benchmarks.frontier import (best_point, interpolated_gr, matched_comparison,
                                 paired_across_runs, paired_difference, point_means)
from vitedit_ops.edit_cases import GroupInputs, make_cases


def _row(family, lr, case, gr, loc, split="eval", k=1, knob="-"):
    return {"family": family, "knob": knob, "lr": lr, "k": k, "case": case, "split": split,
            "gr": gr, "lr_locality": loc, "lr_sensitive": loc, "reliability": 1.0,
            "steps": 3, "seconds": 0.1}


def test_best_point_respects_the_locality_threshold():
    rows = [_row("a", 1e-3, c, 0.9, 0.80) for c in range(4)] + \
           [_row("a", 1e-4, c, 0.6, 0.97) for c in range(4)]
    means = point_means(rows)
    assert best_point(means, "a", 1, 0.95)[2] == 1e-4
    assert best_point(means, "a", 1, 0.75)[2] == 1e-3
    assert best_point(means, "a", 1, 0.99) is None


def test_interpolated_frontier_is_linear_between_envelope_points():
    rows = [_row("a", 1, 0, 0.9, 0.90), _row("a", 2, 0, 0.5, 1.0), _row("a", 3, 0, 0.3, 0.95)]
    means = point_means(rows)
    assert interpolated_gr(means, "a", 1, 0.95) == pytest.approx(0.7)  # dominated point ignored
    assert math.isnan(interpolated_gr(means, "a", 1, 1.01))


def test_paired_difference_uses_shared_cases_only():
    rows = [_row("a", 1, c, 0.5 + 0.1 * (c % 2), 1) for c in range(6)] + \
           [_row("b", 1, c, 0.5, 1) for c in range(5)]
    d = paired_difference(rows, ("a", "-", 1, 1), ("b", "-", 1, 1))
    assert d["n"] == 5 and d["low"] < d["mean"] < d["high"]
    assert d["mean"] == pytest.approx(0.04)


@pytest.mark.parametrize("n, t975", [(2, 12.7062), (12, 2.2010), (31, 2.0423), (80, 1.9905)])
def test_paired_interval_uses_the_student_t_quantile_of_its_degrees_of_freedom(n, t975):
    """Quantiles from a printed t-table (dof 1, 11, 30, 79): a coarse table or the normal
    1.96 for large samples would give another half-width."""
    diffs = [0.1 + (0.2 if c % 2 else -0.2) for c in range(n)]
    rows = [_row("a", 1, c, 0.5 + d, 1) for c, d in enumerate(diffs)] + \
           [_row("b", 1, c, 0.5, 1) for c in range(n)]
    d = paired_difference(rows, ("a", "-", 1, 1), ("b", "-", 1, 1))
    half_width = t975 * statistics.stdev(diffs) / math.sqrt(n)
    assert d["n"] == n
    assert (d["high"] - d["low"]) / 2 == pytest.approx(half_width, rel=2e-4)
    assert (d["high"] + d["low"]) / 2 == pytest.approx(statistics.fmean(diffs))


def test_operating_points_are_chosen_on_the_selection_half():
    rows = []
    for c in range(10):
        split = "select" if c % 2 == 0 else "eval"
        rows.append(_row("prod", 1, c, 0.8 if split == "select" else 0.6, 0.96, split))
        rows.append(_row("base", 1, c, 0.7, 0.96, split))
    result = matched_comparison(rows, ["prod", "base"], 1, 0.95, "prod")
    assert result["methods"]["prod"]["eval"]["gr"] == pytest.approx(0.6)
    assert result["product_vs_best_baseline"]["mean"] == pytest.approx(-0.1)


def test_cases_are_disjoint_within_a_group_and_nested_across_k():
    import torch
    groups = [GroupInputs("rot", 1, 7, torch.zeros(14, 3, 4, 4)),
              GroupInputs("rot", 2, 3, torch.zeros(6, 3, 4, 4))]
    cases = make_cases(groups, max_k=4, count=10, seed=0)
    per_group = {}
    for case in cases:
        assert not set(case.edit_idx) & set(case.eval_idx)
        assert case.with_k(1).edit_idx == case.edit_idx[:1]
        per_group.setdefault(case.group, []).extend(case.edit_idx)
    for used in per_group.values():
        assert len(used) == len(set(used))
    assert {c.split for c in cases} == {"select", "eval"}


def _tiny_args(point):  # module-level: picklable for the spawned workers
    return {"window": (1, 2)}


@pytest.mark.slow
def test_parallel_grid_gives_the_same_rows_as_a_serial_run():
    import timm
    import torch

    from benchmarks.grid import EvalSets, MethodPoint, run_grid

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                              img_size=16, patch_size=4, embed_dim=32, depth=4,
                              num_heads=2).eval()
    groups = [GroupInputs("noise", 1, 0, torch.randn(8, 3, 16, 16))]
    locality = torch.randn(10, 3, 16, 16)
    evals = EvalSets(locality, model(locality).argmax(-1), torch.arange(3), groups)
    cases = make_cases(groups, 2, 2)
    points = [MethodPoint("w", "window_ft", "-", lr, (("max_steps", 5),)) for lr in (1e-3, 1e-2)]
    serial = run_grid(model, points, cases, [1, 2], evals, _tiny_args)
    parallel = run_grid(model, points, cases, [1, 2], evals, _tiny_args, workers=2)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa
    assert strip(parallel) == strip(serial)


def test_two_runs_are_paired_case_by_case_at_each_runs_own_operating_point():
    # run a: lr 1 is the select half's best point at LR >= 0.95, lr 2 misses the locality;
    # run b: lr 2 is its best point; the evaluation half is compared case by case
    def run(points, slope):
        return [_row("p", lr, c, gr + slope * c, loc, split=split)
                for lr, gr, loc in points for c in range(8)
                for split in (("select",) if c < 4 else ("eval",))]
    a = run([(1, 0.50, 0.99), (2, 0.90, 0.90)], 0.01)
    b = run([(1, 0.40, 0.99), (2, 0.70, 0.96)], 0.02)  # differences 0.24 .. 0.27
    out = paired_across_runs(a, b, "p", 1, 0.95, names=("cutmix", "pgd"))
    assert out["cutmix_point"]["lr"] == 1 and out["pgd_point"]["lr"] == 2
    assert out["n"] == 4
    assert out["difference"]["mean"] == pytest.approx(0.255)
    assert 0.2 < out["difference"]["low"] < 0.255 < out["difference"]["high"] < 0.3
    assert out["pgd"]["lr_locality"] == pytest.approx(0.96)
    # a run with no point at the threshold says which; fewer than 2 shared cases too
    assert paired_across_runs(a, b, "p", 1, 0.995)["missing"] == "a"
    assert paired_across_runs(a, [r for r in b if r["case"] < 5], "p", 1, 0.95)["missing"] \
        == "shared evaluation cases"
