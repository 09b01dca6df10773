"""VMSAv8-64 translation table walks as an SMMUv3 performs them.

One table walk core (`_walk_tables`) serves stage 1, stage 2 and the stage-1
part of a nested walk; the two stages differ only in how they pick the table
and read the leaf's permissions.  Geometry per granule is one small table
(`GRANULES`).  Every fault is raised as `FaultError(Fault(...))` carrying what
a walker knows (event, stage, CLASS, IPA, fetch address); the SMMU fills in the
stream and transaction fields.

Not modelled: hardware Access flag / dirty updates (HTTU), FEAT_LPA2 (52-bit
addresses with the 4K/16K granules), contiguous hints, PAN, S2FWB attribute
encodings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import ClassVar

from ..arch.faults import Fault, FaultError
from ..arch.layouts import S1_DESC, S2_DESC, TABLE_DESC, Event, FaultClass
from .memory import BusError, PhysMem

# Descriptor bit positions, taken from the layout table once at import (the walk
# is a hot path: plain shifts, no Field calls per descriptor).
_MASK64 = (1 << 64) - 1
_DESC_OA = TABLE_DESC["OA"].mask  # cleared below the granule/block
_DESC_OA_HI = TABLE_DESC["OA_HI"].mask  # 64K granule: OA[51:48]
_OA_HI_SHIFT = 48 - TABLE_DESC["OA_HI"].lo
_AF = S1_DESC["AF"].mask
_HIER_LO = TABLE_DESC["PXNTABLE"].lo  # PXNTable, UXNTable, APTable[1:0]: 4 bits from here
_AP_LO, _PXN_LO, _UXN_LO = S1_DESC["AP"].lo, S1_DESC["PXN"].lo, S1_DESC["UXN"].lo
_ATTRINDX = S1_DESC["ATTRINDX"]
_S2AP_LO, _XN_LO = S2_DESC["S2AP"].lo, S2_DESC["XN"].lo
_MEMATTR = S2_DESC["MEMATTR"]
assert (TABLE_DESC["UXNTABLE"].lo, TABLE_DESC["APTABLE"].lo) == (_HIER_LO + 1, _HIER_LO + 2)
assert S1_DESC["PXN"].lo + 1 == S1_DESC["UXN"].lo and S2_DESC["XN"].width == 2


@dataclass(frozen=True, slots=True)
class Granule:
    shift: int  # log2(granule size): bits resolved by the final lookup
    stride: int  # bits resolved per level: shift - 3 (8-byte descriptors)
    block_levels: frozenset[int]  # levels where a 0b01 descriptor is a block
    s2_start: tuple[int, int, int]  # stage-2 start level per SL0 = 0, 1, 2 (3 is reserved)
    s2_sl0_2_min_pa: int  # SL0=2 is reserved when the implemented PA size is below this
    max_ia: int  # largest input size without FEAT_LPA2 (4K/16K) / with FEAT_LVA (64K)


GRANULES: dict[int, Granule] = {
    4096: Granule(12, 9, frozenset({1, 2}), (2, 1, 0), 44, 48),
    16384: Granule(14, 11, frozenset({2}), (3, 2, 1), 42, 48),
    65536: Granule(16, 13, frozenset({2}), (3, 2, 1), 44, 52),
}


# ------------------------------------------------------------ permissions
@dataclass(frozen=True, slots=True)
class Perm:
    """What a leaf permits, after hierarchical (APTable/XNTable) restrictions."""

    r_priv: bool
    w_priv: bool
    x_priv: bool
    r_user: bool
    w_user: bool
    x_user: bool

    ALL: ClassVar[Perm]

    def intersect(self, other: Perm) -> Perm:
        return Perm(
            self.r_priv and other.r_priv,
            self.w_priv and other.w_priv,
            self.x_priv and other.x_priv,
            self.r_user and other.r_user,
            self.w_user and other.w_user,
            self.x_user and other.x_user,
        )


Perm.ALL = Perm(True, True, True, True, True, True)


@dataclass(frozen=True, slots=True)
class Access:
    """One transaction.  A write needs write permission whatever InD says (the SMMU
    treats instruction writes as data); an instruction read needs execute
    permission only, as for a CPU (execute-only memory is architected)."""

    write: bool = False
    exec: bool = False
    priv: bool = False

    def allowed_by(self, perm: Perm) -> bool:
        if self.priv:
            return perm.w_priv if self.write else perm.x_priv if self.exec else perm.r_priv
        return perm.w_user if self.write else perm.x_user if self.exec else perm.r_user


def _s1_perm(ap: int, uxn: int, pxn: int, wxn: int, uwxn: int) -> Perm:
    """Stage-1 EL1&0 permissions from the effective AP[2:1] (bit 1 = read-only, bit 0 =
    EL0 access), UXN, PXN and the CD's WXN/UWXN."""
    priv_w = not ap & 2
    user_r = bool(ap & 1)
    user_w = ap == 1
    # WXN makes whatever is writable at an EL non-executable at that EL.
    x_user = not uxn and not (wxn and user_w)
    # EL1&0 never lets EL1 execute what EL0 can write; UWXN says the same again.
    x_priv = not pxn and not user_w and not (wxn and priv_w) and not (uwxn and user_w)
    return Perm(True, priv_w, x_priv, user_r, user_w, x_user)


