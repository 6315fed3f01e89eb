"""The demo's two production days, cut from the reference data's pools.

Clean traffic comes from the validation pool and part of the train pool, never from the
locality pool (the gate suite) or the preserved pool (registered with the base: held-out
images every edit must keep); each day also brings a shifted subpopulation the model was not
trained for: digits written with a thick pen (thickened strokes), each day from its own half
of the shift pool.
Requests are shuffled so a day mixes them, as production does.
"""

from __future__ import annotations

import torch

from vitedit_ops.reference import ReferenceData, apply_shift

from vitedit_ops.imagefiles import png_bytes as png

from .serving import Request

CLEAN_TRAIN = 100
DAYS: dict[int, tuple[str, int]] = {1: ("thicken", 11), 2: ("translate", 12)}  # shift, seed


def day_requests(data: ReferenceData, day: int) -> list[Request]:
    """Day ``day``'s requests: the clean pools plus its shifted half of the shift pool."""
    shift, seed = DAYS[day]
    half = len(data.shift) // 2
    pool = data.shift.subset(range(half) if day == 1 else range(half, len(data.shift)))
    shifted = apply_shift(shift, pool.pixels, seed=seed)
    clean = (data.validation, data.train.subset(range(CLEAN_TRAIN)))
    requests = [Request(f"day{day}-{pid}", png(pixels), int(label), "clean")
                for pool_ in clean for pid, pixels, label in zip(pool_.ids, pool_.pixels,
                                                                 pool_.labels)]
    requests += [Request(f"day{day}-{pid}-{shift}", png(pixels), int(label), shift)
                 for pid, pixels, label in zip(pool.ids, shifted, pool.labels)]
    order = torch.randperm(len(requests), generator=torch.Generator().manual_seed(seed))
    return [requests[i] for i in order.tolist()]
