"""Baseline (b) of `vsmmu bench bugs`: Hypothesis stateful random testing.

A `RuleBasedStateMachine` with one rule per operation of the program format
(fuzz/program.py), each operand drawn uniformly from its range (`st.integers`,
`st.binary` for raw structures), run step by step on the same runner as the
fuzz target (`Runner.session()`): every invariant is checked after every
step, as in the harness.  No coverage feedback, no seeds, no dictionary, no
structure-aware field mutation: what a careful engineer writes in an
afternoon with Hypothesis.  Generation only (no shrinking: the benchmark
measures time to the first failure), 50 steps per example (Hypothesis's
default), no example database.

    python -m fuzz.bench.baseline_hypothesis TARGET SEED

takes its settings (planted bugs, Z3) from the environment as a harness does
(fuzz/harness.py: VSMMU_FUZZ_PLANT, VSMMU_FUZZ_Z3), runs until the first
violation and prints `FOUND <seconds> <signature>` on stdout (seconds since
the process started), or runs forever: the benchmark kills it at its budget.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from ..harness import Settings, make_runner, planted
from ..program import OPS, Op, Operand
from ..targets import TARGETS
from ..triage import signature

STEPS = 50
START = time.monotonic()


class Found(Exception):
    """The first violation: ends the run."""


def _strategy(operand: Operand) -> st.SearchStrategy:
    if operand.raw:
        return st.binary(min_size=operand.width, max_size=operand.width)
    return st.integers(0, (operand.limit or 1 << 8 * operand.width) - 1)


def machine(runner) -> type[RuleBasedStateMachine]:
    """A state machine over `runner`'s sessions: one rule per operation."""

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self._context = runner.session()
        self.session = self._context.__enter__()

    def teardown(self):
        self._context.__exit__(None, None, None)

    def make_rule(code: int):
        spec = OPS[code]

        def apply(self, **args):
            op = Op(code, tuple(args[o.name] for o in spec.operands))
            if not self.session.step(op):
                raise Found(signature(self.session.result.violation,
                                      self.session.result.traceback))

        apply.__name__ = spec.name
        return rule(**{o.name: _strategy(o) for o in spec.operands})(apply)

    body = {spec.name: make_rule(code) for code, spec in enumerate(OPS)}
    return type("Program", (RuleBasedStateMachine,),
                {"__init__": __init__, "teardown": teardown, **body})


def hunt(target: str, seed: int, config: Settings) -> str:
    """Generate programs until one violates an invariant; returns its signature."""
    random.seed(seed)  # Hypothesis draws its own seed from the global generator
    generation = settings(max_examples=10**9, stateful_step_count=STEPS, deadline=None,
                      database=None, phases=[Phase.generate], derandomize=False,
                      suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    with planted(config.plant):
        program = machine(make_runner(target, config))
        try:
            run_state_machine_as_test(program, settings=generation)
        except Found as found:
            return str(found)
    raise AssertionError("Hypothesis stopped without a finding")  # max_examples is huge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.bench.baseline_hypothesis")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("seed", type=int)
    args = parser.parse_args(argv)
    found = hunt(args.target, args.seed, Settings.from_env())
    print(f"FOUND {time.monotonic() - START:.3f} {found}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
