"""Signed records: what a version's tags say (gate verdict, hashes, lineage) and where vitedit-ops
last put the champion, authenticated with a key the registry does not hold.

Anyone who can write to the MLflow store can rewrite a tag, so a hash tag next to the file it
describes proves nothing once both can be changed. At registration the version's record (name,
version, run, ONNX model id, and every tag copied from the run: kind, lineage, gate verdict,
weights fingerprint, patch and ONNX hashes, suite hashes) is signed with HMAC-SHA256 under the
operator's key and stored beside it; verification checks the MAC, then every tag against the
signed record, and promotion checks the artifacts against the signed values. Every alias move
vitedit-ops makes is signed the same way (a *grant*: the latest move, with its timeline
sequence number), so a move made elsewhere (MLflow's UI, the plain API) is told apart. A
lineage asset stored after its base was signed (an update network) gets a record of its own:
which asset of which base, its run and its files' hash.

The key comes from ``VITEDIT_SIGNING_KEY_FILE`` (a 0600 file) or ``VITEDIT_SIGNING_KEY``;
retired keys (``VITEDIT_SIGNING_OLD_KEY_FILES``) still verify, never sign.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.settings import get_settings

from . import versions
from .client import translate_errors
from .versions import VersionInfo

SIGNATURE = "vitedit.signature"            # "v1:<key id>:<hex mac>" of the record below
SIGNED_RECORD = "vitedit.signed_record"    # canonical JSON of what was signed
SCHEME = "v1"
MIN_KEY_BYTES = 32
NO_KEY = ("no signing key configured (VITEDIT_SIGNING_KEY_FILE or VITEDIT_SIGNING_KEY): "
          "nothing vouches for the version's tags")


class SigningKeyError(InvalidInputError):
    """The configured signing key is unusable (missing file, too short, readable by others)."""


@dataclass(frozen=True)
class SigningKey:
    """One HMAC-SHA256 key; ``key_id`` names it in signatures without revealing it."""

    secret: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"vitedit-signing-key-id:" + self.secret).hexdigest()[:16]

    def mac(self, payload: bytes) -> str:
        return hmac.new(self.secret, payload, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Keys:
    """The key that signs (None: nothing is signed) and every key that verifies."""

    signing: SigningKey | None
    verifying: tuple[SigningKey, ...]

    def by_id(self, key_id: str) -> SigningKey | None:
        return next((k for k in self.verifying if k.key_id == key_id), None)


def create_key_file(path: str | Path) -> Path:
    """A new random key in a new file readable by its owner only (refuses to overwrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SigningKeyError(f"signing key file {path} exists; not overwriting it") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path


def use_local_key(directory: Path) -> Path | None:
    """For self-contained runs (the demo, the continual benchmark): when no key is configured,
    make one in ``directory`` (beside their stores, not in MLflow's) and configure it through
    the environment. Returns the new file, or None when a key was configured already."""
    if os.environ.get("VITEDIT_SIGNING_KEY") or os.environ.get("VITEDIT_SIGNING_KEY_FILE"):
        return None
    path = directory / "signing.key"
    if not path.exists():
        create_key_file(path)
    os.environ["VITEDIT_SIGNING_KEY_FILE"] = str(path)
    return path


def read_key_file(path: Path) -> SigningKey:
    """The key in ``path``; refuses a file others can read or a key under 32 bytes."""
    try:
        mode = path.stat().st_mode
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise SigningKeyError(f"signing key file {path} cannot be read: {exc.strerror}") from exc
    if mode & 0o077:
        raise SigningKeyError(f"signing key file {path} is readable by others (mode "
                              f"{mode & 0o777:o}); chmod 600 it")
    return _key(secret, str(path))


def _key(secret: bytes, where: str) -> SigningKey:
    if len(secret) < MIN_KEY_BYTES:
        raise SigningKeyError(f"signing key from {where} has {len(secret)} bytes, needs at least "
                              f"{MIN_KEY_BYTES} (make one: vitedit-ops signing-key create PATH)")
    return SigningKey(secret)


def configured_keys() -> Keys:
    """The keys the settings name; raises ``SigningKeyError`` for an unusable one."""
    settings = get_settings()
    if settings.signing_key is not None and settings.signing_key_file is not None:
        raise SigningKeyError("set VITEDIT_SIGNING_KEY or VITEDIT_SIGNING_KEY_FILE, not both")
    signing = None
    if settings.signing_key is not None:
        signing = _key(settings.signing_key.get_secret_value().strip().encode(),
                       "VITEDIT_SIGNING_KEY")
    elif settings.signing_key_file is not None:
        signing = read_key_file(settings.signing_key_file)
    old = tuple(read_key_file(p) for p in settings.signing_old_key_files)
    return Keys(signing, ((signing,) if signing else ()) + old)


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _signature(key: SigningKey, payload: bytes) -> str:
    return f"{SCHEME}:{key.key_id}:{key.mac(payload)}"


def _check_mac(keys: Keys, payload: bytes, signature: str, what: str) -> str | None:
    """Why ``signature`` does not authenticate ``payload``; None when it does."""
    scheme, _, rest = signature.partition(":")
    key_id, _, mac = rest.partition(":")
    if scheme != SCHEME or not mac:
        return f"{what}: signature {signature[:24]!r} is not a {SCHEME} signature"
    if not keys.verifying:
        return f"{what}: {NO_KEY}"
    key = keys.by_id(key_id)
    if key is None:
        return (f"{what}: signed with key {key_id}, the configured keys are "
                f"{', '.join(k.key_id for k in keys.verifying)} (a wrong key, or forged)")
    if not hmac.compare_digest(key.mac(payload), mac):
        return f"{what}: signature does not match the signed record (record or signature rewritten)"
    return None


# --- versions -------------------------------------------------------------------------------

def version_record(info: VersionInfo) -> dict[str, Any]:
    """What a version's signature covers: its identity and every tag copied from its run."""
    return {"name": info.name, "version": info.version, "run_id": info.run_id,
            "model_id": info.model_id,
            "tags": {k: info.tags[k] for k in versions.VERSION_TAGS if k in info.tags}}


def sign_version(client: MlflowClient, info: VersionInfo, keys: Keys | None = None) -> bool:
    """Sign ``info``'s record as its tags stand now (registration, before it is marked ready).
    Returns False, signing nothing, when no key is configured (promotion then refuses it)."""
    keys = keys or configured_keys()
    if keys.signing is None:
        return False
    payload = _canonical(version_record(info))
    with translate_errors(f"sign {info.name} v{info.version}"):
        client.set_model_version_tag(info.name, info.version, SIGNED_RECORD, payload.decode())
        client.set_model_version_tag(info.name, info.version, SIGNATURE,
                                     _signature(keys.signing, payload))
    return True


def verify_version(info: VersionInfo, keys: Keys | None = None
                   ) -> tuple[dict[str, str] | None, list[str]]:
    """The version's tags as signed (None if the signature does not hold) and why it does not
    verify: no or a bad signature, a record of another version, a tag rewritten since."""
    keys = keys or configured_keys()
    signature, text = info.tags.get(SIGNATURE, ""), info.tags.get(SIGNED_RECORD, "")
    if not signature or not text:
        return None, ["unsigned: no vitedit.signature tag (registered without a signing key, "
                      "or before signing existed); nothing vouches for its tags"]
    problem = _check_mac(keys, text.encode(), signature, "version record")
    if problem:
        return None, [problem]
    record = json.loads(text)
    problems = [f"signed record is for {record.get(k)!r} as {k}, this version has {v!r} "
                f"(a signature copied from another version)"
                for k, v in (("name", info.name), ("version", info.version),
                             ("run_id", info.run_id), ("model_id", info.model_id))
                if record.get(k) != v]
    signed: dict[str, str] = record.get("tags", {})
    for key in sorted(set(signed) | {k for k in versions.VERSION_TAGS if k in info.tags}):
        if signed.get(key, "") != info.tags.get(key, ""):
            problems.append(f"tag {key} was rewritten after signing (signed "
                            f"{signed.get(key, '')[:16]!r}, now {info.tags.get(key, '')[:16]!r})")
    return signed, problems


# --- lineage assets -------------------------------------------------------------------------

def sign_asset(record: dict[str, str], keys: Keys) -> str:
    """The signature of a lineage asset's record (which asset of which base: run, hash)."""
    if keys.signing is None:
        raise SigningKeyError(NO_KEY)
    return _signature(keys.signing, _canonical(record))


def check_asset(record: dict[str, str], signature: str, what: str,
                keys: Keys | None = None) -> str | None:
    """Why ``signature`` does not vouch for the asset ``record`` describes (None: it does)."""
    if not signature:
        return f"{what}: unsigned (no signature tag): nothing vouches for its run and hash"
    return _check_mac(keys or configured_keys(), _canonical(record), signature, what)


# --- alias grants ---------------------------------------------------------------------------

def grant_tag(alias: str) -> str:
    """Registered-model tag holding the signed latest move of ``alias`` by vitedit-ops."""
    return f"vitedit.{alias}.grant"


@dataclass(frozen=True)
class Grant:
    """The latest move of an alias vitedit-ops made, as signed."""

    alias: str
    version: str
    seq: int
    action: str
    by: str
    at: str


def sign_grant(client: MlflowClient, name: str, grant: Grant, keys: Keys | None = None) -> bool:
    """Record ``grant`` as the alias's latest signed move; False (nothing written) without a
    key, so the move shows as made outside vitedit-ops to anything that checks."""
    keys = keys or configured_keys()
    if keys.signing is None:
        return False
    body = {"name": name, **grant.__dict__}
    payload = _canonical(body)
    value = json.dumps({"record": body, "signature": _signature(keys.signing, payload)},
                       sort_keys=True)
    with translate_errors(f"sign the move of {name}@{grant.alias}"):
        client.set_registered_model_tag(name, grant_tag(grant.alias), value)
    return True


def read_grant(client: MlflowClient, name: str, alias: str, keys: Keys | None = None
               ) -> tuple[Grant | None, str]:
    """The alias's latest signed move, or None and why there is none that verifies."""
    keys = keys or configured_keys()
    with translate_errors(f"read registered model {name}"):
        value = client.get_registered_model(name).tags.get(grant_tag(alias), "")
    if not value:
        return None, f"no signed vitedit-ops move of @{alias} is recorded"
    try:
        stored = json.loads(value)
        record, signature = stored["record"], stored["signature"]
        problem = _check_mac(keys, _canonical(record), signature, f"@{alias} move record")
        if problem is None and (record.get("name") != name or record.get("alias") != alias):
            problem = f"@{alias} move record is for {record.get('name')}@{record.get('alias')}"
        if problem:
            return None, problem
        return Grant(**{k: v for k, v in record.items() if k != "name"}), ""
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"@{alias} move record is unreadable ({type(exc).__name__})"


def check_alias(client: MlflowClient, info: VersionInfo, alias: str,
                keys: Keys | None = None) -> tuple[Grant | None, list[str]]:
    """Whether vitedit-ops put ``alias`` on ``info``: the latest signed move must name it."""
    grant, why = read_grant(client, info.name, alias, keys)
    if grant is None:
        return None, [f"@{alias} on v{info.version} is not vouched for: {why} (moved outside "
                      f"vitedit-ops?)"]
    if grant.version != info.version:
        return grant, [f"@{alias} was moved outside vitedit-ops: the last signed move "
                       f"(#{grant.seq}, {grant.action} by {grant.by}) put it on "
                       f"v{grant.version}, it now points at v{info.version}"]
    return grant, []