def _s2_perm(s2ap: int, xn: int, xnx: int) -> Perm:
    """Stage-2 permissions from S2AP (bit 0 read, bit 1 write) and XN[1:0] (desc 54:53)."""
    r, w = bool(s2ap & 1), bool(s2ap & 2)
    if xnx:  # FEAT_XNX: 00 both, 01 EL0 only, 10 neither, 11 EL1 only
        x_priv, x_user = xn in (0, 3), xn in (0, 1)
    else:  # XN[0] is RES0: XN[1] forbids execution at every EL
        x_priv = x_user = not xn & 2
    return Perm(r, w, x_priv, r, w, x_user)


# Indexed by ap | uxn << 2 | pxn << 3 | wxn << 4 | uwxn << 5, and s2ap | xn << 2 | xnx << 4:
# precomputed so a walk allocates no Perm.
_S1_PERMS = tuple(
    _s1_perm(k & 3, k >> 2 & 1, k >> 3 & 1, k >> 4 & 1, k >> 5 & 1) for k in range(64)
)
_S2_PERMS = tuple(_s2_perm(k & 3, k >> 2 & 3, k >> 4 & 1) for k in range(32))


# ------------------------------------------------------------ configuration
@dataclass(frozen=True, slots=True)
class S1Config:
    """A decoded, already validated CD."""

    t0sz: int
    t1sz: int
    tg0: int  # granule sizes in bytes
    tg1: int
    epd0: bool
    epd1: bool
    ttb0: int  # IPAs when nested
    ttb1: int
    oa_bits: int  # min(CD.IPS, IDR5.OAS)
    tbi0: bool
    tbi1: bool
    affd: bool
    had0: bool
    had1: bool
    wxn: bool = False
    uwxn: bool = False
    asid: int = 0


@dataclass(frozen=True, slots=True)
class S2Config:
    """The decoded, validated stage-2 half of an STE."""

    t0sz: int
    sl0: int
    granule: int  # bytes
    ps_bits: int  # effective stage-2 output size
    ttb: int
    affd: bool
    vmid: int
    ptw: bool = False  # S2PTW: stage-1 table walks to Device memory fault
    xnx: bool = False  # IDR3.XNX: 2-bit stage-2 XN


@dataclass(frozen=True, slots=True)
class Leaf:
    """One stage's result: [in_base, in_base+size) maps to out_base; `out` is the
    translation of the walked address, so out == out_base + (input - in_base).  A
    stage-1 in_base keeps whatever top byte (tag) the VA had under TBI."""

    out: int
    in_base: int
    out_base: int
    size: int
    level: int
    perm: Perm
    attr: int  # stage 1: AttrIndx (desc 4:2); stage 2: MemAttr (desc 5:2)


