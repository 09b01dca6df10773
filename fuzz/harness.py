"""What the atheris harnesses (fuzz/harnesses/*_fuzzer.py) share.

A harness script is a few lines: import atheris, import this module inside
`atheris.instrument_imports()`, call `main(target)`.  `main` boots the target
once (`runner.Runner` for the system targets, `physical.PhysicalRunner` for
the physical SMMU alone), wires the structure-aware mutator and crossover
(fuzz/mutate.py) with the target's bias and the booted system's hints, and
hands libFuzzer `Harness`: decode, run, raise `FindingError` on a violation.
The exception's message starts with the finding's signature, whose first word
is the invariant, so libFuzzer's log says at once what an artifact is.

Settings come from the environment, so that libFuzzer's -fork/-merge
children (which re-execute the script with libFuzzer flags only) inherit them;
`vsmmu fuzz` sets them from its options:

  VSMMU_FUZZ_PLATFORM    platform file (default: the embedded fuzzing platform)
  VSMMU_FUZZ_DESIGN      the vSMMU design under test (default: the platform's)
  VSMMU_FUZZ_Z3=0        skip the Z3 state checks
  VSMMU_FUZZ_MONITOR=0   no invariant monitor (only no-crash; for measurements)
  VSMMU_FUZZ_KNOWN       a file of finding signatures, one a line: a violation
                         with a known signature does not stop the fuzzer again
                         (re-read when the file changes)
  VSMMU_FUZZ_PROGRESS=1  print `vsmmu-progress execs=N` on stderr every 2 s
  VSMMU_FUZZ_PARENT      the campaign's pid: once it is gone, the harness exits at
                         once and quietly (status 0, no artifact), so that a campaign
                         killed however it was leaves no worker writing its corpus
  VSMMU_FUZZ_PLANT       planted bugs (fuzz/bench/plants.py names, comma-separated),
                         patched in for the whole process: BENCHMARKS AND TESTS
                         ONLY, so that they can check a campaign finds them
  VSMMU_FUZZ_MUTATOR=plain  libFuzzer's own byte-level mutation only, no
                         structure-aware mutator or crossover (a baseline of
                         `vsmmu bench bugs`)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass

from .hints import Hints, hints_from
from .mutate import BIASES, Bias, Mutator
from .physical import PhysicalRunner
from .program import decode
from .runner import Runner, RunResult
from .targets import runner_for
from .triage import signature

PROGRESS_EVERY = 2.0  # seconds between progress lines
PROGRESS_PREFIX = "vsmmu-progress execs="


class FindingError(Exception):
    """A violation, raised for libFuzzer: the message starts with the signature."""


@dataclass(frozen=True)
class Settings:
    platform: str | None = None
    design: str | None = None
    monitor: bool = True
    z3: bool = True
    known: str | None = None
    progress: bool = False
    plant: str | None = None
    plain: bool = False  # no structure-aware mutator (a baseline)
    parent: int | None = None  # the campaign's pid

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(platform=env.get("VSMMU_FUZZ_PLATFORM") or None,
                   design=env.get("VSMMU_FUZZ_DESIGN") or None,
                   monitor=env.get("VSMMU_FUZZ_MONITOR", "1") != "0",
                   z3=env.get("VSMMU_FUZZ_Z3", "1") != "0",
                   known=env.get("VSMMU_FUZZ_KNOWN") or None,
                   progress=env.get("VSMMU_FUZZ_PROGRESS") == "1",
                   plant=env.get("VSMMU_FUZZ_PLANT") or None,
                   plain=env.get("VSMMU_FUZZ_MUTATOR") == "plain",
                   parent=int(env["VSMMU_FUZZ_PARENT"]) if env.get(
                       "VSMMU_FUZZ_PARENT", "").isdigit() else None)

    def env(self) -> dict[str, str]:
        """The environment variables that give these settings to a harness."""
        out = {"VSMMU_FUZZ_MONITOR": "1" if self.monitor else "0",
               "VSMMU_FUZZ_Z3": "1" if self.z3 else "0",
               "VSMMU_FUZZ_PROGRESS": "1" if self.progress else "0",
               "VSMMU_FUZZ_MUTATOR": "plain" if self.plain else "structured"}
        for name, value in (("PLATFORM", self.platform), ("DESIGN", self.design),
                            ("KNOWN", self.known),
                            ("PLANT", self.plant), ("PARENT", self.parent)):
            if value:
                out[f"VSMMU_FUZZ_{name}"] = str(value)
        return out


def make_runner(target: str, settings: Settings = Settings()) -> Runner | PhysicalRunner:
    return runner_for(target, settings.platform, monitor=settings.monitor, z3=settings.z3,
                      design=settings.design)


def runner_hints(runner: Runner | PhysicalRunner) -> Hints:
    if isinstance(runner, PhysicalRunner):
        return runner.hints()
    return hints_from(runner.template)


def finding_signature(result: RunResult) -> str | None:
    v = result.violation
    return None if v is None else signature(v, result.traceback)


def planted(names: str | None) -> AbstractContextManager[None]:
    """The planted bugs `names` (comma-separated; nothing when empty) as one context."""
    if not names:
        return nullcontext()
    from .bench.plants import planted as enter  # benchmark code: imported only when asked for

    return enter(names)


class Harness:
    """libFuzzer's TestOneInput: decode, run, raise on a new finding."""

    def __init__(self, runner: Runner | PhysicalRunner, known: str | None = None,
                 progress: bool = False, parent: int | None = None,
                 saw: Callable[[set[str]], None] | None = None):
        self.runner = runner
        self.saw = saw  # told each run's coverage (the mutator's aim)
        self.known_path = known
        self._known: set[str] = set()
        self._known_stamp: float | None = None
        self.progress = progress
        self.parent = parent
        self.execs = 0
        self._last_report = time.monotonic()

    def known(self) -> set[str]:
        if self.known_path:
            try:
                stamp = os.stat(self.known_path).st_mtime_ns
            except OSError:
                return self._known
            if stamp != self._known_stamp:
                with open(self.known_path, encoding="utf-8") as f:
                    self._known = {line.strip() for line in f if line.strip()}
                self._known_stamp = stamp
        return self._known

    def __call__(self, data: bytes) -> None:
        self.execs += 1
        if not self.execs & 31:
            now = time.monotonic()
            if now - self._last_report >= PROGRESS_EVERY:
                self._last_report = now
                self._report()
        result = self.runner.run(decode(data))
        if self.saw is not None:
            self.saw(result.coverage)
        sig = finding_signature(result)
        if sig is not None and sig not in self.known():
            detail = f"{sig}\n{result.violation}"
            if result.traceback:
                detail += "\n" + result.traceback
            raise FindingError(detail)


    def _report(self) -> None:
        """Progress for the campaign, and leave quietly when it is gone: an orphan would
        go on writing its corpus, then fail on the closed pipe and leave an artifact
        nobody classifies."""
        if self.parent is not None and not _alive(self.parent):
            os._exit(0)
        if self.progress:
            try:
                print(f"{PROGRESS_PREFIX}{self.execs}", file=sys.stderr, flush=True)
            except OSError:  # the campaign closed its end of the pipe
                os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(target: str, bias: Bias | None = None, argv: list[str] | None = None) -> None:
    """Run libFuzzer on `target` (one of TARGETS); argv: libFuzzer's flags and
    corpus directories (default sys.argv).  Does not return."""
    import atheris

    settings = Settings.from_env()
    stack = ExitStack()  # never closed: atheris.Fuzz() exits the process
    stack.enter_context(planted(settings.plant))
    runner = make_runner(target, settings)
    harness = Harness(runner, settings.known, settings.progress, settings.parent)
    hooks = {}
    if not settings.plain:
        # atheris.Mutate is looked up at each call: atheris swaps it in when fuzzing starts.
        mutator = Mutator(runner_hints(runner), bias or BIASES[target],
                          lambda data, max_size: atheris.Mutate(data, max_size))
        harness.saw = mutator.aim.saw
        hooks = dict(custom_mutator=mutator.mutate, custom_crossover=mutator.crossover)
    atheris.Setup(sys.argv if argv is None else argv, harness, **hooks)
    atheris.Fuzz()
