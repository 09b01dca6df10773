"""Device-level translation tests of vsmmu.hw.smmu: stream tables (linear, 2-level with
SPLIT 6/8/10), CD tables (linear, 2-level with 4K and 64K leaves), one DMA per stage-1
granule and half (TTB0/TTB1), stage-2-only and nested DMA, 4K splitting, and bounded
caches.  Walk-level details live in tests/test_walk.py; here every table is written as
literal descriptors and the result checked where the data lands in memory.

Descriptor words (VMSAv8-64): bits 1:0 = 0b11 table/page, 0b01 block; 0x743 = AF 0x400 |
SH=IS 0x300 | AP[1] (EL0 RW) 0x40 | page; stage 2: 0x7fd = AF | SH | S2AP=RW 0xc0 |
MemAttr=0xF 0x3c | block.
"""

from __future__ import annotations

import pytest
from smmu_env import (
    CDS,
    CMDQEN,
    CR0,
    DATA,
    EVENTQEN,
    PT,
    QEMU_CD_W0,
    QEMU_CD_W1,
    QEMU_CD_W2,
    QEMU_STE_W0,
    S2PT,
    SMMUEN,
    STRTAB,
    STRTAB_BASE,
    Env,
    command,
    s2_fields,
    words,
)

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import CD, STE, Event, Op

PATTERN = bytes(range(256))


def s1_env(**setup) -> Env:
    env = Env().setup(**setup)
    env.qemu_s1()
    return env


# ================================================================ the qemu-peer.md §4 DMA
def test_qemu_peer_s1_dma_both_directions():
    env = s1_env()
    env.mem.write(0x44000000, PATTERN)
    r = env.dma(8, 0x200000, 256)  # RAM(IOVA) -> device
    assert r.ok and r.pa == 0x44000000 and r.data == PATTERN
    r = env.dma(8, 0x200800, 256, write=True, data=PATTERN)  # device -> RAM(IOVA)
    assert r.ok and r.pa == 0x44000800
    assert env.mem.read(0x44000800, 256) == PATTERN
    assert env.events() == []


def test_bypass_ste():
    env = s1_env()
    env.put_ste(9, words(0x9))  # V=1, Config=0b100
    assert env.dma(9, DATA + 0x20, 4, write=True, data=b"byp!").pa == DATA + 0x20
    assert env.mem.read(DATA + 0x20, 4) == b"byp!"


def test_disabled_bypass_beyond_oas_aborts_without_event():
    """IHI 0070 §3.4: with SMMUEN=0 and GBPA.ABORT=0 an input address is output as is,
    but one beyond the OAS cannot be: the transaction is aborted, no event recorded."""
    features = Features(oas_bits=44)
    env = Env(features).setup(enable=False)
    env.mem.add(1 << 44, 0x1000)  # memory the OAS cannot reach (the model could)
    assert env.dma(8, DATA + 0x40, 4, write=True, data=b"low!").ok
    assert env.mem.read(DATA + 0x40, 4) == b"low!"
    r = env.dma(8, (1 << 44) + 0x40, 4, write=True, data=b"high")
    assert not r.ok and r.fault is None
    assert env.mem.read((1 << 44) + 0x40, 4) == bytes(4)
    assert env.events() == []


def test_dma_split_at_4k_boundaries():
    env = s1_env()
    env.put(PT + 0x2000 + 2 * 8, 0x44010743)  # IOVA 0x202000 -> 0x44010000
    env.mem.write(0x44001FF0, b"A" * 16)
    env.mem.write(0x44010000, b"B" * 16)
    r = env.dma(8, 0x201FF0, 32)  # two pages, two unrelated PAs
    assert r.ok and r.pa == 0x44001FF0 and r.data == b"A" * 16 + b"B" * 16
    # A write running into an unmapped page: the first piece has happened.
    r = env.dma(8, 0x202FF8, 16, write=True, data=b"C" * 16)
    assert not r.ok and r.fault.event == Event.F_TRANSLATION
    assert env.mem.read(0x44010FF8, 8) == b"C" * 8
    assert env.events()[0][2] == 0x203000  # the fault names the second page


def test_bus_error_after_translation():
    env = s1_env()
    env.put(PT + 0x2000 + 5 * 8, 0x4E000743)  # IOVA 0x205000 -> 0x4e000000: no memory
    r = env.dma(8, 0x205000)
    assert not r.ok and r.bus_error and r.pa == 0x4E000000 and r.fault is None
    assert env.events() == []


