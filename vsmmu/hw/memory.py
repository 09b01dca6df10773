"""Physical memory: sparse, page-granular, with an ownership map.

Every page that exists has an owner: the hypervisor, a guest (by id), or
nobody (`FREE`, backed but unallocated).  Addresses with no page behind them
are bus errors, which the SMMU turns into fetch/abort events.  Observers see
every access with its initiator, which is how the invariant checkers watch
DMA and the SMMU's own table fetches without the model knowing about them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

HYP = "hyp"  # owner of hypervisor pages (stream tables, queues, stage-2 tables)
FREE = "free"  # backed but owned by nobody

Owner = Hashable
Observer = Callable[[str, int, int, object], None]  # (kind "r"/"w", pa, size, initiator)


class BusError(Exception):
    """An access reached an address with no memory behind it."""

    def __init__(self, pa: int, size: int, write: bool):
        super().__init__(f"bus error: {'write' if write else 'read'} of {size} B at {pa:#x}")
        self.pa = pa
        self.size = size
        self.write = write


class PhysMem:
    """Sparse physical memory of `pa_bits` bits, backed page by page.

    A page is backed once it has an owner; its bytes exist only once written
    (unwritten pages read as zeros), so large regions cost nothing until used.
    `checkpoint()` starts a journal of every page changed from then on and
    `rollback()` restores them: a fuzzer resets memory in time proportional
    to what one run touched."""

    def __init__(self, pa_bits: int = 48):
        self.pa_bits = pa_bits
        self._pages: dict[int, bytearray] = {}  # pfn -> data, for pages ever written
        self._owner: dict[int, Owner] = {}  # pfn -> owner, for every backed page
        self._held: dict[Owner, set[int]] = {}  # owner -> its pfns: the inverse of _owner
        self._journal: dict[int, tuple[bytes | None, Owner | None]] | None = None
        self.observers: list[Observer] = []

    # -- journal -----------------------------------------------------------
    def checkpoint(self) -> None:
        """Remember the current contents; `rollback()` returns to them."""
        self._journal = {}

    def rollback(self) -> None:
        for pfn, (data, owner) in self._journal.items():
            if data is None:
                self._pages.pop(pfn, None)
            else:
                self._pages[pfn] = bytearray(data)
            self._own(pfn, owner)
        self._journal = {}

    def _save(self, pfn: int) -> None:
        if self._journal is not None and pfn not in self._journal:
            page = self._pages.get(pfn)
            self._journal[pfn] = (bytes(page) if page is not None else None,
                                  self._owner.get(pfn))

    # -- ownership -----------------------------------------------------
    def add(self, pa: int, size: int, owner: Owner = FREE) -> None:
        """Back [pa, pa+size) with zeroed pages owned by `owner`."""
        if pa & PAGE_MASK or size & PAGE_MASK or size <= 0:
            raise ValueError(f"memory region {pa:#x}+{size:#x} is not page aligned")
        if pa + size > 1 << self.pa_bits:
            raise ValueError(f"memory region {pa:#x}+{size:#x} beyond {self.pa_bits}-bit PA space")
        for pfn in range(pa >> PAGE_SHIFT, (pa + size) >> PAGE_SHIFT):
            self._save(pfn)
            self._pages.pop(pfn, None)  # fresh: no data survives re-adding
            self._own(pfn, owner)

    def remove(self, pa: int, size: int) -> None:
        """Unback pages: later accesses are bus errors."""
        for pfn in range(pa >> PAGE_SHIFT, (pa + size + PAGE_MASK) >> PAGE_SHIFT):
            self._save(pfn)
            self._pages.pop(pfn, None)
            self._own(pfn, None)

    def set_owner(self, pa: int, size: int, owner: Owner, *, scrub: bool = True) -> None:
        """Hand backed pages to `owner`, zeroing them unless told not to."""
        pfns = range(pa >> PAGE_SHIFT, (pa + size + PAGE_MASK) >> PAGE_SHIFT)
        for pfn in pfns:  # all or nothing
            if pfn not in self._owner:
                raise ValueError(f"page {pfn << PAGE_SHIFT:#x} is not backed")
        for pfn in pfns:
            self._save(pfn)
            self._own(pfn, owner)
            if scrub:
                self._pages.pop(pfn, None)

    def _own(self, pfn: int, owner: Owner | None) -> None:
        """Give page `pfn` to `owner` (None: unback it), keeping both maps in step."""
        old = self._owner.get(pfn)
        if old is not None:
            self._held[old].discard(pfn)
        if owner is None:
            self._owner.pop(pfn, None)
        else:
            self._owner[pfn] = owner
            self._held.setdefault(owner, set()).add(pfn)

    def owner(self, pa: int) -> Owner | None:
        """Owner of the page holding `pa`; None when nothing backs it."""
        return self._owner.get(pa >> PAGE_SHIFT)

    def pages_of(self, owner: Owner) -> list[int]:
        """Base addresses of the pages `owner` holds, ascending."""
        return sorted(pfn << PAGE_SHIFT for pfn in self._held.get(owner, ()))

    def is_backed(self, pa: int) -> bool:
        return (pa >> PAGE_SHIFT) in self._owner

    # -- access ----------------------------------------------------------
    def read(self, pa: int, size: int, initiator: object = None) -> bytes:
        data = self.peek(pa, size)  # a bus error first: observers see accesses that happen
        self._notify("r", pa, size, initiator)
        return data

    def peek(self, pa: int, size: int) -> bytes:
        """What `read` returns, without being an access: no observer sees it.  For
        checkers that inspect the state, which no hardware or software would do."""
        pieces = []
        for pfn, off, n in self._chunks(pa, size, write=False):
            page = self._pages.get(pfn)
            pieces.append(page[off : off + n] if page is not None else bytes(n))
        return b"".join(pieces)

    def write(self, pa: int, data: bytes, initiator: object = None) -> None:
        chunks = self._chunks(pa, len(data), write=True)
        self._notify("w", pa, len(data), initiator)
        pos = 0
        for pfn, off, n in chunks:
            self._save(pfn)
            page = self._pages.get(pfn)
            if page is None:
                page = self._pages[pfn] = bytearray(PAGE_SIZE)
            page[off : off + n] = data[pos : pos + n]
            pos += n

    def read_int(self, pa: int, size: int, initiator: object = None) -> int:
        """A little-endian integer of `size` bytes (descriptors, commands)."""
        return int.from_bytes(self.read(pa, size, initiator), "little")

    def write_int(self, pa: int, value: int, size: int, initiator: object = None) -> None:
        self.write(pa, value.to_bytes(size, "little"), initiator)

    def _notify(self, kind: str, pa: int, size: int, initiator: object) -> None:
        for observe in self.observers:
            observe(kind, pa, size, initiator)

    def _chunks(self, pa: int, size: int, write: bool) -> list[tuple[int, int, int]]:
        """(pfn, offset, length) pieces; checks every page before any is touched."""
        pfn, off = pa >> PAGE_SHIFT, pa & PAGE_MASK
        if 0 < size <= PAGE_SIZE - off and pfn in self._owner:  # most accesses: one page
            return [(pfn, off, size)]
        if pa < 0 or size < 0 or pa + size > 1 << self.pa_bits:
            raise BusError(pa, size, write)
        pieces = []
        end = pa + size
        while pa < end:
            pfn = pa >> PAGE_SHIFT
            if pfn not in self._owner:
                raise BusError(pa, size, write)
            off = pa & PAGE_MASK
            n = min(PAGE_SIZE - off, end - pa)
            pieces.append((pfn, off, n))
            pa += n
        return pieces
