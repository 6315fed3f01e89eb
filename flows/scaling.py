"""Scaling the nightly edits out across GPUs with an existing engine: Dask, via prefect-dask.

The per-group tasks are the only ones the flow submits to its task runner, so with a
:class:`~prefect_dask.DaskTaskRunner` every group is edited on a Dask worker while the flow
process keeps the rest (collect, combine, gate, register). Point ``VITEDIT_DASK_ADDRESS`` at
a running scheduler (for GPUs: one ``dask cuda worker`` per GPU, from dask-cuda), or leave it
unset for a local cluster of ``VITEDIT_DASK_WORKERS`` processes. Workers load the champion
from the registry and images from the image store, so both must be reachable from them.
"""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

from .nightly import nightly_edit

DEFAULT_WORKERS = 2


def dask_runner() -> DaskTaskRunner:
    """An existing cluster by address, else a local one (processes, one thread each)."""
    address = os.environ.get("VITEDIT_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("VITEDIT_DASK_WORKERS", DEFAULT_WORKERS))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True})


nightly_edit_dask = nightly_edit.with_options(task_runner=dask_runner())
