"""docs/conformance.md: its tables are the code's own (python -m pneumonode.dicom_node.conformance).

docs/conformance.md is prose around generated tables; the committed document must be what the
generator makes from the code, so a change to a table in the code (a SOP class, a transfer
syntax, a status, a setting's default) fails here until the document is regenerated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_factory import make_dx, synthetic_chest
from pneumonode.config import Settings
from pneumonode.dicom_node import conformance, scp
from pneumonode.dicom_node.conformance import (
    DOCUMENT,
    RESULT_OBJECTS,
    ConformanceError,
    main,
    refresh,
    rejections,
    statuses,
)
from pneumonode.model.postprocess import summarise
from pneumonode.results import (
    build_overlay_capture,
    build_report,
    build_segmentation,
    render_overlay,
)
from pneumonode.results.common import SERIES_NUMBERS, series_description
from result_checks import ALGORITHM

REGENERATE = "run `python -m pneumonode.dicom_node.conformance` and commit docs/conformance.md"


def test_the_committed_statement_is_what_the_code_makes() -> None:
    committed = DOCUMENT.read_text(encoding="utf-8")
    assert refresh(committed) == committed, f"the code's tables changed: {REGENERATE}"


def test_a_change_in_a_code_table_changes_the_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    committed = DOCUMENT.read_text(encoding="utf-8")
    without_jpeg_ls = {
        abstract: frozenset(s for s in syntaxes if s != "1.2.840.10008.1.2.4.80")
        for abstract, syntaxes in scp.supported_contexts().items()
    }
    monkeypatch.setattr(scp, "supported_contexts", lambda: without_jpeg_ls)
    changed = refresh(committed)
    assert "| JPEG-LS Lossless Image Compression | `1.2.840.10008.1.2.4.80` | no | no |" in changed
    assert changed != committed


def test_every_status_and_rejection_the_listener_sends_is_listed() -> None:
    codes = {use.code for use in statuses()}
    assert {0x0000, 0x0110, 0x0211, 0xA700, 0xA900, 0xC210} <= codes
    assert any("damaged dataset" in use.comment for use in statuses() if use.code == 0xC210)
    sent = {rejection.codes for rejection in rejections()}
    assert {(1, 1, 3), (1, 1, 7), (2, 3, 2), (1, 2, 2), (1, 1, 2)} <= sent
    statement = DOCUMENT.read_text(encoding="utf-8")
    for code in codes:
        assert f"`0x{code:04X}`" in statement


def test_the_objects_we_create_are_those_the_statement_lists() -> None:
    source = make_dx(synthetic_chest(48, 40, 12), 12)
    mask = np.zeros((48, 40), dtype=bool)
    mask[10:30, 5:15] = True
    finding = summarise(mask, 0.9, source)
    seg = build_segmentation(source, mask, ALGORITHM)
    grey = np.full(mask.shape, 90, dtype=np.uint8)
    built = {
        "SEG": seg,
        "SR": build_report(source, finding, ALGORITHM, segmentation=seg),
        "SC": build_overlay_capture(source, render_overlay(grey, mask), ALGORITHM, finding=finding),
    }
    assert sorted(built) == sorted(obj.kind for obj in RESULT_OBJECTS)
    label = Settings.model_construct().result_label
    for obj in RESULT_OBJECTS:
        dataset = built[obj.kind]
        assert dataset.SOPClassUID == obj.sop_class_uid, obj.kind
        assert dataset.Modality == obj.modality, obj.kind
        assert dataset.file_meta.TransferSyntaxUID == obj.transfer_syntax_uid, obj.kind
        assert dataset.SeriesNumber == SERIES_NUMBERS[obj.kind]
        assert dataset.SeriesDescription == series_description(obj.kind, label)


def test_main_rewrites_the_tables_and_leaves_the_prose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = DOCUMENT.read_text(encoding="utf-8")
    start = committed.index("<!-- generated: statuses -->\n") + len(
        "<!-- generated: statuses -->\n"
    )
    end = committed.index("<!-- /generated -->", start)
    stale = committed[:start] + "| an old table |\n" + committed[end:]
    copy = tmp_path / "conformance.md"
    copy.write_text(stale, encoding="utf-8")
    assert main([str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == committed
    assert main([str(copy)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("up to date")


def test_a_document_must_have_every_table_and_no_other() -> None:
    with pytest.raises(ConformanceError, match="no markers for"):
        refresh("# a statement without tables\n")
    every = "".join(
        f"<!-- generated: {name} -->\n<!-- /generated -->\n" for name in conformance.BLOCKS
    )
    with pytest.raises(ConformanceError, match="does not make"):
        refresh(every + "<!-- generated: printing -->\n<!-- /generated -->\n")
