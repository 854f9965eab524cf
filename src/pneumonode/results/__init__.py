"""What we send back: DICOM SEG, Structured Report, Secondary Capture and PNG overlays.

A process that makes these objects calls :func:`iod_lookup.install` once at its start (the
``worker`` and ``predict-dicom`` commands do): it makes highdicom's IOD lookups cheap. Importing
this package changes nothing in highdicom.
"""

from pneumonode.findings import AlgorithmInfo
from pneumonode.results import iod_lookup
from pneumonode.results.common import derived_uid, result_kind
from pneumonode.results.overlay import add_banner, render_overlay
from pneumonode.results.sc import banner_lines, build_overlay_capture
from pneumonode.results.seg import build_segmentation
from pneumonode.results.sr import build_report

__all__ = [
    "AlgorithmInfo",
    "add_banner",
    "banner_lines",
    "build_overlay_capture",
    "build_report",
    "build_segmentation",
    "derived_uid",
    "iod_lookup",
    "render_overlay",
    "result_kind",
]
