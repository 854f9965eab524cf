"""Parsing a received dataset: the first of the listener's three steps (parse, spool, record).

``parse_received`` checks that the whole structure of the file the upper layer wrote is
readable (``structure.check_structure``), reads the few attributes the node uses
(``header.read_header``, pydicom where that quick walk leaves the file to it), checks them
against the C-STORE request and asks the selection whether the image is analysed. It reads
the file and writes nothing; what it refuses is a :class:`RefusedDatasetError` naming the
problem, never a value of the dataset.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from pneumonode.conversion.decode import BoundedReader, keep_dicom_values_out_of_logs
from pneumonode.dicom_node.header import read_header
from pneumonode.dicom_node.selection import SELECTION_KEYWORDS, skip_reason
from pneumonode.dicom_node.spool import dataset_offset
from pneumonode.dicom_node.structure import (
    DamagedDatasetError,
    TooLargeToCheckError,
    check_structure,
)
from pneumonode.selection_rules import SelectionRules

__all__ = [
    "HEADER_KEYWORDS",
    "KEPT",
    "ParsedInstance",
    "Problem",
    "RefusedDatasetError",
    "parse_received",
    "read_values",
    "text_value",
]

_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # little / big endian
#: Attributes recorded with each instance, and their column widths.
KEPT = {
    "SeriesInstanceUID": 128,
    "Modality": 16,
    "PatientID": 64,
    "AccessionNumber": 64,
    "StudyDate": 8,
}
#: The longest UID a column holds.
_UID_LENGTH = 128
#: What the listener reads from a dataset (the Conformance Statement lists them).
HEADER_KEYWORDS = (
    "SOPClassUID",
    "StudyInstanceUID",
    "SOPInstanceUID",
    *KEPT,
    *SELECTION_KEYWORDS,
)


class Problem(enum.Enum):
    """Why a received dataset is refused (the listener answers each with its own status)."""

    DAMAGED = "damaged dataset"
    TOO_LARGE_TO_CHECK = "too large to check"
    NO_FILE_META_LENGTH = "no File Meta Information Group Length"
    UNREADABLE = "unreadable dataset"
    SOP_CLASS_DIFFERS = "the dataset's SOP Class UID differs from the request's"
    NO_STUDY_UID = "no Study Instance UID"
    SOP_INSTANCE_DIFFERS = "SOP Instance UID differs from the C-STORE request"


class RefusedDatasetError(Exception):
    """A dataset the listener does not store: ``problem``, and ``reason`` for the audit trail
    (it names elements by tag or an exception by type, never a value)."""

    def __init__(self, problem: Problem, reason: str | None = None) -> None:
        super().__init__(reason or problem.value)
        self.problem = problem
        self.reason = reason or problem.value


@dataclass(frozen=True)
class ParsedInstance:
    """What the listener knows of a readable dataset that matches its request."""

    study_uid: str
    kept: dict[str, str | None]  # the values of KEPT, stripped and cut to their columns
    skip_reason: str | None  # None: a frontal chest radiograph, analysed
    offset: int  # where the dataset starts in the file (after the File Meta Information)
    size_bytes: int  # of the dataset, without the File Meta Information


def read_values(path: Path) -> tuple[dict[str, Any], bool, int]:
    """The values of :data:`HEADER_KEYWORDS` (None when absent), whether pixel data follows
    them, and the dataset's offset in the file. A quick walk of the elements
    (``header.read_header``) where it can; pydicom where the walk leaves the file to it. A
    value that cannot be converted raises."""
    keep_dicom_values_out_of_logs()
    header = read_header(path, HEADER_KEYWORDS)
    if header is not None:
        return header.values, header.has_pixel_data, header.offset
    offset = dataset_offset(path)
    with BoundedReader(io.FileIO(str(path), "rb")) as handle:  # no 4 GiB read for a bad length
        ds = dcmread(handle, stop_before_pixels=True)
        has_pixels = handle.read(4) in _PIXEL_DATA_TAGS
    return {keyword: ds.get(keyword) for keyword in HEADER_KEYWORDS}, has_pixels, offset


def text_value(values: dict[str, Any], keyword: str, limit: int = _UID_LENGTH) -> str | None:
    """A value as text, stripped and cut to ``limit`` characters; None when absent or empty."""
    value = values.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()[:limit] or None


def parse_received(
    path: Path,
    sop_class_uid: str,
    sop_uid: str,
    transfer_syntax_uid: str,
    rules: SelectionRules,
) -> ParsedInstance:
    """Check and read the dataset received into ``path`` for the C-STORE request's
    ``sop_class_uid`` and ``sop_uid``; :class:`RefusedDatasetError` when it is not to be stored."""
    try:
        check_structure(path, dataset_offset(path), transfer_syntax_uid)
    except DamagedDatasetError as exc:  # names elements by tag, never a value
        raise RefusedDatasetError(Problem.DAMAGED, f"damaged dataset: {exc}") from None
    except TooLargeToCheckError as exc:
        raise RefusedDatasetError(Problem.TOO_LARGE_TO_CHECK, str(exc)) from None
    except ValueError:  # no File Meta Information Group Length (an upload)
        raise RefusedDatasetError(Problem.NO_FILE_META_LENGTH) from None
    try:
        # a malformed element (a length that does not fit its VR, an unknown VR) raises when
        # its value is converted: every value we use is converted here, so that such a
        # dataset is refused, not a processing failure
        values, has_pixels, offset = read_values(path)
        dataset_class = text_value(values, "SOPClassUID")
        study_uid = text_value(values, "StudyInstanceUID")
        dataset_sop = text_value(values, "SOPInstanceUID")
        kept = {keyword: text_value(values, keyword, limit) for keyword, limit in KEPT.items()}
        reason = skip_reason(values, sop_class_uid, has_pixel_data=has_pixels, rules=rules)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise RefusedDatasetError(
            Problem.UNREADABLE, f"unreadable dataset ({type(exc).__name__})"
        ) from None
    if dataset_class != sop_class_uid:
        raise RefusedDatasetError(Problem.SOP_CLASS_DIFFERS)
    if not study_uid:
        raise RefusedDatasetError(Problem.NO_STUDY_UID)
    if dataset_sop != sop_uid:
        raise RefusedDatasetError(Problem.SOP_INSTANCE_DIFFERS)
    return ParsedInstance(study_uid, kept, reason, offset, path.stat().st_size - offset)
