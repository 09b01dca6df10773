"""Harness throughput: executions per second of each fuzz target, on one core,
with the invariant monitor off, on (concrete checks), and on with the Z3 state
checks, side by side.

For each target the same inputs are run in every mode: a deterministic corpus
grown by the target's own structure-aware mutator (fuzz/mutate.py) from the
empty program.  Two numbers per mode:

* `libFuzzer`: the harness script replaying the corpus under libFuzzer
  (`-runs=0`), instrumented as when fuzzing; its start-up (imports,
  instrumentation, boot), measured on an empty corpus, is subtracted;
* `plain`: the same runner in this process, uninstrumented (what
  instrumentation costs is the ratio of the two).

The smmu target has no invariant monitor (its own checks, fuzz/physical.py, are
always on), so its three rows measure the same thing.  Best of `--repeat` runs.

Usage: python -m fuzz.bench.execs [--inputs N] [--repeat R] [--targets system,smmu]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from ..campaign import HARNESSES
from ..harness import Settings, make_runner, runner_hints
from ..mutate import BIASES, Mutator
from ..program import decode
from ..targets import TARGETS

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None  # the harness scripts need it
MODES = {"off": Settings(monitor=False, z3=False), "concrete": Settings(z3=False),
         "concrete+z3": Settings()}


def corpus(target: str, n: int, seed: int = 0, design: str | None = None) -> list[bytes]:
    runner = make_runner(target, replace(MODES["off"], design=design))
    m = Mutator(runner_hints(runner), BIASES[target])
    rng, out, data = random.Random(seed), [], b""
    for i in range(n):
        data = m.mutate(rng.choice(out) if out and rng.random() < 0.7 else data, 1024, i)
        out.append(data)
    return out


def plain(target: str, settings: Settings, inputs: list[bytes]) -> float:
    runner = make_runner(target, settings)
    start = time.perf_counter()
    for data in inputs:
        runner.run(decode(data))
    return len(inputs) / (time.perf_counter() - start)


def _harness(target: str, settings: Settings, directory: Path) -> float:
    env = dict(os.environ, **settings.env())
    start = time.perf_counter()
    subprocess.run([sys.executable, str(HARNESSES / f"{target}_fuzzer.py"), "-runs=0",
                    f"-artifact_prefix={directory}/", str(directory)], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def libfuzzer(target: str, settings: Settings, inputs: list[bytes], repeat: int) -> float:
    """Executions per second under libFuzzer: the best replay of `inputs` minus the
    best start-up (both minima over `repeat` runs: a pair's difference is noisy
    when start-up dominates, as it does for the fast smmu target)."""
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp, "empty"), Path(tmp, "corpus")
        empty.mkdir()
        full.mkdir()
        for i, data in enumerate(inputs):
            (full / f"{i:05}").write_bytes(data)
        startup = min(_harness(target, settings, empty) for _ in range(repeat))
        total = min(_harness(target, settings, full) for _ in range(repeat))
    return len(inputs) / max(total - startup, 1e-3)


# The smmu target runs ~5x faster: more inputs keep its replay well above start-up.
SCALE = {"smmu": 5}


def measure(targets: Iterable[str] = TARGETS, inputs: int = 200, repeat: int = 3,
            instrumented: bool = HAVE_ATHERIS,
            progress: Callable[[str], None] | None = None,
            design: str | None = None) -> list[dict]:
    """One row per target x mode: {"target", "mode", "execs_per_s" (libFuzzer; None
    when not `instrumented`), "plain_execs_per_s"}, best of `repeat` runs each, on
    `design` (vsmmu/hyp/designs/; None: the platform's).  `progress(text)`, if
    given, is told what is about to be measured."""
    rows = []
    for target in targets:
        n = inputs * SCALE.get(target, 1)
        corpus_ = corpus(target, n, design=design)
        for mode, settings in MODES.items():
            settings = replace(settings, design=design)
            if progress:
                progress(f"harness {target} {mode}: {n} inputs x {repeat}")
            fuzzed = libfuzzer(target, settings, corpus_, repeat) if instrumented else None
            direct = max(plain(target, settings, corpus_) for _ in range(repeat))
            rows.append({"target": target, "mode": mode, "execs_per_s": fuzzed,
                         "plain_execs_per_s": direct})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.bench.execs")
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args(argv)
    print(f"{'target':8} {'mode':12} {'libFuzzer exec/s':>17} {'plain exec/s':>13} "
          f"{'vs off':>7}")
    base: dict[str, float] = {}
    rows = measure(args.targets.split(","), args.inputs, args.repeat,
                   progress=lambda text: print(text, file=sys.stderr, flush=True))
    for row in rows:
        fuzzed = row["execs_per_s"] or row["plain_execs_per_s"]
        off = base.setdefault(row["target"], fuzzed)
        shown = "-" if row["execs_per_s"] is None else f"{fuzzed:.0f}"
        print(f"{row['target']:8} {row['mode']:12} {shown:>17} "
              f"{row['plain_execs_per_s']:13.0f} {fuzzed / off:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
