"""Fixtures for the monitoring tests: real SQLite files and a real PostgreSQL database per
test (created and dropped here), a content-addressed image store in a temp dir, and small
real PNG images."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from .monitoring_testlib import png_bytes

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
MODEL = "vit"
NUM_CLASSES = 10


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    """An autocommit connection to the server, or a skip saying why there is none."""
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    yield conn
    conn.close()


def _create_db(admin: Any) -> str:
    name = f"vitedit_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return name


def _pg(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def pg_empty_url(pg_admin: Any) -> Iterator[str]:
    """A fresh, empty (unmigrated) database for one test, dropped afterwards."""
    name = _create_db(pg_admin)
    yield _pg(name)
    pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_session_db(pg_admin: Any) -> Iterator[str]:
    """One database migrated per session (creating databases per test is slow on a busy
    server); ``pg_url`` empties it before each test."""
    from monitoring.store import open_store

    name = _create_db(pg_admin)
    open_store(_pg(name)).close()
    yield _pg(name)
    pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_session_db: str) -> str:
    """The session database, migrated and emptied."""
    import psycopg

    with psycopg.connect(pg_session_db) as conn:  # DELETE: far cheaper than TRUNCATE here
        for table in ("predictions", "feedback", "edit_ledger", "quarantine", "model_classes"):
            conn.execute(f"DELETE FROM {table}")
    return pg_session_db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with no schema yet, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_empty_url")


@pytest.fixture
def at_revision(empty_url: str) -> Callable[..., None]:
    """``at_revision(rev, *statements)``: migrate the empty store to ``rev`` only, then run
    ``(sql, params)`` statements there, as an older vitedit-ops left its store."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from monitoring.store import MIGRATIONS_DIR, normalise_url

    def make(revision: str, *statements: tuple[str, dict[str, Any]]) -> None:
        engine = sa.create_engine(normalise_url(empty_url))
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            for sql, params in statements:
                conn.execute(sa.text(sql), params)
        engine.dispose()
    return make


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitoring.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    """An opened (migrated) store with model ``vit`` (10 classes) registered."""
    from monitoring.store import open_store

    with open_store(store_url) as opened:
        opened.register_model(MODEL, NUM_CLASSES)
        yield opened


@pytest.fixture
def images(tmp_path: Path) -> Any:
    from monitoring.images import ImageStore

    return ImageStore(str(tmp_path / "cas"))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Where 'production' images and input files live (the ingest image root)."""
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def ingestor(store: Any, images: Any, src: Path) -> Iterator[Any]:
    from monitoring.ingest import Ingestor
    from monitoring.validation import UriPolicy

    with Ingestor(store, images, policy=UriPolicy(root=src), batch_size=50) as ing:
        yield ing


@pytest.fixture
def make_image(src: Path) -> Callable[..., tuple[str, str]]:
    """Write ``src/<name>`` with a distinct PNG; returns (relative uri, sha256)."""

    def make(seed: int, name: str | None = None, data: bytes | None = None) -> tuple[str, str]:
        data = png_bytes(seed) if data is None else data
        name = name or f"img_{seed}.png"
        (src / name).write_bytes(data)
        return name, hashlib.sha256(data).hexdigest()

    return make


@pytest.fixture
def prediction(make_image: Callable[..., tuple[str, str]]) -> Callable[..., dict[str, Any]]:
    """A valid prediction record (its image written to ``src``); keywords override fields."""

    def make(i: int, **overrides: Any) -> dict[str, Any]:
        uri, sha = make_image(i)
        record = {"id": f"pred-{i}", "ts": "2026-11-20T10:00:00Z", "model": MODEL,
                  "model_version": "1", "model_alias": "champion", "image_uri": uri,
                  "image_sha256": sha, "predicted_class": i % NUM_CLASSES,
                  "topk": [[i % NUM_CLASSES, 0.6], [(i + 1) % NUM_CLASSES, 0.3]],
                  "metadata": {"client": "test"}}
        record.update(overrides)
        return {k: v for k, v in record.items() if v is not ...}

    return make


@pytest.fixture
def write_jsonl(src: Path) -> Callable[[str, list[Any]], Path]:
    """Write records (dicts, or raw strings written verbatim) as a JSON Lines file."""

    def write(name: str, records: list[Any]) -> Path:
        path = src / name
        with path.open("w") as handle:
            for record in records:
                handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
        return path

    return write
