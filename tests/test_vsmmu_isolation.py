"""Cross-guest isolation through the vSMMU, driven from inside the guests.

Two guests on the default platform (tests/vsmmu_env.py has the device table):
legal DMA works inside each guest, and every way a guest can try to reach the
other one — stage-1 outputs beyond its stage 2, stage-2 fields in its vSTEs,
bypass, commands naming streams or VMIDs that are not its own, stage-2 and
EL2/EL3 invalidations, its devices after deassignment, MSIs — is stopped, and
the event it deserves reaches it (with its vSID) or nobody.

Expected words are worked out by hand from IHI 0070 field positions:
  event dword 0: ID 7:0, SID 63:32;  dword 1 (bits 64+): RnW bit 35, S2 bit 39,
  CLASS bits 41:40 (CD 0, TT 1, IN 2), TTRnW bit 44;  dword 2: InputAddr;
  dword 3: IPA bits 51:12 (stage-2 faults) or FetchAddr bits 51:3.
  Commands, dword 0: OP 7:0, SSID 31:12, SID / VMID from bit 32, ASID 63:48;
  dword 1: Leaf bit 0, Addr 63:12.
"""

from __future__ import annotations

import pytest
from vsmmu_env import (
    ABORT_STE,
    GUEST_S1_DW1,
    IOVA,
    K4,
    MSI_IOVA,
    RAM,
    RAM_END,
    VEnv,
    cmd_names,
    dw,
    dwords,
    fresh,
    nested_ste,
    s2_only_ste,
)

from vsmmu.arch.layouts import STE, Config, Op
from vsmmu.hyp.hypervisor import Msi
from vsmmu.sw.driver import cd, cmd, ste_bypass, ste_s1

SYNC = 0x46  # CMD_SYNC, CS=none
RNW, S2, CLASS_TT, CLASS_IN, TTRNW = 1 << 35, 1 << 39, 1 << 40, 2 << 40, 1 << 44
F_TRANSLATION, C_BAD_STE, F_TRANS_FORBIDDEN = 0x10, 0x04, 0x07


@pytest.fixture
def env():
    yield from fresh()


@pytest.fixture(scope="module")
def shared():
    """One platform for the command tests: nic0 and disk0 (g0, smmu0), nic1 (g1,
    smmu0) and gpu0 (g1, smmu1) attached, each mapping IOVA.  Each test re-populates
    the caches it looks at and leaves the queues running."""
    gen = fresh()
    env = next(gen)
    for guest, dev in (("g0", "nic0"), ("g0", "disk0"), ("g1", "nic1"), ("g1", "gpu0")):
        env.dma_setup(guest, dev)
    yield env
    gen.close()


# ----------------------------------------------------------------- legal DMA
def test_dma_works_inside_each_guest(env):
    cases = [("g0", "nic0", "smmu0", 0x10), ("g0", "disk0", "smmu0", 0x13),
             ("g0", "nvme0", "smmu1", 0x20), ("g1", "nic1", "smmu0", 0x11),
             ("g1", "gpu0", "smmu1", 0x10)]
    landed = {}
    for guest, dev, smmu, psid in cases:
        _, buf = env.dma_setup(guest, dev)
        data = f"<{dev} of {guest}>".encode().ljust(16, b".")
        r = env.hyp.dma(dev, IOVA + 0x40, 16, write=True, data=data)
        assert r.ok, r
        assert r.pa == env.pa(guest, buf) + 0x40
        assert env.owner(r.pa) == guest
        assert env.guest(guest).view.read(buf + 0x40, 16) == data
        back = env.hyp.dma(dev, IOVA + 0x40, 16)
        assert back.ok and back.data == data
        [(pa, _, ini)] = env.dma_writes(env.take_accesses())
        assert (pa, ini.smmu, ini.sid) == (r.pa, smmu, psid)
        landed[dev] = r.pa
    # nic0 and gpu0 are both pSID 0x10 (on different SMMUs): different guests' pages.
    assert env.owner(landed["nic0"]) == "g0" and env.owner(landed["gpu0"]) == "g1"
    assert len(set(landed.values())) == len(cases)
    assert env.all_guest_events() == {}
    assert env.hyp.unrouted == []


