"""The reference model's card: what was built, from what, how well it does, and how long it took.

Written as JSON (read back by :func:`~vitedit_ops.reference.build.load_reference`) and as
markdown for people. Every figure in it is measured at build time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CARD_FORMAT = "vitedit-reference-card/1"


def describe_training_time(training: dict[str, Any]) -> str:
    """Wall and CPU time: on a busy machine wall time says little, CPU time still does."""
    threads = training["threads"]
    return (f"{training['seconds']:.1f} s wall / {training['cpu_seconds']:.1f} s CPU on "
            f"{training['device']} ({threads} thread{'s' if threads != 1 else ''})")


@dataclass
class ModelCard:
    """Facts about one reference build; ``recipe_hash`` decides whether a cache is current."""

    recipe_hash: str
    recipe: dict[str, Any]
    fingerprint: str
    weights: str                       # file name, relative to the card's directory
    pool_sizes: dict[str, int]
    split_hashes: dict[str, str]
    accuracy: dict[str, float]         # per pool, unshifted
    shifts: dict[str, dict[str, Any]]  # per shift: accuracy, errors, group sizes
    training: dict[str, Any]           # steps, epochs, seconds, cpu seconds, final loss, device
    build_seconds: float
    versions: dict[str, str]
    created: str
    hypernet: dict[str, Any] | None = None  # path (relative), builder, seconds
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # insertion order: pools as in POOLS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (the card is the commit marker of a build) and markdown beside."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        path.with_suffix(".md").write_text(self.to_markdown())
        return path

    def to_markdown(self) -> str:
        train, spec = self.recipe["train"], self.recipe["spec"]
        kwargs = ", ".join(f"{k}={v}" for k, v in sorted(spec["model_kwargs"].items()))
        lines = [
            "# Reference model card",
            "",
            f"timm `{spec['architecture']}` ({kwargs}), trained on the `train` pool of "
            "scikit-learn's digits (32x32, 3 channels).",
            "",
            f"- fingerprint: `{self.fingerprint}`",
            f"- recipe hash: `{self.recipe_hash}`",
            f"- seed: {train['seed']}, split seed: {self.recipe['data']['split_seed']}",
            f"- training: {self.training['steps']} steps ({self.training['epochs']} epochs), "
            f"{describe_training_time(self.training)}; whole build {self.build_seconds:.1f} s",
            f"- created: {self.created}",
            "",
            "| pool | images | accuracy | ids sha256 |",
            "|---|---:|---:|---|",
        ]
        lines += [f"| {name} | {self.pool_sizes[name]} | {self.accuracy[name]:.4f} | "
                  f"`{self.split_hashes[name][:16]}` |" for name in self.pool_sizes]
        lines += ["", f"Shifted `shift` pool, error groups of >= "
                      f"{self.recipe['shifts']['min_size']} images:", "",
                  "| shift | accuracy | errors | groups (true->pred: size) |",
                  "|---|---:|---:|---|"]
        for name, outcome in self.shifts.items():
            groups = ", ".join(f"{k}: {v}" for k, v in outcome["groups"].items()) or "none"
            lines.append(f"| {name} | {outcome['accuracy']:.4f} | {outcome['errors']} | "
                         f"{groups} |")
        if self.hypernet:
            lines += ["", f"Hypernetwork: `{self.hypernet['path']}` "
                          f"(built by `{self.hypernet['builder']}` in "
                          f"{self.hypernet['seconds']:.1f} s)"]
        versions = ", ".join(f"{k} {v}" for k, v in sorted(self.versions.items()))
        lines += ["", f"Versions: {versions}", ""]
        return "\n".join(lines)
