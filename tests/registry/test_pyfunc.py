"""The registered model as a user without ``vitedit-ops serve`` meets it: an MLflow pyfunc
that takes image files and answers labels and probabilities, loaded without unpickling, in
agreement with serving's ONNX session and the torch model; and ``mlflow models serve``."""

import base64
import io
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from PIL import Image

from registry import datasets, versions
from registry.mlflow_registry import publish_edit
from registry.promotion import LEGACY_ONNX_FILE, ONNX_FILE, verify
from registry.runs import example_image
from serving import champion as served
from vitedit_ops.imagefiles import png_bytes
from vitedit_ops.preprocess import Preprocessor, open_image
from vitedit_ops.reference.data import digits_pixels

from ..helpers.servers import Server, free_port

MLFLOW = Path(sys.executable).parent / "mlflow"


@pytest.fixture(scope="module")
def registered(embedded_uri, register_base_as) -> str:
    name = "pyfunc-lineage"
    register_base_as(name, embedded_uri)
    mlflow.set_tracking_uri(embedded_uri)
    return name


def images() -> list[bytes]:
    """Six reference digits and two photos of other sizes (resized and cropped by timm's
    transform, unlike the digits)."""
    pixels, _ = digits_pixels()
    rng = np.random.default_rng(0)
    photos = []
    for width, height in ((96, 64), (40, 57)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            buffer, format="JPEG")
        photos.append(buffer.getvalue())
    return [png_bytes(pixels[i]) for i in (0, 1, 2, 3, 10, 11)] + photos


def torch_probabilities(model, spec, files: list[bytes]) -> np.ndarray:
    inputs = Preprocessor(spec).from_pil([open_image(f) for f in files])
    with torch.no_grad():
        return model(inputs).softmax(-1).numpy()


def test_the_champion_is_code_and_safetensors_free_of_pickles(registered, embedded_uri):
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{registered}@champion"))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pt2", ".pth", ".bin"))]
    assert {"pyfunc_model.py", "artifacts/model.onnx", "artifacts/model.json",
            "code/vitedit_ops/preprocess.py", "MLmodel"} <= files
    flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in flavor  # no cloudpickled PythonModel


def test_the_input_example_is_a_reference_digit(registered):
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{registered}@champion"))
    example = json.loads((local / "serving_input_example.json").read_text())
    sent = base64.b64decode(example["dataframe_split"]["data"][0][0])
    assert sent == example_image() == png_bytes(digits_pixels()[0][0])
    picture = np.asarray(open_image(sent).convert("L"), dtype=np.float32) / 255
    assert 0.05 < picture.mean() < 0.6 and picture.std() > 0.2  # strokes on a background


def test_pyfunc_serving_session_and_torch_model_agree(registered, embedded_uri, base_model,
                                                      spec):
    files = images()
    out = mlflow.pyfunc.load_model(f"models:/{registered}@champion").predict(
        pd.DataFrame({"image": files}))
    pyfunc = np.array(out["probabilities"].tolist())
    champion = served.load(served.resolve(registered, embedded_uri), embedded_uri)
    session = champion.probabilities(
        champion.preprocessor.from_pil([open_image(f) for f in files]))
    reference = torch_probabilities(base_model, spec, files)

    assert pyfunc.shape == session.shape == reference.shape == (len(files), 10)
    assert (pyfunc.argmax(1) == reference.argmax(1)).all()
    assert (session.argmax(1) == reference.argmax(1)).all()
    assert np.abs(pyfunc - reference).max() < 1e-4
    assert np.abs(pyfunc - session).max() < 1e-6
    assert out["label"].tolist() == reference.argmax(1).tolist()
    assert out["class_name"].tolist() == [str(c) for c in reference.argmax(1)]
    assert np.allclose(out["probability"], reference.max(1), atol=1e-4)


def test_an_unreadable_image_is_refused_in_one_line(registered):
    model = mlflow.pyfunc.load_model(f"models:/{registered}@champion")
    with pytest.raises(MlflowException, match="image 1: not a readable image"):
        model.predict(pd.DataFrame({"image": [example_image(), b"not an image"]}))


