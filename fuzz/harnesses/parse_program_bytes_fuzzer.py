#!/usr/bin/env python3
"""The program bytes parser against any bytes (fuzz/parsers.py says what it must hold).

    fuzz/harnesses/parse_program_bytes_fuzzer.py -runs=100000
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # a source checkout
from fuzz.instrumentation import INCLUDE  # noqa: E402 - not instrumented

with atheris.instrument_imports(include=INCLUDE):  # all of it: parsing is under test
    from fuzz import parsers

if __name__ == "__main__":
    atheris.Setup(sys.argv, parsers.TARGETS["program_bytes"])
    atheris.Fuzz()
