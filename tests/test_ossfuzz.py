"""The harnesses packaged and run as OSS-Fuzz / ClusterFuzzLite do (fuzz/ossfuzz.py,
.clusterfuzzlite/, .github/workflows/cflite_*.yml): one harness is really built into
a PyInstaller one-file bundle (about 40 s here) and run with ClusterFuzz's flags."""

from __future__ import annotations

import configparser
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from fuzz.campaign import DEFAULT_MAX_LEN, DEFAULT_TIMEOUT, DICTIONARY, SEEDS_ROOT
from fuzz.ossfuzz import build
from fuzz.program import encode, parse

ROOT = Path(__file__).resolve().parents[1]
NAME = "smmu_fuzzer"  # the physical SMMU alone: the quickest to build and run
# A planted bug (fuzz/bench/plants.py) the bundle must report: SID 8 is past the
# rig's 8-entry stream table, and the planted SMMU reads an STE there.
PLANT = "stream-table-unbounded"
PAST_THE_TABLE = "dma device=0x6 iova=0x0 size=0x3 flags=0x0 ssid=0x0"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    pytest.importorskip("PyInstaller")
    out = tmp_path_factory.mktemp("out")
    assert build(out, [NAME]) == [out / NAME]
    return out


def _run(wrapper: Path, *flags: str, cwd: Path, plant: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSMMU_FUZZ_")}
    if plant:
        env["VSMMU_FUZZ_PLANT"] = plant
    return subprocess.run([str(wrapper), *flags], cwd=cwd, env=env, capture_output=True,
                          text=True, errors="replace", timeout=300)


def test_the_bundle_has_what_clusterfuzz_looks_for(built):
    wrapper, package = built / NAME, built / f"{NAME}.pkg"
    assert os.access(wrapper, os.X_OK) and not os.access(package, os.X_OK)
    assert "LLVMFuzzerTestOneInput" in wrapper.read_text()  # how ClusterFuzz spots targets
    assert (built / f"{NAME}.dict").read_bytes() == DICTIONARY.read_bytes()
    opts = configparser.ConfigParser()
    opts.read(built / f"{NAME}.options")
    assert dict(opts["libfuzzer"]) == {"dict": f"{NAME}.dict", "max_len": str(DEFAULT_MAX_LEN),
                                       "timeout": str(DEFAULT_TIMEOUT)}
    seeds = sorted(p.name for p in (SEEDS_ROOT / "smmu").iterdir() if p.is_file())
    with zipfile.ZipFile(built / f"{NAME}_seed_corpus.zip") as z:
        assert sorted(z.namelist()) == seeds


def test_it_fuzzes_and_merges_with_clusterfuzz_flags(built, tmp_path):
    corpus, merged, artifacts = tmp_path / "corpus", tmp_path / "merged", tmp_path / "art"
    for d in (corpus, merged, artifacts):
        d.mkdir()
    with zipfile.ZipFile(built / f"{NAME}_seed_corpus.zip") as z:
        z.extractall(corpus)
    done = _run(built / NAME, "-runs=150", "-max_total_time=60", f"-artifact_prefix={artifacts}/",
                f"-dict={built / f'{NAME}.dict'}", str(corpus), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done 150 runs" in done.stderr and " cov: " in done.stderr
    # atheris instruments the model inside the bundle (PyInstaller's loader)
    assert "INFO: Instrumenting vsmmu.hw.smmu" in done.stdout + done.stderr
    merge = _run(built / NAME, "-merge=1", f"-artifact_prefix={artifacts}/", str(merged),
                 str(corpus), cwd=tmp_path)
    assert merge.returncode == 0 and any(merged.iterdir()), merge.stderr[-2000:]
    assert not any(artifacts.iterdir())  # the correct model: nothing found


def test_a_finding_comes_out_as_clusterfuzz_expects(built, tmp_path):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "art"
    corpus.mkdir()
    artifacts.mkdir()
    data = encode(parse(PAST_THE_TABLE))
    (corpus / "past-the-table").write_bytes(data)
    found = _run(built / NAME, "-runs=10", f"-artifact_prefix={artifacts}/", str(corpus),
                 cwd=tmp_path, plant=PLANT)
    report = found.stdout + found.stderr
    assert found.returncode != 0
    assert "Uncaught Python exception" in report
    assert "FindingError: stream-bounds" in report  # the signature leads the report
    [crash] = artifacts.iterdir()
    assert crash.name.startswith("crash-") and crash.read_bytes() == data
    # ClusterFuzz reproduces by running the target on the test case
    again = _run(built / NAME, "-runs=10", str(crash), cwd=tmp_path, plant=PLANT)
    assert again.returncode != 0 and "stream-bounds" in again.stdout + again.stderr
    assert _run(built / NAME, "-runs=10", str(crash), cwd=tmp_path).returncode == 0


def test_the_workflows_run_every_clusterfuzzlite_mode_with_sarif():
    yaml = pytest.importorskip("yaml")
    modes = {}
    for path in sorted((ROOT / ".github" / "workflows").glob("cflite_*.yml")):
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            steps = {s["uses"].split("@")[0].rsplit("/", 1)[1]: s.get("with", {})
                     for s in job["steps"] if "uses" in s}
            assert steps["build_fuzzers"]["language"] == "python", path.name
            modes[steps["run_fuzzers"]["mode"]] = steps["run_fuzzers"]
    assert set(modes) == {"code-change", "batch", "prune", "coverage"}
    assert all(modes[m]["output-sarif"] for m in ("code-change", "batch", "prune"))
    assert "python3 -m fuzz.ossfuzz" in (ROOT / ".clusterfuzzlite" / "build.sh").read_text()
