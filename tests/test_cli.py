"""The `vsmmu` command line: the demo's observations, JSON shape, usage errors."""

from __future__ import annotations

import json

import pytest

from fuzz.bench import translate as bench_translate
from fuzz.cli import main


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_demo_observations(capsys):
    out = run_json(capsys, "demo")
    by_step = [(s["device"], s["access"], s["outcome"], s["pa"], s["event"]) for s in out["dma"]]
    # Expected by hand from the mappings in vsmmu/sw/demo.py: IOVA 0x1000_0000 -> PA
    # 0x4000_0000 (RW), 0x1000_1000 -> 0x4000_1000 (RO); the VM's IPA 0x8000_0000 ->
    # PA 0x6000_0000 (2 MiB); its IOVA 0x2000_0000 -> IPA 0x8000_0000.
    assert by_step[0][2:4] == ("ok", 0x4000_0010)
    assert by_step[1][2:4] == ("ok", 0x4000_1010)
    assert by_step[2][4].startswith("F_PERMISSION sid=0x10 addr=0x10001010 write S1")
    assert by_step[3][4].startswith("F_TRANSLATION sid=0x10 addr=0x10002000 read S1")
    assert by_step[4][2:4] == ("ok", 0x6000_1234)
    assert by_step[5][4] == "F_TRANSLATION sid=0x20 addr=0x80200000 read S2 CLASS=IN ipa=0x80200000"
    assert by_step[6][2:4] == ("ok", 0x6000_0040)
    assert by_step[7][4] == "F_TRANSLATION sid=0x30 addr=0x20001000 read S2 CLASS=IN ipa=0x90000000"
    assert by_step[8][4] == "C_BAD_STE sid=0x40"  # S2AA64=0 is an event, never a crash
    assert by_step[9][4] == "C_BAD_STREAMID sid=0x10000"
    # Every fault above is recorded (R=1, S2R=1), in order.
    assert out["events"] == [s[4] for s in by_step if s[4]]
    assert out["cmdq_error"]["err"] == "ILL"


def test_info_json(capsys):
    regs = run_json(capsys, "info")
    assert regs["AIDR"] == "0x00000001"  # SMMUv3.1
    assert set(regs) == {"IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5", "IIDR", "AIDR"}


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["no-such-command"], ["demo", "--bogus"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "usage: vsmmu" in capsys.readouterr().err


def test_bench_translate_measures_three_cases():
    results = bench_translate.measure(rounds=1, n=4)
    assert list(results) == ["IOTLB hit", "stage-1 walk (4 levels)",
                             "nested walk (4x S1 over 3-level S2)"]
    assert all(ns > 0 for ns in results.values())
