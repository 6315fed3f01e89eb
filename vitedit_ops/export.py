"""ONNX export of an (edited) classifier and its parity check in onnxruntime.

Serving runs the ONNX graph, so a model ships only if that graph agrees with the torch model
it came from: max |logit difference| and top-1 agreement on the whole gate suite.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import VitEditError

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 20


class ExportError(VitEditError):
    """The model could not be exported or the exported graph could not be loaded."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    opset: int


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: nn.Module, input_size: tuple[int, int, int], path: str | Path,
                opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export with the dynamo exporter, a dynamic batch axis and weights inside the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).to("cpu").eval()  # export must not move the caller's model
    example = torch.randn(2, *input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _quiet_exporter_logs()
            program = torch.onnx.export(
                cpu_model, (example,), dynamo=True, external_data=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}}, verbose=False)
            program.save(str(path))
    except Exception as exc:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    return ExportResult(path=path, sha256=file_sha256(path), opset=opset)


def _quiet_exporter_logs() -> None:
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def session_providers(prefer_cuda: bool = True) -> list[str]:
    """CUDA first when onnxruntime can really use it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if prefer_cuda and "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_session(path: str | Path, prefer_cuda: bool = True, threads: int | None = None,
                 spinning: bool = True):
    """An onnxruntime session on the best provider actually active (not merely installed).

    ``threads`` caps onnxruntime's intra-op CPU threads (default: its own choice, one per
    physical core), e.g. to compare it with torch at the same thread count. ``spinning=False``
    lets idle intra-op threads sleep instead of spinning between runs: a server needs those
    cores for everything around inference (measured at ~1 ms of CPU per served image on 2
    cores, docs/serving.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider-fallback noise on CPU hosts
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=session_providers(prefer_cuda))
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {path}: {exc}") from exc
    return session


def active_provider(session) -> str:
    """The provider the session really runs on (``get_providers`` is what was activated)."""
    return session.get_providers()[0]


def run_session(session, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    images = images.detach().cpu()
    outs = [session.run(None, {name: images[i:i + batch_size].numpy().astype(np.float32)})[0]
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0, 0), np.float32)


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    provider: str
    num_images: int


def onnx_parity(model: nn.Module, onnx_path: str | Path, images: torch.Tensor,
                prefer_cuda: bool = True, torch_logits: torch.Tensor | None = None) -> Parity:
    """Compare torch and onnxruntime logits on ``images`` (the whole suite).

    ``torch_logits`` are the model's logits on ``images`` when the caller already has them
    (the gate does), so they are not computed twice.
    """
    from .metrics import predict_logits

    session = load_session(onnx_path, prefer_cuda)
    if torch_logits is None:
        torch_logits = predict_logits(model, images)
    torch_logits = torch_logits.detach().cpu().float().numpy()
    ort_logits = run_session(session, images)
    if ort_logits.shape != torch_logits.shape:
        raise ExportError(f"ONNX output shape {ort_logits.shape} != torch {torch_logits.shape}")
    diff = float(np.abs(ort_logits - torch_logits).max()) if len(images) else float("nan")
    if not np.isfinite(ort_logits).all():
        diff = float("inf")
    agree = float((ort_logits.argmax(-1) == torch_logits.argmax(-1)).mean()) if len(images) \
        else float("nan")
    return Parity(diff, agree, active_provider(session), len(images))
