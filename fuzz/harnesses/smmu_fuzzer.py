#!/usr/bin/env python3
"""The physical SMMU alone: malformed STEs, CDs, page tables, commands and
register writes straight into an SMMU brought up by the driver; no unexpected
exception, and translation faults are reported, never swallowed (fuzz/physical.py).

libFuzzer flags and corpus directories pass straight through, e.g.
    fuzz/harnesses/smmu_fuzzer.py -runs=1000 -artifact_prefix=out/ CORPUS_DIR
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
    harness.main("smmu")
