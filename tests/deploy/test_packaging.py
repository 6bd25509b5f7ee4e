"""What the image installs (`pip install .`, no extras) has what `clickstream sql` and `cost`
read at run time: DuckDB as a runtime dependency, the example queries and the price table as
package data (the tests read them from the source tree, where a missing glob would not show)."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_runtime_dependencies_include_duckdb_and_no_test_tools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert "duckdb" in names
    assert names.isdisjoint({"moto", "pytest", "ruff", "cfn-lint", "hypothesis"})
    assert any(d.startswith("cfn-lint") for d in project["optional-dependencies"]["dev"])


def test_sql_queries_and_price_tables_are_package_data() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for package, folder, suffix in (
        ("service.sql", REPO / "service" / "sql", ".sql"),
        ("service.prices", REPO / "service" / "prices", ".toml"),
    ):
        files = [p.relative_to(folder).as_posix() for p in folder.rglob(f"*{suffix}")]
        assert files, folder
        assert all(any(fnmatch(f, glob) for glob in package_data[package]) for f in files)
