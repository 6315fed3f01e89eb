"""What flows through ingest: raw records in, one report out.

Shared by the file ingest, the serving logger and the feedback API so all three count and
quarantine the same way.
"""

from __future__ import annotations

import json
import reprlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .store import BatchOutcome, QuarantineEntry
from .validation import Reason, Rejected

_REPR = reprlib.Repr()  # bounded in depth and size, unlike repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring = 40, 1000, 1000, 16_384


@dataclass(frozen=True)
class RawRecord:
    """One record as received: ``data`` is None when it could not even be parsed.

    ``raw`` is the text kept verbatim in quarantine; ``origin`` says where it came from
    (``file:line``, ``logger``, ``api``); ``image`` carries bytes handed over in-process. An
    in-process record has no text (``source`` None): its ``raw`` is made from ``data`` only
    when something needs it (a refusal), not for every record the logger stores.
    """

    origin: str
    source: str | None
    data: dict[str, Any] | None
    parse_error: str | None = None
    image: bytes | None = field(default=None, repr=False)
    image_decoded: bool = False  # the sender decoded ``image`` in full already

    @classmethod
    def from_mapping(cls, data: dict[str, Any], origin: str, image: bytes | None = None,
                     image_decoded: bool = False) -> RawRecord:
        """An in-process record (a copy of ``data``)."""
        return cls(origin=origin, source=None, data=dict(data), image=image,
                   image_decoded=image_decoded)

    @cached_property
    def raw(self) -> str:
        """The text as received; for an in-process record its JSON, or its (bounded) repr
        when it is not JSON (mixed key types, a cycle, deep nesting): validation says why."""
        if self.source is not None:
            return self.source
        try:
            return json.dumps(self.data, default=str, sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            return _REPR.repr(self.data)

    def reject(self, kind: str, exc: Rejected) -> QuarantineEntry:
        record_id = None
        if self.data is not None:
            value = self.data.get("id", self.data.get("prediction_id"))
            record_id = str(value)[:200] if value is not None else None
        return QuarantineEntry(kind, exc.reason, exc.detail, self.origin, self.raw, record_id)

    def parsed(self) -> dict[str, Any]:
        """The parsed mapping, or ``Rejected(malformed)``."""
        if self.data is None:
            raise Rejected(Reason.MALFORMED, self.parse_error or "unparsable record")
        return self.data


@dataclass
class IngestReport:
    """Counts of one ingest: accepted, duplicate, quarantined (by reason), pending feedback."""

    accepted: int = 0
    duplicates: int = 0
    pending: int = 0
    batches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())

    def add(self, outcome: BatchOutcome) -> None:
        self.accepted += outcome.accepted
        self.duplicates += outcome.duplicates
        self.pending += outcome.pending
        self.reasons.update(outcome.reasons)
        self.batches += 1

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "quarantined": self.quarantined, "pending": self.pending,
                "batches": self.batches, "reasons": dict(sorted(self.reasons.items()))}

    def summary(self) -> str:
        """One line for the CLI, e.g. ``accepted 98, duplicate 1, quarantined 1 (malformed 1)``."""
        text = (f"accepted {self.accepted}, duplicate {self.duplicates}, "
                f"quarantined {self.quarantined}")
        if self.reasons:
            text += " (" + ", ".join(f"{r} {n}" for r, n in sorted(self.reasons.items())) + ")"
        if self.pending:
            text += f"; {self.pending} feedback record(s) await their prediction"
        return text


def batched(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
