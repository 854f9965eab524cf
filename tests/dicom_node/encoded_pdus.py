"""Encoded PDUs and items for the codec's tests (dicom_node/pdu.py, pdu_items.py), one fixture
per PDU and item type, each written field by field from PS3.8 9.3 and PS3.7 D.3.3.

Laid out after pynetdicom's ``pynetdicom/tests/encoded_pdu_items.py`` (MIT licence,
https://github.com/pydicom/pynetdicom), whose fixtures describe the same requests (ANY-SCP,
ECHOSCU, PYNETDICOM_090, OFFIS_DCMTK_360). Ours differ where our encoding does: UIDs in
presentation-context, application-context and implementation-class-UID items are padded with a
NUL to an even length, as the upper layer has always sent them, and the implementation version
name is not padded. test_pdu.py also reads each fixture with pynetdicom's own decoder.
"""

# One field per line, as the standard lays the PDUs out: not reformatted.
# fmt: off

# --- items ----------------------------------------------------------------------------------

# Application Context Name: 1.2.840.10008.3.1.1.1 (21 characters, padded to 22)
application_context = b"\x10\x00\x00\x16" b"1.2.840.10008.3.1.1.1\x00"

# Abstract Syntax: 1.2.840.10008.1.1 Verification
abstract_syntax = b"\x30\x00\x00\x12" b"1.2.840.10008.1.1\x00"

# Transfer Syntax: 1.2.840.10008.1.2 Implicit VR Little Endian
transfer_syntax = b"\x40\x00\x00\x12" b"1.2.840.10008.1.2\x00"

# -RQ, Presentation Context ID 1: Verification, Implicit VR Little Endian
presentation_context_rq = (
    b"\x20\x00\x00\x30"  # type, reserved, length 48
    b"\x01\x00\x00\x00"  # context ID 1, three reserved bytes
    + abstract_syntax
    + transfer_syntax
)

# -RQ, Presentation Context ID 3: CT Image Storage, three transfer syntaxes
presentation_context_rq_ct = (
    b"\x20\x00\x00\x5e"  # length 94
    b"\x03\x00\x00\x00"
    b"\x30\x00\x00\x1a" b"1.2.840.10008.5.1.4.1.1.2\x00"
    b"\x40\x00\x00\x12" b"1.2.840.10008.1.2\x00"
    b"\x40\x00\x00\x14" b"1.2.840.10008.1.2.1\x00"
    b"\x40\x00\x00\x0a" b"1.2.840.1\x00"  # a transfer syntax we do not know
)

# -AC, Presentation Context ID 1: acceptance, Implicit VR Little Endian
presentation_context_ac = (
    b"\x21\x00\x00\x1a"  # length 26
    b"\x01\x00\x00\x00"  # context ID 1, reserved, result 0 (acceptance), reserved
    + transfer_syntax
)

# -AC, Presentation Context ID 3: abstract syntax not supported (3), no transfer syntax
presentation_context_ac_no_ts = b"\x21\x00\x00\x04" b"\x03\x00\x03\x00"

# Maximum Length Received: 16382
maximum_length = b"\x51\x00\x00\x04" b"\x00\x00\x3f\xfe"

# Implementation Class UID: 1.2.826.0.1.3680043.9.3811.0.9.0 (32 characters)
implementation_class_uid = b"\x52\x00\x00\x20" b"1.2.826.0.1.3680043.9.3811.0.9.0"

# Implementation Version Name: PYNETDICOM_090
implementation_version_name = b"\x55\x00\x00\x0e" b"PYNETDICOM_090"

# Asynchronous Operations Window: 5 invoked, 5 performed
asynchronous_operations_window = b"\x53\x00\x00\x04" b"\x00\x05\x00\x05"

# SCP/SCU Role Selection: CT Image Storage, SCU role 0, SCP role 1 (the UID as its length says)
role_selection = b"\x54\x00\x00\x1d" b"\x00\x19" b"1.2.840.10008.5.1.4.1.1.2" b"\x00\x01"

# User Identity -RQ: type 1 (username), response requested, "pynetdicom", no secondary field
user_identity_rq_user_nopw = (
    b"\x58\x00\x00\x10" b"\x01\x01" b"\x00\x0a" b"pynetdicom" b"\x00\x00"
)

# User Identity -RQ: type 2 (username and passcode), no response requested
user_identity_rq_user_pass = (
    b"\x58\x00\x00\x18" b"\x02\x00" b"\x00\x0a" b"pynetdicom" b"\x00\x08" b"p4ssw0rd"
)

# User Identity -AC: server response "Accepted"
user_identity_ac = b"\x59\x00\x00\x0a" b"\x00\x08" b"Accepted"

# SOP Class Extended Negotiation: CT Image Storage, service class application information
# 02 00 03 00 01 00 (not read by us: kept as it is)
extended_negotiation = (
    b"\x56\x00\x00\x21" b"\x00\x19" b"1.2.840.10008.5.1.4.1.1.2" b"\x02\x00\x03\x00\x01\x00"
)

# User Information: maximum length 16382, implementation class UID and version name
user_information = (
    b"\x50\x00\x00\x3e"  # length 62
    + maximum_length
    + implementation_class_uid
    + implementation_version_name
)

# --- PDUs -----------------------------------------------------------------------------------

