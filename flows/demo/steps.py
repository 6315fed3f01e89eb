"""The demo's steps, each a thin use of the product's own APIs (nothing demo-only below)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitoring import MonitoringStore, open_store
from monitoring.audit import StoreAuditTrail
from registry.base import register_base
from registry.lineage_assets import register_hypernet
from registry.promotion import promote
from serving.client import ServingClient
from serving.process import ServeProcess
from vitedit_ops.errors import InfrastructureError
from vitedit_ops.gate import build_suite
from vitedit_ops.reference import Reference, build_reference, hypernet_path, load_reference
from vitedit_ops.reference.hypernet import hypernet_builder
from vitedit_ops.settings import get_settings

from ..config import EditSettings
from ..display import print_night
from ..nightly import nightly_edit
from ..reporting import NightlyResult, mlflow_ui_command
from .scenario import DAYS, day_requests
from .serving import review_over_http, serve_day_over_http

STORE_WAIT = 300.0  # seconds for the server's logger to store a day (it takes a few)


def wait_stored(store: MonitoringStore, expected: int) -> int:
    """The store's prediction count once it reaches ``expected`` (the server's logger writes
    in the background); one clear line if it does not within ``STORE_WAIT``."""
    deadline = time.monotonic() + STORE_WAIT
    while (count := store.counts()["predictions"]) < expected:
        if time.monotonic() > deadline:
            raise InfrastructureError(f"the server stored {count} of {expected} predictions "
                                      f"within {STORE_WAIT:.0f} s")
        time.sleep(0.25)
    return count


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


class Demo:
    """State shared by the steps: the reference build and the registered lineage's name."""

    def __init__(self, console: Console, reference_dir: Path, name: str) -> None:
        self.console = console
        self.reference_dir = reference_dir
        self.name = name
        self.settings = get_settings()
        self.tracking_uri = self.settings.resolved_mlflow_uri()
        self.ref: Reference | None = None

    # -- set-up ---------------------------------------------------------------------------
    def reference(self, fresh: bool) -> None:
        """The cached reference model and hypernetwork, or a new build of what is missing."""
        with _progress(self.console) as progress:
            task = progress.add_task("meta-train hypernetwork", visible=False)
            builder = hypernet_builder(on_iteration=lambda i, n, _: progress.update(
                task, completed=i, total=n, visible=True))
            if fresh:
                self.ref = build_reference(reference_dir=self.reference_dir, force=True,
                                           hypernet_builder=builder, progress=True)
            else:
                self.ref = load_reference(reference_dir=self.reference_dir,
                                          hypernet_builder=builder, progress=True)
        card = self.ref.card
        self.console.print(
            f"reference ViT {card.fingerprint[:12]}: accuracy "
            + ", ".join(f"{pool} {acc:.3f}" for pool, acc in card.accuracy.items())
            + "; under shifts " + ", ".join(f"{s} {o['accuracy']:.3f}"
                                            for s, o in card.shifts.items()), highlight=False)
        self.console.print(f"hypernetwork: {hypernet_path(card, self.reference_dir)}",
                           highlight=False)

    def register_base(self) -> None:
        """Suite from the locality pool; base registered (v1, champion) with its hypernetwork
        and held-out preserved pool."""
        ref = self.ref
        suite_dir = self.settings.home / "suite"
        pool = ref.data.locality
        suite = build_suite(suite_dir, ref.model, ref.spec, pool.pixels, pool.labels, pool.ids)
        self.console.print(f"suite {suite.content_hash[:12]}: {len(suite.pixels)} clean images, "
                           f"{len(suite.sensitive)} sensitive ({suite.sensitive_rule})",
                           highlight=False)
        store = open_store()
        try:
            registration = register_base(self.reference_dir / ref.card.weights, suite_dir,
                                         name=self.name, tracking_uri=self.tracking_uri,
                                         audit=StoreAuditTrail(store))
            register_hypernet(self.name, registration.version,
                              hypernet_path(ref.card, self.reference_dir),
                              ref.data.preserved.pixels, self.tracking_uri)
            store.register_model(self.name, ref.spec.num_classes, ref.spec.class_names)
        finally:
            store.close()
        self.console.print(f"registered {self.name} v{registration.version} "
                           f"({', '.join(registration.aliases)}) with its hypernetwork in "
                           f"{self.tracking_uri}", highlight=False)

    # -- a day ----------------------------------------------------------------------------
    def serve(self, day: int) -> None:
        """A day of traffic sent over HTTP to ``vitedit-ops serve`` (a child process on
        loopback, serving the champion by alias), then the reviewers' labels to its
        ``/feedback``; the server is stopped before the night (SIGTERM writes its queue)."""
        requests = day_requests(self.ref.data, day)
        store = open_store()
        try:
            before = store.counts()["predictions"]
            log_path = self.settings.home / "logs" / f"serve-day{day}.log"
            with self.console.status("starting vitedit-ops serve on loopback ..."):
                server = ServeProcess(self.name, log_path).start()
            try:
                with ServingClient(server.url) as client, _progress(self.console) as progress:
                    task = progress.add_task(f"champion v{server.version} at {server.url}",
                                             total=len(requests))
                    errors, ids = serve_day_over_http(server.url, requests,
                                                      lambda n: progress.advance(task, n))
                    stored = wait_stored(store, before + len(ids)) - before
                    labelled = review_over_http(client, requests, ids)
            finally:
                server.stop()
        finally:
            store.close()
        shift = DAYS[day][0]
        counts = {sub: sum(r.subpopulation == sub for r in requests) for sub in ("clean", shift)}
        self.console.print(
            f"{len(requests)} requests served over HTTP ({stored} predictions with their "
            "images stored by the server), "
            + ", ".join(f"{sub}: {errors.get(sub, 0)}/{n} wrong" for sub, n in counts.items())
            + f"; {labelled} reviewer labels arrived (log: {log_path})", highlight=False)

    def night(self, day: int) -> NightlyResult:
        settings = EditSettings()
        self.console.print(f"production defaults: {settings.method} editor, null-space "
                           f"energy {settings.null_space_energy}, lr {settings.lr:g}, suite "
                           f"locality floor {settings.group_locality_min} per group and for "
                           "the gate", highlight=False)
        with self.console.status(f"night {day}: nightly-edit flow running (Prefect)..."):
            result = nightly_edit(model=self.name, edit_settings=settings)
        print_night(result, self.console, self.tracking_uri)
        retention = result.gate.check("retention") if result.gate is not None else None
        if retention is not None and retention.value is not None:
            self.console.print(f"the gate re-checked {retention.details.get('images')} images "
                               f"fixed by earlier nights: {retention.value:.0%} still right",
                               highlight=False)
        return result

    def promote(self, night: NightlyResult) -> None:
        """What a reviewer does after reading the version page: promote a passed challenger."""
        if not (night.version and night.gate_passed):
            self.console.print("no challenger passed the gate: the champion stays; night 2 "
                               "edits it again")
            return
        with open_store() as store:
            event = promote(night.run_id, user="demo-reviewer",
                            reason="reviewed the gate report and plots in the demo",
                            tracking_uri=self.tracking_uri, audit=StoreAuditTrail(store))
        moved = f"v{event.previous} -> v{event.version}" if event else f"v{night.version}"
        self.console.print(f"promoted: {self.name}@champion {moved} (the registry re-verified "
                           "the patches, weights and ONNX hashes first)", highlight=False)

    def where_to_look(self, first: NightlyResult | None) -> None:
        table = Table(title="where to look", show_header=False)
        table.add_row("MLflow UI (runs, versions, plots)", mlflow_ui_command(self.tracking_uri))
        table.add_row("Prefect UI (flow runs, artifacts)", "prefect server start")
        table.add_row("champion timeline", f"VITEDIT_HOME={self.settings.home} vitedit-ops "
                                           f"history --model {self.name}")
        if first is not None and first.run_id:
            key = self.settings.signing_key_file  # the move is signed, so serving follows it
            table.add_row("roll back night 1", f"VITEDIT_HOME={self.settings.home} "
                          + (f"VITEDIT_SIGNING_KEY_FILE={key} " if key else "")
                          + f"vitedit-ops rollback --model {self.name}")
        self.console.print(table)
