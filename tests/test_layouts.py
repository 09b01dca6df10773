"""Golden tests for vsmmu.arch.layouts / vsmmu.arch.fields.

Every expected integer below is a literal worked out by hand from Arm IHI 0070
(field tables), the QEMU-verified words in reference/qemu-peer.md, or the Linux
KUnit fixtures in reference/smmu-anchors.md §2 -- never read back from our own
encoder.  Multi-dword values are written per 64-bit dword (dword 0 first) or per
32-bit word (word 0 first, as QEMU's qtest dumps show them).
"""

from __future__ import annotations

import pytest
import z3
from hypothesis import given
from hypothesis import strategies as st

from vsmmu.arch.faults import Fault
from vsmmu.arch.fields import Decoded, Field, Layout, LayoutError
from vsmmu.arch.layouts import (
    CD,
    CMD_ANY,
    COMMANDS,
    EVENT,
    L1_CD,
    L1_STD,
    PA_BITS,
    REG,
    REG_AT,
    REGISTERS,
    STE,
    CmdError,
    Config,
    Event,
    Op,
)


def dw(*dwords: int) -> int:
    """64-bit dwords, dword 0 first, as one little-endian integer."""
    return sum(d << (64 * i) for i, d in enumerate(dwords))


def words(*ws: int) -> int:
    """32-bit words, word 0 first, as one little-endian integer."""
    return sum(w << (32 * i) for i, w in enumerate(ws))


def at(dword: int, value: int) -> int:
    """`value` placed in 64-bit dword number `dword`."""
    return value << (64 * dword)


# ------------------------------------------------------------------ STE
# qemu-peer.md §4: STE word 0 = 0x4130000b.
#   0xb = 0b1011: bit 0 V=1, bits 3:1 = 0b101 = S1_TRANS, bits 5:4 S1FMT = 0.
#   bits 51:6 hold address bits 51:6 in place: 0x4130000b & ~0x3f = 0x41300000.
QEMU_STE = words(0x4130000B)
QEMU_STE_FIELDS = dict(V=1, CONFIG=5, S1CONTEXTPTR=0x41300000)

# qemu-peer.md §5 (QEMU 10.0): S2-only STE, Config 0b110, S2T0SZ=25, S2SL0=1,
# S2TG=0 (4K), S2PS=4 (44-bit), S2AA64=1, S2R=1.
#   dword 0: V (bit 0) | 0b110 << 1 = 0x1 | 0xc = 0xd.
#   dword 2 (STE bits 191:128), positions relative to bit 128:
#     S2T0SZ 37:32 = 25 -> 0x19 << 32     = 0x0000_0019_0000_0000
#     S2SL0  39:38 = 1  -> 1 << 38        = 0x0000_0040_0000_0000
#     S2PS   50:48 = 4  -> 4 << 48        = 0x0004_0000_0000_0000
#     S2AA64 51         -> 1 << 51        = 0x0008_0000_0000_0000
#     S2R    58         -> 1 << 58        = 0x0400_0000_0000_0000
#     sum                                 = 0x040C_0059_0000_0000
#   dword 3: S2TTB (bits 51:4 of dword 3) holds address bits 51:4 in place, so an
#     S2 table at 0x41500000 gives dword 3 = 0x41500000.
QEMU_S2_STE = dw(0xD, 0, 0x040C_0059_0000_0000, 0x4150_0000)
QEMU_S2_STE_FIELDS = dict(
    V=1, CONFIG=Config.S2_TRANS, S2T0SZ=25, S2SL0=1, S2TG=0, S2PS=4, S2AA64=1, S2R=1,
    S2TTB=0x4150_0000,
)


def test_qemu_ste_decodes():
    d = STE.decode(QEMU_STE)
    assert d.V == 1
    assert d.CONFIG == Config.S1_TRANS == 5
    assert d.S1CONTEXTPTR == 0x41300000
    assert {k: v for k, v in d.items() if v} == QEMU_STE_FIELDS


def test_qemu_ste_encodes():
    assert STE.encode(**QEMU_STE_FIELDS) == QEMU_STE
    assert STE.encode(**QEMU_STE_FIELDS) == 0x4130000B


def test_qemu_s2_ste_both_directions():
    assert STE.encode(**QEMU_S2_STE_FIELDS) == QEMU_S2_STE
    d = STE.decode(QEMU_S2_STE)
    assert {k: v for k, v in d.items() if v} == {k: v for k, v in QEMU_S2_STE_FIELDS.items() if v}
    assert d.S2TG == 0
    assert STE.bad_values(QEMU_S2_STE) == []
    assert STE.reserved_bits(QEMU_S2_STE) == 0


