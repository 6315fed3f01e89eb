"""The serving benchmark runs end to end and reports what it measured (no timing
assertions): every logger configuration stores every record, the served model answers, and
the alias-swap check really compares what was answered with what was stored."""

from __future__ import annotations

import pytest

from benchmarks.serving import markdown, run_benchmark


@pytest.mark.slow
def test_quick_serving_benchmark_reports_every_figure(monkeypatch) -> None:
    # as `vitedit-ops bench --serving` runs on a machine with no signing key configured: the
    # benchmark signs its own registrations, or serving would refuse its champion
    monkeypatch.delenv("VITEDIT_SIGNING_KEY_FILE", raising=False)
    monkeypatch.delenv("VITEDIT_SIGNING_KEY", raising=False)
    result = run_benchmark(quick=True, seconds=1.0)  # the structure, not the figures
    assert result["quick"] is True and "QUICK MODE" in result["note"]
    logger = result["logger"]
    for backend in ("sqlite", "postgresql"):
        if "skipped" in logger[backend]:
            continue
        assert set(logger[backend]) == {"1p_new_images", "1p_stored_image",
                                        "4p_new_images", "4p_stored_image"}
        for row in logger[backend].values():
            assert row["accepted"] == row["records"] == row["stored"] and row["dropped"] == 0
            assert row["per_s"] > 0 and row["cpu_us_per_record"] > 0
    assert result["file_ingest"]["sqlite"]["accepted"] == result["file_ingest"]["records"]
    serving = result["serving"]
    assert serving["served"]["images_per_s"] > 0 and serving["served"]["failed"] == 0
    assert serving["served_to_bare_ratio"] > 0 and isinstance(serving["goal_met"], bool)
    # the ratio is taken against the faster of onnxruntime's defaults and the served options
    assert serving["bare_reference"] in ("bare_onnxruntime", "bare_onnxruntime_as_served")
    assert serving["bare_onnxruntime_as_served_after"]["images_per_s"] > 0
    # the pure-Python stack, measured beside the default one in the same run
    python_stack = serving["served_h11_asyncio"]
    assert python_stack["stack"] == "h11 + asyncio" and python_stack["failed"] == 0
    assert python_stack["images_per_s"] > 0 and serving["served_h11_asyncio_to_bare_ratio"] > 0
    assert serving["served"]["stack"] in markdown(result)
    assert set(serving["latency"]) == {"50%", "80%", "100%"}
    swaps = serving["alias_swaps"]
    assert [m["to"] for m in swaps["swaps"]] == ["2", "3", "2"]
    assert swaps["versions_answered"] == ["1", "2", "3"]
    assert swaps["answered_predictions"] > 0 and swaps["missing"] == 0
    assert swaps["stored_rows"] >= swaps["answered_predictions"]
    assert swaps["exactly_once"] is True
    assert "exactly once **True**" in markdown(result)
