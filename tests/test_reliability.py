"""A campaign never loses a finding, never invents one, and stops cleanly however it is
stopped; every command's exit status says what happened (fuzz/exits.py)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz import campaign, exits, fuzz_command
from fuzz.campaign import CampaignOptions, run_campaign
from fuzz.cli import main
from fuzz.program import encode, parse
from fuzz.results import CampaignResult, Finding, format_result
from fuzz.runner import DMA_IOVA

VSMMU = [sys.executable, "-c", "import sys; from fuzz.cli import main; sys.exit(main())"]
UNWRITABLE = "/proc/self"  # a directory nobody can create a file in, root included
CLEAN = [f"dma device=0x0 iova={DMA_IOVA:#x} flags=0x0 size=0x3 ssid=0x0"]


def _fuzz(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    fuzz_command.add_arguments(parser)
    return fuzz_command.main(parser.parse_args(argv))


@pytest.mark.parametrize("option", ["--artifacts", "--corpus"])
def test_an_unwritable_output_is_an_error_before_any_fuzzing(tmp_path, option, capsys):
    other = "--corpus" if option == "--artifacts" else "--artifacts"
    assert _fuzz([option, UNWRITABLE, other, str(tmp_path), "--runs", "5"]) == exits.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write to the {option[2:]} directory" in err


def test_an_artifact_whose_replay_is_clean_is_counted_not_reported(tmp_path):
    for d in ("corpus", "artifacts"):
        (tmp_path / d).mkdir()
    stray = tmp_path / "artifacts" / "crash-0123456789abcdef"
    stray.write_bytes(encode(parse("\n".join(CLEAN))))
    result = run_campaign(CampaignOptions(
        runs=5, z3=False, corpus=str(tmp_path / "corpus"),
        artifacts=str(tmp_path / "artifacts"), seeds=str(tmp_path / "corpus")))
    assert result.findings == [] and result.unreproduced == [str(stray)]
    assert result.exit_code == exits.CLEAN
    assert result.as_dict()["unreproduced"] == [str(stray)]
    assert "unreproduced: 1 artifact(s)" in format_result(result)


def _start(tmp_path: Path) -> subprocess.Popen:
    """`vsmmu fuzz` in a process group of its own (the test's stand-in for a CI job or
    a terminal), once it is fuzzing."""
    # A temporary directory of its own, so a test suite running beside it cannot
    # make its clean-up look incomplete.
    (tmp_path / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [*VSMMU, "fuzz", "--time", "120", "--json", "--no-z3",
         "--corpus", str(tmp_path / "corpus"), "--artifacts", str(tmp_path / "artifacts")],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    (tmp_path / "corpus").mkdir(exist_ok=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if " execs (" in line and not line.startswith("[0:00] system: 0 execs"):
            return proc
        assert proc.poll() is None, proc.stderr.read()
    proc.kill()
    pytest.fail("the campaign never started fuzzing")


def _workers_of(campaign_pid: int) -> list[int]:
    """Harness processes started for that campaign (they carry its pid)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"VSMMU_FUZZ_PARENT={campaign_pid}".encode() in env.split(b"\0"):
            out.append(int(entry.name))
    return out


