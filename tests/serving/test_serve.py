"""``vitedit-ops serve`` as a client sees it: a real server process on loopback serving a
lineage registered on a real ``mlflow server``, its monitoring store on disk."""

from __future__ import annotations

import hashlib

import pytest
import requests
import torch

from .conftest import (
    CLASS_NAMES,
    hammer,
    photo,
    png,
    store_predictions,
    torch_probabilities,
    wait_stored,
)

pytestmark = [pytest.mark.server("mlflow"), pytest.mark.slow]


@pytest.fixture(scope="module")
def lineage(registered):
    return registered("serve-predict")


@pytest.fixture
def server(serve, lineage):
    return serve(lineage.name, lineage.tracking_uri, "--batch-window-ms", "40",
                 "--max-batch", "16")


def test_ready_only_with_the_verified_champion(server):
    ready = requests.get(server.url + "/readyz", timeout=30).json()
    assert ready["ready"] is True and ready["version"] == "1"
    assert ready["provider"] == "CPUExecutionProvider"
    assert requests.get(server.url + "/healthz", timeout=30).json() == {"status": "ok"}


def test_one_raw_image_is_answered_with_labels_and_the_torch_models_probabilities(
        server, lineage):
    image = photo(96, 64, seed=1)  # not at the input size: resized and center-cropped
    response = server.predict(("raw", image))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (lineage.name, "1")
    [answer] = body["predictions"]
    expected = torch_probabilities(lineage, "1", image)
    assert len(answer["top_k"]) == 3
    for entry in answer["top_k"]:
        assert entry["label"] == CLASS_NAMES[entry["class"]]
        assert entry["probability"] == pytest.approx(float(expected[entry["class"]]), abs=1e-5)
    assert answer["predicted_class"] == int(expected.argmax())
    assert answer["logged"] is True


def test_several_images_with_a_corrupt_one_answer_the_others(server, lineage):
    images = [("a.png", png(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)))),
              ("broken.png", b"\x89PNG\r\n\x1a\n not really"),
              ("c.png", photo(40, 50, seed=3))]
    response = server.predict(*images)
    assert response.status_code == 200, response.text
    a, broken, c = response.json()["predictions"]
    assert "not a readable image" in broken["error"] and "prediction_id" not in broken
    for answer, (_, data) in ((a, images[0]), (c, images[2])):
        expected = torch_probabilities(lineage, "1", data)
        assert answer["predicted_class"] == int(expected.argmax())
        assert answer["top_k"][0]["probability"] == pytest.approx(float(expected.max()),
                                                                  abs=1e-5)
    only_broken = server.predict(("raw", b"GIF89a broken"))
    assert only_broken.status_code == 422
    assert "error" in only_broken.json()["predictions"][0]
    assert server.predict(("raw", b"")).status_code == 400


def test_concurrent_clients_are_batched_and_every_prediction_is_stored_once(server):
    """16 clients x 12 requests of 2 images each: onnxruntime calls of more than one request
    show in the batch-size histogram, and every answered image is in the store exactly once,
    with its image bytes."""
    def images(client: int, request: int) -> list[tuple[str, bytes]]:
        return [(f"{client}-{request}-{i}.png", photo(32, 32, seed=1000 * client + 10 * request
                                                        + i)) for i in range(2)]
    responses = hammer(server, clients=16, requests_each=12, images=images)
    assert all(r.status_code == 200 for r in responses)
    answers = [a for r in responses for a in r.json()["predictions"]]
    ids = [a["prediction_id"] for a in answers]
    assert len(ids) == len(set(ids)) == 16 * 12 * 2

    batches = server.metric("vitedit_serve_batch_size_count")
    assert server.metric("vitedit_serve_batch_size_sum") == len(ids)
    assert server.metric("vitedit_serve_batch_size_bucket", le="2.0") < batches  # > 1 request

    stored = wait_stored(server, set(ids))
    sent = {f"{c}-{r}-{i}.png": hashlib.sha256(photo(32, 32, seed=1000 * c + 10 * r + i))
            .hexdigest() for c in range(16) for r in range(12) for i in range(2)}
    names = {a["prediction_id"]: a["name"] for a in answers}
    assert {pid: stored[pid] for pid in ids} == {pid: ("1", sent[names[pid]]) for pid in ids}
    assert server.metric("vitedit_serve_logger_records_total", outcome="dropped") == 0
    assert server.metric("vitedit_serve_logger_records_total", outcome="accepted") >= len(ids)


