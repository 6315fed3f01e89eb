"""Load classifiers from one model description plus a local checkpoint, and fingerprint
their weights.

A model description is the same everywhere (CLI, flows, registry): a timm model name or a
class path, constructor keyword arguments, and the data config the model was trained with
(input size, mean/std, interpolation, crop_pct, crop_mode). It is read from our own spec JSON,
timm's ``config.json`` (``save_for_hf``), a JSON with a ``class`` key, or given piece by piece.
Never falls back to random weights: a missing, unreadable or mismatched checkpoint raises
:class:`CheckpointError` naming the file and the offending keys.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_model_data_config
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

from . import scoped, side
from .errors import CheckpointError

SPEC_SUFFIX = ".json"
DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# keys that would make timm download weights or read a file we did not check
REFUSED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")
# a JSON with a ``class`` key: where training scripts keep the constructor's arguments
CLASS_KWARGS_KEYS = ("kwargs", "init_args", "model_kwargs", "model_args")
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*|\.[A-Za-z_]\w*)")
log = logging.getLogger(__name__)


def is_class_path(architecture: str) -> bool:
    """``package.module:Class`` (or ``package.module.Class``, not a timm name) is a class
    path; anything else is a timm model name (optionally with a ``.tag``)."""
    if ":" in architecture:
        return True
    return "." in architecture and not timm.is_model(architecture.partition(".")[0])


def import_model_class(path: str) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass ``path`` names. Only imports the module and looks the
    name up (nothing is called, nothing unpickled); anything but such a class is refused."""
    if not _CLASS_PATH.fullmatch(path):
        raise CheckpointError(f"model class {path!r} is not a class path "
                              "(package.module:Class)")
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - not found, or its import raised: name it
        raise CheckpointError(f"model class {path!r}: cannot import {module_name!r} "
                              f"({type(exc).__name__}: {exc})") from exc
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        what = "nothing" if found is None else type(found).__name__
        raise CheckpointError(f"model class {path!r} is not a torch.nn.Module subclass "
                              f"({module_name}.{name} is {what})")
    return found


