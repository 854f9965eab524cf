"""Which images are analysed, as the settings name them: the values of Modality, Body Part
Examined and View Position that ``dicom_node.selection`` admits.

It imports nothing of pneumonode's, so that ``config`` checks and holds these settings without
importing the DICOM node, which applies them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CODE_STRING",
    "DEFAULT_BODY_PARTS",
    "DEFAULT_MODALITIES",
    "DEFAULT_VIEW_POSITIONS",
    "MISSING",
    "SelectionRules",
    "code_strings",
]

#: In a list of values: an image whose attribute is empty or absent.
MISSING = "MISSING"
DEFAULT_MODALITIES = ("CR", "DX")
DEFAULT_BODY_PARTS = ("CHEST", "THORAX", MISSING)
DEFAULT_VIEW_POSITIONS = ("PA", "AP", MISSING)
#: A DICOM code string (CS) as the rules hold it: upper case, at most 16 characters.
CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


@dataclass(frozen=True)
class SelectionRules:
    """The values of Modality, Body Part Examined and View Position that are analysed
    (upper case; :data:`MISSING` admits an image without the attribute). A CR or DX storage
    object's modality is its class's (CR, DX); a Secondary Capture's is its Modality."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    body_parts: tuple[str, ...] = DEFAULT_BODY_PARTS
    view_positions: tuple[str, ...] = DEFAULT_VIEW_POSITIONS


def code_strings(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as the rules hold them: stripped, upper case, each once, in order; a
    :class:`ValueError` names the first that cannot be a DICOM code string, or says the list
    is empty (nothing would be analysed)."""
    chosen: list[str] = []
    for value in values:
        text = str(value).strip().upper()
        if not CODE_STRING.fullmatch(text):
            raise ValueError(
                f"{value!r} is not a DICOM code string (1-16 of A-Z, 0-9, space, underscore)"
            )
        if text not in chosen:
            chosen.append(text)
    if not chosen:
        raise ValueError(f"names no value, so nothing would be analysed ({MISSING}: none given)")
    return tuple(chosen)