# One field at all-ones -> the mask it must occupy, by dword.  Address fields are
# set to the all-ones address they can hold.  From IHI 0070 §5.2 / anchors §1:
STE_GOLDEN = [
    # name, all-ones value, dword, mask within that dword
    ("V", 1, 0, 0x1),                                       # bit 0
    ("CONFIG", 0b111, 0, 0xE),                              # 3:1
    ("S1FMT", 0b11, 0, 0x30),                               # 5:4
    ("S1CONTEXTPTR", 0x000F_FFFF_FFFF_FFC0, 0, 0x000F_FFFF_FFFF_FFC0),  # 51:6 = addr 51:6
    ("S1CDMAX", 0x1F, 0, 0xF800_0000_0000_0000),            # 63:59
    ("S1DSS", 0b11, 1, 0x3),                                # 65:64
    ("S1CIR", 0b11, 1, 0xC),                                # 67:66
    ("S1COR", 0b11, 1, 0x30),                               # 69:68
    ("S1CSH", 0b11, 1, 0xC0),                               # 71:70
    ("MEV", 1, 1, 0x8_0000),                                # 83 = dw1 bit 19
    ("S2FWB", 1, 1, 0x200_0000),                            # 89 = dw1 bit 25
    ("S1STALLD", 1, 1, 0x800_0000),                         # 91 = dw1 bit 27
    ("EATS", 0b11, 1, 0x3000_0000),                         # 93:92 = dw1 29:28
    ("STRW", 0b11, 1, 0xC000_0000),                         # 95:94 = dw1 31:30
    ("MEMATTR", 0xF, 1, 0xF_0000_0000),                     # 99:96 = dw1 35:32
    ("MTCFG", 1, 1, 0x10_0000_0000),                        # 100 = dw1 bit 36
    ("ALLOCCFG", 0xF, 1, 0x1E0_0000_0000),                  # 104:101 = dw1 40:37
    ("SHCFG", 0b11, 1, 0x3000_0000_0000),                   # 109:108 = dw1 45:44
    ("NSCFG", 0b11, 1, 0xC000_0000_0000),                   # 111:110 = dw1 47:46
    ("PRIVCFG", 0b11, 1, 0x3_0000_0000_0000),               # 113:112 = dw1 49:48
    ("INSTCFG", 0b11, 1, 0xC_0000_0000_0000),               # 115:114 = dw1 51:50
    ("S2VMID", 0xFFFF, 2, 0xFFFF),                          # 143:128
    ("S2T0SZ", 0x3F, 2, 0x3F_0000_0000),                    # 165:160 = dw2 37:32
    ("S2SL0", 0b11, 2, 0xC0_0000_0000),                     # 167:166 = dw2 39:38
    ("S2IR0", 0b11, 2, 0x300_0000_0000),                    # 169:168 = dw2 41:40
    ("S2OR0", 0b11, 2, 0xC00_0000_0000),                    # 171:170 = dw2 43:42
    ("S2SH0", 0b11, 2, 0x3000_0000_0000),                   # 173:172 = dw2 45:44
    ("S2TG", 0b11, 2, 0xC000_0000_0000),                    # 175:174 = dw2 47:46
    ("S2PS", 0b111, 2, 0x7_0000_0000_0000),                 # 178:176 = dw2 50:48
    ("S2AA64", 1, 2, 0x8_0000_0000_0000),                   # 179 = dw2 bit 51
    ("S2ENDI", 1, 2, 0x10_0000_0000_0000),                  # 180 = dw2 bit 52
    ("S2AFFD", 1, 2, 0x20_0000_0000_0000),                  # 181 = dw2 bit 53
    ("S2PTW", 1, 2, 0x40_0000_0000_0000),                   # 182 = dw2 bit 54
    ("S2HD", 1, 2, 0x80_0000_0000_0000),                    # 183 = dw2 bit 55
    ("S2HA", 1, 2, 0x100_0000_0000_0000),                   # 184 = dw2 bit 56
    ("S2S", 1, 2, 0x200_0000_0000_0000),                    # 185 = dw2 bit 57
    ("S2R", 1, 2, 0x400_0000_0000_0000),                    # 186 = dw2 bit 58
    ("S2TTB", 0x000F_FFFF_FFFF_FFF0, 3, 0x000F_FFFF_FFFF_FFF0),  # 243:196 = addr 51:4
]

# IHI 0070 §5.2 (STE word 1): DRE bit 76, CONT 80:77, DCP bit 81, PPAR bit 82.
# (An earlier layout had DCP at 76 and PPAR at 77; these pin the fix.)
STE_GOLDEN_WORD1_HINTS = [
    ("DRE", 1, 1, 0x1000),                                  # 76 = dw1 bit 12
    ("CONT", 0xF, 1, 0x1_E000),                             # 80:77 = dw1 bits 16:13
    ("DCP", 1, 1, 0x2_0000),                                # 81 = dw1 bit 17
    ("PPAR", 1, 1, 0x4_0000),                               # 82 = dw1 bit 18
]


def _check_single_field(layout: Layout, name: str, value: int, dword: int, mask: int):
    expected = at(dword, mask)
    assert layout[name].mask == expected, f"{layout.name}.{name} mask"
    word = layout.encode(**{name: value})
    assert word == expected, f"{layout.name}.{name}: {word:#x} != {expected:#x}"
    d = layout.decode(word)
    assert d[name] == value
    assert all(v == 0 for k, v in d.items() if k != name)
    assert layout.reserved_bits(word) == 0


@pytest.mark.parametrize("name,value,dword,mask", STE_GOLDEN, ids=[g[0] for g in STE_GOLDEN])
def test_ste_field_positions(name, value, dword, mask):
    _check_single_field(STE, name, value, dword, mask)


@pytest.mark.parametrize(
    "name,value,dword,mask", STE_GOLDEN_WORD1_HINTS, ids=[g[0] for g in STE_GOLDEN_WORD1_HINTS]
)
def test_ste_field_positions_word1_hints(name, value, dword, mask):
    _check_single_field(STE, name, value, dword, mask)


def test_ste_golden_table_covers_every_field():
    names = {g[0] for g in STE_GOLDEN + STE_GOLDEN_WORD1_HINTS}
    assert names == set(STE.fields)


def test_ste_defined_mask_excludes_res0_gaps():
    # STE bits 58:56 are RES0 (S1ContextPtr stops at 51 in this SMMUv3.1 subset,
    # S1CDMax starts at 59); bits 159:144 and 195:187 are RES0; dwords 4..7 too.
    for bit in (52, 56, 58, 144, 159, 187, 195, 244, 256, 511):
        assert not STE.defined_mask >> bit & 1, bit


# ------------------------------------------------------------------ CD
# qemu-peer.md §4: CD words w0=0xc0000019, w1=0x00016205, w2=0x41400000.
#   w0: 0x19 = 25 -> T0SZ 5:0 = 25; bits 7:6 = 0 -> TG0 = 0 (4K);
#       0xc0000000 -> bit 30 EPD1 = 1, bit 31 V = 1.
#   w1 (CD bits 63:32): 0x5 -> IPS 34:32 = 5 (48-bit); 0x200 = bit 41 AA64;
#       0x2000 = bit 45 R; 0x4000 = bit 46 A; 0x0001 << 16 -> ASID 63:48 = 1.
#   w2 (CD bits 95:64): TTB0 is bits 115:68 = dword-1 bits 51:4 holding address
#       bits 51:4 in place, so 0x41400000 is TTB0 = 0x41400000.
QEMU_CD = words(0xC0000019, 0x00016205, 0x41400000)
QEMU_CD_FIELDS = dict(
    T0SZ=25, TG0=0, EPD1=1, V=1, IPS=5, AA64=1, R=1, A=1, ASID=1, TTB0=0x41400000
)


def test_qemu_cd_decodes():
    d = CD.decode(QEMU_CD)
    for name, value in QEMU_CD_FIELDS.items():
        assert d[name] == value, name
    assert {k: v for k, v in d.items() if v} == {
        k: v for k, v in QEMU_CD_FIELDS.items() if v
    }
    assert PA_BITS[d.IPS] == 48


