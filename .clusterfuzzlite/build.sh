#!/bin/bash -eu
# Runs inside base-builder-python (cwd $SRC/vsmmu): install the project, then package
# each harness with compile_python_fuzzer (PyInstaller).  z3 ships a native library,
# so it is collected whole.  Each fuzzer gets the dictionary and, when the repo has
# them, its seed corpus (corpora/<target>/), by OSS-Fuzz's naming conventions.
pip3 install .

for fuzzer in fuzz/harnesses/*_fuzzer.py; do
  name=$(basename -s .py "$fuzzer")
  compile_python_fuzzer "$fuzzer" --collect-all z3
  cp fuzz/vsmmu.dict "$OUT/$name.dict"
  seeds="corpora/${name%_fuzzer}"
  if [ -d "$seeds" ] && [ -n "$(ls -A "$seeds")" ]; then
    (cd "$seeds" && zip -q -j "$OUT/${name}_seed_corpus.zip" ./*)
  fi
done
