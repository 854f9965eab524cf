"""The Secondary Capture overlay: the radiograph with the finding burned in, for any viewer.

A PACS viewer that cannot show a SEG still shows an RGB Secondary Capture image; it is sent only
to destinations that ask for it. Above the radiograph a dark banner says in burned-in text what
the picture is: "AI result - not for clinical use", the finding (present or not, side, area,
probability) and the model's name and version, so the picture cannot pass for a diagnostic
image on a screen that shows no DICOM attributes.
"""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
from pydicom import Dataset

from pneumonode.findings import AlgorithmInfo, Finding
from pneumonode.results.common import (
    SERIES_NUMBERS,
    derived_uid,
    result_source,
    series_description,
)
from pneumonode.results.overlay import add_banner

__all__ = ["banner_lines", "build_overlay_capture"]

#: Burned In Annotation (PS3.3 C.7.6.1): whether the pixels show enough text to identify the
#: patient and the date; our banner shows neither, so the source's own answer is kept
_BURNED_IN_VALUES = ("YES", "NO")


def banner_lines(
    finding: Finding, algorithm: AlgorithmInfo, *, label: str = "not for clinical use"
) -> tuple[str, str, str]:
    """The three lines burned in above the overlay: what the picture is, the finding, the model.

    e.g. ``AI result - not for clinical use``, ``Pneumothorax present: left, area 12.3 cm2,
    probability 0.93 (threshold 0.35)``, ``Model pneumonode-pneumothorax-unet 2.0.0 -
    pneumonode 0.1.0``. The probability is the calibrated image-level one where the model has
    it, else the top pixel score is named as such; a side read without PatientOrientation says
    so.
    """
    if finding.probability is None:
        score = f"top pixel score {finding.max_probability:.2f} (not a calibrated probability)"
    elif finding.threshold is None:
        score = f"probability {finding.probability:.2f}"
    else:
        score = f"probability {finding.probability:.2f} (threshold {finding.threshold:.2f})"
    if finding.present:
        facts = []
        if finding.side:
            assumed = finding.orientation_assumed and finding.side != "bilateral"
            facts.append(f"{finding.side}{' (orientation assumed)' if assumed else ''}")
        if finding.area_pixels:
            facts.append(f"area {_area(finding)}")
        what = ", ".join([*facts, score])
        result = f"Pneumothorax present: {what}"
    else:
        result = f"No pneumothorax found: {score}"
    model = (
        f"Model {algorithm.name} {algorithm.version} - "
        f"{algorithm.manufacturer} {algorithm.software_version}"
    )
    return f"AI result - {label}", result, model


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    return None


def _area(finding: Finding) -> str:
    if finding.area_mm2 is None:
        return f"{finding.area_pixels} pixels"
    if finding.area_mm2 >= 100:
        return f"{finding.area_mm2 / 100:.1f} cm2"
    return f"{finding.area_mm2:.0f} mm2"


def build_overlay_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    finding: Finding,
    label: str = "not for clinical use",
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``overlay_rgb`` under a banner that says what it is, in a new
    series of the source's study.

    The image is the overlay with the banner of :func:`banner_lines` added above it (see
    :func:`pneumonode.results.add_banner`): it has more rows than the source, the same columns,
    and the source's pixels below the banner keep their spacing.

    Args:
        source: the received image.
        overlay_rgb: (Rows, Columns, 3) uint8, the source-sized picture with the finding drawn
            on it (see :func:`pneumonode.results.render_overlay`).
        algorithm: the model's name and version.
        finding: what the model found, for the banner and ImageComments.
        label: what the banner's first line and the SeriesDescription say about the result's
            use.
    """
    rows, columns = int(source.Rows), int(source.Columns)
    if overlay_rgb.shape != (rows, columns, 3) or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            f"the overlay must be {rows}x{columns}x3 uint8 like the source, "
            f"got {'x'.join(map(str, overlay_rgb.shape))} {overlay_rgb.dtype}"
        )
    lines = banner_lines(finding, algorithm, label=label)
    picture = add_banner(overlay_rgb, lines)
    clean = result_source(source)
    orientation = _orientation(source)
    spacing = clean.get("PixelSpacing") or clean.get("ImagerPixelSpacing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the source's person-name style
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=clean,
            pixel_array=picture,
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
        f"{'. '.join(lines)}. Outline and tint mark the suspected pneumothorax; "
        "the banner above the radiograph is not part of it."
    )
    # Type 2C in General Series once BodyPartExamined is copied: as the source says, or empty
    image.Laterality = source.get("Laterality", "") or ""
    image.ConversionType = "WSD"  # made by software from a digital image (PS3.3 C.8.6.1)
    image.ManufacturerModelName = algorithm.name
    image.SoftwareVersions = f"{algorithm.software_version} (model {algorithm.version})"
    burned_in = str(source.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned_in in _BURNED_IN_VALUES:
        image.BurnedInAnnotation = burned_in
    elif "BurnedInAnnotation" in image:  # Type 3: unknown, like the source
        del image.BurnedInAnnotation
    image.DerivationDescription = (
        "Source image with the AI segmentation and an AI result banner burned in"
    )
    image.SourceImageSequence = [_reference(source)]
    return image


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