def test_qemu_cd_encodes():
    assert CD.encode(**QEMU_CD_FIELDS) == QEMU_CD
    assert CD.to_bytes(QEMU_CD)[:12] == bytes.fromhex("190000c0" "05620100" "00004041")


def test_qemu_cd_bad_values_is_context_free():
    # QEMU's CD leaves TG1 = 0b00, which IHI 0070 marks Reserved; it is IGNORED
    # only because EPD1 = 1.  bad_values() does not know that, so callers must.
    assert CD.bad_values(QEMU_CD) == ["TG1"]


CD_GOLDEN = [
    ("T0SZ", 0x3F, 0, 0x3F),                                # 5:0
    ("TG0", 0b11, 0, 0xC0),                                 # 7:6
    ("IR0", 0b11, 0, 0x300),                                # 9:8
    ("OR0", 0b11, 0, 0xC00),                                # 11:10
    ("SH0", 0b11, 0, 0x3000),                               # 13:12
    ("EPD0", 1, 0, 0x4000),                                 # 14
    ("ENDI", 1, 0, 0x8000),                                 # 15
    ("T1SZ", 0x3F, 0, 0x3F_0000),                           # 21:16
    ("TG1", 0b11, 0, 0xC0_0000),                            # 23:22
    ("IR1", 0b11, 0, 0x300_0000),                           # 25:24
    ("OR1", 0b11, 0, 0xC00_0000),                           # 27:26
    ("SH1", 0b11, 0, 0x3000_0000),                          # 29:28
    ("EPD1", 1, 0, 0x4000_0000),                            # 30
    ("V", 1, 0, 0x8000_0000),                               # 31
    ("IPS", 0b111, 0, 0x7_0000_0000),                       # 34:32
    ("AFFD", 1, 0, 0x8_0000_0000),                          # 35
    ("WXN", 1, 0, 0x10_0000_0000),                          # 36
    ("UWXN", 1, 0, 0x20_0000_0000),                         # 37
    ("TBI", 0b11, 0, 0xC0_0000_0000),                       # 39:38
    ("PAN", 1, 0, 0x100_0000_0000),                         # 40
    ("AA64", 1, 0, 0x200_0000_0000),                        # 41
    ("HD", 1, 0, 0x400_0000_0000),                          # 42
    ("HA", 1, 0, 0x800_0000_0000),                          # 43
    ("S", 1, 0, 0x1000_0000_0000),                          # 44
    ("R", 1, 0, 0x2000_0000_0000),                          # 45
    ("A", 1, 0, 0x4000_0000_0000),                          # 46
    ("ASET", 1, 0, 0x8000_0000_0000),                       # 47
    ("ASID", 0xFFFF, 0, 0xFFFF_0000_0000_0000),             # 63:48
    ("NSCFG0", 1, 1, 0x1),                                  # 64
    ("HAD0", 1, 1, 0x2),                                    # 65
    ("TTB0", 0x000F_FFFF_FFFF_FFF0, 1, 0x000F_FFFF_FFFF_FFF0),  # 115:68 = addr 51:4
    ("NSCFG1", 1, 2, 0x1),                                  # 128
    ("HAD1", 1, 2, 0x2),                                    # 129
    ("TTB1", 0x000F_FFFF_FFFF_FFF0, 2, 0x000F_FFFF_FFFF_FFF0),  # 179:132 = addr 51:4
    ("MAIR", 0xFFFF_FFFF_FFFF_FFFF, 3, 0xFFFF_FFFF_FFFF_FFFF),  # 255:192
    ("AMAIR", 0xFFFF_FFFF_FFFF_FFFF, 4, 0xFFFF_FFFF_FFFF_FFFF),  # 319:256
]


@pytest.mark.parametrize("name,value,dword,mask", CD_GOLDEN, ids=[g[0] for g in CD_GOLDEN])
def test_cd_field_positions(name, value, dword, mask):
    _check_single_field(CD, name, value, dword, mask)


def test_cd_golden_table_covers_every_field():
    assert {g[0] for g in CD_GOLDEN} == set(CD.fields)


def test_cd_granule_encodings_differ_between_tg0_and_tg1():
    # IHI 0070 §5.4: TG0 0=4K 1=64K 2=16K 3=rsvd; TG1 0=rsvd 1=16K 2=4K 3=64K.
    assert CD.bad_values(CD.encode(TG0=3, TG1=2)) == ["TG0"]
    assert CD.bad_values(CD.encode(TG0=0, TG1=0)) == ["TG1"]
    assert CD.bad_values(CD.encode(TG0=2, TG1=1, IPS=6)) == []
    assert CD.bad_values(CD.encode(TG1=2, IPS=7)) == ["IPS"]


# --------------------------------------------- Linux KUnit fixtures (anchors §2)
def test_kunit_cd_table_pointer_drops_low_bits():
    # CD table at 0xF0F0F0F0F0F0: Linux masks it with S1CTXPTR = GENMASK(51, 6),
    # i.e. 0xF0F0F0F0F0F0 & ~0x3F = 0xF0F0F0F0F0C0, placed in place in dword 0.
    word = STE.put(0, "S1CONTEXTPTR", 0xF0F0F0F0F0F0)
    assert word == 0xF0F0_F0F0_F0C0
    assert STE.decode(word).S1CONTEXTPTR == 0xF0F0_F0F0_F0C0
    # encode() refuses the unaligned pointer instead of truncating it.
    with pytest.raises(LayoutError):
        STE.encode(S1CONTEXTPTR=0xF0F0F0F0F0F0)
    assert STE.encode(S1CONTEXTPTR=0xF0F0F0F0F0C0, S1FMT=2) == 0xF0F0_F0F0_F0E0  # | 2 << 4


def test_kunit_s1cdmax_0xff_does_not_fit():
    with pytest.raises(LayoutError):
        STE.encode(S1CDMAX=0xFF)
    assert STE.encode(S1CDMAX=0x1F) == 0xF800_0000_0000_0000


@pytest.mark.parametrize(
    "asid,dword0",
    [
        (778, 0x030A_0000_0000_0000),  # 778 = 0x30a, ASID at CD bits 63:48
        (1997, 0x07CD_0000_0000_0000),  # 1997 = 0x7cd
    ],
)
def test_kunit_asids(asid, dword0):
    assert CD.encode(ASID=asid) == dword0
    assert CD.decode(dword0).ASID == asid


