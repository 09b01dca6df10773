"""Directories a command writes into are checked before any work is done.

libFuzzer drops a corpus input or an artifact it cannot write without failing,
and a triage that minimizes for minutes before finding its output directory
read-only loses that work: so every command asks first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def unwritable(d: Path, what: str) -> str | None:
    """Why nothing can be written into directory `d` (None: it can be)."""
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".vsmmu-write-check-"):
            return None
    except OSError as e:
        return f"cannot write to the {what} directory {d}: {e.strerror or e}"


def unwritable_file(path: str, flag: str) -> str | None:
    """Why the report file `path` (given with `flag`) could not be written."""
    return unwritable(Path(path).resolve().parent, flag)


def unwritable_dir(path: str, flag: str) -> str | None:
    """Why the directory `path` (given with `flag`) could not be made or written."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the {flag} directory {path}: {e.strerror or e}"
    return unwritable(Path(path), flag)


def write_report(path: str, content: str | dict[str, Any]) -> str | None:
    """Write a report (text, or a JSON object); why it failed, or None."""
    text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
    try:
        Path(path).write_text(text)
    except OSError as e:
        return f"cannot write {path}: {e.strerror or e}"
    return None
