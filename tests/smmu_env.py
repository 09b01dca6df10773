"""A software-side harness for the device-level SMMU tests (tests/test_smmu_*.py).

`Env` owns a `PhysMem` and an `Smmu` and drives it only the way a driver would:
32/64-bit register accesses at literal offsets (IHI 0070 §6.3, written out here
rather than taken from our register table, so the map itself is under test),
structures written into memory, commands pushed into the command-queue memory
followed by a PROD doorbell, and event records read back as raw 256-bit
records from the event-queue memory.

Inputs (STEs, CDs, commands) may be built by field name from vsmmu.arch.layouts;
expected *outputs* in the tests are hand-derived literals.

Memory map (all addresses are PAs; only these regions are backed):

    0x41000000  stream table (linear or level 1)   1 MiB
    0x41100000  command queue                       64 KiB
    0x41200000  event queue                         64 KiB
    0x41300000  context descriptors                 256 KiB
    0x41400000  stage-1 page tables                 1 MiB
    0x41500000  stage-2 page tables                 64 KiB
    0x42000000  level-2 stream tables (added on demand)
    0x44000000  data                                1 MiB
    0x45000000  data                                64 KiB
    0x48000000  MSI doorbells                       4 KiB
    0x4f000000  nothing: every access is a bus error
"""

from __future__ import annotations

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import CD, COMMANDS, STE, Op
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.smmu import Smmu

# ------------------------------------------------------------ register offsets
IDR0, IDR1, IDR2, IDR3, IDR4, IDR5, IIDR, AIDR = 0x0, 0x4, 0x8, 0xC, 0x10, 0x14, 0x18, 0x1C
CR0, CR0ACK, CR1, CR2 = 0x20, 0x24, 0x28, 0x2C
STATUSR, GBPA = 0x40, 0x44
IRQ_CTRL, IRQ_CTRLACK = 0x50, 0x54
GERROR, GERRORN = 0x60, 0x64
GERROR_IRQ_CFG0, GERROR_IRQ_CFG1, GERROR_IRQ_CFG2 = 0x68, 0x70, 0x74
STRTAB_BASE, STRTAB_BASE_CFG = 0x80, 0x88
CMDQ_BASE, CMDQ_PROD, CMDQ_CONS = 0x90, 0x98, 0x9C
EVENTQ_BASE = 0xA0
EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1, EVENTQ_IRQ_CFG2 = 0xB0, 0xB8, 0xBC
EVENTQ_PROD, EVENTQ_CONS = 0x100A8, 0x100AC  # page 1

# CR0 bits: SMMUEN 0, EVENTQEN 2, CMDQEN 3.  IRQ_CTRL: GERROR_IRQEN 0, EVENTQ_IRQEN 2.
SMMUEN, EVENTQEN, CMDQEN = 0x1, 0x4, 0x8

# ------------------------------------------------------------ memory map
STRTAB = 0x41000000
CMDQ = 0x41100000
EVTQ = 0x41200000
CDS = 0x41300000
PT = 0x41400000
S2PT = 0x41500000
L2STRTAB = 0x42000000
DATA = 0x44000000
DATA2 = 0x45000000
MSI = 0x48000000
UNBACKED = 0x4F000000

# ------------------------------------------------------------ qemu-peer.md §4-§5 words
QEMU_STE_W0 = 0x4130000B  # V=1, Config=0b101 (S1), S1ContextPtr=0x41300000
QEMU_CD_W0 = 0xC0000019  # T0SZ=25, TG0=4K, EPD1=1, V=1
QEMU_CD_W1 = 0x00016205  # IPS=5 (48 bits), AA64=1, R=1, A=1, ASID=1
QEMU_CD_W2 = 0x41400000  # TTB0
QEMU_L1_0 = 0x41401003  # table -> 0x41401000
QEMU_L2_1 = 0x41402003  # table -> 0x41402000 (IOVA 0x200000-0x3fffff)
QEMU_L3_RW = 0x44000743  # IOVA 0x200000 -> 0x44000000, AF, SH=IS, AP=RW at EL0
QEMU_L3_RO = 0x440017C3  # IOVA 0x201000 -> 0x44001000, AP=RO
# Stage 2, 4K granule, S2T0SZ=25, S2SL0=1 (start level 1): one level-1 table.
# 0x400007fd = OA 0x40000000 | AF 0x400 | SH=IS 0x300 | S2AP=RW 0xc0 | MemAttr=0xF 0x3c | block.
S2_BLOCK_1G = 0x400007FD
S2_VMID = 5


