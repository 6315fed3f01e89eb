"""The locality regression suite: the fixed images every gate run of one model lineage uses.

Gate verdicts are only comparable night after night if they measure the same images the same
way, so a suite is written once per lineage (clean images with the base model's logits and the
sensitive subset) and afterwards only grows: each accepted edit appends a new version holding the
images it fixed (retention). A directory holds the versions ``v0001``, ``v0002``...; each has a
``manifest.json`` and a ``tensors.safetensors``. Every version's content hash covers its tensors
and its manifest content, which names the parent version's hash, so a changed byte anywhere in
the chain is detected when the suite is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import IncompatibleBaseError, InvalidInputError, VitEditError
from ..metrics import (DEFAULT_SENSITIVE_MARGIN, DEFAULT_SENSITIVE_MIN, predict_logits,
                       select_sensitive)
from ..models import ModelSpec, fingerprint, tensor_digest
from ..preprocess import Preprocessor

SUITE_FORMAT = "vitedit-suite/1"
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
UNKNOWN_LABEL = -1
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class SuiteError(VitEditError):
    """A suite is missing, unreadable, or cannot be written as asked."""


class SuiteIntegrityError(SuiteError):
    """A suite's content does not match its recorded hashes: it was modified after writing."""


class SuiteOverlapError(SuiteError):
    """Images meant for editing or preserving are also in the suite (the gate would be blind)."""


def image_hashes(pixels: torch.Tensor) -> list[str]:
    """sha256 of each image's 8-bit pixel bytes (and shape).

    Quantising ``pixels`` in [0, 1] to 8 bits makes the hash of one picture the same whichever
    pipeline decoded it to floats, which is what the disjointness checks need.
    """
    if pixels.ndim != 4:
        raise InvalidInputError(f"expected images (N, C, H, W), got shape {tuple(pixels.shape)}")
    quantised = (pixels.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round()
    quantised = quantised.to(torch.uint8).contiguous()
    prefix = "x".join(map(str, pixels.shape[1:])).encode() + b"|"
    return [hashlib.sha256(prefix + image.numpy().tobytes()).hexdigest() for image in quantised]


@dataclass(frozen=True)
class SuiteVersion:
    """One link of a suite's hash chain."""

    version: int
    content_hash: str
    parent_hash: str | None
    written_at: str
    added: int  # images this version added


@dataclass(frozen=True, eq=False)  # holds tensors: compare suites by content_hash
class Suite:
    """A loaded, verified suite version and everything before it in its chain.

    ``pixels`` hold images in [0, 1] at the base model's input size (``inputs`` normalises them
    with the base spec); unknown labels are ``UNKNOWN_LABEL``.
    """

    path: Path
    version: int
    content_hash: str
    base_fingerprint: str
    spec: ModelSpec
    pixels: torch.Tensor
    labels: torch.Tensor
    base_logits: torch.Tensor
    ids: tuple[str, ...]
    hashes: tuple[str, ...]
    sensitive: torch.Tensor
    sensitive_rule: str
    retention_pixels: torch.Tensor
    retention_labels: torch.Tensor
    retention_sources: tuple[str, ...]
    retention_hashes: tuple[str, ...]
    history: tuple[SuiteVersion, ...]

    @property
    def base_predictions(self) -> torch.Tensor:
        return self.base_logits.argmax(-1)

    @property
    def labelled(self) -> torch.Tensor:
        """Boolean mask of clean images with a known label."""
        return self.labels != UNKNOWN_LABEL

    def inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Model inputs for ``pixels``, preprocessed exactly as at build time."""
        return Preprocessor(self.spec).normalize(pixels)

    def assert_disjoint(self, hashes: Iterable[str], what: str = "pool") -> None:
        """Refuse an edit or preserved pool that shares any image with the suite."""
        suite_hashes = set(self.hashes) | set(self.retention_hashes)
        overlap = sorted(set(hashes) & suite_hashes)
        if overlap:
            raise SuiteOverlapError(
                f"{what} shares {len(overlap)} image(s) with suite {self.content_hash[:12]} "
                f"(e.g. {overlap[0][:16]}): the gate must measure images the edit never saw")

    def assert_lineage(self, base_fingerprint: str) -> None:
        """Refuse models of another lineage: the suite's logits belong to one base model."""
        if base_fingerprint != self.base_fingerprint:
            raise IncompatibleBaseError(
                f"suite {self.path} was built for base {self.base_fingerprint[:12]}, not "
                f"{base_fingerprint[:12]}: gate a descendant by passing its lineage's base "
                f"fingerprint, or build a suite for the new base")

    def extend_with_fixes(self, pixels: torch.Tensor, labels: torch.Tensor | Sequence[int],
                          source: str | Sequence[str]) -> Suite:
        """Append a new version holding images an accepted edit fixed; returns it loaded.

        ``source`` names the edit/run that fixed them (one id, or one per image). Fails if a
        newer version exists (reload and retry) or if any image is already in the suite.
        """
        pixels = _check_pixels(pixels, self.spec)
        if len(pixels) == 0:
            raise InvalidInputError("no fixed images to append")
        labels = _check_labels(labels, len(pixels), self.spec.num_classes, allow_unknown=False)
        sources = [source] * len(pixels) if isinstance(source, str) else [str(s) for s in source]
        if len(sources) != len(pixels) or not all(sources):
            raise InvalidInputError("give one non-empty source id, or one per fixed image")
        hashes = image_hashes(pixels)
        if len(set(hashes)) != len(hashes):
            raise InvalidInputError("the fixed images contain duplicates")
        self.assert_disjoint(hashes, what="fixed images")
        tensors = {"retention.pixels": pixels, "retention.labels": labels}
        content = {
            "format": SUITE_FORMAT, "version": self.version + 1, "parent_hash": self.content_hash,
            "base_fingerprint": self.base_fingerprint,
            "retention": {"sources": sources, "image_hashes": hashes},
        }
        _write_version(self.path, self.version + 1, content, tensors)
        return load_suite(self.path, version=self.version + 1)

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "version": self.version, "hash": self.content_hash,
                "base_fingerprint": self.base_fingerprint, "clean": len(self.pixels),
                "labelled": int(self.labelled.sum()), "sensitive": len(self.sensitive),
                "sensitive_rule": self.sensitive_rule, "retention": len(self.retention_pixels),
                "history": [asdict(v) for v in self.history]}


