"""Fuzzing campaigns: what `vsmmu fuzz` runs.

`run_campaign(options)` runs a harness (fuzz/harnesses/<target>_fuzzer.py) as
`--jobs` libFuzzer processes on one working corpus, follows their output live
(one progress line: elapsed, execs, execs/s, libFuzzer's cov:, corpus size,
unique findings), classifies every artifact as it appears by replaying it
in-process (`fuzz.runner.Runner`, or `fuzz.physical.PhysicalRunner` for the
smmu target) and writes a sidecar next to it, `crash-<sha1>.json`:
{"invariant", "signature", "step", "witness", "target"}.  Findings are
deduplicated by signature (fuzz/triage.py: the invariant plus a stable,
address-free summary).  At the end it replays the corpus to tabulate which
event IDs, command opcodes (physical and guest), STE configs, fault classes and
command errors were reached, against layouts.Event / Op / Config.

Keeping going after a finding.  libFuzzer stops at the first crash.  A
worker that stops on a finding is restarted on the same corpus with the time
and runs it has left, and the signatures already found are passed to the
harness (VSMMU_FUZZ_KNOWN, re-read when it changes) so that it does not stop on
them again.  Measured here against `-fork=1 -ignore_crashes=1` (which also
works with atheris once the script is executable), 60 s, one core, the planted
forgotten-TLBI bug, seeded from corpora/system: restarting ran 1455 and 1664
executions and found the bug after 25 s and 39 s; fork mode ran 927 and 909
and did not find it, because each fork job re-executes the Python harness
(start-up, instrumentation, boot and a corpus subset replayed) for 1 s, 2 s,
... of fuzzing.  Fork mode still works: pass `-- -fork=N -ignore_crashes=1`;
the progress parser follows its status lines.

Stop and resume: the corpus (default fuzz-out/corpus/<target>) and the
artifacts (default fuzz-out/artifacts/) persist; the seeds (corpora/<target>/,
read only) are a second corpus directory.  A new campaign continues from the
corpus, and findings already in the artifacts directory are reported again
from their sidecars.

`merge_corpora(dest, sources)` distils corpora gathered on many machines (or
by many campaigns) into one: libFuzzer `-merge=1` through a harness keeps, of
the source inputs, those that add coverage to what `dest` already has.

The command around it, `vsmmu fuzz`, is fuzz/fuzz_command.py.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from properties.violations import NO_CRASH
from vsmmu.platform import DEFAULT_DESIGN, PlatformError

from .harness import PROGRESS_PREFIX, Settings, make_runner, planted
from .outputs import unwritable
from .program import MAX_BYTES, decode
from .progress import Ticker
from .results import (
    MAX_SIDECAR_BYTES,
    SLOW_SECONDS,
    CampaignResult,
    Finding,
    coverage_table,
)
from .runner import platform_for
from .targets import TARGETS
from .triage import classify

DEFAULT_TIME = 60.0  # seconds, when neither --time nor --runs is given
DEFAULT_MAX_LEN = 1024  # bytes per input (about 15 vSTE or 75 DMA operations)
DEFAULT_TIMEOUT = 30  # seconds per input: longer is a hang, a no-crash finding
OUT = Path("fuzz-out")
SEEDS_ROOT = Path(__file__).resolve().parent.parent / "corpora"
HARNESSES = Path(__file__).resolve().with_name("harnesses")
DICTIONARY = Path(__file__).resolve().with_name("vsmmu.dict")
ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak")  # libFuzzer's artifact prefixes
SLOW_UNIT = "slow-unit-"  # libFuzzer's prefix for an input slower than -report_slow_units
PROGRESS_TTY_EVERY = 0.5  # seconds between refreshes of the live line on a terminal
PROGRESS_LOG_EVERY = 5.0  # seconds between progress lines otherwise
UNREPRODUCED = f"{NO_CRASH}:unreproduced"  # an artifact whose replay is clean
STOP_GRACE = 5.0  # seconds past the deadline before workers are stopped (SIGINT)
MAX_FRUITLESS_RESTARTS = 5  # restarts in a row without fuzzing before giving up
COVERAGE_BUDGET = 120.0  # seconds for the final corpus replay
TIMELINE_EVERY = 1.0  # seconds between samples of the campaign's figures (--report)


def base_flags(artifacts: Path, *, dictionary: bool = True) -> list[str]:
    """The libFuzzer flags every `vsmmu fuzz` process starts from (and the
    benchmark's runs of it)."""
    flags = [f"-artifact_prefix={artifacts}{os.sep}", f"-max_len={DEFAULT_MAX_LEN}",
             f"-timeout={DEFAULT_TIMEOUT}", f"-report_slow_units={SLOW_SECONDS}"]
    if dictionary and DICTIONARY.is_file():
        flags.append(f"-dict={DICTIONARY}")
    return flags


class CampaignError(Exception):
    """A usage or input error: one line for the user, exit status 2."""


# ------------------------------------------------------------------ options
@dataclass
class CampaignOptions:
    target: str = "system"  # one of TARGETS, or ALL (`vsmmu fuzz`'s default)
    time: float | None = None  # seconds; None: DEFAULT_TIME unless runs is given
    runs: int | None = None  # executions in total (split between jobs)
    jobs: int = 1  # 0: one per core
    corpus: str | None = None  # default fuzz-out/corpus/<target>
    artifacts: str | None = None  # default fuzz-out/artifacts/
    seeds: str | None = None  # read-only seed corpus; default corpora/<target> if present
    platform: str | None = None
    design: str | None = None  # vsmmu/hyp/designs/ name; None: the platform's
    seed: int | None = None
    z3: bool = True
    libfuzzer_args: tuple[str, ...] = ()
    progress: TextIO | None = None  # where the live line goes (None: nowhere)
    plant: str | None = None  # BENCHMARKS AND TESTS ONLY: fuzz/bench/plants.py names
    coverage_budget: float = COVERAGE_BUDGET  # seconds for the final corpus replay (0: none)


# ------------------------------------------------------------------ artifacts
def _artifact_kind(name: str) -> str | None:
    kind = name.split("-", 1)[0]
    return kind if kind in ARTIFACT_KINDS and "-" in name and not name.endswith(".json") else None


class Classifier:
    """Replays artifacts in-process and writes their sidecars."""

    def __init__(self, options: CampaignOptions, settings: Settings, design: str):
        self.options, self.settings, self.design = options, settings, design
        self._runner = None

    def runner(self):
        if self._runner is None:
            self._runner = make_runner(self.options.target, self.settings)
        return self._runner

    def classify(self, path: Path) -> Finding:
        sidecar = path.with_name(path.name + ".json")
        try:
            with open(sidecar, "rb") as f:
                known = Finding.from_sidecar(f.read(MAX_SIDECAR_BYTES + 1), str(path))
        except OSError:
            known = None  # none, or unreadable: classify again
        if known is not None:
            return known
        finding = self._replay(path)
        try:
            sidecar.write_text(json.dumps(finding.sidecar(), indent=2) + "\n")
        except OSError as e:
            raise CampaignError(f"cannot write {sidecar}: {e.strerror}") from None
        return finding

    def _replay(self, path: Path) -> Finding:
        kind = _artifact_kind(path.name)
        target = self.options.target
        if kind != "crash":  # a hang or a memory blow-up: not replayed in this process
            return Finding(NO_CRASH, f"{NO_CRASH}:{kind}", str(path), None, {"artifact": kind},
                           target, design=self.design)
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES)
        found = classify(self.runner().run(decode(data)))
        if found is None:
            return Finding(NO_CRASH, UNREPRODUCED, str(path), None,
                           {"note": "libFuzzer saw the harness fail; the replay is clean"},
                           target, design=self.design)
        return Finding(found.invariant, found.signature, str(path), found.step, found.witness,
                       target, design=self.design)


