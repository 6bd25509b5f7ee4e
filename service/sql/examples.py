"""The example queries shipped in `queries/`: each file's first comment line says what it
answers. They use only SQL that DuckDB and Athena (Trino) both accept, over the `events`
table (a view here, a Glue table in Athena; see docs/sql.md)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    sql: str


def examples() -> dict[str, Example]:
    """Every shipped example, by file name without `.sql`, in name order."""
    folder = resources.files("service.sql").joinpath("queries")
    found: dict[str, Example] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            text = entry.read_text()
            first = text.splitlines()[0] if text else ""
            title = first.removeprefix("--").strip()
            found[entry.name[: -len(".sql")]] = Example(entry.name[: -len(".sql")], title, text)
    return found