# ------------------------------------------------ stage 1 beyond the stage 2
def test_stage1_output_outside_the_guest_ipa_space(env):
    g1 = env.guest("g1")
    targets = {
        "just past RAM": RAM_END,
        "last page of the 40-bit IPA space": (1 << 40) - K4,
        "just below RAM": RAM - K4,
        "IPA 0": 0,
        "g1's RAM, its PA used as an IPA": g1.pages[RAM],
        "g1's doorbell PA": g1.doorbell,
    }
    dom, _ = env.dma_setup("g0", "nic0")
    env.take_accesses()
    for n, (what, ipa) in enumerate(targets.items()):
        iova = 0x100_0000 + n * K4
        env.g0.dma_map(dom, iova, ipa, K4)
        r = env.hyp.dma("nic0", iova + 8, 8, write=True, data=b"attacker")
        assert not r.ok, what
        assert env.guest_events("g0", "smmu0") == [
            (F_TRANSLATION | 0 << 32, S2 | CLASS_IN, iova + 8, ipa)], what
    assert env.dma_writes(env.take_accesses()) == []
    assert env.all_guest_events() == {}  # g1 heard nothing, g0 nothing more
    assert env.hyp.unrouted == [] and env.hyp.msis == []


def test_stage1_output_beyond_the_advertised_ipa_size(env):
    # The CD's IPS is the vSMMU's OAS (40 bits): an output at 2^40 is a stage-1
    # address-size fault (ID 0x11), no stage 2 involved.
    dom, _ = env.dma_setup("g0", "nic0")
    env.g0.dma_map(dom, 0x20_0000, 1 << 40, K4)
    assert not env.hyp.dma("nic0", 0x20_0000, 4).ok
    assert env.guest_events("g0", "smmu0") == [(0x11, RNW | CLASS_IN, 0x20_0000, 0)]
    # A CD claiming a 48-bit IPS gets the same IPA past stage 2's input size: S2 fault.
    drv = env.drv("g0", "smmu0")
    drv.write_cd(0, 0, cd(dom.asid, dom.table.ttb, dom.tsz, ips=48))
    assert not env.hyp.dma("nic0", 0x20_0000, 4).ok
    assert env.guest_events("g0", "smmu0") == [
        (F_TRANSLATION, RNW | S2 | CLASS_IN, 0x20_0000, 1 << 40)]
    assert env.dma_writes() == []


def test_guest_structures_outside_its_memory_are_never_read(env):
    """CD pointer and TTB0 aimed at g1's RAM (PAs used as IPAs): the nested walk
    translates them through g0's stage 2, which faults (CLASS=CD / CLASS=TT), and the
    SMMU reads nothing of g1's."""
    dom, _ = env.dma_setup("g0", "nic0")
    target = env.guest("g1").pages[RAM + 0x3000]
    drv = env.drv("g0", "smmu0")
    env.take_accesses()
    drv.write_ste(0, ste_s1(target))  # S1ContextPtr = g1's page
    assert not env.hyp.dma("nic0", IOVA, 4).ok
    assert env.guest_events("g0", "smmu0") == [(F_TRANSLATION, RNW | S2, IOVA, target)]
    cds = drv.alloc_cd_table(0, 0)
    drv.write_cd(0, 0, cd(dom.asid, target, dom.tsz, ips=40))  # TTB0 = g1's page
    drv.write_ste(0, ste_s1(cds.ptr))
    assert not env.hyp.dma("nic0", IOVA, 4).ok
    assert env.guest_events("g0", "smmu0") == [
        (F_TRANSLATION, RNW | S2 | CLASS_TT | TTRNW, IOVA, target)]
    for _, pa, _, ini in env.take_accesses():
        assert env.owner(pa) in ("g0", "hyp"), (hex(pa), ini)
    assert env.all_guest_events() == {}