# ------------------------------------------------------------------ workers
_STATUS = re.compile(r"^#(\d+)\b.*?\bcov: (\d+)")
_FINAL_EXECS = re.compile(r"^stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(re.escape(PROGRESS_PREFIX) + r"(\d+)")


@dataclass
class Worker:
    job: int
    runs: int | None  # this worker's share of --runs
    proc: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    execs_done: int = 0  # by earlier processes of this worker
    execs: int = 0  # by the current process
    cov: int = 0
    inited: bool = False  # the current process got past its corpus replay
    restarts: int = 0
    fruitless: int = 0  # restarts in a row that never fuzzed
    found: bool = False  # the current process stopped on a finding (named an artifact)
    finished: bool = False
    failed: int | None = None  # exit status of a harness that could not run
    tail: deque = field(default_factory=lambda: deque(maxlen=12))

    @property
    def total(self) -> int:
        return self.execs_done + self.execs

    def feed(self, line: str) -> None:
        self.tail.append(line)
        if "Test unit written to" in line and SLOW_UNIT not in line:
            self.found = True  # a finding (a slow input is reported, the run goes on)
        if m := _STATUS.match(line):
            self.execs = max(self.execs, int(m[1]))
            self.cov = max(self.cov, int(m[2]))
            if "INITED" in line or "NEW" in line or "pulse" in line or ": cov:" in line:
                self.inited = True
        elif m := _FINAL_EXECS.match(line):
            self.execs = max(self.execs, int(m[1]))
        elif m := _PROGRESS.search(line):
            self.execs = max(self.execs, int(m[1]))


class Campaign:
    def __init__(self, options: CampaignOptions):
        self.o = options
        self._stopping = False
        self._workers: list[Worker] = []
        self._validate()

    # -- set-up ------------------------------------------------------------
    def _validate(self) -> None:
        o = self.o
        if o.target not in TARGETS:
            raise CampaignError(f"unknown target {o.target!r} (one of {', '.join(TARGETS)})")
        if o.jobs < 0 or (o.runs is not None and o.runs <= 0) or (
                o.time is not None and o.time <= 0):
            raise CampaignError("--jobs must be 0 or more, --runs and --time positive")
        for flag in o.libfuzzer_args:
            if not flag.startswith("-"):
                raise CampaignError(f"libFuzzer flags after -- look like -name=value, got "
                                    f"{flag[:60]!r}")
        self.design = DEFAULT_DESIGN  # what the findings record
        if o.platform or o.design:
            try:  # before any worker starts: one line, not a harness failing N times
                self.design = platform_for(o.target, o.platform, o.design).design
            except PlatformError as e:
                raise CampaignError(str(e)) from None
        self.script = HARNESSES / f"{o.target}_fuzzer.py"
        if not os.access(self.script, os.X_OK):
            raise CampaignError(f"{self.script} is missing or not executable")
        if o.corpus is not None:
            self.corpus = Path(o.corpus)
            if not self.corpus.is_dir():
                raise CampaignError(f"corpus directory {o.corpus} does not exist")
        else:
            self.corpus = OUT / "corpus" / o.target
        if o.seeds is not None:
            self.seeds: Path | None = Path(o.seeds)
            if not self.seeds.is_dir():
                raise CampaignError(f"seed directory {o.seeds} does not exist")
        else:
            default = SEEDS_ROOT / o.target
            self.seeds = default if default.is_dir() else None
        self.artifacts = Path(o.artifacts) if o.artifacts else OUT / "artifacts"
        try:
            self.corpus.mkdir(parents=True, exist_ok=True)
            self.artifacts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CampaignError(f"cannot create {e.filename}: {e.strerror}") from None
        for what, d in (("corpus", self.corpus), ("artifacts", self.artifacts)):
            if why := unwritable(d, what):
                raise CampaignError(why)
        self.jobs = o.jobs or os.cpu_count() or 1
        self.time = o.time if o.time is not None else (None if o.runs else DEFAULT_TIME)

    def _flags(self, worker: Worker, deadline: float | None) -> list[str] | None:
        """libFuzzer flags for the worker's next process (None: nothing left to do)."""
        flags = [*base_flags(self.artifacts), "-print_final_stats=1"]
        if deadline is not None:
            left = int(deadline - time.monotonic())
            if left < 1:
                return None
            flags.append(f"-max_total_time={left}")
        if worker.runs is not None:
            left = worker.runs - worker.total
            if left < 1:
                return None
            flags.append(f"-runs={left}")
        if self.o.seed:  # 0: libFuzzer's own random seed
            seed = (self.o.seed + worker.job + worker.restarts * self.jobs) % (2**32 - 1) + 1
            flags.append(f"-seed={seed}")
        flags += self.o.libfuzzer_args
        flags.append(str(self.corpus))
        if self.seeds is not None:
            flags.append(str(self.seeds))
        return flags

    def _env(self, known: Path) -> dict[str, str]:
        env = dict(os.environ)
        # -fork/-merge re-execute the script itself: `#!/usr/bin/env python3` must find
        # this interpreter (the one with atheris and the project installed).
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        platform = str(Path(self.o.platform).resolve()) if self.o.platform else None
        env.update(Settings(platform=platform, design=self.o.design, z3=self.o.z3,
                            known=str(known), progress=True, plant=self.o.plant,
                            parent=os.getpid()).env())
        return env

    # -- running -----------------------------------------------------------
    def run(self) -> CampaignResult:
        """Fuzz, then always the same ending, however the fuzzing stopped (time, runs,
        a signal, an output that could not be written): workers stopped, every artifact
        classified, the coverage replay, the result, temporary files removed."""
        settings = Settings(platform=self.o.platform, design=self.o.design, z3=self.o.z3,
                            plant=self.o.plant)
        with _corpus_lock(self.corpus):
            return self._run(settings)

    def _run(self, settings: Settings) -> CampaignResult:
        self.findings: dict[str, Finding] = {}
        self.timeline: list[dict[str, float | int | str]] = []
        self.unreproduced: list[str] = []
        self.handled: set[str] = set()
        self.interrupted = False
        self._fuzzing = True  # a first signal now raises; later only noted
        errors: list[str] = []
        with _stop_signals(self._signalled), planted(self.o.plant), \
                tempfile.TemporaryDirectory(prefix="vsmmu-fuzz-") as tmp:
            self.classifier = Classifier(self.o, settings, self.design)
            self.known_path = Path(tmp) / "known-signatures"
            self.start = None
            start, wall_start = time.monotonic(), time.time()
            try:
                self._scan_artifacts(settle=0.0)  # earlier campaigns' findings
                self.start = start = time.monotonic()
                self._fuzz(start, self._env(self.known_path))
            except KeyboardInterrupt:
                self.interrupted = True
            except CampaignError as e:
                errors.append(str(e))
            self._fuzzing = False
            self._stop(self._workers)
            seconds = time.monotonic() - start
            try:
                self._scan_artifacts(settle=0.0)
            except CampaignError as e:
                errors.append(str(e))
            self._progress_done()
            slow = self._slow_inputs(wall_start)
            # After a signal the summary should come quickly: a shorter replay.
            budget = self.o.coverage_budget
            coverage, replayed = self._coverage(min(10.0, budget) if self.interrupted else budget)
        workers = self._workers
        errors += [e for w in workers if (e := self._failure(w))]
        return CampaignResult(
            self.o.target, sum(w.total for w in workers), seconds,
            list(self.findings.values()), coverage_table(coverage),
            corpus=_count(self.corpus), replayed=replayed,
            cov=max((w.cov for w in workers), default=0),
            restarts=sum(w.restarts for w in workers), interrupted=self.interrupted,
            errors=errors, unreproduced=self.unreproduced, corpus_dir=str(self.corpus),
            artifacts_dir=str(self.artifacts), slow_inputs=slow, timeline=self.timeline)

    def _signalled(self) -> bool:
        """SIGINT, SIGTERM or SIGHUP: the first one during the fuzzing stops it (True:
        raise KeyboardInterrupt); any other is only noted, cuts the coverage replay
        short, and the summary still comes."""
        stop = self._fuzzing and not self.interrupted
        self.interrupted = True
        return stop

    def _fuzz(self, start: float, env: dict[str, str]) -> None:
        deadline = start + self.time if self.time is not None else None
        share = -(-self.o.runs // self.jobs) if self.o.runs else None
        lines: queue.Queue = queue.Queue()
        self._workers = workers = [Worker(j, share) for j in range(self.jobs)]
        self._write_known()
        for w in workers:
            self._start(w, deadline, env, lines)
        last_scan = last_progress = last_sample = 0.0
        while not all(w.finished for w in workers):
            try:
                job, line = lines.get(timeout=0.2)
                while True:
                    if line is None:
                        self._exited(workers[job], deadline, env, lines)
                    else:
                        workers[job].feed(line)
                    job, line = lines.get_nowait()
            except queue.Empty:
                pass
            now = time.monotonic()
            if now - last_scan >= 0.5:
                last_scan = now
                if self._scan_artifacts(settle=0.3):
                    self._write_known()
            if now - last_sample >= TIMELINE_EVERY:
                last_sample = now
                self.timeline.append({
                    "t": round(now - start, 1), "target": self.o.target,
                    "execs": sum(w.total for w in workers),
                    "cov": max(w.cov for w in workers), "corpus": _count(self.corpus)})
            if now - last_progress >= self._progress_every():
                last_progress = now
                self._show_progress(workers, now - start)
            if deadline is not None and now > deadline + STOP_GRACE:
                self._stop(workers)

    def _start(self, w: Worker, deadline, env, lines: queue.Queue) -> None:
        flags = self._flags(w, deadline)
        if flags is None:
            w.finished = True
            return
        w.inited, w.found, w.execs = False, False, 0
        w.proc = subprocess.Popen([sys.executable, str(self.script), *flags], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace")
        w.reader = threading.Thread(target=_pump, args=(w.job, w.proc.stdout, lines),
                                    daemon=True)
        w.reader.start()

    def _exited(self, w: Worker, deadline, env, lines: queue.Queue) -> None:
        """The worker's output ended: restart it after a finding while there is
        time and runs left; a harness that fails without a finding is an error."""
        rc = w.proc.wait()
        w.execs_done += w.execs
        w.execs = 0
        if rc == 0 or self._stopping or self._flags(w, deadline) is None:
            w.finished = True
            return
        w.fruitless = 0 if w.inited else w.fruitless + 1
        if not w.found or w.fruitless > MAX_FRUITLESS_RESTARTS:
            w.finished, w.failed = True, rc
            return
        if self._scan_artifacts(settle=0.0):
            self._write_known()
        w.restarts += 1
        self._start(w, deadline, env, lines)

    def _stop(self, workers: list[Worker]) -> None:
        """SIGINT (libFuzzer prints its final stats), then SIGKILL after a while."""
        self._stopping = True
        alive = [w for w in workers if w.proc is not None and w.proc.poll() is None]
        for w in alive:
            _signal(w.proc, signal.SIGINT)
        end = time.monotonic() + 10
        for w in alive:
            try:
                w.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(w.proc, signal.SIGKILL)
                w.proc.wait()
        for w in workers:
            if w.reader is not None:
                w.reader.join(timeout=5)
            if w.proc is not None and not w.finished:
                w.execs_done += w.execs
                w.execs = 0
            w.finished = True

    def _failure(self, w: Worker) -> str | None:
        if w.failed is None:
            return None
        last = next((line for line in reversed(w.tail) if line.strip()), "no output")
        how = "kept failing" if w.found else "exited without a finding"
        return f"the {self.o.target} harness {how} (status {w.failed}): {last[:200]}"

    # -- findings ------------------------------------------------------------
    def _scan_artifacts(self, settle: float) -> bool:
        """Classify artifacts not seen yet (older than `settle` seconds); True when a
        new signature was found."""
        new_signature = False
        try:
            entries = sorted(os.scandir(self.artifacts), key=lambda e: e.name)
        except OSError:
            return False
        now = time.time()
        for entry in entries:
            if entry.name in self.handled or _artifact_kind(entry.name) is None:
                continue
            if now - entry.stat().st_mtime < settle:
                continue  # libFuzzer may still be writing it
            self.handled.add(entry.name)
            finding = self.classifier.classify(Path(entry.path))
            if finding.target not in (self.o.target, "?"):
                continue  # another harness's artifact
            if finding.signature == UNREPRODUCED:
                self.unreproduced.append(finding.artifact)
                continue
            known = self.findings.get(finding.signature)
            if known is None:
                if finding.new and self.start is not None:
                    finding.found_after = time.monotonic() - self.start
                self.findings[finding.signature] = finding
                new_signature = True
            else:
                known.duplicates += 1
        return new_signature

    def _slow_inputs(self, since: float) -> list[str]:
        """Inputs libFuzzer reported as slower than SLOW_SECONDS during this campaign."""
        try:
            return sorted(e.path for e in os.scandir(self.artifacts)
                          if e.name.startswith(SLOW_UNIT) and e.stat().st_mtime >= since)
        except OSError:
            return []

    def _write_known(self) -> None:
        tmp = self.known_path.with_suffix(".tmp")
        tmp.write_text("".join(f"{sig}\n" for sig in self.findings))
        os.replace(tmp, self.known_path)

    # -- progress -------------------------------------------------------------
    def _progress_every(self) -> float:
        out = self.o.progress
        return PROGRESS_TTY_EVERY if out is not None and out.isatty() else PROGRESS_LOG_EVERY

    def _show_progress(self, workers: list[Worker], elapsed: float) -> None:
        out = self.o.progress
        if out is None:
            return
        execs = sum(w.total for w in workers)
        line = (f"[{int(elapsed) // 60}:{int(elapsed) % 60:02}] {self.o.target}: "
                f"{execs:,} execs ({execs / max(elapsed, 1e-9):,.0f}/s), "
                f"cov {max(w.cov for w in workers)}, corpus {_count(self.corpus)}, "
                f"findings {len(self.findings)}")
        if out.isatty():
            out.write("\r\x1b[K" + line)
        else:
            out.write(line + "\n")
        out.flush()

    def _progress_done(self) -> None:
        out = self.o.progress
        if out is not None and out.isatty():
            out.write("\n")
            out.flush()

    # -- coverage -------------------------------------------------------------
    def _coverage(self, budget: float) -> tuple[set[str], int]:
        signalled_before = self.interrupted
        return replay_coverage(self.o.target, self.o.platform, (self.corpus, self.seeds), budget,
                               self.o.progress,
                               stopped=lambda: self.interrupted != signalled_before,
                               design=self.o.design)


def replay_coverage(target: str, platform: str | None, dirs: Iterable[Path | None],
                    budget: float, progress: TextIO | None,
                    stopped: Callable[[], bool],
                    design: str | None = None) -> tuple[set[str], int]:
    """Replay the inputs in `dirs` (no monitor) and union what they reached, for at
    most `budget` seconds or until `stopped()`; also how many were replayed."""
    reached: set[str] = set()
    if budget <= 0:
        return reached, 0
    runner = make_runner(target, Settings(platform=platform, design=design, monitor=False,
                                          z3=False))
    end = time.monotonic() + budget
    replayed = 0
    inputs = _inputs(*dirs)
    ticker = Ticker(progress or io.StringIO(), prefix=f"vsmmu fuzz {target}")
    for path in inputs:
        if time.monotonic() > end or stopped():
            break  # out of time, or a signal during the replay: what was replayed counts
        with open(path, "rb") as f:
            reached |= runner.run(decode(f.read(MAX_BYTES))).coverage
        replayed += 1
        ticker.tick(f"coverage: replayed {replayed}/{len(inputs)} inputs")
    return reached, replayed


@contextmanager
def _corpus_lock(corpus: Path):
    """One campaign per working corpus: two would race over the same files and each
    would count the other's inputs as its own.  An advisory lock on the directory
    itself (flock), so that a campaign that dies, however it dies, leaves no stale
    lock behind.  `--jobs N` is how one campaign shares a corpus between processes."""
    fd = os.open(corpus, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(f"the corpus {corpus} is in use by another campaign: give "
                                "this one its own --corpus (or run one campaign with "
                                "--jobs N)") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def _stop_signals(signalled):
    """SIGINT, SIGTERM and SIGHUP all stop a campaign the way Ctrl-C does; `signalled()`
    says whether to raise (the first signal) or only note it (a campaign stopping
    already finishes its summary).  Outside the main thread signals stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if signalled():
            raise KeyboardInterrupt

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _pump(job: int, stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((job, line.rstrip("\n")))
    lines.put((job, None))


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass



def _inputs(*dirs: Path | None) -> list[Path]:
    out = []
    for d in dirs:
        if d is not None and d.is_dir():
            out += sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    return out


def _count(d: Path) -> int:
    try:
        return sum(1 for e in os.scandir(d) if e.is_file() and not e.name.startswith("."))
    except OSError:
        return 0


def run_campaign(options: CampaignOptions) -> CampaignResult:
    """Run a campaign on one target (see the module docstring); raises CampaignError on
    bad input."""
    return Campaign(options).run()


# ------------------------------------------------------------------ merging
@dataclass(frozen=True)
class MergeResult:
    before: int  # inputs in dest before
    after: int

    @property
    def added(self) -> int:
        return self.after - self.before


def merge_corpora(dest: str | os.PathLike, sources: Iterable[str | os.PathLike], *,
                  target: str = "system") -> MergeResult:
    """Distil corpora gathered on many machines into `dest`: libFuzzer -merge=1
    through the target's harness copies into `dest` the source inputs that add
    coverage to what `dest` already reaches (dest is created if missing; sources
    are only read).  Invariant checks are off: the merge measures coverage."""
    dest, sources = Path(dest), [Path(s) for s in sources]
    if not sources:
        raise CampaignError("corpus merge needs at least one source directory")
    for s in sources:
        if not s.is_dir():
            raise CampaignError(f"corpus directory {s} does not exist")
    if target not in TARGETS:
        raise CampaignError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CampaignError(f"cannot create {dest}: {e.strerror}") from None
    if why := unwritable(dest, "merge destination"):
        raise CampaignError(why)
    with _corpus_lock(dest):
        return _merge(dest, sources, target)


def _merge(dest: Path, sources: list[Path], target: str) -> MergeResult:
    before = _count(dest)
    script = HARNESSES / f"{target}_fuzzer.py"
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(Settings(monitor=False, z3=False).env())
    with tempfile.TemporaryDirectory(prefix="vsmmu-merge-") as tmp:
        cmd = [sys.executable, str(script), "-merge=1", f"-artifact_prefix={tmp}{os.sep}",
               f"-max_len={MAX_BYTES}", str(dest), *map(str, sources)]
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", check=False)
    if proc.returncode != 0:
        last = next((x for x in reversed(proc.stderr.splitlines()) if x.strip()), "no output")
        raise CampaignError(f"libFuzzer merge failed (status {proc.returncode}): {last[:200]}")
    return MergeResult(before, _count(dest))

