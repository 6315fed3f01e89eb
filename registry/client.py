"""Connection to the MLflow tracking/registry store, with bounded retries and one-line errors.

Embedded by default (SQLite under ``VITEDIT_HOME`` plus a local artifact directory), or a real
server through ``VITEDIT_MLFLOW_TRACKING_URI``. MLflow's own HTTP defaults retry 7 times with
exponential backoff (minutes against a dead server); we bound them and check ``/health``
first, so an unreachable server fails fast, before anything is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from vitedit_ops.settings import get_settings

from .errors import RegistryError, RegistryUnavailableError

# Set only when the user has not set them: MLflow reads these on every request.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # a nightly job on a private network does not phone home
}
HEALTH_TIMEOUT_SECONDS = 5.0
# a server starting, restarting or overloaded answers these; any other status will not change
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Connection:
    """A client bound to one store; ``artifact_root`` is set for embedded stores only."""

    client: MlflowClient
    tracking_uri: str
    artifact_root: Path | None


def connect(tracking_uri: str | None = None) -> Connection:
    """A client on ``tracking_uri`` (default: the settings'); raises
    ``RegistryUnavailableError`` after bounded retries if a server does not answer."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    settings = get_settings()
    uri = tracking_uri or settings.resolved_mlflow_uri()
    artifact_root = None
    if uri.startswith(("http://", "https://")):
        wait_for_server(uri)
    else:
        artifact_root = settings.mlflow_artifact_root()
        artifact_root.mkdir(parents=True, exist_ok=True)
    # log_model() only has a fluent API, so the process-wide URIs must point here too.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return Connection(MlflowClient(tracking_uri=uri, registry_uri=uri), uri, artifact_root)


def wait_for_server(uri: str) -> None:
    """GET ``/health`` with MLflow's retry count and backoff (urllib3's ``Retry``, as MLflow's
    own HTTP client uses them); one clear error if it never answers."""
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    backoff = float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    timeout = min(HEALTH_TIMEOUT_SECONDS, float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
    retry = Retry(total=retries, backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                  allowed_methods={"GET"}, raise_on_status=False)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        attempts = retries + 1  # a connection error is retried until the budget is spent
        try:
            response = session.get(uri.rstrip("/") + "/health", timeout=timeout)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
            if response.raw.retries is not None:  # a status not worth retrying stops early
                attempts = len(response.raw.retries.history) + 1
        except requests.RequestException as exc:
            last = type(exc).__name__
    raise RegistryUnavailableError(
        f"MLflow server {uri} is unreachable after {attempts} attempts ({last}); check "
        f"VITEDIT_MLFLOW_TRACKING_URI or MLFLOW_HTTP_REQUEST_MAX_RETRIES")


def experiment_id(conn: Connection, registered_model: str) -> str:
    """The experiment holding a registered model's runs (``vitedit-<name>``), created on first
    use; embedded stores keep its artifacts under ``VITEDIT_HOME``."""
    name = f"vitedit-{registered_model}"
    with translate_errors(f"open experiment {name}"):
        found = conn.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if conn.artifact_root is not None:
            location = (conn.artifact_root / name).as_uri()
        try:
            return conn.client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # created concurrently by another process
            found = conn.client.get_experiment_by_name(name)
            if found is None:
                raise exc
            return found.experiment_id


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """MLflow and HTTP failures become one-line ``RegistryError``s naming what was tried."""
    try:
        yield
    except RegistryError:
        raise
    except (MlflowException, requests.RequestException, OSError) as exc:
        raise RegistryError(f"{action} failed: {first_line(exc)}") from exc