# ------------------------------------------------ stage-2 fields in a vSTE
def test_vste_stage2_fields_never_reach_hardware(env):
    env.dma_setup("g0", "nic0")
    g0v, g0ttb = env.vmid("g0"), env.s2_ttb("g0")
    legit = env.vste("g0", "smmu0", 0)
    expected = nested_ste(g0v, g0ttb, dwords(legit)[0] & ~0xF, GUEST_S1_DW1)
    assert env.pste("smmu0", 0x10) == expected
    evil = STE.encode(
        legit, S2VMID=env.vmid("g1"), S2TTB=env.s2_ttb("g1"), S2T0SZ=16, S2SL0=2, S2TG=1,
        S2PS=5, S2R=0, S2AFFD=1, S2PTW=1, S2FWB=1, S2IR0=2, S2OR0=2, S2SH0=1, STRW=2,
        SHCFG=3, NSCFG=3, PRIVCFG=2, INSTCFG=2, MEMATTR=0xF, MTCFG=1, ALLOCCFG=0xF, DCP=1,
        PPAR=1, DRE=1, CONT=0xF,
    )
    env.take_cmds()
    env.put_vste("g0", "smmu0", 0, evil)
    assert env.pste("smmu0", 0x10) == expected
    # not rewritten: only the guest's CFGI_STE, for its own pSID 0x10
    assert [c for _, c in env.take_cmds() if c & 0xFF == Op.CFGI_STE] == [0x10_0000_0003]
    r = env.hyp.dma("nic0", IOVA, 4, write=True, data=b"mine")
    assert r.ok and env.owner(r.pa) == "g0"


@pytest.mark.parametrize("config", [Config.S2_TRANS, Config.NESTED])
def test_vste_with_the_other_guests_stage2_is_c_bad_ste(env, config):
    env.dma_setup("g0", "nic0")
    stolen = STE.encode(env.guest("g1").s2_ste, CONFIG=config)  # g1's VMID and S2TTB
    if config == Config.NESTED:
        stolen |= env.vste("g0", "smmu0", 0) & STE["S1CONTEXTPTR"].mask
    env.put_vste("g0", "smmu0", 0, stolen)
    assert env.pste("smmu0", 0x10) == 0  # V=0: the SMMU reports C_BAD_STE
    assert not env.hyp.dma("nic0", IOVA, 4, write=True, data=b"evil").ok
    assert env.all_guest_events() == {("g0", "smmu0"): [(C_BAD_STE, 0, 0, 0)]}
    assert env.dma_writes() == []


def test_bypass_vste_is_still_stage_2(env):
    _, buf = env.dma_setup("g0", "nic0")
    env.drv("g0", "smmu0").write_ste(0, ste_bypass())
    assert env.pste("smmu0", 0x10) == s2_only_ste(env.vmid("g0"), env.s2_ttb("g0"))
    r = env.hyp.dma("nic0", buf, 8, write=True, data=b"IOVA=IPA")  # IOVA == IPA
    assert r.ok and r.pa == env.pa("g0", buf) and env.owner(r.pa) == "g0"
    assert env.guest("g0").view.read(buf, 8) == b"IOVA=IPA"
    other = env.guest("g1").pages[RAM]
    assert not env.hyp.dma("nic0", other, 8, write=True, data=b"IOVA=IPA").ok
    # Stage-2-only faults carry the IPA (== the IOVA) and CLASS=IN, S2=1.
    assert env.guest_events("g0", "smmu0") == [(F_TRANSLATION, S2 | CLASS_IN, other, other)]
    assert [pa for pa, _, _ in env.dma_writes()] == [env.pa("g0", buf)]


# --------------------------------------------- commands naming other streams
CFGI_CD_10 = dw(0x0000_0010_0000_0005, 1)  # CFGI_CD SID=0x10 SSID=0 Leaf=1


