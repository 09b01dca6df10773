"""Differential testing against QEMU's SMMUv3 (fuzz/peers/: differential.py and the
modules it runs: scenarios, comparison, quirks, execution, divergences, qemu_peer).

Without QEMU: event normalisation and collapsing, comparison, the scenario
generator, the known-divergence table and its classifier (fed with "QEMU"
observations made by our model with a QEMU quirk switched on), the command line,
and the qtest client against a fake QEMU (batching, crash detection, cleanup).

With qemu-system-aarch64 installed: a fixed-seed slice of the real run, the
prototype's DMA, and rediscovery of QEMU 10.0's S2AA64=0 crash.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fuzz.peers import differential as diff
from fuzz.peers import divergences, execution, quirks
from fuzz.peers.comparison import Difference, Observation, StepObs, collapse, compare, normalise
from fuzz.peers.divergences import (
    EXPLAINED,
    KNOWN,
    KNOWN_DIVERGENCES,
    NORMALISATIONS,
    CaseResult,
    classify,
)
from fuzz.peers.execution import ModelTarget, execute
from fuzz.peers.qemu_peer import EDU_ID, PeerCrash, PeerError, QemuPeer, features_from_idr
from fuzz.peers.scenarios import (
    BUF_SIZE,
    DATA,
    DATA_SIZE,
    HOST_TABLES,
    KIND_WEIGHTS,
    SCRATCH,
    SID,
    Scenario,
    generate,
    scenarios,
)
from vsmmu.arch.faults import Fault
from vsmmu.arch.layouts import EVENT, Event, FaultClass

# ID registers as QEMU reports them (shared/reference/qemu-peer.md §3)
IDR_10 = dict(IDR0=0x0D44101B, IDR1=0x02730010, IDR2=0, IDR3=0x1414, IDR4=0, IDR5=0x74,
              IIDR=0, AIDR=1)
IDR_7 = dict(IDR_10, IDR0=0x0D40101A, IDR3=0x1404)
F10, F7 = features_from_idr(IDR_10), features_from_idr(IDR_7)
V10, V7 = (10, 0, 2), (7, 2, 22)

QEMU = os.environ.get("QEMU") or "qemu-system-aarch64"
HAVE_QEMU = shutil.which(QEMU) is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-system-aarch64 not installed: "
                                "apt-get install qemu-system-arm")


def require_qemu() -> str:
    if not HAVE_QEMU:
        pytest.skip("qemu-system-aarch64 not installed: apt-get install qemu-system-arm")
    return shutil.which(QEMU)


# ====================================================================== ID registers
def test_features_from_qemu_id_registers():
    assert F10.s1p and F10.s2p and F10.vmid16 and F10.xnx and F10.had and F10.ril
    assert (F10.oas_bits, F10.sidsize, F10.ssidsize) == (44, 16, 0)
    assert F10.granules == {4096, 16384, 65536} and F10.st_2lvl and not F10.cd_2lvl
    assert not (F10.ats or F10.msi)
    assert F7.s1p and not F7.s2p and not F7.vmid16 and not F7.xnx
    # our model then advertises what QEMU does, bit for bit where both define it
    ours = F10.id_registers()
    assert ours["IDR1"] == IDR_10["IDR1"] and ours["IDR5"] == IDR_10["IDR5"]


# ====================================================================== records
def _record(**kw) -> int:
    return Fault(**kw).encode()


def test_normalise_ignores_ipa_low_bits():
    f = Fault(Event.F_TRANSLATION, sid=8, input_addr=0x50000000, s2=True, ipa=0x50000000,
              rnw=False)
    word = f.encode()
    qemu_word = word | (0x123 << 192)  # QEMU leaves IPA[11:0] set
    assert normalise(word) == normalise(qemu_word)
    assert normalise(word)["ipa"] == 0x50000000


def test_normalise_drops_class_before_qemu_9_1():
    word = _record(event=Event.F_TRANSLATION, sid=8, input_addr=0x300000, rnw=False)
    qemu72 = EVENT["CLASS"].put(word, 0)  # 7.2 always writes CLASS=0
    assert normalise(word) != normalise(qemu72)
    assert normalise(word, class_known=False) == normalise(qemu72, class_known=False)


def test_normalise_drops_direction_of_stage2_faults_on_table_and_cd_reads():
    for cls in (FaultClass.TT, FaultClass.CD):
        ours = _record(event=Event.F_TRANSLATION, sid=8, input_addr=0x200800, rnw=False,
                       s2=True, fault_class=cls, ipa=0x60000000)
        qemu = EVENT["TTRNW"].put(EVENT["RNW"].put(ours, 1), 0)  # RnW=1, TTRnW=0
        assert normalise(ours) == normalise(qemu)
    # ... but the transaction's own faults keep RnW
    ours = _record(event=Event.F_TRANSLATION, sid=8, input_addr=0x200800, rnw=False, s2=True,
                   fault_class=FaultClass.IN, ipa=0x60000000)
    assert normalise(ours) != normalise(EVENT["RNW"].put(ours, 1))


def test_collapse_qemus_per_4_byte_records():
    base = normalise(_record(event=Event.F_TRANSLATION, sid=8, input_addr=0x300000, rnw=False))
    records = [dict(base, addr=0x300000 + 4 * i) for i in range(16)]
    assert collapse(records) == [records[0]]
    # a DMA crossing into a second faulting page: one record per page, in order
    cross = [dict(base, addr=0x300FF8), dict(base, addr=0x300FFC), dict(base, addr=0x301000)]
    assert collapse(cross) == [cross[0], cross[2]]
    bad_ste = normalise(_record(event=Event.C_BAD_STE, sid=8))
    assert collapse([bad_ste] * 5) == [bad_ste]
    other = dict(base, event="F_PERMISSION")
    assert collapse([records[0], other, records[1]]) == [records[0], other]


def test_compare_aspects_and_stale_steps():
    ev = [{"event": "F_TRANSLATION", "sid": 8, "addr": 0x300000}]
    a = Observation(steps=[StepObs("dma"), StepObs("dma", events=ev)], memory=b"x",
                    landed=[(DATA, DATA + 4)])
    b = Observation(steps=[StepObs("dma"), StepObs("dma")], memory=b"y", landed=[])
    assert [d.aspect for d in compare(a, a)] == []
    got = compare(a, b)
    assert [(d.aspect, d.step) for d in got] == [("events", 1), ("memory", None)]
    # a stale step is not compared, nor is memory it may have written
    assert compare(a, b, stale=frozenset({1})) == []
    crash = compare(a, Observation(crash="QEMU closed the qtest socket"))
    assert [d.aspect for d in crash] == ["crash"]


# ====================================================================== generator
def test_scenarios_are_reproducible_json_and_cover_every_kind():
    a, b = generate(7, 42), generate(7, 42)
    assert a == b and a.spec == json.loads(json.dumps(a.spec))
    assert generate(7, 43) != a
    kinds = {generate(0, i).kind for i in range(300)}
    assert kinds == set(KIND_WEIGHTS)
    names = {generate(0, i).name for i in range(300)}
    assert len(names) == 300


def test_every_scenario_builds_and_runs_on_our_model():
    model = ModelTarget(F10)
    for i in range(60):
        obs = execute(generate(3, i), model)
        assert obs.error is None, (i, obs.error)
        assert len(obs.buffer) == BUF_SIZE and len(obs.memory) == DATA_SIZE


# ====================================================================== classification
def _s1_spec(**map_kw) -> dict:
    m = dict(iova=0x200000, size=4096, out=DATA, out_kind="data", af=True, write=True,
             user=True)
    m.update(map_kw)
    return {"label": "", "strtab": {"two_level": False, "log2": 8}, "config": "s1",
            "s1": {"granule": 4096, "tsz": 25, "ips": 44, "asid": 1, "r": True,
                   "affd": False, "maps": [m]},
            "steps": [{"op": "dma", "write": True, "iova": 0x200010, "off": 0, "len": 16,
                       "target": "mapped", "drain": True},
                      {"op": "dma", "write": False, "iova": 0x200100, "off": 64, "len": 16,
                       "target": "mapped", "drain": True}]}


def _as_qemu(spec: dict, quirks: set[str], features=F10, version=V10,
             kind: str = "s1") -> CaseResult:
    """A case whose "QEMU" side is our model with `quirks` switched on."""
    s = Scenario(0, 0, kind, spec)
    model = ModelTarget(features)
    class_known = version >= (9, 1)
    ours = execute(s, model, class_known=class_known)
    qemu = execute(s, ModelTarget(features, frozenset(quirks)), class_known=class_known)
    r = CaseResult(s, ours, qemu, compare(ours, qemu))
    return classify(r, features, version, model)


def test_classify_explains_an_ignored_ap1_with_the_smallest_quirk_set():
    r = _as_qemu(_s1_spec(user=False), {"unprivileged-as-privileged"})
    assert r.diffs and r.verdict == "qemu-deviation"
    assert r.known == ["unprivileged-as-privileged"]
    # the first step: our model faults (AP[1]=0, unprivileged DMA), "QEMU" does not
    assert r.ours.steps[0].events[0]["event"] == "F_PERMISSION" and not r.qemu.steps[0].events


def test_classify_respects_version_ranges():
    spec = _s1_spec(af=False)
    assert _as_qemu(spec, {"no-access-flag"}, F7, V7).known == ["no-access-flag"]
    # QEMU 10 checks AF: the same divergence there is not explained by that row
    assert _as_qemu(spec, {"no-access-flag"}, F10, V10).verdict == "unexplained"


def test_classify_reports_what_no_row_explains():
    s = Scenario(0, 0, "s1", _s1_spec())
    ours = execute(s, ModelTarget(F10))
    qemu = execute(s, ModelTarget(F10))
    qemu.memory = bytes(len(qemu.memory))
    qemu.landed = [(DATA, DATA + DATA_SIZE)]
    r = classify(CaseResult(s, ours, qemu, compare(ours, qemu)), F10, V10)
    assert r.verdict == "unexplained" and r.verdict not in EXPLAINED


def test_classify_known_crash_and_unknown_crash():
    s = Scenario(0, 0, "bad-ste", _s1_spec())
    ours = execute(s, ModelTarget(F10))
    for text, known in (
        ("QEMU closed the qtest socket; exit status -6 (SIGABRT); stderr: ERROR:hw/arm/"
         "smmuv3.c:437:decode_ste_s2_cfg: code should not be reached", "crash-s2aa64-0"),
        ("QEMU closed the qtest socket; exit status -11 (SIGSEGV)", "qemu-crash"),
    ):
        qemu = Observation(crash=text)
        r = classify(CaseResult(s, ours, qemu, compare(ours, qemu)), F10, V10)
        assert (r.verdict, r.known) == ("peer-crash", [known])


def test_classify_stale_steps_are_impdef():
    spec = _s1_spec()
    spec["steps"][1]["stale"] = True
    s = Scenario(0, 0, "stale", spec)
    ours = execute(s, ModelTarget(F10))
    qemu = execute(s, ModelTarget(F10))
    qemu.steps[1].events = [{"event": "F_TRANSLATION", "sid": SID, "addr": 0x200100}]
    qemu.buffer = bytes(len(qemu.buffer))
    r = classify(CaseResult(s, ours, qemu, compare(ours, qemu)), F10, V10)
    assert (r.verdict, r.known) == ("impdef", ["stale-without-invalidation"])


def test_known_divergence_table():
    ids = [k.id for k in KNOWN_DIVERGENCES]
    assert len(ids) == len(set(ids)) == len(KNOWN)
    table = open(divergences.__file__).read()
    emulation = open(quirks.__file__).read() + open(execution.__file__).read()
    for k in KNOWN_DIVERGENCES + NORMALISATIONS:
        assert k.cls in ("qemu-deviation", "impdef", "peer-crash"), k.id
        assert k.rule and k.qemu, k.id
        if k.cls == "qemu-deviation":
            assert "IHI 0070" in k.rule or "DDI 0487" in k.rule, k.id
        if k.quirk:  # every quirk row is emulated by QuirkSmmu/ModelTarget
            assert f'"{k.id}"' in table and f'"{k.id}"' in emulation, k.id
        else:
            assert k.match is not None or k.id in ("stale-without-invalidation",) or \
                k in NORMALISATIONS, k.id


# ====================================================================== command line
def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    diff.add_arguments(p)
    return p.parse_args(argv)


def test_cli_defaults_and_usage_errors():
    a = _args()
    assert (a.cases, a.seed, a.start, a.json, a.qemu) == (300, 0, 0, False, None)
    with pytest.raises(SystemExit) as e:
        _args("--cases", "0")
    assert e.value.code == 2


def test_cli_missing_qemu_is_one_error_line(capsys, monkeypatch):
    monkeypatch.delenv("QEMU", raising=False)
    assert diff.main(_args("--qemu", "/nonexistent/qemu-system-aarch64")) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "not found" in err and "apt-get install qemu-system-arm" in err


def _fake_report(verdicts: list[str | None]) -> diff.Report:
    results = []
    for i, v in enumerate(verdicts):
        s = Scenario(0, i, "s1", _s1_spec())
        obs = Observation()
        d = [] if v is None else [Difference("events", 0, [], [{"event": "C_BAD_STE"}])]
        results.append(CaseResult(s, obs, obs, d, verdict=v,
                                  known=[] if v in (None, "unexplained") else ["l1std-span"]))
    return diff.Report("QEMU emulator version 10.0.2", "/usr/bin/qemu-system-aarch64", 0, 0,
                       results, 1.0)


def test_cli_json_keys_and_exit_codes(capsys, monkeypatch):
    monkeypatch.setattr(diff, "_resolve_qemu", lambda path: "/usr/bin/qemu-system-aarch64")
    monkeypatch.setattr(diff, "run", lambda *a, **k: _fake_report([None, "qemu-deviation"]))
    assert diff.main(_args("--json", "--cases", "2")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"qemu_version", "cases", "agree", "divergences"} <= set(doc)
    assert (doc["cases"], doc["agree"], len(doc["divergences"])) == (2, 1, 1)
    d = doc["divergences"][0]
    assert {"case", "ours", "qemu", "class"} <= set(d) and d["class"] == "qemu-deviation"
    assert d["qemu"] == {"events@step0": [{"event": "C_BAD_STE"}]}
    monkeypatch.setattr(diff, "run", lambda *a, **k: _fake_report([None, "unexplained"]))
    assert diff.main(_args("--cases", "2")) == 1
    assert "UNEXPLAINED" in capsys.readouterr().out


# ====================================================================== the qtest client
FAKE_QEMU = r'''
import os, socket, sys
if "--version" in sys.argv:
    print("QEMU emulator version 10.0.2 (fake)")
    sys.exit(0)
path = sys.argv[sys.argv.index("-qtest") + 1].split(":", 1)[1]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
idr = {IDR}
buf = b""
while True:
    data = s.recv(65536)
    if not data:
        sys.exit(0)
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        words = line.decode().split()
        if words[0] == "endianness":
            reply = "OK little"
        elif words[0].startswith("read"):
            addr = int(words[1], 16)
            if addr == 0xDEAD:
                os.abort()
            if addr == 0xBAD:
                reply = "FAIL bad address"
            elif addr == 0x4010008000:
                reply = "OK 0x%x" % {EDU}
            elif addr == 0x10000000:
                reply = "OK 0x10000ed"
            else:
                reply = "OK 0x%x" % idr.get(addr - 0x09050000, 0)
        else:
            reply = "OK"
        s.sendall((reply + "\n").encode())
'''


@pytest.fixture
def fake_qemu(tmp_path):
    idr = {0x0: IDR_10["IDR0"], 0x4: IDR_10["IDR1"], 0xC: IDR_10["IDR3"], 0x14: IDR_10["IDR5"],
           0x1C: 1}
    path = tmp_path / "qemu-system-aarch64"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_QEMU)
                    .replace("{IDR}", repr(idr)).replace("{EDU}", hex(EDU_ID)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_peer_start_batching_and_cleanup(fake_qemu):
    with QemuPeer(fake_qemu, timeout=10) as p:
        assert p.version_tuple == (10, 0, 2) and p.sid == 8 and p.features == F10
        tmp = p.tmp
        assert os.path.isdir(tmp)
        before = p.round_trips
        for i in range(1000):  # pipelined in bounded batches: no deadlock
            p.mmio.write(0x98, i)
        p.memwrite(DATA, bytes(200_000))  # a multi-command write
        p.flush()
        assert p.round_trips - before <= 1000 // 64 + 8
        with pytest.raises(PeerError, match="FAIL bad address"):
            p.read(0xBAD)
    assert not os.path.exists(tmp) and p.proc.returncode is not None


def test_peer_crash_is_reported_and_cleaned_up(fake_qemu):
    p = QemuPeer(fake_qemu, timeout=10).start()
    tmp = p.tmp
    with pytest.raises(PeerCrash) as e:
        p.read(0xDEAD)
    assert e.value.returncode == -6 and "SIGABRT" in str(e.value)
    p.close()
    assert not os.path.exists(tmp)


# ====================================================================== against QEMU
@needs_qemu
def test_fixed_seed_slice_is_fully_explained():
    binary = require_qemu()
    t0 = time.perf_counter()
    results = list(diff.run_cases(binary, seed=0, count=30))
    assert time.perf_counter() - t0 < 60
    assert len(results) == 30
    unexplained = [(r.scenario.name, [(d.aspect, d.step, d.ours, d.qemu) for d in r.diffs])
                   for r in results if r.verdict is not None and r.verdict not in EXPLAINED]
    assert unexplained == []
    assert sum(r.verdict is None for r in results) >= 10  # most cases agree outright


@needs_qemu
def test_prototype_dma_through_qemus_smmu():
    """qemu-peer.md §4 with our driver and page-table builder: data lands at the
    translated PA; an unmapped IOVA gives one (collapsed) F_TRANSLATION."""
    from vsmmu.sw.alloc import Allocator
    from vsmmu.sw.driver import SmmuDriver, cd, ste_s1
    from vsmmu.sw.pagetable import PageTable

    with QemuPeer(require_qemu()) as p:
        p.load_buffer(bytes(range(256)) * 8, SCRATCH)
        alloc = Allocator(*HOST_TABLES)
        drv = SmmuDriver(p.mmio, p.mem, alloc)
        drv.reset(two_level=False, log2_sids=8)
        pt = PageTable(p.mem, alloc, stage=1, granule=4096, tsz=25)
        pt.map(0x200000, DATA, 0x1000)
        ptr = alloc.alloc(64, 64)
        p.mem.write(ptr, cd(1, pt.ttb, 25, ips=44).to_bytes(64, "little"))
        drv.write_ste(p.sid, ste_s1(ptr))
        p.mem.write(DATA, bytes(0x1000))
        p.dma_to_memory(0x200800, 0, 256)
        assert p.memread(DATA + 0x800, 256) == bytes(range(256))
        assert drv.events().faults == ()
        p.dma_to_memory(0x300000, 0, 64)
        faults = drv.events().faults
        assert len(faults) == 16  # one per 4 bytes
        records = collapse([normalise(f.encode()) for f in faults])
        assert [(d["event"], d["addr"], d["rnw"]) for d in records] == [
            ("F_TRANSLATION", 0x300000, False)]


@needs_qemu
def test_rediscovers_the_s2aa64_crash():
    binary = require_qemu()
    with QemuPeer(binary) as p:
        if not p.features.s2p:
            pytest.skip(f"{p.version}: no stage 2 (IDR0.S2P=0)")
    # the first bad-ste scenario of seed 0 with S2AA64=0, searched deterministically
    s = next(s for s in scenarios(0, 3000)
             if s.spec.get("ste_mut") == {"S2AA64": 0})
    r = next(diff.run_cases(binary, s.seed, 1, start=s.index))
    assert r.verdict == "peer-crash" and r.known == ["crash-s2aa64-0"]
    assert "decode_ste_s2_cfg" in r.qemu.crash



def _replay(binary: str, script: str, bios: str, linger: float) -> tuple[list[str], int | None]:
    """QEMU's answers to a qtest script fed on stdin, one a line, and its exit status
    if it ended by itself within `linger` seconds of the last answer (None: it did
    not; it does not exit at the end of its input, and is then stopped)."""
    from fuzz.peers.qemu_peer import MACHINE_ARGS

    lines = script.splitlines()
    proc = subprocess.Popen([binary, *MACHINE_ARGS, "-bios", bios, "-qtest", "stdio",
                             "-qtest-log", "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    def feed():  # in a thread: QEMU's answers fill the other pipe meanwhile
        proc.stdin.write(script)
        proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()
    try:
        answers = []
        while len(answers) < len(lines) and (line := proc.stdout.readline()):
            answers.append(line.rstrip("\n"))
        try:
            return answers, proc.wait(linger)
        except subprocess.TimeoutExpired:
            return answers, None
    finally:
        proc.kill()
        proc.wait()


@needs_qemu
@pytest.mark.parametrize("index, dies", [(22, False), (6, True)])  # l1std-span; cd-ips-52
def test_emit_qtest_writes_a_script_qemu_alone_replays(tmp_path, capsys, index, dies):
    binary = require_qemu()
    path = tmp_path / "case.qtest"
    parser = argparse.ArgumentParser()
    diff.add_arguments(parser)
    args = parser.parse_args(["--seed", "0", "--start", str(index), "--cases", "1",
                              "--emit-qtest", str(path)])
    assert diff.main(args) == 0  # a known divergence
    script = path.read_text()
    assert "\n\n" not in script  # an empty line would abort QEMU's qtest server
    assert f"--seed 0 --start {index} --cases 1" in script.splitlines()[0]
    assert "expected (ours):" in script and "observed (QEMU):" in script
    bios = tmp_path / "wfi.bin"
    bios.write_bytes(bytes.fromhex("7f2003d5ffffff17"))
    answers, status = _replay(binary, script, str(bios), linger=5.0 if dies else 0.5)
    lines = script.splitlines()
    checked = 0
    for i, (command, answer) in enumerate(zip(lines, answers, strict=False)):
        recorded = lines[i + 1] if i + 1 < len(lines) else ""
        edu_poll = command.startswith("readq ") and command.endswith("98")  # DMA CMD
        if recorded.startswith("# QEMU: ") and not edu_poll:
            assert answer == recorded.removeprefix("# QEMU: "), (i, command)
            checked += 1
    assert checked > 20
    assert len(answers) == len(lines)
    if dies:  # the replay kills QEMU as the recording did (SIGABRT: an assertion)
        assert "# QEMU died here" in script and status == -signal.SIGABRT
    else:
        assert status is None
