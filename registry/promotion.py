"""Moving aliases safely: promote a verified version, roll back, and keep a timeline.

Every move of an alias is recorded twice: as tags on the version it lands on (who, when,
previous holder, forced, reason: what a reviewer sees on the version page) and as one
append-only event tag on the registered model, from which ``history`` and ``rollback`` work
(version tags are overwritten when a version becomes champion a second time).
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vitedit_ops.errors import VitEditError
from vitedit_ops.export import file_sha256
from vitedit_ops.gate.report import GateReport
from vitedit_ops.models import fingerprint_state, read_state_dict
from vitedit_ops.scoped import load_patch

from . import artifacts, signing, versions
from .client import Connection, connect, first_line, translate_errors
from .errors import PromotionRefusedError, RegistryError
from .versions import CHALLENGER, CHAMPION, VersionInfo

REGISTER_BASE, PROMOTE, ROLLBACK = "register-base", "promote", "rollback"
ONNX_FILE = "artifacts/model.onnx"  # in the version's (pyfunc) logged model
LEGACY_ONNX_FILE = "model.onnx"  # in the ONNX-flavor logged model of older versions


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias onto a version."""

    seq: int
    alias: str
    action: str
    version: str
    previous: str
    by: str
    at: str
    forced: bool = False
    reason: str = ""
    overridden: str = ""  # what --force overrode (gate verdict, hash mismatches)


def current_user() -> str:
    """``VITEDIT_USER`` (set by automation) or the login name."""
    return os.environ.get("VITEDIT_USER") or getpass.getuser()


def _event_prefix(alias: str) -> str:
    return f"vitedit.{alias}.event."


def events(client: MlflowClient, name: str, alias: str = CHAMPION) -> list[AliasEvent]:
    """The alias's timeline, oldest first."""
    with translate_errors(f"read registered model {name}"):
        tags = client.get_registered_model(name).tags
    prefix = _event_prefix(alias)
    out = [AliasEvent(seq=int(key.removeprefix(prefix)), alias=alias, **json.loads(value))
           for key, value in tags.items() if key.startswith(prefix)]
    return sorted(out, key=lambda e: e.seq)