# ------------------------------------------------------------ geometry
def s1_start_level(ia: int, g: Granule) -> int | None:
    """Stage-1 start level: as many levels as it takes to resolve ia - shift bits."""
    if not g.shift < ia <= g.max_ia:
        return None
    return 4 - -(-(ia - g.shift) // g.stride)


@cache
def _s2_geometry(t0sz: int, sl0: int, granule: int) -> tuple[int, int] | None:
    g = GRANULES.get(granule)
    if g is None or not 0 <= sl0 <= 2:
        return None
    start = g.s2_start[sl0]
    ia = 64 - t0sz
    below = g.shift + g.stride * (3 - start)  # bits resolved after the start level
    # The start level must resolve at least one bit, and at most a full table
    # plus 4 bits of concatenation (16 tables).
    if not below < ia <= min(below + g.stride + 4, g.max_ia):
        return None
    return start, 1 << max(0, ia - below - g.stride)


def s2_geometry(
    t0sz: int, sl0: int, granule: int, *, pa_max: int = 48
) -> tuple[int, int] | None:
    """(start_level, number_of_concatenated_tables), or None when the combination is
    invalid: SL0 reserved for the granule, an input size the start level cannot
    resolve (too few bits, or more than 16 concatenated tables), or an input size
    beyond the granule's maximum.  `pa_max` is the implemented PA size
    (IDR5.OAS): SL0=2 (4K level 0, 16K/64K level 1) is reserved below 44 bits
    (42 for 16K)."""
    geo = _s2_geometry(t0sz, sl0, granule)
    if geo is not None and sl0 == 2 and pa_max < GRANULES[granule].s2_sl0_2_min_pa:
        return None
    return geo


# ------------------------------------------------------------ the walk
def _fault(
    event: Event,
    s2: bool,
    fault_class: FaultClass,
    ipa: int | None,
    fetch_addr: int | None = None,
) -> FaultError:
    return FaultError(
        Fault(event, s2=s2, fault_class=fault_class, ipa=ipa, fetch_addr=fetch_addr)
    )


def _walk_tables(
    mem: PhysMem,
    g: Granule,
    ttb: int,
    level: int,
    ia: int,
    addr: int,
    oa_bits: int,
    affd: bool,
    xlate: Callable[[int, FaultClass], int] | None,
    initiator: object,
    s2: bool,
    fault_class: FaultClass,
    eabt_class: FaultClass,
    ipa: int | None,
) -> tuple[int, int, int, int, int]:
    """Walk from the table at `ttb` (start `level`) to the leaf for `addr`.

    Returns (descriptor, level, lsb, out_base, hier) where 1 << lsb is the leaf
    size and hier ORs bits [63:59] of every table descriptor on the way (stage 1
    reads APTable/XNTable from it).  `xlate` maps each descriptor address to
    the PA to read (nested stage 1: a stage-2 walk)."""
    shift, stride = g.shift, g.stride
    lsb = shift + stride * (3 - level)
    index_mask = (1 << (ia - lsb)) - 1  # the start level may index concatenated tables
    if ttb >> oa_bits:
        raise _fault(Event.F_ADDR_SIZE, s2, fault_class, ipa)
    # The start table (concatenated ones included) is aligned to its size: TTB bits
    # below that are treated as zero.
    base = ttb & -((index_mask + 1) * 8)
    page_mask = -(1 << shift)
    hier = 0
    while True:
        desc_addr = base + ((addr >> lsb) & index_mask) * 8
        pa = desc_addr if xlate is None else xlate(desc_addr, FaultClass.TT)
        try:
            desc = mem.read_int(pa, 8, initiator)
        except BusError:
            raise _fault(Event.F_WALK_EABT, s2, eabt_class, ipa, pa) from None
        is_table_or_page = desc & 2
        if not desc & 1 or not (is_table_or_page or level in g.block_levels):
            # invalid, or a block where the granule allows none (0b01 at level 3 too)
            raise _fault(Event.F_TRANSLATION, s2, fault_class, ipa)
        out = desc & _DESC_OA & page_mask
        if shift == 16:
            out |= (desc & _DESC_OA_HI) << _OA_HI_SHIFT
        if is_table_or_page and level < 3:
            if out >> oa_bits:  # the next table's address is an output address too
                raise _fault(Event.F_ADDR_SIZE, s2, fault_class, ipa)
            hier |= desc >> _HIER_LO
            base = out
            level += 1
            lsb -= stride
            index_mask = (1 << stride) - 1
            continue
        out &= -(1 << lsb)  # block: bits below the block size are RES0
        if out >> oa_bits:
            raise _fault(Event.F_ADDR_SIZE, s2, fault_class, ipa)
        # Access flag fault comes before any permission fault.
        if not affd and not desc & _AF:
            raise _fault(Event.F_ACCESS, s2, fault_class, ipa)
        return desc, level, lsb, out, hier


def walk_s2(
    mem: PhysMem,
    cfg: S2Config,
    ipa: int,
    *,
    fault_class: FaultClass = FaultClass.IN,
    initiator: object = None,
) -> Leaf:
    """Translate `ipa` through stage 2.  `fault_class` is the CLASS its faults carry:
    IN for the transaction's own IPA, TT / CD when translating a stage-1 table or
    CD address.  A failed descriptor fetch is F_WALK_EABT with S2=1."""
    ia = 64 - cfg.t0sz
    if ipa < 0 or ipa >> ia:
        raise _fault(Event.F_TRANSLATION, True, fault_class, ipa)
    geo = _s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule)
    if geo is None:  # the SMMU rejects such STEs first; never walk a nonsense geometry
        raise FaultError(Fault(Event.C_BAD_STE))
    desc, level, lsb, out, _ = _walk_tables(
        mem, GRANULES[cfg.granule], cfg.ttb, geo[0], ia, ipa, cfg.ps_bits, cfg.affd, None,
        initiator, True, fault_class, fault_class, ipa,
    )
    size = 1 << lsb
    perm = _S2_PERMS[(desc >> _S2AP_LO & 3) | (desc >> _XN_LO & 3) << 2 | cfg.xnx << 4]
    return Leaf(out | (ipa & (size - 1)), ipa & -size, out, size, level, perm,
                _MEMATTR.get(desc))


