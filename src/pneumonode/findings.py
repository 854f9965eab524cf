"""What the model hands to the result objects, as plain values.

``pneumonode.model`` makes them (a :class:`Finding` per image, an :class:`AlgorithmInfo` from a
checkpoint's config.json) and ``pneumonode.results`` writes them into SEG, SR and Secondary
Capture objects; both import them from here, and neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pneumonode.identity import MANUFACTURER, SOFTWARE_VERSION

__all__ = ["AlgorithmInfo", "DescribesAlgorithm", "Finding"]


@dataclass(frozen=True)
class Finding:
    """What the model found on one image (at the source's resolution)."""

    present: bool
    max_probability: float  # the highest pixel probability (not a probability of the finding)
    area_pixels: int
    area_mm2: float | None
    side: str | None  # "right", "left" or "bilateral" (patient's side); None when absent
    orientation_assumed: bool
    # the calibrated image-level probability of a pneumothorax (None: a model without one) and
    # the operating point it was compared with (None: the mask alone decided)
    probability: float | None = None
    threshold: float | None = None


class DescribesAlgorithm(Protocol):
    """A model's configuration that can say how result objects name the model
    (``pneumonode.model.checkpoint.CheckpointConfig``)."""

    def algorithm_info(self) -> AlgorithmInfo: ...


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model as our result objects name it (from the checkpoint's config.json)."""

    name: str
    version: str
    threshold: float
    min_area_pixels: int
    top_score_threshold: float | None
    intended_use: str
    manufacturer: str = MANUFACTURER
    software_version: str = SOFTWARE_VERSION
    operating_point: float | None = None  # on the calibrated image-level probability
    grow_threshold: float | None = None  # hysteresis: regions grown down to this probability

    @classmethod
    def from_checkpoint(cls, config: DescribesAlgorithm) -> AlgorithmInfo:
        """``config.algorithm_info()``: the checkpoint's config knows its own fields."""
        return config.algorithm_info()

    def parameters(self) -> list[str]:
        """Algorithm parameters as DICOM's AlgorithmParameters lists them (LT strings)."""
        values = [f"threshold={self.threshold:g}", f"min_area_pixels={self.min_area_pixels}"]
        if self.grow_threshold is not None:
            values.append(f"grow_threshold={self.grow_threshold:g}")
        if self.top_score_threshold is not None:
            values.append(f"top_score_threshold={self.top_score_threshold:g}")
        if self.operating_point is not None:
            values.append(f"operating_point={self.operating_point:g}")
        return values
