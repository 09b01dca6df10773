#!/bin/bash -eu
# Runs inside OSS-Fuzz's base-builder-python (cwd $SRC/vsmmu): install the project,
# then package every harness with the builder's compile_python_fuzzer, each with its
# .dict, .options and seed corpus (fuzz/ossfuzz.py says how and why).  The same
# module builds them outside the image: `./run python -m fuzz.ossfuzz OUT [NAME...]`.
pip3 install .
python3 -m fuzz.ossfuzz "$OUT"
