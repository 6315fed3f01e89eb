"""The served champion: resolved by alias, verified, loaded into onnxruntime.

The alias is read once, as a version with its tags (``get_model_version_by_alias``); every
download after that goes to that version's run and logged model, so the version the server
reports is the one whose files it loaded, even if the alias moves meanwhile. Nothing is served
before ``registry.loading.download_served`` has re-checked it as promotion does (signature,
hashes) and found that the latest signed ``vitedit-ops`` move of the alias put it there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from registry import versions
from registry.client import connect, translate_errors
from registry.errors import RegistryError
from registry.loading import download_served
from registry.signing import grant_tag
from registry.versions import CHAMPION, VersionInfo
from vitedit_ops.export import active_provider, load_session
from vitedit_ops.models import ModelSpec
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.scratch import scratch_prefix


@dataclass(frozen=True)
class Champion:
    """One verified version in an onnxruntime session; immutable, so a batch that started on
    it finishes on it whatever the server swaps in meanwhile."""

    name: str
    version: str
    run_id: str
    onnx_sha256: str
    spec: ModelSpec
    session: Any
    preprocessor: Preprocessor
    move: int = 0   # number of the signed alias move it was loaded by

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """A label per class (the class index when the spec has none); made once, not per
        answered image (for 1,000 unnamed classes that list cost ~40 us per image)."""
        return tuple(self.spec.class_names or [str(c) for c in range(self.spec.num_classes)])

    def probabilities(self, inputs: torch.Tensor) -> np.ndarray:
        """(N, num_classes) softmax probabilities of a normalised batch, one onnxruntime call."""
        name = self.session.get_inputs()[0].name
        logits = self.session.run(None, {name: inputs.numpy().astype(np.float32)})[0]
        return torch.from_numpy(logits).softmax(-1).numpy()


def resolve(name: str, tracking_uri: str | None = None) -> VersionInfo:
    """The version holding ``champion`` now, with its tags, in one registry call."""
    info = versions.by_alias(connect(tracking_uri).client,
                             versions.check_safe(name, "registered model name"), CHAMPION)
    if info is None:
        raise RegistryError(f"{name} has no {CHAMPION} to serve")
    return info


def signed_move(info: VersionInfo, tracking_uri: str | None = None) -> str:
    """The champion alias's signed-move tag as stored if it names ``info`` (else empty): a
    refusal is reconsidered when it changes, e.g. once ``vitedit-ops promote`` vouches for the
    holder, not when a move of another version is being recorded (verified at load, not here)."""
    with translate_errors(f"read registered model {info.name}"):
        model = connect(tracking_uri).client.get_registered_model(info.name)
    value = model.tags.get(grant_tag(CHAMPION), "")
    try:
        names = str(json.loads(value)["record"]["version"]) == info.version
    except (ValueError, KeyError, TypeError):
        names = False
    return value if names else ""


def load(info: VersionInfo, tracking_uri: str | None = None,
         threads: int | None = None, not_before: int = 0) -> Champion:
    """Download, verify and load ``info``; raises ``PromotionRefusedError`` if it does not
    verify (CUDA provider first when onnxruntime can use it)."""
    root = Path(tempfile.mkdtemp(prefix=scratch_prefix("serve")))
    try:
        onnx_path, spec, move = download_served(info, root, tracking_uri,
                                                not_before=not_before)
        # idle threads sleep: between batches their cores serve HTTP, decoding and logging
        session = load_session(onnx_path, prefer_cuda=True, threads=threads, spinning=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the session holds the graph in memory
    return Champion(name=info.name, version=info.version, run_id=info.run_id,
                    onnx_sha256=info.tags.get(versions.ONNX_SHA256, ""), spec=spec,
                    session=session, preprocessor=Preprocessor(spec), move=move)
