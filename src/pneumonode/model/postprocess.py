"""From a probability map to a finding: threshold, minimum area, and what a radiologist reads.

All functions are pure ``(array, ...) -> value``; shapes are given in the docstrings.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pydicom import Dataset

from pneumonode.findings import Finding

__all__ = [
    "Finding",  # defined in pneumonode.findings, which results import it from
    "binary_mask",
    "describe_finding",
    "grown_regions",
    "pixel_spacing_mm",
    "remove_small_components",
    "summarise",
]


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` pixels.

    Shape: (H, W) bool or {0,1} -> (H, W) bool.
    """
    binary = mask.astype(bool)
    if min_area <= 1 or not binary.any():
        return binary
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=8
    )
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    kept: np.ndarray = keep[labels]
    return kept


def binary_mask(
    probability: np.ndarray,
    threshold: float,
    min_area: int = 0,
    top_score_threshold: float | None = None,
    grow_threshold: float | None = None,
) -> np.ndarray:
    """Threshold, then remove small components; empty when the top score is below its gate.

    With ``grow_threshold`` (hysteresis, below ``threshold``): the 8-connected regions of pixels
    at or above ``grow_threshold`` that hold at least one pixel at or above ``threshold``, so a
    region is found by its confident core and drawn out to its fainter edge; a region with no
    such core is dropped. The minimum area applies to the grown region.

    Shape: (H, W) float in [0, 1] -> (H, W) bool.
    """
    if top_score_threshold is not None and float(probability.max()) < top_score_threshold:
        return np.zeros(probability.shape, dtype=bool)
    if grow_threshold is None or grow_threshold >= threshold:
        return remove_small_components(probability >= threshold, min_area)
    return grown_regions(probability, threshold, grow_threshold, (min_area,))[0]


def grown_regions(
    probability: np.ndarray, threshold: float, grow_threshold: float, min_areas: Sequence[int]
) -> list[np.ndarray]:
    """Hysteresis masks (see ``binary_mask``), one per minimum area, from one labelling.

    Shape: (H, W) float -> [(H, W) bool] * len(min_areas).
    """
    grown = probability >= grow_threshold
    if not grown.any():
        return [grown for _ in min_areas]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        grown.astype(np.uint8), connectivity=8
    )
    cored = np.zeros(count, dtype=bool)
    cored[np.unique(labels[probability >= threshold])] = True
    cored[0] = False
    areas = stats[:, cv2.CC_STAT_AREA]
    return [(cored & (areas >= area))[labels] for area in min_areas]


def pixel_spacing_mm(ds: Dataset | None) -> tuple[float, float] | None:
    """(row, column) spacing in mm: PixelSpacing, else ImagerPixelSpacing; None when unknown."""
    if ds is None:
        return None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _row_direction(ds: Dataset | None) -> str:
    """Patient direction of increasing column index (first value of PatientOrientation)."""
    value = ds.get("PatientOrientation") if ds is not None else None
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) >= 1:
        return str(value[0]).upper()
    return "L"  # the convention for frontal chest films: patient's right on the image left


def summarise(
    mask: np.ndarray,
    max_probability: float,
    ds: Dataset | None = None,
    bilateral_share: float = 0.1,
    *,
    probability: float | None = None,
    threshold: float | None = None,
) -> Finding:
    """Describe a source-sized mask.

    Args:
        mask: (Rows, Columns) bool, the finding at the source's size.
        max_probability: highest pixel probability of the image.
        ds: the source dataset, for pixel spacing and PatientOrientation (may be None).
        bilateral_share: each side holding at least this share of the area means bilateral.
        probability: the calibrated image-level probability, where the model has one.
        threshold: the operating point; with it the finding is present when ``probability``
            reaches it (the caller empties the mask otherwise), else when the mask is not empty.
    """
    area = int(np.count_nonzero(mask))
    spacing = pixel_spacing_mm(ds)
    area_mm2 = area * spacing[0] * spacing[1] if spacing else None
    direction = _row_direction(ds)
    assumed = ds is None or "PatientOrientation" not in ds
    side = None
    if area:
        cols = mask.shape[1]
        image_left = int(np.count_nonzero(mask[:, : cols // 2]))
        image_right = area - image_left
        towards = "left" if "L" in direction else "right"  # patient side at increasing column
        other = "right" if towards == "left" else "left"
        if min(image_left, image_right) >= bilateral_share * area:
            side = "bilateral"
        else:
            side = towards if image_right > image_left else other
    present = area > 0 if threshold is None or probability is None else probability >= threshold
    return Finding(
        present, float(max_probability), area, area_mm2, side, assumed, probability, threshold
    )


def describe_finding(finding: Finding) -> str:
    """One line for logs, the audit trail and the CLI, e.g. ``pneumothorax present (left,
    probability 0.93 >= 0.35)``; a model without a calibrated probability names its top pixel
    probability as such."""
    if finding.probability is not None and finding.threshold is not None:
        sign = ">=" if finding.present else "<"
        score = f"probability {finding.probability:.2f} {sign} {finding.threshold:.2f}"
    elif finding.probability is not None:
        score = f"probability {finding.probability:.2f}"
    else:
        score = f"max pixel probability {finding.max_probability:.2f}"
    if finding.present:
        side = f"{finding.side}, " if finding.side else ""
        return f"pneumothorax present ({side}{score})"
    return f"no pneumothorax ({score})"
