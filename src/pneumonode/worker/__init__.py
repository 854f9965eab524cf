"""The processing pipeline (plain functions) and its thin Celery shell."""

__all__: list[str] = []