def _gone(pids_of, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pids_of():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_every_worker_and_still_gives_the_summary(tmp_path, sig):
    proc = _start(tmp_path)
    assert list((tmp_path / "tmp").glob("vsmmu-fuzz-*"))  # the campaign made one
    assert _workers_of(proc.pid)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == exits.INTERRUPTED
    result = json.loads(out)
    assert result["interrupted"] is True and result["execs"] > 0
    assert result["findings"] == [] and result["unreproduced"] == []
    assert _gone(lambda: _workers_of(proc.pid), 10)
    assert not any(p.name.startswith("crash-") for p in (tmp_path / "artifacts").iterdir())
    assert not list((tmp_path / "tmp").glob("vsmmu-fuzz-*"))  # ... and removed it


def test_killing_the_campaign_kills_its_workers(tmp_path):
    """SIGKILL of the whole process group, as a CI runner does on a time-out, reaches
    the workers: they live in the campaign's group."""
    proc = _start(tmp_path)
    pid = proc.pid
    assert _workers_of(pid)
    os.killpg(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _gone(lambda: _workers_of(pid), 10)


def test_a_worker_outliving_its_campaign_leaves_quietly(tmp_path):
    """SIGKILL of the campaign process alone: its workers notice within seconds and
    exit without writing an artifact (nothing the next campaign would misreport)."""
    proc = _start(tmp_path)
    pid = proc.pid
    assert _workers_of(pid)
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _gone(lambda: _workers_of(pid), 15)
    assert not any(p.name.startswith("crash-") for p in (tmp_path / "artifacts").iterdir())


def test_an_internal_error_is_one_line_and_a_log(monkeypatch, capsys):
    from vsmmu.arch.features import Features

    def broken(self):
        raise RuntimeError("planted")

    monkeypatch.setattr(Features, "id_registers", broken)
    assert main(["info"]) == exits.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: planted" in err
    log = Path(err.rsplit("the traceback is in ", 1)[1].strip())
    try:
        assert "Traceback" in log.read_text() and "planted" in log.read_text()
    finally:
        log.unlink()



def test_corpus_merge_into_an_unwritable_directory_is_an_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(encode(parse("\n".join(CLEAN))))
    with pytest.raises(campaign.CampaignError, match="cannot write to the merge destination"):
        campaign.merge_corpora(UNWRITABLE, [src])


def _smmu_crash(tmp_path: Path) -> Path:
    crash = tmp_path / "crash-smmu"
    # device 6: the rig's stray stream, SID 8, beyond its 8-entry stream table
    crash.write_text(f"dma device=0x6 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0\n")
    return crash


def test_triage_checks_its_test_directory_before_minimizing(tmp_path, capsys):
    argv = ["triage", "--target", "smmu", "--emit-test", UNWRITABLE, str(_smmu_crash(tmp_path))]
    assert main(argv) == exits.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to the --emit-test directory" in err


def test_triage_never_overwrites_a_test_the_user_edited(tmp_path, capsys):
    from fuzz.bench.plants import planted

    crash, tests = _smmu_crash(tmp_path), tmp_path / "tests"
    argv = ["triage", "--target", "smmu", "--time", "0", "--emit-test", str(tests), str(crash)]
    with planted("stream-table-unbounded"):
        assert main(argv) == exits.FINDINGS
        [test] = tests.glob("test_regression_*.py")
        assert main(argv) == exits.FINDINGS  # the same test again: nothing to protect
        test.write_text(test.read_text() + "# my notes\n")
        capsys.readouterr()
        assert main(argv) == exits.USAGE
    assert test.read_text().endswith("# my notes\n")
    assert "exists and differs (edited?): left as it is" in capsys.readouterr().err


def _platform(tmp_path: Path, change) -> Path:
    from vsmmu.platform import default_platform, dump_platform

    p = dump_platform(default_platform())
    change(p)
    path = tmp_path / "platform.json"
    path.write_text(json.dumps(p))
    return path


def _features(p: dict, **kw) -> None:
    p["smmu"][0].setdefault("features", {}).update(kw)


def _most_ram(p: dict) -> None:
    """The loader's documented maximums: 16 guests of 1024 MiB."""
    p["guest"] += [dict(name=f"x{i}") for i in range(16 - len(p["guest"]))]
    for g in p["guest"]:
        g["ram_mib"] = 1024


@pytest.mark.parametrize("change, message", [
    (lambda p: _features(p, s1p=False), "the hypervisor needs stage 1 and stage 2"),
    (lambda p: _features(p, st_2lvl=False, sidsize=24), "MiB of its 32 MiB pool"),
    (_most_ram, "MiB of RAM together"),
    (lambda p: p.update(device=[]), "no device"),
    (lambda p: p["guest"][0].update(sw_msi_start=0x4000_0000),  # GUEST_RAM
     "the MSI window [0x40000000, 0x40100000) overlaps its RAM"),
    (lambda p: p["guest"][0].update(sw_msi_start=(1 << 40) - (1 << 20), sw_msi_size_mib=2),
     "is outside its 40-bit IPA space"),
], ids=["no-stage-1", "linear-table-too-big", "documented-maximum-ram", "no-device",
        "msi-window-on-ram", "msi-window-beyond-ipa"])
def test_a_platform_the_hypervisor_cannot_boot_is_one_line_at_load(tmp_path, capsys, change,
                                                                   message):
    path = _platform(tmp_path, change)
    prog = tmp_path / "prog.txt"
    prog.write_text("\n".join(CLEAN) + "\n")
    start = time.monotonic()
    for argv in (["check", "--platform", str(path), str(prog)],
                 ["fuzz", "--platform", str(path), "--corpus", str(tmp_path),
                  "--artifacts", str(tmp_path), "--runs", "1"]):
        assert main(argv) == exits.USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert time.monotonic() - start < 10  # refused before booting anything


def test_two_campaigns_cannot_share_a_corpus_and_a_dead_one_does_not_block(tmp_path, capsys):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    holder = subprocess.Popen(  # another campaign's lock on the corpus directory
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         f"fd = os.open({str(corpus)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    argv = ["--corpus", str(corpus), "--artifacts", str(artifacts), "--runs", "3", "--no-z3"]
    try:
        assert _fuzz(argv) == exits.USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by another campaign" in err
        with pytest.raises(campaign.CampaignError, match="in use by another campaign"):
            campaign.merge_corpora(corpus, [artifacts])
    finally:
        holder.kill()  # SIGKILL: no clean-up, and still no stale lock
        holder.wait()
    assert _fuzz(argv) == exits.CLEAN


def _result(target: str, findings: list[Finding] | None = None) -> CampaignResult:
    return CampaignResult(target, 10, 1.0, findings or [], {}, corpus_dir="c/t",
                          artifacts_dir="a")


@pytest.mark.parametrize("target, shown, hidden", [
    ("smmu", "events (physical)", "events (guest)"),
    ("system", "commands (guest)", "virtio-iommu requests"),
    ("virtio-iommu", "virtio-iommu status", "commands (guest)"),
])
def test_the_coverage_table_shows_what_the_target_can_reach(target, shown, hidden):
    result = _result(target)
    text = format_result(result)
    assert f"  {shown} " in text and f"  {hidden} " not in text
    assert "E_PAGE_REQUEST (no PRI queue, IDR0.PRI=0)" in text  # said, and not in the totals
    assert "corpus in c/t, artifacts in a" in text and "cov: libFuzzer's count" in text
    assert result.as_dict()["coverage_groups"] and shown in result.as_dict()["coverage_groups"]
    assert "E_PAGE_REQUEST" not in json.dumps(result.as_dict()["coverage_totals"])


def test_findings_come_with_the_next_step():
    result = _result("vste", [Finding("s2-authority", "s2-authority:memory", "a/x")])
    assert "next: vsmmu triage --target vste FILE..." in format_result(result)


def test_virtio_iommu_requests_are_coverage():
    from fuzz.corpus import seeds
    from fuzz.targets import runner_for

    reached = runner_for("virtio-iommu", z3=False).run(
        list(seeds()["viommu-map-unmap"][1])).coverage
    assert {"viommu.request:MAP", "viommu.request:UNMAP", "viommu.status:OK"} <= reached


def test_long_waits_say_what_they_are_doing(tmp_path, monkeypatch, capsys):
    from fuzz import progress

    monkeypatch.setattr(progress, "QUIET_FOR", 0.0)
    prog = tmp_path / "prog.txt"
    prog.write_text("\n".join(CLEAN * 3) + "\n")
    assert main(["check", str(prog)]) == exits.CLEAN
    err = capsys.readouterr().err
    assert "vsmmu check: [" in err and "step 3/3" in err
    monkeypatch.setattr(progress, "QUIET_FOR", 0.05)
    with progress.announce("booting", prefix="t"):
        time.sleep(0.3)
    with progress.announce("quick", prefix="t"):
        pass
    time.sleep(0.1)
    err = capsys.readouterr().err
    assert "t: booting...\n" in err and "t: booting: done in" in err and "quick" not in err


def test_slow_inputs_are_reported_and_are_not_findings(tmp_path):
    for d in ("corpus", "artifacts"):
        (tmp_path / d).mkdir()
    slow = tmp_path / "artifacts" / "slow-unit-0123"
    slow.write_bytes(encode(parse("\n".join(CLEAN))))
    later = time.time() + 3600  # as if libFuzzer wrote it during the campaign
    os.utime(slow, (later, later))
    result = run_campaign(CampaignOptions(
        runs=5, z3=False, corpus=str(tmp_path / "corpus"),
        artifacts=str(tmp_path / "artifacts"), seeds=str(tmp_path / "corpus")))
    assert result.slow_inputs == [str(slow)] and result.findings == []
    assert result.exit_code == exits.CLEAN and result.as_dict()["slow_inputs"] == [str(slow)]
    assert "slow inputs: 1 took over 10 s each" in format_result(result)
    worker = campaign.Worker(0, None)
    worker.feed("artifact_prefix='a/'; Test unit written to a/slow-unit-0123")
    assert not worker.found  # the worker goes on: not a finding to restart after


def _qemus_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"qemu-system-aarch64" in cmd:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(not shutil.which("qemu-system-aarch64"), reason="QEMU is not installed")
def test_killing_diff_qemu_leaves_no_qemu_running():
    proc = subprocess.Popen([*VSMMU, "diff-qemu", "--cases", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[1])
    end = time.monotonic() + 60
    while not (qemus := _qemus_of(proc.pid)) and time.monotonic() < end:
        time.sleep(0.2)
    assert qemus, "diff-qemu never started QEMU"
    proc.kill()
    proc.wait(timeout=10)
    assert _gone(lambda: [q for q in qemus if Path(f"/proc/{q}").exists()
                          and b"qemu" in Path(f"/proc/{q}/cmdline").read_bytes()], 10)


def test_one_vsmmu_for_smmus_without_a_common_granule_is_one_line(tmp_path, capsys):
    def change(p):
        p["design"] = "xen-v3"
        p["smmu"][0]["features"] = {"granules": [4096]}
        p["smmu"][1]["features"] = {"granules": [65536]}

    path = _platform(tmp_path, change)
    prog = tmp_path / "prog.txt"
    prog.write_text("\n".join(CLEAN) + "\n")
    assert main(["check", "--platform", str(path), str(prog)]) == exits.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "share no translation granule" in err, err
