"""Which received objects become jobs: frontal chest radiographs, and never our own output."""

from __future__ import annotations

import re
from typing import Any, Protocol

from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from pneumonode.identity import MANUFACTURER

__all__ = ["SELECTION_KEYWORDS", "is_own_output", "skip_reason"]

RADIOGRAPH_CLASSES = {
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
}
FRONTAL_VIEWS = {"PA", "AP", ""}


class Attributes(Protocol):
    """A dataset, or a mapping of keywords to values (the listener's quick header read)."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


#: Every attribute ``skip_reason`` reads: the listener reads only these (and what it records).
SELECTION_KEYWORDS = (
    "Manufacturer",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "SamplesPerPixel",
)
CHEST_BODY_PARTS = {"CHEST", ""}


def _text(ds: Attributes, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def _shown(value: str, missing: str = "missing") -> str:
    """A code string as it may appear in a reason (logged and audited): only a well-formed one.
    A corrupt dataset can put anything in these elements, a patient's name included."""
    if not value:
        return missing
    return value if _CODE_STRING.fullmatch(value) else "an invalid value"


def is_own_output(ds: Attributes) -> bool:
    """True for objects this node created (SEG, SR, SC overlay) coming back to us."""
    return _text(ds, "Manufacturer") == MANUFACTURER.upper()


def skip_reason(ds: Attributes, sop_class_uid: str, *, has_pixel_data: bool) -> str | None:
    """Why ``ds`` is not processed, or None when it is a frontal chest radiograph.

    ``ds`` may be read without its pixel data (or be the values of SELECTION_KEYWORDS);
    ``has_pixel_data`` says whether it had some.
    """
    sop_class = UID(sop_class_uid)
    if is_own_output(ds):
        return "our own output (loop guard)"
    modality = _text(ds, "Modality")
    if sop_class == SecondaryCaptureImageStorage:
        if modality not in ("CR", "DX"):
            return f"secondary capture with modality {_shown(modality)}, not CR/DX"
    elif sop_class not in RADIOGRAPH_CLASSES:
        return f"not a radiograph ({sop_class.name or sop_class})"
    if not has_pixel_data:
        return "no pixel data"
    body_part = _text(ds, "BodyPartExamined")
    if body_part not in CHEST_BODY_PARTS:
        return f"body part {_shown(body_part)}, not CHEST"
    view = _text(ds, "ViewPosition")
    if view not in FRONTAL_VIEWS:
        return f"view position {_shown(view)}, not frontal (PA/AP)"
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return "unreadable NumberOfFrames"
    if frames != 1:
        return f"multi-frame ({frames} frames)"
    photometric = _text(ds, "PhotometricInterpretation")
    if (
        photometric not in ("MONOCHROME1", "MONOCHROME2")
        or int(ds.get("SamplesPerPixel") or 1) != 1
    ):
        return f"not monochrome ({_shown(photometric, 'no photometric interpretation')})"
    return None