def test_feedback_reaches_the_store(server):
    answer = server.predict(("raw", photo(32, 32, seed=7))).json()["predictions"][0]
    response = requests.post(server.url + "/feedback", timeout=30, json={
        "prediction_id": answer["prediction_id"], "true_class": 4, "source": "reviewer"})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    refused = requests.post(server.url + "/feedback", timeout=30,
                            json=[{"prediction_id": answer["prediction_id"], "true_class": -1}])
    assert refused.status_code == 422 and refused.json()["quarantined"] == 1
    assert requests.post(server.url + "/feedback", data=b"{not json", timeout=30,
                         headers={"Content-Type": "application/json"}).status_code == 400

    import sqlalchemy as sa

    from monitoring import open_store
    from monitoring.schema import Feedback

    store = open_store(f"sqlite:///{server.root / 'monitoring.db'}")
    try:
        with store.read() as conn:
            rows = conn.execute(sa.select(Feedback.prediction_id, Feedback.true_class,
                                          Feedback.source)).all()
    finally:
        store.close()
    assert [tuple(r) for r in rows] == [(answer["prediction_id"], 4, "reviewer")]


def test_the_demos_in_process_server_loads_the_same_verified_champion(lineage, tmp_path):
    """``flows.demo.serving`` (the demo and the continual benchmark) on the serving code."""
    from datetime import UTC, datetime, timedelta

    from flows.demo.serving import ChampionServer, Request, serve_day
    from monitoring import PredictionLogger, open_image_store, open_store

    server = ChampionServer(lineage.name, lineage.tracking_uri)
    assert (server.name, server.version, server.provider) == (lineage.name, "1",
                                                              "CPUExecutionProvider")
    images = [photo(32, 32, seed=s) for s in range(5)]
    classes, probs = server.predict(images)
    for image, top, p in zip(images, classes, probs):
        expected = torch_probabilities(lineage, "1", image)
        assert top.tolist() == expected.topk(3).indices.tolist()
        assert p.tolist() == pytest.approx(expected.topk(3).values.tolist(), abs=1e-5)
    requests_ = [Request(f"demo-{i}", image, int(classes[i, 0]), "clean")
                 for i, image in enumerate(images)]
    yesterday = datetime.now(UTC) - timedelta(days=1)  # serve_day spreads them over a day
    store = open_store(f"sqlite:///{tmp_path / 'monitoring.db'}")
    store.register_model(lineage.name, 10, CLASS_NAMES)  # as the demo does
    try:
        with PredictionLogger(store, open_image_store(str(tmp_path / "images"))) as logger:
            assert serve_day(server, logger, requests_, yesterday, lambda n: None) == {}
        assert store.counts()["predictions"] == 5
    finally:
        store.close()


def test_a_clean_stop_writes_every_prediction_still_queued(serve, lineage):
    """SIGTERM right after the last answer: the logger's queue is written before the process
    exits, so the store holds every prediction without waiting for a flush."""
    server = serve(lineage.name, lineage.tracking_uri)
    responses = hammer(server, clients=4, requests_each=5, images=lambda c, r: [
        (f"{c}-{r}-{i}.png", photo(32, 32, seed=500 + 100 * c + 10 * r + i)) for i in range(2)])
    ids = {a["prediction_id"] for r in responses for a in r.json()["predictions"]}
    assert len(ids) == 40
    server.stop()  # SIGTERM; SIGKILL only if it lingers 10 s
    assert "Application shutdown complete" in server.log_path.read_text()
    assert ids <= set(store_predictions(server.root))
