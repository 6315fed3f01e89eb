"""`vitedit-ops bench --quick` on the real reference model: structure and sanity of every
output. No assertion on which method wins: that is what the benchmark measures.

The run is the quick one on 4 paired cases (2 to select operating points on, 2 to report on)
and 2 sequential edits instead of its 6 and 3, on one family of every kind: every output and
comparison is still there, with a fraction of the grid's edits."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from benchmarks.run import PAPER, PRODUCT, THRESHOLDS, BenchConfig, run_benchmark

# one family of every kind of editor (masked by the hypernetwork, masked at random, dense,
# low-rank, rank-one, side modules) and one ablation: the bench's machinery for each kind, at
# a CI budget; every editor's own real edit is tests/bench/test_real_edit.py's business
FAMILIES = {PRODUCT, PAPER, "localized (product, lr swept)", "random mask", "LoRA", "full FT",
            "ROME", "T-Patcher", "GRACE"}
ABLATIONS = {"localized (product, lr swept)"}
SMALL = {"quick": True, "cases": 4, "sequential_edits": 2, "include_components": False,
         "families": tuple(sorted(FAMILIES))}


@pytest.fixture(scope="module")
def quick(trained_reference, tmp_path_factory):
    reference, _directory, hypernet = trained_reference
    out = tmp_path_factory.mktemp("bench")
    results = run_benchmark(reference, hypernet, BenchConfig(**SMALL), out, log=lambda _m: None)
    return results, out


@pytest.mark.slow
def test_every_output_is_written(quick):
    _results, out = quick
    for name in ("results.json", "rows.csv", "sequential.csv", "pareto.png", "sequential.png",
                 "BENCHMARKS.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["quick"] is True


@pytest.mark.slow
def test_every_method_is_present_with_values_in_range(quick):
    _results, out = quick
    rows = list(csv.DictReader(open(out / "rows.csv")))
    assert {r["family"] for r in rows} == FAMILIES
    assert {int(r["k"]) for r in rows} == {1, 4}
    for r in rows:
        for metric in ("reliability", "gr", "lr_locality"):
            assert 0.0 <= float(r[metric]) <= 1.0, (metric, r)
        assert int(r["steps"]) >= 0 and float(r["seconds"]) > 0


@pytest.mark.slow
def test_full_finetuning_reaches_reliability_one(quick):
    results, _out = quick
    full = [v for key, v in results["points"].items() if key.startswith("full FT|")]
    assert full and max(v["reliability"] for v in full) == 1.0


@pytest.mark.slow
def test_comparisons_and_sequential_and_cost_are_reported(quick):
    results, out = quick
    assert {(c["k"], c["threshold"]) for c in results["comparisons"]} == \
        {(k, t) for k in (1, 4) for t in THRESHOLDS}  # the gate's 0.99 among them
    assert set(results["ablations"]) == ABLATIONS
    for c in results["comparisons"]:
        assert set(c["methods"]) == FAMILIES
        best = c.get("product_vs_best_baseline")
        assert best is None or best["baseline"] not in ABLATIONS | {PRODUCT}
        # paired over the report half's cases: both of them, a real interval around the mean
        assert best is None or (best["n"] == 2 and best["low"] <= best["mean"] <= best["high"])
    assert results["sequential"], "no method reached LR >= 0.90 for sequential editing"
    for family, s in results["sequential"].items():
        assert s["edits"] >= 1 and s["final_max_norm_growth"] >= 1.0 - 1e-6, family
    cost = results["cost"]
    for batch in ("iteration_time_batch1", "iteration_time_batch4"):
        timing = cost[batch]  # wall time under whatever load: structure, not speed
        assert timing["ratio"] is None and "noise" in timing["note"] or timing["ratio"] > 0
        assert math.isfinite(timing["full_ft_s_per_step"]) and timing["steps"] > 0
    assert 0 < cost["reference_flops"]["ratio"] < 1
    assert cost["metatrain"]["speedup"] > 0
    report = (out / "BENCHMARKS.md").read_text()
    assert "Edit quality at matched locality" in report and "Sequential editing" in report


@pytest.mark.slow
def test_editing_pools_are_disjoint_from_evaluation_sets(trained_reference):
    from benchmarks.setting import build_setting
    from vitedit_ops.metrics import predict_logits
    from vitedit_ops.reference import assert_disjoint

    reference, _d, _h = trained_reference
    setting = build_setting(reference.model, reference.spec, reference.data)
    group_ids = [i for g in setting.evals.groups for i in g.ids]
    assert_disjoint({"locality": reference.data.locality, "preserved": reference.data.preserved,
                     "train": reference.data.train, "groups": group_ids})
    # every group really is one (true, predicted) error of the model, as its name says
    for group in setting.evals.groups:
        predicted = predict_logits(reference.model, group.inputs).argmax(-1)
        assert (predicted == group.predicted_class).all(), group.name
        assert group.predicted_class != group.true_class and len(group.ids) == len(group.inputs)
    # locality is measured against the model's own predictions, the sensitive subset is a
    # subset of the locality pool of the size reported
    evals = setting.evals
    assert torch.equal(evals.base_predictions,
                       predict_logits(reference.model, evals.locality_inputs).argmax(-1))
    sensitive = evals.sensitive_idx.tolist()
    assert len(set(sensitive)) == len(sensitive) == setting.pools["sensitive"] > 0
    assert all(0 <= i < setting.pools["locality"] for i in sensitive)


@pytest.mark.slow
def test_a_resumed_run_reads_the_journal_instead_of_editing_again(quick, trained_reference,
                                                                  tmp_path):
    import shutil

    results, out = quick
    reference, _directory, hypernet = trained_reference
    shutil.copy(out / "rows.jsonl", tmp_path / "rows.jsonl")
    logs: list[str] = []
    again = run_benchmark(reference, hypernet,
                          BenchConfig(**{**SMALL, "sequential_edits": 0}, include_cost=False,
                                      resume=True), tmp_path, log=logs.append)
    assert any("resuming" in m for m in logs)
    assert not any(m.strip().startswith("jobs") for m in logs)  # no grid job ran again
    assert again["points"] == results["points"]
