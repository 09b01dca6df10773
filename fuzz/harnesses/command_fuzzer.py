#!/usr/bin/env python3
"""Guest command-queue fuzzing: every opcode with fields set by name, bursts,
queue errors and recovery, with DMA to observe what the commands left behind.

libFuzzer flags and corpus directories pass straight through, e.g.
    fuzz/harnesses/command_fuzzer.py -runs=1000 -artifact_prefix=out/ CORPUS_DIR
(settings from the environment: see fuzz/harness.py; campaigns: `vsmmu fuzz`).
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # a source checkout
from fuzz.instrumentation import INCLUDE, PLUMBING  # noqa: E402 - not instrumented

with atheris.instrument_imports(include=INCLUDE, exclude=PLUMBING):
    from fuzz import harness

if __name__ == "__main__":
    harness.main("command")
