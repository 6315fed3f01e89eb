"""What a night edits: the champion, its lineage's hypernetwork, update networks and suite,
and its drift.

The flow pins the champion's version number at the start (the alias may move meanwhile) and
passes a small :class:`ChampionRef` to every task. Tasks turn it into a
:class:`ChampionContext` through a per-process cache, so threads share one copy and each Dask
worker downloads the champion once, from the registry, which every worker can reach.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from registry import versions
from registry.lineage_assets import load_assets, load_lineage_updater
from registry.loading import download_suite, load_version
from registry.lookup import verified_champion
from vitedit_ops.editors import updater_kind
from vitedit_ops.errors import IncompatibleBaseError
from vitedit_ops.gate import Suite, load_suite
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.learned_update import UpdateNet
from vitedit_ops.metrics import predict_logits
from vitedit_ops.models import ModelSpec
from vitedit_ops.scoped import STACK, scoped_patches
from vitedit_ops.scratch import scratch_prefix

_CACHE_SIZE = 2


@dataclass(frozen=True)
class ChampionRef:
    """A pinned registered version: cheap to pass to tasks on any worker."""

    name: str
    version: str
    tracking_uri: str


@dataclass(frozen=True)
class Drift:
    """How far the champion has moved from its lineage root (the hypernetwork's base)."""

    relation: str                       # "base", "descendant" or "retrained"
    changed_tensors: tuple[str, ...]
    window_relative_change: float       # ||W - W_root|| / ||W_root|| over the edit window
    scoped_patches: int = 0             # patches that apply inside their scopes only

    def summary(self) -> str:
        if self.relation == "base":
            return "the champion is the lineage root (no edits yet)"
        if self.relation == "retrained":
            return (f"the champion was retrained: {len(self.changed_tensors)} tensors changed "
                    f"since the lineage root, edit-window weights moved "
                    f"{self.window_relative_change:.2%} (relative L2)")
        weights = [t for t in self.changed_tensors if t != STACK]
        return (f"{len(weights)} tensors changed since the lineage root, edit-window weights "
                f"moved {self.window_relative_change:.2%} (relative L2); "
                f"{self.scoped_patches} scoped patch(es)")


@dataclass
class ChampionContext:
    """The loaded champion and everything tied to its lineage."""

    ref: ChampionRef
    info: versions.VersionInfo
    model: nn.Module
    spec: ModelSpec
    hypernet: MaskHypernet
    suite: Suite
    suite_predictions: torch.Tensor     # the champion's top-1 on the suite's clean images
    drift: Drift
    base_preserved: torch.Tensor | None  # the lineage's held-out preserved pixels, if any
    _workdir: tempfile.TemporaryDirectory
    hypernet_refusal: str = ""  # why the hypernetwork does not fit a retrained champion
    _updaters: dict[str, UpdateNet] = field(default_factory=dict)
    _updaters_lock: threading.Lock = field(default_factory=threading.Lock)

    def updater(self, kind: str) -> UpdateNet:
        """The lineage's ``kind`` update network (KE, MEND), downloaded and verified on first
        use (a night needs at most the kinds its settings name); refused when the lineage
        has none, or it does not verify (``registry.load_lineage_updater``)."""
        with self._updaters_lock:
            if kind not in self._updaters:
                self._updaters[kind] = load_lineage_updater(self.info, kind,
                                                            self.ref.tracking_uri)
            return self._updaters[kind]

    def require_hypernet(self) -> None:
        """Refuse a night that needs the hypernetwork (masks, windows of subpopulations) on a
        champion it was not meta-trained for (fine-tuned outside the FFNs)."""
        if self.hypernet_refusal:
            raise IncompatibleBaseError(f"{self.hypernet_refusal}; meta-train a hypernetwork "
                                        "for this champion, or run strategy=retrain")

    @property
    def root_fingerprint(self) -> str:
        return self.info.lineage_root_fingerprint


def updater_for(context: ChampionContext, method: str) -> UpdateNet | None:
    """The lineage's update network editor ``method`` edits with (KE, MEND), else None."""
    kind = updater_kind(method)
    return context.updater(kind) if kind else None


def resolve_champion(name: str, tracking_uri: str) -> ChampionRef:
    """Pin the version that holds the ``champion`` alias now, once its alias move and record
    verify (``registry.verified_champion``)."""
    return ChampionRef(name, verified_champion(name, tracking_uri).version, tracking_uri)


_lock = threading.Lock()
_cache: dict[ChampionRef, ChampionContext] = {}


def champion_context(ref: ChampionRef) -> ChampionContext:
    """The context of ``ref``, loaded once per process (thread-safe)."""
    with _lock:
        if ref not in _cache:
            while len(_cache) >= _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
            _cache[ref] = _load(ref)
        return _cache[ref]


def _load(ref: ChampionRef) -> ChampionContext:
    model, spec, info = load_version(ref.name, ref.version, tracking_uri=ref.tracking_uri)
    assets = load_assets(info, ref.tracking_uri)
    hypernet = assets.hypernet
    if hypernet.config.base_fingerprint != info.lineage_root_fingerprint:
        raise IncompatibleBaseError(
            f"{ref.name} v{ref.version} descends from {info.lineage_root_fingerprint[:12]}, but "
            f"its lineage's hypernetwork was trained for {hypernet.config.base_fingerprint[:12]}")
    refusal = ""
    try:
        lineage = hypernet.check_base(model)
    except IncompatibleBaseError as exc:
        # a champion retrained beyond the FFNs (strategy=retrain with full fine-tuning): only
        # the nights that need the hypernetwork refuse it
        plain = {k for k in model.state_dict() if not k.startswith(f"{STACK}.")}
        if plain != set(hypernet.config.base_tensor_fingerprints):
            raise  # another architecture: nothing of this lineage applies
        refusal, lineage = str(exc), None
    workdir = tempfile.TemporaryDirectory(prefix=scratch_prefix("champion"))
    suite = load_suite(download_suite(ref.name, ref.version, dst=workdir.name,
                                      tracking_uri=ref.tracking_uri))
    suite.assert_lineage(info.lineage_root_fingerprint)
    predictions = predict_logits(model, suite.inputs(suite.pixels)).argmax(-1)
    if lineage is not None and lineage.relation == "base":
        drift = Drift("base", (), 0.0)
    else:
        root, _, _ = load_version(ref.name, info.base_version, tracking_uri=ref.tracking_uri)
        changed = lineage.changed_tensors if lineage is not None else tuple(
            name for name, value in model.state_dict().items()
            if name in root.state_dict()
            and not torch.equal(value.cpu(), root.state_dict()[name].cpu()))
        drift = Drift("descendant" if lineage is not None else "retrained", changed,
                      relative_change(root, model, hypernet.config.weight_names),
                      len(scoped_patches(model)))
    return ChampionContext(ref, info, model, spec, hypernet, suite, predictions, drift,
                           assets.preserved, workdir, refusal)


def relative_change(root: nn.Module, model: nn.Module, names: list[str]) -> float:
    """``||W - W_root|| / ||W_root||`` over the named weights taken together."""
    current, original = dict(model.named_parameters()), dict(root.named_parameters())
    diff = sum(float((current[n].detach().double() - original[n].detach().double()).norm() ** 2)
               for n in names)
    size = sum(float(original[n].detach().double().norm() ** 2) for n in names)
    return (diff / size) ** 0.5 if size else 0.0

