"""Differential testing: our SMMUv3 model against QEMU's, scenario by scenario.

This module is the command: `vsmmu diff-qemu` (see `add_arguments`/`main`), or
`python -m fuzz.peers.differential`.  `run_cases` runs generated scenarios on
both sides, compares the observations and classifies every divergence; `run`
and `Report` gather the results, `format_text` and `--json` print them.

Every QEMU run gets a fresh QEMU (booted while the previous case runs): a case
is reproducible on its own (`--seed S --start I --cases 1`).

The modules of `fuzz.peers`, each importing only from those listed before it:
  * `qemu_peer`: QEMU's SMMUv3 driven over the qtest protocol;
  * `scenarios`: the memory map and the scenario generator, (seed, index) -> `Scenario`;
  * `comparison`: what a run observes (`Observation`), event records normalised
    and collapsed, and `compare` -> `Difference`s;
  * `quirks`: `QuirkSmmu`, QEMU's known deviations re-implemented on our model;
  * `execution`: a scenario run on our model (`ModelTarget`) or on QEMU
    (`QemuTarget`) -> `Observation`;
  * `divergences`: the known divergences (`KNOWN_DIVERGENCES`, `NORMALISATIONS`)
    and `classify`, which explains a divergence by them or reports it unexplained;
  * `reproducer`: a divergence as a standalone qtest script (`--emit-qtest FILE`);
  * this module: the run and the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .. import options, sarif, version
from ..outputs import unwritable_file, write_report
from . import reproducer
from .comparison import Observation, compare
from .divergences import EXPLAINED, KNOWN, PEER_CRASH, CaseResult, classify
from .execution import ModelTarget, QemuTarget, execute
from .qemu_peer import PeerCrash, QemuPeer
from .scenarios import scenarios


# ====================================================================== the run
def run_cases(binary: str, seed: int, count: int, *, start: int = 0,
              progress: Callable[[CaseResult], None] | None = None) -> Iterator[CaseResult]:
    """Run `count` scenarios on both sides, classify each divergence; yields
    CaseResults.  Each case gets a fresh QEMU (some QEMU state survives every reset a
    driver can do: see strtab-2lvl-sticky), booted while the previous case runs."""
    peer = QemuPeer(binary).spawn()
    nxt: QemuPeer | None = None
    try:
        peer.connect()
        version, features = peer.version_tuple, peer.features
        class_known = version >= (9, 1)
        model = ModelTarget(features)
        for s in scenarios(seed, count, start):
            t0 = time.perf_counter()
            peer.connect()
            if peer.features != features:
                raise RuntimeError("QEMU's ID registers changed between runs")
            nxt = QemuPeer(binary).spawn()
            ours = execute(s, model, class_known=class_known)
            try:
                theirs = execute(s, QemuTarget(peer), class_known=class_known)
            except PeerCrash as e:
                theirs = Observation(crash=str(e))
            peer.close()
            peer, nxt = nxt, None
            r = CaseResult(s, ours, theirs, compare(ours, theirs))
            classify(r, features, version, model)
            r.seconds = time.perf_counter() - t0
            if progress:
                progress(r)
            yield r
    finally:
        peer.close()
        if nxt is not None:
            nxt.close()


@dataclass
class Report:
    qemu_version: str
    qemu_binary: str
    seed: int
    start: int
    results: list[CaseResult]
    seconds: float

    @property
    def agree(self) -> int:
        return sum(1 for r in self.results if r.verdict is None)

    @property
    def divergent(self) -> list[CaseResult]:
        return [r for r in self.results if r.verdict is not None]

    @property
    def unexplained(self) -> list[CaseResult]:
        return [r for r in self.divergent if r.verdict not in EXPLAINED]

    def as_dict(self) -> dict:
        by_known = Counter(k for r in self.divergent for k in r.known)
        return {
            "qemu_version": self.qemu_version,
            "cases": len(self.results),
            "agree": self.agree,
            "divergences": [_divergence_dict(r) for r in self.divergent],
            "qemu_binary": self.qemu_binary,
            "seed": self.seed,
            "start": self.start,
            "classes": dict(Counter(r.verdict for r in self.divergent)),
            "known": {k: {"count": n, "class": KNOWN[k].cls if k in KNOWN else PEER_CRASH,
                          "rule": KNOWN[k].rule if k in KNOWN else "QEMU died"}
                      for k, n in sorted(by_known.items())},
            "seconds": round(self.seconds, 3),
        }


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, int) and not isinstance(x, bool) and x > 0xFFFF:
        return hex(x)
    return x


def _divergence_dict(r: CaseResult) -> dict:
    def side(which: str) -> dict:
        out = {}
        for d in r.diffs:
            key = d.aspect if d.step is None else f"{d.aspect}@step{d.step}"
            out[key] = _jsonable(getattr(d, which))
        return out

    return {
        "case": r.scenario.name,
        "ours": side("ours"),
        "qemu": side("qemu"),
        "class": r.verdict,
        "known": r.known,
        "rules": [KNOWN[k].rule for k in r.known if k in KNOWN],
        "seed": r.scenario.seed,
        "index": r.scenario.index,
        "scenario": _jsonable(r.scenario.spec),
    }


def run(binary: str, seed: int = 0, cases: int = 300, *, start: int = 0,
        progress: Callable[[CaseResult], None] | None = None) -> Report:
    t0 = time.perf_counter()
    version_line = QemuPeer(binary).version  # raises if the binary is not a QEMU
    results = list(run_cases(binary, seed, cases, start=start, progress=progress))
    return Report(version_line, binary, seed, start, results, time.perf_counter() - t0)


# ====================================================================== command line




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vsmmu diff-qemu`."""
    parser.add_argument("--cases", type=options.count, default=300, metavar="N",
                        help="number of generated scenarios (default 300)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="scenario seed (default 0); case i of seed S is always the same")
    parser.add_argument("--start", type=options.count_or_zero, default=0, metavar="I",
                        help="index of the first case (replay one: --start I --cases 1)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: qemu_version, cases, agree, divergences")
    parser.add_argument("--qemu", metavar="PATH", default=None,
                        help="qemu-system-aarch64 to test against (default: $QEMU, else "
                             "qemu-system-aarch64 on PATH)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="text mode: print every divergence's differences")
    options.add_sarif(parser)
    parser.add_argument("--emit-qtest", metavar="FILE",
                        help="write the first unexplained divergence (else the first "
                        "divergence) as a qtest script that reproduces it on QEMU alone")


def _resolve_qemu(path: str | None) -> str | None:
    binary = path or os.environ.get("QEMU") or "qemu-system-aarch64"
    return shutil.which(binary)


def main(args: argparse.Namespace) -> int:
    """`vsmmu diff-qemu`: 0 when every divergence is explained (qemu-deviation, impdef,
    peer-crash), 1 when one is not, 2 for usage errors or a missing/broken QEMU."""
    binary = _resolve_qemu(args.qemu)
    if binary is None:
        what = args.qemu or os.environ.get("QEMU") or "qemu-system-aarch64"
        print(f"vsmmu diff-qemu: {what} not found (install it: apt-get install "
              "qemu-system-arm, or pass --qemu PATH)", file=sys.stderr)
        return 2
    for path, flag in ((args.sarif, "--sarif"), (args.emit_qtest, "--emit-qtest")):
        if path and (why := unwritable_file(path, flag)):
            print(f"vsmmu diff-qemu: {why}", file=sys.stderr)
            return 2
    progress = None
    if not args.json and sys.stderr.isatty():
        def progress(r: CaseResult) -> None:
            print(f"\r{r.scenario.index + 1 - args.start}/{args.cases}", end="",
                  file=sys.stderr, flush=True)
    try:
        report = run(binary, args.seed, args.cases, start=args.start, progress=progress)
    except (PeerCrash, OSError, RuntimeError) as e:
        print(f"vsmmu diff-qemu: cannot run {binary}: {e}", file=sys.stderr)
        return 2
    if progress:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_text(report, verbose=args.verbose))
    if args.sarif and (why := write_report(args.sarif, sarif_log(report))):
        print(f"vsmmu diff-qemu: {why}", file=sys.stderr)
        return 2
    if args.emit_qtest:
        case = reproducer.pick(report.results)
        if case is None:
            print("vsmmu diff-qemu: no divergence: no qtest script written", file=sys.stderr)
        else:
            try:
                text = reproducer.script(case, reproducer.record(binary, case),
                                         report.qemu_version)
            except (PeerCrash, OSError, RuntimeError) as e:
                print(f"vsmmu diff-qemu: cannot record the qtest script: {e}", file=sys.stderr)
                return 2
            if why := write_report(args.emit_qtest, text):
                print(f"vsmmu diff-qemu: {why}", file=sys.stderr)
                return 2
    return 1 if report.unexplained else 0


UNEXPLAINED_RULE = "unexplained-divergence"


def sarif_log(report: Report) -> dict:
    """A rule per divergence class (each known row, with the architecture's rule
    and what QEMU does; and the unexplained); a result per unexplained case
    (error: the model or QEMU is wrong and nobody knows which yet) and one per known
    row that fired, with its count (note: a documented QEMU deviation)."""
    rules = [{"id": UNEXPLAINED_RULE, "shortDescription": {
        "text": "our SMMUv3 and QEMU's disagree and no known row explains it"},
        "defaultConfiguration": {"level": "error"}}]
    rules += [{"id": k.id, "shortDescription": {"text": k.rule},
               "fullDescription": {"text": f"QEMU: {k.qemu}"},
               "defaultConfiguration": {"level": "note"}} for k in KNOWN.values()]
    case = "vsmmu diff-qemu --seed {s} --start {i} --cases 1"
    results = []
    for r in report.unexplained:
        replay = case.format(s=r.scenario.seed, i=r.scenario.index)
        results.append(sarif.result(
            UNEXPLAINED_RULE, rules,
            f"{r.scenario.name}: {'; '.join(d.aspect for d in r.diffs)} (replay: {replay})",
            [{"logicalLocations": [{"name": r.scenario.name, "kind": "module"}]}],
            f"diff-qemu:{r.scenario.seed}:{r.scenario.index}"))
    for known, n in sorted(Counter(k for r in report.divergent for k in r.known).items()):
        if known in KNOWN:
            first = next(r for r in report.divergent if known in r.known)
            results.append(sarif.result(
                known, rules, f"{n} case(s), e.g. {first.scenario.name} (replay: "
                f"{case.format(s=first.scenario.seed, i=first.scenario.index)})",
                [{"logicalLocations": [{"name": "QEMU", "kind": "module"}]}],
                f"diff-qemu:{known}", level="note"))
    return sarif.log(rules, results, version=version())


def format_text(report: Report, *, verbose: bool = False) -> str:
    lines = [f"{report.qemu_version}  ({report.qemu_binary})",
             f"seed {report.seed}: {len(report.results)} cases, {report.agree} agree, "
             f"{len(report.divergent)} diverge, {len(report.unexplained)} unexplained "
             f"({report.seconds:.1f} s)"]
    by_known = Counter(k for r in report.divergent for k in r.known)
    if by_known:
        lines.append("")
        lines.append(f"{'known divergence':36} {'class':15} {'cases':>5}")
        for k, n in by_known.most_common():
            cls = KNOWN[k].cls if k in KNOWN else PEER_CRASH
            lines.append(f"{k:36} {cls:15} {n:5}")
    for r in report.divergent:
        unexplained = r.verdict not in EXPLAINED
        if not (verbose or unexplained):
            continue
        lines.append("")
        lines.append(f"{r.verdict.upper() if unexplained else r.verdict}: {r.scenario.name} "
                     f"(--seed {r.scenario.seed} --start {r.scenario.index} --cases 1) "
                     f"{' '.join(r.known)}")
        for d in r.diffs:
            where = "" if d.step is None else f"@step{d.step}"
            lines.append(f"  {d.aspect}{where}")
            lines.append(f"    ours: {json.dumps(_jsonable(d.ours))[:300]}")
            lines.append(f"    qemu: {json.dumps(_jsonable(d.qemu))[:300]}")
    return "\n".join(lines)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m fuzz.peers.differential",
                                 description="differential testing against QEMU's SMMUv3")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
