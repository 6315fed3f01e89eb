"""``vitedit-ops deploy``: serve the flows' deployments from one long-running process.

The simplest way to run the nightly schedule: no work pool, the process itself polls for
scheduled runs. ``prefect.yaml`` describes the same deployments for work pools (local
processes, a GPU pool, a Dask cluster).
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from .metatrain import meta_train_flow
from .nightly import nightly_edit
from .suites import build_suite_flow

NIGHTLY_CRON = "0 2 * * *"
# One night at a time: a night that overruns makes the next one wait (Prefect enqueues it),
# never two nights editing the same champion at once.
NIGHTLY_CONCURRENCY = 1


def deployments(cron: str = NIGHTLY_CRON, timezone: str = "UTC",
                auto_promote: bool = False) -> list[RunnerDeployment]:
    """The nightly deployment on ``cron`` and the on-demand meta-train and build-suite ones."""
    return [
        nightly_edit.to_deployment(
            name="nightly", schedules=[Cron(cron, timezone=timezone)],
            parameters={"auto_promote": auto_promote}, concurrency_limit=NIGHTLY_CONCURRENCY,
            description="Edit the champion on yesterday's production errors; register a "
                        "gated challenger."),
        meta_train_flow.to_deployment(
            name="meta-train", description="Train and register a base model's hypernetwork."),
        build_suite_flow.to_deployment(
            name="build-suite", description="Build a lineage's locality suite (and register "
                                            "its base)."),
    ]


def serve_deployments(cron: str = NIGHTLY_CRON, timezone: str = "UTC",
                      auto_promote: bool = False) -> None:
    serve(*deployments(cron, timezone, auto_promote))
