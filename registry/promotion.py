"""Moving aliases safely: promote a verified version, roll back, and keep a timeline.

Every move of an alias is recorded in the audit trail the caller hands over (the monitoring
store's append-only table: ``vitedit_ops.audit.AuditTrail``), and mirrored for display in
MLflow: tags on the version it lands on (who, when, previous holder, forced, reason: what a
reviewer sees on the version page) and one event tag on the registered model. Those tags are
editable by anyone who may edit the model, so ``history`` flags where they disagree with the
audit, and ``rollback`` replays the audit when there is one. The mover is the user the
tracking server authenticated, who needs MANAGE on the model (``identity``).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vitedit_ops.audit import AliasEvent, AuditTrail, disagreements
from vitedit_ops.errors import VitEditError
from vitedit_ops.export import file_sha256
from vitedit_ops.gate.report import GateReport
from vitedit_ops.models import fingerprint_state, read_state_dict
from vitedit_ops.scoped import load_patch

from . import artifacts, signing, versions
from .client import Connection, connect, first_line, translate_errors
from .errors import PromotionRefusedError, RegistryError
from .identity import declared_user, identify, require_manage
from .versions import CHALLENGER, CHAMPION, VersionInfo

REGISTER_BASE, PROMOTE, ROLLBACK = "register-base", "promote", "rollback"
ONNX_FILE = "artifacts/model.onnx"  # in the version's (pyfunc) logged model
LEGACY_ONNX_FILE = "model.onnx"  # in the ONNX-flavor logged model of older versions
MIRRORED = ("action", "by", "at", "previous", "forced", "reason", "overridden",
            "authenticated")


def current_user() -> str:
    """The name recorded where no server authenticates: ``VITEDIT_USER`` or the login."""
    return declared_user()


def _event_prefix(alias: str) -> str:
    return f"vitedit.{alias}.event."


def events(client: MlflowClient, name: str, alias: str = CHAMPION) -> list[AliasEvent]:
    """The alias's timeline, oldest first."""
    with translate_errors(f"read registered model {name}"):
        tags = client.get_registered_model(name).tags
    prefix = _event_prefix(alias)
    out = [_mirrored_event(int(key.removeprefix(prefix)), alias, value)
           for key, value in tags.items()
           if key.startswith(prefix) and key.removeprefix(prefix).isdigit()]
    return sorted(out, key=lambda e: e.seq)


def _mirrored_event(seq: int, alias: str, value: str) -> AliasEvent:
    """One mirror tag as an event; anyone may have written it, so what does not parse is
    shown as such (and disagrees with the audit) instead of failing the timeline."""
    known = set(AliasEvent.__dataclass_fields__) - {"seq", "alias"}
    try:
        body = json.loads(value)
        return AliasEvent(seq=seq, alias=alias, **{k: v for k, v in body.items() if k in known})
    except (ValueError, TypeError, AttributeError):
        return AliasEvent(seq=seq, alias=alias, action="unreadable", version="", previous="",
                          by="", at="", reason=value[:200])


