"""The ORU^R01 as built: a valid v2.5.1 structure (hl7apy, strict), every field where the
docstring of pneumonode.alerts.hl7 says, HL7's delimiters in patient data escaped."""

from __future__ import annotations

import dataclasses
import socket
import threading
from datetime import UTC, datetime

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from pneumonode.addresses import MllpTarget
from pneumonode.alerts.content import AlertContent, Patient, alert_content, wants_alert
from pneumonode.alerts.hl7 import build_oru, read_ack, send_oru
from pneumonode.model.postprocess import Finding
from pneumonode.results.common import AlgorithmInfo

AT = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
PATIENT = Patient(
    patient_id="PAT-7|1",
    issuer="HOSP",
    family_name="O'Brien^Smith",
    given_name="Ann&Marie",
    middle_name="B",
    name_prefix="Dr",
    name_suffix="Jr",
    birth_date="19700102",
    sex="F",
)
CONTENT = AlertContent(
    study_uid="1.2.826.0.1.3680043.8.498.1",
    series_uid="1.2.826.0.1.3680043.8.498.2",
    sop_uid="1.2.826.0.1.3680043.8.498.3",
    accession_number="ACC-0042",
    study_datetime="20260105142000",
    modality="DX",
    view_position="PA",
    patient=PATIENT,
    present=True,
    side="left",
    area_mm2=1234.5,
    area_pixels=30862,
    probability=0.93,
    operating_point=0.35,
    max_probability=0.99,
    model_name="pneumothorax-triage",
    model_version="2.0.0",
    label="not for clinical use",
)


def _parse(text: str) -> Message:
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate()
    return message


def _observations(message: Message) -> dict[str, tuple[str, str, str, str]]:
    """OBX-3's code -> (OBX-2, OBX-5, OBX-6's code, OBX-8)."""
    order = message.oru_r01_patient_result.oru_r01_order_observation
    found = {}
    for observation in order.oru_r01_observation:
        obx = observation.obx
        found[obx.obx_3.ce_1.to_er7()] = (
            obx.obx_2.to_er7(),
            obx.obx_5.to_er7(),
            obx.obx_6.to_er7().split("^")[0],
            obx.obx_8.to_er7(),
        )
    return found


def test_a_positive_result_is_a_valid_oru_naming_study_patient_and_finding() -> None:
    text = build_oru(
        CONTENT,
        control_id="c0ffee",
        sending_application="PNEUMONODE",
        sending_facility="RADIOLOGY",
        at=AT,
    )
    message = _parse(text)
    msh = message.msh
    assert msh.msh_3.to_er7() == "PNEUMONODE"
    assert msh.msh_4.to_er7() == "RADIOLOGY"
    assert msh.msh_7.to_er7() == "20260105143000+0000"
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msh.msh_10.to_er7() == "c0ffee"
    assert msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_18.to_er7() == "UNICODE UTF-8"

    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == r"PAT-7\F\1^^^HOSP^MR"  # the field separator escaped
    # DICOM's family^given^middle^prefix^suffix as XPN's family^given^middle^suffix^prefix
    assert pid.pid_5.to_er7() == r"O'Brien\S\Smith^Ann\T\Marie^B^Jr^Dr"
    assert pid.pid_7.to_er7() == "19700102"
    assert pid.pid_8.to_er7() == "F"

    order = message.oru_r01_patient_result.oru_r01_order_observation
    obr = order.obr
    assert obr.obr_4.to_er7() == "PTXAI^Pneumothorax AI triage^99PNX"
    assert obr.obr_5.to_er7() == "S"  # stat: a pneumothorax
    assert obr.obr_7.to_er7() == "20260105142000"
    assert obr.obr_18.to_er7() == "ACC-0042"
    assert obr.obr_20.to_er7() == CONTENT.study_uid
    assert obr.obr_25.to_er7() == "F"
    assert order.nte.nte_3.to_er7() == (
        "AI result, not for clinical use: pneumothorax-triage 2.0.0"
    )

    rows = _observations(message)
    assert rows["36118008"] == ("CE", "52101004^Present^SCT", "", "A")
    assert rows["272741003"] == ("CE", "7771000^Left^SCT", "", "")
    assert rows["PTXAREA"] == ("NM", "1234.5", "mm2", "")
    assert rows["PTXPROB"] == ("NM", "0.93", "1", "")
    assert rows["111001"][1] == "pneumothorax-triage"
    assert rows["111003"][1] == "2.0.0"
    assert rows["121126"][1] == CONTENT.sop_uid
    assert rows["110180"][1] == CONTENT.study_uid

    # python-hl7, the other library, reads it the same way
    other = hl7.parse(text)
    assert str(other.segment("OBR")[20]) == CONTENT.study_uid
    assert other.unescape(str(other.segment("PID")[5][0][0])) == "O'Brien^Smith"


