"""A run without the shared test data ends with a loud count of what it skipped and why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: A tiny suite: one test needs the shared data, one is skipped for another reason, one runs.
SUITE = """
import pytest

def test_needs_data(shared_data):
    pass

def test_needs_the_siim_sample(siim_sample):
    pass

def test_skipped_for_another_reason():
    pytest.skip("no GPU")

def test_runs():
    pass
"""


def run_suite(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The suite above in a fresh pytest, with this project's conftest and ``data_dir``."""
    (tmp_path / "test_tiny.py").write_text(SUITE)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMONODE_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
    environment["PNEUMONODE_TEST_DATA_DIR"] = str(data_dir)
    plugins = ["-p", "conftest", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "--rootdir", str(tmp_path), "test_tiny.py"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_run_without_the_data_says_how_many_were_skipped_and_how_to_point_at_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-data"
    result = run_suite(tmp_path, missing)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the shared test data is missing" in result.stdout
    assert (
        f"2 tests were skipped for want of the shared test data (looked for in {missing})."
        in result.stdout
    )  # not the GPU one
    assert "PNEUMONODE_TEST_DATA_DIR=/path/to/data make test" in result.stdout


def test_a_run_with_the_data_says_nothing_of_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "siim-sample").mkdir(parents=True)
    result = run_suite(tmp_path, data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 1 skipped" in result.stdout
    assert "shared test data" not in result.stdout
