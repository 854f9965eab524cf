"""highdicom's IOD lookup memo is installed by an explicit call at process start, not on import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import highdicom.base
import highdicom.sr.content
import pytest
from highdicom import _standard_utils

from pneumonode.cli import EXIT_ERROR, main
from pneumonode.results import iod_lookup

CALLERS = (_standard_utils, highdicom.base, highdicom.sr.content)


@pytest.fixture
def original_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """highdicom as it is before anything installs the memo (restored afterwards)."""
    for module in CALLERS:
        monkeypatch.setattr(module, "is_attribute_in_iod", iod_lookup._ORIGINAL)


def _installed() -> list[bool]:
    return [module.is_attribute_in_iod is iod_lookup.is_attribute_in_iod for module in CALLERS]


def test_importing_the_packages_leaves_highdicom_alone() -> None:
    # a fresh interpreter: this one may have installed the memo already
    code = (
        "import highdicom.base, highdicom.sr.content\n"
        "from highdicom import _standard_utils\n"
        "import pneumonode.results, pneumonode.worker.pipeline, pneumonode.api, pneumonode.cli\n"
        "from pneumonode.results import iod_lookup\n"
        "for module in (_standard_utils, highdicom.base, highdicom.sr.content):\n"
        "    assert module.is_attribute_in_iod is iod_lookup._ORIGINAL, module\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_install_puts_the_memo_where_highdicom_calls_it(original_lookup: None) -> None:
    assert _installed() == [False, False, False]
    iod_lookup.install()
    assert _installed() == [True, True, True]
    iod_lookup.install()  # a second call changes nothing
    assert _installed() == [True, True, True]
    assert highdicom.base.is_attribute_in_iod("ContentDate", "1.2.840.10008.5.1.4.1.1.66.4")


def test_predict_dicom_installs_it_at_its_start(
    original_lookup: None, tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    bogus = tmp_path / "not.dcm"
    bogus.write_bytes(b"not dicom at all" * 10)
    argv = ["predict-dicom", str(bogus), "--out", str(tmp_path / "o")]
    code = main([*argv, "--weights", str(tiny_checkpoint()), "--backend", "torch"])
    assert code == EXIT_ERROR  # the file; the process was ready to make result objects
    assert _installed() == [True, True, True]


def test_highdicom_does_not_remember_its_lookups_yet() -> None:
    """When this fails, a highdicom release caches is_attribute_in_iod itself: install() has
    stopped doing anything, and pneumonode.results.iod_lookup and its calls can go."""
    assert not iod_lookup.upstream_caches()
