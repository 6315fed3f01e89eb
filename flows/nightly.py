"""The ``nightly-edit`` flow: yesterday's production errors -> a gated, registered challenger.

collect every error of the window (monitoring) -> pin the champion, its hypernetwork and
suite (registry) -> build the preserved pool -> plan the edit units: subpopulations of shifted
images, each to be a scoped patch, and (true, predicted) groups (``units``) -> edit and check
each unit alone (one task each, sharing a concurrency limit: one GPU) -> stack the accepted
units on the champion -> export ONNX -> gate -> grow the suite with what was fixed ->
register (challenger if the gate passed) -> ledger (pending) -> optional promotion -> settle
the ledger. A unit that raises or fails its checks is reported and left out; I/O tasks retry.
Each night starts by settling the ledger from the registry: fixes of versions that are or were
champion are committed, those of a challenger replaced unpromoted are released.

Idempotent: the key of (collected predictions, champion, settings) is a registry tag; a
re-run that finds its version recovers from it (ledger, promotion) instead of editing again.
Only the per-unit edit tasks are submitted to the task runner; the rest runs in the flow
process, so a Dask runner fans the edits out to its workers and nothing else.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                            FlowRunFilterStartTime, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Crashed
from prefect.task_runners import ThreadPoolTaskRunner

from monitoring import Collector, StoreUnavailableError, open_image_store, open_store
from monitoring.audit import StoreAuditTrail
from monitoring.collector import Collection
from monitoring.images import ImageIntegrityError
from monitoring.store import LedgerSettlement
from registry import VersionInfo, gate_report, load_version, publish_edit, promote, run_url
from registry import fail_orphaned_edit_runs, standing, version_by_key
from registry.versions import CHAMPION
from registry.client import first_line
from registry.mlflow_registry import Registration
from registry.record import EditRunRecord
from vitedit_ops.errors import (IncompatibleBaseError, InfrastructureError, InvalidInputError,
                                RefusedError)
from vitedit_ops.export import ExportResult, export_onnx
from vitedit_ops.gate import GateConfig, GateReport, run_gate
from vitedit_ops.groups import ErrorGroup
from vitedit_ops.settings import Settings, get_settings

from .combine import Combination, combine
from .config import EditSettings, GateThresholds, idempotency_key
from .edits import GroupImages, GroupOutcome, edit_group
from .fixes import Fixes, fixed_images, grow_suite
from .lineage import ChampionContext, ChampionRef, champion_context, resolve_champion
from .preserved import PreservedPool, build_preserved_pool
from .record import build_record
from .retrain import merged, retrain
from .units import Plan, plan_units
from .reporting import (ALREADY_REGISTERED, FAILED, NO_GROUP_ACCEPTED, NOTHING_TO_EDIT,
                        REGISTERED, NightlyResult, group_rows, publish_artifacts)

FLOW_NAME = "nightly-edit"
EDIT_LIMIT = "vitedit-edit"
PROMOTED_BY = "nightly-edit"
# Errors that another attempt cannot fix: bad input, a blob that failed its hash check, a
# model of another lineage, a champion that does not verify. Everything else (locks, timeouts,
# connections) is retried.
PERMANENT = (InvalidInputError, ImageIntegrityError, IncompatibleBaseError, RefusedError)


def _transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry hook
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:  # noqa: BLE001 - anything else may pass on a later attempt
        return True
    return True


# Read when the flow module is imported (a worker imports it per flow run). Generous: they
# exist so a hung night or task ends, and so a night older than the flow timeout is known dead.
_TIMEOUTS = Settings()
FLOW_TIMEOUT = timedelta(hours=_TIMEOUTS.nightly_timeout_hours)
TASK_TIMEOUT = {"timeout_seconds": _TIMEOUTS.task_timeout_hours * 3600}
EDIT_SLOT_TIMEOUT_SECONDS = _TIMEOUTS.edit_slot_timeout_minutes * 60
IO = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": _transient,
      "cache_policy": NO_CACHE, **TASK_TIMEOUT}


# -- tasks ----------------------------------------------------------------------------------
@task(name="collect-errors", **IO)
def collect_errors(model: str, since: datetime, until: datetime,
                   settings: EditSettings) -> Collection:
    """Misclassified production images not used by an earlier edit, grouped and split."""
    store = open_store()
    try:
        # every error of the window: ``plan-edit-units`` chooses the units and their sizes
        return Collector(store, open_image_store()).collect(
            since, model, until=until, heldout_fraction=settings.heldout_fraction,
            max_edit_images=None, min_group_size=1, seed=settings.seed)
    finally:
        store.close()


@task(name="fail-orphaned-runs", **IO)
def fail_orphaned_runs(model: str, tracking_uri: str) -> list[str]:
    """Edit runs of this model an earlier night left RUNNING (its process died): FAILED now,
    so the registry shows no run as in progress that nothing will finish."""
    failed = fail_orphaned_edit_runs(model, FLOW_TIMEOUT, f"nightly flow run {flow_run.id}",
                                     tracking_uri)
    if failed:
        get_run_logger().warning("marked %d orphaned MLflow run(s) FAILED: %s", len(failed),
                                 ", ".join(failed))
    return failed


@task(name="crash-orphaned-flow-runs", **IO)
def crash_orphaned_flow_runs() -> list[str]:
    """Nightly flow runs still RUNNING after the flow timeout: their process died (kill -9, a
    lost worker) before it could tell the server, so nothing else will end them. CRASHED now,
    with a message saying why."""
    cutoff = datetime.now(UTC) - FLOW_TIMEOUT
    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    crashed: list[str] = []
    refused: list[str] = []
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                flow_run_filter=FlowRunFilter(state=running, start_time=FlowRunFilterStartTime(
                    before_=cutoff)), limit=200):
            if str(run.id) == str(flow_run.id):
                continue
            try:
                client.set_flow_run_state(run.id, Crashed(message=(
                    f"orphaned: RUNNING for more than {FLOW_TIMEOUT} (its process died); "
                    f"marked CRASHED by nightly flow run {flow_run.id}")), force=True)
            except Exception as exc:  # noqa: BLE001 - one refused run must not keep the
                refused.append(f"{run.id} ({exc})")  # others RUNNING: go on, then retry
                continue
            crashed.append(str(run.id))
    if crashed:
        get_run_logger().warning("marked %d orphaned flow run(s) CRASHED: %s", len(crashed),
                                 ", ".join(crashed))
    if refused:  # the task's retries come back for these (the ended ones are no longer RUNNING)
        raise RuntimeError(f"the server refused to end {len(refused)} orphaned flow run(s): "
                           + "; ".join(refused))
    return crashed


@task(name="pin-champion", **IO)
def pin_champion(model: str, tracking_uri: str, updater_kinds: tuple[str, ...] = ()
                 ) -> ChampionRef:
    """Pin the champion's version and load its lineage now (with the update networks the
    night edits with), so a broken or incomplete one fails early."""
    ref = resolve_champion(model, tracking_uri)
    context = champion_context(ref)
    for kind in updater_kinds:
        context.updater(kind)
    return ref


@task(name="find-registered", **IO)
def find_registered(ref: ChampionRef, key: str) -> VersionInfo | None:
    return version_by_key(ref.name, key, ref.tracking_uri)


@task(name="plan-edit-units", **IO)
def plan_edit_units(ref: ChampionRef, groups: list[ErrorGroup],
                    preserved: PreservedPool | None, settings: EditSettings) -> Plan:
    """The night's units: subpopulations (scoped) and (true, predicted) groups."""
    plan = plan_units(champion_context(ref), groups, open_image_store(), preserved, settings)
    get_run_logger().info(
        "%d unit(s): %s; %d error(s) wait for a later night, %d unreadable, %d in the suite%s",
        len(plan.units), ", ".join(f"{u.key} ({len(u.edit_pixels)}+{len(u.heldout_pixels)})"
                                   for u in plan.units) or "none", plan.waiting,
        plan.unreadable, plan.in_suite, "".join(f"; {n}" for n in plan.notes))
    return plan