def test_linear_stream_table_base_alignment():
    env = Env().setup(log2size=8, enable=False)  # 256 STEs: a 16 KiB table
    env.w(STRTAB_BASE, STRTAB + 0x40, 8)  # bits 13:0 of the base are ignored
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN)
    env.qemu_s1()  # SID 8's STE at STRTAB + 0x200
    assert env.dma(8, 0x200800).pa == 0x44000800


# ================================================================ 2-level stream tables
@pytest.mark.parametrize(("split", "l1_offset", "ste_offset", "span"), [
    (6, 0x48 * 8, 0x34 * 64, 7),  # SID 0x1234 = L1 0x48, L2 0x34
    (8, 0x12 * 8, 0x34 * 64, 9),  # L1 0x12, L2 0x34
    (10, 0x04 * 8, 0x234 * 64, 11),  # L1 0x4, L2 0x234
    # IHI 0070 §6.3.25: a reserved SPLIT behaves as 6 (not as the next smaller value)
    (7, 0x48 * 8, 0x34 * 64, 7),
    (9, 0x48 * 8, 0x34 * 64, 7),
    (31, 0x48 * 8, 0x34 * 64, 7),
])
def test_two_level_stream_table(split, l1_offset, ste_offset, span):
    env = Env().setup(two_level=True, log2size=16, split=split)
    env.qemu_s1(sid=None)  # CD and tables
    env.mem.add(0x42000000, 0x10000)
    env.put(STRTAB + l1_offset, 0x42000000 | span)
    env.put(0x42000000 + ste_offset, QEMU_STE_W0)
    assert env.dma(0x1234, 0x200800).pa == 0x44000800
    env.dma(0x1234 ^ (1 << 15), 0x200800)  # another L1 descriptor, all zero: SPAN=0
    assert [e[0] for e in env.events()] == [0x0000_9234_0000_0002]


def test_level_2_pointer_beyond_the_oas_is_truncated():
    """IHI 0070 §3.4.3 (5): an STE fetch address beyond the OAS is truncated to it or
    is F_STE_FETCH; this SMMU truncates, so the STE at the truncated address is used."""
    env = Env(Features(oas_bits=44)).setup(two_level=True, log2size=16, split=8)
    env.qemu_s1(sid=None)
    env.mem.add(0x42000000, 0x10000)
    env.put(STRTAB + 0x12 * 8, 1 << 47 | 1 << 44 | 0x42000000 | 9)  # L2Ptr bits 47, 44
    env.put(0x42000000 + 0x34 * 64, QEMU_STE_W0)
    assert env.dma(0x1234, 0x200800).pa == 0x44000800
    assert env.events() == []


def test_two_level_helper_many_sids():
    env = Env().setup(two_level=True, log2size=16, split=8)
    env.qemu_s1(sid=None)
    for sid in (0x0, 0xFF, 0x100, 0xABCD, 0xFFFF):
        env.put_ste(sid, QEMU_STE_W0)
        assert env.dma(sid, 0x200800).pa == 0x44000800
    env.dma(0x10000, 0)  # 2^16: beyond LOG2SIZE
    assert [e[0] for e in env.events()] == [0x0001_0000_0000_0002]  # SID 0x10000 << 32


# ================================================================ CD tables
def qemu_cd(asid: int) -> int:
    """The qemu-peer CD with another ASID (bits 63:48 = word 1 bits 31:16)."""
    return words(QEMU_CD_W0, (QEMU_CD_W1 & 0xFFFF) | asid << 16, QEMU_CD_W2)


def test_linear_cd_table_with_substreams():
    env = s1_env()
    env.put_ste(8, STE.encode(V=1, CONFIG=0b101, S1CONTEXTPTR=CDS, S1CDMAX=2))
    for ssid in range(4):
        env.put_cd(CDS + 64 * ssid, qemu_cd(0x10 + ssid))
    assert [env.dma(8, 0x200800, ssid=s).pa for s in range(4)] == [0x44000800] * 4


def test_two_level_cd_table_4k_leaves():
    env = s1_env()
    env.put_ste(8, STE.encode(V=1, CONFIG=0b101, S1FMT=1, S1CONTEXTPTR=CDS, S1CDMAX=8))
    env.put(CDS + 1 * 8, 0x41301000 | 1)  # L1CD[1]: SSIDs 64..127, V=1
    env.put_cd(0x41301000 + 5 * 64, qemu_cd(0x45))  # SSID 0x45 = leaf 1, CD 5
    assert env.dma(8, 0x200800, ssid=0x45).pa == 0x44000800
    assert env.events() == []


