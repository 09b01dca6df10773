"""Crash triage: replay, classify, group, minimize, and turn findings into tests.

`vsmmu triage FILE...` replays each input (program text or fuzz-input bytes,
untrusted: `fuzz.program.load` bounds it) on one shared `Runner`, then:

* classifies it ClusterFuzz-style.  The signature of an invariant violation is
  the invariant and the witness's stable *kind* fields (`tlb-containment:iotlb`,
  `s2-authority:memory`, `no-cross-guest-dma:w`); of a `no-crash` finding, the
  exception type and the three innermost project frames (vsmmu/, properties/,
  fuzz/; never atheris, Hypothesis, pytest or the standard library), without
  line numbers.  No addresses, so one bug reached by different inputs has one
  signature, and inputs are grouped by it;
* minimizes it: delta debugging (ddmin) over the operation list, then each
  operand of each remaining operation made simpler (zeroed; a raw vSTE, CD or
  command word by word, byte by byte, bit by bit) while the signature stays the
  same.  Every attempt is a deterministic replay; the search is bounded by time
  and by a number of replays, and stops at the best program found so far;
* prints the minimized program with the failing step and the witness, and with
  `--emit-test DIR` writes one pytest file per group that holds the program
  text and asserts it replays clean: it fails until the bug is fixed, then
  guards against its return.

Exit status: 0 every input replays clean, 1 a finding, 2 a usage or input error
(an unreadable file is one line on stderr; the other files are still triaged).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fuzz
import properties
import vsmmu
from properties.violations import (
    CMD_CONFINEMENT,
    CMDQ_ISOLATION,
    EVENT_CONFINEMENT,
    HYP_READ_CONFINEMENT,
    HYP_WRITE_CONFINEMENT,
    NO_CRASH,
    NO_CROSS_GUEST_DMA,
    S2_AUTHORITY,
    TLB_CONTAINMENT,
    Violation,
)
from vsmmu.arch.layouts import EVENT, Event
from vsmmu.arch.layouts import Op as Opcode
from vsmmu.platform import PlatformError, dump_platform

from . import options, sarif
from .outputs import unwritable, unwritable_file, write_report
from .program import Op, ProgramError, encode, load, to_text
from .progress import Ticker, announce
from .runner import Runner, RunResult, platform_for
from .targets import runner_for

# Targets whose inputs run on the whole system (the smmu target's on the physical rig).
DEFAULT_BUDGET = 60.0  # seconds of minimization per input
DEFAULT_MAX_RUNS = 20_000  # replays of minimization per input
CRASH_FRAMES = 3  # ClusterFuzz's MAX_CRASH_STATE_FRAMES

# The witness fields that say what kind of violation it is (never where): they
# make the signature.  Other invariants are identified by their name alone.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    NO_CROSS_GUEST_DMA: ("access",),
    S2_AUTHORITY: ("where",),
    TLB_CONTAINMENT: ("cache",),
    HYP_READ_CONFINEMENT: ("purpose",),
    HYP_WRITE_CONFINEMENT: ("purpose",),
    CMD_CONFINEMENT: ("command",),
    EVENT_CONFINEMENT: ("record",),
    CMDQ_ISOLATION: ("problem", "error", "command"),
}


# ------------------------------------------------------------ classification
@dataclass(frozen=True)
class Finding:
    """What one replay found: the invariant, its signature, where and the witness."""

    invariant: str
    signature: str
    step: int | None
    witness: dict[str, Any]  # as printed: integers in hex
    traceback: str | None = None


def _kind(name: str, value: Any) -> str:
    """A witness field as a stable, address-free word."""
    if name == "command" and isinstance(value, int):
        op = value & 0xFF
        return Opcode(op).name if op in Opcode._value2member_map_ else f"op{op:#04x}"
    if name == "record" and isinstance(value, int):
        ev = EVENT.get(value, "ID")
        return Event(ev).name if ev in Event._value2member_map_ else f"event{ev:#04x}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value))


_PACKAGE_DIRS = tuple((pkg.__name__, os.path.dirname(os.path.abspath(pkg.__file__)) + os.sep)
                      for pkg in (vsmmu, properties, fuzz))
_FRAME_RE = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+, in (?P<func>\S+)\s*$')


def project_frames(tb: str) -> list[str]:
    """`package.module.function` of the project frames of the last exception in a
    formatted traceback, innermost first (line numbers dropped).  A module is named
    by its file name alone, not by the room it sits in (`vsmmu/hw/walk.py` is
    `vsmmu.walk`): signatures are promises, and stay the same when modules move
    between rooms.  File names are unique within each package (a test keeps them so)."""
    last = tb.rsplit("Traceback (most recent call last):", 1)[-1]
    frames = []
    for line in last.splitlines():
        m = _FRAME_RE.match(line)
        if not m:
            continue
        path = os.path.abspath(m["path"])
        for package, prefix in _PACKAGE_DIRS:
            if path.startswith(prefix) and path.endswith(".py"):
                frames.append(f"{package}.{os.path.basename(path)[:-3]}.{m['func']}")
                break
    return frames[::-1]


def signature(violation: Violation, traceback: str | None = None) -> str:
    """The crash state of a violation: address-free, stable across inputs."""
    if violation.invariant == NO_CRASH:
        frames = project_frames(traceback or "")[:CRASH_FRAMES]
        exception = violation.witness.get("exception", "Exception")
        return ":".join([NO_CRASH, str(exception), ">".join(frames) or "?"])
    kinds = [_kind(f, violation.witness[f]) for f in KIND_FIELDS.get(violation.invariant, ())
             if f in violation.witness]
    return ":".join([violation.invariant, *kinds])


def classify(result: RunResult) -> Finding | None:
    """The finding of a replay, or None when every invariant held."""
    v = result.violation
    if v is None:
        return None
    return Finding(v.invariant, signature(v, result.traceback), v.step,
                   v.as_dict()["witness"], result.traceback)


def signature_hash(sig: str) -> str:
    return hashlib.sha1(sig.encode()).hexdigest()[:12]


# ------------------------------------------------------------ minimization
class _OutOfBudget(Exception):
    pass


@dataclass
class Minimized:
    ops: list[Op]
    finding: Finding  # of the minimized program (its step indexes `ops`)
    runs: int  # replays spent
    seconds: float
    complete: bool  # False: the budget ran out, `ops` is the best found by then


class _Oracle:
    """Does a candidate still show the target signature?  Answers with the
    candidate cut after its failing step (later operations never ran), or None.
    Replays are deterministic, so answers are cached."""

    def __init__(self, runner: Runner, target: str, deadline: float, max_runs: int):
        self.runner, self.target = runner, target
        self.deadline, self.max_runs = deadline, max_runs
        self.runs = 0
        self.cache: dict[bytes, tuple[list[Op], Finding] | None] = {}
        # The last program that still failed.  Every one accepted is smaller than the
        # one before (fewer operations, or bits cleared), so this is the best so far.
        self.best: tuple[list[Op], Finding] | None = None

    def __call__(self, ops: list[Op]) -> list[Op] | None:
        key = encode(ops)
        if key not in self.cache:
            if self.runs >= self.max_runs or time.monotonic() >= self.deadline:
                raise _OutOfBudget
            self.runs += 1
            finding = classify(self.runner.run(ops))
            hit = finding is not None and finding.signature == self.target
            self.cache[key] = (ops[: finding.step + 1], finding) if hit else None
        answer = self.cache[key]
        if answer is None:
            return None
        self.best = answer
        return answer[0]


def _ddmin(ops: list[Op], test: Callable[[list[Op]], list[Op] | None]) -> list[Op]:
    """Zeller's ddmin: a 1-minimal sublist that still fails (subsets, then complements)."""
    n = 2
    while len(ops) >= 2:
        size = len(ops)
        bounds = [(i * size // n, (i + 1) * size // n) for i in range(n)]
        for lo, hi in bounds:
            out = test(ops[lo:hi])
            if out is not None:
                ops, n = out, 2
                break
        else:
            for lo, hi in bounds:
                out = test(ops[:lo] + ops[hi:])
                if out is not None:
                    ops, n = out, max(n - 1, 2)
                    break
            else:
                if n >= size:
                    break
                n = min(2 * n, size)
    return ops


def _clear_masks(width: int, raw: bool) -> Iterator[int]:
    """Bits to try clearing in an operand, biggest first: all, each 64-bit word (raw
    structures), each byte, each bit."""
    bits = 8 * width
    yield (1 << bits) - 1
    if raw and width > 8:
        for w in range(width // 8):
            yield ((1 << 64) - 1) << (64 * w)
    if width > 1:
        for b in range(width):
            yield 0xFF << (8 * b)
    for b in range(bits - 1, -1, -1):
        yield 1 << b


def _simplify_operands(ops: list[Op], test: Callable[[list[Op]], list[Op] | None]) -> list[Op]:
    """Each operand of each operation made as simple as the signature allows."""
    i = 0
    while i < len(ops):
        for j, operand in enumerate(ops[i].spec.operands):
            for mask in _clear_masks(operand.width, operand.raw):
                if i >= len(ops):
                    break
                op = ops[i]
                value = op.args[j]
                number = int.from_bytes(value, "little") if operand.raw else value
                if not number & mask:
                    continue
                simpler = number & ~mask
                if operand.raw:
                    simpler = simpler.to_bytes(operand.width, "little")
                candidate = Op(op.code, op.args[:j] + (simpler,) + op.args[j + 1:])
                out = test(ops[:i] + [candidate] + ops[i + 1:])
                if out is not None:
                    ops = out
        i += 1
    return ops


def minimize(runner: Runner, ops: list[Op], target: str | None = None, *,
             budget: float = DEFAULT_BUDGET, max_runs: int = DEFAULT_MAX_RUNS,
             finding: Finding | None = None) -> Minimized:
    """The smallest program found that still fails with signature `target` (default:
    the signature `ops` fails with).  Operation-level ddmin, then operand-level
    simplification, repeated until neither changes anything or the budget (seconds,
    replays) is spent.  Deterministic: the same input and an unexhausted budget give
    the same program.  `finding`: what `ops` already replayed to, if known (saves a
    replay).  Raises ValueError when `ops` does not fail as asked."""
    start = time.monotonic()
    replays = 0
    if finding is None:
        finding, replays = classify(runner.run(ops)), 1
    if finding is None or (target is not None and finding.signature != target):
        got = finding.signature if finding else "clean"
        raise ValueError(f"the program does not reproduce {target or 'a finding'} (got {got})")
    oracle = _Oracle(runner, finding.signature, start + budget, max_runs)
    oracle.runs = replays
    current = ops[: finding.step + 1]
    oracle.cache[encode(current)] = oracle.best = (current, finding)
    complete = True
    try:
        while True:
            before = current
            current = _ddmin(current, oracle)
            current = _simplify_operands(current, oracle)
            if current == before:
                break
    except _OutOfBudget:
        complete = False
    best_ops, best_finding = oracle.best
    return Minimized(list(best_ops), best_finding, oracle.runs, time.monotonic() - start,
                     complete)


# ------------------------------------------------------------ regression tests
_TEST_TEMPLATE = '''\
# ruff: noqa: E501 (program lines are as long as their operands)
"""Regression test written by `vsmmu triage` for {signature}.

First seen in {source}.  The program below once broke an invariant; the test
replays it with every invariant checked and asserts it is clean, so it fails
while the bug is present and guards against its return once fixed.
"""

{platform_import}from fuzz.program import parse
from fuzz.{runner_module} import {runner_class}
{platform_vsmmu}
SIGNATURE = {signature!r}

PROGRAM = """\\
{program}"""
{platform_value}

def test_regression_{digest}():
    result = {runner_class}({runner_args}).run(parse(PROGRAM))
    assert result.violation is None, (
        f"{{SIGNATURE}} still reproduces: {{result.violation}}\\n{{result.traceback or ''}}")
'''


def emit_test(directory: str | os.PathLike, ops: list[Op], finding: Finding, *,
              platform: dict | None = None, z3: bool = True, source: str = "a fuzz input",
              target: str = "system") -> Path:
    """Write `directory/test_regression_<signature hash>.py`: a self-contained pytest
    file holding the program text (and the platform description, if not the default)
    that asserts the program replays clean on `target`'s runner.  Returns its path."""
    digest = signature_hash(finding.signature)
    args = []
    platform_import = platform_vsmmu = platform_value = ""
    smmu = target == "smmu"  # the physical SMMU alone: its rig takes the first SMMU's features
    if platform is not None:
        platform_import = "import json\n\n"
        platform_vsmmu = "from vsmmu.platform import platform_from_dict\n"
        platform_value = f"\nPLATFORM = json.loads({json.dumps(platform, sort_keys=True)!r})\n"
        args.append("platform_from_dict(PLATFORM)" + (".smmus[0].features" if smmu else ""))
    if not z3 and not smmu:
        args.append("z3=False")
    text = _TEST_TEMPLATE.format(
        signature=finding.signature,
        source=re.sub(r"[^\w.+-]", "_", os.path.basename(source)),
        program=to_text(ops), platform_import=platform_import, platform_vsmmu=platform_vsmmu,
        platform_value=platform_value, digest=digest, runner_args=", ".join(args),
        runner_module="physical" if smmu else "runner",
        runner_class="PhysicalRunner" if smmu else "Runner")
    path = Path(directory) / f"test_regression_{digest}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(errors="replace") != text:
        raise FileExistsError(f"{path} exists and differs (edited?): left as it is")
    path.write_text(text)
    return path


# ------------------------------------------------------------ triage
@dataclass
class Report:
    """The triage of one input file."""

    file: str
    error: str | None = None  # the file could not be read as a program
    ops: int = 0  # operations in the input
    finding: Finding | None = None  # of the minimized program
    minimized: Minimized | None = None

    @property
    def signature(self) -> str | None:
        return self.finding.signature if self.finding else None

    def as_dict(self) -> dict[str, Any]:
        f, m = self.finding, self.minimized
        return {
            "file": self.file,
            "status": "error" if self.error else "finding" if f else "clean",
            "invariant": f.invariant if f else None,
            "signature": f.signature if f else None,
            "minimized_ops": to_text(m.ops).splitlines() if m else None,
            "witness": f.witness if f else None,
            "step": f.step if f else None,
            "ops": self.ops,
            "minimize": None if m is None else {
                "runs": m.runs, "seconds": round(m.seconds, 3), "complete": m.complete},
            "error": self.error,
        }


def triage(paths: Iterable[str], runner: Runner, *, budget: float = DEFAULT_BUDGET,
           max_runs: int = DEFAULT_MAX_RUNS, raw: bool | None = None,
           ticker: Ticker | None = None) -> list[Report]:
    """Replay, classify and minimize each file; unreadable files become error reports.
    `ticker`: where to say which file it is at, when that takes a while."""
    reports = []
    paths = list(paths)
    for i, path in enumerate(paths):
        if ticker is not None:
            ticker.tick(f"input {i + 1}/{len(paths)}: {_shown(path)}")
        try:
            ops = load(path, raw=raw)
        except ProgramError as e:
            reports.append(Report(path, error=str(e)))
            continue
        report = Report(path, ops=len(ops))
        finding = classify(runner.run(ops))
        if finding is not None:
            m = minimize(runner, ops, budget=budget, max_runs=max_runs, finding=finding)
            report.finding, report.minimized = m.finding, m
        reports.append(report)
    return reports


def groups(reports: Iterable[Report]) -> dict[str, list[Report]]:
    """Findings by signature, in order of first appearance."""
    out: dict[str, list[Report]] = {}
    for r in reports:
        if r.signature is not None:
            out.setdefault(r.signature, []).append(r)
    return out


def _shown(text: str) -> str:
    return text if text.isprintable() else repr(text)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def format_report(r: Report) -> str:
    f, m = r.finding, r.minimized
    if f is None or m is None:
        return f"{_shown(r.file)}: clean ({_n(r.ops, 'operation')}, every invariant held)\n"
    state = "" if m.complete else ", budget spent"
    lines = [f"{_shown(r.file)}: {f.invariant}  signature {f.signature}",
             f"  minimized {r.ops} -> {_n(len(m.ops), 'operation')} "
             f"({m.runs} replays, {m.seconds:.1f} s{state}):"]
    for i, text in enumerate(to_text(m.ops).splitlines()):
        lines.append(f"  {'>>' if i == f.step else '  '} {i:3} {text}")
    lines.append(f"  fails at step {f.step}: "
                 + ", ".join(f"{k}={v}" for k, v in f.witness.items()))
    if f.traceback:
        lines += ["  " + line for line in f.traceback.rstrip().splitlines()]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="crash files: program text (UTF-8) or fuzz-input bytes")
    parser.add_argument("--bytes", action="store_true",
                        help="decode every file as fuzz-input bytes even if it reads as "
                        "text")
    options.add_platform(parser)
    options.add_design(parser)
    options.add_target(parser, "the inputs came from")
    parser.add_argument("--no-z3", action="store_true", help="skip the Z3 state checks")
    parser.add_argument("--time", "--budget", dest="budget", type=options.seconds_or_zero,
                        default=DEFAULT_BUDGET, metavar="S",
                        help=f"minimization time per input, seconds (default {DEFAULT_BUDGET:g};"
                        " 0: only cut after the failing step)")
    parser.add_argument("--max-runs", type=options.count, default=DEFAULT_MAX_RUNS, metavar="N",
                        help=f"minimization replays per input (default {DEFAULT_MAX_RUNS})")
    parser.add_argument("--emit-test", metavar="DIR",
                        help="write a pytest regression test per group into DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options.add_sarif(parser)






def _fail(message: str) -> int:
    print(f"vsmmu triage: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    try:
        platform = platform_for(args.target, args.platform, args.design)
    except PlatformError as e:
        return _fail(str(e))
    if args.sarif and (why := unwritable_file(args.sarif, "--sarif")):
        return _fail(why)
    if args.emit_test:
        try:
            Path(args.emit_test).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return _fail(f"--emit-test {_shown(args.emit_test)}: {e.strerror or e}")
        if why := unwritable(Path(args.emit_test), "--emit-test"):
            return _fail(why)  # before minimizing anything: no work is lost
    try:
        with announce(f"booting the {args.target} target", prefix="vsmmu triage"):
            runner = runner_for(args.target, args.platform, z3=not args.no_z3,
                                design=args.design)
    except Violation as v:  # the model fails before any input runs
        print(f"vsmmu triage: the platform breaks an invariant at boot: {v}", file=sys.stderr)
        return 1
    reports = triage(args.files, runner, budget=args.budget, max_runs=args.max_runs,
                     raw=True if args.bytes else None, ticker=Ticker(prefix="vsmmu triage"))
    by_signature = groups(reports)
    emitted: dict[str, Path] = {}
    not_written: list[str] = []  # tests that could not be written, or were kept as they are
    if args.emit_test:
        for sig, members in by_signature.items():
            best = min(members, key=lambda r: (len(encode(r.minimized.ops)), r.file))
            try:
                emitted[sig] = emit_test(
                    args.emit_test, best.minimized.ops, best.finding,
                    platform=dump_platform(platform) if platform else None,
                    z3=not args.no_z3, source=best.file, target=args.target)
            except OSError as e:
                not_written.append(str(e) if isinstance(e, FileExistsError) else
                                   f"cannot write the test for {sig}: {e.strerror or e}")
    for r in reports:
        if r.error:
            print(f"vsmmu triage: {_shown(r.error)}", file=sys.stderr)
    for message in not_written:
        print(f"vsmmu triage: {_shown(message)}", file=sys.stderr)
    if args.sarif:
        rules = sarif.invariant_rules()
        results = [sarif.finding(rules, m[0].finding.invariant, sig, m[0].finding.step,
                                 m[0].finding.witness, [r.file for r in m],
                                 runner.design)
                   for sig, m in by_signature.items()]
        if why := write_report(args.sarif, sarif.log(rules, results, version=fuzz.version())):
            return _fail(why)
    if args.json:
        print(json.dumps({"inputs": [r.as_dict() for r in reports], "groups": len(by_signature),
                          "tests": {s: str(p) for s, p in emitted.items()}}, indent=2))
    else:
        for r in reports:
            if not r.error:
                print(format_report(r))
        findings = sum(len(m) for m in by_signature.values())
        print(f"{_n(len(reports), 'input')}: {_n(findings, 'finding')} in "
              f"{_n(len(by_signature), 'group')}, {sum(1 for r in reports if r.error)} unreadable")
        for sig, members in by_signature.items():
            where = f"  -> {emitted[sig]}" if sig in emitted else ""
            print(f"  {sig}  ({len(members)}: {', '.join(_shown(r.file) for r in members)})"
                  f"{where}")
    if any(r.error for r in reports) or not_written:
        return 2
    return 1 if by_signature else 0


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsmmu triage", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_standalone())

