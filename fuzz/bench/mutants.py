"""`vsmmu bench mutants`: how many bugs nobody planted a default campaign finds.

The planted bugs (fuzz/bench/plants.py) were written together with the fuzzer.
Mutants are not: a small AST mutator samples one-token slips in the code that
keeps guests apart — the hypervisor, the vSMMU and its transfer functions,
the TLB, the virtio-iommu and its backend — and each mutant gets what a user
relies on: a default campaign (`vsmmu fuzz`: every target in turn, every
invariant; `--target` picks one) for the budget, then `vsmmu prove` (both on
`--design NAME`'s model when given: slips under a published design's policy).

* `killed`: the campaign or a proof reported a finding;
* `boot`: the mutant breaks start-up (the campaign could not run at all), so it
  says nothing about what a campaign finds; reported apart from the kill rate;
* `survived`: clean.  A survivor is either equivalent (no behaviour changed) or
  missed; telling which is a person's job, so each is listed with its file,
  line and change.

The slips (`OPERATORS`): a comparison turned (== and !=, < and <=, > and >=, in
and not in, is and is not), `and` for `or` and back, a `not` dropped, an
integer constant one more or one less, + for - and back, & for | and back, a
shift turned round, and a call statement removed.  Points are enumerated in a
fixed order over `FILES`; `--sample N --seed S` draws the same N every time.
Each mutant runs in a copy of the source tree, so nothing here is changed.

`--json` prints one object:

    {"population", "sample", "seed", "budget_s", "target", "design",
     "killed", "boot", "survived", "kill_rate",
     "mutants": [{"file", "line", "operator", "before", "after", "outcome", "by",
                  "seconds"}]}

`kill_rate` is killed / (killed + survived): survivors still include the
equivalent ones until a person has classified them.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vsmmu.hyp.designs import DEFAULT

from .. import options
from ..targets import ALL

ROOT = Path(__file__).resolve().parents[2]
FILES = ("vsmmu/hyp/hypervisor.py", "vsmmu/hyp/virtual.py", "vsmmu/hyp/transfer.py",
         "vsmmu/hyp/virtio_iommu.py", "vsmmu/hyp/virtio_backend.py", "vsmmu/hw/tlb.py")
TREES = ("vsmmu", "properties", "fuzz", "corpora")  # what a mutant's campaign needs
DEFAULT_SAMPLE, DEFAULT_BUDGET = 30, 60.0

_SWAPS = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
          ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
          ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.And: ast.Or, ast.Or: ast.And,
          ast.Add: ast.Sub, ast.Sub: ast.Add, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
          ast.LShift: ast.RShift, ast.RShift: ast.LShift}


@dataclass(frozen=True)
class Point:
    """One place a slip can be made: the `index`-th point of `file`."""

    file: str
    index: int
    line: int
    operator: str
    before: str
    after: str


def _slips(tree: ast.Module) -> Iterator[tuple[ast.AST, str, Callable[[ast.AST], ast.AST]]]:
    """(node, operator name, slip) for every point of `tree`, in a fixed order; `slip`
    makes the change in the node it is given and returns what stands in its place.
    Annotations are left alone: never evaluated (`from __future__ import annotations`)."""
    annotations = {id(n) for a in _annotations(tree) for n in ast.walk(a)}
    for node in ast.walk(tree):
        if id(node) in annotations:
            continue
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAPS:
            yield node, "compare", _turn
        elif isinstance(node, ast.BoolOp) and type(node.op) in _SWAPS:
            yield node, "boolean", _swap
        elif isinstance(node, ast.BinOp) and type(node.op) in _SWAPS:
            yield node, "arithmetic", _swap
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "not-dropped", lambda n: n.operand
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for delta in (1, -1):
                if node.value + delta >= 0:
                    yield node, f"constant{delta:+d}", lambda n, d=delta: _shift(n, d)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            yield node, "call-removed", lambda n: ast.Pass()


def _annotations(tree: ast.Module) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            yield node.returns


def _turn(n: ast.Compare) -> ast.AST:
    n.ops = [_SWAPS[type(n.ops[0])]()]
    return n


def _swap(n: ast.BoolOp | ast.BinOp) -> ast.AST:
    n.op = _SWAPS[type(n.op)]()
    return n


def _shift(n: ast.Constant, delta: int) -> ast.AST:
    n.value += delta
    return n


def points(files: tuple[str, ...] = FILES, root: Path = ROOT) -> list[Point]:
    """Every mutation point of `files`, in order."""
    out = []
    for file in files:
        tree = ast.parse((root / file).read_text(encoding="utf-8"))
        for i, (node, operator, slip) in enumerate(_slips(tree)):
            after = ast.unparse(slip(copy.deepcopy(node)))
            out.append(Point(file, i, node.lineno, operator, ast.unparse(node)[:120],
                             after[:120]))
    return out


def mutant(source: str, index: int) -> str:
    """`source` with its `index`-th slip made (formatting and comments are not kept)."""
    tree = ast.parse(source)
    for i, (node, _, slip) in enumerate(_slips(tree)):
        if i == index:
            new = slip(node)
            if new is not node:
                _replace(tree, node, new)
            return ast.unparse(tree)
    raise IndexError(f"no mutation point {index}")


def _replace(tree: ast.Module, old: ast.AST, new: ast.AST) -> None:
    """Put `new` where `old` is in `tree`."""
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                setattr(parent, name, [new if v is old else v for v in value])
                return


@dataclass
class Outcome:
    file: str
    line: int
    operator: str
    before: str
    after: str
    outcome: str  # killed | boot | survived
    by: str | None  # what killed it: the first finding's signature, or "prove"
    seconds: float


def run(point: Point, budget: float, root: Path = ROOT, target: str = ALL,
        design: str | None = None) -> Outcome:
    """A campaign on `target` (the default campaign's), then the proofs, on a copy of
    the tree with the slip made."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vsmmu-mutant-") as tmp:
        work = Path(tmp)
        for tree in TREES:
            shutil.copytree(root / tree, work / tree,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        source = (root / point.file).read_text(encoding="utf-8")
        (work / point.file).write_text(mutant(source, point.index), encoding="utf-8")
        env = {"PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
        on = ["--design", design] if design else []
        (work / "corpus").mkdir()
        fuzz = _cli(work, env, ["fuzz", "--target", target, "--time", f"{budget:g}",
                                "--seed", "1", "--json",
                                "--corpus", str(work / "corpus"),
                                "--artifacts", str(work / "artifacts"), *on], budget + 120)
        outcome, by = "survived", None
        findings = _findings(fuzz[1]) if fuzz is not None else []
        if findings:  # even when another target's harness could not run
            outcome, by = "killed", findings[0].get("signature", "finding")
        elif fuzz is None or fuzz[0] != 0:
            outcome = "boot"
        else:
            prove = _cli(work, env, ["prove", "--json", *on], 300)
            if prove is None or prove[0] != 0:
                outcome, by = "killed", "prove"
    return Outcome(point.file, point.line, point.operator, point.before, point.after,
                   outcome, by, round(time.monotonic() - start, 1))


def _findings(stdout: str) -> list[dict]:
    try:
        out = json.loads(stdout)
    except ValueError:
        return []
    return [f for f in out.get("findings") or [] if isinstance(f, dict)] if isinstance(
        out, dict) else []


def _cli(work: Path, env: dict[str, str], args: list[str],
         timeout: float) -> tuple[int, str] | None:
    """(exit status, stdout) of `vsmmu ARGS` run on the mutant's tree; None on a hang."""
    try:
        done = subprocess.run([sys.executable, "-m", "fuzz.cli", *args], cwd=work,
                              env=dict(os.environ, **env), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    return done.returncode, done.stdout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample", type=options.count, default=DEFAULT_SAMPLE, metavar="N",
                        help=f"mutants drawn (default {DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=options.count_or_zero, default=0, metavar="S",
                        help="which sample: the same seed draws the same mutants (default 0)")
    parser.add_argument("--time", "--budget", dest="budget", type=options.seconds,
                        default=DEFAULT_BUDGET, metavar="S",
                        help=f"campaign seconds per mutant (default {DEFAULT_BUDGET:g})")
    options.add_target(parser, "each mutant's campaign runs", default=ALL)
    options.add_design(parser)
    parser.add_argument("--list", action="store_true",
                        help="print the drawn mutants and stop (nothing is run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    population = points()
    sample = random.Random(args.seed).sample(population, min(args.sample, len(population)))
    sample.sort(key=lambda p: (p.file, p.index))
    if args.list:
        for p in sample:
            print(f"{p.file}:{p.line}  {p.operator:12}  {p.before}  ->  {p.after}")
        return 0
    results = []
    for i, p in enumerate(sample, 1):
        r = run(p, args.budget, target=args.target, design=args.design)
        results.append(r)
        print(f"[{i}/{len(sample)}] {p.file}:{p.line} {p.operator}: {r.outcome}"
              f"{f' ({r.by})' if r.by else ''} in {r.seconds:g} s", file=sys.stderr, flush=True)
    counts = {k: sum(r.outcome == k for r in results) for k in ("killed", "boot", "survived")}
    judged = counts["killed"] + counts["survived"]
    summary = {"population": len(population), "sample": len(sample), "seed": args.seed,
               "budget_s": args.budget, "target": args.target,
               "design": args.design or DEFAULT, **counts,
               "kill_rate": round(counts["killed"] / judged, 3) if judged else None,
               "mutants": [asdict(r) for r in results]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_text(summary))
    return 0


def format_text(summary: dict) -> str:
    rate = summary["kill_rate"]
    lines = [f"vsmmu bench mutants: {summary['sample']} of {summary['population']} mutants "
             f"(seed {summary['seed']}), {summary['budget_s']:g} s {summary['target']} "
             "campaign + proofs each",
             f"killed {summary['killed']}, survived {summary['survived']}, broke start-up "
             f"{summary['boot']}; kill rate {'-' if rate is None else f'{rate:.0%}'} "
             "(survivors not yet classified as equivalent or missed)", ""]
    for m in summary["mutants"]:
        lines.append(f"{m['outcome']:8}  {m['file']}:{m['line']}  {m['operator']}: "
                     f"{m['before']}  ->  {m['after']}" + (f"  [{m['by']}]" if m["by"] else ""))
    return "\n".join(lines)
