"""What the flow and serving load from the registry.

The flow edits the champion again, so it loads the full safetensors weights + timm spec
(an editable timm model, not MLflow's exported torch graph) and checks them against the
version's fingerprint tag. Serving loads the ONNX file of a version it resolved by alias, after
the same verification promotion makes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from torch import nn

from vitedit_ops.models import ModelSpec, fingerprint, load_model
from vitedit_ops.settings import get_settings

from . import artifacts, signing, versions
from .client import Connection, connect, translate_errors
from .errors import PromotionRefusedError, RegistryError
from .promotion import ONNX_FILE, verify
from .versions import CHAMPION, VersionInfo


def model_uri(name: str | None = None, alias: str = CHAMPION) -> str:
    """``models:/NAME@alias``: what ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
    take (the version's pyfunc: images in, labels out)."""
    name = versions.check_safe(name or get_settings().registered_model, "registered model name")
    return f"models:/{name}@{alias}"


def load_version(name: str, version: str,
                 tracking_uri: str | None = None) -> tuple[nn.Module, ModelSpec, VersionInfo]:
    """A version as an editable timm model (eval mode), its spec and its tags."""
    conn = connect(tracking_uri)
    info = versions.get(conn.client, versions.check_safe(name, "registered model name"), version)
    return (*_load_weights(conn, info), info)


def download_served(info: VersionInfo, dst: str | Path, tracking_uri: str | None = None,
                    alias: str = CHAMPION, not_before: int = 0
                    ) -> tuple[Path, ModelSpec, int]:
    """A version's served ONNX file and timm spec, downloaded into ``dst`` after exactly the
    checks promotion makes (ready status, signature of its record, gate verdict and report,
    patch, weights and ONNX hashes against the signed values), and only if the latest signed
    move of ``alias`` (the one it was resolved by) put it there. Raises
    ``PromotionRefusedError`` listing what failed: a version moved onto the alias outside
    vitedit-ops, or whose files or tags changed, is never served. Moves are numbered, so a
    server that already served move ``not_before`` refuses an older one put back (a signed
    move copied from the tag history replays a version someone rolled back). Returns the ONNX
    file, the spec and the number of the move that put the version there."""
    dst = Path(dst)
    client = connect(tracking_uri).client
    keys = signing.configured_keys()
    grant, problems = signing.check_alias(client, info, alias, keys)
    if grant is not None and not problems and grant.seq < not_before:
        problems = [f"@{alias} move #{grant.seq} ({grant.action} by {grant.by}) is older than "
                    f"move #{not_before} this server already served: an earlier signed move put "
                    "back by hand?"]
    if problems:  # refused before downloading anything
        raise PromotionRefusedError(f"refusing to serve {info.name} v{info.version}", problems)
    problems = verify(client, info, onnx_dir=dst / "onnx", keys=keys)
    if problems:
        raise PromotionRefusedError(f"refusing to serve {info.name} v{info.version}", problems)
    with translate_errors(f"download the spec of {info.name} v{info.version}"):
        spec_file = client.download_artifacts(info.run_id, artifacts.SPEC, str(dst))
    return dst / "onnx" / Path(ONNX_FILE).name, ModelSpec.load(spec_file), grant.seq


def _load_weights(conn: Connection, info: VersionInfo) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a version's model from its weights artifact; refuses a fingerprint mismatch,
    judged by the signed fingerprint when the version is signed (a signed version whose record
    does not verify, e.g. a tag rewritten to match swapped weights, is refused before any
    download; an unsigned one, registered without a key, by its tag)."""
    if not info.ready:
        raise RegistryError(f"{info.name} v{info.version} is not usable "
                            f"(status {info.tags.get(versions.STATUS, 'missing')})")
    expected, what = info.fingerprint, "fingerprint tag"
    if info.tags.get(signing.SIGNATURE):  # signed: judged by the signed fingerprint
        signed, problems = signing.verify_version(info)
        if problems:
            raise PromotionRefusedError(f"refusing to load {info.name} v{info.version}",
                                        problems)
        expected, what = (signed or {}).get(versions.FINGERPRINT, ""), "signed fingerprint"
    with tempfile.TemporaryDirectory() as tmp:
        with translate_errors(f"download weights of {info.name} v{info.version}"):
            local = Path(conn.client.download_artifacts(info.run_id, artifacts.WEIGHTS_DIR, tmp))
        model, spec = load_model(local / Path(artifacts.WEIGHTS).name)
    actual = fingerprint(model)
    if actual != expected:
        raise RegistryError(f"{info.name} v{info.version}: weights {actual[:12]} do not match "
                            f"the version's {what} {expected[:12]}")
    return model, spec


def download_suite(name: str | None = None, version: str | None = None,
                   dst: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """The gate suite that applies to a version (default: the champion): the one stored with
    it, else with its nearest ancestor; verified against that version's ``suite_sha256`` tag.
    Returns the local suite directory (``dst/suite``, or a new temp dir)."""
    name = versions.check_safe(name or get_settings().registered_model, "registered model name")
    conn = connect(tracking_uri)
    info = (versions.get(conn.client, name, version) if version
            else versions.by_alias(conn.client, name, CHAMPION))
    if info is None:
        raise RegistryError(f"{name} has no {CHAMPION}")
    holder = _suite_holder(conn, info)
    target = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="vitedit-suite-"))
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with translate_errors(f"download suite of {name} v{holder.version}"):
            local = Path(conn.client.download_artifacts(holder.run_id, artifacts.SUITE, tmp))
        actual = artifacts.directory_sha256(local)
        if actual != holder.suite_sha256:
            raise RegistryError(f"suite of {name} v{holder.version} hashes to {actual[:12]}, "
                                f"its tag says {holder.suite_sha256[:12]}")
        out = target / artifacts.SUITE
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(local, out)
    return out


def _suite_holder(conn: Connection, info: VersionInfo) -> VersionInfo:
    """``info`` or its nearest ancestor (following parent versions) that stores a suite."""
    seen = set()
    while not info.suite_sha256:
        if not info.parent_version or info.parent_version in seen:
            raise RegistryError(f"{info.name} v{info.version}: no suite stored in its lineage")
        seen.add(info.version)
        info = versions.get(conn.client, info.name, info.parent_version)
    return info