def test_kunit_mair():
    # MAIR 0x0abcdef012345678 occupies CD dword 3 (bits 255:192) verbatim.
    word = CD.encode(MAIR=0x0ABCDEF012345678)
    assert word == at(3, 0x0ABC_DEF0_1234_5678)
    assert CD.decode(word).MAIR == 0x0ABCDEF012345678


def test_kunit_s2_vttbr_and_vtcr():
    # VTTBR 0xdaedbeefdeadbeef masked to S2TTB bits 51:4 -> 0x000dbeefdeadbee0,
    # in place in dword 3.  VTCR ps=1 tg=2 sh=3 orgn=1 irgn=2 sl=3 tsz=4 lands in
    # dword 2 bits 50:32 (Linux STRTAB_STE_2_VTCR):
    #   tsz 4<<32 = 0x4_0000_0000     sl 3<<38 = 0xC0_0000_0000
    #   irgn 2<<40 = 0x200_0000_0000  orgn 1<<42 = 0x400_0000_0000
    #   sh 3<<44 = 0x3000_0000_0000   tg 2<<46 = 0x8000_0000_0000
    #   ps 1<<48 = 0x1_0000_0000_0000  -> total 0x0001_B6C4_0000_0000
    s2ttb = 0xDAEDBEEFDEADBEEF & 0x000F_FFFF_FFFF_FFF0
    assert s2ttb == 0x000D_BEEF_DEAD_BEE0
    word = STE.encode(
        S2TTB=s2ttb, S2T0SZ=4, S2SL0=3, S2IR0=2, S2OR0=1, S2SH0=3, S2TG=2, S2PS=1
    )
    assert word == dw(0, 0, 0x0001_B6C4_0000_0000, 0x000D_BEEF_DEAD_BEE0)
    with pytest.raises(LayoutError):
        STE.encode(S2TTB=0xDAEDBEEFDEADBEEF)  # above 52 bits and unaligned


# ------------------------------------------------------------------ L1 descriptors
def test_l1_descriptors():
    # qemu-peer.md §5: 2-level stream table, L1 descriptor Span=9 -> SPAN 4:0 = 9,
    # L2Ptr 51:6 in place: an L2 array at 0x41010000 gives 0x41010009.
    assert L1_STD.encode(SPAN=9, L2PTR=0x41010000) == 0x4101_0009
    assert L1_STD.decode(0x4101_0009) == {"SPAN": 9, "L2PTR": 0x41010000}
    # L1CD: V bit 0, L2Ptr 51:12 (4K-aligned leaf tables).
    assert L1_CD.encode(V=1, L2PTR=0x4200_0000) == 0x4200_0001
    assert L1_CD.decode(0x4200_0FFF) == {"V": 1, "L2PTR": 0x4200_0000}
    with pytest.raises(LayoutError):
        L1_CD.encode(L2PTR=0x4200_0040)


# ------------------------------------------------------------------ commands
# One golden command per opcode, its characteristic fields set, written as
# (dword 0, dword 1).  Dword 0: OP 7:0, SSec 10, SSV 11, SSID 31:12, SID 63:32;
# TLBI: NUM 16:12, SCALE 24:20, VMID 47:32, ASID 63:48.  Dword 1: LEAF 0,
# RANGE 4:0, TTL 9:8, TG 11:10, ADDR 63:12 (IPA 51:12), all in place.
CMD_GOLDEN = [
    # PREFETCH_CONFIG: SSV 0x800 | SSID 0xabc<<12 = 0xabc000 | SID 0x10008<<32
    (Op.PREFETCH_CONFIG, dict(SID=0x10008, SSV=1, SSID=0xABC),
     0x0001_0008_00AB_C801, 0),
    # PREFETCH_ADDR: dw1 SIZE 4:0 = 4, STRIDE 9:5 = 0x1f -> 0x3e0, ADDR 0x40000000
    (Op.PREFETCH_ADDR, dict(SID=8, SIZE=4, STRIDE=0x1F, ADDR=0x4000_0000),
     0x0000_0008_0000_0002, 0x4000_03E4),
    # CFGI_STE: SID 0xffffffff, LEAF 1
    (Op.CFGI_STE, dict(SID=0xFFFF_FFFF, LEAF=1), 0xFFFF_FFFF_0000_0003, 1),
    # CFGI_STE_RANGE = CFGI_ALL: SID 0, RANGE 31 -> words {0x04, 0, 31, 0} (qemu-peer §4)
    (Op.CFGI_STE_RANGE, dict(SID=0, RANGE=31), 0x04, 31),
    # CFGI_CD: SSID 0xfffff<<12 = 0xfffff000, SID 8, LEAF 1
    (Op.CFGI_CD, dict(SID=8, SSID=0xFFFFF, LEAF=1), 0x0000_0008_FFFF_F005, 1),
    (Op.CFGI_CD_ALL, dict(SID=0x1234), 0x0000_1234_0000_0006, 0),
    (Op.TLBI_NH_ALL, dict(VMID=0xFFFF), 0x0000_FFFF_0000_0010, 0),
    (Op.TLBI_NH_ASID, dict(VMID=1, ASID=0xFFFF), 0xFFFF_0001_0000_0011, 0),
    # TLBI_NH_VA: NUM 3<<12 = 0x3000, SCALE 2<<20 = 0x200000, VMID 0x1234, ASID 0xbeef;
    # dw1: LEAF 1 | TTL 3<<8 = 0x300 | TG 1<<10 = 0x400 | ADDR 0x7fffdeadb000
    (Op.TLBI_NH_VA,
     dict(NUM=3, SCALE=2, VMID=0x1234, ASID=0xBEEF, LEAF=1, TTL=3, TG=1,
          ADDR=0x7FFF_DEAD_B000),
     0xBEEF_1234_0020_3012, 0x0000_7FFF_DEAD_B701),
    # TLBI_NH_VAA: NUM 0x1f<<12 = 0x1f000, SCALE 0x1f<<20 = 0x1f00000, VMID 7;
    # dw1: TTL 2<<8 = 0x200 | TG 3<<10 = 0xc00 | ADDR bits 63:12 all ones
    (Op.TLBI_NH_VAA,
     dict(NUM=0x1F, SCALE=0x1F, VMID=7, TTL=2, TG=3, ADDR=0xFFFF_FFFF_FFFF_F000),
     0x0000_0007_01F1_F013, 0xFFFF_FFFF_FFFF_FE00),
    (Op.TLBI_EL3_ALL, dict(), 0x18, 0),
    (Op.TLBI_EL3_VA, dict(LEAF=1, ADDR=0x8000_0000_0000), 0x1A, 0x8000_0000_0001),
    (Op.TLBI_EL2_ALL, dict(), 0x20, 0),
    (Op.TLBI_EL2_ASID, dict(ASID=0x42), 0x0042_0000_0000_0021, 0),
    (Op.TLBI_EL2_VA, dict(ASID=5, TG=1, ADDR=0x1000), 0x0005_0000_0000_0022, 0x1400),
    (Op.TLBI_EL2_VAA, dict(TTL=3, ADDR=0x2000), 0x23, 0x2300),
    (Op.TLBI_S12_VMALL, dict(VMID=0xABCD), 0x0000_ABCD_0000_0028, 0),
    # TLBI_S2_IPA: IPA bits 51:12 all ones, LEAF 1
    (Op.TLBI_S2_IPA, dict(VMID=3, LEAF=1, ADDR=0x000F_FFFF_FFFF_F000),
     0x0000_0003_0000_002A, 0x000F_FFFF_FFFF_F001),
    # TLBI_NSNH_ALL -> words {0x30, 0, 0, 0} (qemu-peer §4)
    (Op.TLBI_NSNH_ALL, dict(), 0x30, 0),
    # ATC_INV: GLOBAL bit 9 = 0x200, SSV 0x800, SSID 0x12345<<12 = 0x12345000, SID 8;
    # dw1: SIZE 5:0 = 9, ADDR 0x12345000
    (Op.ATC_INV, dict(GLOBAL=1, SSV=1, SSID=0x12345, SID=8, SIZE=9, ADDR=0x1234_5000),
     0x0000_0008_1234_5A40, 0x1234_5009),
    # PRI_RESP: SSV 0x800, SSID 1<<12 = 0x1000, SID 8; dw1 PRGINDEX 8:0 = 0x1ff,
    # RESP 13:12 = 2 -> 0x2000
    (Op.PRI_RESP, dict(SSV=1, SSID=1, SID=8, PRGINDEX=0x1FF, RESP=2),
     0x0000_0008_0000_1841, 0x21FF),
    # RESUME: AB bit 13 = 0x2000, SID 8; dw1 STAG 15:0
    (Op.RESUME, dict(AB=1, SID=8, STAG=0xFFFF), 0x0000_0008_0000_2044, 0xFFFF),
    (Op.STALL_TERM, dict(SID=0x99), 0x0000_0099_0000_0045, 0),
    # SYNC: CS 13:12 = 1 -> 0x1000, MSH 23:22 = 3 -> 0xc00000, MSIATTR 27:24 = 0xf ->
    # 0xf000000, MSIDATA 0xcafef00d << 32; dw1 MSIADDR 51:2 in place: 0x08000040
    (Op.SYNC, dict(CS=1, MSH=3, MSIATTR=0xF, MSIDATA=0xCAFEF00D, MSIADDR=0x0800_0040),
     0xCAFE_F00D_0FC0_1046, 0x0800_0040),
]


