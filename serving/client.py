"""A client of ``vitedit-ops serve``: what the demo and the serving benchmark send over HTTP.

One keep-alive session per client (a thread shares nothing with another): ``predict`` posts
a multipart form of images and returns the server's answer, ``feedback`` posts reviewers'
labels, ``ready_version`` reads ``/readyz``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import requests

from vitedit_ops.errors import InfrastructureError


class ServingClient:
    """HTTP calls to one server at ``url`` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.post(self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise InfrastructureError(f"serving {self.url}{path}: {exc}") from exc
        if response.status_code >= 500:
            raise InfrastructureError(f"serving {self.url}{path} answered "
                                      f"{response.status_code}: {response.text[:300]}")
        return response.json()

    def predict(self, images: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """The answer to one request of ``(name, bytes)`` images: ``version`` and one entry
        per image (``prediction_id``, ``predicted_class``, ``top_k``, or ``error``)."""
        files = [("images", (name, data, "application/octet-stream")) for name, data in images]
        return self._post("/predict", files=files)

    def feedback(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Reviewers' labels (``prediction_id``, ``true_class``, ``source``); the server's
        ingest report (accepted, duplicates, quarantined, pending)."""
        return self._post("/feedback", json=list(items))

    def ready_version(self) -> str | None:
        """The champion version being served, or None (not up, or no champion yet)."""
        try:
            response = self.session.get(self.url + "/readyz", timeout=10)
        except requests.RequestException:
            return None
        return response.json().get("version") if response.status_code == 200 else None
