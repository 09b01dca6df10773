"""`vsmmu bench`: how fast the fuzzer finds the bugs that matter, and how fast it runs.

`vsmmu bench bugs` runs, for every planted bug (fuzz/bench/plants.py) and each of N
seeds, a fresh fuzzing process against the model with that bug, until the
first finding or the budget, and does the same, side by side in the same
run, with two baselines on the same fuzz target, invariants and budget:

* `ours`: the target's harness as `vsmmu fuzz` runs it: structure-aware
  mutator and crossover (fuzz/mutate.py), the dictionary, the seed corpus
  (corpora/<target>/), libFuzzer's -seed=N;
* `atheris-plain`: the same harness with libFuzzer's own byte-level mutation
  only: no custom mutator or crossover, no dictionary, no seeds;
* `hypothesis`: stateful random testing (fuzz/bench/baseline_hypothesis.py), one
  rule per operation, every invariant after every step, random.seed(N).

Time to find is wall-clock from the process's start (imports, boot and seed
replay included, for all three alike) to the finding on its output.  It also
runs `ours` on the correct model, per target used and seed, for the same
budget: any finding there is a false alarm (exit status 1).  `--design NAME`
plants the bugs in that vSMMU design's model instead of ours; a design that
itself breaks an invariant shows that in the correct-model row (and exits 1).

`--json` prints one object (its keys are kept stable for scripts):

    {"design": NAME,
     "bugs": [{"name", "class", "found", "seeds", "median_s", "max_s", "invariant"}],
     "baselines": {"atheris-plain": [rows as above], "hypothesis": [...]},
     "correct_model_findings": N,
     "budget_s": S, "trials": [{"fuzzer", "bug", "target", "seed", "seconds",
                                "invariant", "signature"}]}

`found` is how many of the `seeds` runs found the bug; `median_s` and `max_s`
are over all `seeds` runs with a miss counted as never (so `max_s` is null
unless every run found it); `invariant` is the one that fired most.

`--plot FILE.png` draws the runs found over time, ours against the baselines
(needs matplotlib: `pip install -e '.[plot]'`).

`vsmmu bench speed` is fuzz/bench/speed.py; `vsmmu bench mutants` is fuzz/bench/mutants.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from vsmmu.hyp.designs import DEFAULT

from .. import options
from ..campaign import HARNESSES, SEEDS_ROOT, base_flags
from ..harness import Settings
from . import mutants, soak, speed
from .plants import PLANTS

FUZZERS = ("ours", "atheris-plain", "hypothesis")
DEFAULT_BUDGET = 60.0  # seconds per run
DEFAULT_SEEDS = 3
FINDING = "FindingError: "  # how a harness's finding starts on libFuzzer's output
FOUND = "FOUND "  # how fuzz/bench/baseline_hypothesis.py reports one


@dataclass(frozen=True)
class Trial:
    fuzzer: str
    bug: str | None  # None: the correct model
    target: str
    seed: int
    seconds: float | None = None  # None: nothing found within the budget
    invariant: str | None = None
    signature: str | None = None


# ------------------------------------------------------------ one run
def command(fuzzer: str, target: str, seed: int, corpus: Path) -> list[str]:
    """The command line of one run (its settings come from `environment`)."""
    if fuzzer == "hypothesis":
        return [sys.executable, "-m", "fuzz.bench.baseline_hypothesis", target, str(seed)]
    ours = fuzzer == "ours"
    flags = [*base_flags(corpus.parent, dictionary=ours), f"-seed={seed}", str(corpus)]
    if ours:
        flags.append(str(SEEDS_ROOT / target))
    return [sys.executable, str(HARNESSES / f"{target}_fuzzer.py"), *flags]


def environment(fuzzer: str, plant: str | None, *, z3: bool,
                design: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(Settings(z3=z3, plant=plant, plain=fuzzer == "atheris-plain",
                        design=design).env())
    root = str(Path(__file__).resolve().parents[2])  # the checkout: fuzz/bench/bugs.py
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def finding(line: str) -> tuple[float | None, str] | None:
    """(seconds it reports, signature) when `line` announces a finding."""
    if line.startswith(FOUND):
        _, seconds, sig = line.split(" ", 2)
        return float(seconds), sig.strip()
    at = line.find(FINDING)
    if at >= 0:
        return None, line[at + len(FINDING):].strip()
    return None


def run_trial(fuzzer: str, bug: str | None, target: str, seed: int, budget: float, *,
              z3: bool = True, design: str | None = None) -> Trial:
    """One fuzzing process until its first finding or `budget` seconds."""
    with tempfile.TemporaryDirectory(prefix="vsmmu-bench-") as tmp:
        corpus = Path(tmp, "corpus")
        corpus.mkdir()
        start = time.monotonic()
        proc = subprocess.Popen(command(fuzzer, target, seed, corpus), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=environment(fuzzer, bug, z3=z3, design=design),
                                text=True,
                                errors="replace", start_new_session=True, cwd=tmp)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        try:
            while (left := start + budget - time.monotonic()) > 0:
                try:
                    line = lines.get(timeout=left)
                except queue.Empty:
                    break
                if line is None:  # exited without a finding
                    break
                if (hit := finding(line)) is not None:
                    seconds = time.monotonic() - start
                    sig = hit[1]
                    return Trial(fuzzer, bug, target, seed, round(seconds, 3),
                                 sig.split(":", 1)[0], sig)
        finally:
            _kill(proc)
        return Trial(fuzzer, bug, target, seed)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# ------------------------------------------------------------ the benchmark
def plan(bugs: Iterable[str], fuzzers: Iterable[str], seeds: int) -> list[tuple]:
    """(fuzzer, bug, target, seed) of every run: the planted bugs for every fuzzer,
    then the correct model (ours only) on each target the bugs use."""
    bugs = list(bugs)
    runs = [(f, b, PLANTS[b].target, s) for b in bugs for s in range(1, seeds + 1)
            for f in fuzzers]
    targets = sorted({PLANTS[b].target for b in bugs})
    runs += [("ours", None, t, s) for t in targets for s in range(1, seeds + 1)]
    return runs


def run_bugs(bugs: Iterable[str], *, fuzzers: Iterable[str] = FUZZERS,
             seeds: int = DEFAULT_SEEDS, budget: float = DEFAULT_BUDGET, jobs: int = 1,
             z3: bool = True, design: str | None = None,
             progress: Callable[[str], None] | None = None) -> list[Trial]:
    runs = plan(bugs, fuzzers, seeds)
    done: list[Trial] = []
    lock = threading.Lock()

    def one(run: tuple) -> Trial:
        trial = run_trial(*run, budget, z3=z3, design=design)
        with lock:
            done.append(trial)
            if progress:
                what = trial.bug or f"correct model ({trial.target})"
                result = (f"found in {trial.seconds:.1f} s ({trial.signature})"
                          if trial.seconds is not None else "nothing")
                progress(f"[{len(done)}/{len(runs)}] {trial.fuzzer:13} {what} "
                         f"seed {trial.seed}: {result}")
        return trial

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(one, runs))


def summarize(trials: list[Trial], seeds: int, budget: float) -> dict:
    """The JSON object of `vsmmu bench bugs --json`."""
    bugs = list(dict.fromkeys(t.bug for t in trials if t.bug))
    rows: dict[str, list[dict]] = {}
    for fuzzer in dict.fromkeys(t.fuzzer for t in trials if t.bug):
        rows[fuzzer] = [_row(bug, [t for t in trials if t.fuzzer == fuzzer and t.bug == bug],
                             seeds) for bug in bugs]
    ours = rows.pop("ours", [])
    return {"bugs": ours, "baselines": rows,
            "correct_model_findings": sum(1 for t in trials
                                          if t.bug is None and t.seconds is not None),
            "budget_s": budget,
            "overall": {f: _overall([t for t in trials if t.fuzzer == f and t.bug], bugs,
                                    seeds, budget) for f in ("ours", *rows)},
            "trials": [asdict(t) for t in trials]}


MISS_PENALTY = 2  # a run that found nothing counts as this many budgets (PAR-2)


def _overall(trials: list[Trial], bugs: list[str], seeds: int, budget: float) -> dict:
    """Every bug counted, the hard ones too.  `par2_s`: per bug the mean time to find
    over its seeds, a miss counted as MISS_PENALTY budgets (a miss costs more than the
    slowest find); `found_area`: the area under the found-runs-over-time curve, as a
    fraction of all runs times the budget (1: every run found its bug at once)."""
    per_bug, area = {}, 0.0
    for bug in bugs:
        found = [t.seconds for t in trials if t.bug == bug and t.seconds is not None]
        misses = seeds - len(found)
        per_bug[bug] = (sum(found) + misses * MISS_PENALTY * budget) / seeds
        area += sum(max(0.0, budget - s) for s in found) / budget
    runs = len(bugs) * seeds
    return {"par2_s": {b: round(v, 2) for b, v in per_bug.items()},
            "found_area": round(area / runs, 3) if runs else None}


def _row(bug: str, trials: list[Trial], seeds: int) -> dict:
    times = sorted(t.seconds if t.seconds is not None else math.inf for t in trials)
    times += [math.inf] * (seeds - len(times))
    fired = Counter(t.invariant for t in trials if t.invariant)
    median, worst = statistics.median(times), times[-1]
    return {"name": bug, "class": PLANTS[bug].cls, "found": sum(map(math.isfinite, times)),
            "seeds": seeds, "median_s": median if math.isfinite(median) else None,
            "max_s": worst if math.isfinite(worst) else None,
            "invariant": fired.most_common(1)[0][0] if fired else None}


# ------------------------------------------------------------ output
def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_text(result: dict) -> str:
    fuzzers = ["ours", *result["baselines"]]
    table = {"ours": result["bugs"], **result["baselines"]}
    head = ["bug", "class"] + [f"{f} found/med/max" for f in fuzzers] + ["invariant (ours)"]
    lines = []
    for i, row in enumerate(result["bugs"]):
        cells = [row["name"], str(row["class"])]
        for f in fuzzers:
            r = table[f][i]
            cells.append(f"{r['found']}/{r['seeds']} {_seconds(r['median_s'])} "
                         f"{_seconds(r['max_s'])}")
        cells.append(row["invariant"] or "-")
        lines.append(cells)
    out = [f"planted bugs: {len(result['bugs'])}, budget {result['budget_s']:g} s per run, "
           f"times in seconds (med/max over seeds; '-': not every run found it)",
           speed.table("", head, lines, left=len(head)), ""]
    for f in fuzzers:
        rows = table[f]
        every = sum(r["found"] == r["seeds"] for r in rows)
        some = sum(r["found"] > 0 for r in rows)
        runs = sum(r["found"] for r in rows)
        out.append(f"{f:14} bugs found by every seed {every}/{len(rows)}, by some {some}, "
                   f"runs {runs}/{sum(r['seeds'] for r in rows)}"
                   + ("" if f == "ours" else f"; time to find / ours: {_ratio(rows, table)}"))
        if "overall" in result and f != "ours":
            out.append(" " * 15 + "over every bug: " + _overall_ratio(result["overall"], f))
    out.append(f"correct model: {result['correct_model_findings']} findings")
    return "\n".join(out)


def _ratio(rows: list[dict], table: dict) -> str:
    """Geometric mean of baseline/ours median times, over bugs both found (median)."""
    pairs = [(b["median_s"], o["median_s"]) for b, o in zip(rows, table["ours"], strict=True)
             if b["median_s"] and o["median_s"]]
    if not pairs:
        return "n/a (no bug found by both)"
    mean = math.exp(sum(math.log(b / o) for b, o in pairs) / len(pairs))
    return f"x{mean:.2g} (geometric mean over the {len(pairs)} bugs both found)"


def _overall_ratio(overall: dict, f: str) -> str:
    """The baseline against ours over every bug: the geometric mean of PAR-2 times
    (a miss counted as MISS_PENALTY budgets), and the found-over-time areas."""
    ours, theirs = overall["ours"], overall[f]
    pairs = [(theirs["par2_s"][b], o) for b, o in ours["par2_s"].items() if o > 0]
    par2 = math.exp(sum(math.log(t / o) for t, o in pairs) / len(pairs)) if pairs else math.nan
    return (f"PAR-{MISS_PENALTY} time x{par2:.2g} ours (geometric mean over {len(pairs)} bugs, "
            f"a miss counted as {MISS_PENALTY}x the budget); found-over-time area "
            f"{theirs['found_area']:g} vs ours {ours['found_area']:g}")


def plot(result: dict, path: str) -> None:
    """Runs found (bug x seed) over time, one line per fuzzer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    total = sum(r["seeds"] for r in result["bugs"])
    for fuzzer in ["ours", *result["baselines"]]:
        times = sorted(t["seconds"] for t in result["trials"]
                       if t["fuzzer"] == fuzzer and t["bug"] and t["seconds"] is not None)
        ax.step([0, *times, result["budget_s"]], [0, *range(1, len(times) + 1), len(times)],
                where="post", label=f"{fuzzer} ({len(times)}/{total})")
    ax.set_xlabel("seconds since the fuzzer started")
    ax.set_ylabel("planted-bug runs found (bug x seed)")
    ax.set_title("vsmmu bench bugs: findings over time")
    ax.set_ylim(0, total)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    p = sub.add_parser("bugs", help="time to find each planted bug: ours vs atheris "
                       "byte-level vs Hypothesis stateful")
    p.add_argument("--time", "--budget", dest="budget", type=options.seconds,
                   default=DEFAULT_BUDGET, metavar="S",
                   help=f"seconds per run (default {DEFAULT_BUDGET:g})")
    p.add_argument("--seeds", type=options.count, default=DEFAULT_SEEDS, metavar="N",
                   help=f"runs per bug and fuzzer (default {DEFAULT_SEEDS})")
    p.add_argument("--bugs", metavar="NAME,...", help="only these planted bugs (default all)")
    p.add_argument("--fuzzers", default=",".join(FUZZERS), metavar="NAME,...",
                   help=f"which fuzzers (default {','.join(FUZZERS)})")
    p.add_argument("--jobs", type=options.count_or_zero, default=1, metavar="J",
                   help="runs in parallel (default 1: each run has a core to itself; 0: one "
                   "per core)")
    p.add_argument("--no-z3", action="store_true", help="skip the Z3 state checks")
    options.add_design(p)  # the plants on top of that design; its own findings are the
    # correct-model row's
    p.add_argument("--plot", metavar="FILE.png", help="draw findings over time")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("speed", help="execs/s per harness, translations/s, Z3 costs")
    speed.add_arguments(p)
    p = sub.add_parser("soak", help="a long default campaign: execs/s, memory and corpus "
                       "minute by minute (default an hour)")
    soak.add_arguments(p)
    p = sub.add_parser("mutants", help="kill rate of a default campaign and the proofs on "
                       "sampled one-token slips of the hypervisor, vSMMU, TLB, virtio-iommu")
    mutants.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    if args.bench == "speed":
        return speed.main(args)
    if args.bench == "soak":
        return soak.main(args)
    if args.bench == "mutants":
        return mutants.main(args)
    bugs = args.bugs.split(",") if args.bugs else list(PLANTS)
    fuzzers = args.fuzzers.split(",")
    for name, known, what in ((bugs, PLANTS, "planted bug"), (fuzzers, FUZZERS, "fuzzer")):
        for n in name:
            if n not in known:
                print(f"vsmmu bench bugs: unknown {what} {n!r} (one of {', '.join(known)})",
                      file=sys.stderr)
                return 2
    if "ours" not in fuzzers:
        print("vsmmu bench bugs: --fuzzers must include ours (the others are compared "
              "with it)", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("vsmmu bench bugs: --plot needs matplotlib (pip install -e '.[plot]')",
                  file=sys.stderr)
            return 2
    trials = run_bugs(bugs, fuzzers=fuzzers, seeds=args.seeds, budget=args.budget,
                      jobs=args.jobs, z3=not args.no_z3, design=args.design,
                      progress=lambda text: print(text, file=sys.stderr, flush=True))
    result = {"design": args.design or DEFAULT, **summarize(trials, args.seeds, args.budget)}
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    if args.plot:
        plot(result, args.plot)
    return 1 if result["correct_model_findings"] else 0