def test_two_level_cd_table_64k_leaves():
    env = s1_env()
    env.put_ste(8, STE.encode(V=1, CONFIG=0b101, S1FMT=2, S1CONTEXTPTR=CDS, S1CDMAX=8,
                              S1DSS=2))
    env.put(CDS, 0x41310000 | 1)  # L1CD[0]: SSIDs 0..1023 in one 64 KiB leaf
    env.put_cd(0x41310000 + 0x45 * 64, qemu_cd(0x45))
    env.put_cd(0x41310000, qemu_cd(0x50))  # CD 0: used without SSID (S1DSS=substream0)
    assert env.dma(8, 0x200800, ssid=0x45).pa == 0x44000800
    assert env.dma(8, 0x200800).pa == 0x44000800
    assert env.events() == []


def test_nested_cd_table_and_substreams_via_stage2():
    env = Env().setup()
    env.nested(ste=dict(S1CDMAX=1))
    # CD 1 at IPA 0x01310040 (PA 0x41310040): ASID 2, TTB0 = IPA 0x01410000
    env.put_cd(0x41310040, words(QEMU_CD_W0, 0x00026205, 0x01410000))
    assert env.dma(8, 0x200800, ssid=1).pa == 0x44000800


# ================================================================ stage-1 granules
# For each granule: (TxSZ, TG0, TG1, [(VA, tables, PA)] for TTB0 then TTB1).  Tables are
# (address, descriptor) pairs; every table is aligned to its size.
GRANULES = {
    # 4K, 39-bit VA: levels 1-3, indexes VA[38:30], [29:21], [20:12].  VA 0x200000 =
    # (0, 1, 0).  TTB0 = the qemu-peer tables; TTB1 = another chain at PT + 0x3000.
    "4K": (25, 0, 2, [
        (0x0000_0000_0020_0010, PT, [], 0x44000010),
        (0xFFFF_FF80_0020_0010, PT + 0x3000, [
            (PT + 0x3000, 0x41404003), (PT + 0x4000 + 8, 0x41405003),
            (PT + 0x5000, 0x44002743)], 0x44002010),
    ]),
    # 16K, 36-bit VA: levels 2-3, indexes VA[35:25] and [24:14].  VA 0x2004000 = (1, 1).
    "16K": (28, 2, 1, [
        (0x0000_0000_0200_4010, 0x41410000, [
            (0x41410000 + 8, 0x41414003), (0x41414000 + 8, 0x44004743)], 0x44004010),
        (0xFFFF_FFF0_0200_4010, 0x41418000, [
            (0x41418000 + 8, 0x4141C003), (0x4141C000 + 8, 0x44008743)], 0x44008010),
    ]),
    # 64K, 42-bit VA: levels 2-3, indexes VA[41:29] and [28:16].  VA 0x20010000 = (1, 1).
    "64K": (22, 1, 3, [
        (0x0000_0000_2001_0010, 0x41420000, [
            (0x41420000 + 8, 0x41430003), (0x41430000 + 8, 0x44010743)], 0x44010010),
        (0xFFFF_FC00_2001_0010, 0x41440000, [
            (0x41440000 + 8, 0x41450003), (0x41450000 + 8, 0x44020743)], 0x44020010),
    ]),
}


def granule_env(name: str) -> tuple[Env, list]:
    tsz, tg0, tg1, halves = GRANULES[name]
    env = s1_env()
    for _, _, tables, _ in halves:
        for addr, desc in tables:
            env.put(addr, desc)
    env.put_cd(CDS, CD.encode(T0SZ=tsz, TG0=tg0, T1SZ=tsz, TG1=tg1, V=1, IPS=5, AA64=1,
                              R=1, A=1, ASID=1, TTB0=halves[0][1], TTB1=halves[1][1]))
    return env, halves


@pytest.mark.parametrize("half", [0, 1], ids=["TTB0", "TTB1"])
@pytest.mark.parametrize("name", GRANULES)
def test_stage1_granule(name, half):
    env, halves = granule_env(name)
    va, _, _, pa = halves[half]
    r = env.dma(8, va, 4, write=True, data=b"gran")
    assert r.ok and r.pa == pa
    assert env.mem.read(pa, 4) == b"gran"
    assert env.events() == []


@pytest.mark.parametrize(("name", "tg", "size", "leaf"), [
    ("4K", 1, 0x1000, PT + 0x2000),
    ("16K", 2, 0x4000, 0x41414008),
    ("64K", 3, 0x10000, 0x41430008),
])
def test_range_tlbi_in_the_entrys_granule(name, tg, size, leaf):
    env, halves = granule_env(name)
    va, _, _, pa = halves[0]
    page = va & ~(size - 1)
    assert env.dma(8, va).pa == pa
    env.put(leaf, env.mem.read_int(leaf, 8) + size)  # remap to the next granule
    env.cmd(command(Op.TLBI_NH_VA, ASID=1, TG=tg, ADDR=page - size), command(Op.SYNC))
    assert env.dma(8, va).pa == pa  # one granule below the page: kept
    env.cmd(command(Op.TLBI_NH_VA, ASID=1, TG=tg, NUM=1, TTL=3, ADDR=page - size),
            command(Op.SYNC))
    assert env.dma(8, va).pa == pa + size  # two granules reach it


