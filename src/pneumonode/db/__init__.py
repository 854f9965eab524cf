"""The database, its only writer: SQLAlchemy models, sessions, migrations, repository functions,
the one audit writer (``audit``) and the worker's stage names (``stages``)."""

__all__: list[str] = []
