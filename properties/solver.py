"""One way to ask Z3: a fresh solver per query (the reference notes measured
push/pop over large terms to be far slower), a time limit, and a verdict that
keeps Z3's `unknown` distinct from an answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

import z3


@dataclass(frozen=True)
class Answer:
    verdict: str  # "unsat" | "sat" | "unknown"
    seconds: float
    model: dict[str, int] | None = None  # the named terms' values, when sat


def find(condition: z3.BoolRef, names: dict[str, z3.ExprRef], timeout_ms: int) -> Answer:
    """Values of `names` that satisfy `condition`, if Z3 finds any in time."""
    start = time.perf_counter()
    solver = z3.Solver()
    solver.set(timeout=timeout_ms)
    solver.add(condition)
    verdict = solver.check()
    seconds = time.perf_counter() - start
    if verdict != z3.sat:
        return Answer("unsat" if verdict == z3.unsat else "unknown", seconds)
    model = solver.model()
    return Answer("sat", seconds, {k: model.eval(v, model_completion=True).as_long()
                                   for k, v in names.items()})