@task(name="build-preserved-pool", **IO)
def preserved_pool(ref: ChampionRef, since: datetime, limit: int,
                   errors: frozenset[str]) -> PreservedPool:
    store = open_store()
    try:
        return build_preserved_pool(champion_context(ref), store, open_image_store(), since,
                                    limit, errors)
    finally:
        store.close()


@contextmanager
def edit_slot(limit: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold one slot of the edit limit; waiting longer than ``timeout_seconds`` (default
    ``VITEDIT_EDIT_SLOT_TIMEOUT_MINUTES``) raises one line naming the limit, so a slot that no
    live night holds (docs/operations.md) costs a unit, never the whole night's time."""
    timeout = EDIT_SLOT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(limit, occupy=1, strict=True,
                                           timeout_seconds=timeout))
        except TimeoutError:
            raise InfrastructureError(
                f"no slot of the edit concurrency limit {limit!r} came free within "
                f"{timeout:.0f} s: another run holds it, or a dead one left it taken (`prefect "
                f"gcl inspect {limit}`; `prefect gcl update {limit} --active-slots 0` frees a "
                "slot no live night holds)") from None
        yield


# the submitted tasks (edit-group, retrain) run in the task runner's worker threads, which a
# task timeout cannot interrupt (Prefect only warns): the flow's timeout bounds them
@task(name="edit-group", cache_policy=NO_CACHE)
def edit(ref: ChampionRef, images: GroupImages, settings: EditSettings, device: str | None,
         limit: str, preserved: PreservedPool | None) -> GroupOutcome:
    """Edit one group while holding a slot of the shared limit (one per GPU)."""
    context = champion_context(ref)  # downloading is not GPU work: outside the slot
    for kind in settings.updater_kinds:
        context.updater(kind)
    with edit_slot(limit):
        outcome = edit_group(context, images, settings, device, preserved)
    e = outcome.edit
    get_run_logger().info("group %s (%d edit / %d held-out images): %s in %d steps%s",
                          e.key, e.num_edit_images, e.num_heldout_images, e.outcome, e.steps,
                          f"; {e.note}" if e.note else "")
    return outcome


