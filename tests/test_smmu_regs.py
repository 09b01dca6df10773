"""Device-level register tests of vsmmu.hw.smmu: ID registers for several feature sets,
read-only and locked registers, acknowledgement registers, 32-bit halves of 64-bit
registers, RAZ/WI accesses, page 1, plus Hypothesis robustness checks (random register
writes, random STEs) that must never raise out of the device.

Offsets are literals from the SMMUv3 register map (tests/smmu_env.py); ID register
values are worked out bit by bit below.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smmu_env import (
    AIDR,
    CMDQ,
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
    EVTQ,
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
    MSI,
    SMMUEN,
    STATUSR,
    STRTAB,
    STRTAB_BASE,
    STRTAB_BASE_CFG,
    UNBACKED,
    Env,
)

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import STE, Event
from vsmmu.hw.smmu import AtsResult, DmaResult

ID_OFFSETS = (IDR0, IDR1, IDR2, IDR3, IDR4, IDR5, IIDR, AIDR)

# ================================================================ ID registers
# IDR0 bits: S2P 0, S1P 1, TTF 3:2 (0b10 AArch64), COHACC 4, ATS 10, ASID16 12, MSI 13,
# PRI 16, VMID16 18, CD2L 19, TTENDIAN 22:21 (0b10 LE), STALL_MODEL 25:24 (0b01 terminate
# only), TERM_MODEL 26, ST_LEVEL 28:27 (0b01 2-level).
# IDR1: SIDSIZE 5:0, SSIDSIZE 10:6, EVENTQS 20:16, CMDQS 25:21.
# IDR3: HAD 2, XNX 4, RIL 10, BBML 12:11.   IDR5: OAS 2:0, GRAN4K 4, GRAN16K 5, GRAN64K 6.
ID_CASES = {
    # Default: 0x1 + 0x2 + 0x8 + 0x10 + 0x400 + 0x1000 + 0x2000 + 0x40000 + 0x80000
    #   + 0x400000 + 0x1000000 + 0x4000000 + 0x8000000 = 0x0d4c341b.
    # IDR1: 16 | 8 << 6 | 19 << 16 | 19 << 21 = 0x02730210.  IDR3: 0x4 | 0x10 | 0x400.
    # IDR5: OAS 48 bits = 0b101 | 0x70.  IIDR: implementer Arm (0x43b).  AIDR: SMMUv3.1.
    "default": (Features(), (0x0D4C341B, 0x02730210, 0, 0x414, 0, 0x75, 0x43B, 0x1)),
    # QEMU 7.2 (qemu-peer.md §3): IDR0 0x0d40101a = S1P, TTF, COHACC, ASID16, TTENDIAN,
    # STALL_MODEL, TERM_MODEL, ST_LEVEL.  Our default additionally sets S2P (bit 0), ATS
    # (10), MSI (13), VMID16 (18) and CD2L (19); turning those features off (and SSIDSIZE
    # to 0, OAS to 44 bits) gives QEMU's IDR0, IDR1 and IDR5 exactly.  IDR3 differs: QEMU
    # advertises BBML=2 (0x1000), a break-before-make level this model does not claim.
    "qemu-7.2": (Features(s2p=False, ats=False, msi=False, cd_2lvl=False, ssidsize=0,
                          oas_bits=44, xnx=False),
                 (0x0D40101A, 0x02730010, 0, 0x404, 0, 0x74, 0x43B, 0x1)),
    # QEMU 10.0: adds S2P and VMID16 (0x0d44101b) and IDR3.XNX (QEMU 0x1414, BBML again).
    "qemu-10.0": (Features(ats=False, msi=False, cd_2lvl=False, ssidsize=0, oas_bits=44),
                  (0x0D44101B, 0x02730010, 0, 0x414, 0, 0x74, 0x43B, 0x1)),
    # A small stage-2-only SMMU: IDR0 = 0x1 + 0x8 + 0x10 + 0x400000 + 0x1000000 + 0x4000000;
    # IDR1 = 8 | 7 << 16 | 8 << 21 = 0x01070008; IDR5 = OAS 40 bits (0b010) | GRAN4K.
    "s2-only": (Features(s1p=False, asid16=False, vmid16=False, st_2lvl=False, cd_2lvl=False,
                         ats=False, msi=False, had=False, xnx=False, ril=False,
                         granules=frozenset({4096}), oas_bits=40, sidsize=8, ssidsize=0,
                         cmdqs=8, eventqs=7),
                (0x05400019, 0x01070008, 0, 0, 0, 0x12, 0x43B, 0x1)),
}


@pytest.mark.parametrize(("feat", "values"), ID_CASES.values(), ids=ID_CASES.keys())
def test_id_registers(feat, values):
    env = Env(feat)
    assert tuple(env.r(off) for off in ID_OFFSETS) == values
    assert env.r(IDR0) >> 16 & 1 == 0  # never PRI


def test_reset_values():
    env = Env()
    assert env.r(GBPA) == 0x1000  # SHCFG=0b01: use the incoming shareability
    for off in (CR0, CR0ACK, CR1, CR2, STATUSR, IRQ_CTRL, IRQ_CTRLACK, GERROR, GERRORN,
                STRTAB_BASE, CMDQ_BASE, CMDQ_PROD, CMDQ_CONS, EVENTQ_BASE, EVENTQ_PROD,
                EVENTQ_CONS):
        assert env.r(off) == 0


# ================================================================ read-only registers
@pytest.mark.parametrize("off", [*ID_OFFSETS, CR0ACK, STATUSR, IRQ_CTRLACK, GERROR])
def test_read_only_registers_ignore_writes(off):
    env = Env().setup()
    before = env.r(off)
    env.w(off, 0xFFFFFFFF)
    env.w(off, 0)
    assert env.r(off) == before


# ================================================================ acknowledgements
def test_cr0_is_acknowledged_at_once():
    env = Env()
    env.w(CR0, 0x1D)  # SMMUEN | EVENTQEN | CMDQEN | ATSCHK
    assert env.r(CR0) == 0x1D and env.r(CR0ACK) == 0x1D
    env.w(CR0, 0x2F)  # PRIQEN (bit 1, no PRI) and bit 5 (RES0) are dropped
    assert env.r(CR0ACK) == 0x0D
    env = Env(Features(ats=False))
    env.w(CR0, 0x1D)  # ATSCHK is RES0 without ATS
    assert env.r(CR0ACK) == 0x0D


def test_irq_ctrl_is_acknowledged_at_once():
    env = Env()
    env.w(IRQ_CTRL, 0xFFFFFFFF)  # GERROR_IRQEN | EVENTQ_IRQEN; PRIQ_IRQEN is RES0
    assert env.r(IRQ_CTRL) == 0x5 and env.r(IRQ_CTRLACK) == 0x5
    env.w(IRQ_CTRL, 0)
    assert env.r(IRQ_CTRLACK) == 0


def test_gbpa_update_handshake():
    env = Env()
    env.w(GBPA, 0x00100000)  # no UPDATE: ignored
    assert env.r(GBPA) == 0x1000
    env.w(GBPA, 0x80103000)  # UPDATE | ABORT | SHCFG=0b11: done at once, UPDATE reads 0
    assert env.r(GBPA) == 0x00103000


# ================================================================ guarded registers
def test_stream_table_registers_ignored_while_smmuen():
    env = Env().setup()
    env.qemu_s1()
    env.w(STRTAB_BASE, UNBACKED, 8)
    env.w(STRTAB_BASE + 4, 0x1)  # the upper half too
    env.w(STRTAB_BASE_CFG, 0x10000 | 4)  # 2-level, LOG2SIZE=4
    assert env.r(STRTAB_BASE, 8) == STRTAB
    assert env.r(STRTAB_BASE_CFG) == 8 << 6 | 8  # SPLIT=8, LOG2SIZE=8 from setup()
    assert env.dma(8, 0x200800).pa == 0x44000800  # still the old table
    env.w(CR1, 0xFFF)
    env.w(CR2, 0x7)
    assert env.r(CR1) == 0 and env.r(CR2) == 0x2  # as setup() left them: RECINVSID only
    env.w(CR0, CMDQEN | EVENTQEN)  # SMMUEN off: writable again
    env.w(STRTAB_BASE, UNBACKED, 8)
    env.w(CR1, 0xFFF)
    assert env.r(STRTAB_BASE, 8) == UNBACKED and env.r(CR1) == 0xFFF


def test_queue_registers_ignored_while_enabled():
    env = Env().setup()
    env.w(CMDQ_BASE, 0, 8)
    env.w(CMDQ_CONS, 0)
    env.w(EVENTQ_BASE, 0, 8)
    env.w(EVENTQ_PROD, 5)
    assert env.r(CMDQ_BASE, 8) == CMDQ | 8 and env.r(CMDQ_CONS) == 3
    assert env.r(EVENTQ_BASE, 8) == EVTQ | 8 and env.r(EVENTQ_PROD) == 0
    env.w(EVENTQ_CONS, 0x80000000)  # CONS stays writable (software consumes)
    assert env.r(EVENTQ_CONS) == 0x80000000
    env.w(CR0, SMMUEN)  # both queues off
    env.w(CMDQ_BASE, CMDQ | 4, 8)
    env.w(CMDQ_CONS, 0x7F000001)  # ERR belongs to the SMMU: only RD is written
    env.w(EVENTQ_PROD, 5)
    assert env.r(CMDQ_BASE, 8) == CMDQ | 4 and env.r(CMDQ_CONS) == 1
    assert env.r(EVENTQ_PROD) == 5


def test_irq_cfg_locked_while_irq_enabled():
    env = Env()
    # (offset, size, first value, later value); CFG0 holds ADDR [51:2], CFG1 DATA [31:0],
    # CFG2 MEMATTR [3:0] and SH [5:4]
    cfgs = ((GERROR_IRQ_CFG0, 8, MSI, MSI + 0x40), (GERROR_IRQ_CFG1, 4, 0x1234, 0xAAAA),
            (GERROR_IRQ_CFG2, 4, 0x31, 0x2), (EVENTQ_IRQ_CFG0, 8, MSI + 8, MSI + 0x80),
            (EVENTQ_IRQ_CFG1, 4, 0x5678, 0xBBBB), (EVENTQ_IRQ_CFG2, 4, 0x1F, 0x3))
    for off, size, value, _ in cfgs:
        env.w(off, value, size)
    env.w(IRQ_CTRL, 0x5)
    for off, size, value, other in cfgs:
        env.w(off, other, size)
        assert env.r(off, size) == value
    env.w(IRQ_CTRL, 0x1)  # only the event queue's configuration unlocks
    for off, size, value, other in cfgs:
        env.w(off, other, size)
        assert env.r(off, size) == (other if off in (EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1,
                                                     EVENTQ_IRQ_CFG2) else value)


# ================================================================ 64-bit registers
def test_32_bit_halves_of_64_bit_registers():
    env = Env()  # OAS 48 bits: address bits 51:48 are not stored (IHI 0070 §3.4.3, §6.3)
    # STRTAB_BASE: ADDR [51:6], RA [62].  Low half keeps bits 31:6; high half bits 15:0
    # (address 47:32) and bit 30 (RA).
    env.w(STRTAB_BASE, 0xFFFFFFFF)
    env.w(STRTAB_BASE + 4, 0xFFFFFFFF)
    assert env.r(STRTAB_BASE) == 0xFFFFFFC0 and env.r(STRTAB_BASE + 4) == 0x4000FFFF
    assert env.r(STRTAB_BASE, 8) == 0x4000FFFF_FFFFFFC0
    env.w(STRTAB_BASE + 4, 0)  # one half leaves the other alone
    assert env.r(STRTAB_BASE, 8) == 0xFFFFFFC0
    # CMDQ_BASE / EVENTQ_BASE: LOG2SIZE [4:0] and ADDR [51:5] fill the low half.
    env.w(CMDQ_BASE, 0xFFFFFFFF_FFFFFFFF, 8)
    env.w(EVENTQ_BASE, 0xFFFFFFFF_FFFFFFFF, 8)
    assert env.r(CMDQ_BASE, 8) == 0x4000FFFF_FFFFFFFF
    assert env.r(EVENTQ_BASE, 8) == 0x4000FFFF_FFFFFFFF
    # IRQ_CFG0: ADDR [51:2].
    env.w(GERROR_IRQ_CFG0, 0xFFFFFFFF_FFFFFFFF, 8)
    assert env.r(GERROR_IRQ_CFG0) == 0xFFFFFFFC and env.r(GERROR_IRQ_CFG0 + 4) == 0xFFFF


@pytest.mark.parametrize("oas", [40, 44])
def test_addresses_beyond_the_oas_are_truncated(oas):
    """IHI 0070 §3.4.3: queue bases and MSI addresses beyond the OAS are truncated to
    it; for the stream table the SMMU may truncate or raise F_STE_FETCH, and this one
    truncates (as Arm recommends of an emulated SMMU: the vSMMU is this model too)."""
    env = Env(Features(oas_bits=oas))
    above = 0xF << oas  # bits an OAS of `oas` cannot hold
    env.w(STRTAB_BASE, above | 0x1000, 8)
    env.w(CMDQ_BASE, above | 0x2000 | 5, 8)
    env.w(GERROR_IRQ_CFG0, above | 0x3004, 8)
    assert env.r(STRTAB_BASE, 8) == 0x1000
    assert env.r(CMDQ_BASE, 8) == 0x2005
    assert env.r(GERROR_IRQ_CFG0, 8) == 0x3004


@pytest.mark.parametrize(("off", "size"), [
    (CR0, 1), (CR0, 2), (CR0 + 2, 4), (CR0 + 1, 4),  # bad width / misaligned
    (STRTAB_BASE + 4, 8),  # misaligned 64-bit access
    (CR0, 8),  # a 64-bit access to a pair of 32-bit registers
    (0x30, 4), (0x48, 4), (0xFD0, 4), (0x1000, 4), (0x10000, 4), (0x20000, 4),  # unknown
    (0xA8, 4), (0xAC, 4),  # EVENTQ_PROD/CONS live in page 1 only
])
def test_raz_wi(off, size):
    env = Env()
    env.w(off, 0xFFFFFFFF_FFFFFFFF, size)
    assert env.r(off, size) == 0
    assert env.r(CR0ACK) == 0 and env.r(CR0) == 0


def test_page1_event_queue_pointers():
    env = Env().setup()
    env.qemu_s1()
    env.dma(8, 0x300000)
    assert env.r(0x100A8) == 1 and env.r(0xA8) == 0  # PROD via page 1 only
    env.w(0xAC, 1)  # page 0: no register there
    assert env.r(0x100AC) == 0
    env.w(0x100AC, 1)
    assert env.r(0x100AC) == 1


# ================================================================ robustness (Hypothesis)
ALL_OFFSETS = sorted({*ID_OFFSETS, CR0, CR0ACK, CR1, CR2, STATUSR, GBPA, IRQ_CTRL,
                      IRQ_CTRLACK, GERROR, GERRORN, GERROR_IRQ_CFG0, GERROR_IRQ_CFG0 + 4,
                      GERROR_IRQ_CFG1, GERROR_IRQ_CFG2, STRTAB_BASE, STRTAB_BASE + 4,
                      STRTAB_BASE_CFG, CMDQ_BASE, CMDQ_BASE + 4, CMDQ_PROD, CMDQ_CONS,
                      EVENTQ_BASE, EVENTQ_BASE + 4, EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1,
                      EVENTQ_IRQ_CFG2, EVENTQ_PROD, EVENTQ_CONS})
ADDRS = st.one_of(st.integers(0, 2**64 - 1), st.integers(0x200000, 0x204000),
                  st.integers(0x44000000, 0x44001000))
WRITES = st.lists(st.tuples(
    st.one_of(st.sampled_from(ALL_OFFSETS), st.integers(0, 0x20100)),
    st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 0x1F), st.just(0x41000000)),
    st.sampled_from([1, 2, 4, 8]),
), max_size=12)
DMAS = st.lists(st.tuples(
    st.one_of(st.just(8), st.integers(0, 2**32 - 1)), ADDRS, st.integers(1, 5000),
    st.booleans(), st.one_of(st.none(), st.integers(0, 2**20 - 1)), st.booleans(),
), min_size=1, max_size=4)


def check_result(r) -> None:
    assert isinstance(r, DmaResult)
    if r.ok:
        assert r.fault is None and not r.bus_error
    if r.fault is not None:
        assert r.fault.event in Event and r.fault.event != Event.E_PAGE_REQUEST


@settings(max_examples=60, deadline=None)
@given(WRITES, DMAS)
def test_random_register_writes_never_raise(writes, dmas):
    env = Env().setup()
    env.qemu_s1()
    for off, value, size in writes:
        env.w(off, value, size)
    for sid, addr, size, write, ssid, translated in dmas:
        check_result(env.dma(sid, addr, size, write=write, ssid=ssid, translated=translated))
        assert isinstance(env.smmu.ats_request(sid, addr, ssid=ssid, write=write), AtsResult)
    for off in ALL_OFFSETS:
        env.r(off)
    env.smmu.tick()
    assert all(e[0] & 0xFF != 0x24 for e in env.events())


@st.composite
def random_ste(draw) -> int:
    word = draw(st.integers(0, 2**512 - 1))
    if draw(st.booleans()):  # make it valid-looking: V=1 and a translating Config
        word = word & ~0xF | 1 | draw(st.sampled_from([0b100, 0b101, 0b110, 0b111])) << 1
        if draw(st.booleans()):  # and point S1ContextPtr / S2TTB at real memory
            word = STE.put(word, "S1CONTEXTPTR", 0x41300000)
            word = STE.put(word, "S2TTB", 0x41500000)
    return word


@settings(max_examples=150, deadline=None)
@given(random_ste(), ADDRS, st.one_of(st.none(), st.integers(0, 300)), st.booleans(),
       st.booleans())
def test_random_ste_never_raises(ste, addr, ssid, write, translated):
    env = Env().setup()
    env.qemu_s1(sid=None)
    env.s2_only(sid=9)  # leaves the 1 GiB S2 block at 0x41500000
    env.put_ste(8, ste)
    r = env.dma(8, addr, 8, write=write, ssid=ssid, translated=translated)
    check_result(r)
    if not ste & 1:  # recorded, but not for an ATS-translated one (IHI 0070 §3.9.1.3)
        assert r.fault.event == Event.C_BAD_STE and r.recorded == (not translated)
    if ste & 1 and (ste >> 1) & 0b111 in (0b110, 0b111) and not (ste >> 179) & 1:
        assert r.fault.event == Event.C_BAD_STE  # S2AA64=0 is ILLEGAL, not a crash
    assert isinstance(env.smmu.ats_request(8, addr, ssid=ssid), AtsResult)
    for ev in env.events():
        assert ev[0] & 0xFF in {e.value for e in Event} - {0x24}
        assert ev[0] >> 32 == 8

