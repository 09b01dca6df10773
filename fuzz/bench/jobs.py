"""How campaigns scale with `--jobs`: the same campaign (target, seed, time)
with one libFuzzer process and with two, each on an empty corpus of its own,
executions counted by the campaign itself."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..campaign import CampaignOptions, run_campaign


def executions(target: str, jobs: int, seconds: float, seed: int = 1) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        corpus, artifacts = Path(tmp, "corpus"), Path(tmp, "artifacts")
        corpus.mkdir()
        result = run_campaign(CampaignOptions(target=target, time=seconds, jobs=jobs,
                                              corpus=str(corpus), artifacts=str(artifacts),
                                              seed=seed))
    return result.execs


def measure(target: str = "system", seconds: float = 20.0) -> dict:
    """{"target", "seconds", "one_job", "two_jobs", "ratio"}: executions in total."""
    one, two = (executions(target, jobs, seconds) for jobs in (1, 2))
    return {"target": target, "seconds": seconds, "one_job": one, "two_jobs": two,
            "ratio": two / one if one else None}
