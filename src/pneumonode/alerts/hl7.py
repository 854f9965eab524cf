"""HL7 v2.5.1 ORU^R01 for a result, built and checked with hl7apy, sent over MLLP with python-hl7.

The message (original acknowledgment mode; every value is set as a typed value, never as ER7
text, so hl7apy checks its type and length and escapes HL7's delimiters in patient names and the
like):

- **MSH**: our sending application and facility (settings), ``ORU^R01^ORU_R01``, a control ID
  of our own (kept across retries, so a receiver can discard a repeat), ``P``, ``2.5.1``,
  character set ``UNICODE UTF-8``.
- **PID** from the DICOM patient module: PID-3 Patient ID (``UNKNOWN`` when empty; assigning
  authority: Issuer of Patient ID when it fits an HD's 20 characters; type MR), PID-5 the name
  (DICOM's family^given^middle^prefix^suffix reordered to XPN's family^given^middle^suffix^
  prefix; name type ``U`` when there is none), PID-7 birth date, PID-8 sex (``U`` unknown).
- **OBR**: OBR-4 the service (``PTXAI^Pneumothorax AI triage^99PNX``), OBR-5 the priority
  (``S`` stat for a pneumothorax, ``R`` routine otherwise), OBR-7 the study date and time,
  OBR-18 the Accession Number (IHE Radiology's place for it), OBR-20 the Study Instance UID,
  OBR-22 when the result was made, OBR-25 ``F`` (final) or ``C`` (a correction of one sent
  before).
- **NTE** under OBR: "AI result, not for clinical use" (the result label) and the model.
- **OBX** rows: pneumothorax present/absent (SNOMED CT, as in our SR; OBX-8 ``A`` when present),
  side, area in mm² (UCUM ``mm2``; in ``{pixels}`` when the image has no pixel spacing), the
  calibrated probability with the operating point as reference range (or the highest pixel
  probability for a model without calibration), the algorithm's name and version (DCM 111001,
  111003), the SOP Instance UID of the image (DCM 121126 "Image") and the Study Instance UID
  (DCM 110180 "Study Instance UID").

An answer is read as an ACK: MSA-1 ``AA`` (or ``CA``) is delivered; ``AE``/``AR`` (``CE``/``CR``),
an ACK for another control ID, no ACK within the timeout, or no connection are failures that
the outbox retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.factories import datatype_factory

from pneumonode.addresses import MllpTarget
from pneumonode.alerts.content import AlertContent
from pneumonode.alerts.outcome import AttemptOutcome

__all__ = [
    "ACCEPTED",
    "HL7_VERSION",
    "MAX_NAMESPACE_ID",
    "MESSAGE_TYPE",
    "Acknowledgement",
    "build_oru",
    "read_ack",
    "send_oru",
]

HL7_VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
CHARACTER_SET = "UNICODE UTF-8"  # HL7 table 0211
ENCODING = "utf-8"
#: MSA-1 codes that mean the receiver took the message (original and enhanced mode)
ACCEPTED = frozenset({"AA", "CA"})
#: HD.1 (namespace ID, an IS): MSH-3, MSH-4 and PID-3's assigning authority
MAX_NAMESPACE_ID = 20

#: OBR-4: what was "ordered" (a local code: 99zzz is HL7's range for those)
SERVICE = ("PTXAI", "Pneumothorax AI triage", "99PNX")
#: OBX-3 codes; the finding's codes are our SR's (TID 1500 in pneumonode.results.sr)
PNEUMOTHORAX = ("36118008", "Pneumothorax", "SCT")
PRESENT = ("52101004", "Present", "SCT")
ABSENT = ("2667000", "Absent", "SCT")
LATERALITY = ("272741003", "Laterality", "SCT")
SIDES = {
    "right": ("24028007", "Right", "SCT"),
    "left": ("7771000", "Left", "SCT"),
    "bilateral": ("51440002", "Right and left", "SCT"),
}
AREA = ("PTXAREA", "Pneumothorax area", "99PNX")
PROBABILITY = ("PTXPROB", "Calibrated probability of pneumothorax", "99PNX")
MAX_PROBABILITY = ("122157", "Probability", "DCM")  # the highest pixel probability, as the SR
ALGORITHM_NAME = ("111001", "Algorithm Name", "DCM")
ALGORITHM_VERSION = ("111003", "Algorithm Version", "DCM")
IMAGE = ("121126", "Image", "DCM")
STUDY_INSTANCE_UID = ("110180", "Study Instance UID", "DCM")
SQUARE_MILLIMETRES = ("mm2", "mm2", "UCUM")
PIXELS = ("{pixels}", "pixels", "UCUM")
RATIO = ("1", "1", "UCUM")

PRIORITY_STAT = "S"  # HL7 table 0027
PRIORITY_ROUTINE = "R"
ABNORMAL = "A"  # HL7 table 0078
NORMAL = "N"
FINAL = "F"  # HL7 table 0085 (OBX-11) and 0123 (OBR-25)
CORRECTED = "C"


def hl7_timestamp(at: datetime) -> str:
    """A DTM with seconds and the UTC offset, e.g. ``20260105143000+0000``."""
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _set(parent: object, path: str, value: str) -> None:
    """Set the leaf ``path`` (dotted, e.g. ``pid_5.xpn_1.fn_1``) under ``parent`` to ``value``
    as a value, not as ER7 (hl7apy escapes delimiters in it); empty values are left out."""
    if not value:
        return
    node = parent
    for name in path.split("."):
        node = getattr(node, name)
    node.value = datatype_factory(  # type: ignore[attr-defined]
        node.datatype,  # type: ignore[attr-defined]
        value,
        version=HL7_VERSION,
        validation_level=VALIDATION_LEVEL.STRICT,
    )


def _coded(parent: object, field: str, code: tuple[str, str, str]) -> None:
    """A CE: identifier^text^coding system."""
    for index, part in enumerate(code, start=1):
        _set(parent, f"{field}.ce_{index}", part)


def _observation_value(obx: Any, value_type: str, parts: tuple[str, ...]) -> None:
    """OBX-5, whose type "varies" (OBX-2 names it) and so cannot be built from typed leaves
    under strict validation: each part is escaped by its HL7 type, the components joined with
    the message's own separator, and hl7apy parses the field back."""
    escaped = [
        datatype_factory(
            value_type if len(parts) == 1 else "ST",
            part,
            version=HL7_VERSION,
            validation_level=VALIDATION_LEVEL.STRICT,
        ).to_er7(obx.encoding_chars)
        for part in parts
    ]
    obx.obx_5 = obx.encoding_chars["COMPONENT"].join(escaped)