@pytest.mark.parametrize(
    "op,fields,dword0,dword1", CMD_GOLDEN, ids=[g[0].name for g in CMD_GOLDEN]
)
def test_command_golden(op, fields, dword0, dword1):
    layout = COMMANDS[op]
    golden = dw(dword0, dword1)
    assert layout.encode(OP=op, **fields) == golden
    d = layout.decode(golden)
    assert d.OP == op
    for name in layout.fields:
        assert d[name] == fields.get(name, 0 if name != "OP" else op), name
    assert layout.reserved_bits(golden) == 0
    assert layout.bad_values(golden) == []
    assert CMD_ANY.decode(golden).OP == op


def test_command_golden_covers_every_opcode():
    assert [g[0] for g in CMD_GOLDEN] == list(Op)
    assert set(COMMANDS) == {op.value for op in Op}


def test_qemu_command_words():
    # qemu-peer.md §4 as 32-bit words.
    assert COMMANDS[Op.CFGI_STE_RANGE].encode(OP=0x04, SID=0, RANGE=31) == words(0x04, 0, 31, 0)
    assert COMMANDS[Op.TLBI_NSNH_ALL].encode(OP=0x30) == words(0x30, 0, 0, 0)
    assert COMMANDS[Op.SYNC].encode(OP=0x46) == words(0x46, 0, 0, 0)


@pytest.mark.parametrize("opcode", [0x00, 0x07, 0x08, 0x14, 0x2B, 0x47, 0xFF])
def test_unknown_opcodes_have_no_layout(opcode):
    assert opcode not in COMMANDS
    assert COMMANDS.get(opcode, CMD_ANY) is CMD_ANY
    assert CMD_ANY.decode(words(opcode, 0xFFFF_FFFF, 1, 2)).OP == opcode


def test_command_field_limits():
    ipa = COMMANDS[Op.TLBI_S2_IPA]
    with pytest.raises(LayoutError):
        ipa.encode(ADDR=1 << 52)  # IPA field stops at bit 51
    with pytest.raises(LayoutError):
        ipa.encode(ADDR=0x1800)  # not 4K aligned
    va = COMMANDS[Op.TLBI_NH_VA]
    assert va.encode(ADDR=1 << 63) == dw(0, 1 << 63)  # VA field goes to bit 63
    with pytest.raises(LayoutError):
        va.encode(NUM=32)  # 5 bits
    with pytest.raises(LayoutError):
        COMMANDS[Op.SYNC].encode(MSIADDR=0x1002)  # 4-byte aligned
    # CS = 0b11 is reserved (anchors §1: spec requires CERROR_ILL for it).
    assert COMMANDS[Op.SYNC].bad_values(dw(0x46 | 3 << 12)) == ["CS"]


