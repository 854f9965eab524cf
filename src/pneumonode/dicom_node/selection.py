"""Which received objects become jobs: frontal chest radiographs, and never our own output.

The SOP classes (CR, DX, and Secondary Capture) and the image checks (pixel data, one frame,
monochrome) are fixed; the modalities, body parts and view positions analysed are settings
(``analysed_modalities``, ``analysed_body_parts``, ``analysed_view_positions``), handed in as
:class:`SelectionRules` (``pneumonode.selection_rules``, which ``config`` imports too).
"""

from __future__ import annotations

from typing import Any, Protocol

from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from pneumonode.identity import MANUFACTURER, OWN_OUTPUT_REASON
from pneumonode.selection_rules import CODE_STRING, MISSING, SelectionRules

__all__ = [
    "SELECTION_KEYWORDS",
    "is_own_output",
    "skip_reason",
]

#: The radiograph storage classes, each with the Modality its IOD fixes.
RADIOGRAPH_CLASSES = {
    ComputedRadiographyImageStorage: "CR",
    DigitalXRayImageStorageForPresentation: "DX",
    DigitalXRayImageStorageForProcessing: "DX",
}


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


def _text(ds: Attributes, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def _shown(value: str, missing: str = "missing") -> str:
    """A code string as it may appear in a reason (logged and audited): only a well-formed one.
    A corrupt dataset can put anything in these elements, a patient's name included."""
    if not value:
        return missing
    return value if CODE_STRING.fullmatch(value) else "an invalid value"


def _listed(value: str, allowed: tuple[str, ...]) -> bool:
    return (value or MISSING) in allowed


def _named(allowed: tuple[str, ...]) -> str:
    """The values of a rule as a reason names them (what a missing attribute is, aside)."""
    return "/".join(value for value in allowed if value != MISSING) or f"{MISSING} only"


def is_own_output(ds: Attributes) -> bool:
    """True for objects this node created (SEG, SR, SC overlay) coming back to us."""
    return _text(ds, "Manufacturer") == MANUFACTURER.upper()


def skip_reason(
    ds: Attributes, sop_class_uid: str, *, has_pixel_data: bool, rules: SelectionRules
) -> str | None:
    """Why ``ds`` is not processed, or None when it is a radiograph that ``rules`` select.

    ``ds`` may be read without its pixel data (or be the values of SELECTION_KEYWORDS);
    ``has_pixel_data`` says whether it had some.
    """
    sop_class = UID(sop_class_uid)
    if is_own_output(ds):
        return OWN_OUTPUT_REASON
    if sop_class == SecondaryCaptureImageStorage:
        modality = _text(ds, "Modality")
        if not _listed(modality, rules.modalities):
            return (
                f"secondary capture with modality {_shown(modality)}, "
                f"not {_named(rules.modalities)}"
            )
    elif sop_class in RADIOGRAPH_CLASSES:
        if RADIOGRAPH_CLASSES[sop_class] not in rules.modalities:
            return f"modality {RADIOGRAPH_CLASSES[sop_class]}, not {_named(rules.modalities)}"
    else:
        return f"not a radiograph ({sop_class.name or sop_class})"
    if not has_pixel_data:
        return "no pixel data"
    body_part = _text(ds, "BodyPartExamined")
    if not _listed(body_part, rules.body_parts):
        return f"body part {_shown(body_part)}, not {_named(rules.body_parts)}"
    view = _text(ds, "ViewPosition")
    if not _listed(view, rules.view_positions):
        return f"view position {_shown(view)}, not {_named(rules.view_positions)}"
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
