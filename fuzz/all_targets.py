"""`vsmmu fuzz --target all`, the default campaign: every fuzz target in turn.

Why every target: each harness reaches slips the others do not.  The mutation
yardstick (`vsmmu bench mutants`) found 11 of 20 sampled mutants in code the
system harness never runs (the virtio-iommu devices), and slips in vSTE
validation or command forwarding that only `vste` or `command` reach quickly.

How the time is shared: in equal rounds of at most ROUND seconds, every target
fuzzing its SHARES of the round as a campaign of its own (fuzz/campaign.py:
its working corpus <corpus>/<target>, its seeds corpora/<target>/, `--jobs`
workers), all writing into one artifacts directory.  Rounds, not one pass, so
that a long or interrupted campaign has given every target its time.  Each
slice's harness starts anew and its artifacts are classified when it stops;
those overheads (about 2 s a slice here) come on top of the slices' time, so
that the last target of a round is not the one squeezed: a 60 s campaign
takes about 70 s.  `--runs N` is split by the same shares in one round.

Then one coverage replay per target (sharing the replay budget by the same
shares), and one result: the findings of every target deduplicated by signature
(a signature two targets found is kept once, as the earliest finder's, and the
other's artifacts count as duplicates), the coverage the union of the targets',
and `parts` (`targets` in `--json`) each target's own figures.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from .campaign import (
    DEFAULT_TIME,
    OUT,
    Campaign,
    CampaignError,
    CampaignOptions,
    _corpus_lock,
    _stop_signals,
    replay_coverage,
)
from .outputs import unwritable
from .results import CampaignResult, Finding, coverage_table
from .targets import ALL, TARGETS

# The system harness carries every invariant across every actor (guests, the
# hypervisor, both SMMUs), so it gets two shares; each other target one.
SHARES = {"system": 2, "vste": 1, "command": 1, "virtio-iommu": 1, "smmu": 1}
assert set(SHARES) == set(TARGETS)
ROUND = 300.0  # seconds: the longest any target waits for its turn
MIN_SLICE = 3.0  # seconds: below this a harness spends its slice starting up
INTERRUPTED_REPLAY = 10.0  # seconds for all coverage replays after a signal


class AllTargets:
    def __init__(self, options: CampaignOptions):
        self.o = options
        self.root = Path(options.corpus) if options.corpus is not None else OUT / "corpus"
        if options.corpus is not None and not self.root.is_dir():
            raise CampaignError(f"corpus directory {options.corpus} does not exist")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CampaignError(f"cannot create {e.filename}: {e.strerror}") from None
        if why := unwritable(self.root, "corpus"):
            raise CampaignError(why)
        self.interrupted = False
        self._fuzzing = True
        # Every target's options checked (and its directories made) before any fuzzing.
        self.campaigns = {t: Campaign(self._options(t)) for t in TARGETS}

    def _options(self, target: str, **changes) -> CampaignOptions:
        corpus = self.root / target
        try:
            corpus.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CampaignError(f"cannot create {e.filename}: {e.strerror}") from None
        seeds = str(Path(self.o.seeds) / target) if self.o.seeds is not None else None
        return dataclasses.replace(self.o, target=target, corpus=str(corpus), seeds=seeds,
                                   coverage_budget=0, **changes)

    # Between slices and during the replays (a slice handles its own), a signal acts
    # as in one campaign: the first while fuzzing stops it, any other cuts the
    # replays short (the same `_fuzzing` and `interrupted` attributes).
    _signalled = Campaign._signalled

    def run(self) -> CampaignResult:
        start = time.monotonic()
        done: dict[str, list[tuple[float, CampaignResult]]] = {t: [] for t in SHARES}
        with _corpus_lock(self.root), _stop_signals(self._signalled):
            try:
                for target, changes in self._slices():
                    offset = time.monotonic() - start
                    campaign = Campaign(self._options(target, **changes))
                    self.campaigns[target] = campaign
                    result = campaign.run()
                    done[target].append((offset, result))
                    if result.interrupted:
                        self.interrupted = True
                        break
            except KeyboardInterrupt:
                self.interrupted = True
            self._fuzzing = False
            seconds = time.monotonic() - start
            parts = [self._part(t, runs) for t, runs in done.items() if runs]
            reached, replayed = self._coverage(parts)
        return CampaignResult(
            ALL, sum(p.execs for p in parts), seconds, _merge(parts), coverage_table(reached),
            corpus=sum(p.corpus for p in parts), replayed=replayed,
            cov=sum(p.cov for p in parts), restarts=sum(p.restarts for p in parts),
            interrupted=self.interrupted, **_gathered(parts), corpus_dir=str(self.root),
            artifacts_dir=str(self.campaigns["system"].artifacts), parts=parts,
            timeline=_timeline(parts))

    def _slices(self):
        """(target, options) of each slice in turn: equal rounds of at most ROUND
        seconds, each target its SHARES of every round; `--runs` in one round."""
        total = sum(SHARES.values())
        o = self.o
        if o.time is None and o.runs is not None:
            for target, share in SHARES.items():
                yield target, {"runs": max(1, o.runs * share // total), "time": None}
            return
        budget = o.time if o.time is not None else DEFAULT_TIME
        rounds = max(1, math.ceil(budget / ROUND))
        for _ in range(rounds):
            for target, share in SHARES.items():
                yield target, {"time": max(MIN_SLICE, budget / rounds * share / total),
                               "runs": None}

    def _part(self, target: str, runs: list[tuple[float, CampaignResult]]) -> CampaignResult:
        """A target's slices as one result: its figures summed, its findings as its
        last slice saw them (every artifact of the target so far) but found when
        first found."""
        found: dict[str, Finding] = {}
        for offset, r in runs:
            for f in r.findings:
                first = found.get(f.signature)
                if first is not None and first.new:
                    f.new, f.found_after = True, first.found_after
                elif f.found_after is not None:
                    f.found_after += offset
                found[f.signature] = f
        last = runs[-1][1]
        timeline, before = [], 0  # the target's executions in its earlier slices
        for offset, r in runs:
            timeline += [{**sample, "t": round(sample["t"] + offset, 1),
                          "execs": before + sample["execs"]} for sample in r.timeline]
            before += r.execs
        return dataclasses.replace(
            last, execs=sum(r.execs for _, r in runs), seconds=sum(r.seconds for _, r in runs),
            findings=list(found.values()), cov=max(r.cov for _, r in runs),
            restarts=sum(r.restarts for _, r in runs),
            interrupted=any(r.interrupted for _, r in runs),
            **_gathered([r for _, r in runs]), timeline=timeline)

    def _coverage(self, parts: list[CampaignResult]) -> tuple[set[str], int]:
        """Each target's corpus and seeds replayed, the budget shared by SHARES."""
        budget = min(INTERRUPTED_REPLAY, self.o.coverage_budget) if self.interrupted else (
            self.o.coverage_budget)
        total = sum(SHARES[p.target] for p in parts)
        reached: set[str] = set()
        replayed = 0
        signalled_before = self.interrupted
        for p in parts:
            c = self.campaigns[p.target]
            got, n = replay_coverage(p.target, self.o.platform, (c.corpus, c.seeds),
                                     budget * SHARES[p.target] / total, self.o.progress,
                                     stopped=lambda: self.interrupted != signalled_before,
                                     design=self.o.design)
            p.coverage, p.replayed = coverage_table(got), n
            reached |= got
            replayed += n
        return reached, replayed


