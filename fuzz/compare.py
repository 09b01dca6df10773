"""`vsmmu compare`: every vSMMU design under every invariant, side by side.

For each design (vsmmu/hyp/designs/) on the same platform: the universal proofs
(`vsmmu prove --design`), the witnesses kept from earlier runs
(corpora/designs/<design>/*.txt, replayed), then `--seeds` campaigns of `--time`
seconds each (`vsmmu fuzz --design --seed`, one target, default system).  Each
invariant of each design ends as one of:

  violated  a campaign found it broken (time to the first finding over the seeds;
            its program minimized by `vsmmu triage`'s minimizer and written to
            `--out`, with the `vsmmu check --design` line that replays it), or a
            kept witness still breaks it, or a proof's Z3 counterexample does;
  proved    its universal proof holds for every guest and vSMMU, and no campaign
            broke it;
  held      no campaign broke it in `execs` executions (every invariant is checked
            after every step of every execution);
  unknown   a proof timed out and no campaign broke it.

`--json` prints {"designs": [NAME...], "results": [{"design", "invariant",
"result", "execs", "seconds", "witness", "explanation", ...}]} (keys may be added,
never removed); `--markdown FILE` writes the table and the violations as
Markdown.  Exit status 1 when our own design (the default) violates anything.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from properties.proofs import prove_all
from properties.violations import INVARIANTS, QUEUE_PROTOCOL, REQUEST_ATOMICITY, UNMAP_COMPLETION
from vsmmu.hyp.designs import DEFAULT, PROFILES
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.platform import PlatformError

from . import options
from .campaign import SEEDS_ROOT, CampaignError, CampaignOptions, run_campaign
from .harness import Settings, make_runner
from .outputs import unwritable_dir, unwritable_file, write_report
from .program import MAX_BYTES, decode, load, to_text
from .results import Finding
from .runner import fuzz_platform, platform_for
from .triage import minimize

# What a vSMMU design is judged on: the isolation invariants less virtio-iommu's own,
# and the command-queue protocol every vSMMU owes its guest.
JUDGED = tuple(i for i in INVARIANTS if i not in (UNMAP_COMPLETION, REQUEST_ATOMICITY)) \
    + (QUEUE_PROTOCOL,)
TARGETS = ("system", "vste", "command")  # the harnesses whose programs reach a vSMMU
WITNESSES = SEEDS_ROOT / "designs"  # <design>/<invariant>.txt, replayed by the tests too
MINIMIZE_BUDGET = 10.0


@dataclass
class Cell:
    design: str
    invariant: str
    result: str = "held"  # proved | held | violated | unknown
    execs: int = 0
    seconds: float = 0.0  # campaign seconds spent on the design
    found_after: float | None = None  # seconds into the first campaign that found it
    seed: int | None = None
    witness: str | None = None  # the minimized program (text), or a proof's counterexample
    witness_file: str | None = None
    check: str | None = None  # the command line that replays the witness
    source: str | None = None  # of a violation: "campaign", "witness" or "proof"
    explanation: str = ""
    proof: str | None = None  # the proof's own result, where there is one

    def as_dict(self) -> dict[str, Any]:
        return {"design": self.design, "invariant": self.invariant, "result": self.result,
                "execs": self.execs, "seconds": round(self.seconds, 1),
                "witness": self.witness, "explanation": self.explanation,
                "found_after": None if self.found_after is None else round(self.found_after, 1),
                "seed": self.seed, "witness_file": self.witness_file, "check": self.check,
                "proof": self.proof, "source": self.source}


@dataclass
class Comparison:
    designs: list[str]
    target: str
    budget: float
    seeds: int
    cells: list[Cell] = field(default_factory=list)

    def cell(self, design: str, invariant: str) -> Cell:
        return next(c for c in self.cells if c.design == design and c.invariant == invariant)

    def as_dict(self) -> dict[str, Any]:
        return {"designs": self.designs, "target": self.target, "budget": self.budget,
                "seeds": self.seeds, "results": [c.as_dict() for c in self.cells]}


# ------------------------------------------------------------------ the run
def _proofs(design: str, platform, timeout_ms: int) -> dict[str, tuple[str, str]]:
    """invariant -> (result, explanation) of its proofs over every subject."""
    hyp = Hypervisor(replace(platform or fuzz_platform(), design=design))
    out: dict[str, tuple[str, str]] = {}
    for r in prove_all(hyp, timeout_ms=timeout_ms):
        result = out.setdefault(r.property, ("proved", ""))[0]
        if r.result == "violated" and result != "violated":
            cex = ", ".join(f"{k}={v}" for k, v in (r.counterexample or {}).items())
            out[r.property] = ("violated", f"Z3 counterexample for {r.subject}: {cex}")
        elif r.result == "unknown" and result == "proved":
            out[r.property] = ("unknown", f"Z3 timed out for {r.subject}")
    return out


def _kept_witnesses(design: str, target: str, platform: str | None) -> dict[str, tuple]:
    """invariant -> (file, violation) for each kept witness that still breaks its
    invariant on the design."""
    runner = make_runner(target, Settings(platform=platform, design=design, z3=False))
    out = {}
    for path in sorted((WITNESSES / design).glob("*.txt")):
        v = runner.run(load(str(path))).violation
        if v is not None and v.invariant == path.stem:
            out[v.invariant] = (path, v)
    return out


def _first_findings(results: list[tuple[int, Any]]) -> dict[str, tuple[int, Finding]]:
    """invariant -> (seed, the earliest finding of it over every seed's campaign)."""
    first: dict[str, tuple[int, Finding]] = {}
    for seed, result in results:
        for f in result.findings:
            at = f.found_after if f.found_after is not None else float("inf")
            best = first.get(f.invariant)
            if best is None or at < (best[1].found_after or float("inf")):
                first[f.invariant] = (seed, f)
    return first


def _check_line(design: str, target: str, platform: str | None, path: Path) -> str:
    """The command that replays a witness."""
    return shlex.join(["vsmmu", "check", "--design", design, "--target", target,
                       *(["--platform", platform] if platform else []), str(path)])


def _witness(f: Finding, runner, design: str, out: Path,
             budget: float) -> tuple[str, Path, str]:
    """(program text, file, one-line explanation) of a finding, minimized on
    `runner` (the design's)."""
    with open(f.artifact, "rb") as fh:
        ops = decode(fh.read(MAX_BYTES))
    explanation = f.signature
    try:
        small = minimize(runner, ops, f.signature, budget=budget)
        ops, explanation = small.ops, _explain(small.finding)
    except ValueError:  # no longer reproduces as that signature: keep the whole program
        pass
    text = to_text(ops)
    path = out / design / f"{f.invariant}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {design}: {f.signature}\n# {explanation}\n{text}")
    return text, path, explanation


