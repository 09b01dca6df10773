"""What resetting the booted system costs per run: the deep copy every run used
to make (`copy.deepcopy` of the booted object graph, physical memory excluded)
against the in-place restore that replaced it (fuzz/snapshot.py), after the
same programs.

Both resets also roll physical memory back from its write journal; that part
is the same in both and is reported on its own (`memory_us`).  Figures are
means per run, in microseconds, over the target's benchmark corpus.
"""

from __future__ import annotations

import copy
import time

from ..harness import Settings, make_runner
from ..program import decode


def measure(target: str, inputs: list[bytes]) -> dict:
    """{"target", "objects", "memory_us", "deepcopy_us", "restore_us", "ratio"}:
    `ratio` is the old reset's cost over the new one's, memory rollback in both."""
    runner = make_runner(target, Settings(z3=False))
    mem, snapshot = runner.mem, runner.reset.snapshot
    memory = restore = deep = 0.0
    clock = time.perf_counter
    for data in inputs:
        session = runner.session()
        run = session.__enter__()
        for op in decode(data):
            if not run.step(op):
                break
        t0 = clock()
        mem.rollback()
        t1 = clock()
        snapshot.restore()
        t2 = clock()
        session.__exit__(None, None, None)  # nothing left to undo: it only closes the run
        t3 = clock()
        copy.deepcopy(runner.template, {id(mem): mem})  # what a run used to start with
        memory, restore, deep = memory + t1 - t0, restore + t2 - t1, deep + clock() - t3
    n = max(len(inputs), 1)
    us = {k: v * 1e6 / n for k, v in (("memory", memory), ("restore", restore),
                                       ("deepcopy", deep))}
    return {"target": target, "objects": len(snapshot), "memory_us": us["memory"],
            "deepcopy_us": us["deepcopy"], "restore_us": us["restore"],
            "ratio": (us["deepcopy"] + us["memory"]) / (us["restore"] + us["memory"])}
