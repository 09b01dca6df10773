"""vsmmu.sw.pagetable and vsmmu.sw.alloc: descriptor words checked against literals worked out
by hand from VMSAv8-64, and every table cross-checked with the independent walker
(vsmmu.hw.walk), which is what the SMMU model uses.

Descriptor arithmetic (same conventions as tests/test_walk.py):
  bits[1:0] 0b11 table/page, 0b01 block;  0x300 SH inner;  0x400 AF
  stage 1: 0x40 AP[1] (EL0), 0x80 AP[2] (read-only), AttrIndx << 2, 1<<53 PXN, 1<<54 UXN
  stage 2: 0x40 S2AP read, 0x80 S2AP write, 0x3C MemAttr 0b1111, XN[1:0] at 54:53
So a default stage-1 leaf is 0x741 (block) / 0x743 (page) | PXN | UXN = 0x0060_..., a
default stage-2 leaf 0x7FD / 0x7FF | XN[1] = 0x0040_...
"""

from __future__ import annotations

import pytest

from vsmmu.arch.faults import FaultError
from vsmmu.arch.layouts import Event
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.walk import Perm, S1Config, S2Config, walk_s1, walk_s2
from vsmmu.sw.alloc import Allocator, OutOfMemory
from vsmmu.sw.pagetable import IpaView, MappingError, PageTable

K4, K16, K64 = 4096, 16384, 65536
M2, M32, M512, G1 = 1 << 21, 1 << 25, 1 << 29, 1 << 30
POOL = 0x1000_0000


@pytest.fixture
def mem() -> PhysMem:
    m = PhysMem(48)
    m.add(POOL, 0x40_0000)
    return m


def table(mem: PhysMem, **kw) -> PageTable:
    return PageTable(mem, Allocator(POOL, 0x40_0000), **kw)


def s1cfg(pt: PageTable, **kw) -> S1Config:
    return S1Config(t0sz=pt.tsz, t1sz=pt.tsz, tg0=pt.granule, tg1=pt.granule, epd0=False,
                    epd1=True, ttb0=pt.ttb, ttb1=0, oa_bits=48, tbi0=False, tbi1=False,
                    affd=False, had0=False, had1=False, **kw)


def s2cfg(pt: PageTable, **kw) -> S2Config:
    return S2Config(t0sz=pt.tsz, sl0=pt.sl0, granule=pt.granule, ps_bits=48, ttb=pt.ttb,
                    affd=False, vmid=0, **kw)


def P(priv: str, user: str) -> Perm:
    return Perm(priv[0] == "r", priv[1] == "w", priv[2] == "x",
                user[0] == "r", user[1] == "w", user[2] == "x")


