"""CONFORMANCE.md stays true: every test it names exists, and every rule that makes
an STE or a CD ILLEGAL in vsmmu/hw/decode.py has a row."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = (ROOT / "CONFORMANCE.md").read_text()
# `test_file.py::test_name` or `test_file.py::test_name[parameter id]`
REF = re.compile(r"`(test_\w+\.py)::(test_\w+)(?:\[([^\]`]+)\])?`")


def _rows(section: str) -> list[str]:
    """The table rows under a `## ...` heading that starts with `section`."""
    body = TABLE.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| ") and "---" not in line]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


def test_every_named_test_exists():
    refs = REF.findall(TABLE)
    assert len(refs) > 60  # the pattern reads the table at all
    for file, name, param in refs:
        source = (ROOT / "tests" / file).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{file}::{name} does not exist"
        if param:  # parameter ids here are dictionary keys or ids= strings of the test file
            assert f'"{param}"' in source, f"{file}::{name}[{param}]: no such parameter"


def test_every_illegal_structure_rule_has_a_row():
    decode = (ROOT / "vsmmu" / "hw" / "decode.py").read_text()
    for kind, section in (("ste", "STE"), ("cd", "CD")):
        raises = len(re.findall(rf"raise _bad_{kind}\(", decode))
        rows = [r for r in _rows(section) if _cells(r)[1].startswith(f"C_BAD_{section}")]
        assert len(rows) == raises, f"{section}: {raises} rules in decode.py, {len(rows)} rows"
        assert all(REF.search(r) for r in rows), f"a {section} row names no test"