@task(name="retrain", cache_policy=NO_CACHE)
def retrain_candidate(ref: ChampionRef, units: list[GroupImages], settings: EditSettings,
                      device: str | None, limit: str,
                      preserved: PreservedPool | None) -> GroupOutcome:
    """The retraining peer's one candidate, holding a slot of the shared limit."""
    context = champion_context(ref)
    with edit_slot(limit):
        outcome = retrain(context, units, settings, device, preserved)
    e = outcome.edit
    get_run_logger().info("retrained on %d unit(s) (%d edit / %d held-out images): %s in %d "
                          "steps%s", len(units), e.num_edit_images, e.num_heldout_images,
                          e.outcome, e.steps, f"; {e.note}" if e.note else "")
    return outcome


@task(name="combine-groups", cache_policy=NO_CACHE, **TASK_TIMEOUT)
def combine_groups(ref: ChampionRef, outcomes: list[GroupOutcome],
                   settings: EditSettings) -> Combination:
    return combine(champion_context(ref), outcomes, settings)


@task(name="export-onnx", cache_policy=NO_CACHE, **TASK_TIMEOUT)
def export_candidate(ref: ChampionRef, combination: Combination, workdir: Path) -> ExportResult:
    spec = champion_context(ref).spec
    return export_onnx(combination.model, spec.input_size, workdir / "model.onnx")


@task(name="gate", cache_policy=NO_CACHE, **TASK_TIMEOUT)
def gate_candidate(ref: ChampionRef, combination: Combination, onnx: ExportResult,
                   config: GateConfig, preserved: PreservedPool | None) -> GateReport:
    """The gate on exactly the ONNX file that will be registered."""
    context = champion_context(ref)
    images = [o.images for o, _ in combination.applied]
    return run_gate(
        context.model, combination.model, context.suite, config,
        edit_images=torch.cat([i.edit_pixels for i in images]),
        edit_labels=torch.cat([i.edit_labels for i in images]),
        heldout_images=torch.cat([i.heldout_pixels for i in images]),
        heldout_labels=torch.cat([i.heldout_labels for i in images]),
        onnx_path=onnx.path, edited_params=combination.edited_params,
        lineage_fingerprint=context.root_fingerprint,
        preserved_hashes=preserved.hashes if preserved is not None else None)


@task(name="register-challenger", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=_transient, cache_policy=NO_CACHE, **TASK_TIMEOUT)
def register(record: EditRunRecord, tracking_uri: str) -> tuple[Registration, str]:
    """Log and register (idempotent on the record's key); returns the MLflow run's URL."""
    registration = publish_edit(record, tracking_uri)
    return registration, run_url(registration.run_id, tracking_uri)