# ------------------------------------------------------------------ 4K stage 1
# T0SZ=25: 39-bit VA, start level 1 (VA[38:30]), root = the first 4K of the pool.
def test_4k_s1_descriptors(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    assert (pt.start_level, pt.root, pt.concat) == (1, POOL, 1)

    pt.map(0x4000_0000, 0x8000_0000, G1)  # L1[1]: 1G block
    assert pt.descriptors(0x4000_0000) == [(1, POOL + 8, 0x0060_0000_8000_0741)]

    pt.map(0x20_0000, 0x4060_0000, M2, write=False)  # L1[0] -> L2 at POOL+0x1000, L2[1]
    assert pt.descriptors(0x20_0000) == [
        (1, POOL, 0x1000_1003),
        (2, POOL + 0x1008, 0x0060_0000_4060_07C1),  # AP=0b11: read-only, EL0
    ]
    # L2[0] -> L3 at POOL+0x2000, L3[1]: page, AttrIndx 2 (0x8), AP=00, EL0-executable (PXN only)
    pt.map(0x1000, 0x4400_0000, K4, exec=True, user=False, attr=2)
    assert pt.descriptors(0x1000)[1:] == [
        (2, POOL + 0x1000, 0x1000_2003),
        (3, POOL + 0x2008, 0x0020_0000_4400_070B),
    ]

    cfg = s1cfg(pt)
    walks = {va: walk_s1(mem, cfg, va) for va in (0x4123_4567, 0x21_2345, 0x1ABC)}
    assert [(w.out, w.level, w.size) for w in walks.values()] == [
        (0x8123_4567, 1, G1), (0x4061_2345, 2, M2), (0x4400_0ABC, 3, K4)]
    assert walks[0x4123_4567].perm == P("rw-", "rw-")
    assert walks[0x21_2345].perm == P("r--", "r--")
    assert walks[0x1ABC].perm == P("rw-", "--x")
    assert walks[0x1ABC].attr == 2
    for va, w in walks.items():
        assert pt.translate(va) == w.out
    assert pt.translate(0x2000) is None and pt.translate(0x8000_0000) is None


# ------------------------------------------------------------------ 16K stage 2
# S2T0SZ=28: 36-bit IPA; SL0=1 starts at level 2 (IPA[35:25], one 16K table).
def test_16k_s2_32m_block(mem):
    pt = table(mem, stage=2, granule=K16, tsz=28)
    assert (pt.sl0, pt.start_level, pt.concat) == (1, 2, 1)
    pt.map(0x200_0000, 0x8000_0000, M32)
    assert pt.descriptors(0x200_0000) == [(2, POOL + 8, 0x0040_0000_8000_07FD)]
    leaf = walk_s2(mem, s2cfg(pt), 0x2AB_CDEF)
    assert (leaf.out, leaf.level, leaf.size, leaf.attr) == (0x80AB_CDEF, 2, M32, 0xF)
    assert leaf.perm == P("rw-", "rw-")


# ------------------------------------------------------------------ 64K stage 1
# T0SZ=22: 42-bit VA, start level 2 (VA[41:29], 8192 entries = one 64K table).
def test_64k_s1_512m_block(mem):
    pt = table(mem, stage=1, granule=K64, tsz=22)
    assert pt.start_level == 2
    pt.map(0x2000_0000, 0x6000_0000, M512, exec=True, user=False, attr=1)
    # AttrIndx 1 = 0x4, AP=00, SH, AF, block: 0x705; PXN (bit 53) only
    assert pt.descriptors(0x2000_0000) == [(2, POOL + 8, 0x0020_0000_6000_0705)]
    leaf = walk_s1(mem, s1cfg(pt), 0x2123_4567)
    assert (leaf.out, leaf.level, leaf.size, leaf.attr) == (0x6123_4567, 2, M512, 1)


# ------------------------------------------------------------------ 4K stage 2, concatenated
# S2T0SZ=24: 40-bit IPA; SL0=1 starts at level 1 with 2 concatenated tables (8K root).
def test_4k_s2_concatenated_root(mem):
    pt = table(mem, stage=2, granule=K4, tsz=24)
    assert (pt.sl0, pt.start_level, pt.concat) == (1, 1, 2)
    pt.map(0x80_4000_0000, 0x1_0000_0000, G1, write=False)  # L1 index 513, second table
    assert pt.descriptors(0x80_4000_0000) == [(1, POOL + 0x1008, 0x0040_0001_0000_077D)]
    leaf = walk_s2(mem, s2cfg(pt), 0x80_4000_1234)
    assert (leaf.out, leaf.size, leaf.perm) == (0x1_0000_1234, G1, P("r--", "r--"))


def test_explicit_sl0_and_64k_s2(mem):
    pt = table(mem, stage=2, granule=K64, tsz=22, sl0=1)
    pt.map(0x4000_0000, 0x2000_0000, M512)
    assert pt.descriptors(0x4000_0000) == [(2, POOL + 16, 0x0040_0000_2000_07FD)]
    assert walk_s2(mem, s2cfg(pt), 0x4000_0010).out == 0x2000_0010


@pytest.mark.parametrize("exec_, priv_exec, xn, x", [
    (True, True, 0b00, ("rwx", "rwx")),
    (True, False, 0b01, ("rw-", "rwx")),
    (False, False, 0b10, ("rw-", "rw-")),
    (False, True, 0b11, ("rwx", "rw-")),
])
def test_s2_execute_encodings(mem, exec_, priv_exec, xn, x):
    pt = table(mem, stage=2, granule=K4, tsz=32)
    pt.map(0, 0x4000_0000, K4, exec=exec_, priv_exec=priv_exec)
    assert pt.descriptors(0)[-1][2] == (xn << 53) | 0x4000_07FF
    assert walk_s2(mem, s2cfg(pt, xnx=True), 0).perm == P(*x)


def test_s2_write_only_and_attr(mem):
    pt = table(mem, stage=2, granule=K4, tsz=32)
    pt.map(0, 0x4000_0000, K4, read=False, attr=0)  # Device-nGnRnE, S2AP=0b10
    assert pt.descriptors(0)[-1][2] == 0x0040_0000_4000_0783


# ------------------------------------------------------------------ map / unmap
def test_mixed_pages_and_blocks(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0x1F_F000, 0x401F_F000, 0x20_2000)
    assert pt.unmap(0x1F_F000, 0x20_2000) == [
        (0x1F_F000, K4), (0x20_0000, M2), (0x40_0000, K4)]
    pt.map(0x1F_F000, 0x401F_F000, 0x20_2000, block=False)
    assert len(pt.unmap(0x1F_F000, 0x20_2000)) == 0x202
    assert pt.translate(0x30_0000) is None


def test_block_needs_matching_output_alignment(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0x20_0000, 0x4000_1000, M2)  # output not 2M-aligned: pages
    assert pt.descriptors(0x20_0000)[-1][0] == 3


def test_unmap_splits_blocks_twice(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0x4000_0000, 0x8000_0000, G1)
    assert pt.unmap(0x4020_1000, K4) == [(0x4020_1000, K4)]
    assert pt.translate(0x4020_1000) is None
    assert pt.translate(0x4020_0FFF) == 0x8020_0FFF
    assert pt.translate(0x4020_2000) == 0x8020_2000
    assert pt.translate(0x7FFF_FFFF) == 0xBFFF_FFFF
    levels = [lvl for lvl, _, _ in pt.descriptors(0x4020_0000)]
    assert levels == [1, 2, 3]
    # The split copies the block's attributes: page 0 of 2M block 1 of the old 1G block.
    assert pt.descriptors(0x4020_0000)[-1][2] == 0x0060_0000_8020_0743
    assert pt.descriptors(0x4000_0000)[-1] == (2, POOL + 0x1000, 0x0060_0000_8000_0741)
    leaf = walk_s1(mem, s1cfg(pt), 0x4050_0000)  # 2M block 2 stayed a block
    assert (leaf.out, leaf.level) == (0x8050_0000, 2)
    with pytest.raises(FaultError) as info:
        walk_s1(mem, s1cfg(pt), 0x4020_1000)
    assert info.value.fault.event == Event.F_TRANSLATION


def test_unmap_straddling_hole(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0x20_0000, 0x4020_0000, M2)
    assert pt.unmap(0x1F_F000, 0x2000) == [(0x20_0000, K4)]
    assert pt.unmap(0x1000, 0x1000) == []


def test_map_over_mapping_fails_without_writing(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0x1000, 0x4000_1000, K4)
    with pytest.raises(MappingError, match="0x1000 is already mapped"):
        pt.map(0, 0x5000_0000, 0x3000)
    assert pt.translate(0) is None and pt.translate(0x2000) is None
    assert pt.translate(0x1000) == 0x4000_1000


@pytest.mark.parametrize("first, second", [
    ((0x1000, 0x4000_1000, K4), (0x1000, 0x5000_0000, K4)),  # a page over a page
    ((0x20_0000, 0x4020_0000, M2), (0x20_3000, 0x5000_0000, K4)),  # a page inside a block
])
def test_a_one_page_map_over_any_leaf_on_its_walk_fails_without_writing(mem, first, second):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(*first)
    before = {pa: mem.read(pa, 8) for _, pa, _ in pt.descriptors(second[0])}
    with pytest.raises(MappingError, match=f"{second[0]:#x} is already mapped"):
        pt.map(*second)
    assert {pa: mem.read(pa, 8) for _, pa, _ in pt.descriptors(second[0])} == before
    assert pt.translate(second[0]) == first[1] + second[0] - first[0]


def test_map_pages_writes_page_descriptors_to_scattered_outputs_across_tables(mem):
    """Stage-2 page descriptor by hand (DDI 0487 D8.3): OA | AF (bit 10) | SH=0b11
    (9:8) | S2AP=RW (7:6) | MemAttr=0b1111 (5:2) | page (1:0 = 0b11), and XN[1:0]=0b10
    (54:53, no execution at any EL)."""
    pt = table(mem, stage=2, granule=K4, tsz=24)
    iova = M2 - 2 * K4  # two pages below a level-3 table's end, one above
    outs = [0x4000_5000, 0x4000_1000, 0x7000_0000]
    pt.map_pages(iova, outs, exec=False)
    for i, out in enumerate(outs):
        *_, (level, _, desc) = pt.descriptors(iova + i * K4)
        assert (level, desc) == (3, 0x0040_0000_0000_07FF | out)
        assert pt.translate(iova + i * K4 + 0x10) == out + 0x10


def test_map_pages_over_a_mapped_page_fails_without_writing(mem):
    pt = table(mem, stage=2, granule=K4, tsz=24)
    pt.map(0x3000, 0x4000_3000, K4)
    used = pt.alloc.next
    with pytest.raises(MappingError, match="0x3000 is already mapped"):
        pt.map_pages(0x1000, [0x5000_1000, 0x5000_2000, 0x5000_3000])
    assert [pt.translate(a) for a in (0x1000, 0x2000, 0x3000)] == [None, None, 0x4000_3000]
    assert pt.alloc.next == used  # no table made either
    with pytest.raises(MappingError, match="unaligned"):
        pt.map_pages(0x1000, [0x5000_0800])


def test_ipa_view_follows_every_stage2_change(mem):
    """IpaView remembers translations between changes: each map, unmap and block split
    made through the table is seen at once, through the same view."""
    mem.add(0x4000_0000, M2)
    s2 = table(mem, stage=2, granule=K4, tsz=24)
    view = IpaView(mem, s2)
    assert view.pa_of(0x1234) is None
    s2.map(0, 0x4000_0000, M2)  # a block
    assert view.pa_of(0x1234) == 0x4000_1234
    s2.unmap(0x1000, K4)  # splits the block
    assert view.pa_of(0x1234) is None and view.pa_of(0x2234) == 0x4000_2234
    s2.map_pages(0x1000, [0x4000_5000])
    assert view.pa_of(0x1234) == 0x4000_5234
    view.write(0x1ffe, b"abcd")  # across two pages, to two places
    assert mem.read(0x4000_5ffe, 2) == b"ab" and mem.read(0x4000_2000, 2) == b"cd"


def test_access_flag_clear(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0, 0x4000_0000, K4, af=False)
    with pytest.raises(FaultError) as info:
        walk_s1(mem, s1cfg(pt), 0)
    assert info.value.fault.event == Event.F_ACCESS


@pytest.mark.parametrize("kw, args", [
    (dict(), (0x800, 0x4000_0000, K4)),  # IOVA unaligned
    (dict(), (0, 0x4000_0800, K4)),  # output unaligned
    (dict(), (0, 0x4000_0000, 0)),  # empty
    (dict(), (1 << 39, 0x4000_0000, K4)),  # beyond T0SZ=25
    (dict(), (0, 1 << 48, K4)),  # beyond 48-bit output
    (dict(read=False), (0, 0x4000_0000, K4)),  # stage 1 cannot deny reads
])
def test_map_rejects(mem, kw, args):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    with pytest.raises(MappingError):
        pt.map(*args, **kw)


def test_map_reaches_the_last_page_and_block_of_both_ranges(mem):
    """The input range is [0, 2^(64-TxSZ)) and the output [0, 2^pa_bits): their last
    page / block can be mapped (an end exactly at 2^bits is inside)."""
    mem.add(0x4000_0000, K4)
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map((1 << 39) - K4, 0x4000_0000, K4)
    pt.map((1 << 39) - 2 * G1, (1 << 48) - G1, G1)  # last-but-one 1G slot, last 1G of OA
    leaf = walk_s1(mem, s1cfg(pt), (1 << 39) - 8)
    assert leaf.out == 0x4000_0000 + K4 - 8
    assert walk_s1(mem, s1cfg(pt), (1 << 39) - G1 - 8).out == (1 << 48) - 8
    s2 = table(mem, stage=2, granule=K64, tsz=34, sl0=1)  # 30-bit IPA: two 512M blocks
    s2.map(M512, 0x4000_0000, M512)
    assert walk_s2(mem, s2cfg(s2), (1 << 30) - 8).out == 0x4000_0000 + M512 - 8


@pytest.mark.parametrize("kw", [
    dict(granule=8192),
    dict(stage=1, tsz=10),  # 54-bit VA: beyond 48
    dict(stage=1, sl0=0),
    dict(stage=2, granule=K4, tsz=24, sl0=0),  # level 2 start cannot resolve 40 bits
    dict(stage=3),
])
def test_bad_geometry(mem, kw):
    with pytest.raises(ValueError):
        table(mem, **kw)


# ------------------------------------------------------------------ allocator
def test_allocator_alignment_and_exhaustion():
    a = Allocator(0x1000, 0x3000)
    assert a.alloc(8) == 0x1000
    assert a.alloc(0x100, 0x1000) == 0x2000
    assert a.alloc(8) == 0x2100
    assert a.free == 0x3000 - 0x1108
    with pytest.raises(OutOfMemory, match="0x2000 bytes aligned to 0x1000"):
        a.alloc(0x2000, 0x1000)
    with pytest.raises(ValueError):
        a.alloc(8, 3)


def test_block_map_over_an_emptied_table_keeps_the_table(mem):
    pt = table(mem, stage=1, granule=K4, tsz=25)
    pt.map(0x20_0000, 0x4000_0000, K4)
    pt.unmap(0x20_0000, K4)  # L2[1] still points at an (empty) L3 table
    l2_entry = pt.descriptors(0x20_0000)[1]
    pt.map(0x20_0000, 0x4020_0000, M2)
    assert pt.descriptors(0x20_0000)[1] == l2_entry
    assert [lvl for lvl, _, _ in pt.descriptors(0x3F_F000)] == [1, 2, 3]
    assert pt.translate(0x3F_F123) == 0x403F_F123
