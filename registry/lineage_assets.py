"""A lineage's editing assets in the registry: the mask hypernetwork and the base's held-out
preserved pool, and the update networks KE and MEND edit with, stored with the base version.

A hypernetwork is meta-trained for one base model and serves every descendant the nightly
edits produce, so it belongs to the lineage root, not to each version; so does the base's
held-out preserved pool (clean images whose predictions every edit must keep), and so does
an update network (one per kind). Each asset is logged as its own MLflow run (meta-training
params, final losses, the files) in the registered model's experiment; the base version then
gets tags naming the run and the files' hash, set last so a half-finished registration is
never found. An update network's two tags are also signed (``registry.signing``): anyone who
can write to the registry could otherwise swap the files and rewrite the hash next to them.
Loading follows any version to its base and checks the hash (and the signature).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Param
from safetensors.torch import load_file, save_file

from registry import artifacts, signing, versions
from registry.client import Connection, connect, experiment_id, translate_errors
from registry.errors import AssetRefusedError, MissingAssetError, RegistryError
from registry.runs import create_run, metrics_now
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.learned_update import CONFIG_FILE, WEIGHTS_FILE, UpdateNet, load_updater

HYPERNET_RUN = "vitedit.hypernet_run_id"
HYPERNET_SHA256 = "vitedit.hypernet_sha256"
ARTIFACT_DIR = "hypernet"
FILES = ("hypernet.json", "hypernet.safetensors")
PRESERVED_FILE = "preserved.safetensors"
LEGACY_PRESERVED_FILE = "replay.safetensors"  # its name in lineages registered earlier
UPDATER_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def updater_tag(kind: str, field: str) -> str:
    """Base-version tag of the ``kind`` update network: ``run_id``, ``sha256`` or
    ``signature``."""
    return f"vitedit.updater_{kind}_{field}"


@dataclass(frozen=True)
class RegisteredAsset:
    """Where a lineage asset is stored; ``created`` is False if it already was."""

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


def _usable_base(client: Any, name: str, base_version: str, what: str) -> versions.VersionInfo:
    base = versions.get(client, versions.check_safe(name, "registered model name"), base_version)
    if base.kind != "base" or not base.ready:
        raise RegistryError(f"{name} v{base_version} is not a usable base version "
                            f"(kind {base.kind!r}): {what} belong to a lineage root")
    return base


def _log_asset(conn: Connection, base: versions.VersionInfo, staged: Path, kind: str,
               artifact_dir: str, digest_tag: str, digest: str, training: dict[str, Any]
               ) -> str:
    """One finished run holding the files of ``staged`` under ``artifact_dir``, its
    meta-training settings as params and their ``final`` losses as metrics."""
    client = conn.client
    run_id = create_run(conn, experiment_id(conn, base.name), f"meta-train-v{base.version}",
                        {versions.REGISTERED_MODEL: base.name, versions.KIND: kind,
                         versions.BASE_VERSION: base.version,
                         versions.LINEAGE_ROOT_FINGERPRINT: base.fingerprint,
                         digest_tag: digest})
    training = dict(training)
    final = training.pop("final", {})
    with translate_errors(f"log {kind} run {run_id}"):
        client.log_batch(run_id, metrics=metrics_now({k: v for k, v in final.items()
                                                       if isinstance(v, (int, float))}),
                         params=[Param(k, str(v)[:6000]) for k, v in training.items()])
        client.log_artifacts(run_id, str(staged), artifact_dir)
        stored = {f.path: f.file_size for f in client.list_artifacts(run_id, artifact_dir)}
        for file in staged.iterdir():
            if stored.get(f"{artifact_dir}/{file.name}") != file.stat().st_size:
                raise RegistryError(f"{kind} upload incomplete: {file.name} missing")
        client.set_tag(run_id, versions.LOGGED, "complete")
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _download_verified(conn: Connection, base: versions.VersionInfo, run_id: str,
                       artifact_dir: str, expected: str, what: str, into: str) -> Path:
    """The asset's files, refused unless they hash to ``expected``."""
    with translate_errors(f"download the {what} of {base.name} v{base.version}"):
        local = Path(conn.client.download_artifacts(run_id, artifact_dir, into))
    actual = artifacts.directory_sha256(local)
    if actual != expected:
        raise AssetRefusedError(f"{what} of {base.name} v{base.version} hashes to "
                                f"{actual[:12]}, its tag says {expected[:12]}")
    return local