def _number(value: float) -> str:
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"


def build_oru(
    content: AlertContent,
    *,
    control_id: str,
    sending_application: str,
    sending_facility: str | None = None,
    at: datetime,
    correction: bool = False,
) -> str:
    """The ORU^R01 for ``content`` in ER7 (segments separated by carriage returns), checked
    against the v2.5.1 structures by hl7apy.

    Args:
        control_id: MSH-10, at most 20 characters; the ACK names it.
        at: when the result was made (MSH-7, OBR-22, OBX-14).
        correction: the result replaces one alerted before (OBR-25 and OBX-11 ``C``).

    Raises:
        ValueError: a value does not fit its HL7 type, or the message its structure.
    """
    if not 1 <= len(control_id) <= 20:
        raise ValueError(f"MSH-10 control ID must be 1-20 characters, got {control_id!r}")
    status = CORRECTED if correction else FINAL
    when = hl7_timestamp(at)
    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    _set(msh, "msh_3.hd_1", sending_application)
    _set(msh, "msh_4.hd_1", sending_facility or "")
    _set(msh, "msh_7.ts_1", when)
    _set(msh, "msh_9.msg_1", "ORU")
    _set(msh, "msh_9.msg_2", "R01")
    _set(msh, "msh_9.msg_3", "ORU_R01")
    _set(msh, "msh_10", control_id)
    _set(msh, "msh_11.pt_1", "P")
    _set(msh, "msh_18", CHARACTER_SET)

    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = patient_result.add_group("ORU_R01_PATIENT").pid
    patient = content.patient
    pid.pid_1.value = "1"
    _set(pid, "pid_3.cx_1", patient.patient_id or "UNKNOWN")
    if len(patient.issuer) <= MAX_NAMESPACE_ID:  # an HD's namespace ID is an IS of 20
        _set(pid, "pid_3.cx_4.hd_1", patient.issuer)
    _set(pid, "pid_3.cx_5", "MR")
    _set(pid, "pid_5.xpn_1.fn_1", patient.family_name)
    _set(pid, "pid_5.xpn_2", patient.given_name)
    _set(pid, "pid_5.xpn_3", patient.middle_name)
    _set(pid, "pid_5.xpn_4", patient.name_suffix)
    _set(pid, "pid_5.xpn_5", patient.name_prefix)
    if not any((patient.family_name, patient.given_name, patient.middle_name, patient.name_prefix)):
        _set(pid, "pid_5.xpn_7", "U")  # PID-5 is required: an unspecified name
    _set(pid, "pid_7.ts_1", patient.birth_date)
    _set(pid, "pid_8", patient.sex or "U")

    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1.value = "1"
    _coded(obr, "obr_4", SERVICE)
    _set(obr, "obr_5", PRIORITY_STAT if content.present else PRIORITY_ROUTINE)
    _set(obr, "obr_7.ts_1", content.study_datetime)
    _set(obr, "obr_18", content.accession_number)
    _set(obr, "obr_20", content.study_uid)
    _set(obr, "obr_22.ts_1", when)
    _set(obr, "obr_24", "RAD")
    _set(obr, "obr_25", status)
    nte = order.add_segment("NTE")
    nte.nte_1.value = "1"
    _set(nte, "nte_3", f"AI result, {content.label}: {content.model_name} {content.model_version}")

    rows: list[tuple[str, tuple[str, str, str], str | tuple[str, str, str], dict[str, str]]] = []
    finding = PRESENT if content.present else ABSENT
    rows.append(("CE", PNEUMOTHORAX, finding, {"obx_8": ABNORMAL if content.present else NORMAL}))
    if content.present and content.side in SIDES:
        rows.append(("CE", LATERALITY, SIDES[content.side], {}))
    if content.present:
        if content.area_mm2 is not None:
            rows.append(("NM", AREA, _number(content.area_mm2), {"units": "mm2"}))
        else:
            rows.append(("NM", AREA, str(content.area_pixels), {"units": "pixels"}))
    if content.probability is not None:
        extra = {"units": "ratio"}
        if content.operating_point is not None:
            extra["obx_7"] = f">={_number(content.operating_point)}"
        rows.append(("NM", PROBABILITY, _number(content.probability), extra))
    else:
        rows.append(("NM", MAX_PROBABILITY, _number(content.max_probability), {"units": "ratio"}))
    rows.append(("ST", ALGORITHM_NAME, content.model_name, {}))
    rows.append(("ST", ALGORITHM_VERSION, content.model_version, {}))
    rows.append(("ST", IMAGE, content.sop_uid, {}))
    rows.append(("ST", STUDY_INSTANCE_UID, content.study_uid, {}))

    units = {"mm2": SQUARE_MILLIMETRES, "pixels": PIXELS, "ratio": RATIO}
    for number, (value_type, code, value, extra) in enumerate(rows, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1.value = str(number)
        _set(obx, "obx_2", value_type)
        _coded(obx, "obx_3", code)
        _observation_value(obx, value_type, value if isinstance(value, tuple) else (value,))
        if "units" in extra:
            _coded(obx, "obx_6", units[extra["units"]])
        _set(obx, "obx_7", extra.get("obx_7", ""))
        _set(obx, "obx_8", extra.get("obx_8", ""))
        _set(obx, "obx_11", status)
        _set(obx, "obx_14.ts_1", when)
    message.validate()
    return str(message.to_er7())


@dataclass(frozen=True)
class Acknowledgement:
    """What an ACK said: MSA-1, MSA-2 and MSA-3 (the latter may quote the message: it is kept
    out of logs and the audit trail)."""

    code: str
    control_id: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def read_ack(answer: hl7.Message) -> Acknowledgement:
    """The MSA of an answer parsed by python-hl7.

    Raises:
        ValueError: the answer has no MSA segment.
    """
    try:
        msa = answer.segment("MSA")
    except KeyError:
        raise ValueError("the answer has no MSA segment") from None

    def field(index: int) -> str:
        return str(msa[index]).strip() if len(msa) > index else ""

    return Acknowledgement(field(1).upper(), field(2), field(3))


async def _exchange(target: MllpTarget, message: str, timeout: float) -> hl7.Message:
    reader, writer = await asyncio.wait_for(
        open_hl7_connection(target.host, target.port, encoding=ENCODING), timeout
    )
    try:
        writer.writemessage(message)
        await asyncio.wait_for(writer.drain(), timeout)
        return await asyncio.wait_for(reader.readmessage(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


def send_oru(target: MllpTarget, message: str, control_id: str, timeout: float) -> AttemptOutcome:
    """Send ``message`` (ER7) to ``target`` in an MLLP block and read its ACK; connecting,
    sending and waiting for the ACK each get ``timeout`` seconds. Never raises for what the
    peer does: every failure is an outcome with a reason free of patient data."""
    try:
        answer = asyncio.run(_exchange(target, message, timeout))
    except TimeoutError:
        return AttemptOutcome.failed(f"no ACK from {target} within {timeout:g} s")
    except asyncio.IncompleteReadError:
        return AttemptOutcome.failed(f"{target} closed the connection without an ACK")
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return AttemptOutcome.failed(f"cannot reach {target}: {why}")
    except (InvalidBlockError, ValueError, hl7.ParseException) as exc:  # not MLLP, HL7, UTF-8
        return AttemptOutcome.failed(f"{target} answered with no HL7 ACK ({type(exc).__name__})")
    try:
        ack = read_ack(answer)
    except ValueError as exc:
        return AttemptOutcome.failed(f"{target}: {exc}")
    if ack.control_id != control_id:
        return AttemptOutcome.failed(
            f"{target} acknowledged another message ({ack.code or 'no code'})", status=ack.code
        )
    if not ack.accepted:
        detail = f": {ack.text[:200]}" if ack.text else ""
        return AttemptOutcome.failed(
            f"{target} answered {ack.code or 'no acknowledgment code'}",
            status=ack.code,
            detail=f"ACK {ack.code}{detail}",
        )
    return AttemptOutcome.sent(ack.code)
