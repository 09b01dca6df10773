"""The SMMU's caches: an IOTLB and a configuration cache, both bounded.

IOTLB entries are tagged like an SMMU's: (VMID, ASID) for stage-1 and nested
(combined) translations, VMID alone for stage-2-only ones.  An entry covers
one block or page.  Invalidation follows the commands' scopes; where the
architecture allows either, an entry is *kept* (stale) rather than dropped,
so that software (the vSMMU under test) that forgets an invalidation is
caught rather than rescued by a generous model:
  * TLBI_S2_IPA drops stage-2-only entries, not combined stage-1+2 ones
    (software must follow it with TLBI_NH_ALL / S12_VMALL, as Linux does);
  * a TTL hint restricts the invalidation to entries of that level.
Capacity overflow evicts the oldest entry (FIFO), which is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .walk import Perm

S2_ONLY = -1  # ASID tag of stage-2-only entries


@dataclass(frozen=True, slots=True)
class TlbEntry:
    vmid: int
    asid: int  # S2_ONLY for stage-2-only entries
    in_base: int
    size: int
    out_base: int
    level: int
    s1_perm: Perm | None  # None when stage 1 did not apply
    s2_perm: Perm | None  # None when stage 2 did not apply
    ipa_base: int | None = None  # nested: where the block sits in the IPA space

    def covers(self, addr: int) -> bool:
        return self.in_base <= addr < self.in_base + self.size

    def overlaps(self, start: int, length: int) -> bool:
        return self.in_base < start + length and start < self.in_base + self.size

    def output(self, addr: int) -> int:
        return self.out_base + (addr - self.in_base)

    @property
    def perm(self) -> Perm:
        """What the whole translation permits: both stages' permissions."""
        if self.s1_perm is None or self.s2_perm is None:
            return self.s1_perm or self.s2_perm
        return self.s1_perm.intersect(self.s2_perm)


class Iotlb:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: dict[tuple[int, int, int, int], TlbEntry] = {}  # (vmid, asid, size, base)
        self._sizes: set[int] = set()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[TlbEntry]:
        return list(self._entries.values())

    def lookup(self, vmid: int, asid: int, addr: int) -> list[TlbEntry]:
        """Every entry of this context covering `addr` (more than one with
        different outputs is a TLB conflict; the caller decides)."""
        found = []
        for size in self._sizes:
            e = self._entries.get((vmid, asid, size, addr & ~(size - 1)))
            if e is not None:
                found.append(e)
        if found:
            self.hits += 1
        else:
            self.misses += 1
        return found

    def insert(self, entry: TlbEntry) -> None:
        key = (entry.vmid, entry.asid, entry.size, entry.in_base)
        if key not in self._entries and len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = entry
        self._sizes.add(entry.size)

    def invalidate(self, pred) -> int:
        """Drop every entry `pred` accepts; returns how many."""
        doomed = [k for k, e in self._entries.items() if pred(e)]
        for k in doomed:
            del self._entries[k]
        if not self._entries:
            self._sizes.clear()
        return len(doomed)

    # The command scopes, named after the commands that use them.
    def nh_all(self, vmid: int) -> int:
        return self.invalidate(lambda e: e.vmid == vmid and e.asid != S2_ONLY)

    def nh_asid(self, vmid: int, asid: int) -> int:
        return self.invalidate(lambda e: e.vmid == vmid and e.asid == asid)

    def nh_va(self, vmid: int, asid: int | None, start: int, length: int, level: int | None) -> int:
        """NH_VA (asid given) / NH_VAA (asid None) over [start, start+length)."""
        return self.invalidate(
            lambda e: e.vmid == vmid
            and e.asid != S2_ONLY
            and (asid is None or e.asid == asid)
            and (level is None or e.level == level)
            and e.overlaps(start, length)
        )

    def s2_ipa(self, vmid: int, start: int, length: int, level: int | None) -> int:
        return self.invalidate(
            lambda e: e.vmid == vmid
            and e.asid == S2_ONLY
            and (level is None or e.level == level)
            and e.overlaps(start, length)
        )

    def s12_vmall(self, vmid: int) -> int:
        return self.invalidate(lambda e: e.vmid == vmid)

    def all(self) -> int:
        return self.invalidate(lambda e: True)


class ConfigCache:
    """Decoded STEs by StreamID and CDs by (StreamID, SubstreamID), bounded."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._ste: dict[int, object] = {}
        self._cd: dict[tuple[int, int], object] = {}

    def __len__(self) -> int:
        return len(self._ste) + len(self._cd)

    def _make_room(self, table: dict) -> None:
        if len(self) >= self.capacity:
            victim = self._cd if self._cd else self._ste
            del victim[next(iter(victim))]

    def get_ste(self, sid: int):
        return self._ste.get(sid)

    def put_ste(self, sid: int, cfg) -> None:
        if sid not in self._ste:
            self._make_room(self._ste)
        self._ste[sid] = cfg

    def get_cd(self, sid: int, ssid: int):
        return self._cd.get((sid, ssid))

    def put_cd(self, sid: int, ssid: int, cfg) -> None:
        if (sid, ssid) not in self._cd:
            self._make_room(self._cd)
        self._cd[(sid, ssid)] = cfg

    def cds(self) -> dict[tuple[int, int], object]:
        return dict(self._cd)

    def stes(self) -> dict[int, object]:
        return dict(self._ste)

    def inv_ste(self, first: int, count: int) -> None:
        """CFGI_STE(_RANGE): the STEs and, with them, the CDs reached through them."""
        for sid in [s for s in self._ste if first <= s < first + count]:
            del self._ste[sid]
        for key in [k for k in self._cd if first <= k[0] < first + count]:
            del self._cd[key]

    def inv_cd(self, sid: int, ssid: int | None) -> None:
        """CFGI_CD (one substream) or CFGI_CD_ALL (ssid None)."""
        for key in [k for k in self._cd if k[0] == sid and (ssid is None or k[1] == ssid)]:
            del self._cd[key]

    def clear(self) -> None:
        self._ste.clear()
        self._cd.clear()
