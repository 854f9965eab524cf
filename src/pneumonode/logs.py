"""Logging set-up: readable lines, or JSON lines for log shippers (``log_format``).

What we log never carries patient data: messages name studies and instances by database id or
UID at most, never by patient name, ID or birth date, and pydicom's value warnings are off.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from pneumonode.config import Settings
from pneumonode.conversion.decode import RedactQuotedValues

__all__ = ["JsonFormatter", "PydicomValues", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, thread
    and, for errors, the exception with its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PydicomValues(logging.Filter):
    """pydicom's records (its child loggers too) and warnings with what they quote removed: a
    corrupt dataset can put any value, a patient's name included, where pydicom quotes one."""

    def __init__(self) -> None:
        super().__init__()
        self._redact = RedactQuotedValues()

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "pydicom" or name.startswith("pydicom.") or name == "py.warnings":
            return self._redact.filter(record)
        return True


def configure_logging(settings: Settings, *, quiet_network: bool = False) -> None:
    """Root logging for a command; ``quiet_network``: pynetdicom only for critical errors (a
    command whose outcome is its own one line on stderr)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "pneumonode", False)]
    for old in ours:
        root.removeHandler(old)
    if not root.handlers:  # as logging.basicConfig: an embedding program's handlers stay alone
        handler = logging.StreamHandler()
        handler.pneumonode = True  # type: ignore[attr-defined]
        json_lines = settings.log_format == "json"
        handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
        handler.addFilter(PydicomValues())
        root.addHandler(handler)
        root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # library warnings as records, in the same format
    quiet = max(logging.WARNING, logging.getLevelNamesMapping()[settings.log_level])
    # httpx and httpcore log each request's URL: a webhook's URL may carry its secret
    for noisy in ("alembic", "pynetdicom", "highdicom", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(quiet)
    if quiet_network:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
