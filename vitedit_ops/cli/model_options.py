"""The model-description options every command that loads a checkpoint takes, so that
``edit``, ``meta-train``, ``suite build``, ``gate``, ``export`` and ``register-base`` read a
model the same way (``vitedit_ops.models.ModelDescription``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from torch import nn

    from ..models import ModelDescription, ModelSpec

Arch = Annotated[str | None, typer.Option(
    "--arch", help="timm model name or class path (package.module:Class), when no config is "
                   "beside the checkpoint.")]
ModelArg = Annotated[list[str], typer.Option(
    "--model-arg", help="Constructor keyword NAME=VALUE with --arch (JSON value, e.g. "
                        "img_size=384, depths=[2,2,6,2]); repeatable.")]
DataArg = Annotated[list[str], typer.Option(
    "--data", help="Data config NAME=VALUE: mean=0.5,0.5,0.5 std=... input_size=3,384,384 "
                   "interpolation=bicubic crop_pct=0.9 crop_mode=center|squash|border; "
                   "repeatable, overrides the config's.")]
ModelConfig = Annotated[Path | None, typer.Option(
    "--model-config", help="Model description JSON: ours, timm's config.json (save_for_hf), "
                           "or {\"class\": ..., \"kwargs\": {...}, \"num_classes\": N}.")]

_SEQUENCES = {"mean": float, "std": float, "input_size": int}


def _pairs(items: list[str], option: str) -> dict[str, str]:
    from ..errors import InvalidInputError

    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInputError(f"bad {option} {item!r}: expected NAME=VALUE")
        found[name.strip()] = value.strip()
    return found


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _data_value(name: str, value: str) -> Any:
    from ..errors import InvalidInputError

    try:
        if name in _SEQUENCES:
            return tuple(_SEQUENCES[name](v) for v in value.strip("()[]").split(","))
        return float(value) if name == "crop_pct" else value
    except ValueError:
        raise InvalidInputError(f"bad --data {name}={value!r}: expected "
                                f"{'comma-separated numbers' if name in _SEQUENCES else 'a number'}"
                                ) from None


def describe(arch: str | None, model_args: list[str], data: list[str],
             model_config: Path | None) -> ModelDescription:
    """The options as one model description (refuses contradictory ones in one line)."""
    from ..models import ModelDescription

    return ModelDescription(
        config=model_config, architecture=arch,
        model_kwargs={k: _json_or_text(v) for k, v in _pairs(model_args, "--model-arg").items()},
        data_config={k: _data_value(k, v) for k, v in _pairs(data, "--data").items()})


def load(checkpoint: Path, description: ModelDescription, allow_nonfinite: bool = False
         ) -> tuple[nn.Module, ModelSpec]:
    """The checkpoint's model on the configured device, and its spec."""
    from ..device import resolve_device
    from ..settings import get_settings

    model, spec = description.load(checkpoint, allow_nonfinite=allow_nonfinite)
    return model.to(resolve_device(get_settings().device)), spec
