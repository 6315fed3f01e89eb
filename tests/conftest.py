"""Suite-wide fixtures: an isolated VITEDIT_HOME per test, one real reference build, and the
real servers (``mlflow server``, ``prefect server``) the tests marked ``server`` ask for.

The reference model is trained with the real recipe once per session (the slow tests of
several packages share it, read-only); its hypernetwork is meta-trained with a short budget,
enough for real masks, not for quality figures (those come from `vitedit-ops bench`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from .helpers.servers import (Server, free_port, new_mlflow_auth_server, new_mlflow_server,
                              new_prefect_server)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _session_signing_key() -> str:
    """The key registrations, promotions and servers of this session sign and verify with:
    a 0600 file outside every store, as `vitedit-ops signing-key create` makes one (set here,
    at import, so every process the tests start inherits it)."""
    path = Path(tempfile.mkdtemp(prefix="vitedit-test-key-")) / "signing.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return str(path)


if not (os.environ.get("VITEDIT_SIGNING_KEY") or os.environ.get("VITEDIT_SIGNING_KEY_FILE")):
    os.environ["VITEDIT_SIGNING_KEY_FILE"] = _session_signing_key()

TEST_METATRAIN_ITERATIONS = 30
# set by pytest-xdist in its workers (`make test` runs two); empty in a serial run
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if XDIST_WORKER:
    # as many workers as cores or more (`make test` runs three on two): one compute thread
    # each (torch reads this at import), and for the commands the tests start
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # xdist exports COLUMNS=80 to its workers: a rich console built at import would keep 80
    # columns whatever a test's CliRunner sets, so workers get the serial run's environment
    os.environ.pop("COLUMNS", None)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Tests never touch the user's real cache: each test gets an empty VITEDIT_HOME."""
    monkeypatch.setenv("VITEDIT_HOME", str(tmp_path_factory.mktemp("vitedit-home")))
    yield


@pytest.fixture(scope="session")
def trained_reference(tmp_path_factory: pytest.TempPathFactory):
    """(Reference, its directory, MaskHypernet): the default training recipe, built once.

    Shared read-only: copy the directory before changing anything in it.
    """
    from vitedit_ops.hypernet import MaskHypernet
    from vitedit_ops.reference import (TrainConfig, build_reference, hypernet_path,
                                       load_reference)
    from vitedit_ops.reference.hypernet import REFERENCE_METATRAIN, hypernet_builder

    config = replace(REFERENCE_METATRAIN, iterations=TEST_METATRAIN_ITERATIONS)
    builder = hypernet_builder(config)
    if XDIST_WORKER:
        # one build per run, shared by the workers: the first builds under the cache's file
        # lock, the others wait for it and load the finished build
        directory = tmp_path_factory.getbasetemp().parent / "real-reference"
        reference = load_reference(config=TrainConfig(seed=0), reference_dir=directory,
                                   device="cpu", hypernet_builder=builder)
    else:
        directory = Path(tmp_path_factory.mktemp("real-reference"))
        reference = build_reference(TrainConfig(seed=0), reference_dir=directory, device="cpu",
                                    progress=False, hypernet_builder=builder)
    return reference, directory, MaskHypernet.load(hypernet_path(reference.card, directory))


SERVERS = {"mlflow": new_mlflow_server, "mlflow-auth": new_mlflow_auth_server,
           "prefect": new_prefect_server}
_servers: dict[str, Server] = {}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                   items: list[pytest.Item]) -> None:
    """Order modules for two or more xdist workers (``make test`` passes
    ``--no-loadscope-reorder``, so xdist hands out whole modules in this order):

    1. the first module that needs the reference build (its worker builds it);
    2. modules with slow tests that do not need it, so the other workers are busy while the
       build runs instead of waiting on its file lock;
    3. the other slow modules that need it (built by then);
    4. the rest, short modules that even out the workers' finish.
    """
    def module(item: pytest.Item) -> str:
        return getattr(getattr(item, "module", None), "__name__", "")

    slow = {module(item) for item in items if item.get_closest_marker("slow")}
    needs = {module(item) for item in items if "trained_reference" in item.fixturenames}
    builder = next((module(item) for item in items
                    if module(item) in needs and module(item) in slow), None)

    def rank(item: pytest.Item) -> int:
        name = module(item)
        if name == builder:
            return 0
        if name in slow:
            return 2 if name in needs else 1
        return 3
    items.sort(key=rank)  # stable: collection order within each rank


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the servers the selected tests ask for (``@pytest.mark.server("mlflow")``) as
    soon as they are known: their ~15-25 s start-ups then overlap with the tests that run
    first. One of each for the whole session; tests use their own model names in them."""
    if XDIST_WORKER:
        return  # a worker runs a share of the tests: it starts a server when one asks for it
    wanted = {name for item in session.items for marker in item.iter_markers("server")
              for name in marker.args}
    for name in sorted(wanted):
        if name not in SERVERS:
            raise pytest.UsageError(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
        root = Path(tempfile.mkdtemp(prefix=f"vitedit-test-{name}-"))
        _servers[name] = SERVERS[name](root, free_port()).launch()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in _servers.values():
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def _server(name: str, timeout: float = 180) -> Server:
    """Server ``name``, started for the session (or by this xdist worker, which does not see
    the session's start-up hook), once it answers (within ``timeout`` seconds)."""
    if XDIST_WORKER and name not in _servers:
        root = Path(tempfile.mkdtemp(prefix=f"vitedit-test-{name}-"))
        _servers[name] = SERVERS[name](root, free_port()).launch()
    assert name in _servers, f'mark the test @pytest.mark.server("{name}")'
    return _servers[name].ready(timeout)


@pytest.fixture(scope="session")
def mlflow_server_process() -> Server:
    """A real ``mlflow server`` on loopback (one worker), its SQLite store in ``.root``."""
    return _server("mlflow")


@pytest.fixture(scope="session")
def mlflow_auth_server() -> str:
    """A real ``mlflow server --app-name basic-auth`` on loopback; its admin is
    ``helpers.servers.AUTH_ADMIN``. Returns its URL."""
    return _server("mlflow-auth", 600).url  # the auth app's start is slow under load


@pytest.fixture(scope="session")
def prefect_server_process() -> Server:
    """A real ``prefect server start`` on loopback with its own PREFECT_HOME in ``.root``."""
    return _server("prefect")


@pytest.fixture(scope="session")
def prefect_test_api() -> Iterator[None]:
    """One Prefect test server for the session, started by the first test that runs a flow
    (a fresh one takes ~20 s to start); YAML and pure-function tests never wait for it.

    Its URL is also exported as ``PREFECT_API_URL``, so ``flows.prefect_api`` (the benchmark,
    the commands) uses it instead of starting a second server: with two Prefect APIs in one
    process an edit task took the edit slot on one and gave it back on the other, and the
    next night waited for ever (docs/operations.md)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from vitedit_ops.settings import environment

    with prefect_test_harness(server_startup_timeout=180), \
            environment({"PREFECT_API_URL": PREFECT_API_URL.value()}):
        yield
