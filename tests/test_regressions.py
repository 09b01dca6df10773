"""Every input that once found a real bug replays clean (corpora/regressions/)."""

from __future__ import annotations

from pathlib import Path

from fuzz.program import load
from fuzz.runner import Runner

REGRESSIONS = Path(__file__).resolve().parents[1] / "corpora" / "regressions"


def test_every_regression_input_replays_clean():
    assert (REGRESSIONS / "README").is_file()
    files = sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and p.name != "README")
    runner = Runner() if files else None
    failures = []
    for path in files:
        result = runner.run(load(str(path)))
        if result.violation is not None:
            failures.append(f"{path.name}: {result.violation}\n{result.traceback or ''}")
    assert not failures, "\n".join(failures)
