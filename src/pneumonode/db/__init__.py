"""SQLAlchemy models, sessions, repository functions and audit events."""

__all__: list[str] = []
