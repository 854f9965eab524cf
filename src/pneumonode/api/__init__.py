"""The HTTP API (FastAPI) that also serves the built web page."""

__all__: list[str] = []
