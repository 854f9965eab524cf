"""The PDU codec (dicom_node/pdu.py, pdu_items.py) against byte fixtures (encoded_pdus.py): each
fixture decodes to the fields it was written from, and those fields encode to the fixture, byte
for byte; pynetdicom's decoder reads each PDU fixture to the same fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import encoded_pdus as fixtures
import pynetdicom.pdu
import pytest

from pneumonode.dicom_node.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    ABORT_PROVIDER,
    ABORT_SERVICE_USER,
    ABSTRACT_SYNTAX_REFUSED,
    ACSE_NO_REASON_GIVEN,
    CONTEXT_ACCEPTED,
    PDU_HEADER,
    PDV_COMMAND,
    PDV_LAST,
    REASON_NOT_SPECIFIED,
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    ae_title_field,
    encode_pdu,
    p_data_tf,
    pdv_items,
    release_rp,
    release_rq,
)
from pneumonode.dicom_node.pdu_items import (
    ABSTRACT_SYNTAX,
    APPLICATION_CONTEXT,
    APPLICATION_CONTEXT_ITEM,
    REASON_INVALID_PARAMETER,
    SOP_CLASS_EXTENDED_NEGOTIATION,
    TRANSFER_SYNTAX,
    AsynchronousOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    ProtocolError,
    RoleSelection,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_text,
    encode_item,
    encode_uid,
    items,
)

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
PYNETDICOM_USER = UserInformation(
    max_length=16382,
    implementation_class_uid="1.2.826.0.1.3680043.9.3811.0.9.0",
    implementation_version_name="PYNETDICOM_090",
)
DCMTK_USER = UserInformation(
    max_length=16384,
    implementation_class_uid="1.2.276.0.7230010.3.0.3.6.0",
    implementation_version_name="OFFIS_DCMTK_360",
)


def _item_value(encoded: bytes) -> memoryview:
    """The value of a one-item fixture, its header checked and removed."""
    ((_kind, value),) = list(items(encoded))
    return value


# (fixture, the decoded item, its decoder)
ITEMS: list[tuple[bytes, Any, Callable[[memoryview], Any]]] = [
    (
        fixtures.presentation_context_rq,
        PresentationContextRQ(1, VERIFICATION, [IMPLICIT]),
        PresentationContextRQ.decode,
    ),
    (
        fixtures.presentation_context_rq_ct,
        PresentationContextRQ(3, CT, [IMPLICIT, EXPLICIT, "1.2.840.1"]),
        PresentationContextRQ.decode,
    ),
    (
        fixtures.presentation_context_ac,
        PresentationContextAC(1, CONTEXT_ACCEPTED, IMPLICIT),
        PresentationContextAC.decode,
    ),
    (
        fixtures.presentation_context_ac_no_ts,
        PresentationContextAC(3, ABSTRACT_SYNTAX_REFUSED, ""),
        PresentationContextAC.decode,
    ),
    (
        fixtures.asynchronous_operations_window,
        AsynchronousOperationsWindow(5, 5),
        AsynchronousOperationsWindow.decode,
    ),
    (fixtures.role_selection, RoleSelection(CT, False, True), RoleSelection.decode),
    (
        fixtures.user_identity_rq_user_nopw,
        UserIdentityRQ(1, True, b"pynetdicom"),
        UserIdentityRQ.decode,
    ),
    (
        fixtures.user_identity_rq_user_pass,
        UserIdentityRQ(2, False, b"pynetdicom", b"p4ssw0rd"),
        UserIdentityRQ.decode,
    ),
    (fixtures.user_identity_ac, UserIdentityAC(b"Accepted"), UserIdentityAC.decode),
    (fixtures.user_information, PYNETDICOM_USER, UserInformation.decode),
]


@pytest.mark.parametrize(("encoded", "decoded", "decode"), ITEMS)
def test_each_item_decodes_to_its_fields_and_encodes_back_byte_for_byte(
    encoded: bytes, decoded: Any, decode: Callable[[memoryview], Any]
) -> None:
    assert decode(_item_value(encoded)) == decoded
    assert decoded.encode() == encoded


@pytest.mark.parametrize(
    ("encoded", "kind", "text"),
    [
        (fixtures.application_context, APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT),
        (fixtures.abstract_syntax, ABSTRACT_SYNTAX, VERIFICATION),
        (fixtures.transfer_syntax, TRANSFER_SYNTAX, IMPLICIT),
        (fixtures.implementation_class_uid, 0x52, "1.2.826.0.1.3680043.9.3811.0.9.0"),
        (fixtures.implementation_version_name, 0x55, "PYNETDICOM_090"),
    ],
)
def test_the_items_that_hold_one_uid_or_name(encoded: bytes, kind: int, text: str) -> None:
    assert decode_text(_item_value(encoded)) == text
    if kind == 0x55:  # a name goes as it is; a UID is padded to an even length
        assert encode_item(kind, text.encode()) == encoded
    else:
        assert encode_item(kind, encode_uid(text)) == encoded


def test_the_maximum_length_sub_item() -> None:
    user = UserInformation.decode(_item_value(encode_item(0x50, fixtures.maximum_length)))
    assert user == UserInformation(max_length=16382)
    assert user.encode() == encode_item(0x50, fixtures.maximum_length)


def test_user_information_keeps_the_sub_items_it_does_not_read_in_other() -> None:
    malformed_window = encode_item(0x53, b"\x00\x05")  # two bytes, not four
    value = fixtures.maximum_length + fixtures.extended_negotiation + malformed_window
    user = UserInformation.decode(memoryview(value))
    assert user.max_length == 16382
    assert user.asynchronous_operations is None
    assert user.other == [
        (SOP_CLASS_EXTENDED_NEGOTIATION, fixtures.extended_negotiation[4:]),
        (0x53, b"\x00\x05"),
    ]
    assert user.encode() == encode_item(0x50, value)


def test_a_maximum_length_that_is_not_four_bytes_reads_as_no_limit() -> None:
    user = UserInformation.decode(memoryview(encode_item(0x51, b"\x00\x40")))
    assert user.max_length == 0


def test_unpadded_uids_read_the_same() -> None:
    """pynetdicom and others send odd-length UIDs without the NUL."""
    unpadded = encode_item(
        0x20,
        b"\x01\x00\x00\x00"
        + encode_item(ABSTRACT_SYNTAX, VERIFICATION.encode())
        + encode_item(TRANSFER_SYNTAX, IMPLICIT.encode()),
    )
    assert PresentationContextRQ.decode(_item_value(unpadded)) == PresentationContextRQ(
        1, VERIFICATION, [IMPLICIT]
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x10\x00\x00\x08abc",  # runs past the end
        fixtures.abstract_syntax + b"\x40\x00",  # bytes left over
    ],
)
def test_an_item_that_does_not_fit_is_an_invalid_parameter(data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        list(items(data))
    assert caught.value.reason == REASON_INVALID_PARAMETER


# --- PDUs -----------------------------------------------------------------------------------


def _body(encoded: bytes, kind: int) -> memoryview:
    found, _reserved, length = PDU_HEADER.unpack_from(encoded)
    assert found == kind and length == len(encoded) - PDU_HEADER.size
    return memoryview(encoded)[PDU_HEADER.size :]


ASSOCIATE_RQS = [
    (
        fixtures.a_associate_rq,
        AssociateRQ(
            ae_title_field("ANY-SCP"),
            ae_title_field("ECHOSCU"),
            APPLICATION_CONTEXT,
            [PresentationContextRQ(1, VERIFICATION, [IMPLICIT])],
            PYNETDICOM_USER,
        ),
    ),
    (
        fixtures.a_associate_rq_user_async,
        AssociateRQ(
            ae_title_field("ANY-SCP"),
            ae_title_field("ECHOSCU"),
            APPLICATION_CONTEXT,
            [PresentationContextRQ(1, VERIFICATION, [IMPLICIT])],
            UserInformation(
                max_length=16382,
                implementation_class_uid="1.2.826.0.1.3680043.9.3811.0.9.0",
                implementation_version_name="PYNETDICOM_090",
                asynchronous_operations=AsynchronousOperationsWindow(5, 5),
                user_identity=UserIdentityRQ(1, True, b"pynetdicom"),
            ),
        ),
    ),
    (
        fixtures.a_associate_rq_role,
        AssociateRQ(
            ae_title_field("ANY-SCP"),
            ae_title_field("GETSCU"),
            APPLICATION_CONTEXT,
            [PresentationContextRQ(1, CT, [EXPLICIT])],
            UserInformation(
                max_length=16382,
                implementation_class_uid="1.2.826.0.1.3680043.9.3811.0.9.0",
                implementation_version_name="PYNETDICOM_090",
                role_selections=[RoleSelection(CT, False, True)],
            ),
        ),
    ),
]


@pytest.mark.parametrize(("encoded", "request_pdu"), ASSOCIATE_RQS)
def test_a_associate_rq(encoded: bytes, request_pdu: AssociateRQ) -> None:
    decoded = AssociateRQ.decode(_body(encoded, A_ASSOCIATE_RQ))
    assert decoded == request_pdu
    assert request_pdu.encode() == encoded
    theirs = pynetdicom.pdu.A_ASSOCIATE_RQ()
    theirs.decode(encoded)
    assert (theirs.called_ae_title, theirs.calling_ae_title) == (
        decoded.called_ae,
        decoded.calling_ae,
    )
    assert theirs.application_context_name == decoded.application_context
    assert [
        (c.context_id, c.abstract_syntax, c.transfer_syntax) for c in theirs.presentation_context
    ] == [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in decoded.contexts]


ASSOCIATE_ACS = [
    (
        fixtures.a_associate_ac,
        AssociateAC(
            ae_title_field("ANY-SCP"),
            ae_title_field("ECHOSCU"),
            APPLICATION_CONTEXT,
            [PresentationContextAC(1, CONTEXT_ACCEPTED, IMPLICIT)],
            DCMTK_USER,
        ),
    ),
    (
        fixtures.a_associate_ac_refused,
        AssociateAC(
            ae_title_field("ANY-SCP"),
            ae_title_field("ECHOSCU"),
            APPLICATION_CONTEXT,
            [
                PresentationContextAC(1, CONTEXT_ACCEPTED, IMPLICIT),
                PresentationContextAC(3, ABSTRACT_SYNTAX_REFUSED, IMPLICIT),
            ],
            DCMTK_USER,
        ),
    ),
]


@pytest.mark.parametrize(("encoded", "answer"), ASSOCIATE_ACS)
def test_a_associate_ac(encoded: bytes, answer: AssociateAC) -> None:
    decoded = AssociateAC.decode(_body(encoded, A_ASSOCIATE_AC))
    assert decoded == answer
    assert answer.encode() == encoded
    theirs = pynetdicom.pdu.A_ASSOCIATE_AC()
    theirs.decode(encoded)
    assert [(c.context_id, c.result, c.transfer_syntax) for c in theirs.presentation_context] == [
        (c.context_id, c.result, c.transfer_syntax) for c in decoded.contexts
    ]
    user = theirs.user_information
    assert (user.maximum_length, user.implementation_class_uid) == (
        decoded.user.max_length,
        decoded.user.implementation_class_uid,
    )


def test_an_associate_pdu_shorter_than_its_fixed_fields_is_an_invalid_parameter() -> None:
    with pytest.raises(ProtocolError) as caught:
        AssociateRQ.decode(memoryview(fixtures.a_associate_rq[6:60]))
    assert caught.value.reason == REASON_INVALID_PARAMETER


def test_a_associate_rj() -> None:
    rejection = AssociateRJ(REJECTED_PERMANENT, SOURCE_SERVICE_USER, ACSE_NO_REASON_GIVEN)
    assert AssociateRJ.decode(_body(fixtures.a_associate_rj, 0x03)) == rejection
    assert rejection.encode() == fixtures.a_associate_rj
    theirs = pynetdicom.pdu.A_ASSOCIATE_RJ()
    theirs.decode(fixtures.a_associate_rj)
    assert (theirs.result, theirs.source, theirs.reason_diagnostic) == (1, 1, 1)


def test_a_release_rq_and_rp() -> None:
    assert release_rq() == fixtures.a_release_rq
    assert release_rp() == fixtures.a_release_rp
    pynetdicom.pdu.A_RELEASE_RQ().decode(fixtures.a_release_rq)
    pynetdicom.pdu.A_RELEASE_RP().decode(fixtures.a_release_rp)


@pytest.mark.parametrize(
    ("encoded", "abort"),
    [
        (fixtures.a_abort, Abort(ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)),
        (fixtures.a_p_abort, Abort(ABORT_PROVIDER, REASON_INVALID_PARAMETER)),
    ],
)
def test_a_abort(encoded: bytes, abort: Abort) -> None:
    assert Abort.decode(_body(encoded, A_ABORT)) == abort
    assert abort.encode() == encoded
    theirs = pynetdicom.pdu.A_ABORT_RQ()
    theirs.decode(encoded)
    assert (theirs.source, theirs.reason_diagnostic) == (abort.source, abort.reason)


def test_p_data_tf() -> None:
    body = _body(fixtures.p_data_tf, 0x04)
    ((context_id, control, value),) = list(pdv_items(body))
    assert (context_id, control) == (1, PDV_COMMAND | PDV_LAST)
    assert bytes(value) == fixtures.c_echo_rq_command
    assert p_data_tf(1, PDV_COMMAND | PDV_LAST, fixtures.c_echo_rq_command) == fixtures.p_data_tf
    theirs = pynetdicom.pdu.P_DATA_TF()
    theirs.decode(fixtures.p_data_tf)
    assert theirs.presentation_data_value_items[0].presentation_data_value == (
        b"\x03" + fixtures.c_echo_rq_command
    )


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x46\x01",  # shorter than a PDV header
        b"\x00\x00\x00\x01\x01\x03",  # a PDV length under 2
        b"\x00\x00\x00\x10\x01\x03\x00\x00",  # a PDV that runs past the PDU
    ],
)
def test_a_malformed_pdv_is_an_invalid_parameter(body: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        list(pdv_items(memoryview(body)))
    assert caught.value.reason == REASON_INVALID_PARAMETER


def test_encode_pdu_writes_the_header() -> None:
    assert encode_pdu(0x05, b"\x00" * 4) == fixtures.a_release_rq
