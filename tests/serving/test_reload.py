"""Following the champion alias: a real server polls a real ``mlflow server``, swaps to each
verified new champion under load without failing a request, and refuses a tampered one."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import requests
from mlflow import MlflowClient

from registry import versions
from registry.promotion import ONNX_FILE, promote

from ..helpers.servers import wait_for
from .conftest import photo, torch_probabilities, wait_stored

pytestmark = [pytest.mark.server("mlflow"), pytest.mark.slow]


def test_alias_moves_are_followed_under_load_and_no_request_fails(registered, serve):
    lineage = registered("serve-reload")
    server = serve(lineage.name, lineage.tracking_uri, "--batch-window-ms", "10")
    stop = threading.Event()
    seen: dict[int, list[requests.Response]] = {c: [] for c in range(6)}

    def client(c: int) -> None:
        r, last = 0, False
        while not last or r < 3:
            # a request sent after v3 was seen ready ends the client, so its last answer is
            # v3's (one sent just before the swap may still come back from v2)
            last = stop.is_set()
            seen[c].append(server.predict((f"{c}-{r}.png", photo(32, 32, seed=100 * c + r)),
                                          (f"{c}-{r}b.png", photo(40, 30, seed=100 * c + r))))
            r += 1
    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for thread in threads:
        thread.start()
    try:
        for version in ("2", "3"):
            promote(lineage.runs[version], user="ci", reason="reload test",
                    tracking_uri=lineage.tracking_uri)
            wait_for(lambda: server.ready_version() == version, 120, f"v{version} served", 0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    responses = [r for c in seen.values() for r in c]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses
                                                           if r.status_code != 200][:3]
    for client_responses in seen.values():  # a client never goes back to an older version
        versions = [int(r.json()["version"]) for r in client_responses]
        assert versions == sorted(versions) and versions[-1] == 3
    answers = [(a, r.json()["version"]) for r in responses for a in r.json()["predictions"]]
    assert all(a["version"] == version for a, version in answers)  # one version per request
    assert {version for _, version in answers} >= {"1", "3"}
    ids = {a["prediction_id"]: version for a, version in answers}
    stored = wait_stored(server, set(ids))
    assert {pid: stored[pid][0] for pid in ids} == ids
    assert server.metric("vitedit_serve_champion_loads_total", outcome="loaded") == 3

    image = photo(48, 48, seed=5)
    served = server.predict(("raw", image)).json()["predictions"][0]["top_k"]
    new, old = (torch_probabilities(lineage, v, image) for v in ("3", "1"))
    assert (new - old).abs().max() > 1e-4  # the versions really answer differently
    for entry in served:
        assert entry["probability"] == pytest.approx(float(new[entry["class"]]), abs=1e-5)


def _onnx_file(client: MlflowClient, name: str, version: str) -> Path:
    """The ONNX file of a version in the test server's (local) artifact store."""
    model_id = versions.get(client, name, version).model_id
    location = client.get_logged_model(model_id).artifact_location
    assert location.startswith("file:"), location
    return Path(unquote(urlparse(location).path)) / ONNX_FILE


def test_not_ready_without_a_champion_and_a_tampered_champion_is_refused(
        registered, serve, mlflow_server_process):
    name = "serve-tamper"
    server = serve(name, mlflow_server_process.url, ready=False)
    wait_for(server.up, 180, "/healthz", 0.5)
    assert requests.get(server.url + "/readyz", timeout=30).status_code == 503
    assert server.predict(("raw", photo(32, 32, seed=1))).status_code == 503

    lineage = registered(name)  # the base becomes champion: the next poll serves it
    wait_for(lambda: server.ready_version() == "1", 120, "v1 served", 0.2)

    def refusals() -> float:
        return server.metric("vitedit_serve_champion_loads_total", outcome="refused")
    # registration marks a version ready before moving its alias: polling all along, the
    # server never found the alias on a version it had to refuse
    assert refusals() == 0
    before = refusals()
    client = MlflowClient(lineage.tracking_uri)
    _onnx_file(client, name, "2").write_bytes(_onnx_file(client, name, "1").read_bytes())
    # a signed move past the checks (forced): serving still verifies the files itself
    promote(lineage.runs["2"], force=True, reason="tamper trial", user="ci",
            tracking_uri=lineage.tracking_uri)
    wait_for(lambda: refusals() > before, 120, "v2 refused", 0.2)
    assert server.ready_version() == "1"
    answer = server.predict(("raw", photo(32, 32, seed=2)))
    assert answer.status_code == 200 and answer.json()["version"] == "1"
    log = server.log_path.read_text()
    assert "champion v2 refused, v1 keeps serving" in log and "served ONNX file hash" in log

    promote(lineage.runs["3"], user="ci", reason="after the tampered v2",
            tracking_uri=lineage.tracking_uri)
    wait_for(lambda: server.ready_version() == "3", 120, "v3 served", 0.2)
    assert refusals() == before + 1  # refused once, not downloaded again every poll