def register_hypernet(name: str, base_version: str, directory: str | Path,
                      preserved: torch.Tensor | None = None,
                      tracking_uri: str | None = None) -> RegisteredAsset:
    """Store the hypernetwork in ``directory`` (and the base's held-out ``preserved`` pixels,
    if any) with base version ``base_version`` of ``name``.

    Its meta-training settings (recorded in its config) become the run's params, the last
    iteration's losses its metrics. Refuses a hypernetwork trained for other weights than that
    version's. Registering the same files again returns the existing record; different files
    replace it (the tags move).
    """
    conn = connect(tracking_uri)
    client = conn.client
    base = _usable_base(client, name, base_version, "hypernetworks")
    hypernet = MaskHypernet.load(directory)
    _refuse_other_weights("hypernetwork", directory, hypernet.config.base_fingerprint, base)
    with tempfile.TemporaryDirectory() as tmp:
        staged = _staged(directory, FILES, tmp)
        if preserved is not None:
            save_file({"pixels": preserved.detach().cpu().float().contiguous()},
                      str(staged / PRESERVED_FILE))
        digest = artifacts.directory_sha256(staged)
        if base.tags.get(HYPERNET_SHA256) == digest:
            return RegisteredAsset(name, base_version, base.tags[HYPERNET_RUN], digest, False)
        run_id = _log_asset(conn, base, staged, "hypernet", ARTIFACT_DIR, HYPERNET_SHA256,
                            digest, hypernet.config.training)
    with translate_errors(f"tag {name} v{base_version} with its hypernetwork"):
        client.set_model_version_tag(name, base_version, HYPERNET_RUN, run_id)
        client.set_model_version_tag(name, base_version, HYPERNET_SHA256, digest)
    return RegisteredAsset(name, base_version, run_id, digest, True)


def _refuse_other_weights(what: str, directory: str | Path, fingerprint: str,
                          base: versions.VersionInfo) -> None:
    """A lineage asset is meta-trained for one base's weights; refuse it for another's."""
    if fingerprint != base.fingerprint:
        raise RegistryError(f"{what} in {directory} was meta-trained for weights "
                            f"{fingerprint[:12]}, {base.name} v{base.version} holds "
                            f"{base.fingerprint[:12]}")


def _staged(directory: str | Path, files: tuple[str, ...], tmp: str) -> Path:
    """A copy of the asset's ``files`` in ``tmp``, to hash and upload as one directory."""
    staged = Path(tmp)
    for file in files:
        shutil.copy2(Path(directory) / file, staged / file)
    return staged


def load_assets(info: versions.VersionInfo, tracking_uri: str | None = None) -> LineageAssets:
    """The assets of ``info``'s lineage (stored with its base version), hash-verified."""
    conn = connect(tracking_uri)
    base = versions.get(conn.client, info.name, info.base_version or info.version)
    run_id, expected = base.tags.get(HYPERNET_RUN), base.tags.get(HYPERNET_SHA256)
    if not run_id or not expected:
        raise RegistryError(f"{info.name} v{base.version} (the lineage root of v{info.version}) "
                            "has no hypernetwork: run the meta-train flow for it first")
    with tempfile.TemporaryDirectory() as tmp:
        local = _download_verified(conn, base, run_id, ARTIFACT_DIR, expected, "hypernetwork",
                                   tmp)
        stored = [local / f for f in (PRESERVED_FILE, LEGACY_PRESERVED_FILE)
                  if (local / f).is_file()]
        preserved = load_file(str(stored[0]))["pixels"] if stored else None
        return LineageAssets(MaskHypernet.load(local), preserved)


