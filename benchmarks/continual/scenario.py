"""The continual benchmark's world: nights of production traffic with a new shift each day.

Every day the champion serves clean digits plus a shifted subpopulation it has never seen
(one shift kind per day, some kinds coming back later); reviewers label every request. The
``shift`` pool of the reference data is split once, by class, into a *served* half (the
source of every shifted image production sees) and an *evaluation* half that is never served
in any form: each shown shift kind applied to it measures how many of that shift's errors a
night really repaired, on images no edit saw. Clean agreement with the base is measured on
the ``validation`` pool plus the evaluation half unshifted, also never served. Clean traffic
comes from the ``train`` pool; the ``locality`` pool is the gate suite and the ``preserved``
pool the lineage's held-out preserved pool, as in production.

A shift kind is a registered shift with fixed parameters, so a kind that comes back is the
same kind of change; each day draws its own images and per-image randomness.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import torch

from vitedit_ops.imagefiles import png_bytes
from vitedit_ops.reference import LabeledImages, ReferenceData, apply_shift
from vitedit_ops.reference.data import stratified_order

SPLIT_SEED = 7
# the days of the full run: eight kinds, two of them (thicken, rotate) coming back
DAYS: tuple[str, ...] = ("thicken", "rotate", "shear", "blur", "translate", "thicken",
                         "shrink", "strike", "rotate", "noise")
QUICK_DAYS: tuple[str, ...] = ("thicken", "shear")
KIND_PARAMS: dict[str, dict[str, Any]] = {"translate": {"direction_degrees": 30.0}}
FEEDBACK_DELAY = timedelta(hours=6)
NIGHT_OFFSET = timedelta(hours=8)  # the nightly runs at 08:00 after the day, feedback in


@dataclass(frozen=True)
class Request:
    """One production request and the truth a reviewer reports later."""

    prediction_id: str
    image: bytes
    pixels: torch.Tensor
    true_class: int
    subpopulation: str


@dataclass(frozen=True)
class Scenario:
    """Which shift comes on which day, how much traffic, and when the days are."""

    days: tuple[str, ...] = DAYS
    clean_per_day: int = 200
    shifted_per_day: int = 120
    seed: int = 0
    start: datetime = field(default_factory=lambda: (datetime.now(UTC).replace(
        hour=0, minute=0, second=0, microsecond=0) - timedelta(days=len(DAYS) + 3)))

    @property
    def kinds(self) -> list[str]:
        """Distinct shift kinds, in the order they first appear."""
        return list(dict.fromkeys(self.days))

    def day_start(self, day: int) -> datetime:
        return self.start + timedelta(days=day)

    def feedback_time(self, day: int) -> datetime:
        return self.day_start(day + 1) + FEEDBACK_DELAY

    def night_time(self, day: int) -> datetime:
        return self.day_start(day + 1) + NIGHT_OFFSET

    def to_dict(self) -> dict[str, Any]:
        return {"days": list(self.days), "clean_per_day": self.clean_per_day,
                "shifted_per_day": self.shifted_per_day, "seed": self.seed,
                "split_seed": SPLIT_SEED, "kind_params": KIND_PARAMS}


def as_served(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels as serving decodes them from the PNG a client uploads (8 bits per channel)."""
    return (pixels.clamp(0, 1) * 255).round() / 255


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


@dataclass(frozen=True)
class World:
    """The scenario cut from the reference data's pools."""

    scenario: Scenario
    served: LabeledImages          # the shift pool's half production's shifted images come from
    evaluation: LabeledImages      # the other half: never served in any form
    clean_traffic: LabeledImages
    clean_eval: LabeledImages

    @classmethod
    def build(cls, data: ReferenceData, scenario: Scenario) -> World:
        order = stratified_order(data.shift.labels.numpy(), SPLIT_SEED)
        half = len(order) // 2
        served = data.shift.subset(np.sort(order[:half]))
        evaluation = data.shift.subset(np.sort(order[half:]))
        clean_eval = LabeledImages(torch.cat([data.validation.pixels, evaluation.pixels]),
                                   torch.cat([data.validation.labels, evaluation.labels]),
                                   [*data.validation.ids, *[f"{i}-clean" for i in
                                                            evaluation.ids]])
        return cls(scenario, served, evaluation, data.train, clean_eval)

    def requests(self, day: int) -> list[Request]:
        """Day ``day``'s requests (0-based): clean traffic and the day's shifted
        subpopulation, shuffled as production mixes them."""
        kind = self.scenario.days[day]
        rng = np.random.default_rng(_seed("day", self.scenario.seed, day))
        clean = self.clean_traffic.subset(np.sort(rng.choice(
            len(self.clean_traffic), min(self.scenario.clean_per_day,
                                         len(self.clean_traffic)), replace=False)))
        source = self.served.subset(np.sort(rng.choice(
            len(self.served), min(self.scenario.shifted_per_day, len(self.served)),
            replace=False)))
        shifted = apply_shift(kind, source.pixels, seed=_seed("shift", self.scenario.seed, day),
                              **KIND_PARAMS.get(kind, {}))
        out = [Request(f"d{day}-{pid}", png_bytes(p), p, int(y), "clean")
               for pid, p, y in zip(clean.ids, clean.pixels, clean.labels)]
        out += [Request(f"d{day}-{pid}-{kind}", png_bytes(p), p, int(y), kind)
                for pid, p, y in zip(source.ids, shifted, source.labels)]
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def evaluation_set(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``kind`` applied to the never-served half (one fixed draw per kind)."""
        pixels = apply_shift(kind, self.evaluation.pixels, seed=_seed("eval", kind),
                             **KIND_PARAMS.get(kind, {}))
        return as_served(pixels), self.evaluation.labels