_FIXED_ECHO = (
    b"\x00\x01\x00\x00"  # protocol version 1, reserved
    b"ANY-SCP         "  # called AE title
    b"ECHOSCU         "  # calling AE title
    + b"\x00" * 32
)

# A-ASSOCIATE-RQ: ANY-SCP called by ECHOSCU; context 1 Verification / Implicit VR Little
# Endian; maximum length 16382, implementation class UID, version name PYNETDICOM_090
a_associate_rq = (
    b"\x01\x00\x00\x00\x00\xd4"  # type 1, reserved, length 212
    + _FIXED_ECHO
    + application_context
    + presentation_context_rq
    + user_information
)

# The same with an asynchronous operations window (5, 5) and a user identity (username,
# response requested) in the user information
a_associate_rq_user_async = (
    b"\x01\x00\x00\x00\x00\xf0"  # length 240
    + _FIXED_ECHO
    + application_context
    + presentation_context_rq
    + b"\x50\x00\x00\x5a"  # length 90
    + maximum_length
    + implementation_class_uid
    + implementation_version_name
    + asynchronous_operations_window
    + user_identity_rq_user_nopw
)

# A-ASSOCIATE-RQ from GETSCU: context 1 CT Image Storage / Explicit VR Little Endian, and a
# role selection (SCP role) for CT Image Storage
a_associate_rq_role = (
    b"\x01\x00\x00\x00\x00\xff"  # length 255
    b"\x00\x01\x00\x00"
    b"ANY-SCP         "
    b"GETSCU          "
    + b"\x00" * 32
    + application_context
    + b"\x20\x00\x00\x3a"  # length 58
    b"\x01\x00\x00\x00"
    b"\x30\x00\x00\x1a" b"1.2.840.10008.5.1.4.1.1.2\x00"
    b"\x40\x00\x00\x14" b"1.2.840.10008.1.2.1\x00"
    + b"\x50\x00\x00\x5f"  # length 95
    + maximum_length
    + implementation_class_uid
    + implementation_version_name
    + role_selection
)

_USER_INFORMATION_DCMTK = (
    b"\x50\x00\x00\x3b"  # length 59
    b"\x51\x00\x00\x04" b"\x00\x00\x40\x00"  # maximum length 16384
    b"\x52\x00\x00\x1c" b"1.2.276.0.7230010.3.0.3.6.0\x00"  # 27 characters, padded
    b"\x55\x00\x00\x0f" b"OFFIS_DCMTK_360"  # 15 characters, not padded
)

# A-ASSOCIATE-AC: context 1 accepted with Implicit VR Little Endian; maximum length 16384,
# implementation OFFIS_DCMTK_360
a_associate_ac = (
    b"\x02\x00\x00\x00\x00\xbb"  # type 2, length 187
    + _FIXED_ECHO
    + application_context
    + presentation_context_ac
    + _USER_INFORMATION_DCMTK
)

# The same, with context 3 refused (abstract syntax not supported) and, as our acceptor answers,
# the first proposed transfer syntax named in its answer
a_associate_ac_refused = (
    b"\x02\x00\x00\x00\x00\xd9"  # length 217
    + _FIXED_ECHO
    + application_context
    + presentation_context_ac
    + b"\x21\x00\x00\x1a" b"\x03\x00\x03\x00"
    + transfer_syntax
    + _USER_INFORMATION_DCMTK
)

# A-ASSOCIATE-RJ: rejected permanent (1), service user (1), no reason given (1)
a_associate_rj = b"\x03\x00\x00\x00\x00\x04" b"\x00\x01\x01\x01"

# A-RELEASE-RQ and -RP: four reserved bytes
a_release_rq = b"\x05\x00\x00\x00\x00\x04" b"\x00\x00\x00\x00"
a_release_rp = b"\x06\x00\x00\x00\x00\x04" b"\x00\x00\x00\x00"

# A-ABORT from the service user (0), reason not specified (0)
a_abort = b"\x07\x00\x00\x00\x00\x04" b"\x00\x00\x00\x00"

# A-ABORT from the service provider (2), invalid PDU parameter value (6)
a_p_abort = b"\x07\x00\x00\x00\x00\x04" b"\x00\x00\x02\x06"

# A C-ECHO-RQ command set (Implicit VR Little Endian): group length 56, Affected SOP Class UID
# Verification, Command Field 0x0030, Message ID 1, Command Data Set Type 0x0101 (none)
c_echo_rq_command = (
    b"\x00\x00\x00\x00\x04\x00\x00\x00" b"\x38\x00\x00\x00"
    b"\x00\x00\x02\x00\x12\x00\x00\x00" b"1.2.840.10008.1.1\x00"
    b"\x00\x00\x00\x01\x02\x00\x00\x00" b"\x30\x00"
    b"\x00\x00\x10\x01\x02\x00\x00\x00" b"\x01\x00"
    b"\x00\x00\x00\x08\x02\x00\x00\x00" b"\x01\x01"
)

# P-DATA-TF with one PDV: context 1, message control header 3 (command, last fragment)
p_data_tf = (
    b"\x04\x00\x00\x00\x00\x4a"  # type 4, length 74
    b"\x00\x00\x00\x46"  # PDV length 70: context ID, control header, 68 bytes of command
    b"\x01\x03" + c_echo_rq_command
)
