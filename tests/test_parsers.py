"""The parser fuzz targets (fuzz/parsers.py) hold on hand-picked hostile inputs, and
each harness runs under libFuzzer for a bounded number of inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import parsers
from fuzz.program import encode, parse
from fuzz.runner import DMA_IOVA
from vsmmu.platform import default_platform, dump_platform

HARNESSES = Path(__file__).resolve().parents[1] / "fuzz" / "harnesses"
PROGRAM = ("# a reproducer \u2014 see the issue\n"
           f"dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0\n")
TOML = """[[smmu]]
name = "smmu0"
features = { ssidsize = 8, oas_bits = 48 }
[[guest]]
name = "g0"
[[device]]
name = "nic0"
smmu = "smmu0"
sid = 0x10
guest = "g0"
"""
SEEDS = {
    "program_file": [PROGRAM.encode(), b"\xef\xbb\xbf" + PROGRAM.encode()],
    "program_bytes": [encode(parse(PROGRAM))],
    "platform_json": [json.dumps(dump_platform(default_platform())).encode()],
    "platform_toml": [TOML.encode()],
    "sidecar": [json.dumps({"invariant": "s2-authority", "signature": "s2-authority:memory",
                            "step": 1, "witness": {"sid": "0x10"}, "target": "system"}).encode()],
}
HOSTILE = [b"", b"\x00", b"\xff" * 64, b"[" * 5000, b'{"a":' * 2000, b"1e999999", b"NaN",
           b'{"signature": ["unhashable"], "invariant": "x"}', b'{"step": true}',
           b"[[smmu]]\nname = 3\n", b"dma device=0x0\r\n", b"\xef\xbb\xbf\xef\xbb\xbf"]


def test_every_parser_has_seeds_and_a_harness():
    assert set(SEEDS) == set(parsers.TARGETS)
    for name in parsers.TARGETS:
        assert (HARNESSES / f"parse_{name}_fuzzer.py").is_file()


@pytest.mark.parametrize("name", sorted(parsers.TARGETS))
def test_parsers_hold_on_seeds_and_hostile_bytes(name):
    for data in SEEDS[name] + HOSTILE:
        parsers.TARGETS[name](data)


def test_a_hostile_sidecar_is_classified_again_not_trusted():
    from fuzz.results import Finding

    assert Finding.from_sidecar(b'{"signature": ["x"], "invariant": "y"}', "a") is None
    assert Finding.from_sidecar(b'{"signature": "s", "invariant": "i", "step": "1"}', "a") is None
    good = Finding.from_sidecar(SEEDS["sidecar"][0], "crash-1")
    assert (good.signature, good.step, good.new, good.artifact) == (
        "s2-authority:memory", 1, False, "crash-1")


@pytest.mark.parametrize("name", sorted(parsers.TARGETS))
def test_each_parser_harness_runs_under_libfuzzer(tmp_path, name):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS[name]):
        (corpus / f"seed-{i}").write_bytes(seed)
    proc = subprocess.run(
        [sys.executable, str(HARNESSES / f"parse_{name}_fuzzer.py"), "-runs=3000",
         "-max_total_time=20", "-max_len=4096", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Done 3000 runs" in proc.stderr or "max_total_time" in proc.stderr
