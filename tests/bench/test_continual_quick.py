"""The continual benchmark's quick run: the real nightly loop for two nights, checked for
structure and sanity (which variant wins is the full run's business, not a test's)."""

from __future__ import annotations

import json

import pytest

from benchmarks.continual.driver import Variant
from benchmarks.continual.run import ContinualConfig, merge_results, run_continual
from vitedit_ops.errors import InvalidInputError
from benchmarks.continual.scenario import Scenario, World
from benchmarks.docs import write_section


@pytest.mark.slow
def test_two_nights_of_the_real_loop_are_measured_and_reported(trained_reference, tmp_path,
                                                                prefect_test_api):
    from flows.prefect_api import prefect_api

    reference, directory, hypernet = trained_reference
    # a night whose flow raises (here: a gate threshold no gate accepts) is what production
    # meets too: the night is recorded as failed, the champion stays, the next night runs
    broken = Variant("a night that fails", gate={"locality_min": 2.0})
    config = ContinualConfig(quick=True, variants=("product", broken.name),
                             extra_variants=(broken,))
    with prefect_api():  # the session's Prefect server, as `vitedit-ops bench` finds one set
        results = run_continual(reference, directory, hypernet, config, tmp_path,
                                log=lambda _msg: None)
    failed = results["nights"][broken.name]
    assert [n["status"] for n in failed] == ["failed", "failed"]
    assert all(n["error"] and not n["gate_passed"] for n in failed)
    assert all(n["champion_after"] == n["champion_served"] == "1" for n in failed)
    assert results["summary"][broken.name]["nights_failed"] == 2
    assert results["summary"]["product"]["nights_failed"] == 0
    nights = results["nights"]["product"]
    assert [n["night"] for n in nights] == [1, 2]
    assert [n["shift"] for n in nights] == list(results["scenario"]["days"])
    for night in nights:
        assert set(night["errors_after"]) == set(dict.fromkeys(
            results["scenario"]["days"][:night["night"]]))
        assert all(0 <= v <= 255 for v in night["errors_after"].values())
        assert 0.0 <= night["clean_agreement"] <= 1.0
        assert night["groups_applied"] <= night["groups_edited"] <= max(
            night["groups_edited"], night["groups_collected"])
        assert night["night_seconds"] > 0 and night["norm_growth"] >= 1.0
        assert night["gate_passed"] == (night["champion_after"] != night["champion_served"])
    summary = results["summary"]["product"]
    assert summary["nights"] == 2 and 0 <= summary["nights_passed"] <= 2
    assert summary["errors_before"] == sum(nights[-1]["errors_before"].values())
    assert json.loads((tmp_path / "continual.json").read_text())["summary"] == json.loads(
        json.dumps(results["summary"], default=str))
    report = (tmp_path / "continual.md").read_text()
    assert "| product |" in report and "night by night" in report
    assert (tmp_path / "img" / "continual-errors.png").read_bytes()[:4] == b"\x89PNG"

    # a variant run in another process joins the same report; another world is refused
    other = tmp_path / "other"
    other.mkdir()
    again = json.loads((tmp_path / "continual.json").read_text())
    for part in ("variants", "summary", "nights"):
        again[part] = {"product, again": again[part]["product"]}
    (other / "continual.json").write_text(json.dumps(again))
    merged = merge_results([tmp_path, other])
    assert list(merged["summary"]) == ["product", broken.name, "product, again"]
    assert merged["seconds"] == pytest.approx(2 * results["seconds"])
    again["scenario"]["seed"] += 1
    (other / "continual.json").write_text(json.dumps(again))
    with pytest.raises(InvalidInputError, match="another scenario"):
        merge_results([tmp_path, other])


def test_the_scenario_never_serves_its_evaluation_images(trained_reference):
    reference, _, _ = trained_reference
    world = World.build(reference.data, Scenario(days=("thicken", "rotate", "thicken")))
    served_sources = {i for i in world.served.ids}
    assert not served_sources & set(world.evaluation.ids)
    requests = [r for day in range(3) for r in world.requests(day)]
    shifted = [r for r in requests if r.subpopulation != "clean"]
    assert {r.prediction_id.split("-", 1)[1].rsplit("-", 1)[0] for r in shifted} <= served_sources
    assert len({r.prediction_id for r in requests}) == len(requests)
    first, again = world.evaluation_set("thicken"), world.evaluation_set("thicken")
    assert first[0].equal(again[0])  # one fixed draw per kind: nights are comparable


def test_a_benchmark_rewrites_only_its_own_section(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    write_section(page, "edit", "## Edit\nold")
    write_section(page, "continual", "## Continual\nfirst")
    write_section(page, "edit", "## Edit\nnew")
    text = page.read_text()
    assert text.startswith("# Benchmarks")
    assert "new" in text and "old" not in text and text.index("## Edit") < text.index("first")
