"""Smoke: the listener accepts an echo and the SIIM samples from dcmtk."""

from __future__ import annotations

from pathlib import Path

import pytest

from peers_harness import echoscu, storescu

pytestmark = pytest.mark.integration


def test_echo_and_store(node, siim_sample_dicoms: list[Path]) -> None:
    assert echoscu(node.port).returncode == 0
    result = storescu(siim_sample_dicoms, node.port)
    assert result.returncode == 0, result.stderr
    assert len(list(node.spool.glob("*/*.dcm"))) == 10
