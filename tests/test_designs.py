"""vSMMU designs under test (vsmmu/hyp/designs/): each profile's distinctive
behaviours, with golden values worked out by hand from its source, and the
interfaces that select a design (platform files, --design, sidecars).

Bit positions used below (IHI 0070 §5.2 STE; §4.1 commands):
  STE  V 0, Config 3:1, S1ContextPtr 51:6, S1DSS 65:64, MEV 83, S1STALLD 91
  CMD  opcode 7:0, SSec 10; TLBI_NH_ASID: VMID 47:32, ASID 63:48;
       TLBI_S12_VMALL (0x28): VMID 47:32; CMD_SYNC: CS 13:12
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fuzz.cli import main as cli
from fuzz.compare import JUDGED, compare, format_markdown
from fuzz.program import load, parse
from fuzz.results import Finding
from fuzz.targets import runner_for
from properties.monitor import Monitor
from properties.predicates import command_confined
from properties.proofs import prove_all
from properties.violations import S2_AUTHORITY, Violation
from vsmmu.guests.guest import GuestKernel
from vsmmu.hyp.designs import PROFILES, profile
from vsmmu.hyp.designs.pkvm import PKVM
from vsmmu.hyp.designs.xen_v3 import XEN_V3
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.hyp.transfer import (
    REFERENCE,
    Action,
    GuestContext,
    HostStream,
    guest_command,
    vste_to_pste,
)
from vsmmu.platform import PlatformError, default_platform, dump_platform, platform_from_dict

S2_STE = (0b110 << 1) | 1 | (7 << 128)  # a stage-2-only STE of VMID 7 (S2VMID: 143:128)


def xen(vmid: int = 5) -> GuestContext:
    return GuestContext(vmid, {0: 0x10}, ats=False, design=XEN_V3)


# ------------------------------------------------------------------ the list
def test_every_profile_cites_a_source_for_every_choice():
    assert {"vsmmu", "xen-v3", "pkvm"} <= set(PROFILES)
    for p in PROFILES.values():
        assert p.summary and len(p.choices) >= 8, p.name
        for c in p.choices:
            assert c.topic and c.choice and c.source, (p.name, c)


def test_designs_json_shape(capsys):
    assert cli(["designs", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in out["designs"]][:1] == ["vsmmu"]
    for d in out["designs"]:
        assert set(d) == {"name", "summary", "choices"}
        assert all(set(c) == {"topic", "choice", "source"} for c in d["choices"])


# ------------------------------------------------------------- xen-v3 rules
@pytest.mark.parametrize(("cmd", "action", "out"), [
    # TLBI_NH_ASID ASID=2: widened to TLBI_S12_VMALL of the guest's VMID 5
    ((2 << 48) | 0x11, Action.FORWARD, (5 << 32) | 0x28),
    (0x12, Action.FORWARD, (5 << 32) | 0x28),  # TLBI_NH_VA
    (0x30, Action.FORWARD, (5 << 32) | 0x28),  # TLBI_NSNH_ALL
    (0x10, Action.NOP, 0),  # TLBI_NH_ALL: "unhandled", skipped
    (0x13, Action.NOP, 0),  # TLBI_NH_VAA
    (0x05, Action.NOP, 0), (0x06, Action.NOP, 0),  # CFGI_CD, CFGI_CD_ALL: no-ops
    (0x04, Action.NOP, 0),  # CFGI_STE_RANGE / CFGI_ALL: no-op for any Range
    (0x403, Action.CFGI_STE, 0),  # CFGI_STE, SSec=1 not looked at
    (0x3046, Action.SYNC, 0),  # CMD_SYNC CS=0b11: CS never decoded
    (0x40, Action.NOP, 0), (0x7F, Action.NOP, 0), (0xFF, Action.NOP, 0),  # never CERROR
])
def test_xen_v3_commands(cmd, action, out):
    assert guest_command(cmd, xen()) == (action, out)


def test_the_reference_refuses_what_xen_v3_skips():
    ours = GuestContext(5, {0: 0x10}, ats=False)
    for cmd in (0x7F, 0x3046, 0x403):
        assert guest_command(cmd, ours)[0] == Action.ILL


def test_xen_v3_reads_only_dword_0_of_the_vste():
    # V=1, Config=S1 (0b101), S1ContextPtr 0x4000_0000; S1DSS=2 and S1STALLD in dword 1
    vste = 1 | 0b101 << 1 | 0x4000_0000 | 2 << 64 | 1 << 91
    host = HostStream(S2_STE, ssidsize=0, ats=False, oas_bits=40, design=XEN_V3)
    pste = vste_to_pste(vste, host)
    assert pste >> 1 & 7 == 0b111  # nested
    assert pste & ((1 << 52) - 1) & ~0x3F == 0x4000_0000
    assert pste >> 64 & 3 == 0 and not pste >> 91 & 1  # dword 1 is Xen's, not the guest's
    assert not pste >> 83 & 1  # no MEV
    assert pste >> 128 & 0xFFFF == 7  # the hypervisor's VMID
    ours = vste_to_pste(vste, replace(host, ssidsize=8, design=REFERENCE))
    assert ours >> 64 & 3 == 2 and ours >> 91 & 1 and ours >> 83 & 1


def _hyp(design: str) -> Hypervisor:
    return Hypervisor(replace(default_platform(), design=design))


@pytest.mark.parametrize(("design", "consumed"), [("vsmmu", 64), ("xen-v3", 100)])
def test_commands_consumed_in_one_trap(design, consumed):
    kernel = GuestKernel(_hyp(design), "g0")
    drv = next(iter(kernel.drivers.values()))
    before = drv._cons()
    drv.submit(*[0x01] * 100)  # PREFETCH_CONFIG, SID 0: one PROD write
    assert (drv._cons() - before) % (1 << 20) == consumed


def test_xen_v3_gives_a_domu_one_vsmmu_for_both_smmus():
    hyp = _hyp("xen-v3")
    kernel = GuestKernel(hyp, "g0")
    [vsmmu] = hyp.guests["g0"].vsmmus.values()
    # vSIDs first-free in device order (21/23): nic0, disk0 on smmu0, nvme0 on smmu1
    assert {v: (vsmmu.homes[v].name, p) for v, p in vsmmu.vsids.items()} == {
        0: ("smmu0", 0x10), 1: ("smmu0", 0x13), 2: ("smmu1", 0x20)}
    sent = []
    for name, phys in hyp.smmus.items():
        def capture(*cmds, name=name, submit=phys.drv.submit):
            sent.extend((name, c) for c in cmds)
            submit(*cmds)
        phys.drv.submit = capture
    drv = kernel.drivers["vsmmu"]
    drv.submit(0x11 | 1 << 48)  # TLBI_NH_ASID ASID=1: widened, for every SMMU served
    vmid = hyp.guests["g0"].vmid
    # ...and completed before the next command, as Xen's flush does (CMD_SYNC 0x46)
    assert sent == [("smmu0", 0x28 | vmid << 32), ("smmu1", 0x28 | vmid << 32),
                    ("smmu0", 0x46), ("smmu1", 0x46)]
    drv.sync()
    sent.clear()
    drv.write_ste(2, 0x1 | 0b100 << 1)  # vSID 2, V=1 Config=bypass: nvme0's STE only
    assert sent and {n for n, _ in sent} == {"smmu1"}
    assert {c >> 32 & 0xFFFF_FFFF for _, c in sent if c & 0xFF == 0x03} == {0x20}
    # A command is confined to the guest's streams on the SMMU it goes to: CFGI_CD of
    # pSID 0x20 (opcode 0x05, SID 63:32) is nvme0's on smmu1, on smmu0 nobody's of g0.
    cfgi_cd = 0x05 | 0x20 << 32
    assert command_confined(cfgi_cd, vsmmu.context("smmu1"))
    assert not command_confined(cfgi_cd, vsmmu.context("smmu0"))


def test_a_design_that_does_not_park_leaves_the_old_owner_live():
    """Parking (Design.park): nic0 taken from g0 keeps g0's stage 2 unless parked; an
    unowned stream whose STE still translates is an s2-authority finding."""
    for park in (True, False):
        hyp = _hyp("vsmmu")
        hyp.design = replace(hyp.design, park=park)
        monitor = Monitor(hyp, z3_checks=False)
        hyp.deassign("nic0")  # smmu0 pSID 0x10
        ste = hyp.smmus["smmu0"].drv.read_ste(0x10)
        if park:
            monitor.check()
            assert ste & 0xF == 0x1  # V=1, Config=abort (0b000, bits 3:1)
            continue
        assert ste >> 1 & 7 == 0b110  # Config=S2: g0's stage 2, still live
        with pytest.raises(Violation) as e:
            monitor.check()
        assert e.value.invariant == S2_AUTHORITY and e.value.witness["guest"] is None


def test_xen_v3_advertises_no_ssids_ats_or_msis():
    vsmmu = _hyp("xen-v3").guests["g0"].vsmmus["vsmmu"]
    assert (vsmmu.feat.ssidsize, vsmmu.feat.ats, vsmmu.feat.msi) == (0, False, False)
    # IDR0 bit 13 (MSI) and bit 10 (ATS) clear, IDR1.SSIDSIZE (10:6) 0
    assert not vsmmu.read(0x0) & (1 << 13 | 1 << 10) and not vsmmu.read(0x4) >> 6 & 0x1F


# ------------------------------------------------------- under every invariant
def _ste_text(byte0: int) -> str:
    return f"{byte0:02x}" + "00" * 63


@pytest.mark.parametrize(("byte0", "message"), [
    (0x03, "vSTE Config 0b001"),  # V=1, Config=0b001 (reserved): BUG()
    (0x0B, "stage 1 over a live stage-1 STE"),  # V=1, Config=S1 over the boot's S1 STE
])
def test_xen_v3_stops_on_guest_vstes(byte0, message):
    ops = parse(f"vste guest=0x0 smmu=0x0 vsid=0x0 ste={_ste_text(byte0)}")
    v = runner_for("system", design="xen-v3", z3=False).run(ops).violation
    assert v is not None and v.invariant == "no-crash"
    assert v.witness["exception"] == "HypervisorPanic" and message in v.witness["message"]
    assert runner_for("system", z3=False).run(ops).violation is None


def test_xen_v3_forwards_the_physical_stream_id():
    """A stage-1 permission fault reaches the guest as the raw record, pSID 0x10:
    event-confinement fails on the design, by proof and by replay."""
    ops = parse("dma device=0x0 iova=0x10000000 size=0x0 flags=0x2 ssid=0x0")
    v = runner_for("system", design="xen-v3", z3=False).run(ops).violation
    assert v is not None and v.invariant == "event-confinement"
    assert v.witness["record"] >> 32 & 0xFFFFFFFF == 0x10  # SID: bits 63:32
    assert runner_for("system", z3=False).run(ops).violation is None
    proofs = {(r.property, r.result) for r in prove_all(_hyp("xen-v3"))}
    assert ("event-confinement", "violated") in proofs
    assert ("s2-authority", "proved") in proofs and ("cmd-confinement", "proved") in proofs


# ------------------------------------------------------------- interfaces
def test_platform_files_name_the_design():
    p = platform_from_dict({**dump_platform(default_platform()), "design": "xen-v3"})
    assert p.design == "xen-v3" and dump_platform(p)["design"] == "xen-v3"
    assert "design" not in dump_platform(default_platform())  # ours: implied
    with pytest.raises(PlatformError, match="design must be a string, got integer"):
        platform_from_dict({**dump_platform(default_platform()), "design": 5})
    with pytest.raises(PlatformError, match=r"unknown design 'nope' \(known: vsmmu, xen-v3"):
        Hypervisor(replace(default_platform(), design="nope"))
    assert profile("xen-v3").design is XEN_V3


def test_design_option_refuses_unknown_names(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["check", "--design", "nope", "x.txt"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_sidecars_record_the_design():
    f = Finding("no-crash", "no-crash:X", "a", 0, {}, "system", design="xen-v3")
    back = Finding.from_sidecar(json.dumps(f.sidecar()).encode(), "a")
    assert back.design == "xen-v3" and f.as_dict()["design"] == "xen-v3"
    old = {k: v for k, v in f.sidecar().items() if k != "design"}
    assert Finding.from_sidecar(json.dumps(old).encode(), "a").design == "vsmmu"


# ------------------------------------------------------------- vsmmu compare
DESIGN_WITNESSES = Path(__file__).resolve().parents[1] / "corpora" / "designs"


def test_design_witnesses_fail_their_design_and_pass_ours():
    """corpora/designs/<design>/<invariant>.txt: the minimized witnesses `vsmmu
    compare` reported (README); each still violates its invariant on its design,
    and our design runs it clean."""
    files = sorted(DESIGN_WITNESSES.glob("*/*.txt"))
    assert files
    ours = runner_for("system", z3=False)
    for path in files:
        design, invariant = path.parent.name, path.stem
        v = runner_for("system", design=design, z3=False).run(load(str(path))).violation
        assert v is not None and v.invariant == invariant, (path, v)
        assert ours.run(load(str(path))).violation is None, path


def test_compare_runs_every_design_under_every_invariant(tmp_path):
    r = compare(["vsmmu", "xen-v3"], budget=3, out=tmp_path, minimize_budget=2)
    got = {(c.design, c.invariant): c for c in r.cells}
    assert {d for d, _ in got} == {"vsmmu", "xen-v3"} and len(got) == 2 * len(JUDGED)
    assert all(c.result in ("proved", "held") for c in r.cells if c.design == "vsmmu")
    assert got["vsmmu", "s2-authority"].result == "proved"
    assert got["vsmmu", "no-cross-guest-dma"].execs > 0
    for invariant in ("event-confinement", "no-crash"):  # both fire within seconds
        c = got["xen-v3", invariant]
        assert c.result == "violated" and c.witness_file and c.check, c
        v = runner_for("system", design="xen-v3", z3=False).run(load(c.witness_file)).violation
        assert v is not None and v.invariant == invariant
    out = r.as_dict()
    assert out["designs"] == ["vsmmu", "xen-v3"]
    assert {"design", "invariant", "result", "execs", "seconds", "witness",
            "explanation"} <= set(out["results"][0])
    assert "| event-confinement | proved | VIOLATED" in format_markdown(r)


# --------------------------------------------------------------- pkvm rules
def pkvm(owns_all: bool = True) -> GuestContext:
    return GuestContext(5, {0x10: 0x10}, ats=True, design=PKVM, owns_all=owns_all)


@pytest.mark.parametrize(("cmd", "action", "out"), [
    ((1 << 64) | 0x03, Action.CFGI_STE, 0),  # CFGI_STE Leaf=1 (bit 64): re-shadow
    (0x03, Action.PANIC, 0),  # Leaf=0: refused (a fatal WARN)
    ((31 << 64) | 0x04, Action.FORWARD, (31 << 64) | 0x04),  # CFGI_ALL: Range 31 (68:64)
    ((3 << 64) | 0x04, Action.PANIC, 0),
    ((2 << 48) | 0x11, Action.FORWARD, (2 << 48) | (5 << 32) | 0x11),  # NH_ASID, VMID 0
    ((3 << 32) | 0x11, Action.PANIC, 0),  # any other VMID
    (0x10, Action.PANIC, 0), (0x20, Action.PANIC, 0), (0x28, Action.PANIC, 0),
    (0x2A, Action.PANIC, 0),  # NH_ALL, EL2_ALL, S12_VMALL, S2_IPA
    (0x1046, Action.FORWARD, 0x1046),  # CMD_SYNC CS=IRQ (13:12): forwarded as written
    (0x0046, Action.SYNC, 0),
    ((0x10 << 32) | 0x40, Action.FORWARD, (0x10 << 32) | 0x40),  # ATC_INV: default allow
    (0x30, Action.FORWARD, 0x30), (0x7F, Action.FORWARD, 0x7F),  # NSNH_ALL, unknown
])
def test_pkvm_commands(cmd, action, out):
    assert guest_command(cmd, pkvm()) == (action, out)


def test_global_invalidations_are_confined_only_for_the_owner_of_every_stream():
    cfgi_all = (31 << 64) | 0x04
    assert command_confined(cfgi_all, pkvm(owns_all=True))
    assert not command_confined(cfgi_all, pkvm(owns_all=False))
    assert not command_confined(0x7F, pkvm(owns_all=True))  # an unknown opcode never


def test_pkvm_copies_eats_and_takes_stage_2_configs():
    host = HostStream(S2_STE, ssidsize=8, ats=False, oas_bits=40, design=PKVM)
    vste = 1 | 0b101 << 1 | 0x4000_0000 | 1 << 92  # S1, EATS=0b01 (93:92)
    assert vste_to_pste(vste, host) >> 92 & 3 == 1  # full ATS reaches hardware
    assert vste_to_pste(vste, replace(host, design=REFERENCE)) >> 92 & 3 == 0
    assert vste_to_pste(1 | 0b110 << 1, host) == S2_STE  # Config S2: the hypervisor's
    assert vste_to_pste(1 | 0b110 << 1, replace(host, design=REFERENCE)) == 0


def test_pkvm_world_one_host_owning_every_device():
    hyp = _hyp("pkvm")
    assert {g for g, _ in hyp.assigned.values()} == {"g0"}
    assert all(v == hyp.devices[d].sid for d, (_, v) in hyp.assigned.items())
    assert hyp.guests["g1"].vsmmus == {} and not hyp.takes_devices("g1")
    hyp.deassign("nic0")
    with pytest.raises(ValueError, match="g1 has no IOMMU interface"):
        hyp.assign("nic0", "g1")
    vsmmu = hyp.guests["g0"].vsmmus["smmu0"]
    assert vsmmu.physical_ste(0x11)[0] >> 1 & 7 == 0  # SMMUEN=0, GBPA bypass: abort
