"""Triage on planted bugs: classification, grouping, minimization, emitted regression
tests, the JSON promise, and bad input files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz.triage as triage
import vsmmu.hyp.virtual
from fuzz.program import Op, encode, parse, to_text
from fuzz.runner import DMA_IOVA, Runner, boot, fuzz_platform
from fuzz.triage import classify, emit_test, minimize, project_frames
from vsmmu.arch.layouts import STE, Config
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.platform import dump_platform
from vsmmu.sw.driver import ste_s1

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ planted bugs
def plant_no_s2_invalidation(monkeypatch):
    """The hypervisor forgets every invalidation after a stage-2 unmap."""
    monkeypatch.setattr(Hypervisor, "_invalidate_s2", lambda self, guest, ranges: None)


def plant_bypass_passthrough(monkeypatch):
    """The vSMMU installs a guest's bypass vSTE as it is: the device escapes stage 2."""
    real = vsmmu.hyp.virtual.vste_to_pste

    def planted(vste, host):
        if STE.get(vste, "V") and STE.get(vste, "CONFIG") == Config.BYPASS:
            return vste
        return real(vste, host)

    monkeypatch.setattr(vsmmu.hyp.virtual, "vste_to_pste", planted)


def _buffer_page() -> int:
    """The guest page behind nic0's boot DMA buffer."""
    ipa = boot(monitor=False).domains["nic0"].table.translate(DMA_IOVA)
    return (ipa - GUEST_RAM) // PAGE_SIZE


BUFFER_PAGE = _buffer_page()
# What the bugs need: a cached translation, then the page behind it unmapped...
STALE_TLB = [f"dma device=0x0 iova={DMA_IOVA + 0x18:#x} size=0xf flags=0x1 ssid=0x0",
             f"s2_unmap guest=0x0 page={BUFFER_PAGE:#x}"]
# ... or a bypass vSTE carrying leftovers of the guest's stage-1 STE in other words.
_STE = STE.encode(ste_s1(0x4001_9040) | (0xDEAD_BEEF << 200), CONFIG=Config.BYPASS)
BYPASS_VSTE = [f"vste guest=0x0 smmu=0x0 vsid=0x0 ste={_STE.to_bytes(64, 'little').hex()}"]


def noisy(core: list[str], seed: int, noise: int = 20) -> list[Op]:
    """The core operations in order, hidden among `noise` irrelevant real ones."""
    rng = random.Random(seed)
    filler = []
    for _ in range(noise):
        filler.append(rng.choice([
            f"step count={rng.randrange(16):#x}",
            f"mmio_read guest={rng.randrange(2):#x} smmu={rng.randrange(2):#x} "
            f"reg={rng.randrange(40):#x}",
            f"dma device={rng.choice([1, 4, 5]):#x} "
            f"iova={DMA_IOVA + rng.randrange(0, 0x4000, 8):#x} size=0x7 "
            f"flags={rng.choice([0, 1]):#x} ssid=0x0",
            f"mem guest=0x1 offset={rng.randrange(0x80000, 0xF0000):#x} "
            f"data={rng.randbytes(8).hex()}",
            f"events guest={rng.randrange(2):#x} smmu={rng.randrange(2):#x}",
        ]))
    at = sorted(rng.sample(range(noise + len(core)), len(core)))
    lines, core_left = [], list(core)
    for i in range(noise + len(core)):
        lines.append(core_left.pop(0) if i in at else filler.pop())
    return parse("\n".join(lines))


@pytest.fixture(scope="module")
def runner():
    return Runner()


# ------------------------------------------------------------ classification
def test_clean_programs_classify_as_nothing(runner):
    assert classify(runner.run(parse("\n".join(STALE_TLB)))) is None


def test_signatures_name_the_invariant_and_kind_without_addresses(runner, monkeypatch):
    plant_no_s2_invalidation(monkeypatch)
    plant_bypass_passthrough(monkeypatch)
    stale = classify(runner.run(parse("\n".join(STALE_TLB))))
    bypass = classify(runner.run(parse("\n".join(BYPASS_VSTE))))
    assert (stale.invariant, stale.signature) == ("tlb-containment", "tlb-containment:iotlb")
    assert (bypass.invariant, bypass.signature) == ("s2-authority", "s2-authority:memory")
    assert stale.step == 1 and stale.witness["cache"] == "iotlb"


