"""Shared test fixtures: where the real test data lives, and small DICOM factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from pneumonode.config import Settings
    from pneumonode.db.session import Database
    from pneumonode.dicom_node.scp import Listener

REPO_ROOT = Path(__file__).resolve().parents[1]


class TestDataSettings(BaseSettings):
    """The one setting tests use to find ../shared/data (env PNEUMONODE_TEST_DATA_DIR)."""

    __test__ = False  # not a test class
    model_config = SettingsConfigDict(env_prefix="PNEUMONODE_")

    test_data_dir: Path = REPO_ROOT.parent / "shared" / "data"


TEST_DATA_DIR = TestDataSettings().test_data_dir


#: In the reason of every skip for want of the shared data (pytest_terminal_summary counts them).
MISSING_DATA = "is absent: put the shared data set there or set PNEUMONODE_TEST_DATA_DIR"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data {path} {MISSING_DATA}")
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A run without the shared data (a fresh clone has no ../shared) ends loudly: how many
    tests did not run for want of it, and how to point at it; not a quiet green run."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and MISSING_DATA in str(report.longrepr[2])
    ]
    if not skipped:
        return
    terminalreporter.section("the shared test data is missing", sep="!", red=True, bold=True)
    terminalreporter.line(
        f"{len(skipped)} {'test was' if len(skipped) == 1 else 'tests were'} skipped for want "
        f"of the shared test data (looked for in {TEST_DATA_DIR}).",
        red=True,
        bold=True,
    )
    terminalreporter.line(
        "Put the data set there (../shared/data beside this checkout), or point at it: "
        "PNEUMONODE_TEST_DATA_DIR=/path/to/data make test",
        bold=True,
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real test data (skips the test when absent)."""
    return _require(TEST_DATA_DIR)


@pytest.fixture(scope="session")
def siim_sample(shared_data: Path) -> Path:
    """siim-sample/: 10 SIIM DICOMs (dicom/), their masks (masks/) and labels CSV."""
    return _require(shared_data / "siim-sample")


@pytest.fixture(scope="session")
def siim_sample_dicoms(siim_sample: Path) -> list[Path]:
    files = sorted((siim_sample / "dicom").glob("*.dcm"))
    assert len(files) == 10
    return files


@pytest.fixture(scope="session")
def format_refs(shared_data: Path) -> Path:
    """format-refs/: MONOCHROME1, JPEG 2000 16-bit and SEG reference files."""
    return _require(shared_data / "format-refs")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests from reading a developer's PNEUMONODE_ settings (PNEUMONODE_TEST_* stay)."""
    import os

    for key in list(os.environ):
        if key.startswith("PNEUMONODE_") and not key.startswith("PNEUMONODE_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PNEUMONODE_DATA_DIR", str(tmp_path / "pneumonode-data"))


# ------------------------------------------------------------------ databases and the node

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class TestServices(BaseSettings):
    """Where the PostgreSQL server for tests is (env PNEUMONODE_TEST_POSTGRES_URL)."""

    __test__ = False
    model_config = SettingsConfigDict(env_prefix="PNEUMONODE_")

    test_postgres_url: str = POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; yields its URL."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin_url = TestServices().test_postgres_url
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"pneumonode_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(
            f"PostgreSQL at {make_url(admin_url).render_as_string()} unavailable: {exc.orig}"
        )
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def empty_postgresql(postgres_server: str) -> str:
    """The URL of the test session's PostgreSQL database, emptied for this test."""
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_server)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return postgres_server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on the embedded SQLite and on the PostgreSQL server (empty each time)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pneumonode.sqlite3'}"
    url: str = request.getfixturevalue("empty_postgresql")
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    from pneumonode.db.session import Database

    db = Database.open(database_url)
    yield db
    db.dispose()


@dataclass
class RunningNode:
    settings: Settings
    database: Database
    listener: Listener

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def spool(self) -> Path:
        return self.settings.spool_dir


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """Start in-process listeners: ``node_factory(database_url=..., **settings)``."""
    from peers_harness import free_port
    from pneumonode.config import Settings
    from pneumonode.db.session import Database
    from pneumonode.dicom_node.service import build_listener

    started: list[RunningNode] = []

    def start(database_url: str | None = None, **overrides: object) -> RunningNode:
        values: dict[str, object] = {
            "data_dir": tmp_path / f"node{len(started)}",
            "dicom_port": free_port(),
            "allowed_peers": ["STORESCU", "PNEUMONODE", "ECHOSCU"],
            "min_free_disk_mb": 0,
            "shutdown_grace": 10.0,
        }
        values.update(overrides)
        settings = Settings(**values)  # type: ignore[arg-type]
        database = Database.open(database_url or settings.database)
        listener = build_listener(settings, database)
        listener.start()
        node = RunningNode(settings, database, listener)
        started.append(node)
        return node

    yield start
    for node in started:
        node.listener.stop(grace=5)
        node.database.dispose()


@pytest.fixture
def node(node_factory: Callable[..., RunningNode], database_url: str) -> RunningNode:
    """A running listener on a free port, on SQLite and on PostgreSQL."""
    return node_factory(database_url=database_url)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_checkpoint(bias=None, size=64, version=...)``: an efficientnet-b0 U-Net checkpoint.

    ``bias`` sets the segmentation head's bias: +20 makes every pixel positive, -20 none (a
    model whose answer a test knows in advance); None keeps the random one. Random weights,
    seeded: small enough to run in milliseconds at 64 px.
    """
    made: dict[tuple[float | None, int, str], Path] = {}

    def make(bias: float | None = None, size: int = 64, version: str = "0.0.1-test") -> Path:
        key = (bias, size, version)
        if key in made:
            return made[key]
        import torch

        from pneumonode.model.checkpoint import (
            Architecture,
            CheckpointConfig,
            InputSpec,
            PostProcessing,
            save_checkpoint,
        )
        from pneumonode.model.network import build_unet

        torch.manual_seed(0)
        model = build_unet("efficientnet-b0")
        if bias is not None:
            head = model.segmentation_head[0]
            with torch.no_grad():
                head.weight.zero_()
                head.bias.fill_(bias)
        folder = tmp_path_factory.mktemp("model") / f"tiny-{bias}-{size}-{version}"
        config = CheckpointConfig(
            name="pneumonode-test-unet",
            version=version,
            architecture=Architecture(encoder="efficientnet-b0"),
            input=InputSpec(size=size),
            postprocess=PostProcessing(threshold=0.5),
        )
        save_checkpoint(model, folder, config)
        made[key] = folder
        return folder

    return make
