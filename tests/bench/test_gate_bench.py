"""The gate benchmark runs end to end and reports what it promises (figures are not asserted:
they depend on the host)."""

from __future__ import annotations

import json

import pytest

from benchmarks.gate import EDIT_IMAGES, HELDOUT_IMAGES, RETENTION_IMAGES, run_benchmark
from vitedit_ops.reference import POOL_SIZES


@pytest.mark.slow
def test_quick_benchmark_reports_throughput_and_gate_time():
    result = run_benchmark(quick=True, threads=1)
    json.dumps(result)  # plain data, ready for a results file
    assert (result["model"]["embed_dim"], result["model"]["depth"]) == (128, 6)
    for batch in ("batch_1", "batch_64"):
        figures = result["throughput"][batch]
        assert figures["torch_images_per_s"] > 0 and figures["onnxruntime_images_per_s"] > 0
        assert figures["speedup"] == pytest.approx(
            figures["onnxruntime_images_per_s"] / figures["torch_images_per_s"], rel=0.05)
    gate = result["gate"]
    suite_images = POOL_SIZES["locality"] + RETENTION_IMAGES
    assert gate["suite_images"] == suite_images
    assert gate["gated_images"] == suite_images + EDIT_IMAGES + HELDOUT_IMAGES
    assert gate["seconds_gate_exports_onnx"] > gate["seconds_onnx_given"] > 0
    assert gate["cpu_seconds_gate_exports_onnx"] > gate["cpu_seconds_onnx_given"] > 0
    assert result["throughput"]["batch_64"]["speedup_cpu"] > 0
    assert result["environment"]["threads"] == 1