@task(name="registered-version", **IO)
def registered_version(ref: ChampionRef, info: VersionInfo
                       ) -> tuple[torch.nn.Module, GateReport, str]:
    """A version this night already registered: its weights, gate report and URL."""
    model, _, _ = load_version(ref.name, info.version, tracking_uri=ref.tracking_uri)
    return model, gate_report(info, ref.tracking_uri), run_url(info.run_id, ref.tracking_uri)


@task(name="record-ledger", **IO)
def record_ledger(run_id: str, version: str, prediction_ids: tuple[str, ...]) -> int:
    """Mark the fixed predictions as used (pending while the version is a challenger), so
    no later night edits on them again unless this challenger is superseded."""
    store = open_store()
    try:
        return store.record_edit_usage(run_id, version, prediction_ids)
    finally:
        store.close()


@task(name="reconcile-ledger", **IO)
def reconcile_ledger(model: str, tracking_uri: str) -> tuple[LedgerSettlement, str | None]:
    """Settle the ledger from the registry: the fixes of every version that is or was
    champion (the audit's timeline, MLflow's for moves made before the audit, the champion's
    ancestors) are committed; a challenger replaced unpromoted releases its own. Returns what
    changed and the current challenger."""
    store = open_store()  # first: an unreachable store fails the night here, in one line
    try:
        now = standing(model, tracking_uri, StoreAuditTrail(store).events(model, CHAMPION))
        under_review = [now.challenger] if now.challenger else []
        return store.settle_edit_usage(model, committed=now.served,
                                       under_review=under_review), now.challenger
    finally:
        store.close()


@task(name="promote", **IO)
def promote_challenger(run_id: str, tracking_uri: str) -> bool:
    """Move the champion alias (verified by the registry, recorded in the store's promotion
    audit); False if it already was there."""
    store = open_store()
    try:
        return promote(run_id, user=PROMOTED_BY,
                       reason="auto-promotion of the nightly deployment",
                       tracking_uri=tracking_uri, audit=StoreAuditTrail(store)) is not None
    finally:
        store.close()


# -- the flow ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NightPlan:
    """Everything a night is asked to do, fixed when the flow starts."""

    model: str
    tracking_uri: str
    since: datetime
    until: datetime
    settings: EditSettings
    gate: GateConfig
    auto_promote: bool
    device: str | None
    edit_limit: str
    edit_slots: int


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4),
      timeout_seconds=FLOW_TIMEOUT.total_seconds())
def nightly_edit(model: str | None = None, lookback_days: float = 7.0,
                 edit_settings: EditSettings = EditSettings(),  # noqa: B008 - shown in the form
                 gate: GateThresholds = GateThresholds(),  # noqa: B008
                 auto_promote: bool = False, device: str | None = None,
                 edit_limit: str = EDIT_LIMIT, edit_slots: int = 1,
                 as_of: datetime | None = None) -> NightlyResult:
    """Edit the champion on the last ``lookback_days`` of production errors and register a
    gated challenger.

    Args:
        model: Registered (and monitored) model name; default VITEDIT_REGISTERED_MODEL.
        lookback_days: Collect the production errors of this many days before ``as_of``.
        edit_settings: How error groups are collected, edited and accepted (the product's
            recipe by default).
        gate: Gate thresholds the challenger is held to (the gate's defaults).
        auto_promote: Make a challenger whose gate passed the champion at once.
        device: auto, cpu or cuda[:N]; default VITEDIT_DEVICE.
        edit_limit: Global concurrency limit the edit tasks share (one slot per GPU).
        edit_slots: Slots of ``edit_limit`` when it has to be created.
        as_of: End of the collected window (default now), to re-run or backfill a night.
    """
    config = get_settings()
    until = as_of or datetime.now(UTC)
    plan = NightPlan(model or config.registered_model, config.resolved_mlflow_uri(),
                     until - timedelta(days=lookback_days), until,
                     EditSettings.model_validate(edit_settings),
                     GateThresholds.model_validate(gate).config(),
                     auto_promote, device, edit_limit, edit_slots)
    result = NightlyResult(plan.model, NOTHING_TO_EDIT, flow_run_id=str(flow_run.id))
    progress = [result]  # the latest result, for the report if a step raises
    try:
        result = _night(plan, progress)
    except Exception as exc:
        publish_artifacts(replace(progress[-1], status=FAILED, error=first_line(exc)))
        raise
    publish_artifacts(result)
    return result