@pytest.mark.parametrize("guest, smmu, command, physical", [
    # vSID 0 means a different device on every vSMMU: each goes to its own pSID and SMMU.
    ("g0", "smmu0", cmd(Op.CFGI_CD, SID=0, LEAF=1), [("smmu0", CFGI_CD_10)]),
    ("g1", "smmu1", cmd(Op.CFGI_CD, SID=0, LEAF=1), [("smmu1", CFGI_CD_10)]),
    ("g1", "smmu0", cmd(Op.CFGI_CD, SID=0, LEAF=1), [("smmu0", dw(0x11_0000_0005, 1))]),
    ("g0", "smmu1", cmd(Op.CFGI_CD_ALL, SID=0), [("smmu1", 0x20_0000_0006)]),
    ("g0", "smmu0", cmd(Op.CFGI_CD_ALL, SID=1), [("smmu0", 0x13_0000_0006)]),
    ("g1", "smmu1", cmd(Op.ATC_INV, SID=0, GLOBAL=1, SIZE=52),
     [("smmu1", dw(0x10_0000_0240, 52))]),
    ("g0", "smmu0", cmd(Op.ATC_INV, SID=0, GLOBAL=1, SIZE=52),
     [("smmu0", dw(0x10_0000_0240, 52))]),
    # vSIDs the guest does not have on that vSMMU: no physical command at all.
    ("g1", "smmu1", cmd(Op.CFGI_CD, SID=1, LEAF=1), []),
    ("g1", "smmu0", cmd(Op.ATC_INV, SID=1, GLOBAL=1, SIZE=52), []),
    ("g0", "smmu1", cmd(Op.CFGI_CD_ALL, SID=0x10), []),
    ("g0", "smmu0", cmd(Op.CFGI_CD, SID=0x13, LEAF=1), []),
    ("g1", "smmu0", cmd(Op.CFGI_STE, SID=1, LEAF=1), []),
    ("g1", "smmu1", cmd(Op.CFGI_STE, SID=0x10, LEAF=1), []),
    # RANGE 4 covers vSIDs 0..31: g0's only vSID there, 0, is pSID 0x20 (its own)
    ("g0", "smmu1", cmd(Op.CFGI_STE_RANGE, SID=0x10, RANGE=4), [("smmu1", 0x20_0000_0003)]),
])
def test_commands_name_only_the_guests_own_streams(shared, guest, smmu, command, physical):
    env = shared
    assert env.hyp.dma("nic0", IOVA, 4).ok and env.hyp.dma("gpu0", IOVA, 4).ok
    env.take_cmds()
    drv = env.drv(guest, smmu)
    drv.submit(command)
    drv.sync()
    expected = physical + [(smmu, SYNC)] if physical else []
    assert cmd_names(env.take_cmds()) == cmd_names(expected)
    # The CD g0 cached for nic0 (smmu0 0x10) is only ever dropped by g0's own command.
    dropped = env.hyp.smmus["smmu0"].smmu.config_cache.get_cd(0x10, 0) is None
    assert dropped == (physical == [("smmu0", CFGI_CD_10)])
    assert env.all_guest_events() == {}


def test_cfgi_ste_of_the_other_guests_vsid_does_not_rewrite_its_ste(env):
    """g1's vSID 0 on smmu1 is pSID 0x10 there; g0's vSID 0 on smmu0 is pSID 0x10 too.
    g1 changing its vSTE and invalidating it touches smmu1's 0x10 only."""
    env.dma_setup("g0", "nic0")
    env.dma_setup("g1", "gpu0")
    before = env.pste("smmu0", 0x10)
    env.take_cmds()
    env.drv("g1", "smmu1").write_ste(0, ste_bypass())
    assert env.pste("smmu1", 0x10) == s2_only_ste(env.vmid("g1"), env.s2_ttb("g1"))
    assert env.pste("smmu0", 0x10) == before
    assert {s for s, _ in env.take_cmds()} == {"smmu1"}


# ---------------------------------------------------- another guest's VMID
def _populate(env: VEnv) -> None:
    """One IOTLB entry per guest on smmu0 (ASID 1 in both)."""
    for dev in ("nic0", "nic1"):
        assert env.hyp.dma(dev, IOVA, 4).ok
    assert len(env.iotlb("smmu0")) == 2