def test_no_crash_signature_is_exception_and_top_project_frames(runner, monkeypatch):
    def broken(*args, **kw):  # a frame outside the project: not in the signature
        raise ZeroDivisionError("planted")

    monkeypatch.setattr("vsmmu.hw.smmu.Smmu.ats_request", broken)
    finding = classify(runner.run(parse(f"ats device=0x4 iova={DMA_IOVA:#x} flags=0x0 ssid=0x0")))
    assert finding.invariant == "no-crash"
    assert finding.signature == ("no-crash:ZeroDivisionError:"
                                 "fuzz.runner._ats>fuzz.runner.execute>fuzz.runner._checked_step")
    assert "planted" in finding.traceback


def test_project_frames_skip_foreign_frames_and_line_numbers():
    here = Path(triage.__file__).resolve().parents[1]
    tb = "\n".join([
        "Traceback (most recent call last):",
        '  File "/x/site-packages/atheris/__init__.py", line 3, in Fuzz',
        f'  File "{here}/fuzz/runner.py", line 120, in _run',
        '  File "/usr/lib/python3.11/copy.py", line 9, in deepcopy',
        f'  File "{here}/vsmmu/hw/smmu.py", line 401, in dma',
        f'  File "{here}/vsmmu/hw/walk.py", line 77, in walk_s1',
        '  File "/x/site-packages/hypothesis/core.py", line 5, in run',
        "KeyError: 3",
    ])
    assert project_frames(tb) == ["vsmmu.walk.walk_s1", "vsmmu.smmu.dma", "fuzz.runner._run"]
    # with a chained exception, only the last traceback counts
    chained = tb + "\n\nDuring handling...\n\n" + tb.replace("walk_s1", "walk_s2")
    assert project_frames(chained)[0] == "vsmmu.walk.walk_s2"


# ------------------------------------------------------------ minimization
def test_minimize_drops_noise_and_keeps_the_signature(runner, monkeypatch):
    plant_no_s2_invalidation(monkeypatch)
    program = noisy(STALE_TLB, seed=1)
    assert len(program) == 22
    m = minimize(runner, program, budget=30)
    assert m.complete and m.finding.signature == "tlb-containment:iotlb"
    assert len(m.ops) == 2 and m.finding.step == len(m.ops) - 1
    assert [op.spec.name for op in m.ops] == ["dma", "s2_unmap"]
    # operands simplified: a 1-byte read at the start of the buffer is enough
    assert (m.ops[0].iova, m.ops[0].size, m.ops[0].flags) == (DMA_IOVA, 0, 0)
    # deterministic
    assert minimize(runner, program, budget=30).ops == m.ops


def test_minimize_zeroes_every_vste_word_the_bug_does_not_need(runner, monkeypatch):
    plant_bypass_passthrough(monkeypatch)
    m = minimize(runner, noisy(BYPASS_VSTE, seed=2), budget=30)
    [op] = m.ops
    assert op.spec.name == "vste"
    assert int.from_bytes(op.ste, "little") == STE.encode(V=1, CONFIG=Config.BYPASS)


def test_minimize_respects_its_budget_and_refuses_clean_programs(runner, monkeypatch):
    with pytest.raises(ValueError, match="does not reproduce"):
        minimize(runner, parse("\n".join(STALE_TLB)))
    plant_no_s2_invalidation(monkeypatch)
    m = minimize(runner, noisy(STALE_TLB, seed=3), max_runs=3)
    assert not m.complete and m.runs == 3
    assert m.finding.signature == "tlb-containment:iotlb"  # still the best found


# ------------------------------------------------------------ the command
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    triage.add_arguments(parser)
    return parser.parse_args(list(argv))


def _write(directory: Path, name: str, ops: list[Op], *, as_bytes: bool = False) -> str:
    path = directory / name
    if as_bytes:
        path.write_bytes(encode(ops))
    else:
        path.write_text(to_text(ops))
    return str(path)


