"""The registered model as an MLflow pyfunc: encoded images in, labels and probabilities out.

This file is logged as *models-from-code* (``mlflow.pyfunc.log_model(python_model=<this
file>)``): MLflow runs it to build the model, so loading unpickles nothing. The logged model's
artifacts are the served ONNX graph (the file whose sha256 the version's tags hold) and the timm
spec; its code path ships ``vitedit_ops``, whose ``Preprocessor`` (timm's eval transform) is the
one ``vitedit-ops serve``, the editor and the gate use. No vitedit-ops install is needed to load
it, only the pinned requirements (torch, timm, onnxruntime, ...).

Input: a DataFrame with a binary column ``image`` (PNG/JPEG/... file bytes); in the JSON that
``mlflow models serve`` receives, base64 strings (``{"dataframe_split": {"columns": ["image"],
"data": [["iVBOR..."]]}}``). Output: one row per image with ``label`` (class index),
``class_name``, ``probability`` (of the label) and ``probabilities`` (every class, in order).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel, PythonModelContext

IMAGE_COLUMN = "image"
ONNX_ARTIFACT, SPEC_ARTIFACT = "onnx", "spec"


class ImageClassifier(PythonModel):
    """The champion's ONNX graph behind the serving preprocessing."""

    def load_context(self, context: PythonModelContext) -> None:
        from vitedit_ops.export import load_session
        from vitedit_ops.models import ModelSpec
        from vitedit_ops.preprocess import Preprocessor

        self.spec = ModelSpec.load(context.artifacts[SPEC_ARTIFACT])
        self.preprocessor = Preprocessor(self.spec)
        self.session = load_session(context.artifacts[ONNX_ARTIFACT], prefer_cuda=True)
        self.class_names = list(self.spec.class_names
                                or [str(c) for c in range(self.spec.num_classes)])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        from vitedit_ops.errors import InvalidInputError
        from vitedit_ops.export import run_session
        from vitedit_ops.preprocess import open_image

        images = model_input[IMAGE_COLUMN] if isinstance(model_input, pd.DataFrame) \
            else model_input
        try:
            inputs = self.preprocessor.from_pil(
                [open_image(bytes(data), f"image {i}") for i, data in enumerate(images)])
        except InvalidInputError as exc:  # answered 400 by `mlflow models serve`
            raise MlflowException.invalid_parameter_value(str(exc)) from exc
        probs = torch.from_numpy(run_session(self.session, inputs)).softmax(-1).numpy()
        labels = probs.argmax(-1)
        return pd.DataFrame({
            "label": labels.astype(np.int64),
            "class_name": [self.class_names[c] for c in labels],
            "probability": probs[np.arange(len(labels)), labels].astype(np.float64),
            "probabilities": [row.astype(np.float64).tolist() for row in probs],
        })


mlflow.models.set_model(ImageClassifier())