def _night(plan: NightPlan, progress: list[NightlyResult]) -> NightlyResult:
    """The night's steps; each new result is appended to ``progress`` as it is known."""
    def known(result: NightlyResult) -> NightlyResult:
        progress.append(result)
        return result

    _end_orphans(plan)
    result = known(_settle_ledger(plan, progress[-1]))
    collection = collect_errors(plan.model, plan.since, plan.until, plan.settings)
    result = known(replace(result, collected=collection.summary.to_dict()))
    groups = list(collection.groups)
    if not groups:
        return result
    ref = pin_champion(plan.model, plan.tracking_uri, plan.settings.updater_kinds)
    context = champion_context(ref)
    if plan.settings.strategy == "edit" or plan.settings.edits_subpopulations:
        context.require_hypernet()
    ids = [r.record_id or r.sha256 for g in groups for r in (*g.edit_images, *g.heldout_images)]
    key = idempotency_key(plan.model, ref.version, context.info.fingerprint, ids,
                          plan.settings, plan.gate.to_dict())
    result = known(replace(result, champion_version=ref.version, drift=context.drift, key=key))
    get_run_logger().info("champion v%s, %d error(s) collected, key %s; %s", ref.version,
                          collection.summary.images, key, context.drift.summary())
    existing = find_registered(ref, key)
    if existing is not None:
        return _recover(plan, result, ref, context, existing,
                        plan_edit_units(ref, groups, None, plan.settings))
    ensure_limit(plan.edit_limit, plan.edit_slots)
    errors = frozenset(r.sha256 for g in groups for r in (*g.edit_images, *g.heldout_images))
    preserved = preserved_pool(ref, plan.since, plan.settings.preserved_limit, errors) \
        if plan.settings.uses_preserved else None
    units = plan_edit_units(ref, groups, preserved, plan.settings)
    result = known(replace(result, collected={**result.collected, **units.summary()}))
    if not units.units:
        return result
    outcomes = (_retrain(plan, ref, units.units, preserved)
                if plan.settings.strategy == "retrain"
                else _edit_all(plan, ref, units.units, preserved))
    result = known(replace(result, groups=group_rows(outcomes)))
    if not any(o.accepted for o in outcomes):
        return replace(result, status=NO_GROUP_ACCEPTED)
    combination = combine_groups(ref, outcomes, plan.settings)
    result = known(replace(result, groups=group_rows(combination.outcomes)))
    if not combination.applied:
        return replace(result, status=NO_GROUP_ACCEPTED)
    with tempfile.TemporaryDirectory(prefix="vitedit-nightly-") as tmp:
        workdir = Path(tmp)
        onnx = export_candidate(ref, combination, workdir)
        report = gate_candidate(ref, combination, onnx, plan.gate, preserved)
        fixes = fixed_images(combination.model, context,
                             [o.images for o, _ in combination.applied],
                             [o.key for o, _ in combination.applied])
        suite_dir = grow_suite(context, fixes, key[:24], workdir) if report.passed else None
        record = build_record(context, combination, report, onnx, suite_dir, key,
                              plan.settings, plan.gate, preserved)
        registration, url = register(record, ref.tracking_uri)
    result = known(replace(result, status=REGISTERED, gate=report, run_url=url,
                           created=registration.created))
    return _finish(plan, result, registration.version, registration.run_id,
                   registration.gate_passed, registration.aliases, fixes)


def _end_orphans(plan: NightPlan) -> None:
    """End the flow and MLflow runs a dead night left RUNNING; best effort: an unreachable
    server here is worth a warning, never the reason a night fails."""
    steps = {"flow runs": crash_orphaned_flow_runs,
             "MLflow runs": lambda: fail_orphaned_runs(plan.model, plan.tracking_uri)}
    for what, step in steps.items():
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            get_run_logger().warning("orphaned %s not checked: %s", what, first_line(exc))


