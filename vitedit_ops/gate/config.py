"""Gate thresholds: documented defaults, a config file, and ``name=value`` overrides.

The defaults are the release policy (docs/gate.md says why each value); a deployment may tighten
or loosen them in a TOML/JSON/YAML file (flat, or under a ``gate`` table) and a CLI run may
override single values, so that every verdict can be traced back to the thresholds it used.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError


@dataclass(frozen=True)
class GateConfig:
    """One threshold per check. Shares are in [0, 1]; the accuracy drop is in percentage points."""

    reliability_min: float = 1.0          # every edit image must now be right
    generalization_min: float = 0.5       # most of the group's unseen images must be fixed
    locality_min: float = 0.99            # clean suite: share of unchanged top-1 predictions
    sensitive_min: float = 0.90           # sensitive subset: share of unchanged predictions
    retention_min: float = 0.98           # images fixed by earlier edits still right
    accuracy_drop_max: float = 0.5        # labelled clean accuracy, points below the base
    norm_growth_max: float = 3.0          # max Frobenius-norm ratio of any changed weight
    onnx_max_abs_diff: float = 1e-4       # max |logit difference| torch vs onnxruntime
    onnx_top1_agreement_min: float = 1.0  # share of identical top-1 classes

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise InvalidInputError(f"gate setting {f.name} must be a finite number, "
                                        f"got {value!r}")
            object.__setattr__(self, f.name, float(value))
            if f.name.endswith("_min") and not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"gate setting {f.name} is a share in [0, 1], got {value}")
        if self.accuracy_drop_max < 0 or self.onnx_max_abs_diff < 0:
            raise InvalidInputError("accuracy_drop_max and onnx_max_abs_diff must be >= 0")
        if self.norm_growth_max < 1.0:
            raise InvalidInputError("norm_growth_max is a ratio >= 1 (1 = no growth allowed)")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GateConfig:
        """Settings from a mapping; unknown names are refused (a typo must not loosen a gate)."""
        if "gate" in data and isinstance(data["gate"], Mapping):
            data = data["gate"]
        unknown = sorted(set(data) - set(cls.names()))
        if unknown:
            raise InvalidInputError(f"unknown gate setting(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(cls.names())}")
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | Path) -> GateConfig:
        """Read a ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file."""
        path = Path(path)
        try:
            text = path.read_text()
            if path.suffix == ".toml":
                data = tomllib.loads(text)
            elif path.suffix == ".json":
                data = json.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                raise InvalidInputError(f"gate config {path}: use .toml, .json, .yaml or .yml")
        except InvalidInputError:
            raise
        except Exception as exc:  # missing file, syntax error, PyYAML absent or YAMLError
            raise InvalidInputError(f"gate config {path} is unreadable: {exc}") from exc
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"gate config {path} must hold a table of settings")
        return cls.from_mapping(data)

    def with_overrides(self, assignments: Sequence[str]) -> GateConfig:
        """Apply ``name=value`` strings (CLI ``--set``) on top of this config."""
        changes: dict[str, float] = {}
        for item in assignments:
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in self.names():
                raise InvalidInputError(f"bad override {item!r}: expected NAME=VALUE with NAME "
                                        f"one of {', '.join(self.names())}")
            try:
                changes[name] = float(value)
            except ValueError:
                raise InvalidInputError(f"bad override {item!r}: {value!r} is not a number") \
                    from None
        return replace(self, **changes)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> GateConfig:
        """Defaults, then the file (if any), then the overrides."""
        config = cls.from_file(path) if path is not None else cls()
        return config.with_overrides(overrides)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