def register_updater(name: str, base_version: str, directory: str | Path,
                     tracking_uri: str | None = None) -> RegisteredAsset:
    """Store the update network in ``directory`` (``vitedit-ops meta-train --updater``) with
    base version ``base_version`` of ``name``, as the lineage's network of its kind, signed.

    Refuses a network meta-trained for other weights than that version's, and refuses to
    register without a signing key (the nightly would refuse the unsigned network). The same
    files again return the existing record; other files of the same kind replace it.
    """
    keys = signing.configured_keys()
    if keys.signing is None:
        raise signing.SigningKeyError(f"cannot register an update network: {signing.NO_KEY}")
    conn = connect(tracking_uri)
    client = conn.client
    base = _usable_base(client, name, base_version, "update networks")
    net = load_updater(directory)
    kind = net.kind
    _refuse_other_weights(f"{kind} update network", directory, net.config.base_fingerprint,
                          base)
    with tempfile.TemporaryDirectory() as tmp:
        staged = _staged(directory, UPDATER_FILES, tmp)
        digest = artifacts.directory_sha256(staged)
        run_id = base.tags.get(updater_tag(kind, "run_id"), "")
        if base.tags.get(updater_tag(kind, "sha256")) == digest and not _updater_problem(
                base, kind, run_id, digest, base.tags.get(updater_tag(kind, "signature"), ""),
                keys):
            return RegisteredAsset(name, base_version, run_id, digest, False)
        run_id = _log_asset(conn, base, staged, f"updater-{kind}", f"updater-{kind}",
                            updater_tag(kind, "sha256"), digest, net.config.training)
    signature = signing.sign_asset(_updater_record(base, kind, run_id, digest), keys)
    with translate_errors(f"tag {name} v{base_version} with its {kind} update network"):
        client.set_model_version_tag(name, base_version, updater_tag(kind, "run_id"), run_id)
        client.set_model_version_tag(name, base_version, updater_tag(kind, "sha256"), digest)
        client.set_model_version_tag(name, base_version, updater_tag(kind, "signature"),
                                     signature)
    return RegisteredAsset(name, base_version, run_id, digest, True)


def _updater_record(base: versions.VersionInfo, kind: str, run_id: str, digest: str
                    ) -> dict[str, str]:
    """What an update network's signature covers: which network of which base."""
    return {"name": base.name, "base_version": base.version, "asset": f"updater:{kind}",
            "base_fingerprint": base.fingerprint, "run_id": run_id, "sha256": digest}


def _updater_problem(base: versions.VersionInfo, kind: str, run_id: str, digest: str,
                     signature: str, keys: signing.Keys | None = None) -> str | None:
    return signing.check_asset(_updater_record(base, kind, run_id, digest), signature,
                               f"{kind} update network of {base.name} v{base.version}", keys)


def load_lineage_updater(info: versions.VersionInfo, kind: str,
                         tracking_uri: str | None = None) -> UpdateNet:
    """The ``kind`` update network of ``info``'s lineage (stored with its base version), once
    its tags' signature holds and its files hash to the signed value."""
    conn = connect(tracking_uri)
    base = versions.get(conn.client, info.name, info.base_version or info.version)
    run_id = base.tags.get(updater_tag(kind, "run_id"), "")
    expected = base.tags.get(updater_tag(kind, "sha256"), "")
    if not run_id or not expected:
        raise MissingAssetError(
            f"{info.name} v{base.version} (the lineage root of v{info.version}) has no "
            f"{kind.upper()} update network: meta-train one (`vitedit-ops meta-train --updater "
            f"{kind}`) and attach it (`vitedit-ops register-updater`)")
    problem = _updater_problem(base, kind, run_id, expected,
                               base.tags.get(updater_tag(kind, "signature"), ""))
    if problem:
        raise AssetRefusedError(problem)
    with tempfile.TemporaryDirectory() as tmp:
        local = _download_verified(conn, base, run_id, f"updater-{kind}", expected,
                                   f"{kind} update network", tmp)
        net = load_updater(local)
    if net.kind != kind or net.config.base_fingerprint != base.fingerprint:
        raise AssetRefusedError(f"the {kind} update network of {info.name} v{base.version} is a "
                                f"{net.kind} network for weights "
                                f"{net.config.base_fingerprint[:12]}")
    return net
