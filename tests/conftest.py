"""Shared test fixtures: where the real test data lives, and small DICOM factories."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class TestDataSettings(BaseSettings):
    """The one setting tests use to find ../shared/data (env PNEUMONODE_TEST_DATA_DIR)."""

    __test__ = False  # not a test class
    model_config = SettingsConfigDict(env_prefix="PNEUMONODE_")

    test_data_dir: Path = REPO_ROOT.parent / "shared" / "data"


TEST_DATA_DIR = TestDataSettings().test_data_dir


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"test data {path} is absent: put the shared data set there or set "
            "PNEUMONODE_TEST_DATA_DIR"
        )
    return path


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
    """Keep tests from reading a developer's PNEUMONODE_ config (besides the data location)."""
    import os

    for key in list(os.environ):
        if key.startswith("PNEUMONODE_") and key != "PNEUMONODE_TEST_DATA_DIR":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PNEUMONODE_DATA_DIR", str(tmp_path / "pneumonode-data"))