def _accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _size_from_kwargs(kwargs: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The input size ``img_size``/``in_chans`` ask for, if they do."""
    img_size = kwargs.get("img_size")
    if img_size is None:
        return None
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return (int(kwargs.get("in_chans", 3)), *map(int, size))


def _class_names(found: Any) -> list[str] | None:
    """timm's ``label_names`` are a list, or a dict of index -> name."""
    if isinstance(found, Mapping):
        return [str(found[k]) for k in sorted(found, key=int)]
    return list(map(str, found)) if found else None


@dataclass
class ModelSpec:
    """What is needed to rebuild a classifier and feed it: a timm name or class path, its
    keyword arguments and the data config it was trained with."""

    architecture: str
    num_classes: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    class_names: list[str] | None = None
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        kwargs = dict(self.model_kwargs)
        refused = [k for k in REFUSED_KWARGS if k in kwargs]
        if refused:
            raise CheckpointError(f"model kwargs {', '.join(refused)}: weights come from the "
                                  "local checkpoint only")
        # timm's own exports repeat num_classes among the constructor's arguments
        if "num_classes" in kwargs and int(kwargs.pop("num_classes")) != int(self.num_classes):
            raise CheckpointError(f"num_classes {self.num_classes} disagrees with the model "
                                  f"kwargs' num_classes {self.model_kwargs['num_classes']}")
        self.model_kwargs = kwargs
        self.num_classes = int(self.num_classes)
        self.input_size = tuple(int(v) for v in self.input_size)
        self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))
        self.crop_pct = float(self.crop_pct)
        problems = []
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            problems.append(f"input_size {self.input_size} is not (channels, height, width)")
        elif not len(self.mean) == len(self.std) == self.input_size[0]:
            problems.append(f"mean {self.mean} and std {self.std} need one value per channel "
                            f"({self.input_size[0]})")
        if any(s <= 0 for s in self.std):
            problems.append(f"std {self.std} must be positive")
        if not self.crop_pct > 0:
            problems.append(f"crop_pct {self.crop_pct} must be positive")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode {self.crop_mode!r} is not one of {', '.join(CROP_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of "
                            f"{', '.join(INTERPOLATIONS)}")
        if problems:
            raise CheckpointError(f"model description of {self.architecture}: "
                                  + "; ".join(problems))

    def to_json(self) -> str:
        data = asdict(self)
        if data["crop_mode"] == "center":  # added later: specs written before stay identical
            del data["crop_mode"]
        return json.dumps(data, indent=2, sort_keys=True)

    def with_data(self, data_config: Mapping[str, Any] | None) -> ModelSpec:
        """This spec with data-config values (``DATA_KEYS``) replaced."""
        if not data_config:
            return self
        unknown = sorted(set(data_config) - set(DATA_KEYS))
        if unknown:
            raise CheckpointError(f"unknown data config key(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(DATA_KEYS)}")
        return replace(self, **dict(data_config))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Accept our own spec, a timm ``config.json`` (``save_for_hf``) or a JSON with a
        ``class`` key (class path, its kwargs under one of ``CLASS_KWARGS_KEYS``, and
        optionally ``num_classes``, ``data_config`` and the data keys themselves)."""
        if "class" in data:
            kwargs = next((dict(data[k]) for k in CLASS_KWARGS_KEYS if k in data), {})
            num_classes = data.get("num_classes", kwargs.get("num_classes"))
            if num_classes is None:
                raise KeyError("num_classes (top level or among the kwargs)")
            config = {**{k: data[k] for k in DATA_KEYS if k in data},
                      **dict(data.get("data_config", {}))}
            return cls(architecture=data["class"], num_classes=num_classes,
                       model_kwargs=kwargs,
                       class_names=_class_names(data.get("class_names",
                                                         data.get("label_names")))
                       ).with_data({"input_size": _size_from_kwargs(kwargs) or (3, 224, 224),
                                    **config})
        if "pretrained_cfg" in data and "model_kwargs" not in data:
            cfg = data["pretrained_cfg"]
            kwargs = dict(data.get("model_args", {}))
            return cls(
                architecture=data["architecture"],
                num_classes=int(data.get("num_classes", cfg.get("num_classes", 1000))),
                model_kwargs=kwargs,
                input_size=tuple(cfg.get("input_size") or _size_from_kwargs(kwargs)
                                 or (3, 224, 224)),
                mean=tuple(cfg.get("mean", cls.mean)), std=tuple(cfg.get("std", cls.std)),
                interpolation=cfg.get("interpolation", "bicubic"),
                crop_pct=float(cfg.get("crop_pct", 1.0)),
                crop_mode=cfg.get("crop_mode", "center"),
                class_names=_class_names(data.get("label_names", cfg.get("label_names"))),
            )
        return cls(**dict(data))

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except CheckpointError as exc:
            raise CheckpointError(f"model config {path}: {exc}") from exc
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"model config {path}: unreadable ({type(exc).__name__}: "
                                  f"{exc})") from exc

    @classmethod
    def describe(cls, architecture: str, num_classes: int | None = None,
                 model_kwargs: Mapping[str, Any] | None = None,
                 data_config: Mapping[str, Any] | None = None) -> ModelSpec:
        """Spec of a timm name or class path with these kwargs. What ``data_config`` leaves
        out comes from the model's own pretrained config (timm's defaults for a class without
        one); an input size from ``img_size``/``in_chans``. A mean/std taken from those
        defaults is logged: they are ImageNet's for most timm models."""
        kwargs = dict(model_kwargs or {})
        num_classes = num_classes or kwargs.get("num_classes") or 1000
        spec = cls(architecture=architecture, num_classes=num_classes, model_kwargs=kwargs)
        model = spec.build()
        resolved = resolve_model_data_config(model)
        size = _size_from_kwargs(kwargs)
        given = dict(data_config or {})
        if not {"mean", "std"} <= set(given):
            log.warning("%s: no mean/std given, using the model's defaults (mean %s, std %s); "
                        "pass the ones it was trained with if they differ", architecture,
                        resolved["mean"], resolved["std"])
        defaults = {"input_size": size or tuple(resolved["input_size"]),
                    **{k: resolved[k] for k in DATA_KEYS[1:] if k in resolved}}
        return replace(spec, num_classes=getattr(model, "num_classes", num_classes)
                       ).with_data({**defaults, **given})

    @classmethod
    def for_timm_model(cls, architecture: str, num_classes: int | None = None,
                       **model_kwargs: Any) -> ModelSpec:
        """``describe`` with the kwargs spelled as keywords (and the model's own data config)."""
        return cls.describe(architecture, num_classes, model_kwargs)

    def build(self) -> nn.Module:
        """An uninitialised model of this spec (random weights: only for loading into)."""
        if is_class_path(self.architecture):
            model_class = import_model_class(self.architecture)
            kwargs = dict(self.model_kwargs)
            if _accepts(model_class, "num_classes"):
                kwargs["num_classes"] = self.num_classes
            try:
                return model_class(**kwargs)
            except Exception as exc:  # noqa: BLE001 - bad kwargs: name the class and why
                raise CheckpointError(f"cannot build {self.architecture} with "
                                      f"{sorted(kwargs)}: {type(exc).__name__}: {exc}") from exc
        try:
            return timm.create_model(self.architecture, pretrained=False,
                                     num_classes=self.num_classes, **self.model_kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:  # unknown model, bad kwargs
            raise CheckpointError(f"cannot build timm model {self.architecture!r}: "
                                  f"{type(exc).__name__}: {exc}") from exc

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's data config (input size, interpolation, mean/std, crop) for transforms."""
        return {"input_size": self.input_size, "interpolation": self.interpolation,
                "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode}


@dataclass(frozen=True)
class ModelDescription:
    """How a user describes a checkpoint's model at any entry point: a description file
    (``config``: ours, timm's ``config.json`` or a ``class``-key JSON) or a timm name /
    class path with constructor kwargs; ``data_config`` overrides either. Empty: the JSON
    beside the checkpoint (``<name>.json`` or ``config.json``)."""

    config: str | Path | None = None
    architecture: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config is not None and self.architecture is not None:
            raise CheckpointError("give a model config file or an architecture, not both")
        if self.model_kwargs and self.architecture is None:
            raise CheckpointError("model kwargs need an architecture (a timm name or class "
                                  "path); with a config file, put them in it")

    def load(self, checkpoint: str | Path, *, allow_nonfinite: bool = False
             ) -> tuple[nn.Module, ModelSpec]:
        return load_model(checkpoint, self.config, self.architecture,
                          data_config=self.data_config, allow_nonfinite=allow_nonfinite,
                          **self.model_kwargs)


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
               data_config: Mapping[str, Any] | None = None, allow_nonfinite: bool = False,
               **model_kwargs: Any) -> tuple[nn.Module, ModelSpec]:
    """Build a model and load a local checkpoint into it, strictly.

    The spec comes from ``spec`` (object or JSON path), else a JSON beside the checkpoint,
    else ``architecture`` (a timm name or class path, + ``num_classes``/``model_kwargs``;
    ``num_classes`` defaults to the checkpoint's head). ``data_config`` (mean, std,
    input_size, interpolation, crop_pct, crop_mode) overrides whichever it is. Returns the
    model in eval mode and the spec it was built from. NaN/Inf weights are refused unless
    ``allow_nonfinite`` (the gate loads a broken candidate to fail it by name).
    """
    checkpoint = Path(checkpoint)
    _require_file(checkpoint)  # before looking for its config: name the real problem
    if isinstance(spec, (str, Path)):
        spec = ModelSpec.load(spec)
    if spec is None and architecture is None:
        beside = _spec_beside(checkpoint)
        if beside is None:
            raise CheckpointError(
                f"no model config for {checkpoint}: pass --arch (a timm name or class path, "
                f"with --model-arg for its size) or --model-config, or put "
                f"{checkpoint.with_suffix(SPEC_SUFFIX).name} beside it")
        spec = ModelSpec.load(beside)
    state = read_state_dict(checkpoint)
    if spec is None:
        if num_classes is None and "num_classes" not in model_kwargs:
            num_classes = _infer_num_classes(state)
        spec = ModelSpec.describe(architecture, num_classes, model_kwargs, data_config)
    else:
        spec = spec.with_data(data_config)
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
