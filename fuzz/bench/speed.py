"""`vsmmu bench speed`: how fast everything runs, in one run, side by side.

* harness throughput: executions per second of each fuzz target with the
  invariants off / concrete / concrete + Z3, libFuzzer-instrumented and plain
  (fuzz/bench/execs.py);
* the reset between runs: the deep copy each run used to start with against
  the in-place restore that replaced it, per target (fuzz/bench/reset.py);
* a campaign with `--jobs 2` against one job (fuzz/bench/jobs.py);
* translations per second: an IOTLB hit, a 4-level stage-1 walk, a nested walk
  (fuzz/bench/translate.py);
* the invariant monitor's cost per DMA step, the Z3 state check at 16 / 128 /
  512 stage-2 mappings and each universal proof (fuzz/bench/checks.py).

Timings depend on the machine; the ratios within one run are what to compare.
`--json` prints one object whose shape is kept stable for scripts:

    {"harness": [{"target", "mode", "execs_per_s", "plain_execs_per_s"}],
     "translate": [{"case", "per_s", "us", "ratio_to_hit"}],
     "z3_state_check": [{"mappings", "ms", "incremental_ms"}],
     "proofs": [{"property", "subject", "result", "ms"}],
     "monitor_step": [{"mode", "us", "ratio"}],
     "machine": {"python", "cpus"},
     "design": the vSMMU design the harness rows ran (`--design`, default ours),
     "reset": [{"target", "objects", "memory_us", "deepcopy_us", "restore_us", "ratio"}],
     "jobs": {"target", "seconds", "one_job", "two_jobs", "ratio"} or null}

`execs_per_s` is libFuzzer-instrumented, null when atheris is missing or with
`--quick` (which measures tiny sizes, for tests; its figures are noise);
`jobs` is null then too.
Progress lines go to stderr.

Run: `vsmmu bench speed [--json] [--quick] [--design NAME]`, or `python -m
fuzz.bench.speed`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable

from properties.proofs import prove_all
from vsmmu.platform import DEFAULT_DESIGN

from .. import options
from ..targets import TARGETS
from . import checks, execs, jobs, reset, translate

MODES = tuple(execs.MODES)  # off, concrete, concrete+z3
MAPPINGS = (16, 128, 512)
CASES = {  # bench_translate's names -> the keys of the JSON
    "IOTLB hit": "tlb-hit",
    "stage-1 walk (4 levels)": "s1-4level-walk",
    "nested walk (4x S1 over 3-level S2)": "nested-walk",
}
# Sizes: the full run is each module's own default; quick is a smoke test.
FULL = {"inputs": 200, "repeat": 3, "rounds": 5, "translations": 4000, "steps": 300,
        "z3_steps": 300, "z3_rounds": 3, "campaign_s": 30}
QUICK = {"inputs": 8, "repeat": 1, "rounds": 1, "translations": 200, "steps": 20,
         "z3_steps": 3, "z3_rounds": 1, "campaign_s": None}


def _sig(x: float) -> float:
    """Four significant digits: enough for a benchmark, short in JSON."""
    return float(f"{x:.4g}")


def measure(*, quick: bool = False, targets: Iterable[str] = TARGETS,
            progress: Callable[[str], None] | None = None, design: str | None = None) -> dict:
    """Run every benchmark once; a JSON-able dict (shape: the module docstring)."""
    size = QUICK if quick else FULL
    say = progress or (lambda text: None)

    targets = tuple(targets)
    harness = execs.measure(
        targets, size["inputs"], size["repeat"],
        instrumented=execs.HAVE_ATHERIS and not quick, progress=say, design=design)
    for row in harness:
        row["plain_execs_per_s"] = _sig(row["plain_execs_per_s"])
        if row["execs_per_s"] is not None:
            row["execs_per_s"] = _sig(row["execs_per_s"])

    say("translate: TLB hit, 4-level stage-1 walk, nested walk")
    ns = translate.measure(size["rounds"], size["translations"])
    hit = ns["IOTLB hit"]
    translations = [{"case": CASES[name], "per_s": _sig(1e9 / t), "us": _sig(t / 1e3),
                     "ratio_to_hit": _sig(t / hit)} for name, t in ns.items()]

    step_us = {}
    for mode in MODES:
        steps = size["z3_steps" if mode == "concrete+z3" else "steps"]
        say(f"monitor step {mode}: {steps} DMA steps")
        step_us[mode] = checks.per_step_us(mode, steps)
    monitor = [{"mode": mode, "us": _sig(us), "ratio": _sig(us / step_us["off"])}
               for mode, us in step_us.items()]

    z3_state = []
    for n in MAPPINGS:
        say(f"Z3 state check: s2-containment, {n} mappings, afresh and after one change")
        z3_state.append({"mappings": n,
                         "ms": _sig(checks.z3_state_ms(n, size["z3_rounds"])),
                         "incremental_ms": _sig(checks.z3_incremental_ms(n, size["z3_rounds"]))})

    say("universal proofs")
    proofs = [{"property": r.property, "subject": r.subject, "result": r.result,
               "ms": _sig(r.seconds * 1e3)} for r in prove_all()]

    resets = []
    for target in targets:
        say(f"reset: deep copy against in-place restore, {target}")
        row = reset.measure(target, execs.corpus(target, size["inputs"]))
        resets.append({k: _sig(v) if isinstance(v, float) else v for k, v in row.items()})

    scaling = None
    if size["campaign_s"] and execs.HAVE_ATHERIS:
        say(f"campaign: --jobs 1, then --jobs 2, {size['campaign_s']} s each")
        scaling = jobs.measure("system", size["campaign_s"])
        scaling["ratio"] = _sig(scaling["ratio"]) if scaling["ratio"] else None

    return {"harness": harness, "translate": translations, "z3_state_check": z3_state,
            "proofs": proofs, "monitor_step": monitor,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count() or 1},
            "design": design or DEFAULT_DESIGN, "reset": resets, "jobs": scaling}


def table(title: str, header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """The first `left` columns left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([title, line(header), line(["-" * w for w in widths]),
                      *map(line, rows)])


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _times(x: float | None) -> str:
    """A ratio, to about three significant digits."""
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def format_text(result: dict) -> str:
    """One aligned table per section of `measure`'s result, ratios beside the figures."""
    m = result["machine"]
    out = [f"vsmmu bench speed: Python {m['python']}, {m['cpus']} CPUs, design "
           f"{result.get('design', DEFAULT_DESIGN)} (timings vary by machine; compare the "
           "ratios)"]

    by_target: dict[str, dict[str, dict]] = {}
    for row in result["harness"]:
        by_target.setdefault(row["target"], {})[row["mode"]] = row
    header = ["target", "exec/s"]
    for mode in MODES:
        header += [mode] if mode == "off" else [mode, "x off"]
    rows = []
    for target, modes in by_target.items():
        name = target  # on the target's first line only
        for kind, key in (("libFuzzer", "execs_per_s"), ("plain", "plain_execs_per_s")):
            if all(row.get(key) is None for row in modes.values()):
                continue  # not measured (no atheris, or --quick)
            off = modes.get("off", {}).get(key)
            cells, name = [name, kind], ""
            for mode in MODES:
                x = modes.get(mode, {}).get(key)
                cells.append(_rate(x))
                if mode != "off":
                    cells.append(_times(x / off if x is not None and off else None))
            rows.append(cells)
    out += ["", table("fuzz harness throughput (executions/s, one core; x off: relative "
                       "throughput)", header, rows, left=2)]

    out += ["", table("translations through the SMMUv3 model",
                       ["case", "per s", "us", "x hit"],
                       [[t["case"], _rate(t["per_s"]), f"{t['us']:.2f}",
                         _times(t["ratio_to_hit"])] for t in result["translate"]])]

    out += ["", table("invariant monitor, per DMA step (Z3 re-checked every step: worst case)",
                       ["monitor", "us/step", "x off"],
                       [[s["mode"], f"{s['us']:.1f}", _times(s["ratio"])]
                        for s in result["monitor_step"]])]

    first = result["z3_state_check"][0]["ms"] if result["z3_state_check"] else None
    out += ["", table("Z3 state check (s2-containment, scattered 4K mappings): afresh, and "
                       "leaf by leaf after one more mapping (the monitor's way)",
                       ["mappings", "afresh ms", "x 16", "after a change ms", "x faster"],
                       [[str(z["mappings"]), f"{z['ms']:.1f}",
                         _times(z["ms"] / first if first else None),
                         f"{z['incremental_ms']:.1f}", _times(z["ms"] / z["incremental_ms"])]
                        for z in result["z3_state_check"]])]

    out += ["", table("reset between runs, per run (old: deep copy of the booted system; "
                       "new: in-place restore; both roll memory back)",
                       ["target", "objects", "memory us", "old copy us", "new restore us",
                        "x faster"],
                       [[r["target"], str(r["objects"]), f"{r['memory_us']:.1f}",
                         f"{r['deepcopy_us']:.1f}", f"{r['restore_us']:.1f}",
                         _times(r["ratio"])] for r in result["reset"]])]

    j = result.get("jobs")
    if j:
        out += ["", table(f"campaign executions in {j['seconds']:g} s ({j['target']}, "
                           "libFuzzer, all invariants)",
                           ["jobs", "executions", "x one job"],
                           [["1", f"{j['one_job']:,}", "1.00"],
                            ["2", f"{j['two_jobs']:,}", _times(j["ratio"])]])]

    out += ["", table("universal proofs (vsmmu prove)",
                       ["property", "subject", "result", "ms"],
                       [[p["property"], p["subject"], p["result"], f"{p['ms']:.1f}"]
                        for p in result["proofs"]], left=3)]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vsmmu bench speed`."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (progress goes to stderr)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and no libFuzzer run: a smoke test, the figures "
                        "are noise")
    options.add_design(parser)  # the harness rows; the rest do not depend on it


def main(args: argparse.Namespace) -> int:
    """`vsmmu bench speed`: print the tables (or JSON); 0."""
    result = measure(quick=args.quick, design=args.design,
                     progress=lambda text: print(f"measuring {text}", file=sys.stderr,
                                                 flush=True))
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m fuzz.bench.speed",
                                 description="fuzzing, translation and proof speed, side by side")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
