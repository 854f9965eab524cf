"""What we send back: DICOM SEG, Structured Report, Secondary Capture and PNG overlays."""

__all__: list[str] = []
