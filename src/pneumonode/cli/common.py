"""What the command groups share: exit codes, the one-line error, the way a group adds its
commands, argument types, tables, and the database and the model as commands open them."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumonode.addresses import Destination
    from pneumonode.config import Settings
    from pneumonode.db.session import Database
    from pneumonode.findings import Finding
    from pneumonode.model.predictor import Predictor

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "CliError",
    "CommandGroup",
    "Handler",
    "days",
    "destination",
    "emit",
    "load_predictor",
    "open_database",
    "positive_int",
    "since",
    "table",
    "verdict",
    "write_predictions",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

#: A command: the settings and the parsed arguments in, the exit code out.
Handler = Callable[["Settings", argparse.Namespace], int]


class CliError(Exception):
    """An error reported as one line on stderr with exit code 1."""


@dataclass
class CommandGroup:
    """The commands of one group (one module of this package, one heading of ``--help``)."""

    title: str
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    commands: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line help)

    def add(self, name: str, handler: Handler, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A subcommand ``name`` run by ``handler``; ``help`` is its line in the overview,
        ``kwargs`` go to :meth:`argparse.ArgumentParser` (``description``, ...)."""
        parser = self.subparsers.add_parser(name, **kwargs)
        parser.set_defaults(handler=handler)
        self.commands.append((name, help))
        return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}")
    return value


def since(text: str) -> datetime:
    """An ISO date/time (UTC when it names no zone) or an age: ``30m``, ``2h``, ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date/time or age: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def destination(text: str) -> Destination:
    """``AE@host:port`` parsed, or a :class:`CliError` that says what is wrong with it."""
    from pneumonode.addresses import PeerConfigError, parse_destination

    try:
        return parse_destination(text)
    except PeerConfigError as exc:
        raise CliError(str(exc)) from None


def open_database(settings: Settings) -> Database:
    from sqlalchemy.exc import SQLAlchemyError

    from pneumonode.db.session import Database

    try:
        return Database.open(settings.database)
    except SQLAlchemyError as exc:
        raise CliError(
            f"cannot open the database: {type(exc).__name__}: {exc.args[0] if exc.args else ''}"
        ) from None


def emit(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    """Print ``rows`` as JSON, CSV (``columns``) or an aligned table (``columns``)."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        for line in table(rows, columns):
            print(line)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """A header row of the column names in capitals, then one line per row, the columns
    aligned; a missing or empty value is ``-``, a line break inside a value a space."""

    def cell(value: Any) -> str:
        return " ".join(str("" if value is None else value).splitlines()) or "-"

    lines = [[name.upper() for name in columns]]
    lines += [[cell(row.get(name)) for name in columns] for row in rows]
    widths = [max(len(line[k]) for line in lines) for k in range(len(columns))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def load_predictor(settings: Settings, args: argparse.Namespace) -> Predictor:
    """The checkpoint ``--weights`` on the engine the options (or settings) ask for; without
    ``--weights`` the model the node serves, at its operating point (PNEUMONODE_OPERATING_POINT
    where set), so that its findings are the node's."""
    from pneumonode.model.checkpoint import CheckpointError
    from pneumonode.model.predictor import Predictor

    served = args.weights is None
    try:
        predictor = Predictor.load(
            settings.model if served else args.weights,
            device=args.device,
            precision=args.precision,
            tta=args.tta,
            backend=args.backend,
            cache_dir=settings.data_dir / "model-cache",
        )
    except (CheckpointError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if served and settings.operating_point is not None:
        try:
            predictor.set_operating_point(settings.operating_point)
        except ValueError as exc:
            raise CliError(f"PNEUMONODE_OPERATING_POINT: {exc}") from None
    return predictor


def write_predictions(
    out: Path, predictor: Predictor, summary: list[dict[str, Any]], failed: int, total: int
) -> int:
    """Write ``predictions.json`` and return the exit code (all failed: 1, some: 3)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(
        json.dumps(
            {
                "model": predictor.config.name,
                "version": predictor.config.version,
                "note": predictor.config.intended_use,
                "backend": predictor.backend,
                "precision": predictor.precision,
                "device": predictor.device,
                "predictions": summary,
            },
            indent=2,
        )
    )
    if failed == total:
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK


def verdict(finding: Finding) -> str:
    """One finding in words, as predict and predict-dicom print it."""
    area = (
        f"{finding.area_mm2:.0f} mm²"
        if finding.area_mm2 is not None
        else f"{finding.area_pixels} px"
    )
    said = f"pneumothorax, {finding.side}, {area}" if finding.present else "no pneumothorax"
    if finding.probability is None:
        return f"{said} (max pixel probability {finding.max_probability:.2f})"
    point = "" if finding.threshold is None else f", operating point {finding.threshold:.2f}"
    return f"{said} (probability {finding.probability:.2f}{point})"
