"""The demo's HTTP path: ``serving.process.ServeProcess`` starts a real ``vitedit-ops serve``,
the demo's clients send a day over HTTP and post the reviewers' labels to ``/feedback``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flows.demo.serving import Request, review_over_http, serve_day_over_http
from monitoring import open_store
from monitoring.schema import Feedback
from serving.client import ServingClient
from serving.process import ServeProcess
from vitedit_ops.errors import InfrastructureError

from ..helpers.servers import wait_for
from .conftest import ROOT, photo, store_predictions, torch_probabilities

pytestmark = [pytest.mark.server("mlflow"), pytest.mark.slow]


@pytest.fixture(scope="module")
def lineage(registered):
    return registered("serve-demo-http")


def _env(home, lineage) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {"VITEDIT_HOME": str(home), "VITEDIT_MLFLOW_TRACKING_URI": lineage.tracking_uri,
            "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_a_day_goes_over_http_and_every_prediction_and_label_is_stored_once(lineage, tmp_path):
    home = tmp_path / "home"
    images = [photo(32 + i % 5, 32, seed=700 + i) for i in range(21)]
    torch_says = [int(torch_probabilities(lineage, "1", image).argmax()) for image in images]
    # every third request is one the champion gets wrong, in its own subpopulation
    day = [Request(f"demo-{i}", image, (said + 1) % 10 if i % 3 == 0 else said,
                   "shifted" if i % 3 == 0 else "clean")
           for i, (image, said) in enumerate(zip(images, torch_says))]
    progress: list[int] = []
    with ServeProcess(lineage.name, home / "serve.log", "--batch-window-ms", "20",
                      env=_env(home, lineage)) as server, ServingClient(server.url) as client:
        assert server.version == "1"
        errors, ids = serve_day_over_http(server.url, day, progress.append)
        assert errors == {"shifted": 7} and sum(progress) == len(day)
        assert sorted(ids) == sorted(r.prediction_id for r in day)
        stored = wait_for(lambda: (found := store_predictions(home)).keys() >= set(ids.values())
                          and found, 120, "the day's predictions in the store", 0.25)
        assert review_over_http(client, day, ids) == len(day)
    assert set(stored) == set(ids.values())  # each stored once, under the server's id
    store = open_store(f"sqlite:///{home / 'monitoring.db'}")
    try:
        with store.read() as conn:
            labels = dict(conn.execute(sa.select(Feedback.prediction_id,
                                                 Feedback.true_class)).tuples().all())
    finally:
        store.close()
    assert labels == {ids[r.prediction_id]: r.true_class for r in day}


def test_a_server_that_cannot_start_fails_in_one_line(lineage, tmp_path):
    home = tmp_path / "home"
    server = ServeProcess(lineage.name, home / "serve.log", "--max-batch", "0",
                          env=_env(home, lineage))
    with pytest.raises(InfrastructureError, match=r"vitedit-ops serve exited \(2\) before "
                                                  r"serving serve-demo-http: .*\(log: "):
        server.start(timeout=300)