def test_the_logged_model_links_to_its_version(registered, embedded_uri):
    client = MlflowClient(embedded_uri)
    info = versions.get(client, registered, "1")
    assert info.source == f"models:/{info.model_id}"
    linked = json.loads(client.get_logged_model(info.model_id).tags[MLFLOW_MODEL_VERSIONS])
    assert linked == [{"name": registered, "version": "1"}]


def test_suite_and_preserved_pool_are_the_runs_datasets(registered, embedded_uri, good_edit,
                                                        suite):
    client = MlflowClient(embedded_uri)
    base = versions.get(client, registered, "1")
    (suite_input,) = client.get_run(base.run_id).inputs.dataset_inputs
    assert suite_input.dataset.name == datasets.SUITE
    assert suite_input.dataset.digest == base.suite_sha256[:36]
    tags = {t.key: t.value for t in suite_input.tags}
    assert tags[datasets.SHA256_TAG] == base.suite_sha256 and tags["mlflow.data.context"] == "gate"

    hashes = tuple(f"{i:064x}" for i in range(5))
    record = replace(good_edit.record, registered_model=registered, preserved_hashes=hashes,
                     preserved_labels=(3, 1, -1, -1, 7))
    edit = publish_edit(record, embedded_uri)
    inputs = {i.dataset.name: i for i in client.get_run(edit.run_id).inputs.dataset_inputs}
    assert set(inputs) == {datasets.SUITE, datasets.PRESERVED}
    assert inputs[datasets.SUITE].dataset.digest == record.suite_hash[:36]
    pool = inputs[datasets.PRESERVED]
    assert {t.key: t.value for t in pool.tags}["vitedit.images"] == "5"
    assert json.loads(pool.dataset.profile)["num_rows"] == 5
    assert [c["name"] for c in json.loads(pool.dataset.schema)["mlflow_colspec"]] == \
        ["image_sha256", "label"]


@pytest.mark.slow
@pytest.mark.server("mlflow")
def test_mlflow_models_serve_answers_invocations(mlflow_server, register_base_as, base_model,
                                                 spec, tmp_path):
    """``mlflow models serve -m models:/NAME@champion --env-manager local``, a real process
    on loopback: base64 image files in JSON, the torch model's labels out."""
    name = "pyfunc-served"
    register_base_as(name, mlflow_server)
    port = free_port()
    server = Server([str(MLFLOW), "models", "serve", "-m", f"models:/{name}@champion",
                     "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
                     "--workers", "1"], f"http://127.0.0.1:{port}", "/ping", tmp_path,
                    {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true",
                     # as in an activated environment: mlflow execs `uvicorn` from PATH
                     "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        server.start(seconds=300)
        files = images()
        body = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(f).decode()] for f in files]}}
        answer = requests.post(server.url + "/invocations", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        reference = torch_probabilities(base_model, spec, files)
        assert [r["label"] for r in rows] == reference.argmax(1).tolist()
        assert np.abs(np.array([r["probabilities"] for r in rows]) - reference).max() < 1e-4

        bad = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(b"not an image").decode()]]}}
        refused = requests.post(server.url + "/invocations", json=bad, timeout=120)
        assert refused.status_code == 400 and "not a readable image" in refused.text
    finally:
        server.stop()


def test_a_version_registered_before_the_pyfunc_still_verifies(embedded_uri, register_base_as,
                                                               model_name):
    """Older versions point to an ONNX-flavor model with ``model.onnx`` at its root: serving
    and promotion hash that file instead (and still refuse it changed)."""
    register_base_as(model_name, embedded_uri)
    client = MlflowClient(embedded_uri)
    info = versions.get(client, model_name, "1")
    root = Path(unquote(urlparse(client.get_logged_model(info.model_id).artifact_location).path))
    (root / ONNX_FILE).rename(root / LEGACY_ONNX_FILE)
    assert verify(client, info) == []
    (root / LEGACY_ONNX_FILE).write_bytes(b"not the exported graph")
    assert [p for p in verify(client, info) if p.startswith("served ONNX file hash")]
