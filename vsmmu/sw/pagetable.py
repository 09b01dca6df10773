"""VMSAv8-64 translation tables built in memory, for stage 1 or stage 2.

`PageTable` writes the tables an SMMU (or the vSMMU's guest) walks: any of
the 4K/16K/64K granules, stage 1 from TTB0 (start level from T0SZ) or stage 2
(start level from S2T0SZ + S2SL0, with concatenated start tables), block
descriptors wherever alignment and level allow.  It reaches memory only
through a memory port (`alloc.MemPort`) and takes table memory from an
`Allocator`, so the same builder fills physical memory for the hypervisor and
guest-IPA memory for a guest driver.

Descriptor bits are VMSAv8-64 (Arm DDI 0487 D8.3), not SMMU structures, so
they live here rather than in layouts.py; they are still declared once, as
`Layout`s, and never shifted by hand.  Not supported: the TTB1 half, 52-bit
output addresses (FEAT_LPA/LPA2), contiguous hints, freeing tables.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..arch.layouts import S1_DESC, S2_DESC, TABLE_DESC
from ..hw.memory import BusError, PhysMem
from ..hw.walk import GRANULES, s1_start_level, s2_geometry
from .alloc import Allocator, MemPort, Quota, read_u64, write_u64, zero

SH_INNER = 0b11
S2_NORMAL_WB = 0b1111  # MemAttr: Normal, Inner and Outer Write-Back Cacheable
# Stage-2 XN[1:0] by (EL0 may execute, EL1 may execute), FEAT_XNX encoding; on an SMMU
# without XNX only XN[1] counts, and every entry here with XN[1]=1 forbids both.
_S2_XN = {(True, True): 0b00, (True, False): 0b01, (False, False): 0b10, (False, True): 0b11}


class MappingError(ValueError):
    """A map over an existing mapping, or a range the table cannot hold."""


class PageTable:
    """One translation table tree.  `root` (alias `ttb`) goes into CD.TTB0 or STE.S2TTB,
    together with `tsz`, `granule` and, for stage 2, `sl0`."""

    def __init__(
        self,
        mem: MemPort,
        alloc: Allocator | Quota,
        *,
        stage: int = 1,
        granule: int = 4096,
        tsz: int = 16,
        sl0: int | None = None,
        pa_bits: int = 48,
    ):
        g = GRANULES.get(granule)
        if g is None:
            raise ValueError(f"granule {granule:#x} is not 4K, 16K or 64K")
        self.mem, self.alloc, self.stage, self.granule = mem, alloc, stage, granule
        self.tsz, self.ia, self.pa_bits, self._g = tsz, 64 - tsz, pa_bits, g
        if stage == 1:
            start = s1_start_level(self.ia, g)
            if start is None or sl0 is not None:
                raise ValueError(f"stage 1: T0SZ={tsz} invalid for granule {granule:#x}")
            self.sl0 = None
        elif stage == 2:
            # Default SL0: the deepest start level that works (fewest levels, up to
            # 16 concatenated tables), as Linux prefers concatenation to a level 0.
            choices = (sl0,) if sl0 is not None else (0, 1, 2)
            geos = [(s, s2_geometry(tsz, s, granule, pa_max=pa_bits)) for s in choices]
            valid = [(s, geo) for s, geo in geos if geo is not None]
            if not valid:
                raise ValueError(f"stage 2: no SL0 in {choices} fits T0SZ={tsz}, {granule:#x}")
            self.sl0, (start, _) = valid[0]
        else:
            raise ValueError(f"stage must be 1 or 2, not {stage}")
        self.start_level = start
        self._leaf = S1_DESC if stage == 1 else S2_DESC
        self.changes = 0  # descriptors written that a walk reads (see IpaView)
        self.table_bytes = 0  # memory its tables took (never given back)
        self.root = self._zeroed(max(8 << self._bits(start), 64))

    @property
    def ttb(self) -> int:
        return self.root

    @property
    def concat(self) -> int:
        """Number of concatenated start-level tables (stage 2; 1 for stage 1)."""
        return max(1, (8 << self._bits(self.start_level)) // self.granule)

    # -------------------------------------------------------------- geometry
    def _lsb(self, level: int) -> int:
        """log2 of the region one descriptor at `level` maps."""
        return self._g.shift + self._g.stride * (3 - level)

    def _bits(self, level: int) -> int:
        """Index bits of a table at `level` (the start level may concatenate)."""
        return self.ia - self._lsb(level) if level == self.start_level else self._g.stride

    def _slots(self, table: int, level: int, start: int, end: int, va_base: int):
        """(va, descriptor address) of each entry of `table` overlapping [start, end)."""
        lsb = self._lsb(level)
        lo = max(start, va_base)
        hi = min(end, va_base + (1 << (lsb + self._bits(level))))
        for i in range((lo - va_base) >> lsb, ((hi - 1 - va_base) >> lsb) + 1):
            yield va_base + (i << lsb), table + 8 * i

    def _is_table(self, desc: int, level: int) -> bool:
        return level < 3 and TABLE_DESC.get(desc, "TYPE") == 1

    def _check_range(self, iova: int, size: int) -> None:
        if size <= 0 or (iova | size) & (self.granule - 1):
            raise MappingError(f"{iova:#x}+{size:#x} is not {self.granule:#x}-aligned")
        if iova < 0 or (iova + size - 1) >> self.ia:
            raise MappingError(f"{iova:#x}+{size:#x} outside the {self.ia}-bit input range")

    # -------------------------------------------------------------- memory
    def _zeroed(self, size: int) -> int:
        addr = self.alloc.alloc(size, size)  # tables are aligned to their size
        zero(self.mem, addr, size)
        self.table_bytes += size
        return addr

    def _put(self, slot: int, desc: int) -> None:
        """Write a descriptor a walk can reach: what translates has changed."""
        write_u64(self.mem, slot, desc)
        self.changes += 1

    def _new_table(self, slot: int, entries: list[int] | None = None) -> int:
        """Allocate a next-level table (empty, or holding `entries`) and link it at `slot`."""
        table = self._zeroed(self.granule)
        if entries:
            self.mem.write(table, b"".join(e.to_bytes(8, "little") for e in entries))
        self._put(slot, TABLE_DESC.encode(VALID=1, TYPE=1, OA=table))
        return table

    # -------------------------------------------------------------- building
    def _leaf_fields(self, read, write, exec, user, priv_exec, af, attr) -> dict[str, int]:
        if self.stage == 1:
            if not read:
                raise MappingError("stage-1 descriptors cannot deny reads")
            return dict(ATTRINDX=attr or 0, AP=(0 if write else 2) | int(user), SH=SH_INNER,
                        AF=int(af), UXN=int(not exec), PXN=int(not priv_exec))
        return dict(MEMATTR=S2_NORMAL_WB if attr is None else attr,
                    S2AP=int(read) | int(write) << 1, SH=SH_INNER, AF=int(af),
                    XN=_S2_XN[bool(exec), bool(priv_exec)])

    def map(
        self,
        iova: int,
        out: int,
        size: int,
        *,
        read: bool = True,
        write: bool = True,
        exec: bool = False,
        user: bool = True,
        priv_exec: bool = False,
        af: bool = True,
        attr: int | None = None,
        block: bool = True,
    ) -> None:
        """Map [iova, iova+size) to [out, out+size).  `exec` allows EL0 (stage 2: EL0)
        execution, `priv_exec` EL1; `user` grants EL0 access (stage 1 only); `attr` is
        AttrIndx (stage 1, default 0) or MemAttr (stage 2, default Normal WB).  Fails,
        writing nothing, when any part of the range is already mapped."""
        self._check_range(iova, size)
        if out & (self.granule - 1) or out < 0 or (out + size - 1) >> self.pa_bits:
            raise MappingError(f"output {out:#x}+{size:#x} unaligned or beyond {self.pa_bits} bits")
        fields = self._leaf_fields(read, write, exec, user, priv_exec, af, attr)
        self._refuse_mapped(iova, size)
        while size:
            n = self._install(iova, out, size, fields, block)
            iova, out, size = iova + n, out + n, size - n

    def _refuse_mapped(self, iova: int, size: int) -> None:
        """A map of more than one granule fails whole, before it writes anything, when
        any part of [iova, iova+size) is mapped.  One granule needs no scan: any leaf
        over it lies on its walk, which _next_table and the leaf write refuse first."""
        if size > self.granule:
            busy = next(self._leaves(iova, iova + size), None)
            if busy is not None:
                raise MappingError(f"{busy[0]:#x} is already mapped")

    def _install(self, iova: int, out: int, size: int, fields: dict, block: bool) -> int:
        """Write the largest leaf that starts at iova and fits; returns its size."""
        table, level = self.root, self.start_level
        while True:
            span = 1 << self._lsb(level)
            leaf_level = level == 3 or (block and level in self._g.block_levels)
            if leaf_level and not (iova | out) & (span - 1) and size >= span:
                slot = self._slot(table, level, iova)
                desc = read_u64(self.mem, slot)
                if not desc & 1:
                    leaf = self._leaf.encode(VALID=1, TYPE=int(level == 3), OA=out, **fields)
                    self._put(slot, leaf)
                    return span
            table = self._next_table(table, level, iova)
            level += 1

    def _slot(self, table: int, level: int, iova: int) -> int:
        return table + 8 * ((iova >> self._lsb(level)) & ((1 << self._bits(level)) - 1))

    def _next_table(self, table: int, level: int, iova: int) -> int:
        """The table `table`'s entry for iova points to, made when the entry is empty.
        A leaf there means iova is mapped already: refused before anything is written
        below it.  A table emptied by unmap is filled rather than replaced by a block,
        which would need break-before-make and a walk-cache invalidation."""
        slot = self._slot(table, level, iova)
        desc = read_u64(self.mem, slot)
        if not desc & 1:
            return self._new_table(slot)
        if not self._is_table(desc, level):
            raise MappingError(f"{iova:#x} is already mapped")
        return TABLE_DESC.get(desc, "OA")

    def map_pages(self, iova: int, outs: list[int], *, read: bool = True, write: bool = True,
                  exec: bool = False, user: bool = True, priv_exec: bool = False,
                  af: bool = True, attr: int | None = None) -> None:
        """Map the granules from iova on, the i-th to the granule at outs[i]: memory handed
        out page by page, as a hypervisor backs a guest's RAM.  Permissions as for `map`;
        fails, writing nothing, when any of them is mapped already."""
        g = self.granule
        self._check_range(iova, len(outs) * g)
        for out in outs:
            if out & (g - 1) or out < 0 or out >> self.pa_bits:
                raise MappingError(f"output {out:#x} unaligned or beyond {self.pa_bits} bits")
        fields = self._leaf_fields(read, write, exec, user, priv_exec, af, attr)
        self._refuse_mapped(iova, len(outs) * g)
        page, oa = self._leaf.encode(VALID=1, TYPE=1, **fields), self._leaf["OA"]  # OA 0
        table_span = 1 << (self._lsb(3) + self._bits(3))  # what one level-3 table maps
        region = table = None
        for i, out in enumerate(outs):
            va = iova + i * g
            if va // table_span != region:  # a new level-3 table: walk to it once
                region, table = va // table_span, self.root
                for level in range(self.start_level, 3):
                    table = self._next_table(table, level, va)
            slot = self._slot(table, 3, va)
            if read_u64(self.mem, slot) & 1:
                raise MappingError(f"{va:#x} is already mapped")
            self._put(slot, oa.put(page, out))

    def unmap(self, iova: int, size: int) -> list[tuple[int, int]]:
        """Remove every mapping in [iova, iova+size), splitting blocks that straddle its
        ends.  Returns the (start, length) of each leaf removed, in address order, for
        the caller to invalidate.  A split replaces a block by a table mapping the same
        output, so the parts kept never change translation."""
        self._check_range(iova, size)
        removed: list[tuple[int, int]] = []
        self._unmap(self.root, self.start_level, iova, iova + size, 0, removed)
        return removed

    def _unmap(self, table, level, start, end, va_base, removed) -> None:
        span = 1 << self._lsb(level)
        for va, slot in self._slots(table, level, start, end, va_base):
            desc = read_u64(self.mem, slot)
            if not desc & 1:
                continue
            if self._is_table(desc, level):
                self._unmap(TABLE_DESC.get(desc, "OA"), level + 1, start, end, va, removed)
            elif start <= va and va + span <= end:
                self._put(slot, 0)
                removed.append((va, span))
            else:
                self._unmap(self._split(slot, desc, level), level + 1, start, end, va, removed)

    def _split(self, slot: int, desc: int, level: int) -> int:
        """Replace the block at `slot` by a table of next-level leaves with its attributes."""
        child = 1 << self._lsb(level + 1)
        base = self._leaf.get(desc, "OA")
        entries = [self._leaf.encode(desc, TYPE=int(level + 1 == 3), OA=base + i * child)
                   for i in range(1 << self._g.stride)]
        return self._new_table(slot, entries)

    # -------------------------------------------------------------- reading back
    def _leaves(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(va, level, descriptor address, descriptor) of every valid leaf in [start, end)."""
        def scan(table, level, va_base):
            for va, slot in self._slots(table, level, start, end, va_base):
                desc = read_u64(self.mem, slot)
                if not desc & 1:
                    continue
                if self._is_table(desc, level):
                    yield from scan(TABLE_DESC.get(desc, "OA"), level + 1, va)
                else:
                    yield va, level, slot, desc

        return scan(self.root, self.start_level, 0)

    def descriptors(self, iova: int) -> list[tuple[int, int, int]]:
        """The (level, descriptor address, descriptor) path a walk of `iova` reads,
        ending at the leaf or at the first invalid descriptor."""
        self._check_range(iova & -self.granule, self.granule)
        path = []
        table, level = self.root, self.start_level
        while True:
            slot = table + 8 * ((iova >> self._lsb(level)) & ((1 << self._bits(level)) - 1))
            desc = read_u64(self.mem, slot)
            path.append((level, slot, desc))
            if not desc & 1 or not self._is_table(desc, level):
                return path
            table, level = TABLE_DESC.get(desc, "OA"), level + 1

    def translate(self, iova: int) -> int | None:
        """Where `iova` maps according to the tables as written (no permission checks)."""
        level, _, desc = self.descriptors(iova)[-1]
        if not desc & 1:
            return None
        span = 1 << self._lsb(level)
        return self._leaf.get(desc, "OA") + (iova & (span - 1))


