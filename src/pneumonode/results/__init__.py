"""What we send back: DICOM SEG, Structured Report, Secondary Capture and PNG overlays."""

from pneumonode.results.overlay import render_overlay

__all__ = ["render_overlay"]
