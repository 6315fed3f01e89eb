"""The continual benchmark across seeds: variants paired with the product seed by seed, and
runs of other worlds refused (synthetic run files; the real runs are minutes each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.continual.seeds import across_seeds, markdown
from tests.cli_run import run
from vitedit_ops.errors import InvalidInputError

DAYS = ["thicken", "rotate"]


def _summary(passed: int, before: int, after: int, kept: float | None,
             agreement: float = 1.0) -> dict:
    return {"nights": 2, "nights_passed": passed, "errors_before": before,
            "errors_after": after, "error_reduction": (before - after) / before,
            "clean_agreement": agreement, "earlier_fixes_kept": kept}


def _run(root: Path, name: str, seed: int, summaries: dict, reference: str = "abc",
         days: list[str] = DAYS) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "continual.json").write_text(json.dumps({
        "reference": reference, "quick": False,
        "scenario": {"days": days, "clean_per_day": 200, "seed": seed},
        "summary": summaries}))
    return directory


def test_each_variant_is_paired_with_the_product_at_the_same_seed(tmp_path: Path) -> None:
    # seed 0 ran both variants in one process; seed 1 in two (variants run in parallel);
    # seed 2 ran the product only
    dirs = [_run(tmp_path, "s0", 0, {"product": _summary(1, 100, 90, 1.0),
                                     "lever": _summary(2, 100, 80, 0.9)}),
            _run(tmp_path, "s1-product", 1, {"product": _summary(1, 120, 100, 1.0)}),
            _run(tmp_path, "s1-lever", 1, {"lever": _summary(1, 120, 96, 1.0, 0.995)}),
            _run(tmp_path, "s2", 2, {"product": _summary(0, 110, 110, None)})]
    results = across_seeds(dirs)
    assert results["seeds"] == [0, 1, 2]
    lever = results["variants"]["lever"]
    assert lever["paired_seeds"] == [0, 1]
    assert lever["seeds"]["1"]["errors_removed"] == 24
    removed = lever["difference"]["errors_removed"]
    assert removed["mean"] == pytest.approx(7.0) and removed["n"] == 2  # +10 and +4
    assert removed["low"] < 7.0 < removed["high"]
    assert lever["difference"]["nights_passed"]["mean"] == pytest.approx(0.5)
    assert lever["difference"]["earlier_fixes_kept"]["mean"] == pytest.approx(-0.05)
    assert "difference" not in results["variants"]["product"]
    # the product's mean skips the seed where nothing was fixed to keep
    assert results["variants"]["product"]["mean"]["earlier_fixes_kept"] == pytest.approx(1.0)
    text = markdown(results)
    assert "| lever | 2 / 1 / - | 20 / 24 / - |" in text
    assert "+7.0 [" in text and "| product | 1 / 1 / 0 | 10 / 20 / 0 |" in text


def test_runs_of_other_worlds_or_a_variant_run_twice_are_refused(tmp_path: Path) -> None:
    base = _run(tmp_path, "a", 0, {"product": _summary(1, 100, 90, 1.0)})
    other_model = _run(tmp_path, "b", 1, {"product": _summary(1, 100, 90, 1.0)},
                       reference="def")
    with pytest.raises(InvalidInputError, match="another reference"):
        across_seeds([base, other_model])
    other_days = _run(tmp_path, "c", 1, {"product": _summary(1, 100, 90, 1.0)},
                      days=["blur", "rotate"])
    with pytest.raises(InvalidInputError, match="other days"):
        across_seeds([base, other_days])
    again = _run(tmp_path, "d", 0, {"product": _summary(1, 100, 95, 1.0)})
    with pytest.raises(InvalidInputError, match="ran twice at seed 0"):
        across_seeds([base, again])
    no_product = _run(tmp_path, "e", 1, {"lever": _summary(1, 100, 90, 1.0)})
    with pytest.raises(InvalidInputError, match="'product' variant"):
        across_seeds([no_product])
    with pytest.raises(InvalidInputError, match="not a finished continual run"):
        across_seeds([tmp_path / "missing"])


def test_the_cli_writes_the_table_and_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    dirs = [_run(tmp_path, f"s{s}", s, {"product": _summary(1, 100, 90 - s, 1.0),
                                         "lever": _summary(1, 100, 85 - 2 * s, 1.0)})
            for s in (0, 1, 2)]
    args = ["bench", "--continual", "--across-seeds"]
    code, out = run([*args, *[a for d in dirs for a in ("--merge", d)],
                     "--out", tmp_path / "report"], capsys)
    assert code == 0, out
    assert (tmp_path / "report" / "seeds.md").read_text() in out.replace("\r", "")
    saved = json.loads((tmp_path / "report" / "seeds.json").read_text())
    assert saved["variants"]["lever"]["difference"]["errors_removed"]["mean"] == \
        pytest.approx(6.0)
    code, out = run([*args, "--out", tmp_path / "none"], capsys)
    assert code == 2 and "nothing to compare" in out and "Traceback" not in out