@pytest.mark.parametrize("op, extra, physical_dw0, physical_dw1", [
    (Op.TLBI_NH_ALL, {}, 0x10, 0),
    (Op.TLBI_NH_ASID, {"ASID": 1}, 0x0001_0000_0000_0011, 0),
    (Op.TLBI_NH_VA, {"ASID": 1, "ADDR": IOVA, "LEAF": 1}, 0x0001_0000_0000_0012, IOVA | 1),
    (Op.TLBI_NH_VAA, {"ADDR": IOVA}, 0x13, IOVA),
])
def test_tlbi_with_another_guests_vmid_gets_the_guests_own(shared, op, extra, physical_dw0,
                                                          physical_dw1):
    env = shared  # nic0's and nic1's domains both use ASID 1, both map IOVA
    _populate(env)
    g0v, g1v = env.vmid("g0"), env.vmid("g1")
    assert g0v != g1v and 0 not in (g0v, g1v)
    env.take_cmds()
    drv = env.drv("g0", "smmu0")
    drv.submit(cmd(op, VMID=g1v, **extra))
    drv.sync()
    assert cmd_names(env.take_cmds()) == cmd_names(
        [("smmu0", dw(physical_dw0 | g0v << 32, physical_dw1)), ("smmu0", SYNC)])
    assert len(env.iotlb("smmu0", g1v)) == 1  # g1's translation survives
    assert env.iotlb("smmu0", g0v) == []  # g0's own is gone


def test_nsnh_all_becomes_nh_all_of_the_guests_vmid(env):
    env.dma_setup("g0", "nvme0")
    env.dma_setup("g0", "nic0")
    env.dma_setup("g1", "gpu0")
    env.dma_setup("g1", "nic1")
    for dev in ("nvme0", "nic0", "gpu0", "nic1"):
        assert env.hyp.dma(dev, IOVA, 4).ok
    g0v, g1v = env.vmid("g0"), env.vmid("g1")
    env.take_cmds()
    drv = env.drv("g1", "smmu1")
    drv.submit(cmd(Op.TLBI_NSNH_ALL))
    drv.sync()
    assert env.take_cmds() == [("smmu1", 0x10 | g1v << 32), ("smmu1", SYNC)]
    assert env.iotlb("smmu1", g1v) == []
    assert len(env.iotlb("smmu1", g0v)) == 1  # the other guest on the same SMMU
    assert len(env.iotlb("smmu0", g1v)) == 1  # the same guest on the other SMMU
    assert len(env.iotlb("smmu0", g0v)) == 1


# --------------------------------------- stage-2 / EL2 / EL3 invalidations
ILLEGAL_TLBIS = [
    (Op.TLBI_S12_VMALL, {"VMID": 2}),
    (Op.TLBI_S2_IPA, {"VMID": 2, "ADDR": RAM, "LEAF": 1}),
    (Op.TLBI_EL2_ALL, {}),
    (Op.TLBI_EL2_ASID, {"ASID": 1}),
    (Op.TLBI_EL2_VA, {"ASID": 1, "ADDR": IOVA}),
    (Op.TLBI_EL2_VAA, {"ADDR": IOVA}),
    (Op.TLBI_EL3_ALL, {}),
    (Op.TLBI_EL3_VA, {"ADDR": IOVA}),
]


@pytest.mark.parametrize("op, fields", ILLEGAL_TLBIS, ids=[op.name for op, _ in ILLEGAL_TLBIS])
def test_stage2_and_el2_el3_tlbis_are_cerror_ill(shared, op, fields):
    env = shared
    _populate(env)
    v = env.vsmmu("g0", "smmu0")
    drv = env.drv("g0", "smmu0")
    env.take_cmds()
    # CONS: RD 8:0 (index + wrap of a 256-entry queue); ERR 30:24 means something only
    # while GERROR.CMDQ_ERR is active (a previous test's may linger).
    bad = (v.read(0x9C) + 1) & 0x1FF
    drv.submit(cmd(Op.TLBI_NH_ASID, ASID=7), cmd(op, **fields), cmd(Op.TLBI_NH_ALL))
    # CONS stops on the bad command with ERR=ILL (1 << 24); GERROR.CMDQ_ERR is active.
    assert v.read(0x9C) == 1 << 24 | bad
    assert (v.read(0x60) ^ v.read(0x64)) & 1 == 1
    assert cmd_names(env.take_cmds()) == cmd_names(
        [("smmu0", 0x0007_0000_0000_0011 | env.vmid("g0") << 32)])
    env.hyp.step()
    env.hyp.step()
    assert v.read(0x9C) == 1 << 24 | bad and env.take_cmds() == []  # halted
    assert len(env.iotlb("smmu0", env.vmid("g1"))) == 1
    assert len(env.iotlb("smmu0", env.vmid("g0"))) == 1
    drv.recover()  # Linux: the bad slot becomes CMD_SYNC, then GERRORN := GERROR
    assert (v.read(0x60) ^ v.read(0x64)) & 1 == 0
    assert v.read(0x9C) & 0x1FF == (bad + 2) & 0x1FF  # the SYNC and the NH_ALL after it
    # The SYNC completes the NH_ASID forwarded before it (a physical SYNC), then NH_ALL.
    assert env.take_cmds() == [("smmu0", SYNC), ("smmu0", 0x10 | env.vmid("g0") << 32)]
    drv.sync()
    assert env.take_cmds() == [("smmu0", SYNC)]