# ------------------------------------------------------------------ event record
EVENT_GOLDEN = [
    ("ID", 0xFF, 0, 0xFF),                                  # 7:0
    ("SSV", 1, 0, 0x800),                                   # 11
    ("SSID", 0xFFFFF, 0, 0xFFFF_F000),                      # 31:12
    ("SID", 0xFFFF_FFFF, 0, 0xFFFF_FFFF_0000_0000),         # 63:32
    ("STAG", 0xFFFF, 1, 0xFFFF),                            # 79:64
    ("STALL", 1, 1, 0x8000_0000),                           # 95
    ("PNU", 1, 1, 0x2_0000_0000),                           # 97
    ("IND", 1, 1, 0x4_0000_0000),                           # 98
    ("RNW", 1, 1, 0x8_0000_0000),                           # 99
    ("S2", 1, 1, 0x80_0000_0000),                           # 103
    ("CLASS", 0b11, 1, 0x300_0000_0000),                    # 105:104
    ("TTRNW", 1, 1, 0x1000_0000_0000),                      # 108 (Linux EVTQ_1_TT_READ)
    ("INPUT_ADDR", 0xFFFF_FFFF_FFFF_FFFF, 2, 0xFFFF_FFFF_FFFF_FFFF),  # 191:128
    ("FETCH_ADDR", 0x000F_FFFF_FFFF_FFF8, 3, 0x000F_FFFF_FFFF_FFF8),  # 243:195 = addr 51:3
    ("IPA", 0x000F_FFFF_FFFF_F000, 3, 0x000F_FFFF_FFFF_F000),         # 243:204 = addr 51:12
]


@pytest.mark.parametrize(
    "name,value,dword,mask", EVENT_GOLDEN, ids=[g[0] for g in EVENT_GOLDEN]
)
def test_event_field_positions(name, value, dword, mask):
    expected = at(dword, mask)
    assert EVENT[name].mask == expected
    assert EVENT.encode(**{name: value}) == expected
    assert EVENT.get(expected, name) == value


def test_event_golden_covers_every_field():
    assert {g[0] for g in EVENT_GOLDEN} == set(EVENT.fields)


def test_event_ids():
    # IHI 0070 §7.3 / anchors §1 event numbers.
    expected = {
        "F_UUT": 0x01, "C_BAD_STREAMID": 0x02, "F_STE_FETCH": 0x03, "C_BAD_STE": 0x04,
        "F_BAD_ATS_TREQ": 0x05, "F_STREAM_DISABLED": 0x06, "F_TRANS_FORBIDDEN": 0x07,
        "C_BAD_SUBSTREAMID": 0x08, "F_CD_FETCH": 0x09, "C_BAD_CD": 0x0A,
        "F_WALK_EABT": 0x0B, "F_TRANSLATION": 0x10, "F_ADDR_SIZE": 0x11, "F_ACCESS": 0x12,
        "F_PERMISSION": 0x13, "F_TLB_CONFLICT": 0x20, "F_CFG_CONFLICT": 0x21,
        "E_PAGE_REQUEST": 0x24,
    }
    assert {e.name: e.value for e in Event} == expected


# ------------------------------------------------------------------ registers
# (offset, size in bytes), from IHI 0070 §6.3 and qemu-peer.md §4.
REG_GOLDEN = {
    "IDR0": (0x00, 4), "IDR1": (0x04, 4), "IDR2": (0x08, 4), "IDR3": (0x0C, 4),
    "IDR4": (0x10, 4), "IDR5": (0x14, 4), "IIDR": (0x18, 4), "AIDR": (0x1C, 4),
    "CR0": (0x20, 4), "CR0ACK": (0x24, 4), "CR1": (0x28, 4), "CR2": (0x2C, 4),
    "STATUSR": (0x40, 4), "GBPA": (0x44, 4), "IRQ_CTRL": (0x50, 4), "IRQ_CTRLACK": (0x54, 4),
    "GERROR": (0x60, 4), "GERRORN": (0x64, 4),
    "GERROR_IRQ_CFG0": (0x68, 8), "GERROR_IRQ_CFG1": (0x70, 4), "GERROR_IRQ_CFG2": (0x74, 4),
    "STRTAB_BASE": (0x80, 8), "STRTAB_BASE_CFG": (0x88, 4),
    "CMDQ_BASE": (0x90, 8), "CMDQ_PROD": (0x98, 4), "CMDQ_CONS": (0x9C, 4),
    "EVENTQ_BASE": (0xA0, 8),
    "EVENTQ_IRQ_CFG0": (0xB0, 8), "EVENTQ_IRQ_CFG1": (0xB8, 4), "EVENTQ_IRQ_CFG2": (0xBC, 4),
    "EVENTQ_PROD": (0x100A8, 4), "EVENTQ_CONS": (0x100AC, 4),  # page 1
}


def test_register_offsets_and_sizes():
    assert {r.name: (r.offset, r.size) for r in REGISTERS} == REG_GOLDEN
    for r in REGISTERS:
        assert r.layout.width == 8 * r.size
        assert REG[r.name] is r
        assert REG_AT[r.offset] is r


def test_registers_do_not_overlap():
    regs = sorted(REGISTERS, key=lambda r: r.offset)
    for a, b in zip(regs, regs[1:], strict=False):
        assert a.offset + a.size <= b.offset, (a.name, b.name)
    for r in regs:
        assert r.offset % r.size == 0, r.name  # naturally aligned


def _set_fields(reg: str, value: int) -> dict[str, int]:
    return {k: v for k, v in REG[reg].layout.decode(value).items() if v}


def test_idr0_qemu_7_2():
    # 0x0d40101a = bits 1, 3, 4, 12, 22, 24, 26, 27:
    #   bit 1 S1P; bits 3:2 = 0b10 TTF=AArch64; bit 4 COHACC; bit 12 ASID16;
    #   bits 22:21 = 0b10 TTENDIAN=LE; bits 25:24 = 0b01 STALL_MODEL; bit 26 TERM_MODEL;
    #   bits 28:27 = 0b01 ST_LEVEL=2-level.
    assert _set_fields("IDR0", 0x0D40101A) == dict(
        S1P=1, TTF=2, COHACC=1, ASID16=1, TTENDIAN=2, STALL_MODEL=1, TERM_MODEL=1, ST_LEVEL=1
    )
    assert REG["IDR0"].layout.decode(0x0D40101A).S2P == 0


def test_idr0_qemu_10_0_adds_s2p_and_vmid16():
    # 0x0d44101b = 0x0d40101a | bit 0 (S2P) | bit 18 (VMID16, 0x40000).
    assert _set_fields("IDR0", 0x0D44101B) == dict(
        S2P=1, S1P=1, TTF=2, COHACC=1, ASID16=1, VMID16=1, TTENDIAN=2,
        STALL_MODEL=1, TERM_MODEL=1, ST_LEVEL=1,
    )


