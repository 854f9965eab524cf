"""Pure parts of the node: which objects become jobs, safe spool names, peer rules."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_factory import make_dx
from node_processes import PNEUMONODE
from pneumonode.addresses import PeerConfigError, PeerPolicy, PeerRule, parse_destination
from pneumonode.config import ConfigError, Settings, load_settings
from pneumonode.db.session import Database
from pneumonode.dicom_node.selection import skip_reason
from pneumonode.dicom_node.spool import Spool, safe_component
from pneumonode.selection_rules import SelectionRules


def radiograph(**attributes: object):
    ds = make_dx(np.zeros((8, 8), np.uint16), 12)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize(
    ("sop_class", "attributes", "expected"),
    [
        (DX, {}, None),
        (ComputedRadiographyImageStorage, {"Modality": "CR"}, None),
        (DigitalXRayImageStorageForProcessing, {}, None),
        (SecondaryCaptureImageStorage, {"Modality": "CR"}, None),
        (DX, {"BodyPartExamined": None, "ViewPosition": None}, None),
        (DX, {"BodyPartExamined": "chest", "ViewPosition": "ap"}, None),
        (DX, {"BodyPartExamined": "THORAX"}, None),  # common on DX
        (
            SecondaryCaptureImageStorage,
            {"Modality": "OT"},
            "secondary capture with modality OT, not CR/DX",
        ),
        (CTImageStorage, {"Modality": "CT"}, "not a radiograph (CT Image Storage)"),
        (DX, {"BodyPartExamined": "KNEE"}, "body part KNEE, not CHEST/THORAX"),
        (DX, {"ViewPosition": "LL"}, "view position LL, not PA/AP"),
        (DX, {"NumberOfFrames": 3}, "multi-frame (3 frames)"),
        (DX, {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3}, "not monochrome (RGB)"),
        (SegmentationStorage, {"Manufacturer": "pneumonode"}, "our own output (loop guard)"),
        (
            SecondaryCaptureImageStorage,
            {"Modality": "CR", "Manufacturer": "PneumoNode"},
            "our own output (loop guard)",
        ),
    ],
)
def test_selection(sop_class: str, attributes: dict[str, object], expected: str | None) -> None:
    reason = skip_reason(
        radiograph(**attributes), sop_class, has_pixel_data=True, rules=SelectionRules()
    )
    assert reason == expected


def test_an_image_class_without_pixel_data_is_skipped() -> None:
    reason = skip_reason(radiograph(), DX, has_pixel_data=False, rules=SelectionRules())
    assert reason == "no pixel data"


def test_the_default_rules_are_the_settings_defaults() -> None:
    assert Settings.model_construct().selection == SelectionRules()


@pytest.mark.parametrize(
    ("environment", "sop_class", "attributes", "expected"),
    [
        ({"ANALYSED_MODALITIES": "DX"}, ComputedRadiographyImageStorage, {}, "modality CR, not DX"),
        (
            {"ANALYSED_MODALITIES": "dx"},
            SecondaryCaptureImageStorage,
            {"Modality": "CR"},
            "secondary capture with modality CR, not DX",
        ),
        (
            {"ANALYSED_MODALITIES": "CR,DX,OT"},
            SecondaryCaptureImageStorage,
            {"Modality": "OT"},
            None,
        ),
        (
            {"ANALYSED_MODALITIES": "CR, DX, MISSING"},
            SecondaryCaptureImageStorage,
            {"Modality": None},
            None,
        ),
        (
            {"ANALYSED_BODY_PARTS": "CHEST"},
            DX,
            {"BodyPartExamined": "THORAX"},
            "body part THORAX, not CHEST",
        ),
        (
            {"ANALYSED_BODY_PARTS": "CHEST,THORAX"},
            DX,
            {"BodyPartExamined": None},
            "body part missing, not CHEST/THORAX",
        ),
        (
            {"ANALYSED_BODY_PARTS": '["CHEST", "CHEST ABDOMEN"]'},
            DX,
            {"BodyPartExamined": "CHEST ABDOMEN"},
            None,
        ),
        ({"ANALYSED_VIEW_POSITIONS": "PA"}, DX, {"ViewPosition": "AP"}, "view position AP, not PA"),
        ({"ANALYSED_VIEW_POSITIONS": "PA,AP,LL"}, DX, {"ViewPosition": "LL"}, None),
        (
            {"ANALYSED_VIEW_POSITIONS": "PA,AP"},
            DX,
            {"ViewPosition": None},
            "view position missing, not PA/AP",
        ),
    ],
)
def test_the_rules_are_settings(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    sop_class: str,
    attributes: dict[str, object],
    expected: str | None,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(f"PNEUMONODE_{name}", value)
    rules = load_settings().selection
    reason = skip_reason(radiograph(**attributes), sop_class, has_pixel_data=True, rules=rules)
    assert reason == expected


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("ANALYSED_MODALITIES", "", "names no value, so nothing would be analysed"),
        ("ANALYSED_BODY_PARTS", "CHEST,THORAX/CHEST", "'THORAX/CHEST' is not a DICOM code string"),
        ("ANALYSED_VIEW_POSITIONS", "PA,A_VERY_LONG_VIEW_POSITION", "is not a DICOM code string"),
    ],
)
def test_a_bad_rule_is_one_line_naming_its_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(f"PNEUMONODE_{name}", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.startswith(f"PNEUMONODE_{name}: ") and problem in message
    assert "\n" not in message


@pytest.mark.integration
def test_the_node_refuses_a_bad_rule_at_start_in_one_line(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMONODE_")}
    environment |= {
        "PNEUMONODE_DATA_DIR": str(tmp_path / "data"),
        "PNEUMONODE_ANALYSED_BODY_PARTS": "CHEST;THORAX",
    }
    result = subprocess.run(
        [PNEUMONODE, "dicom-listen"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: invalid configuration: PNEUMONODE_ANALYSED_BODY_PARTS: 'CHEST;THORAX' is not a "
        "DICOM code string (1-16 of A-Z, 0-9, space, underscore)"
    ]


@pytest.mark.parametrize(
    "uid",
    ["ID_4d6269d79", "../../etc/passwd", "..", ".", "", "a/b\\c", "x" * 300, "1.2.3\x00", "é.1"],
)
def test_safe_component_never_escapes(uid: str, tmp_path: Path) -> None:
    name = safe_component(uid)
    assert name and "/" not in name and "\\" not in name and name not in (".", "..")
    assert not name.startswith(".") and len(name) <= 141
    spool = Spool(tmp_path / "spool")
    assert spool.path_of(spool.relative_path(uid, uid)).is_relative_to(
        (tmp_path / "spool").resolve()
    )


def test_safe_component_keeps_valid_uids_and_separates_different_ones() -> None:
    assert safe_component("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    assert safe_component("ID_4d6269d79") == "ID_4d6269d79"
    names = {safe_component(uid) for uid in ("a/b", "a_b", "a\\b", "a:b", "")}
    assert len(names) == 5


def test_commit_is_atomic_and_replaces(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for content in (b"first", b"second"):
        temp = spool.incoming / "tmp1.dcm"
        temp.write_bytes(content)
        relative = spool.commit(temp, "1.2", "1.2.3")
        assert (spool.root / relative).read_bytes() == content and not temp.exists()
    assert relative == Path("1.2/1.2.3.dcm")
    with pytest.raises(ValueError, match="outside the spool"):
        spool.path_of("../escape.dcm")


def test_sweep_removes_only_stale_leftovers(tmp_path: Path) -> None:
    import os
    import time

    spool = Spool(tmp_path / "spool")
    stale, fresh = spool.incoming / "tmpA.dcm", spool.incoming / "tmpB.dcm"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert spool.sweep_incoming(older_than=60) == 1
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize(
    ("text", "ae", "host", "port"),
    [
        ("ORTHANC@127.0.0.1:4242", "ORTHANC", "127.0.0.1", 4242),
        ("PACS@[::1]:104", "PACS", "::1", 104),
        ("A B@pacs.local:11112", "A B", "pacs.local", 11112),
    ],
)
def test_parse_destination(text: str, ae: str, host: str, port: int) -> None:
    destination = parse_destination(text)
    assert (destination.ae_title, destination.host, destination.port) == (ae, host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ORTHANC", "expected AE@host:port"),
        ("ORTHANC@host", "expected AE@host:port"),
        ("X@h:port", "not a number"),
        ("X@h:70000", "out of range"),
        ("WAYTOOLONGAETITLE1@h:1", "1-16"),
    ],
)
def test_bad_destinations(text: str, message: str) -> None:
    with pytest.raises(PeerConfigError, match=message):
        parse_destination(text)


def test_peer_rules() -> None:
    policy = PeerPolicy.from_settings(["MODALITY", "PACS@127.0.0.1"], accept_any=False)
    assert policy.allows("MODALITY", "10.9.8.7")
    assert policy.allows("PACS", "127.0.0.1") and policy.allows("PACS", "::ffff:127.0.0.1")
    assert not policy.allows("PACS", "10.0.0.1")
    assert not policy.allows("OTHER", "127.0.0.1")
    assert PeerPolicy([], accept_any=True).allows("ANYONE", "1.2.3.4")
    with pytest.raises(PeerConfigError, match="cannot resolve"):
        PeerRule.parse("PACS@no-such-host.invalid")


def test_the_listeners_warm_up_leaves_nothing_behind(database: Database, tmp_path: Path) -> None:
    """The warm-up runs the receive statements and an audit insert in a transaction it rolls
    back (SQLite and PostgreSQL): no study, instance, job or audit event stays."""
    from sqlalchemy import func, select

    from pneumonode.db.models import AuditEvent, Instance, Job, Study
    from pneumonode.dicom_node.receive import InstanceReceiver

    InstanceReceiver(
        Spool(tmp_path / "spool"), database, min_free_bytes=0, rules=SelectionRules()
    ).warm_up()
    with database.session() as session:
        for table in (Study, Instance, Job, AuditEvent):
            assert session.scalar(select(func.count()).select_from(table)) == 0, table.__name__
