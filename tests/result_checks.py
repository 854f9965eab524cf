"""What the result-object tests share: the algorithm our test objects are made by."""

from __future__ import annotations

from pneumonode.results import AlgorithmInfo

ALGORITHM = AlgorithmInfo(
    name="pneumonode-pneumothorax-unet",
    version="1.2.3",
    threshold=0.45,
    min_area_pixels=120,
    top_score_threshold=None,
    intended_use="Research only.",
)
