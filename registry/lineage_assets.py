"""A lineage's editing assets in the registry: the mask hypernetwork and the base's held-out
preserved pool, stored once with the base version.

A hypernetwork is meta-trained for one base model and serves every descendant the nightly
edits produce, so it belongs to the lineage root, not to each version; so does the base's
held-out preserved pool (clean images whose predictions every edit must keep). Both
are logged as one MLflow run (meta-training params, final losses, the files) in the registered
model's experiment; the base version then gets two tags, the run id and the files' hash, set
last so a half-finished registration is never found. Loading follows any version to its base.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Param
from safetensors.torch import load_file, save_file

from registry import artifacts, versions
from registry.client import connect, experiment_id, translate_errors
from registry.errors import RegistryError
from registry.runs import create_run, metrics_now
from vitedit_ops.hypernet import MaskHypernet

HYPERNET_RUN = "vitedit.hypernet_run_id"
HYPERNET_SHA256 = "vitedit.hypernet_sha256"
ARTIFACT_DIR = "hypernet"
FILES = ("hypernet.json", "hypernet.safetensors")
PRESERVED_FILE = "preserved.safetensors"
LEGACY_PRESERVED_FILE = "replay.safetensors"  # its name in lineages registered earlier


@dataclass(frozen=True)
class RegisteredHypernet:
    """Where a lineage's assets are stored; ``created`` is False if they already were."""

    name: str
    base_version: str
    run_id: str
    sha256: str
    created: bool


@dataclass
class LineageAssets:
    """What the editor needs from the lineage root."""

    hypernet: MaskHypernet
    preserved: torch.Tensor | None   # pixels in [0, 1], or None when none was registered


def register_hypernet(name: str, base_version: str, directory: str | Path,
                      preserved: torch.Tensor | None = None,
                      tracking_uri: str | None = None) -> RegisteredHypernet:
    """Store the hypernetwork in ``directory`` (and the base's held-out ``preserved`` pixels,
    if any) with base version ``base_version`` of ``name``.

    Its meta-training settings (recorded in its config) become the run's params, the last
    iteration's losses its metrics. Refuses a hypernetwork trained for other weights than that
    version's. Registering the same files again returns the existing record; different files
    replace it (the tags move).
    """
    conn = connect(tracking_uri)
    client = conn.client
    base = versions.get(client, versions.check_safe(name, "registered model name"), base_version)
    if base.kind != "base" or not base.ready:
        raise RegistryError(f"{name} v{base_version} is not a usable base version "
                            f"(kind {base.kind!r}): hypernetworks belong to a lineage root")
    hypernet = MaskHypernet.load(directory)
    if hypernet.config.base_fingerprint != base.fingerprint:
        raise RegistryError(f"hypernetwork in {directory} was meta-trained for weights "
                            f"{hypernet.config.base_fingerprint[:12]}, {name} v{base_version} "
                            f"holds {base.fingerprint[:12]}")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for file in FILES:
            shutil.copy2(Path(directory) / file, staged / file)
        if preserved is not None:
            save_file({"pixels": preserved.detach().cpu().float().contiguous()},
                      str(staged / PRESERVED_FILE))
        digest = artifacts.directory_sha256(staged)
        if base.tags.get(HYPERNET_SHA256) == digest:
            return RegisteredHypernet(name, base_version, base.tags[HYPERNET_RUN], digest, False)
        run_id = create_run(conn, experiment_id(conn, name), f"meta-train-v{base_version}",
                            {versions.REGISTERED_MODEL: name, versions.KIND: "hypernet",
                             versions.BASE_VERSION: base_version,
                             versions.LINEAGE_ROOT_FINGERPRINT: base.fingerprint,
                             HYPERNET_SHA256: digest})
        training = dict(hypernet.config.training)
        final = training.pop("final", {})
        with translate_errors(f"log hypernetwork run {run_id}"):
            client.log_batch(run_id, metrics=metrics_now({k: v for k, v in final.items()
                                                           if isinstance(v, (int, float))}),
                             params=[Param(k, str(v)[:6000]) for k, v in training.items()])
            client.log_artifacts(run_id, str(staged), ARTIFACT_DIR)
            stored = {f.path: f.file_size for f in client.list_artifacts(run_id, ARTIFACT_DIR)}
            for file in staged.iterdir():
                if stored.get(f"{ARTIFACT_DIR}/{file.name}") != file.stat().st_size:
                    raise RegistryError(f"hypernetwork upload incomplete: {file.name} missing")
            client.set_tag(run_id, versions.LOGGED, "complete")
            client.set_terminated(run_id, "FINISHED")
            client.set_model_version_tag(name, base_version, HYPERNET_RUN, run_id)
            client.set_model_version_tag(name, base_version, HYPERNET_SHA256, digest)
    return RegisteredHypernet(name, base_version, run_id, digest, True)


def load_assets(info: versions.VersionInfo, tracking_uri: str | None = None) -> LineageAssets:
    """The assets of ``info``'s lineage (stored with its base version), hash-verified."""
    conn = connect(tracking_uri)
    base = versions.get(conn.client, info.name, info.base_version or info.version)
    run_id, expected = base.tags.get(HYPERNET_RUN), base.tags.get(HYPERNET_SHA256)
    if not run_id or not expected:
        raise RegistryError(f"{info.name} v{base.version} (the lineage root of v{info.version}) "
                            "has no hypernetwork: run the meta-train flow for it first")
    with tempfile.TemporaryDirectory() as tmp:
        with translate_errors(f"download the hypernetwork of {info.name} v{base.version}"):
            local = Path(conn.client.download_artifacts(run_id, ARTIFACT_DIR, tmp))
        actual = artifacts.directory_sha256(local)
        if actual != expected:
            raise RegistryError(f"hypernetwork of {info.name} v{base.version} hashes to "
                                f"{actual[:12]}, its tag says {expected[:12]}")
        stored = [local / f for f in (PRESERVED_FILE, LEGACY_PRESERVED_FILE)
                  if (local / f).is_file()]
        preserved = load_file(str(stored[0]))["pixels"] if stored else None
        return LineageAssets(MaskHypernet.load(local), preserved)
