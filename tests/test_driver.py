"""vsmmu.sw.driver end to end: the driver programs a real `Smmu` over `PhysMem` through its
MMIO and memory ports only, and devices DMA through `smmu.dma`.  Expected addresses
follow by hand from the mappings each test asks for; golden STE/CD words are worked
out from IHI 0070 field positions (see tests/test_layouts.py for the conventions).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import CD, CMD_ANY, COMMANDS, L1_CD, L1_STD, REG, STE, CmdError, Event, Op
from vsmmu.arch.queue import QueueGeometry
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.smmu import Smmu
from vsmmu.sw.alloc import Allocator
from vsmmu.sw.driver import (
    DEFAULT_MAIR,
    CommandError,
    DriverTimeout,
    SmmuDriver,
    SmmuInfo,
    cd,
    cd_used,
    cmd,
    ste_abort,
    ste_bypass,
    ste_nested,
    ste_s1,
    ste_s2,
    ste_used,
    update_steps,
)
from vsmmu.sw.pagetable import IpaView, PageTable

K4, K16, K64 = 4096, 16384, 65536
M2, M32, M512, G1 = 1 << 21, 1 << 25, 1 << 29, 1 << 30
HYP, HYP_SIZE = 0x1000_0000, 0x40_0000  # the hypervisor's table/queue pool


def dw(*dwords: int) -> int:
    return sum(d << (64 * i) for i, d in enumerate(dwords))


@dataclass
class Rig:
    mem: PhysMem
    smmu: Smmu
    alloc: Allocator
    drv: SmmuDriver

    def reg(self, name: str):
        r = REG[name]
        return r.layout.decode(r.read(self.smmu))

    def backed(self, pa: int, data: bytes = b"") -> None:
        self.mem.add(pa & ~0xFFF, 0x1000)
        self.mem.write(pa, data)


def make_rig(features: Features | None = None, mmio=None, **reset_kw) -> Rig:
    mem = PhysMem(48)
    mem.add(HYP, HYP_SIZE)
    smmu = Smmu(mem, features)
    alloc = Allocator(HYP, HYP_SIZE)
    drv = SmmuDriver(mmio(smmu) if mmio else smmu, mem, alloc, smmu.tick)
    drv.reset(**reset_kw)
    return Rig(mem, smmu, alloc, drv)


def s1_domain(r: Rig, sid: int, asid: int, granule: int = K4, tsz: int = 25) -> PageTable:
    pt = PageTable(r.mem, r.alloc, stage=1, granule=granule, tsz=tsz)
    table = r.drv.alloc_cd_table(sid, 0)
    r.drv.write_cd(sid, 0, cd(asid, pt.ttb, tsz, tg0=granule))
    r.drv.write_ste(sid, ste_s1(table.ptr))
    return pt


def s2_domain(r: Rig, sid: int, vmid: int, granule: int = K4, tsz: int = 24) -> PageTable:
    pt = PageTable(r.mem, r.alloc, stage=2, granule=granule, tsz=tsz)
    r.drv.write_ste(sid, ste_s2(vmid=vmid, ttb=pt.ttb, t0sz=tsz, sl0=pt.sl0, tg=granule))
    return pt


# ------------------------------------------------------------------ probe / reset
@pytest.mark.parametrize("recinvsid", [True, False])
def test_reset_sets_recinvsid_as_asked(recinvsid):
    """CR2 = PTM (bit 2) | RECINVSID (bit 1) as Linux writes it, or PTM alone; with
    RECINVSID=0 a stray StreamID is terminated without C_BAD_STREAMID (IHI 0070 §6.3.12)."""
    r = make_rig(two_level=False, log2_sids=6, recinvsid=recinvsid)
    assert r.smmu.read(REG["CR2"].offset, 4) == (0x6 if recinvsid else 0x4)
    assert not r.smmu.dma(64, 0x1000).ok
    faults = [(f.event, f.sid) for f in r.drv.events().faults]
    assert faults == ([(Event.C_BAD_STREAMID, 64)] if recinvsid else [])



def test_probe_reads_id_registers():
    feat = Features(s2p=False, sidsize=12, ssidsize=5, oas_bits=44,
                    granules=frozenset({K4, K64}), st_2lvl=False, cd_2lvl=False, ril=False,
                    ats=False, msi=False, cmdqs=10, eventqs=9)
    mem = PhysMem()
    drv = SmmuDriver(Smmu(mem, feat), mem, Allocator(0, 0x1000))
    assert drv.probe() == SmmuInfo(
        s1=True, s2=False, asid16=True, vmid16=False, sidsize=12, ssidsize=5, oas_bits=44,
        granules=frozenset({K4, K64}), st_2lvl=False, cd_2lvl=False, ril=False, ats=False,
        msi=False, had=True, xnx=True, cmdqs=10, eventqs=9)


def test_reset_linear():
    r = make_rig(two_level=False, log2_sids=6)
    ack = r.reg("CR0ACK")
    assert (ack.SMMUEN, ack.EVENTQEN, ack.CMDQEN) == (1, 1, 1)
    assert r.reg("GBPA").ABORT == 1
    assert r.reg("IRQ_CTRLACK") == dict(GERROR_IRQEN=0, PRIQ_IRQEN=0, EVENTQ_IRQEN=0)
    cfg = r.reg("STRTAB_BASE_CFG")
    assert (cfg.FMT, cfg.LOG2SIZE) == (0, 6)
    # Allocation order: stream table (64 STEs, 4K), CMDQ (256 x 16 B), EVENTQ (256 x 32 B).
    assert r.reg("STRTAB_BASE").ADDR == HYP
    assert (r.reg("CMDQ_BASE").ADDR, r.reg("CMDQ_BASE").LOG2SIZE) == (HYP + 0x1000, 8)
    assert (r.reg("EVENTQ_BASE").ADDR, r.reg("EVENTQ_BASE").LOG2SIZE) == (HYP + 0x2000, 8)

    assert r.drv.write_ste(5, ste_bypass()) == 2  # from V=0: dword 1, then dword 0
    assert r.mem.read_int(HYP + 5 * 64, 64) == dw(0x9, 0x1000_0000_0000)
    r.backed(0x4000_0000, b"byp")
    assert r.smmu.dma(5, 0x4000_0000, 3).data == b"byp"

    assert not r.smmu.dma(6, 0x4000_0000).ok  # still V=0
    with pytest.raises(ValueError, match="beyond the 6-bit stream table"):
        r.drv.write_ste(64, ste_bypass())
    assert not r.smmu.dma(64, 0x4000_0000).ok
    assert [(f.event, f.sid) for f in r.drv.events().faults] == [
        (Event.C_BAD_STE, 6), (Event.C_BAD_STREAMID, 64)]


def test_reset_two_level_allocates_l2_lazily():
    r = make_rig()  # SIDSIZE 16 > SPLIT 8: 2-level, 256 L1 descriptors at HYP
    cfg = r.reg("STRTAB_BASE_CFG")
    assert (cfg.FMT, cfg.SPLIT, cfg.LOG2SIZE) == (1, 8, 16)
    l1 = r.reg("STRTAB_BASE").ADDR
    assert r.mem.read_int(l1 + 8 * 0x12, 8) == 0
    assert r.drv.read_ste(0x1234) == 0

    r.drv.write_ste(0x1234, ste_abort())
    desc = L1_STD.decode(r.mem.read_int(l1 + 8 * 0x12, 8))
    assert desc.SPAN == 9 and desc.L2PTR % (256 * 64) == 0
    assert r.mem.read_int(desc.L2PTR + 0x34 * 64, 64) == ste_abort()
    assert r.drv.read_ste(0x1234) == ste_abort()

    aborted = r.smmu.dma(0x1234, 0x1000)
    assert not aborted.ok and aborted.fault is None  # abort STE: no event
    assert not r.smmu.dma(0x2000, 0x1000).ok  # L1[0x20] still SPAN=0
    assert [(f.event, f.sid) for f in r.drv.events().faults] == [(Event.C_BAD_STREAMID, 0x2000)]


def test_reset_again_switches_gbpa():
    r = make_rig(gbpa_abort=False)
    assert r.reg("GBPA").ABORT == 0
    r.drv.reset(log2_sids=10)
    assert r.reg("GBPA").ABORT == 1
    assert r.reg("CR0ACK").SMMUEN == 1
    r.drv.write_ste(0x3FF, ste_bypass())
    r.backed(0x4000_0000, b"ok")
    assert r.smmu.dma(0x3FF, 0x4000_0000, 2).data == b"ok"


def test_irqs_enabled_on_request():
    r = make_rig(irqs=True)
    assert r.reg("IRQ_CTRLACK") == dict(GERROR_IRQEN=1, PRIQ_IRQEN=0, EVENTQ_IRQEN=1)
    r.drv.sync(cs="irq")
    assert r.smmu.irqs["cmd_sync"] == 1


# ------------------------------------------------------------------ translation
@pytest.mark.parametrize("two_level", [False, True])
def test_s1_dma_unmap_and_tlbi(two_level):
    r = make_rig(two_level=two_level, log2_sids=10)
    pt = s1_domain(r, sid=0x123, asid=5)
    pt.map(0x1_0000, 0x4000_0000, 0x2000)
    r.backed(0x4000_0000)
    r.backed(0x4000_1010, b"dma!")

    res = r.smmu.dma(0x123, 0x1_1010, 4)
    assert (res.ok, res.pa, res.data) == (True, 0x4000_1010, b"dma!")
    assert r.smmu.dma(0x123, 0x1_0000, write=True, data=b"xy").ok
    assert r.mem.read(0x4000_0000, 2) == b"xy"

    removed = pt.unmap(0x1_1000, K4)
    assert removed == [(0x1_1000, K4)]
    assert r.smmu.dma(0x123, 0x1_1010, 4).ok  # the IOTLB still holds the page
    for start, length in removed:
        r.drv.tlbi_va(start, length, asid=5)
    res = r.smmu.dma(0x123, 0x1_1010, 4)
    assert not res.ok and res.fault.event == Event.F_TRANSLATION
    assert r.smmu.dma(0x123, 0x1_0000, 2).data == b"xy"  # the other page is untouched

    batch = r.drv.events()
    assert not batch.overflow and batch.unknown == ()
    [f] = batch.faults
    assert (f.event, f.sid, f.input_addr, f.s2, f.rnw) == (
        Event.F_TRANSLATION, 0x123, 0x1_1010, False, True)
    assert r.drv.events().faults == ()


def test_s2_only_dma_unmap_and_tlbi():
    r = make_rig()
    pt = s2_domain(r, sid=7, vmid=3)
    pt.map(0x8000_0000, 0x4000_0000, M2)  # a 2M block
    r.backed(0x4010_0020, b"ipa")
    res = r.smmu.dma(7, 0x8010_0020, 3)
    assert (res.pa, res.data) == (0x4010_0020, b"ipa")

    removed = pt.unmap(0x8010_0000, K4)  # splits the block
    assert removed == [(0x8010_0000, K4)]
    for ipa, length in removed:
        r.drv.tlbi_s2_ipa(ipa, length, vmid=3)
    res = r.smmu.dma(7, 0x8010_0020, 3)
    assert not res.ok
    assert r.smmu.dma(7, 0x8010_1000, 3).pa == 0x4010_1000  # rest of the block still maps
    [f] = r.drv.events().faults
    assert (f.event, f.sid, f.s2, f.ipa, f.input_addr) == (
        Event.F_TRANSLATION, 7, True, 0x8010_0000, 0x8010_0020)


def test_nested_dma_and_stage2_revocation():
    r = make_rig()
    guest_pa = 0x2000_0000
    r.mem.add(guest_pa, M2)  # guest RAM: IPA [0, 2M) -> PA [0x2000_0000, +2M)
    s2 = PageTable(r.mem, r.alloc, stage=2, granule=K4, tsz=24)
    s2.map(0, guest_pa, M2)

    # The guest's own structures, built in its IPA space.
    gmem, galloc = IpaView(r.mem, s2), Allocator(0x1000, 0xF_F000)
    s1 = PageTable(gmem, galloc, stage=1, granule=K4, tsz=25)
    s1.map(0x7000_0000, 0x10_0000, K4)  # IOVA -> IPA 1M
    ctx = galloc.alloc(64, 64)
    gmem.write(ctx, CD.to_bytes(cd(3, s1.ttb, 25)))

    ste = ste_nested(ste_s1(ctx), ste_s2(vmid=9, ttb=s2.ttb, t0sz=24, sl0=s2.sl0))
    r.drv.write_ste(3, ste)
    r.mem.write(guest_pa + 0x10_0040, b"nest")
    res = r.smmu.dma(3, 0x7000_0040, 4)
    assert (res.pa, res.data) == (0x2010_0040, b"nest")

    # The hypervisor takes the page back: stage-2 unmap, IPA and combined invalidation.
    for ipa, length in s2.unmap(0x10_0000, K4):
        r.drv.tlbi_s2_ipa(ipa, length, vmid=9)
    r.drv.tlbi_nh_all(9)
    res = r.smmu.dma(3, 0x7000_0040, 4)
    assert not res.ok
    [f] = r.drv.events().faults
    assert (f.event, f.sid, f.s2, f.ipa, f.input_addr) == (
        Event.F_TRANSLATION, 3, True, 0x10_0000, 0x7000_0040)


@pytest.mark.parametrize("stage, granule, tsz, size, iova, out", [
    (1, K4, 25, G1, 0x4000_0000, 0x8000_0000),
    (1, K4, 25, M2, 0x20_0000, 0x4060_0000),
    (1, K16, 28, M32, 0x200_0000, 0x6000_0000),
    (2, K16, 28, M32, 0x200_0000, 0x6000_0000),
    (1, K64, 22, M512, 0x2000_0000, 0x6000_0000),
    (2, K64, 22, M512, 0x4000_0000, 0x2000_0000),
])
def test_block_mapping_dma(stage, granule, tsz, size, iova, out):
    r = make_rig()
    if stage == 1:
        pt = s1_domain(r, sid=1, asid=1, granule=granule, tsz=tsz)
    else:
        pt = s2_domain(r, sid=1, vmid=1, granule=granule, tsz=tsz)
    pt.map(iova, out, size)
    assert pt.descriptors(iova)[-1][2] & 3 == 0b01  # one block descriptor
    offset = size - 0x1000 + 0x123  # the block's last page
    r.backed(out + offset, b"blk")
    res = r.smmu.dma(1, iova + offset, 3)
    assert (res.pa, res.data) == (out + offset, b"blk")


# ------------------------------------------------------------------ CD tables
def test_linear_cd_table_with_substreams():
    r = make_rig()
    pt0 = PageTable(r.mem, r.alloc, tsz=25)
    pt5 = PageTable(r.mem, r.alloc, tsz=25)
    pt0.map(0, 0x4000_0000, K4)
    pt5.map(0, 0x4000_1000, K4)
    r.backed(0x4000_0000, b"ss0")
    r.backed(0x4000_1000, b"ss5")
    table = r.drv.alloc_cd_table(2, 3)
    assert r.drv.write_cd(2, 0, cd(1, pt0.ttb, 25)) == 2
    assert r.drv.write_cd(2, 5, cd(6, pt5.ttb, 25)) == 2
    assert r.mem.read_int(table.ptr + 5 * 64, 64) == cd(6, pt5.ttb, 25)
    r.drv.write_ste(2, ste_s1(table.ptr, s1cdmax=3, s1dss=2))  # no SSID: use CD 0
    assert r.smmu.dma(2, 0, 3).data == b"ss0"
    assert r.smmu.dma(2, 0, 3, ssid=5).data == b"ss5"
    with pytest.raises(ValueError, match="beyond S1CDMax"):
        r.drv.write_cd(2, 8, 0)


def test_two_level_cd_table():
    r = make_rig(Features(ssidsize=12))
    pt = PageTable(r.mem, r.alloc, tsz=25)
    pt.map(0x5000, 0x4000_2000, K4)
    r.backed(0x4000_2000, b"2lv")
    table = r.drv.alloc_cd_table(4, 12, two_level=True)
    assert table.s1fmt == 2
    r.drv.write_cd(4, 0x805, cd(9, pt.ttb, 25))  # leaf 2 of 4
    leaf = table.leaves[2]
    assert list(table.leaves) == [2]
    assert [r.mem.read_int(table.ptr + 8 * i, 8) for i in range(4)] == [
        0, 0, L1_CD.encode(V=1, L2PTR=leaf), 0]
    assert r.mem.read_int(leaf + 5 * 64, 64) == cd(9, pt.ttb, 25)
    r.drv.write_ste(4, ste_s1(table.ptr, s1cdmax=12, s1fmt=table.s1fmt, s1dss=1))
    assert r.smmu.dma(4, 0x5000, 3, ssid=0x805).data == b"2lv"
    assert not r.smmu.dma(4, 0x5000, 3, ssid=0x5).ok  # leaf 0 never allocated


# ------------------------------------------------------------------ commands
def last_commands(r: Rig, n: int):
    base = r.reg("CMDQ_BASE")
    q = QueueGeometry(base.ADDR, base.LOG2SIZE, 16)
    prod = r.reg("CMDQ_PROD").WR
    words = [r.mem.read_int(q.addr((prod - k) & q.ptr_mask), 16) for k in range(n, 0, -1)]
    return [COMMANDS[w & 0xFF].decode(w) for w in words]


def test_tlbi_va_range_commands():
    r = make_rig()
    r.drv.tlbi_va(0x1000, 37 * K4, asid=2)  # 37 = 0b100101 pages: 5 x 2^0, then 1 x 2^5
    va1, va2, sync = last_commands(r, 3)
    assert (va1.OP, va1.ADDR, va1.TG, va1.SCALE, va1.NUM, va1.ASID, va1.LEAF) == (
        Op.TLBI_NH_VA, 0x1000, 1, 0, 4, 2, 1)
    assert (va2.ADDR, va2.TG, va2.SCALE, va2.NUM) == (0x6000, 1, 5, 0)
    assert sync.OP == Op.SYNC


def test_tlbi_va_without_ril():
    r = make_rig(Features(ril=False))
    r.drv.tlbi_va(0x1000, 0x3000, asid=2)
    cmds = last_commands(r, 4)
    assert [(c.OP, c.ADDR, c.TG) for c in cmds[:3]] == [
        (Op.TLBI_NH_VA, a, 0) for a in (0x1000, 0x2000, 0x3000)]
    r.drv.tlbi_s2_ipa(0x20_0000, M2, vmid=4, leaf_size=M2)  # one command per leaf
    s2, sync = last_commands(r, 2)
    assert (s2.OP, s2.ADDR, s2.VMID, sync.OP) == (Op.TLBI_S2_IPA, 0x20_0000, 4, Op.SYNC)


def test_range_invalidation_is_exact():
    r = make_rig()
    pt = s1_domain(r, sid=1, asid=7)
    pt.map(0, 0x4000_0000, 8 * K4, block=False)
    for i in range(8):
        r.backed(0x4000_0000 + i * K4)
        assert r.smmu.dma(1, i * K4).ok  # fill the IOTLB
    pt.unmap(0, 8 * K4)
    r.drv.tlbi_va(2 * K4, 3 * K4, asid=7)
    assert [r.smmu.dma(1, i * K4).ok for i in range(8)] == [
        True, True, False, False, False, True, True, True]


def test_command_error_and_recovery():
    r = make_rig()
    pt = s1_domain(r, sid=1, asid=4)
    pt.map(0, 0x4000_0000, K4)
    r.backed(0x4000_0000)
    assert r.smmu.dma(1, 0).ok
    pt.unmap(0, K4)

    bad = CMD_ANY.encode(OP=0x07)  # unallocated opcode
    at = r.reg("CMDQ_CONS").RD & 0xFF
    r.drv.submit(bad, cmd(Op.TLBI_NH_ASID, ASID=4))
    with pytest.raises(CommandError, match="ILL at index") as info:
        r.drv.sync()
    e = info.value
    assert (e.err, e.index, e.cmd) == (CmdError.ILL, at, bad)
    assert r.smmu.dma(1, 0).ok  # the TLBI behind the bad command has not run
    with pytest.raises(CommandError):
        r.drv.cfgi_ste(1)  # still stopped

    handled = r.drv.recover()
    assert (handled.err, handled.index) == (CmdError.ILL, at)
    r.drv.sync()
    assert not r.smmu.dma(1, 0).ok  # the queue ran on: the TLBI took effect
    assert r.drv.recover() is None


def test_recovery_from_two_bad_commands_in_a_row():
    """After GERRORN acknowledges the first bad command the SMMU stops at once on the
    second: recover() must return (progress: the error moved), not time out."""
    r = make_rig()
    bad1, bad2 = CMD_ANY.encode(OP=0x07), CMD_ANY.encode(OP=0xFF)
    at = r.reg("CMDQ_CONS").RD & 0xFF
    r.drv.submit(bad1, bad2)
    with pytest.raises(CommandError):
        r.drv.sync()
    first = r.drv.recover()
    assert (first.err, first.index, first.cmd) == (CmdError.ILL, at, bad1)
    second = r.drv.recover()
    assert (second.err, second.index, second.cmd) == (CmdError.ILL, at + 1, bad2)
    r.drv.sync()
    assert r.drv.recover() is None


def test_small_queue_wraps_and_waits_for_space():
    r = make_rig(cmdq_log2=2)  # 4 entries
    for sid in range(12):
        r.drv.write_ste(sid, ste_bypass())
    r.drv.submit(*[cmd(Op.CFGI_STE, SID=s, LEAF=1) for s in range(10)])
    r.drv.sync()
    assert r.reg("CMDQ_CONS").RD == r.reg("CMDQ_PROD").WR


# ------------------------------------------------------------------ events
def test_event_queue_overflow():
    r = make_rig(evtq_log2=2)  # 4 records
    s1_domain(r, sid=1, asid=1)  # nothing mapped: every DMA faults
    recorded = [r.smmu.dma(1, i * K4).recorded for i in range(6)]
    assert recorded == [True] * 4 + [False] * 2
    batch = r.drv.events()
    assert batch.overflow
    assert [f.input_addr for f in batch.faults] == [0, K4, 2 * K4, 3 * K4]
    assert r.reg("EVENTQ_CONS").OVACKFLG == r.reg("EVENTQ_PROD").OVFLG

    assert r.smmu.dma(1, 0x10_0000).recorded
    batch = r.drv.events()
    assert not batch.overflow
    assert [f.input_addr for f in batch.faults] == [0x10_0000]


# ------------------------------------------------------------------ timeouts
class DeadMmio:
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        pass


class LostDoorbell:
    """Passes everything to the SMMU but CMDQ_PROD writes while `lost` is set."""

    def __init__(self, smmu: Smmu):
        self.smmu, self.lost = smmu, False

    def read(self, offset: int, size: int) -> int:
        return self.smmu.read(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        if not (self.lost and offset == REG["CMDQ_PROD"].offset):
            self.smmu.write(offset, value, size)


def test_unresponsive_device_times_out():
    mem = PhysMem()
    mem.add(HYP, 0x1_0000)
    drv = SmmuDriver(DeadMmio(), mem, Allocator(HYP, 0x1_0000), max_polls=20)
    with pytest.raises(DriverTimeout, match="CR0ACK"):
        drv.reset()


def test_stuck_queue_times_out():
    r = make_rig(mmio=LostDoorbell, cmdq_log2=2)
    r.drv.mmio.lost = True
    r.drv.max_polls = 20
    with pytest.raises(DriverTimeout, match="CMD_SYNC completion"):
        r.drv.cfgi_ste(0)
    with pytest.raises(DriverTimeout, match="command queue space"):
        r.drv.submit(*[cmd(Op.CFGI_STE, SID=0, LEAF=1)] * 5)


# ------------------------------------------------------------------ words
def test_word_builders_golden():
    # ste_s1: dword 0 V | Config 0b101 << 1 = 0xB with the CD address in place (QEMU's
    # 0x4130000b); dword 1 S1CIR=1 (bit 2), S1COR=1 (bit 4), S1CSH=3 (bits 7:6) = 0xD4.
    assert ste_s1(0x4130_0000) == dw(0x4130_000B, 0xD4)
    # bypass: V | 0b100 << 1 = 0x9; SHCFG=1 at STE bit 108 = dword 1 bit 44.
    assert ste_bypass() == dw(0x9, 0x1000_0000_0000)
    assert ste_abort() == dw(0x1)
    # ste_s2 dword 2: VMID 3 | S2T0SZ 24 << 32 | SL0 1 << 38 | IR0 1 << 40 | OR0 1 << 42 |
    # SH0 3 << 44 | S2PS 5 (48-bit) << 48 | S2AA64 << 51 | S2R << 58; dword 3 the table.
    s2 = ste_s2(vmid=3, ttb=0x4150_0000, t0sz=24, sl0=1)
    assert s2 == dw(0xD, 0, 0x040D_3558_0000_0003, 0x4150_0000)
    assert ste_nested(ste_s1(0x4130_0000), s2) == dw(
        0x4130_000F, 0xD4, 0x040D_3558_0000_0003, 0x4150_0000)
    # cd dword 0: T0SZ 0x19 | IR0 1 << 8 | OR0 1 << 10 | SH0 3 << 12 | EPD1 << 30 | V << 31 |
    # IPS 5 << 32 | AA64 << 41 | R << 45 | A << 46 | ASID 778 << 48; dword 1 TTB0 in place.
    assert cd(778, 0x4140_0000, 25) == dw(0x030A_6205_C000_3519, 0x4140_0000, 0, DEFAULT_MAIR)


def test_word_builders_reject_encodings():
    with pytest.raises(ValueError, match="TG0 granule"):
        cd(1, 0x1000, 25, tg0=0)
    with pytest.raises(ValueError, match="S2PS bits"):
        ste_s2(vmid=1, ttb=0, t0sz=24, sl0=1, ps=5)
    with pytest.raises(ValueError):
        ste_nested(ste_s2(vmid=1, ttb=0, t0sz=24, sl0=1), ste_s1(0x1000))


# ------------------------------------------------------------------ update ordering
_S2 = dict(ttb=0x5000, t0sz=24, sl0=1)
STES = {
    "invalid": 0,
    "abort": ste_abort(),
    "bypass": ste_bypass(),
    "s1": ste_s1(0x1000),
    "s1_ctx2": ste_s1(0x2000),
    "s1_mev": ste_s1(0x1000, MEV=1),
    "s1_dss_bypass": ste_s1(0x1000, s1cdmax=3, s1dss=1),
    "s2": ste_s2(vmid=1, **_S2),
    "s2_vmid2": ste_s2(vmid=2, **_S2),
    "nested": ste_nested(ste_s1(0x1000), ste_s2(vmid=1, **_S2)),
}


def consistent(entry: int, start: int, target: int, used) -> bool:
    """What the SMMU sees behaves as the start, the target, or is invalid (V=0)."""
    u = used(entry)
    return not entry & 1 or not (entry ^ start) & u or not (entry ^ target) & u


@pytest.mark.parametrize("a, b", list(itertools.permutations(STES, 2)))
def test_update_steps_never_mix(a, b):
    steps = update_steps(STES[a], STES[b], ste_used)
    assert steps and steps[-1] == STES[b]
    assert all(consistent(s, STES[a], STES[b], ste_used) for s in steps)


@pytest.mark.parametrize("a, b, syncs, breaks", [
    ("invalid", "s1", 2, False),
    ("bypass", "abort", 2, False),  # Linux KUnit: bypass<->abort 2
    ("abort", "bypass", 2, False),
    ("s1", "abort", 2, False),  # CD-table<->abort 2
    ("s1", "bypass", 3, False),  # CD-table<->bypass 3
    ("bypass", "s1", 3, False),
    ("s1", "s2", 3, True),  # S1<->S2 3
    ("s2", "s1", 3, True),
    ("s2", "nested", 2, False),
    ("nested", "s2", 2, False),
    ("s1", "s1_ctx2", 1, False),
    ("s2", "s2_vmid2", 1, False),
    ("s1", "s1_mev", 1, False),  # MEV is update-safe
    ("s1", "invalid", 2, False),
])
def test_update_step_counts(a, b, syncs, breaks):
    steps = update_steps(STES[a], STES[b], ste_used)
    assert len(steps) == syncs
    # a break passes through V=0 between two valid entries
    valid_ends = bool(STES[a] & 1 and STES[b] & 1)
    assert (valid_ends and any(not s & 1 for s in steps)) == breaks


def test_cd_update_steps():
    old, new = cd(1, 0x4000, 25), cd(2, 0x4000, 25)
    assert update_steps(old, new, cd_used) == [new]  # ASID change: one write
    dword0 = (1 << 64) - 1
    assert update_steps(0, old, cd_used) == [old & ~dword0, old]  # dwords 1-7, then 0
    assert update_steps(old, 0, cd_used) == [old & ~dword0, 0]  # dword 0 (V), then 1-7
    # EPD0: the TTB0 half is ignored, so changing TTB0 with it is one step
    off = cd(1, 0x4000, 25, EPD0=1)
    assert update_steps(off, cd(1, 0x8000, 25, EPD0=1), cd_used) == [cd(1, 0x8000, 25, EPD0=1)]


def test_write_ste_never_exposes_a_mixed_entry():
    """At every CFGI_STE the SMMU executes, the STE in memory is the old one, the new one
    (on the bits its config uses) or invalid."""
    r = make_rig()
    sid = 9
    snaps: list[int] = []

    def observe(kind, pa, size, who):
        if who is None or who.purpose != "cmdq":
            return
        c = r.mem.read_int(pa, 16)
        if c & 0xFF == Op.CFGI_STE and COMMANDS[Op.CFGI_STE].get(c, "SID") == sid:
            snaps.append(r.drv.read_ste(sid))

    r.mem.observers.append(observe)
    prev = 0
    for name in ("s1", "s2", "bypass", "nested", "s1_dss_bypass", "abort", "invalid", "s2"):
        word = STES[name]
        snaps.clear()
        assert r.drv.write_ste(sid, word) == len(snaps)
        assert snaps[-1] == word
        assert all(consistent(s, prev, word, ste_used) for s in snaps), name
        prev = word
    assert STE.get(r.drv.read_ste(sid), "CONFIG") == 0b110