def test_a_negative_correction_without_patient_data_is_still_valid() -> None:
    bare = dataclasses.replace(
        CONTENT,
        patient=Patient("", "AN-ISSUER-LONGER-THAN-20", "", "", "", "", "", "", ""),
        present=False,
        side=None,
        area_mm2=None,
        probability=None,
        operating_point=None,
        accession_number="",
        study_datetime="",
    )
    message = _parse(
        build_oru(bare, control_id="x1", sending_application="PNEUMONODE", at=AT, correction=True)
    )
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "UNKNOWN^^^^MR"  # PID-3 is required; the issuer did not fit
    assert pid.pid_5.to_er7() == "^^^^^^U"  # an unspecified name
    assert pid.pid_8.to_er7() == "U"
    obr = message.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_5.to_er7() == "R"
    assert obr.obr_25.to_er7() == "C"
    rows = _observations(message)
    assert rows["36118008"] == ("CE", "2667000^Absent^SCT", "", "N")
    assert "272741003" not in rows and "PTXAREA" not in rows
    assert rows["122157"][1] == "0.99"  # no calibration: the highest pixel probability


def test_an_area_without_pixel_spacing_is_in_pixels() -> None:
    message = _parse(
        build_oru(
            dataclasses.replace(CONTENT, area_mm2=None),
            control_id="x2",
            sending_application="PNEUMONODE",
            at=AT,
        )
    )
    assert _observations(message)["PTXAREA"][1:3] == ("30862", "{pixels}")


def test_a_control_id_must_fit_msh_10() -> None:
    with pytest.raises(ValueError, match="MSH-10"):
        build_oru(CONTENT, control_id="x" * 21, sending_application="PNEUMONODE", at=AT)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_content_comes_from_the_patient_and_study_modules() -> None:
    from pydicom import Dataset

    ds = Dataset()
    ds.PatientName = "Doe^Jane^Q^Ms^III"
    ds.PatientID = "123"
    ds.PatientBirthDate = "1980131"  # malformed: left out
    ds.PatientSex = "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
    ds.AccessionNumber = "A1"
    ds.StudyDate, ds.StudyTime = "20260105", "142000.123"
    finding = Finding(True, 0.99, 100, 25.0, "right", False, 0.8, 0.5)
    algorithm = AlgorithmInfo("m", "1", 0.5, 0, None, "triage")
    content = alert_content(ds, finding, algorithm, "not for clinical use")
    assert content.patient == Patient("123", "", "Doe", "Jane", "Q", "Ms", "III", "", "F")
    assert content.study_datetime == "20260105142000"
    assert (content.present, content.side, content.probability) == (True, "right", 0.8)


def test_which_results_are_alerted() -> None:
    assert wants_alert("positive", True)
    assert not wants_alert("positive", False)
    assert wants_alert("all", False)
    assert wants_alert("positive", False, alerted_before=True)  # the correction of an alert


def test_an_ack_is_read_by_its_msa() -> None:
    ack = hl7.parse("MSH|^~\\&|RIS||||20260105||ACK^R01^ACK|1|P|2.5.1\rMSA|AE|c0ffee|bad PID")
    parsed = read_ack(ack)
    assert (parsed.code, parsed.control_id, parsed.text, parsed.accepted) == (
        "AE",
        "c0ffee",
        "bad PID",
        False,
    )
    with pytest.raises(ValueError, match="no MSA"):
        read_ack(hl7.parse("MSH|^~\\&|RIS||||20260105||ACK^R01^ACK|1|P|2.5.1"))


def _answering(answer: bytes) -> tuple[MllpTarget, threading.Thread]:
    """A TCP server on loopback that reads one MLLP block and answers ``answer`` raw."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                received = b""
                while not received.endswith(b"\x1c\r"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                connection.sendall(answer)

    thread = threading.Thread(target=serve)
    thread.start()
    return MllpTarget("127.0.0.1", server.getsockname()[1]), thread


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n\x1c\r", "answered with no HL7 ACK (InvalidBlockError)"),
        (
            b"\x0bMSH|^~\\&|RIS||||20260105||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|someone-else\x1c\r",
            "acknowledged another message (AA)",
        ),
        (b"\x0bMSH|^~\\&|RIS||||20260105||ACK^R01^ACK|1|P|2.5.1\x1c\r", "the answer has no MSA"),
        (b"", "closed the connection without an ACK"),
    ],
)
def test_what_is_not_our_ack_is_a_failed_attempt(answer: bytes, reason: str) -> None:
    text = build_oru(CONTENT, control_id="c0ffee", sending_application="PNEUMONODE", at=AT)
    target, thread = _answering(answer)
    outcome = send_oru(target, text, "c0ffee", timeout=5)
    thread.join(10)
    assert not outcome.ok and not outcome.permanent
    assert reason in outcome.reason
    assert "O'Brien" not in outcome.reason and PATIENT.patient_id not in outcome.reason


def test_our_ack_is_a_delivery() -> None:
    text = build_oru(CONTENT, control_id="c0ffee", sending_application="PNEUMONODE", at=AT)
    ack = b"\x0bMSH|^~\\&|RIS||||20260105||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|c0ffee\x1c\r"
    target, thread = _answering(ack)
    outcome = send_oru(target, text, "c0ffee", timeout=5)
    thread.join(10)
    assert outcome.ok and outcome.status == "AA"
