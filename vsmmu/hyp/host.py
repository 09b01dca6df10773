"""What the hypervisor owns and lends to its virtual IOMMUs.

The address maps it gives every guest and itself, the physical SMMUs with their
drivers, VMIDs, and each guest's memory: its stage 2 and the pages behind it.
The vSMMU and the virtio-iommu backend are written against these records and
the `Host` protocol, not against the hypervisor that creates them, so the arrows
run one way: hypervisor -> virtual IOMMUs -> host records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..hw.memory import PAGE_SIZE, PhysMem
from ..hw.smmu import Smmu
from ..platform import GuestSpec
from ..sw.driver import SmmuDriver
from ..sw.pagetable import IpaView, PageTable

IPA_BITS = 40  # each guest's IPA space; the vSMMU advertises it as its OAS
# The physical SMMUs work in model time: commands are consumed on ticks, this many
# a tick, never on the doorbell, so a command takes effect only when consumed and
# a CMD_SYNC completes only when the SMMU reaches it (the hypervisor's syncs wait
# for that; whatever frees a page before its sync is caught).
PHYS_CMDS_PER_TICK = 16
GUEST_RAM = 0x4000_0000  # IPA of guest RAM
# A guest's reserved IOVA == IPA window for its doorbell unless its platform moves it
# (GuestSpec.sw_msi_start / sw_msi_size_mib); the doorbell is its first page.
MSI_WINDOW = GuestSpec("default").msi_window
# The hypervisor's own memory (stream tables, queues, stage-2 tables) sits at the
# physical addresses equal to the IPAs of guest RAM: an IPA used as a PA by
# mistake (a stage 2 skipped, a guest pointer taken as physical) then lands on
# the hypervisor's tables, which every invariant guards, instead of on unbacked
# memory where nothing could see it.  With the pool elsewhere (0x1000_0000) the
# CD fetch that skips stage 2 (fuzz/bench/plants.py) was found by 2 of 3 seeds
# in 34-52 s; here by 3 of 3 in 1.3 s.
HYP_POOL = (GUEST_RAM, 0x200_0000)
# The most of that pool the tables of one guest's virtio-iommu domains may take
# (bounded-host-memory): 64 domains' roots and MSI pages take 1 MiB, the rest is
# room for about 256 scattered 2 MiB regions of mappings, or dense ones by the
# thousand.  Past it, MAP and new domains are NOMEM for that guest alone.
VIRTIO_TABLE_BYTES = 2 << 20
RAM_POOL = 0x1_0000_0000  # guest RAM is carved from here, above 4 GiB
MAX_VMID = 1 << 16


class VmidPool:
    """Free VMIDs 1..MAX_VMID-1 (0 is never a guest's): never-used ones in order,
    retired ones reused first.  `vmid in pool` asks whether it is free."""

    def __init__(self):
        self._next = 1
        self._retired: list[int] = []

    def take(self) -> int:
        if self._retired:
            return self._retired.pop()
        if self._next >= MAX_VMID:
            raise RuntimeError("no free VMID")
        self._next += 1
        return self._next - 1

    def give(self, vmid: int) -> None:
        self._retired.append(vmid)

    def __contains__(self, vmid: int) -> bool:
        return vmid >= self._next or vmid in self._retired


@dataclass
class PhysicalSmmu:
    name: str
    smmu: Smmu
    drv: SmmuDriver
    owners: dict[int, tuple[str, int]] = field(default_factory=dict)  # pSID -> (guest, vSID)


@dataclass
class GuestMemory:
    """A guest as its memory: what the hypervisor's virtual IOMMUs may read of it."""

    name: str
    vmid: int
    s2: PageTable
    view: IpaView
    s2_ste: int  # the stage-2-only STE of this guest's streams
    doorbell: int  # PA of its MSI doorbell page
    ram: int  # bytes of RAM at GUEST_RAM
    msi_window: tuple[int, int] = MSI_WINDOW  # (IPA, bytes); its doorbell at the start
    pages: dict[int, int] = field(default_factory=dict)  # IPA page -> PA page
    ipas: dict[int, int] = field(default_factory=dict)  # PA page -> IPA page (reverse)
    s2_generation: int = 0  # bumped by every stage-2 change (for checks that cache)

    def add_page(self, ipa: int, pa: int) -> None:
        self.add_pages(ipa, [pa])

    def add_pages(self, ipa: int, pas: list[int]) -> None:
        """Map the pages from `ipa` on, the i-th to pas[i]: all of them, or none."""
        self.s2.map_pages(ipa, pas, exec=False)
        for i, pa in enumerate(pas):
            self.pages[ipa + i * PAGE_SIZE], self.ipas[pa] = pa, ipa + i * PAGE_SIZE
        self.s2_generation += 1

    def drop_page(self, ipa: int) -> int | None:
        """Forget a page's bookkeeping (the caller unmaps and invalidates)."""
        pa = self.pages.pop(ipa, None)
        if pa is not None:
            del self.ipas[pa]
            self.s2_generation += 1
        return pa

    def ipa_of(self, pa: int) -> int | None:
        """Reverse stage 2: the IPA at which this guest sees `pa` (None: not its page)."""
        ipa = self.ipas.get(pa & ~(PAGE_SIZE - 1))
        return None if ipa is None else ipa + (pa & (PAGE_SIZE - 1))


class Host(Protocol):
    """What a virtual IOMMU's backend may use of the hypervisor: its memory, the
    physical SMMUs, and VMIDs (tables come from the guest's quota of the pool)."""

    mem: PhysMem
    smmus: dict[str, PhysicalSmmu]

    def take_vmid(self) -> int: ...

    def give_vmid(self, vmid: int) -> None:
        """Retire a VMID: the caller has invalidated everything tagged with it."""
