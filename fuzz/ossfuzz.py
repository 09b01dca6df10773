"""The harnesses packaged as OSS-Fuzz and ClusterFuzzLite run them.

Inside OSS-Fuzz's Python builder image, `.clusterfuzzlite/build.sh` runs
`python3 -m fuzz.ossfuzz $OUT`: each harness (fuzz/harnesses/*_fuzzer.py) goes
through the builder's `compile_python_fuzzer`, which makes a PyInstaller
one-file bundle `<name>.pkg` and an executable wrapper `<name>` that ClusterFuzz
finds by its executable bit; beside each, by OSS-Fuzz's naming conventions, go
the dictionary (`<name>.dict`), the libFuzzer options (`<name>.options`: the
dictionary, and `vsmmu fuzz`'s max_len and timeout) and the seed corpus
(`<name>_seed_corpus.zip`, from corpora/<target>/).

Outside the image (this machine, CI) there is no `compile_python_fuzzer`; the
stand-in `compile_locally` does what it does (per its source in OSS-Fuzz's
infra/base-images/base-builder, read for this) for the plain build: the same
PyInstaller one-file bundle under the same name, made not executable, and a
wrapper script that runs it.  The builder's wrapper also preloads the sanitizer
runtime, which only exists in the image; the bundle is the same.

PyInstaller options: `--collect-all z3` (z3-solver loads its native library
by path), `--collect-submodules fuzz` and `vsmmu`, `properties` (modules the
harness imports lazily: the planted bugs of the benchmarks, the peers).

Usage: python -m fuzz.ossfuzz OUT [NAME...]   (default: every harness)
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .campaign import DEFAULT_MAX_LEN, DEFAULT_TIMEOUT, DICTIONARY, HARNESSES, SEEDS_ROOT

PYINSTALLER_ARGS = ("--collect-all", "z3", "--collect-submodules", "fuzz",
                    "--collect-submodules", "vsmmu", "--collect-submodules", "properties")


def harnesses() -> list[str]:
    return sorted(p.stem for p in HARNESSES.glob("*_fuzzer.py"))


def options(name: str) -> str:
    """`<name>.options`: what ClusterFuzz passes libFuzzer for this harness."""
    return (f"[libfuzzer]\ndict = {name}.dict\nmax_len = {DEFAULT_MAX_LEN}\n"
            f"timeout = {DEFAULT_TIMEOUT}\n")


def compile_locally(fuzzer: Path, out: Path, *args: str) -> None:
    """What the builder's compile_python_fuzzer does, without the sanitizer runtime."""
    name = fuzzer.stem
    with tempfile.TemporaryDirectory(prefix="vsmmu-pyinstaller-") as work:
        subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level",
                        "WARN", "--distpath", str(out), "--workpath", work, "--specpath", work,
                        "--onefile", "--name", f"{name}.pkg", *args, str(fuzzer)], check=True)
    package = out / f"{name}.pkg"
    package.chmod(package.stat().st_mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    wrapper = out / name
    wrapper.write_text("#!/bin/sh\n# LLVMFuzzerTestOneInput for fuzzer detection.\n"
                       'this_dir=$(dirname "$0")\n'
                       f'chmod +x "$this_dir/{name}.pkg"\n'
                       f'exec "$this_dir/{name}.pkg" "$@"\n')
    wrapper.chmod(0o755)


def build(out: Path, names: list[str] | None = None) -> list[Path]:
    """Package `names` (default: every harness) into `out`; the wrappers made."""
    out.mkdir(parents=True, exist_ok=True)
    builder = shutil.which("compile_python_fuzzer")
    made = []
    for name in names or harnesses():
        fuzzer = HARNESSES / f"{name}.py"
        if not fuzzer.is_file():
            raise SystemExit(f"fuzz.ossfuzz: no harness {name} (one of {', '.join(harnesses())})")
        if builder:
            subprocess.run([builder, str(fuzzer), *PYINSTALLER_ARGS], check=True,
                           env={**os.environ, "OUT": str(out)})
        else:
            compile_locally(fuzzer, out, *PYINSTALLER_ARGS)
        shutil.copyfile(DICTIONARY, out / f"{name}.dict")
        (out / f"{name}.options").write_text(options(name))
        seeds = SEEDS_ROOT / name.removesuffix("_fuzzer")
        if seeds.is_dir() and any(seeds.iterdir()):
            with zipfile.ZipFile(out / f"{name}_seed_corpus.zip", "w") as z:
                for seed in sorted(p for p in seeds.iterdir() if p.is_file()):
                    z.write(seed, seed.name)
        made.append(out / name)
    return made


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m fuzz.ossfuzz OUT [NAME...]")
    for wrapper in build(Path(sys.argv[1]), sys.argv[2:] or None):
        print(wrapper)
