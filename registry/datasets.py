"""The images a run was judged on, logged as MLflow datasets (the run's "Datasets used").

The gate suite and the preserved pool are recorded by content, not copied: one row per image
(its labels and predictions, or its sha256) and the hash that identifies the whole set as the
dataset digest (MLflow keeps 36 characters) and, in full, as an input tag. A reviewer sees on
the run page which suite judged the edit and which images it had to keep, and can compare
runs by digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.data
import pandas as pd

from vitedit_ops.export import file_sha256

from .record import EditRunRecord

SUITE, PRESERVED = "gate-suite", "preserved-pool"
DIGEST_CHARS = 36  # MLflow's limit on a dataset digest
SHA256_TAG = "vitedit.sha256"


@dataclass(frozen=True)
class RunDataset:
    """One dataset input of a run: the table, its name, content hash and role."""

    frame: pd.DataFrame
    name: str
    sha256: str
    context: str
    tags: dict[str, str] = field(default_factory=dict)

    def log(self) -> None:
        """``mlflow.log_input`` into the active run."""
        dataset = mlflow.data.from_pandas(self.frame, name=self.name,
                                          digest=self.sha256[:DIGEST_CHARS])
        mlflow.log_input(dataset, context=self.context,
                         tags={SHA256_TAG: self.sha256, **self.tags})


def edit_datasets(record: EditRunRecord) -> list[RunDataset]:
    """The suite the gate judged the edit on (labels and predictions before/after, digest
    = the gate report's suite hash) and, when the editor had one, the preserved pool."""
    suite = RunDataset(
        pd.DataFrame({"label": record.suite_labels.tolist(),
                      "predicted_before": record.suite_predictions_before.tolist(),
                      "predicted_after": record.suite_predictions_after.tolist()}),
        SUITE, record.suite_hash, "gate", {"vitedit.images": str(len(record.suite_labels))})
    if not record.preserved_hashes:
        return [suite]
    return [suite, preserved_dataset(record.preserved_hashes, record.preserved_labels)]


def preserved_dataset(hashes: tuple[str, ...], labels: tuple[int, ...]) -> RunDataset:
    """The preserved pool by image sha256 (label -1: unknown, from the base's pool); its hash
    is that of the sorted image hashes, so the same images give the same digest."""
    digest = hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
    return RunDataset(pd.DataFrame({"image_sha256": list(hashes), "label": list(labels)}),
                      PRESERVED, digest, "preserved", {"vitedit.images": str(len(hashes))})


def suite_files_dataset(suite_dir: Path, suite_sha256: str) -> RunDataset:
    """A suite directory registered with a base: its files, sizes and sha256 (digest = the
    directory hash of the version's ``suite_sha256`` tag)."""
    files = sorted(p for p in suite_dir.rglob("*") if p.is_file())
    return RunDataset(
        pd.DataFrame({"file": [p.relative_to(suite_dir).as_posix() for p in files],
                      "bytes": [p.stat().st_size for p in files],
                      "sha256": [file_sha256(p) for p in files]}),
        SUITE, suite_sha256, "gate", {"vitedit.files": str(len(files))})
