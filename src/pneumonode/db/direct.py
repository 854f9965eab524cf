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

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

__all__ = ["Direct", "direct_insert"]


class _Plan:
    """How to turn a mapping of values into the driver's parameters, for one dialect."""

    __slots__ = ("names", "positional", "processors", "sql")

    def __init__(
        self,
        sql: str,
        positional: bool,
        names: tuple[str, ...],
        processors: tuple[Callable[[Any], Any] | None, ...],
    ) -> None:
        self.sql = sql
        self.positional = positional
        self.names = names  # in parameter order when positional
        self.processors = processors


class Direct:
    """One statement, compiled on first use for each dialect."""

    def __init__(self, statement: ClauseElement, table: Table | None = None) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._defaults = _defaults(table) if table is not None else {}

    def _plan(self, dialect: Dialect) -> _Plan:
        key = (dialect.name, dialect.driver)
        plan = self._plans.get(key)
        if plan is None:
            compiled = self.statement.compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            order = compiled.positiontup
            names = tuple(order) if order is not None else tuple(compiled.binds)
            processors = tuple(
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in names
            )
            plan = _Plan(compiled.string, order is not None, names, processors)
            self._plans[key] = plan
        return plan

    def _parameters(self, plan: _Plan, values: Mapping[str, Any]) -> Any:
        defaults = self._defaults
        converted = []
        for name, processor in zip(plan.names, plan.processors, strict=True):
            value = values[name] if name in values else defaults[name]()
            converted.append(value if processor is None else processor(value))
        if plan.positional:
            return tuple(converted)
        return dict(zip(plan.names, converted, strict=True))

    def first(self, connection: Connection, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run it; the first row (None when there is none)."""
        plan = self._plan(connection.dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(plan.sql, self._parameters(plan, values))
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
        plan = self._plan(connection.dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(plan.sql, [self._parameters(plan, row) for row in rows])
        finally:
            cursor.close()


def _defaults(table: Table) -> dict[str, Callable[[], Any]]:
    """For every column but the primary key: its Python default (or None) as a function."""
    defaults: dict[str, Callable[[], Any]] = {}
    for column in table.columns:
        if column.primary_key:
            continue
        default = column.default
        if default is None:
            defaults[column.key] = _none
        elif default.is_scalar:
            defaults[column.key] = functools.partial(_same, default.arg)  # type: ignore[attr-defined]
        elif default.is_callable:
            defaults[column.key] = functools.partial(default.arg, None)  # type: ignore[attr-defined]
        else:
            raise ValueError(f"{table.name}.{column.key}: a default Direct cannot compute")
    return defaults


def _none() -> None:
    return None


def _same(value: Any) -> Any:
    return value


def direct_insert(table: Table, returning: Any | None = None) -> Direct:
    """INSERT of one row naming every column but the primary key (RETURNING ``returning``)."""
    names = [column.key for column in table.columns if not column.primary_key]
    statement = insert(table).values({name: bindparam(name) for name in names})
    if returning is not None:
        statement = statement.returning(returning)
    return Direct(statement, table)
