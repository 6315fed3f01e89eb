"""Networks that learn *how* to edit: a fine-tuning gradient in, a weight update out.

KE (De Cao et al., EMNLP 2021) and MEND (Mitchell et al., ICLR 2022) edit in one step: the
gradient of the edit images' loss on each window matrix goes through a meta-trained network
that turns it into the update to apply. They are the review's "fair comparison" with the
product's learned *where*: here they are meta-trained on the same CutMix (or PGD) episodes as
the mask hypernetwork, for the same window, and bound to the same base by its fingerprint.

The gradient of a linear layer is a sum over tokens of ``delta_t u_t^T`` (its inputs ``u``
and the loss's gradients at its outputs ``delta``): :func:`window_factors` captures those
factors in one backward pass, for a whole batch of independent episodes at once. Each kind
(``@register_updater``) maps them to one dense update per matrix and episode; the edited
weight is ``W - update``.

Meta-training is ``update_metatrain``; the editors that apply a trained network are
``editors.mend`` and ``editors.ke``, which also define the two kinds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import IncompatibleBaseError, InvalidInputError, VitEditError
from .forward import SplitForward
from .hypernet import Lineage, base_lineage
from .models import fingerprint_state, tensor_fingerprints
from .registries import Registry
from .sites import EditWindow, edit_window

CONFIG_FILE = "updater.json"
WEIGHTS_FILE = "updater.safetensors"
TARGET_RELATIVE_STEP = 1e-2  # the first update's size relative to the weights, before training


@dataclass
class UpdaterConfig:
    """What rebuilds an update network and which base and window it serves."""

    kind: str
    window: tuple[int, int]
    weight_names: list[str]
    shapes: list[tuple[int, int]]          # (out, in) of every window matrix
    embed_dim: int
    num_classes: int
    base_fingerprint: str
    base_tensor_fingerprints: dict[str, str]
    architecture: str = ""
    options: dict[str, Any] = field(default_factory=dict)   # the kind's own sizes
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UpdaterConfig:
        data = json.loads(text)
        data["window"] = tuple(data["window"])
        data["shapes"] = [tuple(s) for s in data["shapes"]]
        return cls(**data)


@dataclass
class Factors:
    """One window matrix's gradient factors for a batch of episodes: inputs ``u`` (E, T, in)
    and output gradients ``delta`` (E, T, out); the gradient is ``delta^T u`` per episode."""

    u: torch.Tensor
    delta: torch.Tensor

    def gradient(self) -> torch.Tensor:
        return torch.bmm(self.delta.transpose(1, 2), self.u)


@dataclass
class EditInputs:
    """What an update network may read about an edit besides the gradients: the edit images'
    pooled embedding at the base and their target classes, one row per episode."""

    embedding: torch.Tensor        # (E, D)
    labels: torch.Tensor           # (E,)


class UpdateNet(nn.Module):
    """Base class: binding to a base model and a window, persistence, and the log-scaled
    per-matrix step every kind multiplies its update by."""

    kind = "updater"
    SIZES: dict[str, int] = {}

    def __init__(self, config: UpdaterConfig) -> None:
        super().__init__()
        self.config = config
        self.log_step = nn.Parameter(torch.zeros(len(config.shapes)))

    def updates(self, factors: Sequence[Factors], inputs: EditInputs) -> list[torch.Tensor]:
        """One (E, out, in) update per window matrix; the edit is ``W - update``."""
        raw = self.raw_updates(factors, inputs)
        return [self.log_step[j].exp() * update for j, update in enumerate(raw)]

    def raw_updates(self, factors: Sequence[Factors], inputs: EditInputs
                    ) -> list[torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def resolve_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The kind's sizes (``SIZES``: name -> default, each a positive integer) with the
        defaults filled in; an option the kind does not have is refused."""
        unknown = sorted(set(options) - set(cls.SIZES))
        if unknown:
            raise InvalidInputError(f"unknown {cls.kind.upper()} option(s) "
                                    f"{', '.join(unknown)}; it takes "
                                    f"{', '.join(sorted(cls.SIZES)) or 'none'}")
        sizes = {name: int(options.get(name, default)) for name, default in cls.SIZES.items()}
        small = [name for name, value in sizes.items() if value < 1]
        if small:
            raise InvalidInputError(f"{cls.kind.upper()}'s {', '.join(small)} must be >= 1")
        return sizes

    def observe(self, factors: Sequence[Factors]) -> None:
        """Training only: update whatever statistics of the gradients the kind keeps."""

    @torch.no_grad()
    def calibrate_(self, factors: Sequence[Factors], inputs: EditInputs,
                   weights: Sequence[torch.Tensor]) -> None:
        """Set each matrix's step so the untrained update is ``TARGET_RELATIVE_STEP`` of its
        weights' norm: a scale-free start whatever the gradients' magnitude."""
        self.log_step.zero_()
        for j, (update, weight) in enumerate(zip(self.updates(factors, inputs), weights)):
            size = float(update.flatten(1).norm(dim=1).mean())
            if size > 0:
                self.log_step[j] = math.log(TARGET_RELATIVE_STEP * float(weight.norm()) / size)

    # -- binding to a base model --------------------------------------------------------------
    def window(self, model: nn.Module) -> EditWindow:
        start, end = self.config.window
        window = edit_window(model, start, end)
        shapes = [_shape(site, which) for site, which in window.matrices]
        if shapes != [tuple(s) for s in self.config.shapes]:
            raise IncompatibleBaseError(
                f"{self.kind} update network was meta-trained for matrices "
                f"{self.config.shapes}; the model's window {window.describe()} has {shapes}")
        return window

    def check_base(self, model: nn.Module) -> Lineage:
        return base_lineage(model, self.config.base_fingerprint,
                            self.config.base_tensor_fingerprints, self.config.architecture,
                            f"{self.kind} update network")

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE),
                  metadata={"kind": self.kind, "base_fingerprint": self.config.base_fingerprint})
        (directory / CONFIG_FILE).write_text(self.config.to_json())
        return directory