# ================================================================ stage 2 and nested
@pytest.mark.parametrize(("s2tg", "offset", "desc"), [
    (0, 0, 0x400007FD),  # 4K, SL0=1: level 1, 1 GiB blocks, IPA[38:30]
    (1, 0, 0x400007FD),  # 64K, SL0=1: level 2, 512 MiB blocks, IPA[38:29]
    (2, 2 * 8, 0x440007FD),  # 16K, SL0=1: level 2, 8 concatenated tables, 32 MiB blocks
], ids=["4K", "64K", "16K"])
def test_stage2_only_dma(s2tg, offset, desc):
    """qemu-peer.md §5: IPA 0x04000800 lands at PA 0x44000800."""
    env = Env().setup()
    env.s2_only(S2TG=s2tg)
    env.put(S2PT, 0)
    env.put(S2PT + offset, desc)
    r = env.dma(8, 0x04000800, 256, write=True, data=PATTERN)
    assert r.ok and r.pa == 0x44000800
    assert env.mem.read(0x44000800, 256) == PATTERN
    assert env.events() == []


def test_stage2_input_range_beyond_s2ps():
    """IHI 0070 §5.2 STE.S2T0SZ: its lower bound comes from the IAS (48 bits here),
    not from S2PS, which bounds the output.  S2T0SZ=16 (48-bit IPAs) with S2PS=0b010
    (40 bits) is legal; QEMU rejects it (fuzz/peers/divergences.py)."""
    env = Env().setup()
    # 4K, S2SL0=2: start at level 0.  IPA 1<<47 | 0x4000800: L0 index IPA[47:39] = 0x100,
    # L1 index IPA[38:30] = 0, a 1 GiB block at 0x40000000 (S2AP RW, AF, SH IS).
    env.put_ste(8, STE.encode(V=1, CONFIG=0b110, **s2_fields(S2T0SZ=16, S2SL0=2, S2PS=2)))
    env.put(S2PT + 0x100 * 8, (S2PT + 0x1000) | 0b11)
    env.put(S2PT + 0x1000, 0x400007FD)
    r = env.dma(8, 1 << 47 | 0x0400_0800)
    assert r.ok and r.pa == 0x44000800 and env.events() == []


def test_nested_dma():
    """qemu-peer.md §5: IOVA 0x200800 -> IPA 0x4000800 -> PA 0x44000800."""
    env = Env().setup()
    env.nested()
    r = env.dma(8, 0x200800, 256, write=True, data=PATTERN)
    assert r.ok and r.pa == 0x44000800
    assert env.mem.read(0x44000800, 256) == PATTERN
    assert env.dma(8, 0x200800, 256).data == PATTERN  # again, from the TLB
    assert env.events() == []


def test_vmids_separate_identical_stage2_streams():
    env = Env().setup()
    env.s2_only(sid=8, vmid=1)
    env.s2_only(sid=9, vmid=2)
    assert env.dma(8, 0x4000000).ok and env.dma(9, 0x4000000).ok  # one table, two VMIDs
    env.cmd(command(Op.TLBI_S12_VMALL, VMID=1), command(Op.SYNC))
    env.put(S2PT, 0)
    assert not env.dma(8, 0x4000000).ok  # VMID 1 re-walks
    assert env.dma(9, 0x4000000).ok  # VMID 2 still cached


# ================================================================ bounded caches
def test_caches_stay_bounded():
    env = Env(Features(tlb_entries=8, config_entries=6)).setup()
    env.qemu_s1()
    for i in range(32):  # IOVA 0x200000 + i pages -> 0x44000000 + i pages
        env.put(PT + 0x2000 + 8 * i, (0x44000000 + 0x1000 * i) | 0x743)
    for sid in range(16):
        env.put_ste(sid, QEMU_STE_W0)
    for sid in range(16):
        for i in range(32):
            r = env.dma(sid, 0x200000 + 0x1000 * i + sid)
            assert r.pa == 0x44000000 + 0x1000 * i + sid
            assert len(env.smmu.iotlb) <= 8 and len(env.smmu.config_cache) <= 6
    assert len(env.smmu.iotlb) == 8
    assert env.events() == []
