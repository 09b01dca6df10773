#!/usr/bin/env python3
"""virtio-iommu fuzzing: guests with a virtio-iommu instead of vSMMUs send
ATTACH / DETACH / MAP / UNMAP / PROBE requests, well-formed and malformed, while
devices DMA and the hypervisor moves pages; every invariant after every step.

libFuzzer flags and corpus directories pass straight through, e.g.
    fuzz/harnesses/virtio-iommu_fuzzer.py -runs=1000 -artifact_prefix=out/ CORPUS_DIR
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
    harness.main("virtio-iommu")