def walk_s1(
    mem: PhysMem,
    cfg: S1Config,
    va: int,
    *,
    s2: Callable[[int, FaultClass], int] | None = None,
    initiator: object = None,
) -> Leaf:
    """Translate `va` through stage 1.  When nested, `s2` maps every stage-1 descriptor
    address (an IPA) to the PA to read and raises its own stage-2 faults, and
    Leaf.out is an IPA.  Stage-1 faults carry S2=0, CLASS=IN, except F_WALK_EABT
    (CLASS=TT: the access that failed was a table fetch)."""
    va &= _MASK64
    top = va >> 55 & 1  # VA[55] selects the half, even when the top byte is ignored
    if top:
        tsz, gsize, epd, ttb, tbi, had = (
            cfg.t1sz, cfg.tg1, cfg.epd1, cfg.ttb1, cfg.tbi1, cfg.had1
        )
    else:
        tsz, gsize, epd, ttb, tbi, had = (
            cfg.t0sz, cfg.tg0, cfg.epd0, cfg.ttb0, cfg.tbi0, cfg.had0
        )
    if epd:  # walks disabled for this half: fault without touching memory
        raise _fault(Event.F_TRANSLATION, False, FaultClass.IN, None)
    g = GRANULES.get(gsize)
    ia = 64 - tsz
    start = None if g is None else s1_start_level(ia, g)
    if start is None:  # the SMMU rejects such CDs first; never walk a nonsense geometry
        raise FaultError(Fault(Event.C_BAD_CD))
    # Bits [63:ia] ([55:ia] under TBI) must all equal VA[55]: the gap between the halves.
    top_bits = (56 if tbi else 64) - ia
    ones = (1 << top_bits) - 1
    if va >> ia & ones != (ones if top else 0):
        raise _fault(Event.F_TRANSLATION, False, FaultClass.IN, None)
    desc, level, lsb, out, hier = _walk_tables(
        mem, g, ttb, start, ia, va, cfg.oa_bits, cfg.affd, s2, initiator,
        False, FaultClass.IN, FaultClass.TT, None,
    )
    ap = desc >> _AP_LO & 3
    uxn = desc >> _UXN_LO & 1
    pxn = desc >> _PXN_LO & 1
    if not had:  # hier bits: 0 PXNTable, 1 UXNTable, 2 APTable[0], 3 APTable[1]
        if hier & 8:  # no write below
            ap |= 2
        if hier & 4:  # no EL0 access below
            ap &= 2
        uxn |= hier >> 1 & 1
        pxn |= hier & 1
    perm = _S1_PERMS[ap | uxn << 2 | pxn << 3 | cfg.wxn << 4 | cfg.uwxn << 5]
    size = 1 << lsb
    return Leaf(out | (va & (size - 1)), va & -size, out, size, level, perm, _ATTRINDX.get(desc))


# ------------------------------------------------------------ permission checks
def check_s1_perm(leaf: Leaf, access: Access) -> None:
    if not access.allowed_by(leaf.perm):
        raise _fault(Event.F_PERMISSION, False, FaultClass.IN, None)


def check_s2_perm(
    leaf: Leaf, access: Access, *, fault_class: FaultClass = FaultClass.IN
) -> None:
    if not access.allowed_by(leaf.perm):
        ipa = leaf.in_base + (leaf.out - leaf.out_base)  # the address that was walked
        raise _fault(Event.F_PERMISSION, True, fault_class, ipa)


_TABLE_READ = Access()


def s2_table_fetch(
    mem: PhysMem,
    cfg: S2Config,
    ipa: int,
    initiator: object = None,
    *,
    fault_class: FaultClass = FaultClass.TT,
) -> int:
    """The PA a stage-1 table read (or, with CLASS=CD, a CD read) at `ipa` goes to:
    a stage-2 walk that needs read permission and, under S2PTW, refuses stage-1
    table reads that land on Device memory (MemAttr[3:2] == 0b00).  Usable as
    walk_s1's `s2` callback through a lambda binding mem and cfg."""
    leaf = walk_s2(mem, cfg, ipa, fault_class=fault_class, initiator=initiator)
    check_s2_perm(leaf, _TABLE_READ, fault_class=fault_class)
    if cfg.ptw and fault_class == FaultClass.TT and not leaf.attr & 0b1100:
        raise _fault(Event.F_PERMISSION, True, fault_class, ipa)
    return leaf.out
