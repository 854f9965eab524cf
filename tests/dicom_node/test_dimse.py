"""The DIMSE command sets (dicom_node/dimse.py) against byte fixtures and pydicom's reading."""

from __future__ import annotations

from io import BytesIO

import pytest
from encoded_pdus import c_echo_rq_command
from pydicom.filereader import read_dataset

from pneumonode.dicom_node.dimse import (
    AFFECTED_SOP_INSTANCE_UID,
    C_ECHO_RQ,
    C_STORE_RQ,
    CANCEL,
    COMMAND_FIELD,
    FAILURE,
    MESSAGE_ID,
    PENDING,
    STATUS,
    SUCCESS,
    VERIFICATION,
    WARNING,
    Command,
    Response,
    Status,
    c_echo_rq,
    c_store_rq,
    code_to_category,
    command_elements,
    context_mismatch,
    encode_command,
    is_out_of_resources,
    response_to,
)
from pneumonode.dicom_node.pdu_items import ProtocolError

CT = "1.2.840.10008.5.1.4.1.1.2"


def _read(command: bytes) -> dict[str, object]:
    """The command set as pydicom reads it (Implicit VR Little Endian), by keyword."""
    dataset = read_dataset(BytesIO(command), is_implicit_VR=True, is_little_endian=True)
    return {element.keyword: element.value for element in dataset}


def test_c_echo_rq_is_the_fixture_byte_for_byte() -> None:
    assert c_echo_rq(1) == c_echo_rq_command


def test_c_store_rq_reads_back_in_pydicom_and_in_ours() -> None:
    encoded = c_store_rq(7, CT, "1.2.3.4")
    read = _read(encoded)
    assert read["CommandGroupLength"] == len(encoded) - 12
    assert read["AffectedSOPClassUID"] == CT
    assert read["CommandField"] == C_STORE_RQ
    assert read["MessageID"] == 7
    assert read["Priority"] == 0
    assert read["CommandDataSetType"] != 0x0101  # a dataset follows
    assert read["AffectedSOPInstanceUID"] == "1.2.3.4"
    assert Command.decode(encoded) == Command(C_STORE_RQ, 7, CT, "1.2.3.4", True)


def test_a_response_answers_its_request_with_a_named_status() -> None:
    request = Command.decode(c_store_rq(9, CT, "1.2.3.4"))
    encoded = response_to(request, Status.CANNOT_UNDERSTAND, "x" * 80)
    read = _read(encoded)
    assert read["CommandField"] == 0x8001  # C-STORE-RSP
    assert read["MessageIDBeingRespondedTo"] == 9
    assert read["CommandDataSetType"] == 0x0101
    assert read["Status"] == 0xC210
    assert read["ErrorComment"] == "x" * 64  # an LO
    assert read["AffectedSOPInstanceUID"] == "1.2.3.4"
    assert Response.decode(encoded, 9) == Response(Status.CANNOT_UNDERSTAND, "x" * 64)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (c_store_rq(1, CT, "1.2.3"), "C-STORE-RQ instead of a response"),
        (response_to(Command(C_ECHO_RQ, 2, VERIFICATION, "", False), 0), "another request"),
        (response_to(Command(C_ECHO_RQ, 1, VERIFICATION, "", False), 0)[:-1], "malformed"),
        (response_to(Command(C_ECHO_RQ, 1, VERIFICATION, "", False), 0)[:-4], "malformed"),
        (encode_command([(COMMAND_FIELD, b"\x30\x80"), (STATUS, b"")]), "without a status"),
    ],
    ids=["a-request", "other-message", "value-cut", "header-cut", "no-status"],
)
def test_a_response_that_is_not_one_is_a_protocol_error(command: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Response.decode(command, 1)


def test_the_same_number_has_a_name_for_each_meaning() -> None:
    """0x0110 is both the Message ID element and the Processing Failure status."""
    assert MESSAGE_ID == Status.PROCESSING_FAILURE == 0x0110
    assert AFFECTED_SOP_INSTANCE_UID == 0x1000
    assert Status(0xA900).name == "DATASET_DOES_NOT_MATCH_SOP_CLASS"
    assert command_elements(c_echo_rq(3))[MESSAGE_ID] == b"\x03\x00"


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (0x0000, SUCCESS),
        (0xB000, WARNING),
        (0x0107, WARNING),
        (0xA700, FAILURE),
        (0xC210, FAILURE),
        (0x0122, FAILURE),
        (0xFE00, CANCEL),
        (0xFF00, PENDING),
    ],
)
def test_status_categories(code: int, category: str) -> None:
    assert code_to_category(code) == category


def test_out_of_resources_is_the_a7xx_range() -> None:
    assert is_out_of_resources(Status.OUT_OF_RESOURCES) and is_out_of_resources(0xA7FF)
    assert not is_out_of_resources(0xA800) and not is_out_of_resources(0xA900)


def test_a_command_must_match_its_context() -> None:
    store = Command(C_STORE_RQ, 1, CT, "1.2.3", True)
    echo = Command(C_ECHO_RQ, 1, VERIFICATION, "", False)
    assert context_mismatch(store, 1, CT) is None
    assert context_mismatch(echo, 1, VERIFICATION) is None
    assert "C-STORE-RQ for 1.2.840.10008.5.1.4.1.1.2 on presentation context 3" in (
        context_mismatch(store, 3, "1.2.840.10008.5.1.4.1.1.7") or ""
    )
    assert "C-ECHO only" in (
        context_mismatch(Command(C_STORE_RQ, 1, VERIFICATION, "", True), 1, VERIFICATION) or ""
    )
    assert "an invalid UID" in (
        context_mismatch(Command(C_STORE_RQ, 1, "x\n", "", True), 1, CT) or ""
    )
