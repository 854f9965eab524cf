"""Statements compiled once and run on the DBAPI cursor, for the listener's hot path.

SQLAlchemy's work per execution (an execution context, parameter and result processing, a
result object) costs about 90 microseconds, several times what SQLite needs for a one-row
statement; the listener runs five statements per received image, so that work was a sixth of
its time per image. A ``Direct`` statement is compiled by SQLAlchemy once per dialect (so the
SQL, the parameter style and the bind processors, such as SQLite's datetime-to-text, are
SQLAlchemy's own) and then runs on the connection's DBAPI cursor, inside the transaction of the
SQLAlchemy connection it is given.

An INSERT names every column but the primary key, and ``insert_row`` fills each column not
given with its Python default (the defaults SQLAlchemy would apply), or NULL: the tables this is
used for have no server-side defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

__all__ = ["Direct", "direct_insert"]

_Compiled = tuple[str, tuple[str, ...] | None, dict[str, Callable[[Any], Any]]]


class Direct:
    """One statement, compiled on first use for each dialect."""

    def __init__(self, statement: ClauseElement, table: Table | None = None) -> None:
        self.statement = statement
        self.table = table
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        key = (dialect.name, dialect.driver)
        found = self._compiled.get(key)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            processors: dict[str, Callable[[Any], Any]] = {}
            for name, bind in compiled.binds.items():
                processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if processor is not None:
                    processors[name] = processor
            positional = compiled.positiontup
            found = (
                compiled.string,
                None if positional is None else tuple(positional),
                dict(processors),
            )
            self._compiled[key] = found
        return found

    def _parameters(self, compiled: _Compiled, values: Mapping[str, Any]) -> Any:
        _, positional, processors = compiled
        if self.table is not None:
            values = _complete(self.table, values)
        if processors:
            values = {
                name: processors[name](value) if name in processors else value
                for name, value in values.items()
            }
        if positional is not None:
            return tuple(values[name] for name in positional)
        return values

    def first(self, connection: Connection, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run it; the first row (None when there is none)."""
        compiled = self._compile(connection.dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled[0], self._parameters(compiled, values))
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else tuple(row)

    def scalar(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """Run it; the first column of the first row (None when there is none)."""
        row = self.first(connection, values)
        return None if row is None else row[0]

    def many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per row of parameters (no result)."""
        compiled = self._compile(connection.dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled[0], [self._parameters(compiled, row) for row in rows])
        finally:
            cursor.close()


def _complete(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every other column but the primary key at its Python default, or None."""
    row = {}
    for column in table.columns:
        if column.primary_key:
            continue
        if column.key in values:
            row[column.key] = values[column.key]
        elif column.default is None:
            row[column.key] = None
        elif column.default.is_scalar:
            row[column.key] = column.default.arg  # type: ignore[attr-defined]
        elif column.default.is_callable:
            row[column.key] = column.default.arg(None)  # type: ignore[attr-defined]
        else:
            raise ValueError(f"{table.name}.{column.key}: a default Direct cannot compute")
    return row


def direct_insert(table: Table, returning: Any | None = None) -> Direct:
    """INSERT of one row naming every column but the primary key (RETURNING ``returning``)."""
    names = [column.key for column in table.columns if not column.primary_key]
    statement = insert(table).values({name: bindparam(name) for name in names})
    if returning is not None:
        statement = statement.returning(returning)
    return Direct(statement, table)
