"""Finding registered things by what the flows know: a name, an alias, a key, a run.

The flows never hold an MLflow client: they ask here, by tracking URI, and get the
registry's own types back.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitedit_ops.audit import AliasEvent
from vitedit_ops.gate import GateReport
from vitedit_ops.settings import get_settings

from . import signing, versions
from .artifacts import GATE_JSON
from .client import connect, translate_errors
from .errors import PromotionRefusedError, RegistryError
from .promotion import events
from .versions import VersionInfo


def champion(name: str, tracking_uri: str | None = None) -> VersionInfo:
    """The version that holds ``champion`` now; refuses a model without one."""
    info = versions.by_alias(connect(tracking_uri).client,
                             versions.check_safe(name, "registered model name"),
                             versions.CHAMPION)
    if info is None:
        raise RegistryError(f"{name} has no champion: register a base model first")
    return info


def verified_champion(name: str, tracking_uri: str | None = None) -> VersionInfo:
    """The champion, once its alias and its record verify as serving and promotion verify
    them: the latest signed move put the alias there and no tag changed since signing. A
    night never builds on a version moved onto the alias outside vitedit-ops (MLflow's UI) or
    whose tags were rewritten; the weights it loads are then checked against the signed
    fingerprint (``load_version``)."""
    info = champion(name, tracking_uri)
    keys = signing.configured_keys()
    _, problems = signing.check_alias(connect(tracking_uri).client, info, versions.CHAMPION,
                                      keys)
    problems += signing.verify_version(info, keys)[1]
    if problems:
        raise PromotionRefusedError(f"refusing to edit {name} v{info.version}", problems)
    return info


def version_by_key(name: str, key: str, tracking_uri: str | None = None) -> VersionInfo | None:
    """The usable version an earlier attempt registered under idempotency ``key``."""
    return versions.ready_by_key(connect(tracking_uri).client, name, key)


def gate_report(info: VersionInfo, tracking_uri: str | None = None) -> GateReport:
    """The gate report stored with a version's run."""
    client = connect(tracking_uri).client
    with tempfile.TemporaryDirectory() as tmp, \
            translate_errors(f"download the gate report of {info.name} v{info.version}"):
        path = client.download_artifacts(info.run_id, GATE_JSON, tmp)
        return GateReport.from_json(Path(path).read_text())


def run_url(run_id: str, tracking_uri: str | None = None) -> str:
    """Where a person opens the run in the MLflow UI (``VITEDIT_MLFLOW_UI_URL``)."""
    client = connect(tracking_uri).client
    with translate_errors(f"read run {run_id}"):
        experiment = client.get_run(run_id).info.experiment_id
    return f"{get_settings().resolved_mlflow_ui_url()}/#/experiments/{experiment}/runs/{run_id}"


@dataclass(frozen=True)
class Standing:
    """Which versions' fixes serve and which one is under review, for the edit ledger."""

    champion: str | None
    served: frozenset[str]      # champion now or before (timeline), and the champion's ancestors
    challenger: str | None      # under review: not served yet, not superseded either


def standing(name: str, tracking_uri: str | None = None,
             audited: Sequence[AliasEvent] | None = None) -> Standing:
    """The champion, every version whose fixes served (the champion's parent chain, since its
    weights hold their patches, and every version the champion timeline names) and the
    current challenger. One search of the model's versions, two alias lookups.

    The timeline is ``audited``, the promotion audit's moves (the monitoring store's
    append-only record), when given. The MLflow mirror, which anyone with EDIT on the model
    may rewrite, then counts only for moves older than the audit's first (made before the
    audit existed): a forged mirror event must not commit an unpromoted challenger's fixes,
    which would keep its images out of every later collection. Without ``audited`` (no
    store) the mirror is all there is."""
    client = connect(tracking_uri).client
    found = {v.version: v for v in versions.search(
        client, f"name = '{versions.check_safe(name, 'registered model name')}'")}
    # searches do not fill in aliases on every backend: ask for the two by name
    champion_ = versions.by_alias(client, name, versions.CHAMPION)
    held = versions.by_alias(client, name, versions.CHALLENGER)
    challenger = held.version if held is not None else None
    chain: set[str] = set()
    node = champion_
    while node is not None and node.version not in chain:  # a tag loop ends the walk
        chain.add(node.version)
        node = found.get(node.parent_version)
    timeline = events(client, name, versions.CHAMPION)
    if audited is not None:
        first = min((e.seq for e in audited), default=None)
        timeline = [*audited, *(e for e in timeline if first is None or e.seq < first)]
    served = chain | {e.version for e in timeline}
    return Standing(champion_.version if champion_ else None, frozenset(served), challenger)