def _load_test(path: Path):
    spec = importlib.util.spec_from_file_location(f"emitted_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [test] = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
    return test


def test_triage_groups_duplicates_and_emits_a_test_that_fails_until_fixed(
        tmp_path, monkeypatch, capsys):
    plant_no_s2_invalidation(monkeypatch)
    files = [_write(tmp_path, "crash-a", noisy(STALE_TLB, seed=4), as_bytes=True),
             _write(tmp_path, "crash-b.txt", noisy(STALE_TLB, seed=5)),
             _write(tmp_path, "clean.txt", parse("step count=0x1"))]
    tests = tmp_path / "regress"
    assert triage.main(_args(*files, "--json", "--emit-test", str(tests))) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["groups"] == 1
    a, b, clean = out["inputs"]
    for entry in (a, b):
        assert set(entry) >= {"file", "invariant", "signature", "minimized_ops", "witness"}
        assert (entry["invariant"], entry["signature"]) == ("tlb-containment",
                                                            "tlb-containment:iotlb")
        assert len(entry["minimized_ops"]) <= 3
        assert entry["minimized_ops"][-1].startswith("s2_unmap")
        assert entry["witness"]["cache"] == "iotlb"
    assert (clean["invariant"], clean["signature"], clean["witness"]) == (None, None, None)
    # one test for the one group; it holds the program and fails while the bug is there
    [emitted] = tests.glob("test_regression_*.py")
    assert "s2_unmap" in emitted.read_text() and "crash-" in emitted.read_text()
    test = _load_test(emitted)
    with pytest.raises(AssertionError, match="tlb-containment:iotlb"):
        test()
    monkeypatch.undo()  # the bug fixed: the same test passes
    test()


def test_emitted_test_runs_under_pytest_from_the_project_root(tmp_path, monkeypatch):
    plant_bypass_passthrough(monkeypatch)
    m = minimize(Runner(), noisy(BYPASS_VSTE, seed=6), budget=30)
    platform = dump_platform(fuzz_platform())
    path = emit_test(tmp_path, m.ops, m.finding, platform=platform, z3=False, source="crash-x")
    assert "PLATFORM" in path.read_text() and "z3=False" in path.read_text()
    with pytest.raises(AssertionError, match="s2-authority:memory"):
        _load_test(path)()
    monkeypatch.undo()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_files_are_one_line_each_and_the_rest_is_triaged(tmp_path, monkeypatch, capsys):
    plant_no_s2_invalidation(monkeypatch)
    bad_text = tmp_path / "bad.txt"
    bad_text.write_text("step count=0x1\nfrobnicate guest=0x0\n")
    good = _write(tmp_path, "crash", noisy(STALE_TLB, seed=7))
    status = triage.main(_args(str(tmp_path / "missing"), str(bad_text), str(tmp_path), good,
                               "--budget", "0"))
    assert status == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == 3 and all(e.startswith("vsmmu triage: ") for e in errors)
    assert "line 2" in errors[1] and "unknown operation" in errors[1]
    assert "Traceback" not in captured.err
    assert "tlb-containment:iotlb" in captured.out  # the good file was still triaged


def test_clean_inputs_exit_zero_and_text_output(tmp_path, capsys):
    path = _write(tmp_path, "ok", parse("\n".join(STALE_TLB)))
    assert triage.main(_args(path, "--no-z3")) == 0
    assert "clean" in capsys.readouterr().out


def test_text_output_marks_the_failing_step_and_the_witness(tmp_path, monkeypatch, capsys):
    plant_no_s2_invalidation(monkeypatch)
    path = _write(tmp_path, "crash", noisy(STALE_TLB, seed=8))
    assert triage.main(_args(path)) == 1
    out = capsys.readouterr().out
    assert "minimized 22 -> 2 operations" in out
    assert ">>   1 s2_unmap" in out and "cache=iotlb" in out
    assert "1 finding in 1 group" in out


@pytest.mark.parametrize("argv", [["x", "--budget", "-1"], ["x", "--max-runs", "0"], []])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        _args(*argv)
    assert e.value.code == 2


def test_a_bad_platform_or_test_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "p.json").write_text("{")
    assert triage.main(_args("x", "--platform", str(tmp_path / "p.json"))) == 2
    (tmp_path / "file").write_text("")
    assert triage.main(_args("x", "--emit-test", str(tmp_path / "file" / "sub"))) == 2
    assert len(capsys.readouterr().err.splitlines()) == 2
