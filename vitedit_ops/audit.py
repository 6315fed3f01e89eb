"""The promotion audit: what one move of a registered model's alias records, and where.

The registry moves aliases; an audit trail that the registry's users cannot edit keeps the
record (the monitoring store's append-only table). Both adapters meet on these types, so
neither imports the other: the composition (CLI, flows) hands the trail to the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Protocol

# the fields two records of the same move must agree on (``seq`` and ``alias`` locate it)
COMPARED = ("action", "version", "previous", "by", "at", "forced", "reason", "overridden",
            "authenticated")


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias onto a version.

    ``by`` is the user the tracking server authenticated when ``authenticated`` is true;
    otherwise the name the promoter gave (``VITEDIT_USER`` or the login name), unverified.
    """

    seq: int
    alias: str
    action: str
    version: str
    previous: str
    by: str
    at: str  # ISO 8601, UTC, whole seconds
    forced: bool = False
    reason: str = ""
    overridden: str = ""  # what --force overrode (gate verdict, hash mismatches)
    authenticated: bool = False


class AuditTrail(Protocol):
    """An append-only record of alias moves (insert only: no update, no delete)."""

    def events(self, model: str, alias: str) -> list[AliasEvent]:
        """The alias's moves, oldest first."""
        ...

    def recording(self, model: str, event: AliasEvent) -> AbstractContextManager[None]:
        """Append ``event``; kept only if the block (the move itself) completes."""
        ...


def disagreements(audit: list[AliasEvent], mirror: list[AliasEvent]) -> list[str]:
    """Where the displayed copy (MLflow tags, editable by anyone with access) differs from
    the audit trail: moves missing on either side, or recorded differently."""
    theirs = {e.seq: e for e in mirror}
    ours = {e.seq: e for e in audit}
    out = []
    for seq in sorted(ours.keys() | theirs.keys()):
        a, m = ours.get(seq), theirs.get(seq)
        if m is None:
            out.append(f"#{seq}: in the audit ({a.action} v{a.version} by {a.by}), "
                       "missing from the MLflow mirror")
        elif a is None:
            out.append(f"#{seq}: in the MLflow mirror ({m.action} v{m.version} by {m.by}), "
                       "not in the audit")
        else:
            out += [f"#{seq}: {name} is {value!r} in the MLflow mirror, {mine!r} in the audit"
                    for name, value, mine in _fields(m, a) if value != mine]
    return out


def _fields(mirror: AliasEvent, audit: AliasEvent) -> Iterator[tuple[str, object, object]]:
    theirs, ours = asdict(mirror), asdict(audit)
    for name in COMPARED:
        yield name, theirs[name], ours[name]
