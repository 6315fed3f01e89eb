"""The serving benchmark runs end to end and reports what it measured (no timing
assertions): every logger configuration stores every record, the served model answers, and
the alias-swap check really compares what was answered with what was stored."""

from __future__ import annotations

import pytest

from benchmarks.serving import markdown, run_benchmark
from vitedit_ops.models import ModelSpec


@pytest.mark.slow
def test_quick_serving_benchmark_reports_every_figure(monkeypatch) -> None:
    # as `vitedit-ops bench --serving` runs on a machine with no signing key configured: the
    # benchmark signs its own registrations, or serving would refuse its champion
    monkeypatch.delenv("VITEDIT_SIGNING_KEY_FILE", raising=False)
    monkeypatch.delenv("VITEDIT_SIGNING_KEY", raising=False)
    # the structure, not the figures: 1 s per measurement, a tiny timm ViT as the throughput
    # model, and requests of 32 images (one whole batch each, so every batch of that row
    # holds exactly 32: the mean of a row counts its own measurement only, no warm-up)
    tiny = ModelSpec.describe("vit_tiny_patch16_224", 10,
                              {"img_size": 48, "patch_size": 16, "depth": 2})
    result = run_benchmark(quick=True, seconds=1.0, images_per_request=32,
                           throughput_model=tiny)
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
    # the ratio along both axes, each model against its own bare session
    rows = serving["ratios"]
    assert [(r["model"], r["images_per_request"]) for r in rows] == [
        ("reference", 1), ("reference", 32), ("vit_tiny_patch16_224", 1),
        ("vit_tiny_patch16_224", 32)]
    assert [r["throughput_only"] for r in rows] == [False, False, True, True]
    assert rows[0]["served_to_bare_ratio"] == serving["served_to_bare_ratio"]
    for row in rows:
        assert row["failed"] == 0 and row["images_per_s"] > 0
        assert row["served_to_bare_ratio"] == round(row["images_per_s"]
                                                    / row["bare_images_per_s"], 3)
        assert row["server_cpu_ms_per_image"] > 0 and row["client_cpu_ms_per_image"] > 0
        assert row["model_cpu_ms_per_image"] > 0 and row["server_cores"] > 0
        assert 0 <= row["event_loop_cpu_ms_per_image"] <= row["server_cpu_ms_per_image"]
        assert row["model_share_of_cpu"] == round(row["model_cpu_ms_per_image"] / (
            row["server_cpu_ms_per_image"] + row["client_cpu_ms_per_image"]), 3)
    assert rows[1]["batch_sizes_mean"] == rows[3]["batch_sizes_mean"] == 32.0
    # single-image requests coalesce into batches of at most max_batch: how full they get
    # depends on how fast the clients send, so only the bounds are checked
    assert 1.0 <= rows[0]["batch_sizes_mean"] <= 32.0
    other = serving["throughput_model"]
    assert "throughput-only" in other["model"] and "48x48" in other["model"]
    text = markdown(result)
    assert "vit_tiny_patch16_224 (throughput only) | 32 |" in text
