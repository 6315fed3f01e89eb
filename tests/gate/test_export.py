"""ONNX export: one self-contained file, dynamic batch, parity in a real onnxruntime session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from vitedit_ops.export import (ExportError, export_onnx, load_session, onnx_parity,
                                run_session)
from vitedit_ops.metrics import predict_logits


def test_exported_file_is_self_contained_with_a_dynamic_batch(base_onnx, suite, trained):
    model, _ = trained
    graph = onnx.load(base_onnx, load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    session = load_session(base_onnx)
    inputs = suite.inputs(suite.pixels)
    for size in (1, 7):
        out = run_session(session, inputs[:size])
        np.testing.assert_allclose(out, predict_logits(model, inputs[:size]).numpy(), atol=1e-4)


def test_session_uses_the_provider_really_active_and_stays_quiet_on_cpu(base_onnx, capfd):
    session = load_session(base_onnx)
    expected = "CUDAExecutionProvider" if torch.cuda.is_available() else "CPUExecutionProvider"
    assert session.get_providers()[0] == expected
    assert capfd.readouterr().err == ""


def test_parity_on_the_whole_suite(base_onnx, suite, trained):
    model, _ = trained
    inputs = suite.inputs(suite.pixels)
    parity = onnx_parity(model, base_onnx, inputs)
    assert parity.num_images == len(inputs) and parity.top1_agreement == 1.0
    assert parity.max_abs_diff < 1e-4
    reused = onnx_parity(model, base_onnx, inputs, torch_logits=predict_logits(model, inputs))
    assert reused == parity


def test_export_failure_is_an_engine_error(tmp_path):
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.flatten(1))  # 3*4*4 features into a 4-input layer

    with pytest.raises(ExportError, match="ONNX export of Broken failed"):
        export_onnx(Broken(), (3, 4, 4), tmp_path / "broken.onnx")
    with pytest.raises(ExportError, match="cannot load"):
        load_session(tmp_path / "missing.onnx")