def move_alias(conn: Connection, name: str, alias: str, version: str, action: str, *,
               forced: bool = False, reason: str = "", overridden: str = "",
               user: str | None = None, audit: AuditTrail | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` and record the move: in ``audit`` (committed only if
    the move completes) and in the MLflow mirror (version tags + timeline event).

    The mover is the authenticated user, who needs MANAGE on ``name`` (``PermissionRefused``
    otherwise); ``user`` names the mover only where the server authenticates no one.
    """
    client = conn.client
    who = identify(conn, user)
    require_manage(conn, name, who, f"move the {alias} alias of")
    previous = versions.by_alias(client, name, alias)
    # numbered after the audit's last move and the latest signed move; the MLflow mirror,
    # which anyone with EDIT on the model may write, only while the audit holds no move (moves
    # made before it existed): a forged event numbered beyond the audit's integer column
    # must not make every later move fail
    recorded = audit.events(name, alias) if audit is not None else []
    last = [e.seq for e in (recorded or events(client, name, alias))[-1:]]
    grant, _ = signing.read_grant(client, name, alias)
    if grant is not None:
        last.append(grant.seq)
    event = AliasEvent(seq=max(last, default=0) + 1, alias=alias, action=action,
                       version=version, previous=previous.version if previous else "",
                       by=who.name, at=datetime.now(UTC).isoformat(timespec="seconds"),
                       forced=forced, reason=reason, overridden=overridden,
                       authenticated=who.authenticated)
    with audit.recording(name, event) if audit is not None else nullcontext():
        _move_and_mirror(client, name, event, previous)
    return event


def _move_and_mirror(client: MlflowClient, name: str, event: AliasEvent,
                     previous: VersionInfo | None) -> None:
    """Move the alias and write the mirror; if the mirror fails, the alias goes back where it
    was (best effort), so no move stands that the audit does not record."""
    alias, version = event.alias, event.version
    with translate_errors(f"move {name}@{alias} to v{version}"):
        # the version's tags and the signed move first, the alias last: whoever sees the alias
        # on the version (serving, a webhook) sees it complete and vouched for
        for key in MIRRORED:
            value = getattr(event, key)
            client.set_model_version_tag(name, version, versions.alias_tag(alias, key),
                                         str(value).lower() if isinstance(value, bool)
                                         else str(value))
        grant = client.get_registered_model(name).tags.get(signing.grant_tag(alias))
        try:
            signing.sign_grant(client, name, signing.Grant(alias, version, event.seq,
                                                           event.action, event.by, event.at))
            client.set_registered_model_alias(name, alias, version)
            body = {k: v for k, v in asdict(event).items() if k not in ("seq", "alias")}
            client.set_registered_model_tag(name, f"{_event_prefix(alias)}{event.seq:06d}",
                                            json.dumps(body, sort_keys=True))
        except Exception:
            _restore(client, name, alias, previous, grant)
            raise
        if alias == CHAMPION:
            challenger = versions.by_alias(client, name, CHALLENGER)
            if challenger is not None and challenger.version == version:
                client.delete_registered_model_alias(name, CHALLENGER)


def _restore(client: MlflowClient, name: str, alias: str, previous: VersionInfo | None,
             grant: str | None) -> None:
    """Put the alias and its signed grant back as they were (best effort), so the previous
    holder still verifies where serving checks it."""
    tag = signing.grant_tag(alias)
    try:
        if grant is None:
            client.delete_registered_model_tag(name, tag)
        else:
            client.set_registered_model_tag(name, tag, grant)
    except Exception:  # noqa: BLE001 - the store is gone: the original error says so
        pass
    try:
        if previous is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, previous.version)
    except Exception:  # noqa: BLE001 - as above
        pass


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
            user: str | None = None, tracking_uri: str | None = None,
            audit: AuditTrail | None = None) -> AliasEvent | None:
    """Move ``alias`` to the version registered from ``run_id`` after verifying it, recording
    the move in ``audit`` (and the MLflow mirror).

    Raises ``RegistryError`` for bad input (unknown run, no usable version, ``force`` without
    a reason), ``PromotionRefusedError`` when verification fails and ``force`` is off and
    ``PermissionRefusedError`` when the authenticated user lacks MANAGE. Returns None when the
    version already holds the alias.
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
    return move_alias(conn, info.name, alias, info.version, PROMOTE, forced=bool(problems),
                      reason=reason.strip(), overridden="; ".join(problems), user=user,
                      audit=audit)


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
    """Replay the timeline: promotions push a version, rollbacks pop one. A timeline that
    starts after the first champion (an audit added to a running registry) starts from what
    its first move replaced."""
    stack: list[str] = [timeline[0].previous] if timeline and timeline[0].previous else []
    for event in timeline:
        if event.action == ROLLBACK:
            if stack:
                stack.pop()
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def rollback(name: str, alias: str = CHAMPION, *, reason: str = "", user: str | None = None,
             tracking_uri: str | None = None, audit: AuditTrail | None = None) -> AliasEvent:
    """Move ``alias`` back to the version that held it before the current one (the timeline
    replayed from ``audit`` when given, else from the MLflow mirror)."""
    conn = connect(tracking_uri)
    client = conn.client
    current = versions.by_alias(client, versions.check_safe(name, "model name"), alias)
    if current is None:
        raise RegistryError(f"{name} has no {alias} to roll back")
    timeline = audit.events(name, alias) if audit is not None else events(client, name, alias)
    stack = champion_stack(timeline)
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
    return move_alias(conn, name, alias, target.version, ROLLBACK, reason=reason.strip(),
                      user=user, audit=audit)


@dataclass(frozen=True)
class Timeline:
    """An alias's moves, oldest first, from the audit when there is one (else the MLflow
    mirror), and where the mirror disagrees with the audit."""

    events: list[AliasEvent]
    audited: bool
    disagreements: list[str] = field(default_factory=list)


def history(name: str, alias: str = CHAMPION, tracking_uri: str | None = None,
            audit: AuditTrail | None = None) -> Timeline:
    """Every recorded move of ``alias`` for ``name``: the audit's, checked against the
    mirror, or the mirror alone without an audit."""
    conn = connect(tracking_uri)
    mirror = events(conn.client, versions.check_safe(name, "model name"), alias)
    if audit is None:
        return Timeline(mirror, audited=False)
    recorded = audit.events(name, alias)
    return Timeline(recorded, audited=True, disagreements=disagreements(recorded, mirror))