# ------------------------------------------------ deassignment, reassignment
def test_deassigned_device_is_quarantined_then_serves_only_its_new_guest(env):
    _, buf = env.dma_setup("g0", "nic0")
    assert env.hyp.dma("nic0", IOVA, 8, write=True, data=b"g0 data!").ok
    env.hyp.deassign("nic0")
    assert env.pste("smmu0", 0x10) == ABORT_STE
    env.take_accesses()
    for write in (True, False):
        r = env.hyp.dma("nic0", IOVA, 8, write=write, data=b"stale!!!" if write else None)
        assert not r.ok and r.fault is None  # aborted, no event
    assert not env.hyp.dma("nic0", env.pa("g0", buf), 8, write=True, data=b"x" * 8).ok
    assert [a for a in env.take_accesses() if a[3].purpose == "dma"] == []
    assert env.all_guest_events() == {} and env.hyp.unrouted == []
    # g0 still has its vSTE at vSID 0, but invalidating it reaches nothing physical.
    env.take_cmds()
    env.drv("g0", "smmu0").cfgi_ste(0)
    env.drv("g0", "smmu0").submit(cmd(Op.CFGI_CD_ALL, SID=0))
    env.drv("g0", "smmu0").sync()
    assert env.take_cmds() == [] and env.pste("smmu0", 0x10) == ABORT_STE

    vsid = env.hyp.assign("nic0", "g1")
    assert vsid == 1  # lowest free vSID on g1's smmu0 vSMMU (nic1 is 0)
    assert env.pste("smmu0", 0x10) == 0  # g1's vSTE 1 is still V=0
    assert not env.hyp.dma("nic0", IOVA, 4).ok
    assert env.all_guest_events() == {("g1", "smmu0"): [(C_BAD_STE | 1 << 32, 0, 0, 0)]}
    _, buf1 = env.dma_setup("g1", "nic0")
    r = env.hyp.dma("nic0", IOVA, 8, write=True, data=b"g1 data!")
    assert r.ok and env.owner(r.pa) == "g1" and r.pa == env.pa("g1", buf1)
    assert env.guest("g0").view.read(buf, 8) == b"g0 data!"
    dom0_iova_in_g0 = env.guest("g0").pages[RAM]
    assert not env.hyp.dma("nic0", dom0_iova_in_g0, 4).ok
    assert env.all_guest_events() == {
        ("g1", "smmu0"): [(F_TRANSLATION | 1 << 32, RNW | CLASS_IN, dom0_iova_in_g0, 0)]}


# ------------------------------------------------------------ other streams
def test_events_of_unassigned_streams_reach_no_guest(env):
    env.dma_setup("g0", "nic0")
    r = env.hyp.dma("hypdma", IOVA, 4)  # the hypervisor never installed an STE for it
    assert not r.ok
    assert [(f.event, f.sid) for f in env.hyp.unrouted] == [(C_BAD_STE, 0x12)]
    assert env.all_guest_events() == {}


