"""A guest kernel's IOMMU stack: what Linux's arm-smmu-v3 driver does inside a VM.

It sees only its vSMMUs' registers (trapped MMIO) and its own IPA space.  One
`SmmuDriver` per vSMMU (probe, reset, stream table, queues, enable), stage-1
domains with their page tables and CDs, attach, DMA map/unmap with the
invalidations Linux issues, MSI window mapping, event reading.  Tests, seed
corpora and fuzz harnesses drive guests through it, so a "legal" guest here is
what a real one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hw.memory import PAGE_SIZE
from ..hyp.host import GUEST_RAM, IPA_BITS
from ..hyp.hypervisor import Hypervisor
from ..sw.alloc import Allocator
from ..sw.driver import EventBatch, SmmuDriver, cd, ste_abort, ste_bypass, ste_s1
from ..sw.pagetable import PageTable


@dataclass
class Domain:
    """A stage-1 translation context: one ASID, one page table, in guest memory."""

    asid: int
    table: PageTable
    tsz: int
    devices: list[str] = field(default_factory=list)


class GuestKernel:
    def __init__(self, hyp: Hypervisor, name: str, *, two_level: bool = False,
                 log2_sids: int = 8):
        self.hyp = hyp
        self.name = name
        self.guest = hyp.guests[name]
        self.alloc = Allocator(GUEST_RAM, self.guest.ram)
        self.drivers: dict[str, SmmuDriver] = {}
        for smmu_name, vsmmu in self.guest.vsmmus.items():
            drv = SmmuDriver(vsmmu, self.guest.view, self.alloc, poll=hyp.step)
            drv.reset(two_level=two_level, log2_sids=log2_sids, gbpa_abort=True)
            self.drivers[smmu_name] = drv
        self._next_asid = 1

    # ------------------------------------------------------------ devices
    def vsid(self, device: str) -> tuple[str, int]:
        """(its vSMMU's key in `drivers`, vSID) of a device assigned to this guest."""
        owner, vsid = self.hyp.assigned[device]
        if owner != self.name:
            raise ValueError(f"device {device!r} is not assigned to {self.name!r}")
        return self.guest.vsmmu_for(self.hyp.devices[device].smmu).key, vsid

    def domain(self, *, granule: int = PAGE_SIZE, tsz: int = 64 - IPA_BITS) -> Domain:
        table = PageTable(self.guest.view, self.alloc, stage=1, granule=granule, tsz=tsz)
        dom = Domain(self._next_asid, table, tsz)
        self._next_asid += 1
        return dom

    def attach(self, device: str, dom: Domain) -> None:
        smmu, vsid = self.vsid(device)
        drv = self.drivers[smmu]
        cds = drv.alloc_cd_table(vsid, 0)
        drv.write_cd(vsid, 0, cd(dom.asid, dom.table.ttb, dom.tsz, dom.table.granule,
                                 ips=IPA_BITS))
        drv.write_ste(vsid, ste_s1(cds.ptr))
        dom.devices.append(device)

    def set_bypass(self, device: str) -> None:
        smmu, vsid = self.vsid(device)
        self.drivers[smmu].write_ste(vsid, ste_bypass())

    def block(self, device: str) -> None:
        smmu, vsid = self.vsid(device)
        self.drivers[smmu].write_ste(vsid, ste_abort())

    # ---------------------------------------------------------------- DMA
    def buffer(self, size: int) -> int:
        """Guest memory (an IPA) for a DMA buffer."""
        return self.alloc.alloc(size, PAGE_SIZE)

    def dma_map(self, dom: Domain, iova: int, ipa: int, size: int, *, write: bool = True) -> None:
        dom.table.map(iova, ipa, size, write=write)

    def dma_unmap(self, dom: Domain, iova: int, size: int) -> None:
        """Unmap and invalidate on every vSMMU the domain's devices sit behind."""
        for start, length in dom.table.unmap(iova, size):
            for smmu in {self.vsid(d)[0] for d in dom.devices}:
                self.drivers[smmu].tlbi_va(start, length, asid=dom.asid,
                                           granule=dom.table.granule)

    def map_msi(self, dom: Domain) -> int:
        """Map the doorbell page of the hypervisor's reserved MSI window 1:1 (Linux's
        iommu-dma maps just the doorbell pages of its SW_MSI region); returns the
        IOVA a device writes to signal an MSI."""
        base = self.guest.msi_window[0]
        dom.table.map(base, base, PAGE_SIZE, write=True)
        return base

    # ------------------------------------------------------------- events
    def events(self, smmu: str) -> EventBatch:
        return self.drivers[smmu].events()
