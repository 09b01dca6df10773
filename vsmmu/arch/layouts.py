"""Every SMMUv3 bit layout, written once (Arm IHI 0070, SMMUv3.1 subset).

Bit numbers are global within the structure: a 512-bit STE or CD, a 128-bit
command, a 256-bit event record, a 64-bit L1 descriptor, a register.  The
positions match Linux `arm-smmu-v3.h` and QEMU `smmuv3-common.h` and are
checked in tests against golden words worked out by hand from the
architecture (see tests/test_layouts.py).  Fields of features this model does
not implement (Secure state, MPAM, HTTU hardware-update bits, PRI queue) are
left out and so count as reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .fields import Field as F
from .fields import Layout

# Physical/intermediate address-size encodings shared by IDR5.OAS, CD.IPS and STE.S2PS.
PA_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}
_PA = {k: f"{v}-bit" for k, v in PA_BITS.items()}

# Translation granule encodings: TG0 / S2TG use one, TG1 another (as in TCR_EL1).
TG0_GRANULE = {0: 4096, 1: 65536, 2: 16384}
TG1_GRANULE = {1: 16384, 2: 4096, 3: 65536}


class Config(IntEnum):
    """STE.Config."""

    ABORT = 0b000
    BYPASS = 0b100
    S1_TRANS = 0b101
    S2_TRANS = 0b110
    NESTED = 0b111


# ---------------------------------------------------------------- STE (64 B)
STE = Layout("STE", 512, [
    F("V", 0, 0),
    F("CONFIG", 3, 1, values={c.value: c.name.lower() for c in Config}),
    F("S1FMT", 5, 4, values={0: "linear", 1: "2lvl-4k", 2: "2lvl-64k"}),
    F("S1CONTEXTPTR", 51, 6, addr_lo=6),
    F("S1CDMAX", 63, 59),
    F("S1DSS", 65, 64, values={0: "terminate", 1: "bypass", 2: "substream0"}),
    F("S1CIR", 67, 66),
    F("S1COR", 69, 68),
    F("S1CSH", 71, 70),
    F("DRE", 76, 76),
    F("CONT", 80, 77),
    F("DCP", 81, 81),
    F("PPAR", 82, 82),
    F("MEV", 83, 83),
    F("S2FWB", 89, 89),
    F("S1STALLD", 91, 91),
    F("EATS", 93, 92, values={0: "abort", 1: "translate", 2: "s1chk"}),
    F("STRW", 95, 94, values={0: "nsel1", 2: "el2", 3: "el2-e2h"}),
    F("MEMATTR", 99, 96),
    F("MTCFG", 100, 100),
    F("ALLOCCFG", 104, 101),
    F("SHCFG", 109, 108),
    F("NSCFG", 111, 110),
    F("PRIVCFG", 113, 112),
    F("INSTCFG", 115, 114),
    F("S2VMID", 143, 128),
    F("S2T0SZ", 165, 160),
    F("S2SL0", 167, 166),
    F("S2IR0", 169, 168),
    F("S2OR0", 171, 170),
    F("S2SH0", 173, 172),
    F("S2TG", 175, 174, values={0: "4k", 1: "64k", 2: "16k"}),
    F("S2PS", 178, 176, values=_PA),
    F("S2AA64", 179, 179),
    F("S2ENDI", 180, 180),
    F("S2AFFD", 181, 181),
    F("S2PTW", 182, 182),
    F("S2HD", 183, 183),
    F("S2HA", 184, 184),
    F("S2S", 185, 185),
    F("S2R", 186, 186),
    F("S2TTB", 243, 196, addr_lo=4),
])

# ----------------------------------------------------------------- CD (64 B)
CD = Layout("CD", 512, [
    F("T0SZ", 5, 0),
    F("TG0", 7, 6, values={k: f"{v // 1024}k" for k, v in TG0_GRANULE.items()}),
    F("IR0", 9, 8),
    F("OR0", 11, 10),
    F("SH0", 13, 12),
    F("EPD0", 14, 14),
    F("ENDI", 15, 15),
    F("T1SZ", 21, 16),
    F("TG1", 23, 22, values={k: f"{v // 1024}k" for k, v in TG1_GRANULE.items()}),
    F("IR1", 25, 24),
    F("OR1", 27, 26),
    F("SH1", 29, 28),
    F("EPD1", 30, 30),
    F("V", 31, 31),
    F("IPS", 34, 32, values=_PA),
    F("AFFD", 35, 35),
    F("WXN", 36, 36),
    F("UWXN", 37, 37),
    F("TBI", 39, 38),
    F("PAN", 40, 40),
    F("AA64", 41, 41),
    F("HD", 42, 42),
    F("HA", 43, 43),
    F("S", 44, 44),
    F("R", 45, 45),
    F("A", 46, 46),
    F("ASET", 47, 47),
    F("ASID", 63, 48),
    F("NSCFG0", 64, 64),
    F("HAD0", 65, 65),
    F("TTB0", 115, 68, addr_lo=4),
    F("NSCFG1", 128, 128),
    F("HAD1", 129, 129),
    F("TTB1", 179, 132, addr_lo=4),
    F("MAIR", 255, 192),
    F("AMAIR", 319, 256),
])

# ------------------------------------------------------ L1 descriptors (8 B)
L1_STD = Layout("L1STD", 64, [
    F("SPAN", 4, 0),
    F("L2PTR", 51, 6, addr_lo=6),
])

L1_CD = Layout("L1CD", 64, [
    F("V", 0, 0),
    F("L2PTR", 51, 12, addr_lo=12),
])


# ------------------------------------ VMSAv8-64 translation table descriptors
# Not SMMU structures, but what the SMMU walks: the walker reads these bits and
# the page-table builder writes them, from this one table (Arm ARM D8.3).
_VALID = F("VALID", 0, 0)
_TYPE = F("TYPE", 1, 1, values={0: "block", 1: "table/page"})  # 0 at level 3 is reserved
_SH = F("SH", 9, 8, values={0: "non", 2: "outer", 3: "inner"})
_AF = F("AF", 10, 10)
_OA = F("OA", 47, 12, addr_lo=12)  # next table, or output; the granule/block clears low bits
_OA_HI = F("OA_HI", 15, 12, doc="64K granule: OA[51:48] (FEAT_LPA); inside OA's span")
_CONTIG = F("CONTIG", 52, 52)

TABLE_DESC = Layout("TABLE_DESC", 64, [
    _VALID, _TYPE, _OA, _OA_HI,
    F("PXNTABLE", 59, 59), F("UXNTABLE", 60, 60), F("APTABLE", 62, 61), F("NSTABLE", 63, 63),
], overlaps=True)
S1_DESC = Layout("S1_DESC", 64, [
    _VALID, _TYPE,
    F("ATTRINDX", 4, 2), F("NS", 5, 5),
    F("AP", 7, 6, doc="AP[2:1]: bit 1 read-only, bit 0 EL0 access"),
    _SH, _AF, F("NG", 11, 11), _OA, _OA_HI, _CONTIG,
    F("PXN", 53, 53), F("UXN", 54, 54),
], overlaps=True)
S2_DESC = Layout("S2_DESC", 64, [
    _VALID, _TYPE,
    F("MEMATTR", 5, 2),
    F("S2AP", 7, 6, doc="bit 0 read, bit 1 write"),
    _SH, _AF, _OA, _OA_HI, _CONTIG,
    F("XN", 54, 53, doc="XN[1:0]; without FEAT_XNX XN[0] is RES0"),
], overlaps=True)


# ---------------------------------------------------------- commands (16 B)
class Op(IntEnum):
    PREFETCH_CONFIG = 0x01
    PREFETCH_ADDR = 0x02
    CFGI_STE = 0x03
    CFGI_STE_RANGE = 0x04  # CFGI_ALL is this opcode with Range = 31
    CFGI_CD = 0x05
    CFGI_CD_ALL = 0x06
    TLBI_NH_ALL = 0x10
    TLBI_NH_ASID = 0x11
    TLBI_NH_VA = 0x12
    TLBI_NH_VAA = 0x13
    TLBI_EL3_ALL = 0x18
    TLBI_EL3_VA = 0x1A
    TLBI_EL2_ALL = 0x20
    TLBI_EL2_ASID = 0x21
    TLBI_EL2_VA = 0x22
    TLBI_EL2_VAA = 0x23
    TLBI_S12_VMALL = 0x28
    TLBI_S2_IPA = 0x2A
    TLBI_NSNH_ALL = 0x30
    ATC_INV = 0x40
    PRI_RESP = 0x41
    RESUME = 0x44
    STALL_TERM = 0x45
    SYNC = 0x46


_OP = F("OP", 7, 0)
_SSEC = F("SSEC", 10, 10)
_SSV = F("SSV", 11, 11)
_SSID = F("SSID", 31, 12)
_SID = F("SID", 63, 32)
_LEAF = F("LEAF", 64, 64)
_NUM = F("NUM", 16, 12)
_SCALE = F("SCALE", 24, 20)
_VMID = F("VMID", 47, 32)
_ASID = F("ASID", 63, 48)
_TTL = F("TTL", 73, 72)
_TG = F("TG", 75, 74, values={0: "none", 1: "4k", 2: "16k", 3: "64k"})
_VA = F("ADDR", 127, 76, addr_lo=12)
_IPA = F("ADDR", 115, 76, addr_lo=12)
_RANGED = [_NUM, _SCALE, _LEAF, _TTL, _TG]

_CMD_FIELDS: dict[Op, list[F]] = {
    Op.PREFETCH_CONFIG: [_SSEC, _SSV, _SSID, _SID],
    Op.PREFETCH_ADDR: [_SSEC, _SSV, _SSID, _SID, F("SIZE", 68, 64), F("STRIDE", 73, 69), _VA],
    Op.CFGI_STE: [_SSEC, _SID, _LEAF],
    Op.CFGI_STE_RANGE: [_SSEC, _SID, F("RANGE", 68, 64)],
    Op.CFGI_CD: [_SSEC, _SSID, _SID, _LEAF],
    Op.CFGI_CD_ALL: [_SSEC, _SID],
    Op.TLBI_NH_ALL: [_VMID],
    Op.TLBI_NH_ASID: [_VMID, _ASID],
    Op.TLBI_NH_VA: [_VMID, _ASID, *_RANGED, _VA],
    Op.TLBI_NH_VAA: [_VMID, *_RANGED, _VA],
    Op.TLBI_EL3_ALL: [],
    Op.TLBI_EL3_VA: [*_RANGED, _VA],
    Op.TLBI_EL2_ALL: [],
    Op.TLBI_EL2_ASID: [_ASID],
    Op.TLBI_EL2_VA: [_ASID, *_RANGED, _VA],
    Op.TLBI_EL2_VAA: [*_RANGED, _VA],
    Op.TLBI_S12_VMALL: [_VMID],
    Op.TLBI_S2_IPA: [_VMID, *_RANGED, _IPA],
    Op.TLBI_NSNH_ALL: [],
    Op.ATC_INV: [F("GLOBAL", 9, 9), _SSV, _SSID, _SID, F("SIZE", 69, 64), _VA],
    Op.PRI_RESP: [_SSEC, _SSV, _SSID, _SID, F("PRGINDEX", 72, 64), F("RESP", 77, 76)],
    Op.RESUME: [_SSEC, F("AC", 12, 12), F("AB", 13, 13), _SID, F("STAG", 79, 64)],
    Op.STALL_TERM: [_SSEC, _SID],
    Op.SYNC: [
        F("CS", 13, 12, values={0: "none", 1: "irq", 2: "sev"}),
        F("MSH", 23, 22),
        F("MSIATTR", 27, 24),
        F("MSIDATA", 63, 32),
        F("MSIADDR", 115, 66, addr_lo=2),
    ],
}

COMMANDS: dict[int, Layout] = {
    op.value: Layout(f"CMD_{op.name}", 128, [_OP, *fields]) for op, fields in _CMD_FIELDS.items()
}
CMD_ANY = Layout("CMD", 128, [_OP])  # any opcode, known or not


class CmdError(IntEnum):
    """SMMU_CMDQ_CONS.ERR codes."""

    NONE = 0
    ILL = 1
    ABT = 2
    ATC_INV_SYNC = 3


# ---------------------------------------------------- event records (32 B)
class Event(IntEnum):
    F_UUT = 0x01
    C_BAD_STREAMID = 0x02
    F_STE_FETCH = 0x03
    C_BAD_STE = 0x04
    F_BAD_ATS_TREQ = 0x05
    F_STREAM_DISABLED = 0x06
    F_TRANS_FORBIDDEN = 0x07
    C_BAD_SUBSTREAMID = 0x08
    F_CD_FETCH = 0x09
    C_BAD_CD = 0x0A
    F_WALK_EABT = 0x0B
    F_TRANSLATION = 0x10
    F_ADDR_SIZE = 0x11
    F_ACCESS = 0x12
    F_PERMISSION = 0x13
    F_TLB_CONFLICT = 0x20
    F_CFG_CONFLICT = 0x21
    E_PAGE_REQUEST = 0x24


class FaultClass(IntEnum):
    """Event CLASS: which access of a translation faulted."""

    CD = 0b00  # fetching the CD (nested: its stage-2 translation)
    TT = 0b01  # fetching a stage-1 table descriptor
    IN = 0b10  # the input transaction itself


# FETCH_ADDR (F_*_FETCH, F_WALK_EABT) and IPA (stage-2 faults) share dword 3.
EVENT = Layout("EVENT", 256, [
    F("ID", 7, 0, values={e.value: e.name for e in Event}),
    F("SSV", 11, 11),
    F("SSID", 31, 12),
    F("SID", 63, 32),
    F("STAG", 79, 64),
    F("STALL", 95, 95),
    F("PNU", 97, 97),
    F("IND", 98, 98),
    F("RNW", 99, 99),
    F("S2", 103, 103),
    F("CLASS", 105, 104, values={c.value: c.name for c in FaultClass}),
    F("TTRNW", 108, 108),
    F("INPUT_ADDR", 191, 128, addr_lo=0),
    F("FETCH_ADDR", 243, 195, addr_lo=3),
    F("IPA", 243, 204, addr_lo=12),
], overlaps=True)


# --------------------------------------------------------------- registers
@dataclass(frozen=True)
class Register:
    name: str
    offset: int  # from the SMMU base; page 1 registers are at 0x10000 + x
    size: int  # bytes: 4 or 8
    layout: Layout

    # `port` is anything with the SMMU's MMIO interface: read(offset, size) and
    # write(offset, value, size) -- the model, a bus window, or QEMU's qtest port.
    def read(self, port) -> int:
        return port.read(self.offset, self.size)

    def write(self, port, value: int) -> None:
        port.write(self.offset, value, self.size)


def _reg(name: str, offset: int, size: int, *fields: F) -> Register:
    return Register(name, offset, size, Layout(name, size * 8, fields))


_Q_BASE = (F("LOG2SIZE", 4, 0), F("ADDR", 51, 5, addr_lo=5))
_IRQ_CFG = (
    ("IRQ_CFG0", 8, (F("ADDR", 51, 2, addr_lo=2),)),
    ("IRQ_CFG1", 4, (F("DATA", 31, 0),)),
    ("IRQ_CFG2", 4, (F("MEMATTR", 3, 0), F("SH", 5, 4))),
)
_GERROR_BITS = (
    F("CMDQ_ERR", 0, 0),
    F("EVENTQ_ABT_ERR", 2, 2),
    F("PRIQ_ABT_ERR", 3, 3),
    F("MSI_CMDQ_ABT_ERR", 4, 4),
    F("MSI_EVENTQ_ABT_ERR", 5, 5),
    F("MSI_PRIQ_ABT_ERR", 6, 6),
    F("MSI_GERROR_ABT_ERR", 7, 7),
    F("SFM_ERR", 8, 8),
)
_CR0_BITS = (
    F("SMMUEN", 0, 0),
    F("PRIQEN", 1, 1),
    F("EVENTQEN", 2, 2),
    F("CMDQEN", 3, 3),
    F("ATSCHK", 4, 4),
    F("VMW", 8, 6),
)
_IRQ_CTRL_BITS = (F("GERROR_IRQEN", 0, 0), F("PRIQ_IRQEN", 1, 1), F("EVENTQ_IRQEN", 2, 2))

REGISTERS: tuple[Register, ...] = (
    _reg("IDR0", 0x00, 4,
         F("S2P", 0, 0), F("S1P", 1, 1), F("TTF", 3, 2), F("COHACC", 4, 4), F("BTM", 5, 5),
         F("HTTU", 7, 6), F("DORMHINT", 8, 8), F("HYP", 9, 9), F("ATS", 10, 10),
         F("NS1ATS", 11, 11), F("ASID16", 12, 12), F("MSI", 13, 13), F("SEV", 14, 14),
         F("ATOS", 15, 15), F("PRI", 16, 16), F("VMW", 17, 17), F("VMID16", 18, 18),
         F("CD2L", 19, 19), F("VATOS", 20, 20), F("TTENDIAN", 22, 21), F("ATSRECERR", 23, 23),
         F("STALL_MODEL", 25, 24), F("TERM_MODEL", 26, 26), F("ST_LEVEL", 28, 27)),
    _reg("IDR1", 0x04, 4,
         F("SIDSIZE", 5, 0), F("SSIDSIZE", 10, 6), F("PRIQS", 15, 11), F("EVENTQS", 20, 16),
         F("CMDQS", 25, 21), F("ATTR_PERMS_OVR", 26, 26), F("ATTR_TYPES_OVR", 27, 27),
         F("REL", 28, 28), F("QUEUES_PRESET", 29, 29), F("TABLES_PRESET", 30, 30)),
    _reg("IDR2", 0x08, 4, F("BA_VATOS", 9, 0)),
    _reg("IDR3", 0x0C, 4,
         F("HAD", 2, 2), F("PBHA", 3, 3), F("XNX", 4, 4), F("PPS", 5, 5), F("MPAM", 7, 7),
         F("FWB", 8, 8), F("STT", 9, 9), F("RIL", 10, 10), F("BBML", 12, 11)),
    _reg("IDR4", 0x10, 4, F("IMPDEF", 31, 0)),
    _reg("IDR5", 0x14, 4,
         F("OAS", 2, 0, values=_PA), F("GRAN4K", 4, 4), F("GRAN16K", 5, 5), F("GRAN64K", 6, 6),
         F("VAX", 11, 10), F("STALL_MAX", 31, 16)),
    _reg("IIDR", 0x18, 4,
         F("IMPLEMENTER", 11, 0), F("REVISION", 15, 12), F("VARIANT", 19, 16),
         F("PRODUCTID", 31, 20)),
    _reg("AIDR", 0x1C, 4, F("ARCHMINORREV", 3, 0), F("ARCHMAJORREV", 7, 4)),
    _reg("CR0", 0x20, 4, *_CR0_BITS),
    _reg("CR0ACK", 0x24, 4, *_CR0_BITS),
    _reg("CR1", 0x28, 4,
         F("QUEUE_IC", 1, 0), F("QUEUE_OC", 3, 2), F("QUEUE_SH", 5, 4),
         F("TABLE_IC", 7, 6), F("TABLE_OC", 9, 8), F("TABLE_SH", 11, 10)),
    _reg("CR2", 0x2C, 4, F("E2H", 0, 0), F("RECINVSID", 1, 1), F("PTM", 2, 2)),
    _reg("STATUSR", 0x40, 4, F("DORMANT", 0, 0)),
    _reg("GBPA", 0x44, 4,
         F("MEMATTR", 3, 0), F("MTCFG", 4, 4), F("ALLOCCFG", 11, 8), F("SHCFG", 13, 12),
         F("PRIVCFG", 17, 16), F("INSTCFG", 19, 18), F("ABORT", 20, 20), F("UPDATE", 31, 31)),
    _reg("IRQ_CTRL", 0x50, 4, *_IRQ_CTRL_BITS),
    _reg("IRQ_CTRLACK", 0x54, 4, *_IRQ_CTRL_BITS),
    _reg("GERROR", 0x60, 4, *_GERROR_BITS),
    _reg("GERRORN", 0x64, 4, *_GERROR_BITS),
    *(_reg(f"GERROR_{n}", 0x68 + i, s, *fs)
      for (n, s, fs), i in zip(_IRQ_CFG, (0, 8, 12), strict=True)),
    _reg("STRTAB_BASE", 0x80, 8, F("ADDR", 51, 6, addr_lo=6), F("RA", 62, 62)),
    _reg("STRTAB_BASE_CFG", 0x88, 4,
         F("LOG2SIZE", 5, 0), F("SPLIT", 10, 6),
         F("FMT", 17, 16, values={0: "linear", 1: "2lvl"})),
    _reg("CMDQ_BASE", 0x90, 8, *_Q_BASE, F("RA", 62, 62)),
    _reg("CMDQ_PROD", 0x98, 4, F("WR", 19, 0)),
    _reg("CMDQ_CONS", 0x9C, 4,
         F("RD", 19, 0), F("ERR", 30, 24, values={e.value: e.name for e in CmdError})),
    _reg("EVENTQ_BASE", 0xA0, 8, *_Q_BASE, F("WA", 62, 62)),
    *(_reg(f"EVENTQ_{n}", 0xB0 + i, s, *fs)
      for (n, s, fs), i in zip(_IRQ_CFG, (0, 8, 12), strict=True)),
    _reg("EVENTQ_PROD", 0x100A8, 4, F("WR", 19, 0), F("OVFLG", 31, 31)),
    _reg("EVENTQ_CONS", 0x100AC, 4, F("RD", 19, 0), F("OVACKFLG", 31, 31)),
)

REG = {r.name: r for r in REGISTERS}
REG_LAYOUT = {r.name: r.layout for r in REGISTERS}
REG_AT = {r.offset: r for r in REGISTERS}
