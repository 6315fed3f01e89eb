"""The generalization ceiling's quick run: every learner on the same night's images, checked
for structure and sanity (which learner generalizes best is the full run's finding)."""

from __future__ import annotations

import math

from benchmarks.ceiling import HALF, HEAD, LEARNERS, PRODUCT, markdown, run_ceiling


def test_every_learner_sees_the_same_night_and_is_reported(trained_reference):
    reference, _directory, hypernet = trained_reference
    results = run_ceiling(reference, hypernet, quick=True, log=lambda _msg: None)
    kinds = list(dict.fromkeys(results["scenario"]["days"]))
    rows = results["rows"]
    assert [(r["kind"], r["learner"]) for r in rows] == [(k, n) for k in kinds for n in LEARNERS]
    for kind in kinds:
        mine = {r["learner"]: r for r in rows if r["kind"] == kind}
        # one base, one evaluation set: every learner starts from the same errors
        assert len({r["eval_errors_before"] for r in mine.values()}) == 1
        # the same night at either split: edit + held-out images add up to the same requests
        assert mine[PRODUCT]["edit_images"] + mine[PRODUCT]["heldout_errors"] == \
            mine[HALF]["edit_images"] + mine[HALF]["heldout_errors"]
        assert mine[PRODUCT]["heldout_errors"] < mine[HALF]["heldout_errors"]
        assert mine[HEAD]["edit_images"] == mine[PRODUCT]["edit_images"]
        for r in mine.values():
            assert math.isnan(r["heldout_fixed"]) or 0.0 <= r["heldout_fixed"] <= 1.0
            assert 0 <= r["eval_errors_after"] <= 255 and 0.0 <= r["clean_agreement"] <= 1.0
        # a scoped patch is fitted to leave the clean images outside its scope
        assert mine[PRODUCT]["clean_agreement"] >= 0.9
    summary = results["summary"]
    assert set(summary) == set(LEARNERS)
    for s in summary.values():
        assert s["kinds"] == len(kinds) and 0 <= s["kinds_at_floor"] <= len(kinds)
        assert s["eval_errors_before"] == sum(r["eval_errors_before"] for r in rows
                                              if r["learner"] == PRODUCT)
    text = markdown(results)
    assert all(learner in text for learner in LEARNERS) and all(k in text for k in kinds)