# ---------------------------------------------------------------- MSIs
def test_msi_doorbells(env):
    dom0, _ = env.dma_setup("g0", "nic0")
    dom1, _ = env.dma_setup("g1", "gpu0")
    assert env.g0.map_msi(dom0) == MSI_IOVA
    env.g1.map_msi(dom1)
    assert env.hyp.dma("nic0", MSI_IOVA + 0x40, 4, write=True, data=b"\x01\0\0\0").ok
    assert env.hyp.dma("gpu0", MSI_IOVA + 0x40, 4, write=True, data=b"\x02\0\0\0").ok
    assert env.hyp.msis == [Msi("g0", "smmu0", 0x10), Msi("g1", "smmu1", 0x10)]
    # g0 aims a stage-1 mapping at g1's doorbell (its PA as an IPA): not in g0's stage 2.
    g1_bell = env.guest("g1").doorbell
    env.g0.dma_map(dom0, 0x30_0000, g1_bell, K4)
    assert not env.hyp.dma("nic0", 0x30_0000 + 0x40, 4, write=True, data=b"\x03\0\0\0").ok
    assert env.guest_events("g0", "smmu0") == [
        (F_TRANSLATION, S2 | CLASS_IN, 0x30_0040, g1_bell)]
    # Any IOVA g0 maps onto its MSI window IPA still rings only g0's own doorbell.
    env.g0.dma_map(dom0, 0x40_0000, MSI_IOVA, K4)
    assert env.hyp.dma("nic0", 0x40_0000, 4, write=True, data=b"\x04\0\0\0").ok
    assert env.hyp.msis[2:] == [Msi("g0", "smmu0", 0x10)]
    assert env.all_guest_events() == {}


# ---------------------------------------------------------------- ATS
def test_translated_transactions_need_eats(env):
    """A device whose physical STE has EATS=0 (every non-ATS device, and an ATS device
    whose guest did not ask for ATS) gets F_TRANS_FORBIDDEN for a translated
    transaction, reported to its guest with the vSID."""
    env.dma_setup("g0", "nic0")
    dom1, _ = env.dma_setup("g1", "gpu0")
    target = env.guest("g0").pages[RAM]
    drv = env.drv("g0", "smmu0")
    drv.write_ste(0, ste_s1(drv._cd_tables[0].ptr, eats=1))  # nic0 is not an ATS device
    for dev, guest, smmu in (("nic0", "g0", "smmu0"), ("gpu0", "g1", "smmu1")):
        r = env.hyp.dma(dev, target, 4, write=True, data=b"evil", translated=True)
        assert not r.ok
        assert env.guest_events(guest, smmu) == [(F_TRANS_FORBIDDEN, 0, target, 0)]
    assert env.dma_writes() == []
    # With ATS granted, completions are split-stage (stage 1 only): an IPA of g1's for
    # its own IOVA; for an IOVA its stage 1 aims at g0's page, that PA as an IPA of
    # g1's, which the device's translated transaction then faults on in stage 2.
    drv1 = env.drv("g1", "smmu1")
    drv1.write_ste(0, ste_s1(drv1._cd_tables[0].ptr, eats=1))
    phys = env.hyp.smmus["smmu1"].smmu
    ok = phys.ats_request(0x10, IOVA, write=True)
    assert ok.ok and env.owner(env.pa("g1", ok.out)) == "g1"  # split-stage: an IPA
    env.g1.dma_map(dom1, 0x20_0000, target, K4)
    bad = phys.ats_request(0x10, 0x20_0000, write=True)
    assert bad.ok and bad.out == target
    r = env.hyp.dma("gpu0", bad.out, 4, write=True, data=b"evil", translated=True)
    assert not r.ok and r.fault.s2 and r.fault.ipa == target
    assert env.dma_writes() == []


def test_ats_device_translated_transactions_stay_in_its_guest(env):
    """A guest's EATS=1 becomes split-stage ATS (EATS=0b10): translated transactions
    still go through stage 2, so an ATS device cannot name another guest's PA."""
    env.dma_setup("g1", "gpu0")
    drv = env.drv("g1", "smmu1")
    drv.write_ste(0, ste_s1(drv._cd_tables[0].ptr, eats=1))
    target = env.guest("g0").pages[RAM]
    env.hyp.dma("gpu0", target, 4, write=True, data=b"evil", translated=True)
    assert env.owner(target) == "g0"
    assert env.hyp.mem.read(target, 4) != b"evil"
