"""Options mean the same in every command, bad values get one clear line, and every
command that runs programs takes every fuzz target."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fuzz import exits
from fuzz.campaign import Campaign, CampaignOptions, Worker
from fuzz.cli import build_parser, main
from fuzz.runner import DMA_IOVA
from fuzz.targets import TARGETS
from vsmmu.platform import default_platform, dump_platform

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["fuzz", "--time", "inf"], "must be a finite number of seconds, got inf"),
    (["fuzz", "--time", "nan"], "must be a finite number of seconds, got nan"),
    (["fuzz", "--time", "0"], "must be a positive number of seconds, got 0"),
    (["fuzz", "--runs", "x"], "must be a whole number of 1 or more, got x"),
    (["fuzz", "--jobs", "-1"], "must be a whole number of 0 or more, got -1"),
    (["bench", "bugs", "--seeds", "1.5"], "must be a whole number of 1 or more, got 1.5"),
    (["prove", "--time", "0"], "must be a whole number of 1 or more, got 0"),
    (["triage", "x", "--time", "-1"], "must be a number of seconds >= 0, got -1"),
])
def test_bad_values_are_one_line_in_the_users_words(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == exits.USAGE and message in err
    assert "_positive" not in err and "invalid" not in err  # no internal names


@pytest.mark.parametrize("argv, dest, value", [
    (["bench", "bugs", "--time", "5"], "budget", 5.0),
    (["bench", "bugs", "--budget", "5"], "budget", 5.0),  # the older name stays
    (["bench", "bugs", "--jobs", "0"], "jobs", 0),  # 0: one per core, as in fuzz
    (["triage", "x", "--time", "0"], "budget", 0.0),
    (["triage", "x", "--budget", "3"], "budget", 3.0),
    (["prove", "--time", "5"], "timeout", 5),
    (["prove", "--timeout", "5"], "timeout", 5),
])
def test_the_same_idea_has_the_same_name(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_seed_zero_is_libfuzzers_random_and_others_are_repeatable(tmp_path):
    def flags(seed):
        o = CampaignOptions(seed=seed, corpus=str(tmp_path), artifacts=str(tmp_path))
        return [f for f in Campaign(o)._flags(Worker(0, None), None) if f.startswith("-seed")]

    assert flags(0) == [] and flags(None) == []
    assert flags(5) == ["-seed=6"]


@pytest.mark.parametrize("command", ["check", "triage"])
def test_commands_that_run_programs_take_every_target(command):
    parser = build_parser()
    for target in TARGETS:
        argv = [command, "prog", "--target", target]
        assert parser.parse_args(argv).target == target


def test_check_replays_on_the_smmu_target(tmp_path, capsys):
    prog = tmp_path / "prog.txt"
    prog.write_text(f"dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0\n")
    assert main(["check", "--target", "smmu", "--json", str(prog)]) == exits.CLEAN
    out = json.loads(capsys.readouterr().out)
    assert out["result"] == "clean" and "smmu.ste:S1_TRANS" in out["coverage"]


@pytest.fixture
def platform_file(tmp_path):
    p = dump_platform(default_platform())
    p["smmu"][1].setdefault("features", {})["oas_bits"] = 44  # unlike the first SMMU
    path = tmp_path / "platform.json"
    path.write_text(json.dumps(p))
    return path


def test_info_and_prove_take_a_platform(platform_file, capsys):
    assert main(["info", "--json", "--platform", str(platform_file)]) == exits.CLEAN
    regs = json.loads(capsys.readouterr().out)
    assert set(regs) == {"smmu0", "smmu1"}
    # IDR5.OAS (bits 2:0): 0b101 = 48 bits, 0b100 = 44 bits
    assert [int(regs[s]["IDR5"], 16) & 0x7 for s in ("smmu0", "smmu1")] == [0b101, 0b100]
    assert main(["prove", "--json", "--platform", str(platform_file)]) == exits.CLEAN
    proofs = json.loads(capsys.readouterr().out)["proofs"]
    assert {p["result"] for p in proofs} == {"proved"}
    bad = platform_file.with_name("bad.toml")
    bad.write_text("[[smmu]]\nname = 3\n")
    for cmd in ("info", "prove"):
        assert main([cmd, "--platform", str(bad)]) == exits.USAGE
        err = capsys.readouterr().err
        assert err.startswith(f"vsmmu {cmd}: ") and err.count("\n") == 1


def test_run_keeps_the_callers_directory(tmp_path):
    out = subprocess.run([str(ROOT / "run"), "python", "-c", "import os; print(os.getcwd())"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path)


def test_version_is_the_installed_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("vsmmu ") and "unknown" not in out


def test_triage_of_an_smmu_finding_emits_a_test_on_the_smmu_rig(tmp_path, capsys):
    from fuzz.bench.plants import planted

    crash = tmp_path / "crash-smmu"
    # device 6: the rig's seventh stream, SID 8, beyond its 8-entry stream table
    crash.write_text(f"dma device=0x6 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0\n")
    out = tmp_path / "tests"
    with planted("stream-table-unbounded"):
        assert main(["triage", "--target", "smmu", "--time", "0", "--emit-test", str(out),
                     str(crash)]) == exits.FINDINGS
    assert "stream-bounds" in capsys.readouterr().out
    [test] = out.glob("test_regression_*.py")
    assert "from fuzz.physical import PhysicalRunner" in test.read_text()
    namespace: dict = {}
    exec(compile(test.read_text(), str(test), "exec"), namespace)  # our own file
    [run] = [f for n, f in namespace.items() if n.startswith("test_regression_")]
    run()  # the correct model: clean
    with planted("stream-table-unbounded"), pytest.raises(AssertionError):
        run()
