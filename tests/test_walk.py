"""Golden walks for vsmmu.hw.walk, with every descriptor written out by hand.

Descriptor arithmetic used below (VMSAv8-64):
  bits[1:0]  0b11 table (levels 0-2) / page (level 3), 0b01 block, bit 0 clear invalid
  0x400      AF (bit 10)            0x300  SH = inner shareable (bits 9:8)
  0x40       AP[1] (EL0 access)     0x80   AP[2] (read-only)       (stage 1)
  0x40       S2AP[0] (read)         0x80   S2AP[1] (write)         (stage 2)
  0x3C       stage-2 MemAttr 0b1111 (Normal WB);  MemAttr 0b0000 is Device-nGnRnE
  1 << 53 PXN / XN[0],  1 << 54 UXN / XN[1],  59 PXNTable, 60 UXNTable,
  61 APTable[0] (no EL0), 62 APTable[1] (no write)
So 0x743 = AF | SH | AP[1] | page, 0x7c3 = that | AP[2], 0x7FF = AF | SH | S2AP=RW |
MemAttr 0xF | page, 0x7FD = the same as a block.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsmmu.arch.faults import FaultError
from vsmmu.arch.layouts import Event, FaultClass
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.walk import (
    GRANULES,
    Access,
    Leaf,
    Perm,
    S1Config,
    S2Config,
    check_s1_perm,
    check_s2_perm,
    s2_geometry,
    s2_table_fetch,
    walk_s1,
    walk_s2,
)

K4, K16, K64 = 4096, 16384, 65536


def P(priv: str, user: str) -> Perm:
    """Perm from two 'rwx' strings, '-' for a missing right."""
    return Perm(priv[0] == "r", priv[1] == "w", priv[2] == "x",
                user[0] == "r", user[1] == "w", user[2] == "x")


def fault_of(fn, *args, **kw):
    with pytest.raises(FaultError) as info:
        fn(*args, **kw)
    return info.value.fault


def build(tables: dict[int, int], *regions: tuple[int, int], pa_bits: int = 48) -> PhysMem:
    mem = PhysMem(pa_bits)
    for base, size in regions:
        mem.add(base, size)
    for addr, desc in tables.items():
        mem.write_int(addr, desc, 8)
    return mem


def s1(**kw) -> S1Config:
    cfg = dict(t0sz=25, t1sz=25, tg0=K4, tg1=K4, epd0=False, epd1=True, ttb0=0x41400000,
               ttb1=0, oa_bits=48, tbi0=False, tbi1=False, affd=False, had0=False, had1=False)
    cfg.update(kw)
    return S1Config(**cfg)


def reads_of(mem: PhysMem) -> list[int]:
    seen: list[int] = []
    mem.observers.append(lambda kind, pa, size, who: seen.append(pa))
    return seen


# ------------------------------------------------------------------ 4K stage 1
# T0SZ=25: 39-bit VA, 4K granule: levels = ceil((39-12)/9) = 3, start at L1.
# L1 index VA[38:30], L2 VA[29:21], L3 VA[20:12].  TTB0 = 0x41400000.
S1_4K = {
    0x41400000: 0x41401003,            # L1[0]: table at 0x41401000 (QEMU worked example)
    0x41400008: 0x80000401,            # L1[1]: 1G block at 0x80000000, AF, AP=00
    0x41400010: 0x2000_0000_4140_3003,  # L1[2]: table 0x41403000 with APTable[0]
    0x41401008: 0x41402003,            # L2[1]: table at 0x41402000 (QEMU example)
    0x41401010: 0x44600401,            # L2[2]: 2M block at 0x44600000, AF, AP=00
    0x41401018: 0x2_0000_0003,         # L2[3]: table at 0x2_0000_0000 (beyond 32 bits)
    0x41401020: 0x70000003,            # L2[4]: table at 0x70000000, nothing behind it
    0x41402000: 0x44000743,            # L3[0]: page 0x44000000, RW at EL0 and EL1
    0x41402008: 0x440017C3,            # L3[1]: page 0x44001000, read-only (AP[2])
    0x41402010: 0x44002401,            # L3[2]: 0b01 at level 3 is reserved
    0x41402018: 0x44003742,            # L3[3]: bit 0 clear, invalid
    0x41402020: 0x44004343,            # L3[4]: 0x743 without AF
    0x41402028: 0x1_0000_0743,         # L3[5]: page 0x1_0000_0000 (beyond 32 bits)
    0x41402030: 0x0040_0000_4400_6403,  # L3[6]: UXN, AP=00
    0x41402038: 0x0020_0000_4400_7403,  # L3[7]: PXN, AP=00
    0x41402040: 0x44008403,            # L3[8]: AP=00, no XN
    # hierarchical path for VA 0x8000_0000 (L1[2]):
    0x41403000: 0x5800_0000_4140_4003,  # L2[0]: APTable[1] | UXNTable | PXNTable (62|60|59)
    0x41403008: 0x41405003,            # L2[1]: plain table
    0x41404000: 0x45000743,            # L3[0]: page 0x45000000, RW at EL0 and EL1
    0x41405000: 0x45100743,            # L3[0]: page 0x45100000, RW at EL0 and EL1
    # TTB1 = 0x50000000, T1SZ=25: same indices from VA[38:0]
    0x50000000: 0x50001003,            # L1[0]
    0x50001008: 0x50002003,            # L2[1]
    0x50002000: 0x0040_0000_6000_0403,  # L3[0]: page 0x60000000, UXN, AP=00
}


@pytest.fixture
def mem4k() -> PhysMem:
    return build(S1_4K, (0x41400000, 0x6000), (0x50000000, 0x3000))


def test_qemu_example_pages(mem4k):
    leaf = walk_s1(mem4k, s1(), 0x200ABC)
    assert leaf == Leaf(out=0x44000ABC, in_base=0x200000, out_base=0x44000000, size=0x1000,
                        level=3, perm=P("rw-", "rwx"), attr=0)
    ro = walk_s1(mem4k, s1(), 0x201000)
    assert (ro.out, ro.perm) == (0x44001000, P("r-x", "r-x"))
    check_s1_perm(ro, Access())
    f = fault_of(check_s1_perm, ro, Access(write=True))
    assert (f.event, f.s2, f.fault_class) == (Event.F_PERMISSION, False, FaultClass.IN)


def test_4k_blocks(mem4k):
    gig = walk_s1(mem4k, s1(), 0x76543210)  # L1 index 1, offset 0x36543210
    assert (gig.out, gig.in_base, gig.size, gig.level) == (0xB6543210, 0x40000000, 1 << 30, 1)
    two_meg = walk_s1(mem4k, s1(), 0x412345)  # L2 index 2, offset 0x12345
    assert (two_meg.out, two_meg.size, two_meg.level) == (0x44612345, 0x200000, 2)


@pytest.mark.parametrize("va", [0x202000, 0x203000, 0x209000])
def test_invalid_descriptors_translation_fault(mem4k, va):
    f = fault_of(walk_s1, mem4k, s1(), va)  # reserved 0b01 at L3, bit 0 clear, empty entry
    assert (f.event, f.s2, f.fault_class, f.ipa) == (Event.F_TRANSLATION, False,
                                                     FaultClass.IN, None)


def test_access_flag(mem4k):
    assert fault_of(walk_s1, mem4k, s1(), 0x204000).event == Event.F_ACCESS
    assert walk_s1(mem4k, s1(affd=True), 0x204000).out == 0x44004000


def test_address_size(mem4k):
    assert walk_s1(mem4k, s1(), 0x205000).out == 0x1_0000_0000
    assert fault_of(walk_s1, mem4k, s1(oa_bits=32), 0x205000).event == Event.F_ADDR_SIZE
    # a table address beyond the output size (L2[3]) faults before it is read
    assert fault_of(walk_s1, mem4k, s1(oa_bits=32), 0x600000).event == Event.F_ADDR_SIZE
    # ...and TTB0 itself beyond it, without any access
    seen = reads_of(mem4k)
    f = fault_of(walk_s1, mem4k, s1(oa_bits=32, ttb0=0x1_0000_0000), 0x200000)
    assert (f.event, seen) == (Event.F_ADDR_SIZE, [])


def test_walk_external_abort(mem4k):
    # L2[4] points at 0x70000000; VA 0x803000 uses L3 index 3 -> 0x70000018
    f = fault_of(walk_s1, mem4k, s1(), 0x803000)
    assert (f.event, f.fetch_addr, f.s2, f.fault_class) == (Event.F_WALK_EABT, 0x70000018,
                                                            False, FaultClass.TT)
    # with a 48-bit output the table at 0x2_0000_0000 is legal but not backed
    assert fault_of(walk_s1, mem4k, s1(), 0x600000).fetch_addr == 0x2_0000_0000


def test_xn_bits(mem4k):
    assert walk_s1(mem4k, s1(), 0x206000).perm == P("rwx", "---")  # UXN
    assert walk_s1(mem4k, s1(), 0x207000).perm == P("rw-", "--x")  # PXN; EL0 execute-only
    assert walk_s1(mem4k, s1(), 0x208000).perm == P("rwx", "--x")
    assert walk_s1(mem4k, s1(wxn=True), 0x208000).perm == P("rw-", "--x")  # WXN
    # EL0-writable: never EL1-executable; under WXN not EL0-executable either
    assert walk_s1(mem4k, s1(wxn=True), 0x200000).perm == P("rw-", "rw-")
    assert walk_s1(mem4k, s1(uwxn=True), 0x200000).perm == P("rw-", "rwx")


def test_permission_checks(mem4k):
    uxn = walk_s1(mem4k, s1(), 0x206000)
    check_s1_perm(uxn, Access(priv=True, write=True))
    check_s1_perm(uxn, Access(priv=True, exec=True))
    for access in (Access(), Access(exec=True), Access(write=True)):  # EL0: AP=00, UXN
        assert fault_of(check_s1_perm, uxn, access).event == Event.F_PERMISSION
    pxn = walk_s1(mem4k, s1(), 0x207000)
    check_s1_perm(pxn, Access(exec=True))
    assert fault_of(check_s1_perm, pxn, Access(exec=True, priv=True)).event == Event.F_PERMISSION


def test_hierarchical_permissions(mem4k):
    # L1[2] APTable[0] + L2[0] APTable[1]/UXNTable/PXNTable over an AP=01 page:
    # AP becomes 10 (EL1 read-only), no execution anywhere.
    leaf = walk_s1(mem4k, s1(), 0x80000000)
    assert (leaf.out, leaf.perm) == (0x45000000, P("r--", "---"))
    # HAD0 ignores the table attributes: the page's own AP=01
    assert walk_s1(mem4k, s1(had0=True), 0x80000000).perm == P("rw-", "rwx")
    # HAD1 is for the other half
    assert walk_s1(mem4k, s1(had1=True), 0x80000000).perm == P("r--", "---")
    # only APTable[0] above: EL0 loses data access (AP 01 -> 00); UXN is untouched, and as
    # EL0 can no longer write, EL1 may execute.
    assert walk_s1(mem4k, s1(), 0x80200000).perm == P("rwx", "--x")


def test_ttb1_region(mem4k):
    cfg = s1(epd1=False, ttb1=0x50000000)
    va = 0xFFFF_FF80_0020_0123  # bits [63:39] all ones, VA[38:0] = 0x200123
    leaf = walk_s1(mem4k, cfg, va)
    assert (leaf.out, leaf.in_base, leaf.perm) == (0x60000123, 0xFFFF_FF80_0020_0000,
                                                   P("rwx", "---"))
    # VA[55]=1 but bits [54:39] not all ones: the hole between the halves
    assert fault_of(walk_s1, mem4k, cfg, 0xFFFF_0000_0020_0000).event == Event.F_TRANSLATION
    # EPD1 (the default in s1()) disables the TTB1 walk without touching memory
    seen = reads_of(mem4k)
    assert fault_of(walk_s1, mem4k, s1(), va).event == Event.F_TRANSLATION
    assert seen == []


def test_epd0(mem4k):
    seen = reads_of(mem4k)
    assert fault_of(walk_s1, mem4k, s1(epd0=True), 0x200000).event == Event.F_TRANSLATION
    assert seen == []


def test_ttb0_range(mem4k):
    assert fault_of(walk_s1, mem4k, s1(), 0x80_0000_0000).event == Event.F_TRANSLATION  # VA[39]
    assert fault_of(walk_s1, mem4k, s1(), 1 << 63).event == Event.F_TRANSLATION


def test_tbi(mem4k):
    tagged0 = 0x5A00_0000_0020_0ABC  # VA[55]=0: TTB0; top byte 0x5A
    assert fault_of(walk_s1, mem4k, s1(), tagged0).event == Event.F_TRANSLATION
    leaf = walk_s1(mem4k, s1(tbi0=True), tagged0)
    assert (leaf.out, leaf.in_base) == (0x44000ABC, 0x5A00_0000_0020_0000)
    assert walk_s1(mem4k, s1(tbi0=True), 0x8000_0000_0020_0ABC).out == 0x44000ABC
    # VA[55]=1 selects TTB1 even with VA[63]=0; only TBI1 lets the top byte differ
    tagged1 = 0x7FFF_FF80_0020_0123
    cfg = s1(epd1=False, ttb1=0x50000000)
    assert fault_of(walk_s1, mem4k, cfg, tagged1).event == Event.F_TRANSLATION
    assert walk_s1(mem4k, replace(cfg, tbi1=True), tagged1).out == 0x60000123
    assert fault_of(walk_s1, mem4k, s1(tbi1=True), tagged0).event == Event.F_TRANSLATION


# ------------------------------------------------------------------ 16K stage 1
# T0SZ=16: ceil((48-14)/11) = 4 levels, start L0 with 2 entries (VA[47]);
# L1 VA[46:36], L2 VA[35:25], L3 VA[24:14].
S1_16K = {
    0x80000008: 0x80004003,            # L0[1] -> L1 at 0x80004000
    0x80004010: 0x80008003,            # L1[2] -> L2 at 0x80008000
    0x80004018: 0x0000_0010_0000_0401,  # L1[3]: a 64G block, not allowed with 16K
    0x80008018: 0x8000C003,            # L2[3] -> L3 at 0x8000C000
    0x80008020: 0xA0000401,            # L2[4]: 32M block at 0xA0000000, AF, AP=00
    0x8000C028: 0x90004443,            # L3[5]: page 0x90004000, AF, AP=01
    # TTB1 = 0x84000000, T1SZ=28: ceil((36-14)/11) = 2 levels, start L2 (2048 entries)
    0x84000038: 0x84004003,            # L2[7] -> L3 at 0x84004000
    0x84004048: 0x900084C3,            # L3[9]: page 0x90008000, AF, AP=11 (RO)
}


def test_16k():
    mem = build(S1_16K, (0x80000000, 0x10000), (0x84000000, 0x8000))
    cfg = s1(t0sz=16, tg0=K16, ttb0=0x80000000, t1sz=28, tg1=K16, ttb1=0x84000000,
             epd1=False)
    # VA = L0 1 (1<<47) + L1 2 (2<<36) + L2 3 (3<<25) + L3 5 (5<<14) + 0x1234
    page = walk_s1(mem, cfg, 0x8020_0601_5234)
    assert (page.out, page.size, page.level, page.perm) == (0x90005234, 0x4000, 3,
                                                            P("rw-", "rwx"))
    # L2 index 4 (4<<25), offset 0x1ABCDEF in a 32M block
    block = walk_s1(mem, cfg, 0x8020_09AB_CDEF)
    assert (block.out, block.in_base, block.size, block.level) == (
        0xA1ABCDEF, 0x8020_0800_0000, 1 << 25, 2)
    assert fault_of(walk_s1, mem, cfg, 0x8030_0000_0000).event == Event.F_TRANSLATION
    # TTB1: bits [63:36] ones, L2 7 (7<<25), L3 9 (9<<14), offset 0x10
    high = walk_s1(mem, cfg, 0xFFFF_FFF0_0E02_4010)
    assert (high.out, high.level, high.perm) == (0x90008010, 3, P("r-x", "r-x"))


# ------------------------------------------------------------------ 64K stage 1
# T0SZ=16: ceil((48-16)/13) = 3 levels, start L1 with 64 entries (VA[47:42]);
# L2 VA[41:29], L3 VA[28:16].
S1_64K = {
    0xC0000008: 0xC0010003,            # L1[1] -> L2 at 0xC0010000
    0xC0000010: 0x0000_0400_0000_0401,  # L1[2]: a 4T block, not allowed here
    0xC0010010: 0xC0020003,            # L2[2] -> L3 at 0xC0020000
    0xC0010020: 0xE0000401,            # L2[4]: 512M block at 0xE0000000
    0xC0020018: 0xD0010443,            # L3[3]: page 0xD0010000, AF, AP=01
    # TTB1 = 0xC8000000, T1SZ=22: ceil((42-16)/13) = 2 levels, start L2
    0xC8000028: 0xC8010003,            # L2[5] -> L3 at 0xC8010000
    0xC8010030: 0xD0020403,            # L3[6]: page 0xD0020000, AF, AP=00
}


def test_64k():
    mem = build(S1_64K, (0xC0000000, 0x30000), (0xC8000000, 0x20000))
    cfg = s1(t0sz=16, tg0=K64, ttb0=0xC0000000, t1sz=22, tg1=K64, ttb1=0xC8000000,
             epd1=False)
    # L1 1 (1<<42) + L2 2 (2<<29) + L3 3 (3<<16) + 0xABCD
    page = walk_s1(mem, cfg, 0x0400_4003_ABCD)
    assert (page.out, page.size, page.level) == (0xD001ABCD, K64, 3)
    # L2 index 4 (4<<29), offset 0x12345678 in a 512M block
    block = walk_s1(mem, cfg, 0x0400_9234_5678)
    assert (block.out, block.size, block.level) == (0xF2345678, 1 << 29, 2)
    assert fault_of(walk_s1, mem, cfg, 0x0800_0000_0000).event == Event.F_TRANSLATION
    # TTB1: bits [63:42] ones, L2 5 (5<<29), L3 6 (6<<16), offset 0x42
    high = walk_s1(mem, cfg, 0xFFFF_FC00_A006_0042)
    assert (high.out, high.perm) == (0xD0020042, P("rwx", "--x"))


def test_64k_52bit_output():
    # Block 0x5_0123_4000_0000 (512M aligned): desc bits [47:29] = 0x0123_4000_0000,
    # bits [15:12] = OA[51:48] = 5, AF, block -> 0x0000_0123_4000_5401.
    # L1[0] = 0x1003: a table whose OA[48] (desc bit 12) is set: 0x1_0000_0000_0000.
    tables = {
        0xC0000000: 0x1003,
        1 << 48: 0x0000_0123_4000_5401,  # L2[0] of the table at 2^48
        0xC0000008: 0xC0010003,          # L1[1] -> L2 at 0xC0010000
        0xC0010000: 0x0000_0123_4000_5401,
    }
    mem = build(tables, (0xC0000000, 0x20000), (1 << 48, K64), pa_bits=52)
    cfg = s1(t0sz=16, tg0=K64, ttb0=0xC0000000, oa_bits=52)
    assert walk_s1(mem, cfg, 0x1234_5678).out == 0x5_0123_5234_5678
    assert walk_s1(mem, cfg, 0x0400_1234_5678).out == 0x5_0123_5234_5678
    narrow = replace(cfg, oa_bits=48)
    seen = reads_of(mem)
    assert fault_of(walk_s1, mem, narrow, 0x1234_5678).event == Event.F_ADDR_SIZE  # table
    assert seen == [0xC0000000]
    assert fault_of(walk_s1, mem, narrow, 0x0400_1234_5678).event == Event.F_ADDR_SIZE  # leaf


def test_start_levels():
    """4K ia=48 -> L0, ia=39 -> L1; 16K ia=48 -> L0; 64K ia=48 -> L1: seen through the
    first descriptor address each reads with an empty table."""
    for granule, t0sz, first in ((K4, 16, 0x41400000 + 8 * 0x1FF),  # VA[47:39] = 0x1FF
                                 (K4, 25, 0x41400000 + 8 * 0x1FF),  # VA[38:30] = 0x1FF
                                 (K16, 16, 0x41400000 + 8 * 1),     # VA[47]
                                 (K64, 16, 0x41400000 + 8 * 0x3F)):  # VA[47:42]
        mem = build({}, (0x41400000, K64))
        seen = reads_of(mem)
        va = (1 << (64 - t0sz)) - 1
        assert fault_of(walk_s1, mem, s1(t0sz=t0sz, tg0=granule), va).event == \
            Event.F_TRANSLATION
        assert seen == [first]


# ------------------------------------------------------------------ stage 2
def s2(**kw) -> S2Config:
    cfg = dict(t0sz=24, sl0=1, granule=K4, ps_bits=48, ttb=0x80000000, affd=False, vmid=1)
    cfg.update(kw)
    return S2Config(**cfg)


# 4K, S2T0SZ=24 (40-bit IPA), SL0=1: start L1 resolving IPA[39:30], 10 bits = 2
# concatenated 512-entry tables at 0x80000000 (8K).  IPA 0x80_4020_1ABC:
# L1 index 0x201 = 513 (desc at 0x80000000 + 513*8 = 0x80001008), L2 1, L3 1.
S2_4K = {
    0x80001008: 0x80002003,            # L1[513] -> L2 at 0x80002000
    0x80001010: 0x400007FD,            # L1[514]: 1G block at 0x40000000, RW, MemAttr 0xF
    0x80002008: 0x80003003,            # L2[1] -> L3 at 0x80003000
    0x80002010: 0x70000003,            # L2[2] -> unbacked table
    0x80003008: 0x900007FF,            # L3[1]: page 0x90000000 RW, executable
    0x80003010: 0x0040_0000_9000_27FF,  # L3[2]: XN[1]
    0x80003018: 0x0020_0000_9000_37FF,  # L3[3]: XN[0]
    0x80003020: 0x0060_0000_9000_47FF,  # L3[4]: XN = 11
    0x80003028: 0x9000573F,            # L3[5]: S2AP = 00
    0x80003030: 0x900063FF,            # L3[6]: AF = 0
    0x80003038: 0x1_0000_77FF,         # L3[7]: page 0x1_0000_7000
}
IPA_L3 = 0x80_4020_0000  # + n * 0x1000 reaches L3[n]


@pytest.fixture
def mem_s2() -> PhysMem:
    return build(S2_4K, (0x80000000, 0x4000))


def test_s2_concatenated_walk(mem_s2):
    leaf = walk_s2(mem_s2, s2(), 0x80_4020_1ABC)
    assert leaf == Leaf(out=0x90000ABC, in_base=0x80_4020_1000, out_base=0x90000000,
                        size=0x1000, level=3, perm=Perm.ALL, attr=0xF)
    block = walk_s2(mem_s2, s2(), 0x80_8000_1234)  # L1 index 514
    assert (block.out, block.size, block.level) == (0x40001234, 1 << 30, 1)
    # The two tables span 8K: S2TTB bits below that are treated as zero.
    assert walk_s2(mem_s2, s2(ttb=0x80001000), 0x80_4020_1ABC).out == 0x90000ABC


def test_s2_faults(mem_s2):
    f = fault_of(walk_s2, mem_s2, s2(), 1 << 40)  # beyond the 40-bit IPA space
    assert (f.event, f.s2, f.ipa, f.fault_class) == (Event.F_TRANSLATION, True, 1 << 40,
                                                     FaultClass.IN)
    f = fault_of(walk_s2, mem_s2, s2(), IPA_L3 + 0x6000)
    assert (f.event, f.s2, f.ipa) == (Event.F_ACCESS, True, IPA_L3 + 0x6000)
    assert walk_s2(mem_s2, s2(affd=True), IPA_L3 + 0x6000).out == 0x90006000
    f = fault_of(walk_s2, mem_s2, s2(ps_bits=32), IPA_L3 + 0x7000)
    assert (f.event, f.s2) == (Event.F_ADDR_SIZE, True)
    assert fault_of(walk_s2, mem_s2, s2(ps_bits=32, ttb=1 << 32), IPA_L3).event == \
        Event.F_ADDR_SIZE
    # L2[2] -> table 0x70000000, L3 index 0: F_WALK_EABT with S2=1
    f = fault_of(walk_s2, mem_s2, s2(), 0x80_4040_0000, fault_class=FaultClass.TT)
    assert (f.event, f.s2, f.fetch_addr, f.fault_class) == (Event.F_WALK_EABT, True,
                                                            0x70000000, FaultClass.TT)
    f = fault_of(walk_s2, mem_s2, s2(), 0x80_0000_0000)  # L1[512] is empty
    assert (f.event, f.ipa) == (Event.F_TRANSLATION, 0x80_0000_0000)


def test_s2_permissions(mem_s2):
    none = walk_s2(mem_s2, s2(), IPA_L3 + 0x5000)
    assert none.perm == P("--x", "--x")
    f = fault_of(check_s2_perm, none, Access())
    assert (f.event, f.s2, f.ipa) == (Event.F_PERMISSION, True, IPA_L3 + 0x5000)
    # XN without XNX: bit 54 forbids execution everywhere, bit 53 is ignored
    assert walk_s2(mem_s2, s2(), IPA_L3 + 0x2000).perm == P("rw-", "rw-")
    assert walk_s2(mem_s2, s2(), IPA_L3 + 0x3000).perm == Perm.ALL
    assert walk_s2(mem_s2, s2(), IPA_L3 + 0x4000).perm == P("rw-", "rw-")
    # XNX: 10 neither, 01 EL1 may not execute, 11 EL0 may not execute
    xnx = s2(xnx=True)
    assert walk_s2(mem_s2, xnx, IPA_L3 + 0x2000).perm == P("rw-", "rw-")
    assert walk_s2(mem_s2, xnx, IPA_L3 + 0x3000).perm == P("rw-", "rwx")
    assert walk_s2(mem_s2, xnx, IPA_L3 + 0x4000).perm == P("rwx", "rw-")
    leaf = walk_s2(mem_s2, xnx, IPA_L3 + 0x3000)
    check_s2_perm(leaf, Access(exec=True))
    assert fault_of(check_s2_perm, leaf, Access(exec=True, priv=True)).event == \
        Event.F_PERMISSION


def test_s2_16k_concatenated_block():
    # 16K, S2T0SZ=16, SL0=2: start L1 resolving IPA[47:36], 12 bits = 2 concatenated tables.
    # IPA 0x8010_0123_4567: L1 index 0x801 (desc 0xA0000000 + 0x801*8 = 0xA0004008),
    # L2 index 0, offset 0x1234567 in a 32M block.
    # Block 0xB2000000 | AF | S2AP=01 (read) 0x40 | MemAttr 0x3C | 0b01 = 0xB200047D.
    mem = build({0xA0004008: 0xA0008003, 0xA0008000: 0xB200047D}, (0xA0000000, 0xC000))
    cfg = s2(t0sz=16, sl0=2, granule=K16, ttb=0xA0000000)
    leaf = walk_s2(mem, cfg, 0x8010_0123_4567)
    assert (leaf.out, leaf.size, leaf.level, leaf.perm, leaf.attr) == (
        0xB3234567, 1 << 25, 2, P("r-x", "r-x"), 0xF)
    f = fault_of(check_s2_perm, leaf, Access(write=True))
    assert (f.event, f.s2, f.ipa) == (Event.F_PERMISSION, True, 0x8010_0123_4567)


def test_s2_64k_level3_start():
    # 64K, S2T0SZ=39 (25-bit IPA), SL0=0: start L3 resolving IPA[24:16] (512 entries).
    # IPA 0x1A5_4321: L3 index 0x1A5, desc at 0x30000000 + 0x1A5*8 = 0x30000D28.
    mem = build({0x30000D28: 0xD00007FF}, (0x30000000, 0x1000))
    cfg = s2(t0sz=39, sl0=0, granule=K64, ttb=0x30000000)
    assert walk_s2(mem, cfg, 0x1A5_4321).out == 0xD0004321


@pytest.mark.parametrize("args, expected", [
    ((24, 1, K4), (1, 2)),     # the concatenated example above
    ((39, 0, K4), (2, 1)),
    ((30, 0, K4), (2, 16)),    # 34-bit IPA at L2: 2^(34-30) tables
    ((29, 0, K4), None),       # 32 tables
    ((33, 1, K4), (1, 1)),
    ((34, 1, K4), None),       # 30-bit IPA leaves L1 nothing to resolve
    ((16, 2, K4), (0, 1)),
    ((24, 2, K4), (0, 1)),
    ((25, 2, K4), None),
    ((16, 3, K4), None),       # SL0=3 reserved
    ((16, 2, K16), (1, 2)),
    ((25, 1, K16), (2, 8)),
    ((28, 1, K16), (2, 1)),
    ((39, 0, K16), (3, 1)),
    ((24, 0, K16), None),
    ((20, 3, K16), None),
    ((16, 2, K64), (1, 1)),
    ((12, 2, K64), (1, 1)),    # 52-bit IPA, 1024 L1 entries
    ((22, 1, K64), (2, 1)),
    ((18, 1, K64), (2, 16)),
    ((17, 1, K64), None),
    ((39, 0, K64), (3, 1)),
    ((30, 3, K64), None),
    ((16, 1, 8192), None),     # not a granule
])
def test_s2_geometry(args, expected):
    assert s2_geometry(*args) == expected


def test_s2_geometry_level_1_needs_pa_size():
    assert s2_geometry(16, 2, K64, pa_max=40) is None
    assert s2_geometry(16, 2, K64, pa_max=44) == (1, 1)
    assert s2_geometry(24, 2, K4, pa_max=42) is None
    assert s2_geometry(16, 2, K16, pa_max=42) == (1, 2)


# ------------------------------------------------------------------ nested
# Stage 2: 4K, S2T0SZ=32, SL0=1 -> L1 with 4 entries (IPA[31:30]), tables at 0x10000000.
NESTED_S2 = {
    0x10000008: 0x1400007FD,           # L1[1]: IPA 0x40000000 -> PA 0x1_4000_0000, 1G, RW
    0x10000010: 0x10001003,            # L1[2] -> L2 at 0x10001000
    0x10001000: 0x10002003,            # L2[0] -> L3 at 0x10002000
    0x10002000: 0x2000007C3,           # L3[0]: IPA 0x80000000 -> 0x2_0000_0000, Device, RW
    0x10002008: 0x2000017BF,           # L3[1]: S2AP=10, write only
    0x10002010: 0x2_0000_27FF,         # L3[2]: -> 0x2_0000_2000, nothing behind it
}
# Stage 1 (T0SZ=25, TTB0 = IPA 0x40000000 = PA 0x1_4000_0000).
NESTED_S1 = {
    0x1_4000_0000: 0x40001003,         # L1[0] -> L2 at IPA 0x40001000
    0x1_4000_1008: 0x40002003,         # L2[1] -> L3 at IPA 0x40002000
    0x1_4000_1010: 0x90000003,         # L2[2] -> IPA 0x90000000: a stage-2 hole
    0x1_4000_1018: 0x80001003,         # L2[3] -> IPA 0x80001000: stage 2 write only
    0x1_4000_1020: 0x80000003,         # L2[4] -> IPA 0x80000000: stage-2 Device memory
    0x1_4000_1028: 0x1_0000_0003,      # L2[5] -> IPA beyond the 32-bit stage-2 input
    0x1_4000_1030: 0x80002003,         # L2[6] -> IPA 0x80002000: unbacked PA
    0x1_4000_2000: 0x50000743,         # L3[0]: VA 0x200000 -> IPA 0x50000000
    0x2_0000_0008: 0x51000743,         # L3[1] of the Device-backed table
}


@pytest.fixture
def nested():
    mem = build(NESTED_S2 | NESTED_S1, (0x10000000, 0x3000), (0x1_4000_0000, 0x3000),
                (0x2_0000_0000, 0x1000))
    cfg2 = s2(t0sz=32, sl0=1, ttb=0x10000000)

    def run(va: int, **kw):
        c2 = replace(cfg2, **kw)
        return walk_s1(mem, s1(ttb0=0x40000000), va,
                       s2=lambda ipa, cls: s2_table_fetch(mem, c2, ipa, fault_class=cls))

    return mem, run


def test_nested_walk(nested):
    mem, run = nested
    seen = reads_of(mem)
    assert run(0x200ABC).out == 0x50000ABC  # an IPA
    assert 0x1_4000_0000 in seen and 0x40000000 not in seen


@pytest.mark.parametrize("va, event, ipa", [
    (0x400000, Event.F_TRANSLATION, 0x90000000),    # stage-2 L2[0x80] empty
    (0xA00000, Event.F_TRANSLATION, 0x1_0000_0000),  # beyond S2T0SZ
    (0x600000, Event.F_PERMISSION, 0x80001000),     # no stage-2 read permission
])
def test_nested_table_faults(nested, va, event, ipa):
    _, run = nested
    f = fault_of(run, va)
    assert (f.event, f.s2, f.fault_class, f.ipa) == (event, True, FaultClass.TT, ipa)


def test_nested_s2ptw(nested):
    _, run = nested
    # VA 0x801000: L2[4], L3 index 1 -> descriptor IPA 0x80000008, on Device memory
    assert run(0x801000).out == 0x51000000
    f = fault_of(run, 0x801000, ptw=True)
    assert (f.event, f.s2, f.fault_class, f.ipa) == (Event.F_PERMISSION, True, FaultClass.TT,
                                                     0x80000008)


def test_nested_stage1_fetch_abort(nested):
    _, run = nested
    f = fault_of(run, 0xC00000)
    assert (f.event, f.s2, f.fault_class, f.fetch_addr) == (Event.F_WALK_EABT, False,
                                                            FaultClass.TT, 0x2_0000_2000)


# ------------------------------------------------------------------ small pieces
def test_perm_and_access():
    assert Perm.ALL.intersect(P("r-x", "rw-")) == P("r-x", "rw-")
    assert P("rw-", "--x").intersect(P("r-x", "r-x")) == P("r--", "--x")
    assert Access(write=True, priv=True).allowed_by(P("-w-", "---"))
    assert not Access(write=True).allowed_by(P("-w-", "r-x"))
    assert Access(exec=True).allowed_by(P("---", "--x"))
    assert not Access(exec=True, priv=True).allowed_by(P("r--", "--x"))


# ------------------------------------------------------------------ robustness
REGION = 0x100000  # four 64K-aligned table pages
REGION_SIZE = 4 * K64
_into_region = st.tuples(st.integers(0, 3), st.integers(0, 0xFFF), st.integers(0, 0x1FFF)).map(
    lambda t: (REGION + t[0] * K64) | t[1] | t[2] << 51)
_desc = st.one_of(
    st.integers(0, (1 << 64) - 1),
    _into_region,
    _into_region.map(lambda d: d | 0x403),  # valid, AF set: walks go deeper
)


_S2_VALID = [(t, sl0, g) for g in sorted(GRANULES) for sl0 in range(3) for t in range(12, 40)
             if s2_geometry(t, sl0, g) is not None]


@settings(max_examples=150, deadline=None)
@given(
    pattern=st.lists(_desc, min_size=1, max_size=8),
    granule=st.sampled_from(sorted(GRANULES)),
    tsz=st.sampled_from([*range(16, 40), 10, 12, 41]),
    s2_geo=st.sampled_from(_S2_VALID + [(40, 0, K4), (16, 3, K4), (16, 0, 8192), (63, 2, K64)]),
    table=st.integers(0, 3),
    oa_bits=st.sampled_from([32, 40, 44, 48, 52]),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
    raw=st.integers(0, (1 << 64) - 1),
    mode=st.sampled_from(["low", "high", "raw"]),
    access=st.builds(Access, st.booleans(), st.booleans(), st.booleans()),
)
def test_walks_only_raise_faults(pattern, granule, tsz, s2_geo, table, oa_bits, flags, raw,
                                 mode, access):
    """Random table contents (often pointing back into the tables), any geometry, any
    address: a walk returns a consistent Leaf or raises FaultError, nothing else."""
    mem = PhysMem(52)
    mem.add(REGION, REGION_SIZE)
    data = b"".join(d.to_bytes(8, "little") for d in pattern)
    mem.write(REGION, (data * (REGION_SIZE // len(data) + 1))[:REGION_SIZE])
    ttb = REGION + table * K64
    t2, sl0, g2 = s2_geo
    cfg2 = S2Config(t0sz=t2, sl0=sl0, granule=g2, ps_bits=oa_bits, ttb=ttb,
                    affd=flags[0], vmid=0, ptw=flags[1], xnx=flags[2])
    cfg1 = S1Config(t0sz=tsz, t1sz=tsz, tg0=granule, tg1=granule, epd0=False, epd1=False,
                    ttb0=ttb, ttb1=ttb, oa_bits=oa_bits, tbi0=flags[3], tbi1=flags[3],
                    affd=flags[0], had0=flags[4], had1=flags[4], wxn=flags[5], uwxn=flags[6])
    fetch = (lambda ipa, cls: s2_table_fetch(mem, cfg2, ipa, fault_class=cls)) \
        if flags[7] else None
    for walk, check, cfg, t, kw in ((walk_s1, check_s1_perm, cfg1, tsz, {"s2": fetch}),
                                    (walk_s2, check_s2_perm, cfg2, t2, {})):
        low = (1 << max(0, 64 - t)) - 1  # addresses inside the input range are the useful ones
        addr = {"low": raw & low, "high": raw | ((1 << 64) - 1) ^ low, "raw": raw}[mode]
        try:
            leaf = walk(mem, cfg, addr, **kw)
        except FaultError:
            continue
        assert leaf.size & (leaf.size - 1) == 0 and leaf.in_base % leaf.size == 0
        assert leaf.out_base % leaf.size == 0 and leaf.out >> oa_bits == 0
        assert leaf.out - leaf.out_base == addr - leaf.in_base
        assert 0 <= leaf.level <= 3
        try:
            check(leaf, access)
        except FaultError as e:
            assert e.fault.event == Event.F_PERMISSION
