"""Error groups: the unit of work that crosses from monitoring to the editor.

Plain and serialisable so that monitoring/ can produce them and flows/ can ship them between
tasks without either side knowing the other's storage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageRef:
    """A content-addressed image and the production record it came from."""

    sha256: str
    uri: str
    record_id: str | None = None
    served_at: str | None = None  # ISO 8601 time of that prediction (when the image arrived)


@dataclass(frozen=True)
class ErrorGroup:
    """Misclassified images sharing (true class, predicted class).

    ``edit_images`` are edited on; ``heldout_images`` measure generalization and are never
    shown to the editor.
    """

    true_class: int
    predicted_class: int
    edit_images: tuple[ImageRef, ...]
    heldout_images: tuple[ImageRef, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        """Stable name of the group, e.g. ``"3->8"`` (true -> predicted)."""
        return f"{self.true_class}->{self.predicted_class}"

    @property
    def size(self) -> int:
        return len(self.edit_images) + len(self.heldout_images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorGroup:
        return cls(
            true_class=int(data["true_class"]), predicted_class=int(data["predicted_class"]),
            edit_images=tuple(ImageRef(**r) for r in data.get("edit_images", ())),
            heldout_images=tuple(ImageRef(**r) for r in data.get("heldout_images", ())),
            metadata=dict(data.get("metadata", {})),
        )