UPDATERS: Registry[type[UpdateNet]] = Registry("update network kind")
register_updater = UPDATERS.register


def _shape(site: Any, which: str) -> tuple[int, int]:
    return (site.hidden, site.in_features) if which == "fc1" else (site.in_features,
                                                                    site.hidden)


def new_updater(kind: str, model: nn.Module, window: EditWindow | None = None,
                architecture: str = "", **options: Any) -> UpdateNet:
    """A fresh update network of ``kind`` for ``model``'s ``window`` (options: the kind's
    sizes, None meaning its default)."""
    from . import editors  # noqa: F401 - the kinds register where their editors are defined

    cls = UPDATERS.get(kind)
    window = window or edit_window(model)
    state = model.state_dict()
    config = UpdaterConfig(
        kind=kind, window=(window.start, window.end), weight_names=window.weight_names,
        shapes=[_shape(site, which) for site, which in window.matrices],
        embed_dim=int(model.num_features), num_classes=int(model.num_classes),
        base_fingerprint=fingerprint_state(state),
        base_tensor_fingerprints=tensor_fingerprints(state), architecture=architecture,
        options=cls.resolve_options({k: v for k, v in options.items() if v is not None}))
    return cls(config)


def load_updater(directory: str | Path, map_location: str | torch.device = "cpu"
                 ) -> UpdateNet:
    """An update network saved by :meth:`UpdateNet.save` (safetensors; nothing unpickled)."""
    from . import editors  # noqa: F401 - the kinds register where their editors are defined

    directory = Path(directory)
    try:
        config = UpdaterConfig.from_json((directory / CONFIG_FILE).read_text())
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise VitEditError(f"update network at {directory} is unreadable: {exc}") from exc
    net = UPDATERS.get(config.kind)(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VitEditError(f"update network at {directory} does not match its config: "
                           f"{exc}") from exc
    return net.eval()


# -- gradients and edited forwards ---------------------------------------------------------------
@contextmanager
def episode_deltas(model: nn.Module, window: EditWindow,
                   deltas: Sequence[torch.Tensor | None] | None = None,
                   captured: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                   ) -> Iterator[None]:
    """While active, window matrix ``j`` outputs ``x W^T - x deltas[j]^T`` with one delta per
    episode ((E, out, in); rows of the batch are episode-major), and ``captured`` receives
    each matrix's (input, output) so the output's gradient can be taken."""
    handles = []

    def hook(j: int) -> Callable:
        def run(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            x = args[0]
            delta = deltas[j] if deltas is not None else None
            if delta is not None:
                episodes = delta.shape[0]
                flat = x.reshape(episodes, -1, x.shape[-1])
                out = out - torch.bmm(flat, delta.transpose(1, 2)).reshape(out.shape)
            if captured is not None:
                if not out.requires_grad:   # the first edited layer: start the graph here,
                    # through a zero leaf (an output that is itself a leaf trips up autograd
                    # hooks such as torch's FLOP counter)
                    out = out + torch.zeros(1, dtype=out.dtype, device=out.device,
                                            requires_grad=True)
                captured.append((x, out))
            return out
        return run

    for j, (site, which) in enumerate(window.matrices):
        module = site.fc1(model) if which == "fc1" else site.fc2(model)
        handles.append(module.register_forward_hook(hook(j)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def window_factors(model: nn.Module, window: EditWindow, split: SplitForward,
                   hidden: torch.Tensor, labels: torch.Tensor, episodes: int,
                   deltas: Sequence[torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, list[Factors]]:
    """Logits of ``hidden`` (the window's input, episode-major rows) and every matrix's
    gradient factors of the cross-entropy towards ``labels``, per episode: each episode's
    loss is the mean over its own rows, so its gradient is its edit's alone."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.enable_grad(), episode_deltas(model, window, deltas, captured):
        logits = split.suffix(hidden)
        loss = F.cross_entropy(logits, labels, reduction="sum") * episodes / len(labels)
        grads = torch.autograd.grad(loss, [out for _, out in captured])
    factors = [Factors(x.detach().reshape(episodes, -1, x.shape[-1]),
                       g.detach().reshape(episodes, -1, g.shape[-1]))
               for (x, _), g in zip(captured, grads)]
    return logits.detach(), factors


def matrix_weights(model: nn.Module, window: EditWindow) -> list[torch.Tensor]:
    return [(site.fc1(model) if which == "fc1" else site.fc2(model)).weight
            for site, which in window.matrices]