def test_idr1_idr3_idr5():
    # IDR1 0x02730010: SIDSIZE 5:0 = 0x10; EVENTQS 20:16 = 0x273 & 0x1f = 0x13 = 19;
    # CMDQS 25:21 = 0x0273 >> 5 = 0x13 = 19.
    assert _set_fields("IDR1", 0x02730010) == dict(SIDSIZE=16, EVENTQS=19, CMDQS=19)
    # IDR3 0x1404: bit 2 HAD, bit 10 RIL, bits 12:11 = 0b10 BBML=2; 0x1414 adds bit 4 XNX.
    assert _set_fields("IDR3", 0x1404) == dict(HAD=1, RIL=1, BBML=2)
    assert _set_fields("IDR3", 0x1414) == dict(HAD=1, XNX=1, RIL=1, BBML=2)
    # IDR5 0x74: OAS 2:0 = 4 (44 bits); bits 4, 5, 6 = GRAN4K, GRAN16K, GRAN64K.
    assert _set_fields("IDR5", 0x74) == dict(OAS=4, GRAN4K=1, GRAN16K=1, GRAN64K=1)
    assert PA_BITS[4] == 44
    assert REG["IDR5"].layout.bad_values(0x74) == []
    assert REG["IDR5"].layout.bad_values(0x77) == ["OAS"]  # 0b111 reserved in v3.1


def test_gbpa_cr0_and_queue_registers():
    # GBPA reset 0x1000 = SHCFG 13:12 = 0b01 (use incoming).
    assert _set_fields("GBPA", 0x1000) == dict(SHCFG=1)
    # ABORT bit 20, UPDATE bit 31.
    assert REG["GBPA"].layout.encode(ABORT=1, UPDATE=1) == 0x8010_0000
    # CR0 0xd (qemu-peer §4) = SMMUEN | EVENTQEN | CMDQEN.
    assert _set_fields("CR0", 0xD) == dict(SMMUEN=1, EVENTQEN=1, CMDQEN=1)
    # CMDQ_CONS 0x0100000b: RD 19:0 = 11, ERR 30:24 = 1 = CERROR_ILL.
    cons = REG["CMDQ_CONS"].layout.decode(0x0100000B)
    assert (cons.RD, cons.ERR) == (11, CmdError.ILL)
    # Queue bases 0x41100008 / 0x41200008: LOG2SIZE 4:0 = 8, ADDR 51:5 in place.
    assert _set_fields("CMDQ_BASE", 0x41100008) == dict(LOG2SIZE=8, ADDR=0x41100000)
    assert _set_fields("EVENTQ_BASE", 0x41200008) == dict(LOG2SIZE=8, ADDR=0x41200000)
    # STRTAB_BASE_CFG 0x8 = linear, LOG2SIZE 8; 2-level SPLIT 8 LOG2SIZE 16:
    # FMT 1<<16 | SPLIT 8<<6 = 0x200 | 16 = 0x10210.
    assert _set_fields("STRTAB_BASE_CFG", 0x8) == dict(LOG2SIZE=8)
    assert REG["STRTAB_BASE_CFG"].layout.encode(FMT=1, SPLIT=8, LOG2SIZE=16) == 0x10210
    # STRTAB_BASE: ADDR 51:6, RA bit 62.
    assert REG["STRTAB_BASE"].layout.encode(ADDR=0x41000000, RA=1) == 0x4000_0000_4100_0000
    # EVENTQ_PROD: WR 19:0, OVFLG bit 31.
    assert _set_fields("EVENTQ_PROD", 0x8000_0010) == dict(WR=16, OVFLG=1)
    # GERROR: CMDQ_ERR bit 0, EVENTQ_ABT_ERR bit 2, SFM_ERR bit 8.
    assert _set_fields("GERROR", 0x105) == dict(CMDQ_ERR=1, EVENTQ_ABT_ERR=1, SFM_ERR=1)
    # IRQ_CFG0 ADDR 51:2; IRQ_CFG2 MEMATTR 3:0, SH 5:4.
    assert REG["GERROR_IRQ_CFG0"].layout.encode(ADDR=0x0800_0044) == 0x0800_0044
    assert _set_fields("EVENTQ_IRQ_CFG2", 0x3F) == dict(MEMATTR=0xF, SH=3)


# ------------------------------------------------------------------ machinery
def test_reserved_bits():
    rsv = (1 << 511) | (1 << 56)  # STE bits 58:56 and dwords 4..7 are RES0
    word = QEMU_STE | rsv
    assert STE.reserved_bits(word) == rsv
    assert STE.reserved_bits(QEMU_STE) == 0
    assert STE.decode(word) == STE.decode(QEMU_STE)
    assert CD.reserved_bits(QEMU_CD | 1 << 116) == 1 << 116  # CD bits 127:116 RES0


def test_bad_values():
    assert STE.bad_values(QEMU_STE) == []
    assert STE.bad_values(0b001 << 1 | 1) == ["CONFIG"]  # Config 0b001 is reserved
    assert STE.bad_values(0b011 << 1 | 1) == ["CONFIG"]
    assert STE.bad_values(at(2, 0xC000_0000_0000)) == ["S2TG"]  # S2TG = 3
    assert STE.bad_values(at(2, 0x7_0000_0000_0000)) == ["S2PS"]  # S2PS = 0b111
    assert STE.bad_values(at(1, 0x3000_0000)) == ["EATS"]  # EATS = 3
    assert STE.bad_values(at(1, 0x4000_0000)) == ["STRW"]  # STRW = 0b01
    assert STE.bad_values(0x30) == ["S1FMT"]  # S1FMT = 3
    assert STE.bad_values(at(1, 0x3)) == ["S1DSS"]  # S1DSS = 3
    assert set(STE.bad_values(0x30 | at(2, 0xC000_0000_0000))) == {"S1FMT", "S2TG"}


def test_layout_errors():
    with pytest.raises(LayoutError):
        STE.encode(NOPE=1)
    with pytest.raises(LayoutError):
        STE.encode(CONFIG=8)
    with pytest.raises(LayoutError):
        STE.encode(V=-1)
    with pytest.raises(LayoutError):
        STE.encode(S2TTB=0x4150_0008)  # not 16-byte aligned
    with pytest.raises(LayoutError):
        STE.encode(S2TTB=1 << 52)  # beyond bit 51
    with pytest.raises(LayoutError):
        STE.from_bytes(bytes(63))
    with pytest.raises(LayoutError):
        Layout("X", 8, [Field("A", 3, 0), Field("A", 7, 4)])
    with pytest.raises(LayoutError):
        Layout("X", 8, [Field("A", 8, 0)])
    with pytest.raises(LayoutError):
        Layout("X", 8, [Field("A", 3, 0), Field("B", 4, 3)])
    assert issubclass(LayoutError, ValueError)