def _merge(parts: list[CampaignResult]) -> list[Finding]:
    """The targets' findings, one per signature: the earliest new one (else the first
    target's), the others' artifacts counted as its duplicates."""
    def when(f: Finding) -> tuple[bool, float]:
        return (not f.new, f.found_after if f.found_after is not None else float("inf"))

    merged: dict[str, Finding] = {}
    for f in sorted((f for p in parts for f in p.findings), key=when):
        first = merged.get(f.signature)
        if first is None:
            merged[f.signature] = dataclasses.replace(f)
        else:
            first.duplicates += f.duplicates + 1
    return list(merged.values())


def _timeline(parts: list[CampaignResult]) -> list[dict]:
    """The targets' samples in time order, with the campaign's executions so far."""
    latest: dict[str, int] = {}  # each target's executions so far
    out = []
    for s in sorted((s for p in parts for s in p.timeline), key=lambda s: s["t"]):
        latest[s["target"]] = s["execs"]
        out.append({**s, "execs": sum(latest.values())})
    return out


def _gathered(results: list[CampaignResult]) -> dict[str, list[str]]:
    """The errors, unreproduced artifacts and slow inputs of `results`, each once."""
    return {key: list(dict.fromkeys(x for r in results for x in getattr(r, key)))
            for key in ("errors", "unreproduced", "slow_inputs")}


def run_all(options: CampaignOptions) -> CampaignResult:
    """The campaign of `--target all` (see the module docstring)."""
    return AllTargets(options).run()