def words(*ws: int) -> int:
    """32-bit words, word 0 first, as one little-endian integer."""
    return sum((w & 0xFFFFFFFF) << (32 * i) for i, w in enumerate(ws))


def command(op: int, **fields: int) -> int:
    """A 128-bit command built by field name (an input, so the layout table is fine)."""
    return COMMANDS[op].encode(OP=op, **fields)


CFGI_ALL = command(Op.CFGI_STE_RANGE, RANGE=31)
NSNH_ALL = command(Op.TLBI_NSNH_ALL)
SYNC = command(Op.SYNC)


def s2_fields(vmid: int = S2_VMID, ttb: int = S2PT, **kw: int) -> dict[str, int]:
    """The qemu-peer.md §5 stage-2 half: S2T0SZ=25, S2SL0=1, 4K, S2PS=44 bits, AA64, S2R."""
    f = dict(S2VMID=vmid, S2T0SZ=25, S2SL0=1, S2TG=0, S2PS=4, S2AA64=1, S2R=1, S2TTB=ttb)
    f.update(kw)
    return f


class Env:
    """One SMMU on fresh memory, programmed through its registers."""

    def __init__(self, features: Features | None = None):
        self.mem = PhysMem(48)
        for base, size in (
            (STRTAB, 1 << 20), (CMDQ, 1 << 16), (EVTQ, 1 << 16), (CDS, 1 << 18),
            (PT, 1 << 20), (S2PT, 1 << 16), (DATA, 1 << 20), (DATA2, 1 << 16), (MSI, 1 << 12),
        ):
            self.mem.add(base, size)
        self.smmu = Smmu(self.mem, features)
        self.two_level = False
        self.split = 8
        self.cmdq_log2 = 8
        self.cmdq_base = CMDQ
        self.prod = 0  # software's copy of CMDQ_PROD (index + wrap bit)

    # -------------------------------------------------------------- registers
    def w(self, offset: int, value: int, size: int = 4) -> None:
        self.smmu.write(offset, value, size)

    def r(self, offset: int, size: int = 4) -> int:
        return self.smmu.read(offset, size)

    def setup(self, two_level: bool = False, *, log2size: int = 8, split: int = 8,
              cmdq_log2: int = 8, evtq_log2: int = 8, enable: bool = True,
              recinvsid: bool = True) -> Env:
        """The qemu-peer.md §4 bring-up: tables and queues, CMDQEN|EVENTQEN, CFGI_ALL +
        TLBI_NSNH_ALL + SYNC, then SMMUEN.  CR2.RECINVSID=1 (bit 1), as Linux sets it:
        invalid StreamIDs are recorded as C_BAD_STREAMID."""
        self.two_level, self.split, self.cmdq_log2 = two_level, split, cmdq_log2
        self.w(CR0, 0)
        self.w(CR2, 0x2 if recinvsid else 0)
        self.w(STRTAB_BASE, STRTAB, 8)
        self.w(STRTAB_BASE_CFG, (1 << 16 if two_level else 0) | split << 6 | log2size)
        self.w(CMDQ_BASE, CMDQ | cmdq_log2, 8)
        self.w(EVENTQ_BASE, EVTQ | evtq_log2, 8)
        self.w(CR0, CMDQEN | EVENTQEN)
        assert self.r(CR0ACK) == CMDQEN | EVENTQEN
        self.cmd(CFGI_ALL, NSNH_ALL, SYNC)
        if enable:
            self.w(CR0, CMDQEN | EVENTQEN | SMMUEN)
        return self

    # -------------------------------------------------------------- structures
    def ste_addr(self, sid: int) -> int:
        """Where software keeps SID's STE; 2-level tables get a full level-2 table
        (SPAN = SPLIT + 1) per level-1 descriptor, created on first use."""
        if not self.two_level:
            return STRTAB + sid * 64
        l1, index = sid >> self.split, sid & ((1 << self.split) - 1)
        l2 = L2STRTAB + l1 * (64 << self.split)
        if not self.mem.is_backed(l2):
            self.mem.add(l2, max(64 << self.split, 4096))
            self.mem.write_int(STRTAB + l1 * 8, l2 | (self.split + 1), 8)  # L2Ptr | SPAN
        return l2 + index * 64

    def put_ste(self, sid: int, word: int) -> None:
        self.mem.write_int(self.ste_addr(sid), word, 64)

    def put_cd(self, addr: int, word: int) -> None:
        self.mem.write_int(addr, word, 64)

    def put(self, addr: int, value: int, size: int = 8) -> None:
        """A descriptor (page-table entry, L1 descriptor) or any little-endian value."""
        self.mem.write_int(addr, value, size)

    def qemu_s1(self, sid: int | None = 8) -> None:
        """qemu-peer.md §4 stage-1 setup, literal words (sid None: CD and tables only)."""
        if sid is not None:
            self.put_ste(sid, QEMU_STE_W0)
        self.put_cd(CDS, words(QEMU_CD_W0, QEMU_CD_W1, QEMU_CD_W2))
        self.put(PT + 0 * 8, QEMU_L1_0)
        self.put(PT + 0x1000 + 1 * 8, QEMU_L2_1)
        self.put(PT + 0x2000 + 0 * 8, QEMU_L3_RW)
        self.put(PT + 0x2000 + 1 * 8, QEMU_L3_RO)

    def s2_only(self, sid: int = 8, vmid: int = S2_VMID, **kw: int) -> None:
        """qemu-peer.md §5 stage-2-only stream: IPA [0, 1 GiB) -> PA 0x40000000 + IPA."""
        self.put_ste(sid, STE.encode(V=1, CONFIG=0b110, **s2_fields(vmid, **kw)))
        self.put(S2PT, S2_BLOCK_1G)

    def nested(self, sid: int = 8, vmid: int = S2_VMID, cd_w1: int = QEMU_CD_W1,
               ste: dict[str, int] | None = None) -> None:
        """qemu-peer.md §5 nested setup: the CD pointer, TTB0 and every stage-1 table
        descriptor are IPAs (IPA = PA - 0x40000000 through the 1 GiB S2 block).
        Stage-1 structures sit at PA 0x41310000 (CD) and 0x41410000.. (tables)."""
        fields = dict(V=1, CONFIG=0b111, S1CONTEXTPTR=0x01310000, **s2_fields(vmid))
        fields.update(ste or {})
        self.put_ste(sid, STE.encode(**fields))
        self.put(S2PT, S2_BLOCK_1G)
        self.put_cd(CDS + 0x10000, words(QEMU_CD_W0, cd_w1, 0x01410000))
        self.put(PT + 0x10000, 0x01411003)  # L1[0] -> IPA 0x01411000
        self.put(PT + 0x11000 + 8, 0x01412003)  # L2[1] -> IPA 0x01412000
        self.put(PT + 0x12000, 0x04000743)  # L3[0]: IOVA 0x200000 -> IPA 0x04000000

    def cd(self, **fields: int) -> int:
        """A CD by field name: the qemu-peer CD's fields, overridden by `fields`."""
        base = dict(T0SZ=25, TG0=0, EPD1=1, V=1, IPS=5, AA64=1, R=1, A=1, ASID=1, TTB0=PT)
        base.update(fields)
        return CD.encode(**base)

    # -------------------------------------------------------------- queues
    def push(self, *cmds: int) -> None:
        """Write commands at PROD and advance software's PROD, without the doorbell."""
        n = 1 << self.cmdq_log2
        for c in cmds:
            self.mem.write_int(self.cmdq_base + (self.prod & (n - 1)) * 16, c, 16)
            self.prod = (self.prod + 1) & (2 * n - 1)

    def cmd(self, *cmds: int) -> None:
        """Push commands and ring the doorbell (the SMMU consumes them at once)."""
        self.push(*cmds)
        self.w(CMDQ_PROD, self.prod)

    def cons(self) -> int:
        return self.r(CMDQ_CONS)

    def events(self) -> list[tuple[int, int, int, int]]:
        """Every new record as its four 64-bit dwords; CONS is advanced past them."""
        prod, cons = self.r(EVENTQ_PROD), self.r(EVENTQ_CONS)
        log2 = min(self.r(EVENTQ_BASE) & 0x1F, (self.r(IDR1) >> 16) & 0x1F)
        n = 1 << log2
        base = self.r(EVENTQ_BASE, 8) & 0x000F_FFFF_FFFF_FFE0 & ~(32 * n - 1)
        mask = 2 * n - 1
        out = []
        while (cons & mask) != (prod & mask):
            raw = self.mem.read(base + (cons & (n - 1)) * 32, 32)
            out.append(tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, 32, 8)))
            cons = (cons & ~mask) | ((cons + 1) & mask)
        self.w(EVENTQ_CONS, cons)
        return out

    def dma(self, *args, **kw):
        return self.smmu.dma(*args, **kw)
