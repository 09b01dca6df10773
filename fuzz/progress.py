"""Progress on every wait longer than about two seconds.

A command that boots a large platform, replays a 256-operation program or
minimizes a dozen crash files would otherwise print nothing for a minute.
`Ticker` throttles lines about a loop; `announce` covers one long call.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

QUIET_FOR = 2.0  # seconds of silence before the first line, and between lines


class Ticker:
    """`tick(text)` writes `[Ns] text` to `out` when QUIET_FOR seconds have passed
    since the start or the last line; nothing for loops that end sooner."""

    def __init__(self, out: TextIO | None = None, prefix: str = "vsmmu"):
        self.out = sys.stderr if out is None else out
        self.prefix = prefix
        self.start = self._last = time.monotonic()

    def tick(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last >= QUIET_FOR:
            self._last = now
            self.out.write(f"{self.prefix}: [{now - self.start:.0f} s] {text}\n")
            self.out.flush()


@contextmanager
def announce(text: str, out: TextIO | None = None, prefix: str = "vsmmu") -> Iterator[None]:
    """Say `text...` if the block is still running after QUIET_FOR seconds, and how
    long it took when it ends; nothing for a quick one."""
    out = sys.stderr if out is None else out
    start = time.monotonic()
    said = threading.Event()

    def say() -> None:
        said.set()
        out.write(f"{prefix}: {text}...\n")
        out.flush()

    timer = threading.Timer(QUIET_FOR, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if said.is_set():
            out.write(f"{prefix}: {text}: done in {time.monotonic() - start:.0f} s\n")
            out.flush()