def move_alias(client: MlflowClient, name: str, alias: str, version: str, action: str, *,
               forced: bool = False, reason: str = "", overridden: str = "",
               user: str | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` and record the move (version tags + timeline event)."""
    previous = versions.by_alias(client, name, alias)
    timeline = events(client, name, alias)
    event = AliasEvent(seq=(timeline[-1].seq + 1) if timeline else 1, alias=alias,
                       action=action, version=version,
                       previous=previous.version if previous else "", by=user or current_user(),
                       at=datetime.now(UTC).isoformat(timespec="seconds"), forced=forced,
                       reason=reason, overridden=overridden)
    with translate_errors(f"move {name}@{alias} to v{version}"):
        # the version's tags and the signed move first, the alias last: whoever sees the alias
        # on the version (serving, a webhook) sees it complete and vouched for
        for field in ("action", "by", "at", "previous", "forced", "reason", "overridden"):
            client.set_model_version_tag(name, version, versions.alias_tag(alias, field),
                                         str(getattr(event, field)).lower()
                                         if field == "forced" else str(getattr(event, field)))
        signing.sign_grant(client, name, signing.Grant(alias, version, event.seq, action,
                                                       event.by, event.at))
        client.set_registered_model_alias(name, alias, version)
        body = {k: v for k, v in asdict(event).items() if k not in ("seq", "alias")}
        client.set_registered_model_tag(name, f"{_event_prefix(alias)}{event.seq:06d}",
                                        json.dumps(body, sort_keys=True))
        if alias == CHAMPION:
            challenger = versions.by_alias(client, name, CHALLENGER)
            if challenger is not None and challenger.version == version:
                client.delete_registered_model_alias(name, CHALLENGER)
    return event


def verify(client: MlflowClient, info: VersionInfo, onnx_dir: Path | None = None,
           keys: signing.Keys | None = None) -> list[str]:
    """Why ``info`` must not be promoted: status, the signature of its record (no tag
    rewritten since registration), gate verdict, and artifacts re-hashed against the signed
    values (against the tags when the signature does not hold). Empty when it is fine.

    With ``onnx_dir`` the served ONNX file is downloaded there (``onnx_dir/model.onnx``) and
    kept, so serving loads exactly the file whose hash was checked.
    """
    problems = []
    if not info.ready:
        problems.append(f"status is {info.tags.get(versions.STATUS, 'missing')}, not ready")
    signed, signature_problems = signing.verify_version(info, keys)
    problems += signature_problems
    if signed is not None:  # judge the files by what was signed, not by what the tags say now
        info = replace(info, tags={**{k: v for k, v in info.tags.items()
                                      if k not in versions.VERSION_TAGS}, **signed})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if info.kind == "edit":
            problems += _verify_edit(client, info, root)
        elif info.kind != "base":
            problems.append(f"not a vitedit version (kind {info.kind!r})")
        problems += _check(f"weights {artifacts.WEIGHTS}", lambda: _weights_fingerprint(
            client, info, root), info.fingerprint)
        problems += _check("served ONNX file", lambda: _onnx_sha256(
            client, info, onnx_dir or root / "onnx"), info.tags.get(versions.ONNX_SHA256, ""))
    return problems


def _verify_edit(client: MlflowClient, info: VersionInfo, root: Path) -> list[str]:
    problems = []
    if not info.gate_passed:
        failed = info.tags.get(versions.FAILED_CHECKS, "")
        problems.append(f"gate {info.tags.get(versions.GATE, 'missing')}"
                        + (f" ({failed})" if failed else ""))
    problems += _check("patch sha256 list", lambda: ",".join(_patch_hashes(client, info, root)),
                       info.tags.get(versions.PATCH_SHA256, ""))
    try:
        path = client.download_artifacts(info.run_id, artifacts.GATE_JSON, str(root))
        report = GateReport.from_json(Path(path).read_text())
    except (MlflowException, VitEditError, OSError, ValueError, KeyError, TypeError) as exc:
        return problems + [f"gate report unreadable: {first_line(exc)}"]
    if info.gate_passed and not report.passed:
        problems.append("gate report says FAILED although the tag says passed")
    if report.candidate_fingerprint != info.fingerprint:
        problems.append(f"gate report judged weights {report.candidate_fingerprint[:12]}, "
                        f"version holds {info.fingerprint[:12]}")
    return problems


def _check(what: str, compute, expected: str) -> list[str]:
    if not expected:
        return [f"{what}: no hash tag to verify against"]
    try:
        actual = compute()
    except (MlflowException, VitEditError, OSError, ValueError) as exc:
        return [f"{what}: cannot be read ({first_line(exc)})"]
    if actual != expected:
        return [f"{what} hash {actual[:12]} does not match tag {expected[:12]}"]
    return []


def _patch_hashes(client: MlflowClient, info: VersionInfo, root: Path) -> list[str]:
    local = Path(client.download_artifacts(info.run_id, artifacts.PATCHES, str(root)))
    return [load_patch(p).sha256() for p in sorted(local.glob("*.safetensors"))]


def _weights_fingerprint(client: MlflowClient, info: VersionInfo, root: Path) -> str:
    path = client.download_artifacts(info.run_id, artifacts.WEIGHTS, str(root))
    return fingerprint_state(read_state_dict(path))


def _onnx_sha256(client: MlflowClient, info: VersionInfo, dst: Path) -> str:
    """Hash of the version's served ONNX file, downloaded to ``dst/model.onnx``: in the
    pyfunc logged model, or at the root of the ONNX-flavor model of versions registered
    before the pyfunc (``LEGACY_ONNX_FILE``)."""
    location = client.get_logged_model(info.model_id).artifact_location.rstrip("/")
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{ONNX_FILE}",
                                                   dst_path=str(dst))
    except (MlflowException, OSError):
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{LEGACY_ONNX_FILE}", dst_path=str(dst))
    return file_sha256(path)


def promote(run_id: str, alias: str = CHAMPION, *, force: bool = False, reason: str = "",
            user: str | None = None, tracking_uri: str | None = None) -> AliasEvent | None:
    """Move ``alias`` to the version registered from ``run_id`` after verifying it.

    Raises ``RegistryError`` for bad input (unknown run, no usable version, ``force`` without
    a reason) and ``PromotionRefusedError`` when verification fails and ``force`` is off.
    Returns None when the version already holds the alias.
    """
    if force and not reason.strip():
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    conn = connect(tracking_uri)
    client = conn.client
    versions.check_safe(run_id, "run id")
    with translate_errors(f"find run {run_id}"):
        client.get_run(run_id)
    info = _version_of_run(conn, run_id)
    problems = verify(client, info)
    if problems and not force:
        raise PromotionRefusedError(
            f"refusing to move {info.name}@{alias} to v{info.version} (run {run_id})", problems)
    current = versions.by_alias(client, info.name, alias)
    if current is not None and current.version == info.version and not _needs_grant(
            client, current, alias):
        return None
    return move_alias(client, info.name, alias, info.version, PROMOTE, forced=bool(problems),
                      reason=reason.strip(), overridden="; ".join(problems), user=user)


def _needs_grant(client: MlflowClient, current: VersionInfo, alias: str) -> bool:
    """The version holds the alias but no signed move says vitedit-ops put it there (it was
    moved by hand): promoting it records and signs the move, so serving accepts it."""
    keys = signing.configured_keys()
    return keys.signing is not None and bool(signing.check_alias(client, current, alias,
                                                                 keys)[1])


def _version_of_run(conn: Connection, run_id: str) -> VersionInfo:
    found = versions.by_run(conn.client, run_id)
    if not found:
        raise RegistryError(f"run {run_id} has no registered model version")
    ready = [v for v in found if v.ready]
    if not ready:
        states = ", ".join(f"v{v.version} {v.tags.get(versions.STATUS, 'untagged')}"
                           for v in found)
        raise RegistryError(f"run {run_id} has no usable version ({states}): its registration "
                            f"did not finish; register the run again")
    return ready[-1]


def champion_stack(timeline: list[AliasEvent]) -> list[str]:
    """Replay the timeline: promotions push a version, rollbacks pop one."""
    stack: list[str] = []
    for event in timeline:
        if event.action == ROLLBACK:
            if stack:
                stack.pop()
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def rollback(name: str, alias: str = CHAMPION, *, reason: str = "", user: str | None = None,
             tracking_uri: str | None = None) -> AliasEvent:
    """Move ``alias`` back to the version that held it before the current one."""
    conn = connect(tracking_uri)
    client = conn.client
    current = versions.by_alias(client, versions.check_safe(name, "model name"), alias)
    if current is None:
        raise RegistryError(f"{name} has no {alias} to roll back")
    stack = champion_stack(events(client, name, alias))
    if not stack or stack[-1] != current.version:
        raise RegistryError(
            f"{name}@{alias} is v{current.version} but the recorded timeline ends at "
            f"v{stack[-1] if stack else '-'}: it was moved outside vitedit-ops; use promote")
    if len(stack) < 2:
        raise RegistryError(f"{name}@{alias} v{current.version} has no previous {alias}")
    target = versions.get(client, name, stack[-2])
    if not target.ready:
        raise RegistryError(f"previous {alias} v{target.version} is not usable "
                            f"(status {target.tags.get(versions.STATUS)})")
    return move_alias(client, name, alias, target.version, ROLLBACK, reason=reason.strip(),
                      user=user)


def history(name: str, alias: str = CHAMPION,
            tracking_uri: str | None = None) -> list[AliasEvent]:
    """Every recorded move of ``alias`` for ``name``, oldest first."""
    conn = connect(tracking_uri)
    return events(conn.client, versions.check_safe(name, "model name"), alias)
