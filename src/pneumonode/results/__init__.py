"""What we send back: DICOM SEG, Structured Report, Secondary Capture and PNG overlays."""

from pneumonode.results import iod_lookup
from pneumonode.results.common import AlgorithmInfo, derived_uid, result_kind
from pneumonode.results.overlay import add_banner, render_overlay
from pneumonode.results.sc import banner_lines, build_overlay_capture
from pneumonode.results.seg import build_segmentation
from pneumonode.results.sr import build_report

iod_lookup.install()

__all__ = [
    "AlgorithmInfo",
    "add_banner",
    "banner_lines",
    "build_overlay_capture",
    "build_report",
    "build_segmentation",
    "derived_uid",
    "render_overlay",
    "result_kind",
]
