"""What a guest sees of its vSMMU: every register, every vSTE field, every command
opcode, its event queue, CMD_SYNC completion and the per-trap command budget.

Register offsets and expected values are literals worked out from IHI 0070 (the
derivations are next to them).  STE words: dword 0 holds V 0, Config 3:1, S1Fmt
5:4, S1ContextPtr 51:6, S1CDMax 63:59; dword 1 holds S1DSS 1:0, S1CIR 3:2,
S1COR 5:4, S1CSH 7:6, MEV 19, S1STALLD 27, EATS 29:28 (tests/vsmmu_env.py has
the hypervisor's stage-2 dwords 2 and 3).  Commands as in test_vsmmu_isolation.
"""

from __future__ import annotations

import pytest
from smmu_env import (
    AIDR,
    CMDQ_BASE,
    CMDQ_CONS,
    CMDQ_PROD,
    CMDQEN,
    CR0,
    CR0ACK,
    CR1,
    CR2,
    EVENTQ_BASE,
    EVENTQ_CONS,
    EVENTQ_IRQ_CFG0,
    EVENTQ_IRQ_CFG1,
    EVENTQ_IRQ_CFG2,
    EVENTQ_PROD,
    EVENTQEN,
    GBPA,
    GERROR,
    GERROR_IRQ_CFG0,
    GERROR_IRQ_CFG1,
    GERROR_IRQ_CFG2,
    GERRORN,
    IDR0,
    IDR1,
    IDR2,
    IDR3,
    IDR4,
    IDR5,
    IIDR,
    IRQ_CTRL,
    IRQ_CTRLACK,
    SMMUEN,
    STATUSR,
    STRTAB_BASE,
    STRTAB_BASE_CFG,
)
from vsmmu_env import (
    ABORT_STE,
    GUEST_S1_DW1,
    IOVA,
    K4,
    MEV_DW1,
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

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import REGISTERS, STE, Op
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.hyp.virtual import VSmmu
from vsmmu.platform import DeviceSpec, GuestSpec, Platform, SmmuSpec
from vsmmu.sw.driver import cmd

SYNC = 0x46
ALL_ENABLES = SMMUEN | EVENTQEN | CMDQEN
C_BAD_STREAMID, F_STE_FETCH, C_BAD_STE, F_TRANSLATION = 0x02, 0x03, 0x04, 0x10
RNW, CLASS_IN = 1 << 35, 2 << 40
CMDQ_ERR, EVENTQ_ABT_ERR, MSI_CMDQ_ABT_ERR, MSI_GERROR_ABT_ERR = 1, 1 << 2, 1 << 4, 1 << 7


@pytest.fixture
def env():
    yield from fresh()


@pytest.fixture(scope="module")
def shared():
    """nic0 and disk0 (g0, smmu0) and gpu0 (g1, smmu1) attached with IOVA mapped.
    Tests restore every vSTE and register they change."""
    gen = fresh()
    env = next(gen)
    for guest, dev in (("g0", "nic0"), ("g0", "disk0"), ("g1", "gpu0")):
        env.dma_setup(guest, dev)
    yield env
    gen.close()


@pytest.fixture
def detached(shared) -> VSmmu:
    """A vSMMU straight out of reset with no stream attached: its register file can be
    exercised without any physical effect."""
    return VSmmu(shared.guest("g0"), [shared.hyp.smmus["smmu0"]], 40)


# ================================================================ registers
# vSMMU over the default physical SMMU (Features(): S1+S2, ASID16, VMID16, SSIDSIZE 8,
# OAS 48, all granules, 2-level ST and CD, RIL, ATS, MSI, HAD, XNX, queues 2^19):
# IDR0 = S1P (bit 1) 0x2 | TTF=AArch64 (0b10 << 2) 0x8 | COHACC (4) 0x10 | ATS (10) 0x400
#      | ASID16 (12) 0x1000 | MSI (13) 0x2000 | CD2L (19) 0x80000 | TTENDIAN=LE
#        (0b10 << 21) 0x400000 | STALL_MODEL=0b01 (<< 24) 0x1000000 | TERM_MODEL (26)
#        0x4000000 | ST_LEVEL=2-level (0b01 << 27) 0x8000000;  S2P=0, VMID16=0, HYP=0.
# IDR1 = SIDSIZE 16 (5:0) 0x10 | SSIDSIZE 8 (10:6) 0x200 | EVENTQS 19 (20:16) 0x130000
#      | CMDQS 19 (25:21) 0x2600000.
# IDR3 = HAD (2) 0x4 | RIL (10) 0x400;  XNX=0: a stage-2 feature.
# IDR5 = OAS=40 bits (0b010) 0x2 | GRAN4K (4) 0x10 | GRAN16K (5) 0x20 | GRAN64K (6) 0x40.
# IIDR = 0x43B (ARM's JEP106 code), AIDR = SMMUv3.1 (minor 1).
ID_VALUES = {IDR0: 0x0D48341A, IDR1: 0x02730210, IDR2: 0, IDR3: 0x404, IDR4: 0,
             IDR5: 0x72, IIDR: 0x43B, AIDR: 0x1}

# name: (offset, size, value at reset, value read back after writing all ones with
# every enable off).  Read-only registers keep their reset value; write-only-defined
# bits are the register's fields (RES0 elsewhere); CR0 drops PRIQEN (bit 1, no PRI)
# and VMW (8:6, no VMID wildcards); GBPA stores the fields and clears UPDATE once the
# update completes; IRQ_CTRL drops PRIQ_IRQEN; CMDQ_CONS.ERR belongs to the SMMU; the
# address fields keep bits 39:0 only, the vSMMU's OAS (IHI 0070 §3.4.3: the rest is
# not stored, as Arm recommends an emulated SMMU mask guest addresses to the IPA size).
REGISTER_TABLE = {
    "IDR0": (0x00, 4, 0x0D48341A, 0x0D48341A),
    "IDR1": (0x04, 4, 0x02730210, 0x02730210),
    "IDR2": (0x08, 4, 0, 0),
    "IDR3": (0x0C, 4, 0x404, 0x404),
    "IDR4": (0x10, 4, 0, 0),
    "IDR5": (0x14, 4, 0x72, 0x72),
    "IIDR": (0x18, 4, 0x43B, 0x43B),
    "AIDR": (0x1C, 4, 0x1, 0x1),
    "CR0": (0x20, 4, 0, 0x1D),
    "CR0ACK": (0x24, 4, 0, 0),
    "CR1": (0x28, 4, 0, 0xFFF),
    "CR2": (0x2C, 4, 0, 0x7),
    "STATUSR": (0x40, 4, 0, 0),
    "GBPA": (0x44, 4, 0x1000, 0x1F3F1F),  # reset: SHCFG=0b01 (use incoming)
    "IRQ_CTRL": (0x50, 4, 0, 0x5),
    "IRQ_CTRLACK": (0x54, 4, 0, 0),
    "GERROR": (0x60, 4, 0, 0),
    "GERRORN": (0x64, 4, 0, 0x1FD),
    "GERROR_IRQ_CFG0": (0x68, 8, 0, 0x0000_00FF_FFFF_FFFC),
    "GERROR_IRQ_CFG1": (0x70, 4, 0, 0xFFFF_FFFF),
    "GERROR_IRQ_CFG2": (0x74, 4, 0, 0x3F),
    "STRTAB_BASE": (0x80, 8, 0, 0x4000_00FF_FFFF_FFC0),
    "STRTAB_BASE_CFG": (0x88, 4, 0, 0x307FF),
    "CMDQ_BASE": (0x90, 8, 0, 0x4000_00FF_FFFF_FFFF),
    "CMDQ_PROD": (0x98, 4, 0, 0xFFFFF),
    "CMDQ_CONS": (0x9C, 4, 0, 0xFFFFF),
    "EVENTQ_BASE": (0xA0, 8, 0, 0x4000_00FF_FFFF_FFFF),
    "EVENTQ_IRQ_CFG0": (0xB0, 8, 0, 0x0000_00FF_FFFF_FFFC),
    "EVENTQ_IRQ_CFG1": (0xB8, 4, 0, 0xFFFF_FFFF),
    "EVENTQ_IRQ_CFG2": (0xBC, 4, 0, 0x3F),
    "EVENTQ_PROD": (0x100A8, 4, 0, 0x800F_FFFF),
    "EVENTQ_CONS": (0x100AC, 4, 0, 0x800F_FFFF),
}


def test_register_table_covers_every_register():
    assert set(REGISTER_TABLE) == {r.name for r in REGISTERS}
    for r in REGISTERS:
        assert REGISTER_TABLE[r.name][:2] == (r.offset, r.size), r.name


@pytest.mark.parametrize("name", list(REGISTER_TABLE))
def test_register_reset_value_and_writable_bits(shared, name):
    offset, size, reset, after = REGISTER_TABLE[name]
    v = VSmmu(shared.guest("g0"), [shared.hyp.smmus["smmu0"]], 40)
    assert v.read(offset, size) == reset
    shared.take_cmds()
    v.write(offset, (1 << 8 * size) - 1, size)
    assert v.read(offset, size) == after
    if name == "CR0":
        assert v.read(CR0ACK) == 0x1D  # acknowledged at once
    if name == "IRQ_CTRL":
        assert v.read(IRQ_CTRLACK) == 0x5
    assert shared.take_cmds() == []  # no stream attached: nothing physical


def test_id_registers_derive_from_the_physical_smmu():
    """A physical SMMU with fewer features: the vSMMU advertises what the physical one
    can do at stage 1, never stage 2, and the guest's 40-bit IPA space as OAS.
      IDR0 = S1P 0x2 | TTF 0x8 | COHACC 0x10 | MSI 0x2000 | TTENDIAN 0x400000
           | STALL_MODEL 0x1000000 | TERM_MODEL 0x4000000 | ST_LEVEL 0x8000000 = 0x0D40201A
           (no ATS, no ASID16, no CD2L; S2P and VMID16 never)
      IDR1 = SIDSIZE 16 0x10 | SSIDSIZE 4 (4 << 6) 0x100 | EVENTQS 12 (12 << 16) 0xC0000
           | CMDQS 10 (10 << 21) 0x1400000 = 0x014C0110
      IDR3 = 0 (no HAD, no RIL)
      IDR5 = OAS 40 bits 0x2 | GRAN4K 0x10 | GRAN64K 0x40 = 0x52"""
    feat = Features(asid16=False, ssidsize=4, oas_bits=44, granules=frozenset({4096, 65536}),
                    cd_2lvl=False, ril=False, ats=False, had=False, cmdqs=10, eventqs=12,
                    sidsize=8)
    platform = Platform(smmus=(SmmuSpec("smmu0", feat),), guests=(GuestSpec("g0", 1),),
                        devices=(DeviceSpec("nic0", "smmu0", 0x10, "g0"),))
    v = Hypervisor(platform).guests["g0"].vsmmus["smmu0"]
    assert [v.read(o) for o in (IDR0, IDR1, IDR2, IDR3, IDR4, IDR5)] == [
        0x0D40201A, 0x014C0110, 0, 0, 0, 0x52]


def test_id_registers_are_read_only(detached):
    for offset, value in ID_VALUES.items():
        detached.write(offset, ~value & 0xFFFF_FFFF)
        assert detached.read(offset) == value


def test_cr0_handshake_and_reserved_bits(detached):
    v = detached
    v.write(CR0, CMDQEN)
    assert v.read(CR0ACK) == CMDQEN  # acknowledged before the next access
    v.write(CR0, CMDQEN | EVENTQEN | 1 << 1 | 1 << 5 | 0x1C0 | 1 << 31)  # PRIQEN, RES0, VMW
    assert v.read(CR0) == v.read(CR0ACK) == CMDQEN | EVENTQEN
    v.write(CR0, 1 << 4)  # ATSCHK: kept, the vSMMU advertises ATS
    assert v.read(CR0ACK) == 1 << 4
    v.write(CR0ACK, 0)  # read-only
    assert v.read(CR0ACK) == 1 << 4
    v.write(CR0, 0)
    assert v.read(CR0ACK) == 0


def test_gbpa_update_protocol(detached):
    v = detached
    v.write(GBPA, 1 << 20)  # ABORT without UPDATE: ignored
    assert v.read(GBPA) == 0x1000
    v.write(GBPA, 1 << 31 | 1 << 20 | 0x2000)  # UPDATE: applied, UPDATE reads 0 (done)
    assert v.read(GBPA) == 0x10_2000


def test_irq_ctrl_is_acknowledged_at_once(detached):
    detached.write(IRQ_CTRL, 0x7)
    assert detached.read(IRQ_CTRL) == detached.read(IRQ_CTRLACK) == 0x5  # no PRIQ_IRQEN
    detached.write(IRQ_CTRLACK, 0)
    assert detached.read(IRQ_CTRLACK) == 0x5


# register -> (enable register, enable bit) that locks it, with a value to write
LOCKED = {
    "CR1": (CR0, SMMUEN, CR1, 0x555), "CR2": (CR0, SMMUEN, CR2, 0x4),
    "STRTAB_BASE": (CR0, SMMUEN, STRTAB_BASE, RAM + 0x4000),
    "STRTAB_BASE_CFG": (CR0, SMMUEN, STRTAB_BASE_CFG, 0x10108),
    "CMDQ_BASE": (CR0, CMDQEN, CMDQ_BASE, RAM + 0x8004),
    "CMDQ_CONS": (CR0, CMDQEN, CMDQ_CONS, 0x3),
    "EVENTQ_BASE": (CR0, EVENTQEN, EVENTQ_BASE, RAM + 0xC003),
    "EVENTQ_PROD": (CR0, EVENTQEN, EVENTQ_PROD, 0x2),
    "GERROR_IRQ_CFG0": (IRQ_CTRL, 1, GERROR_IRQ_CFG0, RAM + 0x40),
    "GERROR_IRQ_CFG1": (IRQ_CTRL, 1, GERROR_IRQ_CFG1, 0x1234),
    "GERROR_IRQ_CFG2": (IRQ_CTRL, 1, GERROR_IRQ_CFG2, 0x31),
    "EVENTQ_IRQ_CFG0": (IRQ_CTRL, 4, EVENTQ_IRQ_CFG0, RAM + 0x80),
    "EVENTQ_IRQ_CFG1": (IRQ_CTRL, 4, EVENTQ_IRQ_CFG1, 0x5678),
    "EVENTQ_IRQ_CFG2": (IRQ_CTRL, 4, EVENTQ_IRQ_CFG2, 0x11),
}


@pytest.mark.parametrize("name", list(LOCKED))
def test_registers_locked_while_their_enable_is_on(detached, name):
    ctrl, bit, offset, value = LOCKED[name]
    size = REGISTER_TABLE[name][1]
    v = detached
    v.write(ctrl, bit)
    v.write(offset, value, size)
    assert v.read(offset, size) == 0  # ignored
    v.write(ctrl, 0)
    v.write(offset, value, size)
    assert v.read(offset, size) == value


def test_queue_pointers_writable_while_enabled(detached):
    v = detached
    v.write(CMDQ_BASE, RAM | 4, 8)  # 16 entries at guest RAM (zeroed: no commands)
    v.write(CR0, ALL_ENABLES & ~SMMUEN)
    v.write(EVENTQ_CONS, 0x8000_0003)  # the consumer's, including OVACKFLG
    assert v.read(EVENTQ_CONS) == 0x8000_0003
    v.write(CMDQ_PROD, 0)
    assert v.read(CMDQ_PROD) == 0
    v.write(GBPA, 1 << 31)  # GBPA may change while enabled
    assert v.read(GBPA) == 0


def test_access_widths(detached):
    v = detached
    v.write(STRTAB_BASE, 0x4000_00AB_CDEF_0040, 8)
    assert v.read(STRTAB_BASE, 8) == 0x4000_00AB_CDEF_0040
    assert v.read(STRTAB_BASE) == 0xCDEF_0040 and v.read(STRTAB_BASE + 4) == 0x4000_00AB
    v.write(STRTAB_BASE + 4, 0x12)  # upper half only
    assert v.read(STRTAB_BASE, 8) == 0x0000_0012_CDEF_0040
    v.write(CR1, 0x3F)
    for offset, size in ((CR1, 8), (CR1, 2), (CR1, 1), (CR1 + 2, 4), (STRTAB_BASE + 4, 8),
                         (STRTAB_BASE, 2)):
        assert v.read(offset, size) == 0  # RAZ: wrong width or misaligned
        v.write(offset, (1 << 8 * size) - 1 if size in (1, 2, 4, 8) else 0, size)  # WI
    assert v.read(CR1) == 0x3F and v.read(STRTAB_BASE, 8) == 0x0000_0012_CDEF_0040
    for offset in (0x30, 0x48, 0x58, 0xFD0, 0x10000, 0x100A0, 0x20000):  # no register
        v.write(offset, 0xFFFF_FFFF)
        assert v.read(offset) == 0
    v.write(STATUSR, 1)
    assert v.read(STATUSR) == 0


# ------------------------------------------------- enable state and GBPA
def test_gbpa_abort_or_stage2_while_the_vsmmu_is_disabled(env):
    _, buf = env.dma_setup("g0", "nic0")
    v = env.vsmmu("g0", "smmu0")
    g0v, ttb = env.vmid("g0"), env.s2_ttb("g0")
    nested = env.pste("smmu0", 0x10)
    assert v.read(GBPA) == 0x10_1000  # the guest driver chose ABORT (and SHCFG=incoming)
    v.write(CR0, EVENTQEN | CMDQEN)
    assert env.pste("smmu0", 0x10) == ABORT_STE
    r = env.hyp.dma("nic0", IOVA, 4)
    assert not r.ok and r.fault is None  # silently
    v.write(GBPA, 1 << 31 | 0x1000)  # UPDATE, ABORT=0: "bypass"
    assert env.pste("smmu0", 0x10) == s2_only_ste(g0v, ttb)  # ... through stage 2
    r = env.hyp.dma("nic0", buf, 8, write=True, data=b"bypassed")
    assert r.ok and r.pa == env.pa("g0", buf)
    v.write(GBPA, 1 << 20 | 0x1000)  # no UPDATE: ignored
    assert env.pste("smmu0", 0x10) == s2_only_ste(g0v, ttb)
    other = env.guest("g1").pages[RAM]
    assert not env.hyp.dma("nic0", other, 8, write=True, data=b"bypassed").ok
    v.write(CR0, ALL_ENABLES)
    assert env.pste("smmu0", 0x10) == nested
    assert env.guest_events("g0", "smmu0") == [(0x10, 1 << 39 | CLASS_IN, other, other)]


def test_stream_table_registers_locked_while_enabled_have_no_effect(env):
    env.dma_setup("g0", "nic0")
    v = env.vsmmu("g0", "smmu0")
    base = v.read(STRTAB_BASE, 8)
    nested = env.pste("smmu0", 0x10)
    evil = RAM + 0x40_0000  # a table of bypass vSTEs, pointed at while enabled
    env.guest("g0").view.write_int(evil, STE.encode(V=1, CONFIG=4), 64)
    v.write(STRTAB_BASE, evil, 8)
    v.write(STRTAB_BASE_CFG, 0)
    assert v.read(STRTAB_BASE, 8) == base
    env.drv("g0", "smmu0").cfgi_ste(0)
    assert env.pste("smmu0", 0x10) == nested


# ------------------------------------------------- GERROR and its MSI
def test_gerror_msi_lands_in_guest_memory_through_stage2(env):
    v = env.vsmmu("g0", "smmu0")
    drv = env.drv("g0", "smmu0")
    cell = env.g0.buffer(K4)
    v.write(GERROR_IRQ_CFG0, cell, 8)
    v.write(GERROR_IRQ_CFG1, 0xFEED_0001)
    v.write(IRQ_CTRL, 1)
    env.take_accesses()
    drv.submit(cmd(Op.TLBI_S12_VMALL))
    assert v.read(GERROR) ^ v.read(GERRORN) == CMDQ_ERR
    assert env.guest("g0").view.read_int(cell, 4) == 0xFEED_0001
    [(pa, size, ini)] = [(pa, n, i) for k, pa, n, i in env.take_accesses() if k == "w"]
    assert (pa, size, ini.smmu, ini.purpose) == (env.pa("g0", cell), 4, "g0/smmu0", "msi")
    drv.recover()
    assert v.read(GERROR) == v.read(GERRORN)
    # An MSI address outside the guest's IPA space: nothing written, MSI_GERROR_ABT_ERR.
    v.write(IRQ_CTRL, 0)
    v.write(GERROR_IRQ_CFG0, RAM_END, 8)
    v.write(IRQ_CTRL, 1)
    drv.submit(cmd(Op.TLBI_S12_VMALL))
    assert v.read(GERROR) ^ v.read(GERRORN) == CMDQ_ERR | MSI_GERROR_ABT_ERR
    assert [a for a in env.take_accesses() if a[0] == "w"] == []
    drv.recover()
    assert v.read(GERROR) == v.read(GERRORN)


# ================================================================ event queue
def test_events_land_in_the_guests_queue_with_overflow(env):
    env.dma_setup("g0", "nic0")
    v = env.vsmmu("g0", "smmu0")
    q = env.g0.buffer(K4)
    v.write(CR0, SMMUEN | CMDQEN)  # event queue off: reprogram it with 2 entries
    v.write(EVENTQ_BASE, q | 1, 8)
    v.write(EVENTQ_PROD, 0)
    v.write(EVENTQ_CONS, 0)
    v.write(CR0, ALL_ENABLES)
    for n in range(3):
        assert not env.hyp.dma("nic0", 0x7000_0000 + n * K4, 4).ok
    # Two records written at q and q + 32; the third lost: PROD = wrap 1, index 0, OVFLG.
    assert v.read(EVENTQ_PROD) == 0x8000_0002
    view = env.guest("g0").view
    for n in range(2):
        raw = view.read(q + 32 * n, 32)
        assert dwords(int.from_bytes(raw, "little"), 4) == (
            F_TRANSLATION, RNW | CLASS_IN, 0x7000_0000 + n * K4, 0)
    assert view.read(q + 64, 32) == bytes(32)
    assert v.events_lost == 1
    assert env.guest_events("g0", "smmu0") == [  # consumes, acknowledges OVFLG
        (F_TRANSLATION, RNW | CLASS_IN, 0x7000_0000 + n * K4, 0) for n in range(2)]
    assert v.read(EVENTQ_CONS) == 0x8000_0002
    assert not env.hyp.dma("nic0", 0x7100_0000, 4).ok
    assert v.read(EVENTQ_PROD) == 0x8000_0003
    assert env.guest_events("g0", "smmu0") == [(F_TRANSLATION, RNW | CLASS_IN, 0x7100_0000, 0)]


def test_event_irq_msi_and_queue_outside_guest_memory(env):
    env.dma_setup("g0", "nic0")
    v = env.vsmmu("g0", "smmu0")
    cell = env.g0.buffer(K4)
    v.write(EVENTQ_IRQ_CFG0, cell, 8)
    v.write(EVENTQ_IRQ_CFG1, 0xE0E0_0007)
    v.write(IRQ_CTRL, 4)
    assert not env.hyp.dma("nic0", 0x7000_0000, 4).ok
    assert env.guest("g0").view.read_int(cell, 4) == 0xE0E0_0007
    assert len(env.guest_events("g0", "smmu0")) == 1
    v.write(IRQ_CTRL, 0)
    # The queue moved to an IPA g0 does not have: the record is lost, EVENTQ_ABT_ERR.
    v.write(CR0, SMMUEN | CMDQEN)
    v.write(EVENTQ_BASE, RAM_END | 4, 8)
    v.write(CR0, ALL_ENABLES)
    env.take_accesses()
    assert not env.hyp.dma("nic0", 0x7000_0000, 4).ok
    assert v.read(GERROR) ^ v.read(GERRORN) == EVENTQ_ABT_ERR
    assert [a for a in env.take_accesses() if a[3].smmu == "g0/smmu0"] == []
    assert env.all_guest_events() == {}


# ================================================================ vSTE fields
WHITELIST = {"V", "CONFIG", "S1FMT", "S1CONTEXTPTR", "S1CDMAX", "S1DSS", "S1CIR", "S1COR",
             "S1CSH", "S1STALLD", "EATS"}
IGNORED = [f.name for f in STE if f.name not in WHITELIST]


def test_the_whitelist_is_all_stage1_fields_plus_v_config_eats():
    assert WHITELIST <= {f.name for f in STE}
    assert len(IGNORED) == len(STE.fields) - 11


@pytest.fixture
def g0_nic0(shared):
    """nic0's vSTE (g0, smmu0, vSID 0) and physical STE, restored after the test."""
    env = shared
    vste = env.vste("g0", "smmu0", 0)
    pste = env.pste("smmu0", 0x10)
    env.take_cmds()
    yield env, vste, pste
    env.put_vste("g0", "smmu0", 0, vste)
    assert env.pste("smmu0", 0x10) == pste
    env.all_guest_events()


@pytest.mark.parametrize("name", IGNORED)
@pytest.mark.parametrize("how", ["lowest bit", "all ones"])
def test_vste_field_outside_the_whitelist_is_ignored(g0_nic0, name, how):
    env, vste, pste = g0_nic0
    f = STE[name]
    bits = (1 << f.lo) if how == "lowest bit" else f.mask
    env.put_vste("g0", "smmu0", 0, vste | bits)
    assert env.pste("smmu0", 0x10) == pste
    # Nothing rewritten: the guest's CFGI_STE reaches the hardware as one CFGI_STE of
    # pSID 0x10 (what is cached through the STE may be stale), never an STE update.
    assert [c for _, c in env.take_cmds() if c & 0xFF == Op.CFGI_STE] == [0x10_0000_0003]
    assert env.hyp.dma("nic0", IOVA, 4).ok


S1_CASES = [  # field, value, (dword 0 bits, dword 1 bits) expected on top of Linux's vSTE
    ("S1FMT", 1, (1 << 4, 0)), ("S1FMT", 2, (2 << 4, 0)), ("S1FMT", 3, (3 << 4, 0)),
    ("S1CDMAX", 1, (1 << 59, 0)), ("S1CDMAX", 8, (8 << 59, 0)),
    ("S1DSS", 1, (0, 1)), ("S1DSS", 2, (0, 2)), ("S1DSS", 3, (0, 3)),
    ("S1STALLD", 1, (0, 1 << 27)),
]


@pytest.mark.parametrize("name, value, bits", S1_CASES)
def test_vste_stage1_field_reaches_the_physical_ste(g0_nic0, name, value, bits):
    env, vste, _ = g0_nic0
    env.put_vste("g0", "smmu0", 0, STE.encode(vste, **{name: value}))
    ptr = dwords(vste)[0] & ~0xF
    assert env.pste("smmu0", 0x10) == nested_ste(
        env.vmid("g0"), env.s2_ttb("g0"), ptr | bits[0], GUEST_S1_DW1 | bits[1])


@pytest.mark.parametrize("name, shift", [("S1CIR", 2), ("S1COR", 4), ("S1CSH", 6)])
@pytest.mark.parametrize("value", [0, 2, 3])
def test_vste_table_attributes_reach_the_physical_ste(g0_nic0, name, shift, value):
    env, vste, _ = g0_nic0
    env.put_vste("g0", "smmu0", 0, STE.encode(vste, **{name: value}))
    d1 = GUEST_S1_DW1 & ~(3 << shift) | value << shift
    assert env.pste("smmu0", 0x10) == nested_ste(
        env.vmid("g0"), env.s2_ttb("g0"), dwords(vste)[0] & ~0xF, d1)


def test_vste_context_pointer_reaches_the_physical_ste(g0_nic0):
    env, vste, _ = g0_nic0
    ptr = RAM + 0x7_0040
    env.put_vste("g0", "smmu0", 0, STE.encode(vste, S1CONTEXTPTR=ptr))
    assert env.pste("smmu0", 0x10) == nested_ste(env.vmid("g0"), env.s2_ttb("g0"), ptr,
                                                 GUEST_S1_DW1)
    # Beyond the 40-bit IPA space, the vSMMU's OAS: ILLEGAL on an SMMUv3.1 (§5.2
    # STE.S1ContextPtr, §3.4.3), so no physical STE, and the guest hears C_BAD_STE.
    env.put_vste("g0", "smmu0", 0, STE.encode(vste, S1CONTEXTPTR=1 << 40))
    assert env.pste("smmu0", 0x10) == 0
    assert not env.hyp.dma("nic0", IOVA, 4).ok
    assert env.all_guest_events() == {("g0", "smmu0"): [(C_BAD_STE, 0, 0, 0)]}


@pytest.mark.parametrize("config, outcome", [
    # §5.2 STE.Config: the reserved 0b001-0b011 behave as 0b000
    (0b000, "abort"), (0b001, "abort"), (0b010, "abort"), (0b011, "abort"),
    (0b100, "s2"), (0b101, "nested"), (0b110, "bad"), (0b111, "bad"),
])
def test_vste_config(g0_nic0, config, outcome):
    env, vste, pste = g0_nic0
    env.put_vste("g0", "smmu0", 0, STE.encode(vste, CONFIG=config))
    expected = {"abort": ABORT_STE, "bad": 0, "nested": pste,
                "s2": s2_only_ste(env.vmid("g0"), env.s2_ttb("g0"))}[outcome]
    assert env.pste("smmu0", 0x10) == expected
    r = env.hyp.dma("nic0", IOVA, 4)
    assert r.ok == (outcome == "nested")
    events = env.all_guest_events()
    if outcome == "bad":
        assert events == {("g0", "smmu0"): [(C_BAD_STE, 0, 0, 0)]}
    elif outcome == "s2":  # IOVA 0x100000 is not a g0 IPA
        assert events == {("g0", "smmu0"): [(F_TRANSLATION, RNW | 1 << 39 | CLASS_IN, IOVA,
                                             IOVA)]}
    else:
        assert events == {}


@pytest.mark.parametrize("name, value", [
    ("V", 0), ("S1CDMAX", 9), ("S1CDMAX", 31), ("EATS", 2),
])
def test_vste_bad_values_are_c_bad_ste_with_the_vsid(g0_nic0, name, value):
    env, vste, _ = g0_nic0
    env.put_vste("g0", "smmu0", 0, STE.encode(vste, **{name: value}))
    assert env.pste("smmu0", 0x10) == 0
    assert not env.hyp.dma("nic0", IOVA, 4).ok
    assert env.all_guest_events() == {("g0", "smmu0"): [(C_BAD_STE, 0, 0, 0)]}


def test_vste_bad_value_reported_with_the_right_vsid(shared):
    env = shared
    vste = env.vste("g0", "smmu0", 1)
    env.put_vste("g0", "smmu0", 1, STE.encode(vste, V=0))
    assert env.pste("smmu0", 0x13) == 0
    assert not env.hyp.dma("disk0", IOVA, 4).ok
    assert env.all_guest_events() == {("g0", "smmu0"): [(C_BAD_STE | 1 << 32, 0, 0, 0)]}
    env.put_vste("g0", "smmu0", 1, vste)
    assert env.hyp.dma("disk0", IOVA, 4).ok


def test_eats_translate_only_for_an_ats_device_in_s1_trans(shared):
    env = shared
    nic0 = env.vste("g0", "smmu0", 0)
    gpu0 = env.vste("g1", "smmu1", 0)
    nic0_pste, gpu0_pste = env.pste("smmu0", 0x10), env.pste("smmu1", 0x10)
    try:
        env.put_vste("g0", "smmu0", 0, STE.encode(nic0, EATS=1))  # not an ATS device
        assert env.pste("smmu0", 0x10) == nic0_pste  # accepted, EATS stays 0
        env.put_vste("g1", "smmu1", 0, STE.encode(gpu0, EATS=1))
        # EATS 0b10 (dword 1 bits 29:28): split-stage ATS, stage 2 stays in charge
        assert env.pste("smmu1", 0x10) == gpu0_pste | dw(0, 2 << 28)
        assert dwords(gpu0_pste)[1] == GUEST_S1_DW1 | MEV_DW1
        # Abort and bypass ignore EATS (a stage-1 field): the abort STE (0x1), and
        # g1's stage-2-only STE.
        env.put_vste("g1", "smmu1", 0, STE.encode(gpu0, EATS=1, CONFIG=0b100))
        assert env.pste("smmu1", 0x10) == env.guest("g1").s2_ste
        env.put_vste("g1", "smmu1", 0, STE.encode(gpu0, EATS=1, CONFIG=0b000))
        assert env.pste("smmu1", 0x10) == 0x1
        assert not env.hyp.dma("gpu0", IOVA, 4).ok
        assert env.all_guest_events() == {}  # an abort STE aborts silently
    finally:
        env.put_vste("g0", "smmu0", 0, nic0)
        env.put_vste("g1", "smmu1", 0, gpu0)
    assert (env.pste("smmu0", 0x10), env.pste("smmu1", 0x10)) == (nic0_pste, gpu0_pste)


def test_vste_fetch_faults_and_stream_table_bounds(env):
    """Faults of the guest's own stream table reach the guest as its hardware would
    report them: C_BAD_STREAMID for a vSID beyond LOG2SIZE or behind SPAN=0, F_STE_FETCH
    with the IPA of an unreadable vSTE or L1 descriptor."""
    env.dma_setup("g0", "nic0")
    env.dma_setup("g0", "disk0")
    v = env.vsmmu("g0", "smmu0")
    view = env.guest("g0").view
    base = v.read(STRTAB_BASE, 8)

    def program(strtab: int, cfg: int) -> None:
        v.write(CR0, EVENTQEN | CMDQEN)
        v.write(STRTAB_BASE, strtab, 8)
        v.write(STRTAB_BASE_CFG, cfg)
        v.write(CR0, ALL_ENABLES)

    def outcome(dev: str):
        assert not env.hyp.dma(dev, IOVA, 4).ok
        [(key, [record])] = env.all_guest_events().items()
        assert key == ("g0", "smmu0")
        return record

    program(base, 0)  # linear, LOG2SIZE 0: only vSID 0 exists
    assert env.hyp.dma("nic0", IOVA, 4).ok
    assert outcome("disk0") == (C_BAD_STREAMID | 1 << 32, 0, 0, 0)
    program(RAM_END, 8)  # a linear table at an IPA g0 does not have
    assert outcome("nic0") == (F_STE_FETCH, 0, 0, RAM_END)
    assert outcome("disk0") == (F_STE_FETCH | 1 << 32, 0, 0, RAM_END + 0x40)
    # 2-level, SPLIT 8, LOG2SIZE 16: L1[0] has SPAN 0 (invalid), then an unmapped L2.
    l1 = env.g0.buffer(K4)
    program(l1, 1 << 16 | 8 << 6 | 16)
    assert outcome("disk0") == (C_BAD_STREAMID | 1 << 32, 0, 0, 0)
    view.write_int(l1, (RAM_END + 0x8000) | 9, 8)  # L2Ptr | SPAN = 9 (256 STEs)
    v.write(CR0, EVENTQEN | CMDQEN)
    v.write(CR0, ALL_ENABLES)  # re-read (CFGI_STE would do as well)
    assert outcome("disk0") == (F_STE_FETCH | 1 << 32, 0, 0, RAM_END + 0x8040)
    program(RAM_END + 0x1000, 1 << 16 | 8 << 6 | 16)  # the L1 table itself is unmapped
    assert outcome("nic0") == (F_STE_FETCH, 0, 0, RAM_END + 0x1000)
    program(base, 8)
    assert env.hyp.dma("nic0", IOVA, 4).ok and env.hyp.dma("disk0", IOVA, 4).ok


# ================================================================ commands
G1 = 0xBEEF  # a VMID field value the guest makes up (the other guest's, or any)
OPCODES = [  # (name, guest command, physical commands before the SYNC, as f(vmid)); ILL
    ("PREFETCH_CONFIG", cmd(Op.PREFETCH_CONFIG, SID=1), []),
    ("PREFETCH_ADDR", cmd(Op.PREFETCH_ADDR, SID=1, ADDR=IOVA), []),
    # vSTE unchanged: no STE update, but the CFGI itself reaches the hardware (CDs
    # cached through the STE may be stale): vSID 1 is pSID 0x13; RANGE 31 is all.
    ("CFGI_STE", cmd(Op.CFGI_STE, SID=1, LEAF=1), [0x13_0000_0003]),
    ("CFGI_STE_RANGE", cmd(Op.CFGI_STE_RANGE, RANGE=31), [0x10_0000_0003, 0x13_0000_0003]),
    ("CFGI_CD", cmd(Op.CFGI_CD, SID=1, SSID=5, LEAF=1), [dw(0x13_0000_5005, 1)]),
    ("CFGI_CD_ALL", cmd(Op.CFGI_CD_ALL, SID=1), [0x13_0000_0006]),
    ("TLBI_NH_ALL", cmd(Op.TLBI_NH_ALL, VMID=G1), [0x10]),
    ("TLBI_NH_ASID", cmd(Op.TLBI_NH_ASID, VMID=G1, ASID=0x77), [0x0077_0000_0000_0011]),
    # NUM 3 (16:12), SCALE 2 (24:20); dword 1: Leaf, TTL 3 (9:8), TG 4K (11:10), Addr.
    ("TLBI_NH_VA", cmd(Op.TLBI_NH_VA, VMID=G1, ASID=0x77, ADDR=0x1234_5000, LEAF=1, NUM=3,
                       SCALE=2, TG=1, TTL=3),
     [dw(0x0077_0000_0020_3012, 0x1234_5701)]),
    ("TLBI_NH_VAA", cmd(Op.TLBI_NH_VAA, VMID=G1, ADDR=0x1234_5000), [dw(0x13, 0x1234_5000)]),
    ("TLBI_EL3_ALL", cmd(Op.TLBI_EL3_ALL), None),
    ("TLBI_EL3_VA", cmd(Op.TLBI_EL3_VA, ADDR=IOVA), None),
    ("TLBI_EL2_ALL", cmd(Op.TLBI_EL2_ALL), None),
    ("TLBI_EL2_ASID", cmd(Op.TLBI_EL2_ASID, ASID=1), None),
    ("TLBI_EL2_VA", cmd(Op.TLBI_EL2_VA, ASID=1, ADDR=IOVA), None),
    ("TLBI_EL2_VAA", cmd(Op.TLBI_EL2_VAA, ADDR=IOVA), None),
    ("TLBI_S12_VMALL", cmd(Op.TLBI_S12_VMALL, VMID=G1), None),
    ("TLBI_S2_IPA", cmd(Op.TLBI_S2_IPA, VMID=G1, ADDR=RAM), None),
    ("TLBI_NSNH_ALL", cmd(Op.TLBI_NSNH_ALL), [0x10]),  # -> TLBI_NH_ALL of its VMID
    # SSV (bit 11), SSID 5, SID 1 -> 0x13; dword 1: Size 3, Addr.
    ("ATC_INV", cmd(Op.ATC_INV, SID=1, SSV=1, SSID=5, SIZE=3, ADDR=0x1234_0000),
     [dw(0x13_0000_5840, 0x1234_0003)]),
    ("PRI_RESP", cmd(Op.PRI_RESP, SID=1), None),
    # The vSMMU advertises IDR0.STALL_MODEL=0b01: IHI 0070 §4.7.1-2 make these ILL.
    ("RESUME", cmd(Op.RESUME, SID=1, STAG=3), None),
    ("STALL_TERM", cmd(Op.STALL_TERM, SID=1), None),
    ("SYNC", cmd(Op.SYNC), []),
    ("unknown 0x00", 0x00, None),
    ("unknown 0x07", 0x07 | 1 << 32, None),
    ("unknown 0x29", 0x29, None),
    ("unknown 0x31", 0x31, None),
    ("unknown 0x47", 0x47, None),
    ("unknown 0xFF", (1 << 128) - 1, None),
]
VMID_OPS = {Op.TLBI_NH_ALL, Op.TLBI_NH_ASID, Op.TLBI_NH_VA, Op.TLBI_NH_VAA}


def test_opcode_table_covers_every_opcode():
    assert {name for name, _, _ in OPCODES} >= {op.name for op in Op}


def _expect_ill(env: VEnv, guest: str, smmu: str, command: int) -> None:
    v = env.vsmmu(guest, smmu)
    drv = env.drv(guest, smmu)
    env.take_cmds()
    at = v.read(CMDQ_CONS) & 0x1FF
    drv.submit(command)
    assert v.read(CMDQ_CONS) == 1 << 24 | at  # ERR=ILL, CONS on the command
    assert v.read(GERROR) ^ v.read(GERRORN) == CMDQ_ERR
    assert env.take_cmds() == []
    drv.recover()
    assert v.read(GERROR) == v.read(GERRORN)
    drv.sync()
    assert env.take_cmds() == []


@pytest.mark.parametrize("name, command, physical", OPCODES, ids=[n for n, _, _ in OPCODES])
def test_guest_opcode(shared, name, command, physical):
    env = shared
    if physical is None:
        _expect_ill(env, "g0", "smmu0", command)
        return
    g0v = env.vmid("g0")
    expected = [c | g0v << 32 if (c & 0xFF) in VMID_OPS else c for c in physical]
    env.take_cmds()
    drv = env.drv("g0", "smmu0")
    drv.submit(command)
    drv.sync()
    forwarded = [("smmu0", c) for c in expected]
    assert cmd_names(env.take_cmds()) == cmd_names(
        forwarded + [("smmu0", SYNC)] if forwarded else [])


SSEC_OPS = [Op.PREFETCH_CONFIG, Op.PREFETCH_ADDR, Op.CFGI_STE, Op.CFGI_STE_RANGE, Op.CFGI_CD,
            Op.CFGI_CD_ALL, Op.RESUME, Op.STALL_TERM]


@pytest.mark.parametrize("op", SSEC_OPS, ids=[op.name for op in SSEC_OPS])
def test_ssec_is_illegal(shared, op):
    _expect_ill(shared, "g0", "smmu0", cmd(op, SSEC=1, SID=0))


def test_sync_cs_0b11_is_illegal(shared):
    _expect_ill(shared, "g0", "smmu0", cmd(Op.SYNC, CS=3))


def test_cfgi_ste_and_range_reread_exactly_the_named_vsids(shared):
    env = shared
    nic0, disk0 = env.vste("g0", "smmu0", 0), env.vste("g0", "smmu0", 1)
    before = env.pste("smmu0", 0x10), env.pste("smmu0", 0x13)
    drv = env.drv("g0", "smmu0")
    s2 = s2_only_ste(env.vmid("g0"), env.s2_ttb("g0"))
    try:
        for vsid in (0, 1):
            env.put_vste("g0", "smmu0", vsid, STE.encode(V=1, CONFIG=4), cfgi=False)
        assert (env.pste("smmu0", 0x10), env.pste("smmu0", 0x13)) == before  # not yet
        drv.cfgi_ste(1)
        assert (env.pste("smmu0", 0x10), env.pste("smmu0", 0x13)) == (before[0], s2)
        drv.submit(cmd(Op.CFGI_STE_RANGE, SID=1, RANGE=0))  # 2^(0+1) vSIDs from 0: 0 and 1
        drv.sync()
        assert (env.pste("smmu0", 0x10), env.pste("smmu0", 0x13)) == (s2, s2)
        for vsid, word in ((0, nic0), (1, disk0)):
            env.put_vste("g0", "smmu0", vsid, word, cfgi=False)
        drv.submit(cmd(Op.CFGI_STE_RANGE, SID=0x1234, RANGE=31))  # RANGE 31: all of them
        drv.sync()
        assert (env.pste("smmu0", 0x10), env.pste("smmu0", 0x13)) == before
    finally:
        env.put_vste("g0", "smmu0", 0, nic0)
        env.put_vste("g0", "smmu0", 1, disk0)


# ------------------------------------------------------------ CMD_SYNC
def test_sync_msi_is_written_after_forwarded_work_completes(shared):
    env = shared
    phys = env.hyp.smmus["smmu0"]
    assert env.hyp.dma("nic0", IOVA, 4).ok
    g0v = env.vmid("g0")
    assert len(env.iotlb("smmu0", g0v)) >= 1
    cell = env.g0.buffer(K4)
    seen = []

    def observe(kind, pa, size, ini):
        if kind == "w" and getattr(ini, "purpose", None) == "msi":
            seen.append((pa, size, phys.smmu.cmdq_pending(), len(env.iotlb("smmu0", g0v))))

    # The physical SMMU lags: it consumes nothing on a doorbell, only when polled.
    phys.smmu.cmdq_budget = 0
    poll = phys.drv.poll

    def catch_up():
        phys.smmu.cmdq_budget = 1024
        phys.smmu.tick()
        phys.smmu.cmdq_budget = 0

    phys.drv.poll = catch_up
    env.hyp.mem.observers.append(observe)
    pending_after_forward = []
    orig_submit = phys.drv.submit

    def submit(*cmds):
        orig_submit(*cmds)
        pending_after_forward.append(phys.smmu.cmdq_pending())

    phys.drv.submit = submit
    try:
        drv = env.drv("g0", "smmu0")
        drv.submit(cmd(Op.TLBI_NH_ALL), cmd(Op.SYNC, CS=1, MSIADDR=cell, MSIDATA=0x5EED_0001))
    finally:
        env.hyp.mem.observers.remove(observe)
        phys.drv.poll, phys.drv.submit = poll, orig_submit
        del phys.smmu.cmdq_budget
    assert pending_after_forward[0] == 1  # the NH_ALL waited in the physical queue...
    assert seen == [(env.pa("g0", cell), 4, 0, 0)]  # ...until before the MSI
    assert env.guest("g0").view.read_int(cell, 4) == 0x5EED_0001
    drv.sync()


def test_sync_completion_signals(shared):
    env = shared
    v = env.vsmmu("g0", "smmu0")
    drv = env.drv("g0", "smmu0")
    irqs = v.irqs["cmd_sync"]
    drv.submit(cmd(Op.SYNC, CS=1))  # IRQ without an MSI address: the wired interrupt
    assert v.irqs["cmd_sync"] == irqs + 1
    env.take_accesses()
    drv.submit(cmd(Op.SYNC, CS=2, MSIADDR=RAM, MSIDATA=1))  # SEV: no event model, nothing
    assert v.irqs["cmd_sync"] == irqs + 1
    assert [a for a in env.take_accesses() if a[0] == "w"] == []
    # An MSI address outside the guest (its RAM_END, or g1's RAM PA): nothing written,
    # MSI_CMDQ_ABT_ERR.
    for target in (RAM_END, env.guest("g1").pages[RAM]):
        drv.submit(cmd(Op.SYNC, CS=1, MSIADDR=target, MSIDATA=0xBAD))
        assert v.read(GERROR) ^ v.read(GERRORN) == MSI_CMDQ_ABT_ERR
        assert [a for a in env.take_accesses() if a[0] == "w"] == []
        v.write(GERRORN, v.read(GERROR))
    assert env.hyp.mem.read(env.guest("g1").pages[RAM], 4) == bytes(4)


def test_command_budget_per_trap(env):
    drv = env.drv("g0", "smmu0")
    drv.reset(cmdq_log2=10, gbpa_abort=True)  # a 1024-entry queue
    v = env.vsmmu("g0", "smmu0")
    start = v.read(CMDQ_CONS)  # past the reset's own commands
    env.take_cmds()
    drv.submit(*[cmd(Op.TLBI_NH_ASID, ASID=n, VMID=G1) for n in range(1000)])
    done = [v.read(CMDQ_CONS) - start]
    for _ in range(100):
        if done[-1] == 1000:
            break
        env.hyp.step()
        done.append(v.read(CMDQ_CONS) - start)
    # 64 on the PROD trap (the budget), which fills g0's share of smmu0's queue (64
    # outstanding); then as many a step as the SMMU consumed (16 a tick, after the
    # vSMMU's continuation: none on the first step).
    assert done == [64, *range(64, 1000, 16), 1000]
    g0v = env.vmid("g0")
    assert env.take_cmds() == [
        ("smmu0", 0x11 | g0v << 32 | n << 48) for n in range(1000)]
    assert v.read(CMDQ_PROD) == start + 1000
