"""DuckDB over a local copy of the archive: the `events` and `rejects` views, and output.

The views read every Parquet file under the mirror with `hive_partitioning = true`, so `dt`
(DATE), `hour` (integer) and `shard` come from the object keys, as they do in Athena with
partition projection, and `union_by_name = true`, so a file written before a column was added
still reads (the column is null there). An archive with no file of a kind yet gets an empty
view with the archive's schema, so a query names a missing column as an error, not an empty
directory.

The session's time zone is UTC: the archive's times are UTC, and `date_trunc('hour', ...)`
must cut hours the way the partitions do. Timestamps with a zone are returned as text: DuckDB
converts them to Python objects only through `pytz`, which nothing else here needs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from consumers.archive_format import EVENT_SCHEMA, REJECT_SCHEMA

OutputFormat = Literal["table", "csv", "json"]
_PARTITIONS = (("dt", pa.date32()), ("hour", pa.int64()))
_EVENTS_EXTRA = (("shard", pa.string()),)
MAX_CELL = 60  # widest a table cell is drawn; CSV and JSON are never cut


class QueryError(Exception):
    """DuckDB refused the query (syntax, unknown column...); the message is DuckDB's."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with `events` and `rejects` views over the mirror at `root`."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for kind, schema in (("events", EVENT_SCHEMA), ("rejects", REJECT_SCHEMA)):
        folder = root / kind
        if folder.is_dir() and any(folder.rglob("*.parquet")):
            pattern = _literal((folder / "**" / "*.parquet").as_posix())
            con.execute(
                f"CREATE VIEW {kind} AS SELECT * FROM read_parquet({pattern}, "
                "hive_partitioning = true, union_by_name = true)"
            )
        else:
            empty = schema.empty_table()
            for name, kind_type in (*_PARTITIONS, *_EVENTS_EXTRA):
                empty = empty.append_column(name, pa.array([], kind_type))
            con.register(f"_{kind}_empty", empty)
            con.execute(f"CREATE VIEW {kind} AS SELECT * FROM _{kind}_empty")
    return con


def run(con: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
    """Run one query; zoned timestamps come back as ISO-like text (see the module docstring)."""
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement without a result (SET, CREATE ...)
            return QueryResult([], [], [])
        columns = list(relation.columns)
        types = [str(t) for t in relation.types]
        if any(t == "TIMESTAMP WITH TIME ZONE" for t in types):
            relation = relation.project(
                ", ".join(
                    f"strftime({_quote(c)}, '%Y-%m-%dT%H:%M:%S.%gZ') AS {_quote(c)}"
                    if t == "TIMESTAMP WITH TIME ZONE"
                    else _quote(c)
                    for c, t in zip(columns, types, strict=True)
                )
            )
        rows = relation.fetchall()
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    return QueryResult(columns, types, rows)


def _plain(value: Any) -> Any:
    """A cell as a JSON value: exact integers stay integers, decimals become numbers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    plain = _plain(value)
    if plain is None:
        return ""
    if isinstance(plain, float):
        return f"{plain:.6g}" if abs(plain) < 1e15 else str(plain)
    if isinstance(plain, list | dict):
        return json.dumps(plain, ensure_ascii=False)
    return str(plain)


def to_json(result: QueryResult) -> str:
    """An array of objects, one per row, keyed by column name."""
    records = [
        {name: _plain(value) for name, value in zip(result.columns, row, strict=True)}
        for row in result.rows
    ]
    return json.dumps(records, ensure_ascii=False, indent=2)


def to_csv(result: QueryResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([_text(v) for v in row] for row in result.rows)
    return out.getvalue().rstrip("\n")


_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UBIGINT", "UINTEGER")


def _is_numeric(kind: str) -> bool:
    return kind.startswith(("DECIMAL", "DOUBLE", "FLOAT", *_NUMERIC))


def to_table(result: QueryResult) -> str:
    """Aligned columns for a terminal: numbers right-aligned, long cells cut with '…'."""
    if not result.columns:
        return ""

    def cell(value: Any) -> str:
        text = _text(value).replace("\n", " ")
        return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"

    cells = [[cell(v) for v in row] for row in result.rows]
    widths = [
        max([len(name)] + [len(row[n]) for row in cells]) for n, name in enumerate(result.columns)
    ]
    right = [_is_numeric(t) for t in result.types]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[n]) if right[n] else v.ljust(widths[n]) for n, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    footer = f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''})"
    return "\n".join([line(result.columns), rule, *(line(r) for r in cells), footer])


def render(result: QueryResult, output: OutputFormat) -> str:
    return {"table": to_table, "csv": to_csv, "json": to_json}[output](result)