def _explain(f: Finding) -> str:
    where = f" at step {f.step}" if f.step is not None else ""
    detail = ", ".join(f"{k}={v}" for k, v in f.witness.items())
    return f"{f.invariant}{where}: {detail}"[:300]


def compare(designs: list[str], *, target: str = "system", budget: float = 60.0,
            seeds: int = 1, platform: str | None = None, out: str | Path = "fuzz-out/compare",
            minimize_budget: float = MINIMIZE_BUDGET, proof_timeout_ms: int = 30_000,
            progress: Callable[[str], None] = lambda line: None) -> Comparison:
    """Prove and fuzz every design; raises CampaignError (or PlatformError) on bad input."""
    out = Path(out)
    base = platform_for(target, platform)
    comparison = Comparison(list(designs), target, budget, seeds)
    with tempfile.TemporaryDirectory(prefix="vsmmu-compare-") as tmp:
        for design in designs:
            progress(f"{design}: proofs")
            proofs = _proofs(design, base, proof_timeout_ms)
            runs = []
            for seed in range(1, seeds + 1):
                progress(f"{design}: campaign {seed}/{seeds}, {budget:g} s")
                work = Path(tmp) / design / str(seed)
                (work / "corpus").mkdir(parents=True)
                runs.append((seed, run_campaign(CampaignOptions(
                    target=target, time=budget, seed=seed, design=design, platform=platform,
                    corpus=str(work / "corpus"), artifacts=str(work / "artifacts"),
                    coverage_budget=0))))
            execs = sum(r.execs for _, r in runs)
            spent = sum(r.seconds for _, r in runs)
            first = _first_findings(runs)
            kept = _kept_witnesses(design, target, platform)
            minimizing = None  # the design's runner, booted for the first finding
            for invariant in JUDGED:
                cell = Cell(design, invariant, execs=execs, seconds=spent,
                            explanation=f"held in {execs} executions")
                proof = proofs.get(invariant)
                if proof:
                    cell.proof = proof[0]
                if invariant in first:
                    seed, f = first[invariant]
                    progress(f"{design}: minimizing {f.signature}")
                    minimizing = minimizing or make_runner(
                        target, Settings(platform=platform, design=design))
                    cell.result, cell.seed, cell.found_after = "violated", seed, f.found_after
                    cell.witness, path, cell.explanation = _witness(
                        f, minimizing, design, out, minimize_budget)
                    cell.source = "campaign"
                elif invariant in kept:
                    path, v = kept[invariant]
                    cell.result, cell.source = "violated", "witness"
                    cell.witness = "".join(line for line in path.read_text().splitlines(True)
                                           if not line.startswith("#"))
                    cell.explanation = f"kept witness: {v}"[:300]
                elif proof:
                    cell.result, why = proof
                    if cell.result == "violated":
                        cell.witness = cell.explanation = why
                        cell.source = "proof"
                    elif cell.result == "proved":
                        cell.explanation = f"proved for all guest inputs; held in {execs} " \
                                           "executions"
                if cell.source in ("campaign", "witness"):  # a program replays it
                    cell.witness_file = str(path)
                    cell.check = _check_line(design, target, platform, path)
                comparison.cells.append(cell)
    return comparison


