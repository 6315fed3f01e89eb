"""Schema migrations: run on open, match the ORM schema, serialise concurrent openers, and
ship inside the wheel so an installed package can migrate its store."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from monitoring.schema import metadata
from monitoring.store import VERSION_TABLE, normalise_url, open_store

REPO = Path(__file__).resolve().parents[2]


def test_open_migrates_to_head_and_the_schema_matches_the_models(empty_url: str) -> None:
    with open_store(empty_url) as store, store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == "0005"
        assert compare_metadata(context, metadata) == []
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("predictions")}
        assert {"ix_predictions_model_name_ts", "ix_predictions_image_sha256_id",
                "ix_predictions_collect"} <= indexes
    with open_store(empty_url) as again:  # re-opening an up-to-date store is a no-op
        assert again.counts()["predictions"] == 0


def test_concurrent_first_opens_migrate_once(empty_url: str) -> None:
    script = ("import sys; from monitoring.store import open_store; "
              "open_store(sys.argv[1]).register_model('vit', 10)")
    procs = [subprocess.Popen([sys.executable, "-c", script, empty_url],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    engine = sa.create_engine(normalise_url(empty_url))
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
            ("0005",)]
    engine.dispose()


def test_postgresql_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h:5432/db").startswith("postgresql+psycopg://")
    assert normalise_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_an_installed_wheel_carries_and_runs_its_migrations(tmp_path: Path) -> None:
    project = tmp_path / "project"  # build from a copy: no build/ left in the shared tree
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    for package in ("vitedit_ops", "flows", "registry", "monitoring"):
        shutil.copytree(REPO / package, project / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(project)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("vitedit_ops-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import sys; import monitoring.store as s; "
        f"assert s.__file__.startswith({str(site)!r}), s.__file__; "
        f"st = s.open_store('sqlite:///{tmp_path / 'w.db'}'); print(st.counts())")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={"PYTHONPATH": str(site),
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "'predictions': 0" in done.stdout


def test_a_store_at_an_older_revision_is_upgraded_on_open(empty_url: str, at_revision) -> None:
    at_revision(
        "0001",
        ("INSERT INTO model_classes VALUES ('vit', 10, NULL, '2026-11-01 00:00:00')", {}),
        ("INSERT INTO predictions VALUES ('p1', '2026-11-01 00:00:00', 'vit', '1', NULL, "
         "'x.png', :sha, 8, '[]', '{}', :sha, '2026-11-01 00:00:00')", {"sha": "a" * 64}),
        ("INSERT INTO feedback (prediction_id, true_class, source, ts, ingested_at) VALUES "
         "('p1', 3, 'r', '2026-11-02 00:00:00', '2026-11-02 00:00:00')", {}))
    with open_store(empty_url) as store:
        assert store.model_classes() == {"vit": 10}  # data kept across the upgrades
        with store.read() as conn:  # 0003 back-filled the feedback's image hash
            assert conn.execute(sa.text("SELECT image_sha256 FROM feedback")).scalar_one() == (
                "a" * 64)
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert context.get_current_revision() == "0005"
            assert compare_metadata(context, metadata) == []