class IpaView:
    """A guest's IPA space seen through the hypervisor's stage-2 table: the memory
    port a guest (its driver, its page-table builder) and a vSMMU acting on its
    behalf use.  Same shape as `PhysMem` (initiators pass through to observers);
    accesses are split at granule boundaries; an unmapped IPA is a `BusError`
    at that IPA, before anything is touched.  `observers` see every access as
    the IPA asked for, its PA (None: unmapped) before it is made, and who made it:
    (kind "r"/"w", ipa, size, initiator, pa)."""

    def __init__(self, mem: PhysMem, s2: PageTable, observers: list | None = None):
        self.mem, self.s2 = mem, s2
        self.observers = observers if observers is not None else []
        # IPA page -> PA page (None: unmapped), as of s2.changes == _seen.  The
        # hypervisor is the only writer of its stage-2 tables and writes them through
        # s2, so a translation stays right until s2 writes again (as a CPU's TLB
        # entries do until the hypervisor invalidates them).
        self._pages: dict[int, int | None] = {}
        self._seen = s2.changes

    def _pieces(self, ipa: int, size: int, write: bool) -> list[tuple[int, int]]:
        pieces, end = [], ipa + size
        while ipa < end:
            n = min(end - ipa, self.s2.granule - (ipa & (self.s2.granule - 1)))
            pa = self.pa_of(ipa)
            if pa is None:
                raise BusError(ipa, size, write)
            pieces.append((pa, n))
            ipa += n
        return pieces

    def pa_of(self, ipa: int) -> int | None:
        """The PA behind `ipa`, or None when stage 2 does not map it."""
        if not 0 <= ipa < 1 << self.s2.ia:
            return None
        if self._seen != self.s2.changes:
            self._pages.clear()
            self._seen = self.s2.changes
        page = ipa & -self.s2.granule
        if page not in self._pages:
            self._pages[page] = self.s2.translate(page)
        pa = self._pages[page]
        return None if pa is None else pa + (ipa - page)

    def read(self, addr: int, size: int, initiator: object = None) -> bytes:
        if self.observers:
            self._notify("r", addr, size, initiator)
        return b"".join(self.mem.read(pa, n, initiator)
                        for pa, n in self._pieces(addr, size, False))

    def write(self, addr: int, data: bytes, initiator: object = None) -> None:
        if self.observers:
            self._notify("w", addr, len(data), initiator)
        pos = 0
        for pa, n in self._pieces(addr, len(data), True):
            self.mem.write(pa, data[pos : pos + n], initiator)
            pos += n

    def _notify(self, kind: str, ipa: int, size: int, initiator: object) -> None:
        pa = self.pa_of(ipa)
        for observe in self.observers:
            observe(kind, ipa, size, initiator, pa)

    def read_int(self, addr: int, size: int, initiator: object = None) -> int:
        return int.from_bytes(self.read(addr, size, initiator), "little")

    def write_int(self, addr: int, value: int, size: int, initiator: object = None) -> None:
        self.write(addr, value.to_bytes(size, "little"), initiator)
