"""The benchmark runs end to end and reports what it measured (no timing assertions)."""

from __future__ import annotations

import pytest

from benchmarks.monitoring import run_benchmark


@pytest.mark.slow
def test_quick_benchmark_reports_every_figure_and_says_it_is_quick() -> None:
    result = run_benchmark(quick=True)
    assert result["quick"] is True and "QUICK MODE" in result["note"]
    sqlite = result["ingest"]["sqlite"]
    for key in ("predictions_new_per_s", "predictions_replay_per_s", "feedback_per_s",
                "logger_call_us", "logger_end_to_end_per_s"):
        assert sqlite[key] > 0
    assert "predictions_new_per_s" in result["ingest"]["postgresql"] or (
        "skipped" in result["ingest"]["postgresql"])
    collector = result["collector"]
    assert (collector["predictions"], collector["feedback"]) == (100_000, 10_000)
    assert collector["full_window_result"]["groups"] == 10
    assert collector["full_window_result"]["conflicts"] > 0
    assert collector["full_window_result"]["orphans_expired_first_run"] == 1000
    assert isinstance(collector["goal_met"], bool)