def build_suite(path: str | Path, model: nn.Module, spec: ModelSpec, pixels: torch.Tensor,
                labels: torch.Tensor | Sequence[int] | None = None,
                ids: Sequence[str] | None = None,
                sensitive_margin: float = DEFAULT_SENSITIVE_MARGIN,
                sensitive_min: int = DEFAULT_SENSITIVE_MIN) -> Suite:
    """Write version 1 of a lineage's suite: clean images, the base logits, the sensitive subset.

    ``path`` must not hold a suite yet (suites are never rewritten). Labels may be partial
    (``UNKNOWN_LABEL``); the sensitive subset is drawn from the labelled images the base gets
    right when any label is known (see ``metrics.select_sensitive`` for its fallback).
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise SuiteError(f"{path} is not empty: a suite is written once, then only extended")
    pixels = _check_pixels(pixels, spec)
    if len(pixels) == 0:
        raise InvalidInputError("a suite needs at least one image")
    if labels is None:
        labels = torch.full((len(pixels),), UNKNOWN_LABEL, dtype=torch.int64)
    labels = _check_labels(labels, len(pixels), spec.num_classes, allow_unknown=True)
    ids = [str(i) for i in range(len(pixels))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(pixels):
        raise InvalidInputError(f"{len(ids)} ids for {len(pixels)} images")
    logits = predict_logits(model, Preprocessor(spec).normalize(pixels)).contiguous()
    known = labels != UNKNOWN_LABEL
    if known.any():
        candidates = torch.nonzero(known).flatten()
        chosen = select_sensitive(logits[candidates], labels[candidates], sensitive_margin,
                                  sensitive_min)
        sensitive = candidates[chosen.indices]
    else:
        chosen = select_sensitive(logits, None, sensitive_margin, sensitive_min)
        sensitive = chosen.indices
    content = {
        "format": SUITE_FORMAT, "version": 1, "parent_hash": None,
        "base_fingerprint": fingerprint(model), "spec": json.loads(spec.to_json()),
        "clean": {"ids": ids, "image_hashes": image_hashes(pixels)},
        "sensitive": {"rule": chosen.rule, "margin": sensitive_margin, "min_count": sensitive_min,
                      "fallback": chosen.fallback},
    }
    tensors = {"clean.pixels": pixels, "clean.labels": labels, "clean.base_logits": logits,
               "sensitive.indices": sensitive.to(torch.int64).contiguous()}
    _write_version(path, 1, content, tensors)
    return load_suite(path, version=1)


def suite_versions(path: str | Path) -> list[int]:
    """Version numbers present in a suite directory, ascending."""
    path = Path(path)
    if not path.is_dir():
        raise SuiteError(f"suite directory {path} does not exist")
    found = (_VERSION_DIR.match(p.name) for p in path.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def load_suite(path: str | Path, version: int | None = None,
               expected_hash: str | None = None) -> Suite:
    """Load and verify a suite version (default: the latest) and its whole chain.

    Every version's tensors and manifest are checked against its content hash, every parent
    link against the parent's hash, and ``expected_hash`` (e.g. the hash a registry recorded)
    against the result. Any mismatch raises :class:`SuiteIntegrityError`.
    """
    path = Path(path)
    versions = suite_versions(path)
    if not versions:
        raise SuiteError(f"{path} holds no suite versions")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise SuiteError(f"{path} has no version {version} (has {versions[0]}..{versions[-1]})")
    if versions[:version] != list(range(1, version + 1)):
        raise SuiteIntegrityError(f"{path}: versions {versions} have a gap before {version}")
    chain = [_read_version(path, v) for v in range(1, version + 1)]
    for parent, child in zip(chain, chain[1:]):
        if child["content"]["parent_hash"] != parent["content_hash"]:
            raise SuiteIntegrityError(
                f"{path}: version {child['content']['version']} names parent "
                f"{str(child['content']['parent_hash'])[:12]}, but version "
                f"{parent['content']['version']} hashes to {parent['content_hash'][:12]}")
    suite = _assemble(path, chain)
    if expected_hash is not None and suite.content_hash != expected_hash:
        raise SuiteIntegrityError(
            f"{path} version {version} hashes to {suite.content_hash[:12]}, expected "
            f"{expected_hash[:12]}")
    return suite


# -- validation -------------------------------------------------------------------------------
def _check_pixels(pixels: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 \
            or tuple(pixels.shape[1:]) != tuple(spec.input_size):
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        size = ", ".join(map(str, spec.input_size))
        raise InvalidInputError(f"expected pixels of shape (N, {size}), got {shape}")
    pixels = pixels.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(pixels).all() or (len(pixels) and (pixels.min() < 0 or pixels.max() > 1)):
        raise InvalidInputError("suite pixels must be finite and in [0, 1] (not normalised)")
    return pixels


def _check_labels(labels: torch.Tensor | Sequence[int], count: int, num_classes: int,
                  allow_unknown: bool) -> torch.Tensor:
    labels = torch.as_tensor(labels).detach().to("cpu")
    if labels.shape != (count,) or labels.is_floating_point():
        raise InvalidInputError(f"expected {count} integer labels, got {tuple(labels.shape)} "
                                f"{labels.dtype}")
    labels = labels.to(torch.int64).contiguous()
    low = UNKNOWN_LABEL if allow_unknown else 0
    if count and (labels.min() < low or labels.max() >= num_classes):
        raise InvalidInputError(f"labels must lie in [{low}, {num_classes})")
    return labels


# -- storage ----------------------------------------------------------------------------------
def _content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _write_version(root: Path, version: int, content: dict[str, Any],
                   tensors: dict[str, torch.Tensor]) -> None:
    """Write one version into a temporary directory, then rename it into place (atomic)."""
    content = {**content, "tensors": {k: tensor_digest(v) for k, v in sorted(tensors.items())}}
    manifest = {"content_hash": _content_hash(content),
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "content": content}
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"v{version:04d}"
    if final.exists():
        raise SuiteError(f"{final} already exists: the suite was extended meanwhile; reload it")
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version:04d}-", dir=root))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS),
                  metadata={"format": SUITE_FORMAT, "content_hash": manifest["content_hash"]})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for name in (TENSORS, MANIFEST):
            (tmp / name).chmod(0o444)  # a reminder that versions are never rewritten
        os.rename(tmp, final)
    except OSError as exc:
        raise SuiteError(f"cannot write {final}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_version(root: Path, version: int) -> dict[str, Any]:
    folder = root / f"v{version:04d}"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        content, recorded = manifest["content"], manifest["content_hash"]
        tensors = load_file(str(folder / TENSORS))
    except Exception as exc:  # missing file, bad JSON, truncated safetensors...
        raise SuiteError(f"suite version {folder} is unreadable: {exc}") from exc
    if content.get("format") != SUITE_FORMAT or content.get("version") != version:
        raise SuiteIntegrityError(f"{folder} is not version {version} of a {SUITE_FORMAT} suite")
    digests = {k: tensor_digest(v) for k, v in sorted(tensors.items())}
    if digests != content.get("tensors"):
        changed = sorted(k for k in set(digests) | set(content.get("tensors", {}))
                         if digests.get(k) != content.get("tensors", {}).get(k))
        raise SuiteIntegrityError(f"{folder / TENSORS}: tensor(s) {', '.join(changed)} differ "
                                  f"from the recorded hashes: the suite was modified")
    if _content_hash(content) != recorded:
        raise SuiteIntegrityError(f"{folder / MANIFEST}: content does not match its hash "
                                  f"{recorded[:12]}: the manifest was modified")
    return {"content": content, "content_hash": recorded, "tensors": tensors,
            "written_at": manifest.get("written_at", "")}


def _assemble(root: Path, chain: list[dict[str, Any]]) -> Suite:
    first, t0 = chain[0]["content"], chain[0]["tensors"]
    spec = ModelSpec.from_dict(first["spec"])
    pixels = t0["clean.pixels"]
    hashes = tuple(first["clean"]["image_hashes"])
    if list(hashes) != image_hashes(pixels):
        raise SuiteIntegrityError(f"{root}: clean image hashes do not match the pixels")
    r_pixels = [v["tensors"]["retention.pixels"] for v in chain[1:]]
    r_labels = [v["tensors"]["retention.labels"] for v in chain[1:]]
    r_sources = [s for v in chain[1:] for s in v["content"]["retention"]["sources"]]
    r_hashes = [h for v in chain[1:] for h in v["content"]["retention"]["image_hashes"]]
    retention_pixels = torch.cat(r_pixels) if r_pixels else pixels[:0]
    if r_hashes != image_hashes(retention_pixels):
        raise SuiteIntegrityError(f"{root}: retention image hashes do not match the pixels")
    history = tuple(SuiteVersion(
        version=v["content"]["version"], content_hash=v["content_hash"],
        parent_hash=v["content"]["parent_hash"], written_at=v["written_at"],
        added=len(v["tensors"].get("clean.pixels", v["tensors"].get("retention.pixels"))))
        for v in chain)
    return Suite(
        path=root, version=len(chain), content_hash=chain[-1]["content_hash"],
        base_fingerprint=first["base_fingerprint"], spec=spec, pixels=pixels,
        labels=t0["clean.labels"], base_logits=t0["clean.base_logits"],
        ids=tuple(first["clean"]["ids"]), hashes=hashes, sensitive=t0["sensitive.indices"],
        sensitive_rule=first["sensitive"]["rule"], retention_pixels=retention_pixels,
        retention_labels=torch.cat(r_labels) if r_labels else t0["clean.labels"][:0],
        retention_sources=tuple(r_sources), retention_hashes=tuple(r_hashes), history=history)