def test_encode_with_base_keeps_other_fields():
    assert STE.encode(QEMU_STE, CONFIG=Config.ABORT) == 0x4130_0001
    assert STE.encode(QEMU_STE | 1 << 511, V=0) == 0x4130_000A | 1 << 511


def test_decoded_attribute_access():
    d = STE.decode(QEMU_STE)
    assert isinstance(d, Decoded)
    assert d.CONFIG == d["CONFIG"] == 5
    with pytest.raises(AttributeError):
        _ = d.NOPE


def test_bytes_round_trip():
    data = STE.to_bytes(QEMU_STE)
    assert data == bytes.fromhex("0b003041") + bytes(60)  # little-endian word 0
    assert STE.from_bytes(data) == QEMU_STE
    cmd = COMMANDS[Op.CFGI_STE_RANGE]
    assert cmd.to_bytes(words(0x04, 0, 31, 0)) == bytes([4] + [0] * 7 + [31] + [0] * 7)


def test_format():
    assert STE.format(QEMU_STE) == "STE[V=0x1 CONFIG=0x5(s1_trans) S1CONTEXTPTR=0x41300000]"
    assert STE.format(QEMU_STE | 1 << 511) == (
        "STE[V=0x1 CONFIG=0x5(s1_trans) S1CONTEXTPTR=0x41300000 RES0=" + hex(1 << 511) + "]"
    )
    assert COMMANDS[Op.SYNC].format(0x46) == "CMD_SYNC[OP=0x46]"
    assert STE.format(0) == "STE[]"


# ------------------------------------------------------------------ Z3
def _under(expr, var, value: int) -> int:
    """`expr` with `var` replaced by the constant `value`, simplified to an int."""
    out = z3.simplify(z3.substitute(expr, (var, z3.BitVecVal(value, var.size()))))
    assert z3.is_bv_value(out), out
    return out.as_long()


@pytest.mark.parametrize(
    "layout,word,name",
    [
        (STE, QEMU_STE, "CONFIG"),
        (STE, QEMU_STE, "S1CONTEXTPTR"),  # address field
        (STE, QEMU_S2_STE, "S2TTB"),  # address field, addr_lo = 4
        (STE, QEMU_S2_STE, "S2T0SZ"),
        (CD, QEMU_CD, "TTB0"),
        (CD, QEMU_CD, "ASID"),
        (EVENT, words(0x10, 8, 0, 0x280, 0x200800, 0, 0x50000000), "IPA"),
    ],
)
def test_z3_get_matches_concrete(layout, word, name):
    sym = layout.symbolic("w")
    term = layout.get(sym, name)
    f = layout[name]
    assert term.size() == f.width + (f.addr_lo or 0)
    assert _under(term, sym, word) == layout.get(word, name)


@pytest.mark.parametrize(
    "layout,word,name,value",
    [
        (STE, QEMU_STE, "CONFIG", Config.NESTED),
        (STE, QEMU_STE, "S2VMID", 0x42),
        (STE, QEMU_S2_STE, "S2TTB", 0x000D_BEEF_DEAD_BEE0),  # address field
        (CD, QEMU_CD, "TTB0", 0x4140_1000),  # address field
        (CD, QEMU_CD, "ASID", 0xFFFF),
    ],
)
def test_z3_put_matches_concrete(layout, word, name, value):
    sym = layout.symbolic("w")
    term = layout.put(sym, name, value)
    assert term.size() == layout.width
    assert _under(term, sym, word) == layout.put(word, name, value)


def test_z3_put_symbolic_address_value():
    # A symbolic 64-bit address put into a symbolic STE, then both pinned by a solver.
    sym = STE.symbolic("ste")
    addr = z3.BitVec("addr", 64)
    term = STE.put(sym, "S2TTB", addr)
    s = z3.Solver()
    s.add(sym == QEMU_STE, addr == 0x000D_BEEF_DEAD_BEE0)
    out = z3.BitVec("out", 512)
    s.add(out == term)
    assert s.check() == z3.sat
    assert s.model()[out].as_long() == QEMU_STE | at(3, 0x000D_BEEF_DEAD_BEE0)
    # And: for every word, the field read back equals the address bits 51:4 put in.
    prove = z3.Solver()
    prove.add(STE.get(term, "S2TTB") != z3.Concat(z3.Extract(51, 4, addr), z3.BitVecVal(0, 4)))
    assert prove.check() == z3.unsat


def test_z3_put_symbolic_value_into_concrete_word():
    v = z3.BitVec("v", 1)
    term = STE.put(QEMU_STE, "V", v)
    assert term.size() == STE.width
    assert _under(term, v, 0) == QEMU_STE & ~1


# ------------------------------------------------------------------ hypothesis
_LAYOUT_512 = st.sampled_from([STE, CD])


@given(_LAYOUT_512, st.integers(0, (1 << 512) - 1))
def test_ste_cd_decode_total_and_round_trip(layout, word):
    d = layout.decode(word)
    layout.bad_values(word)
    layout.format(word)
    assert layout.encode(**d) == word & layout.defined_mask
    assert layout.encode(**d) | layout.reserved_bits(word) == word


@given(st.integers(0, (1 << 128) - 1))
def test_command_decode_total_and_round_trip(word):
    layout = COMMANDS.get(word & 0xFF, CMD_ANY)
    d = layout.decode(word)
    layout.bad_values(word)
    layout.format(word)
    assert layout.encode(**d) == word & layout.defined_mask


@given(st.sampled_from(sorted(COMMANDS)), st.integers(0, (1 << 120) - 1))
def test_known_command_round_trip(op, rest):
    word = rest << 8 | op
    layout = COMMANDS[op]
    assert layout.encode(**layout.decode(word)) == word & layout.defined_mask


@given(st.integers(0, (1 << 256) - 1))
def test_event_decode_total(word):
    EVENT.decode(word)
    EVENT.format(word)
    try:
        Fault.decode(word)
    except ValueError as e:
        assert word & 0xFF not in {ev.value for ev in Event}
        assert "unknown event id" in str(e)


@given(st.sampled_from(REGISTERS), st.data())
def test_register_decode_total(reg, data):
    value = data.draw(st.integers(0, (1 << (8 * reg.size)) - 1))
    d = reg.layout.decode(value)
    reg.layout.format(value)
    reg.layout.bad_values(value)
    assert reg.layout.encode(**d) == value & reg.layout.defined_mask
