"""The database, its only writer: SQLAlchemy models, sessions, migrations, repository functions,
the one audit writer (``audit``), the worker's stage names (``stages``), the jobs' life
(``jobs``: queued, claimed, done, failed, re-run) and the outbox of DICOM deliveries and alerts
(``outbox``: queued, claimed with a lease, each attempt's outcome, re-sent)."""

__all__: list[str] = []