# ------------------------------------------------------------------ output
def _short(c: Cell) -> str:
    if c.result == "violated":
        return "VIOLATED" + (f" {c.found_after:.1f}s" if c.source == "campaign" else
                             f" ({c.source})")
    if c.result == "held":
        return f"held {c.execs:,}"
    return c.result


def format_text(r: Comparison) -> str:
    width, col = max(len(i) for i in JUDGED), max(16, *(len(d) for d in r.designs))
    lines = [f"vsmmu compare: {', '.join(r.designs)}; target {r.target}, {r.seeds} x "
             f"{r.budget:g} s each", "",
             f"{'invariant':{width}}  " + "  ".join(f"{d:{col}}" for d in r.designs),
             f"{'-' * width}  " + "  ".join("-" * col for _ in r.designs)]
    for invariant in JUDGED:
        lines.append(f"{invariant:{width}}  " + "  ".join(
            f"{_short(r.cell(d, invariant)):{col}}" for d in r.designs))
    violated = [c for c in r.cells if c.result == "violated"]
    if violated:
        lines += ["", "violations:"]
        for c in violated:
            lines.append(f"  {c.design} {c.invariant}: {c.explanation}")
            if c.check:
                lines.append(f"    replay: {c.check}")
    return "\n".join(lines)


def format_markdown(r: Comparison) -> str:
    lines = [f"`vsmmu compare` — target {r.target}, {r.seeds} campaign(s) of {r.budget:g} s "
             "per design", "", "| invariant | " + " | ".join(f"`{d}`" for d in r.designs) + " |",
             "|---|" + "---|" * len(r.designs)]
    for invariant in JUDGED:
        lines.append(f"| {invariant} | " + " | ".join(
            _short(r.cell(d, invariant)) for d in r.designs) + " |")
    violated = [c for c in r.cells if c.result == "violated"]
    if violated:
        lines += ["", "| design | invariant | what happened | replay |", "|---|---|---|---|"]
        for c in violated:
            what = c.explanation.replace("|", "\\|")
            lines.append(f"| `{c.design}` | {c.invariant} | {what} | "
                         + (f"`{c.check}`" if c.check else "proof") + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--designs", type=_design_list, default=list(PROFILES),
                        metavar="A,B", help=f"designs to compare (default all: "
                        f"{','.join(PROFILES)})")
    parser.add_argument("--time", "--budget", dest="budget", type=options.seconds,
                        default=60.0, metavar="S", help="seconds per campaign (default 60)")
    parser.add_argument("--seeds", type=options.count, default=1, metavar="N",
                        help="campaigns per design, libFuzzer seeds 1..N (default 1)")
    parser.add_argument("--target", choices=TARGETS, default="system",
                        help="the harness the campaigns run (default system)")
    options.add_platform(parser)
    parser.add_argument("--out", default="fuzz-out/compare", metavar="DIR",
                        help="where the minimized witnesses go, DIR/<design>/<invariant>.txt "
                        "(default fuzz-out/compare)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")


def _design_list(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown design {unknown[0] if unknown else text!r}"
                                         f" (known: {', '.join(PROFILES)})")
    return list(dict.fromkeys(names))


def main(args: argparse.Namespace) -> int:
    """0: our design held (or was proved) everywhere; 1: it violated something;
    2: a usage or input error."""
    for why in (args.markdown and unwritable_file(args.markdown, "--markdown"),
                unwritable_dir(args.out, "--out")):
        if why:
            print(f"vsmmu compare: {why}", file=sys.stderr)
            return 2
    def say(line: str) -> None:
        print(f"vsmmu compare: {line}", file=sys.stderr, flush=True)

    try:
        result = compare(args.designs, target=args.target, budget=args.budget,
                         seeds=args.seeds, platform=args.platform, out=args.out, progress=say)
    except (CampaignError, PlatformError) as e:
        print(f"vsmmu compare: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_text(result))
    if args.markdown and (why := write_report(args.markdown, format_markdown(result))):
        print(f"vsmmu compare: {why}", file=sys.stderr)
        return 2
    ours = [c for c in result.cells if c.design == DEFAULT and c.result == "violated"]
    return 1 if ours else 0