def _settle_ledger(plan: NightPlan, result: NightlyResult) -> NightlyResult:
    """Reconcile the ledger with the registry and say what changed; best effort: without the
    registry the ledger stays as it is (pending rows keep their images out of the
    collection: they come back, late, never twice), worth a warning, not a failed night.
    Without the store the night cannot collect anything: that fails it, in one line."""
    try:
        settled, challenger = reconcile_ledger(plan.model, plan.tracking_uri)
    except StoreUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        get_run_logger().warning("edit ledger not reconciled: %s", first_line(exc))
        return result
    superseded = tuple((version, challenger or "", rows)
                       for version, rows in sorted(settled.released.items()))
    for version, by, rows in superseded:
        get_run_logger().warning("challenger v%s was superseded%s unpromoted: %d fixed "
                                 "prediction(s) released, to be collected again", version,
                                 f" by v{by}" if by else "", rows)
    committed = {**result.ledger_committed}
    for version, rows in settled.committed.items():
        committed[version] = committed.get(version, 0) + rows
    return replace(result, superseded=result.superseded + superseded,
                   ledger_committed=committed)


def _edit_all(plan: NightPlan, ref: ChampionRef, units: list[GroupImages],
              preserved: PreservedPool | None) -> list[GroupOutcome]:
    """Every unit's outcome, in plan order: edited, or the error that stopped it."""
    futures = [(u, edit.with_options(task_run_name=f"edit {u.key}").submit(
                   ref, u, plan.settings, plan.device, plan.edit_limit, preserved))
               for u in units]
    outcomes = []
    for unit, future in futures:
        outcome = _value_or_error(future)
        if not isinstance(outcome, GroupOutcome):  # its task logged no line of its own
            get_run_logger().warning("group %s: edit raised: %s", unit.key, outcome)
            outcome = GroupOutcome.failed(unit, str(outcome))
        outcomes.append(outcome)
    return outcomes


def _retrain(plan: NightPlan, ref: ChampionRef, units: list[GroupImages],
             preserved: PreservedPool | None) -> list[GroupOutcome]:
    """The retraining peer's one outcome (or the error that stopped it)."""
    outcome = _value_or_error(retrain_candidate.submit(ref, units, plan.settings, plan.device,
                                                       plan.edit_limit, preserved))
    return [outcome if isinstance(outcome, GroupOutcome)
            else GroupOutcome.failed(merged(units), str(outcome))]


def _value_or_error(future: PrefectFuture) -> object:
    future.wait()
    state = future.state
    if state.is_completed():
        return future.result()
    error = state.result(raise_on_failure=False)
    return first_line(error) if isinstance(error, BaseException) else str(state.message)


def _recover(plan: NightPlan, result: NightlyResult, ref: ChampionRef,
             context: ChampionContext, info: VersionInfo, units: Plan) -> NightlyResult:
    """This night's version exists (an earlier attempt registered it): finish its work."""
    model, report, url = registered_version(ref, info)
    applied = info.edited_groups
    fixes = fixed_images(model, context, units.units, applied)
    rows = [{"group": u.key, "edit": len(u.edit_pixels), "heldout": len(u.heldout_pixels),
             "outcome": "applied" if u.key in applied else "not applied",
             "note": f"registered earlier as v{info.version}"} for u in units.units]
    result = replace(result, status=ALREADY_REGISTERED, gate=report, run_url=url, groups=rows)
    return _finish(plan, result, info.version, info.run_id, info.gate_passed, info.aliases,
                   fixes)


def _finish(plan: NightPlan, result: NightlyResult, version: str, run_id: str,
            gate_passed: bool, aliases: tuple[str, ...], fixes: Fixes) -> NightlyResult:
    """Ledger and promotion, both only for a version whose gate passed."""
    result = replace(result, version=version, run_id=run_id, gate_passed=gate_passed,
                     aliases=aliases)
    if not gate_passed:
        return result
    result = replace(result, ledger_rows=record_ledger(run_id, version, fixes.prediction_ids))
    if plan.auto_promote:
        result = replace(result, promoted=promote_challenger(run_id, plan.tracking_uri))
    return _settle_ledger(plan, result)


def ensure_limit(name: str, slots: int) -> None:
    """Create the edit tasks' global concurrency limit if it does not exist; an existing one
    (e.g. sized by an operator with ``prefect gcl update``) is left as it is."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:
                pass
