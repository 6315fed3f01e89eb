"""Load timm classifiers from a name plus a local checkpoint, and fingerprint their weights.

Never falls back to random weights: a missing, unreadable or mismatched checkpoint raises
:class:`CheckpointError` naming the file and the offending keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

from . import scoped, side
from .errors import CheckpointError

SPEC_SUFFIX = ".json"


@dataclass
class ModelSpec:
    """What is needed to rebuild a timm classifier: the timm config saved beside its weights."""

    architecture: str
    num_classes: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    class_names: list[str] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Accept our own spec or a Hugging Face style timm ``config.json``."""
        if "pretrained_cfg" in data and "model_kwargs" not in data:
            cfg = data["pretrained_cfg"]
            return cls(
                architecture=data["architecture"],
                num_classes=int(data.get("num_classes", cfg.get("num_classes", 1000))),
                model_kwargs=dict(data.get("model_args", {})),
                input_size=tuple(cfg.get("input_size", (3, 224, 224))),
                mean=tuple(cfg.get("mean", cls.mean)),
                std=tuple(cfg.get("std", cls.std)),
                interpolation=cfg.get("interpolation", "bicubic"),
                crop_pct=float(cfg.get("crop_pct", 1.0)),
                class_names=data.get("label_names"),
            )
        data = dict(data)
        for key in ("input_size", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"model config {path}: unreadable ({exc})") from exc

    @classmethod
    def for_timm_model(cls, architecture: str, num_classes: int | None = None,
                       **model_kwargs: Any) -> ModelSpec:
        """Spec of a timm architecture with its own pretrained config (input size, mean/std...)."""
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes or 1000,
                                  **model_kwargs)
        cfg = model.pretrained_cfg
        img_size = model_kwargs.get("img_size")
        input_size = tuple(cfg.get("input_size", (3, 224, 224)))
        if img_size is not None:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            input_size = (model_kwargs.get("in_chans", 3), *size)
        return cls(
            architecture=architecture, num_classes=model.num_classes, model_kwargs=model_kwargs,
            input_size=input_size, mean=tuple(cfg.get("mean", cls.mean)),
            std=tuple(cfg.get("std", cls.std)), interpolation=cfg.get("interpolation", "bicubic"),
            crop_pct=float(cfg.get("crop_pct", 1.0)),
        )

    def build(self) -> nn.Module:
        """An uninitialised model of this spec (random weights: only for loading into)."""
        try:
            return timm.create_model(self.architecture, pretrained=False,
                                     num_classes=self.num_classes, **self.model_kwargs)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise CheckpointError(f"cannot build timm model {self.architecture!r}: {exc}") from exc

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's data config (input size, interpolation, mean/std, crop) for transforms."""
        return {"input_size": self.input_size, "interpolation": self.interpolation,
                "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct,
                "crop_mode": "center"}


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from safetensors or a weights-only torch file; never unpickle code.

    timm's reader unwraps training checkpoints (EMA weights first, then ``state_dict`` or
    ``model``) and strips DDP / torch.compile key prefixes; ``weights_only`` loading refuses
    any pickle that would build objects other than tensors and plain containers.
    """
    path = Path(path)
    _require_file(path)
    try:
        state = timm_load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, truncated...
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def _spec_beside(checkpoint: Path) -> Path | None:
    for candidate in (checkpoint.with_suffix(SPEC_SUFFIX), checkpoint.parent / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def load_model(checkpoint: str | Path, spec: ModelSpec | str | Path | None = None,
               architecture: str | None = None, num_classes: int | None = None, *,
               allow_nonfinite: bool = False, **model_kwargs: Any) -> tuple[nn.Module, ModelSpec]:
    """Build a timm model and load a local checkpoint into it, strictly.

    The spec comes from ``spec`` (object or JSON path), else a JSON beside the checkpoint,
    else ``architecture`` (+ ``num_classes``/``model_kwargs``) with timm's pretrained config.
    Returns the model in eval mode and the spec it was built from. NaN/Inf weights are refused
    unless ``allow_nonfinite`` (the gate loads a broken candidate to fail it by name).
    """
    checkpoint = Path(checkpoint)
    _require_file(checkpoint)  # before looking for its config: name the real problem
    if isinstance(spec, (str, Path)):
        spec = ModelSpec.load(spec)
    if spec is None and architecture is None:
        beside = _spec_beside(checkpoint)
        if beside is None:
            raise CheckpointError(
                f"no model config for {checkpoint}: pass a timm architecture name or put "
                f"{checkpoint.with_suffix(SPEC_SUFFIX).name} beside it")
        spec = ModelSpec.load(beside)
    state = read_state_dict(checkpoint)
    if spec is None:
        if num_classes is None:
            num_classes = _infer_num_classes(state)
        spec = ModelSpec.for_timm_model(architecture, num_classes=num_classes, **model_kwargs)
    model = spec.build()
    metadata = scoped.saved_metadata(checkpoint)
    scoped.prepare(model, metadata)  # scoped patches saved with it
    side.prepare(model, metadata)  # side modules (GRACE codebook, T-Patcher neurons)
    _load_strict(model, state, checkpoint, allow_nonfinite)
    model.eval()
    return model, spec


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path,
                 allow_nonfinite: bool = False) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state)
                        if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            shown = ", ".join(f"{k}: checkpoint {tuple(state[k].shape)} vs model "
                              f"{tuple(expected[k].shape)}" for k in mismatched[:3])
            parts.append(f"{len(mismatched)} with wrong shape ({shown})")
        raise CheckpointError(f"checkpoint {source} does not fit {type(model).__name__}: "
                              + "; ".join(parts))
    for key, value in state.items():
        if not allow_nonfinite and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {source}: tensor {key} holds NaN or Inf")
    model.load_state_dict(state, strict=True)


def save_model(model: nn.Module, spec: ModelSpec, path: str | Path,
               metadata: dict[str, str] | None = None) -> Path:
    """Write weights as safetensors and the spec as JSON beside them; return the weights path."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"fingerprint": fingerprint_state(state), **scoped.layout_metadata(model),
            **side.layout_metadata(model), **(metadata or {})}
    save_file(state, str(path), metadata=meta)
    path.with_suffix(SPEC_SUFFIX).write_text(spec.to_json())
    return path


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (device independent)."""
    t = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_fingerprints(model_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, str]:
    """Per-tensor digests: lets a hypernetwork recognise descendants of its base model."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {name: tensor_digest(t) for name, t in sorted(state.items())}


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """One sha256 over every tensor digest, in name order: the identity of a set of weights."""
    h = hashlib.sha256()
    for name, digest in tensor_fingerprints(state).items():
        h.update(f"{name}={digest}\n".encode())
    return h.hexdigest()


def fingerprint(model: nn.Module) -> str:
    """Identity of a model's weights; changes when any weight bit changes."""
    return fingerprint_state(model.state_dict())
