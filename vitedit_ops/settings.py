"""One settings object for every part of vitedit-ops.

Read from ``VITEDIT_*`` environment variables (and an optional ``vitedit.toml``/``.env``),
so a CLI flag, a Prefect job variable and a test fixture all configure the same thing.
Everything embedded by default lives under ``VITEDIT_HOME``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_cache_dir("vitedit-ops"))


class Settings(BaseSettings):
    """Where things live and which defaults apply; every field maps to ``VITEDIT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="VITEDIT_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Root of embedded state.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")
    store_url: str | None = Field(None, description="SQLAlchemy URL of the monitoring store.")
    image_store_url: str | None = Field(None, description="fsspec URL of the image store.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking/registry URI.")
    mlflow_ui_url: str | None = Field(None, description="Where people open the MLflow UI "
                                      "(links in reports); default: the tracking server, or "
                                      "http://127.0.0.1:5000 for an embedded store.")
    registered_model: str = Field("vitedit-reference", description="Registered model name.")
    serve_poll_interval: float = Field(30.0, gt=0, description="Seconds between two looks "
                                       "of `vitedit-ops serve` at the champion alias.")
    serve_max_batch: int = Field(32, ge=1, description="Most images one onnxruntime call of "
                                 "`vitedit-ops serve` takes.")
    serve_batch_window_ms: float = Field(5.0, ge=0, description="How long `vitedit-ops serve` "
                                         "waits for more requests to join a batch.")
    serve_webhook_secret: SecretStr | None = Field(
        None, description="Secret of the MLflow registry webhook `vitedit-ops serve` accepts "
        "at POST /webhooks/mlflow (HMAC-checked); unset: no webhook, polling only.")
    signing_key_file: Path | None = Field(
        None, description="File (mode 0600) holding the key that signs registered versions and "
        "champion moves (HMAC-SHA256); keep it off the MLflow server. See docs/operations.md.")
    signing_key: SecretStr | None = Field(
        None, description="The signing key itself, for secret stores that inject environment "
        "variables; set this or signing_key_file, not both.")
    signing_old_key_files: list[Path] = Field(
        default_factory=list, description="Retired signing keys, JSON list of files: they still "
        "verify what they signed, never sign (key rotation).")
    seed: int = 0
    nightly_timeout_hours: float = Field(
        6.0, gt=0, description="A nightly run taking longer fails (flow timeout); MLflow edit "
        "runs RUNNING longer than this are orphans of a dead night and marked FAILED.")
    task_timeout_hours: float = Field(
        2.0, gt=0, description="Timeout of each task of the nightly flow (collect, edit, "
        "gate, register, ...).")
    edit_slot_timeout_minutes: float = Field(
        60.0, gt=0, description="How long an edit task of the nightly flow waits for a slot of "
        "the edit concurrency limit; then that unit fails with one line naming the limit, and "
        "the night goes on without it.")

    @cached_property
    def reference_dir(self) -> Path:
        return self.home / "reference"

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'monitoring.db'}"

    def resolved_image_store_url(self) -> str:
        return self.image_store_url or str(self.home / "images")

    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    def resolved_mlflow_ui_url(self) -> str:
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        uri = self.resolved_mlflow_uri()
        return uri.rstrip("/") if uri.startswith(("http://", "https://")) \
            else "http://127.0.0.1:5000"

    def mlflow_artifact_root(self) -> Path:
        return self.home / "mlartifacts"


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; tests change the env freely)."""
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


# the stores that live under VITEDIT_HOME unless configured elsewhere
EMBEDDED_STORE_VARIABLES = ("VITEDIT_MLFLOW_TRACKING_URI", "VITEDIT_STORE_URL",
                            "VITEDIT_IMAGE_STORE_URL")


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (a string) or unset (None) environment variables for the duration, then put back
    exactly what was there; settings are read at use, so this reconfigures vitedit-ops."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def embedded_home(path: Path, *also_unset: str) -> AbstractContextManager[None]:
    """Every embedded store under ``path`` for the duration (VITEDIT_HOME), and none of the
    ones configured elsewhere (nor ``also_unset``)."""
    return environment({"VITEDIT_HOME": str(path),
                        **dict.fromkeys((*EMBEDDED_STORE_VARIABLES, *also_unset))})
