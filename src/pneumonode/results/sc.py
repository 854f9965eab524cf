"""The Secondary Capture overlay: the radiograph with the finding burned in, for any viewer.

A PACS viewer that cannot show a SEG still shows an RGB Secondary Capture image; it is sent only
to destinations that ask for it.
"""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
from pydicom import Dataset

from pneumonode.results.common import (
    SERIES_NUMBERS,
    AlgorithmInfo,
    derived_uid,
    result_source,
    series_description,
)

__all__ = ["build_overlay_capture"]


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    return None


def build_overlay_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    label: str = "not for clinical use",
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``overlay_rgb`` in a new series of the source's study.

    Args:
        source: the received image.
        overlay_rgb: (Rows, Columns, 3) uint8, the source-sized picture with the finding drawn
            on it (see :func:`pneumonode.results.render_overlay`).
        algorithm: the model's name and version.
        label: what the SeriesDescription says about the result's use.
    """
    rows, columns = int(source.Rows), int(source.Columns)
    if overlay_rgb.shape != (rows, columns, 3) or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            f"the overlay must be {rows}x{columns}x3 uint8 like the source, "
            f"got {'x'.join(map(str, overlay_rgb.shape))} {overlay_rgb.dtype}"
        )
    clean = result_source(source)
    orientation = _orientation(source)
    spacing = clean.get("PixelSpacing") or clean.get("ImagerPixelSpacing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the source's person-name style
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=clean,
            pixel_array=overlay_rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=derived_uid(
                str(source.SeriesInstanceUID), algorithm.version, "SC series"
            ),
            series_number=SERIES_NUMBERS["SC"],
            sop_instance_uid=derived_uid(str(source.SOPInstanceUID), algorithm.version, "SC"),
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=algorithm.manufacturer,
            # highdicom annotates this as ints; DICOM's PixelSpacing is decimal (DS)
            pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,  # type: ignore[arg-type]
            patient_orientation=orientation or ("L", "F"),
            series_description=series_description("SC", label),
        )
    if orientation is None:
        image.PatientOrientation = []  # unknown, as in the source (Type 2C: present, empty)
    image.ImageComments = (
        f"AI result of {algorithm.name} {algorithm.version}: {label}. "
        "Outline and tint mark the suspected pneumothorax."
    )
    # Type 2C in General Series once BodyPartExamined is copied: as the source says, or empty
    image.Laterality = source.get("Laterality", "") or ""
    image.BurnedInAnnotation = "NO"
    image.DerivationDescription = "Source image with the AI segmentation burned in"
    image.SourceImageSequence = [_reference(source)]
    return image


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
