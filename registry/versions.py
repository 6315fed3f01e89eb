"""Version tags and lookups: the tags tie a registered version to its lineage, gate verdict,
patches, ONNX file and suite, so promotion can verify what it promotes.

A version is usable only with ``vitedit.status=ready``, which is set last; a version created
by a registration that died midway never carries it and is ignored by every lookup here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from .client import first_line, translate_errors
from .errors import RegistryError

KIND = "vitedit.kind"                          # base | edit
STATUS = "vitedit.status"                      # registering | ready | incomplete
BASE_VERSION = "vitedit.base_version"          # root of the lineage (register-base)
PARENT_VERSION = "vitedit.parent_version"      # the version the patches were applied to
LINEAGE_ROOT_FINGERPRINT = "vitedit.lineage_root_fingerprint"
PARENT_FINGERPRINT = "vitedit.parent_fingerprint"
FINGERPRINT = "vitedit.fingerprint"            # weights of this version
GATE = "vitedit.gate"                          # passed | failed (edits only)
FAILED_CHECKS = "vitedit.gate_failed_checks"
EDITED_GROUPS = "vitedit.edited_groups"        # "3->8,5->6" in application order
PATCH_SHA256 = "vitedit.patch_sha256"          # Patch.sha256() per patch, same order
ONNX_SHA256 = "vitedit.onnx_sha256"            # the served model.onnx file
SUITE_HASH = "vitedit.suite_hash"              # the suite the gate judged this version on
SUITE_SHA256 = "vitedit.suite_sha256"          # the suite directory stored with this version
IDEMPOTENCY_KEY = "vitedit.idempotency_key"
METHOD = "vitedit.method"
# run-only tags
REGISTERED_MODEL = "vitedit.registered_model"
ONNX_MODEL_ID = "vitedit.onnx_model_id"            # the pyfunc logged model holding model.onnx
LOGGED = "vitedit.logged"                      # "complete" once every artifact is uploaded
ERROR = "vitedit.error"
# version-only: the alias registration still has to move onto the (ready) version
PENDING_ALIAS = "vitedit.pending_alias"

READY, REGISTERING, INCOMPLETE = "ready", "registering", "incomplete"
CHAMPION, CHALLENGER = "champion", "challenger"
# Tags copied from the run to the version it registers.
VERSION_TAGS = (KIND, BASE_VERSION, PARENT_VERSION, LINEAGE_ROOT_FINGERPRINT, PARENT_FINGERPRINT,
                FINGERPRINT, GATE, FAILED_CHECKS, EDITED_GROUPS, PATCH_SHA256, ONNX_SHA256,
                SUITE_HASH, SUITE_SHA256, IDEMPOTENCY_KEY, METHOD)

_SAFE = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,250}$")


def alias_tag(alias: str, field: str) -> str:
    """Version tag recording the latest move of ``alias`` onto the version (by, at, ...)."""
    return f"vitedit.{alias}.{field}"


def check_safe(value: str, what: str) -> str:
    """Names and keys go into MLflow filter strings; refuse quotes and other specials."""
    if not _SAFE.match(value):
        raise RegistryError(f"{what} {value!r} must match {_SAFE.pattern}")
    return value


@dataclass(frozen=True)
class VersionInfo:
    """A registered version and what its tags say about it."""

    name: str
    version: str
    run_id: str
    source: str
    model_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    description: str

    @classmethod
    def of(cls, mv: ModelVersion) -> VersionInfo:
        return cls(name=mv.name, version=str(mv.version), run_id=mv.run_id or "",
                   source=mv.source, model_id=mv.model_id or _model_id(mv.source),
                   aliases=tuple(mv.aliases or ()), tags=dict(mv.tags or {}),
                   description=mv.description or "")

    @property
    def kind(self) -> str:
        return self.tags.get(KIND, "")

    @property
    def ready(self) -> bool:
        return self.tags.get(STATUS) == READY

    @property
    def fingerprint(self) -> str:
        return self.tags.get(FINGERPRINT, "")

    @property
    def base_version(self) -> str:
        return self.tags.get(BASE_VERSION, "")

    @property
    def lineage_root_fingerprint(self) -> str:
        return self.tags.get(LINEAGE_ROOT_FINGERPRINT, "")

    @property
    def suite_hash(self) -> str:
        return self.tags.get(SUITE_HASH, "")

    @property
    def suite_sha256(self) -> str:
        return self.tags.get(SUITE_SHA256, "")

    @property
    def parent_version(self) -> str:
        return self.tags.get(PARENT_VERSION, "")

    @property
    def gate_passed(self) -> bool:
        return self.tags.get(GATE) == "passed"

    @property
    def edited_groups(self) -> list[str]:
        """Keys of the groups the version's patches fixed, in application order."""
        value = self.tags.get(EDITED_GROUPS, "")
        return value.split(",") if value else []


def _model_id(source: str) -> str:
    """SQL stores do not keep a version's model id; its ``models:/m-...`` source holds it."""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else ""


def search(client: MlflowClient, filter_string: str) -> list[VersionInfo]:
    with translate_errors("search model versions"):
        return [VersionInfo.of(mv) for mv in client.search_model_versions(filter_string)]


def ready_by_key(client: MlflowClient, name: str, key: str) -> VersionInfo | None:
    """The usable version registered under an idempotency key, if any."""
    found = search(client, f"name = '{check_safe(name, 'model name')}' and "
                           f"tags.`{IDEMPOTENCY_KEY}` = '{check_safe(key, 'idempotency key')}'")
    ready = [v for v in found if v.ready]
    return min(ready, key=lambda v: int(v.version)) if ready else None


def by_run(client: MlflowClient, run_id: str) -> list[VersionInfo]:
    """Every version registered from a run (normally one), oldest first."""
    found = search(client, f"run_id = '{check_safe(run_id, 'run id')}'")
    return sorted(found, key=lambda v: (v.name, int(v.version)))


def get(client: MlflowClient, name: str, version: str) -> VersionInfo:
    with translate_errors(f"read {name} v{version}"):
        return VersionInfo.of(client.get_model_version(name, version))


def by_alias(client: MlflowClient, name: str, alias: str) -> VersionInfo | None:
    """The version holding ``alias``, or None when the alias (or the model) does not exist."""
    try:
        return VersionInfo.of(client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"read alias {name}@{alias} failed: {first_line(exc)}") from exc
