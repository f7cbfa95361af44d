"""docs/architecture.md stays true to the code: its module table names every module, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

import mammoclip_monai

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(mammoclip_monai.__file__).resolve().parent
DIRECTORY_ENTRIES = ("data/synthetic/",)  # listed as one row: a sub-package with one concept


def table_modules() -> list[str]:
    """The first-column entries of the Modules table (```module`` | concept`` rows)."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def package_modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" or any(relative.startswith(d) for d in DIRECTORY_ENTRIES):
            continue
        found.add(relative)
    return found


def test_every_module_the_table_names_exists():
    named = table_modules()
    assert len(named) > 40
    missing = [m for m in named if not (PACKAGE / m).exists()]
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_module_is_in_the_table():
    absent = sorted(package_modules() - set(table_modules()))
    assert not absent, f"modules missing from docs/architecture.md's table: {absent}"


def test_no_module_is_listed_twice():
    named = table_modules()
    assert len(named) == len(set(named)), sorted({m for m in named if named.count(m) > 1})
