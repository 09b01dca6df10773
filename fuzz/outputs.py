"""Directories a command writes into are checked before any work is done.

libFuzzer drops a corpus input or an artifact it cannot write without failing,
and a triage that minimizes for minutes before finding its output directory
read-only loses that work: so every command asks first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def unwritable(d: Path, what: str) -> str | None:
    """Why nothing can be written into directory `d` (None: it can be)."""
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".vsmmu-write-check-"):
            return None
    except OSError as e:
        return f"cannot write to the {what} directory {d}: {e.strerror or e}"
