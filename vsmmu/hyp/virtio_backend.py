"""The hypervisor's side of a guest's virtio-iommu: its mappings, on the physical SMMU.

The device (vsmmu/hyp/virtio_iommu.py) validates requests and keeps the guest's
view; this backend mirrors its decisions into structures the hypervisor owns:

* a translating domain is a stage-2 table in the hypervisor's pool, with a
  VMID of its own, mapping IOVA -> PA: the guest's IOVA -> GPA composed with
  the hypervisor's GPA -> PA memory map, page by page.  A GPA the guest does
  not own (not backed in its stage 2) fails the whole MAP with FAULT; the MSI
  window (the endpoints' reserved MSI region) maps the guest's doorbell;
* an endpoint's physical STE is stage 2 only: that domain's table and VMID, or
  the guest's own stage 2 (bypass: IOVA = GPA), or abort;
* UNMAP removes the leaves and invalidates the domain's VMID range before the
  request completes (TLBI_S2_IPA + CMD_SYNC; endpoints have no ATS, EATS=0);
* a freed domain's table (emptied, the MSI page kept) serves the next new
  domain, so a guest creating and freeing domains does not grow the table pool;
  and all the guest's tables come from its `quota` of the pool: its mappings,
  scattered or churned (tables are never given back), cannot take more, so a
  MAP or new domain past it is NOMEM for that guest alone (bounded-host-memory);
* when the hypervisor takes a page away from the guest (unmap, balloon), every
  composed mapping of it is removed and invalidated first (`gpa_gone`): the
  guest's view keeps the mapping, its DMA then faults.

Every composition bug here is a potential cross-guest leak, which is why the
invariant monitor checks the composed tables exactly as it checks a guest's
stage 2 (s2-containment, tlb-containment), checks that each endpoint's STE is
what the device state says (s2-authority), and that an UNMAP, once complete,
leaves nothing reachable (unmap-completion).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..arch.virtio_layouts import MAP_F_READ, MAP_F_WRITE
from ..hw.memory import PAGE_SIZE
from ..sw.alloc import OutOfMemory, Quota
from ..sw.driver import ste_abort, ste_s2
from ..sw.pagetable import MappingError, PageTable
from .host import GuestMemory, Host
from .virtio_iommu import BackendError, BackendFault, BackendNoMem, VirtioIommu


@dataclass
class ComposedDomain:
    """A translating virtio-iommu domain as the SMMU sees it."""

    id: int
    vmid: int
    table: PageTable  # stage 2, IOVA -> PA, in the hypervisor's pool
    ste: int  # the physical STE of its endpoints
    iovas: dict[int, int] = field(default_factory=dict)  # IOVA page -> GPA page
    generation: int = 0  # bumped by every change (for checks that cache)


@dataclass(frozen=True)
class Unmapped:
    """An UNMAP the backend completed: nothing of [iova, iova+size) may stay reachable."""

    domain: int
    vmid: int
    iova: int
    size: int


class VirtioBackend:
    def __init__(self, hyp: Host, guest: GuestMemory, ipa_bits: int, quota: Quota):
        self.hyp, self.guest, self.ipa_bits, self.quota = hyp, guest, ipa_bits, quota
        self.domains: dict[int, ComposedDomain] = {}
        self.gpas: dict[int, set[tuple[int, int]]] = defaultdict(set)  # GPA page -> mappings
        self.unmapped: list[Unmapped] = []  # completed since the monitor last looked
        self._spare: list[PageTable] = []  # freed domains' tables, emptied, for reuse

    def tables(self) -> list[PageTable]:
        """Every table the hypervisor holds for this guest: its domains' and spares."""
        return [d.table for d in self.domains.values()] + self._spare

    # -------------------------------------------------------------- streams
    def _streams(self, endpoint: int):
        """(physical SMMU, pSID) of the device the guest sees as `endpoint`."""
        for phys in self.hyp.smmus.values():
            for psid, owner in phys.owners.items():
                if owner == (self.guest.name, endpoint):
                    yield phys, psid

    def _install(self, endpoint: int, ste: int) -> None:
        for phys, psid in self._streams(endpoint):
            phys.drv.write_ste(psid, ste)

    def attach(self, endpoint: int, domain: int, bypass: bool) -> None:
        if bypass:
            self._install(endpoint, self.guest.s2_ste)
            return
        try:
            dom = self.domains.get(domain) or self._new_domain(domain)
        except OutOfMemory as e:
            raise BackendNoMem(str(e)) from None
        self._install(endpoint, dom.ste)

    def detach(self, endpoint: int, bypass: bool) -> None:
        self._install(endpoint, self.guest.s2_ste if bypass else ste_abort())

    def _new_domain(self, domain: int) -> ComposedDomain:

        if self._spare:
            table = self._spare.pop()
        else:
            table = PageTable(self.hyp.mem, self.quota, stage=2, granule=PAGE_SIZE,
                              tsz=64 - self.ipa_bits)
            table.map(self.guest.msi_window[0], self.guest.doorbell, PAGE_SIZE, exec=False)
        vmid = self.hyp.take_vmid()
        ste = ste_s2(vmid=vmid, ttb=table.ttb, t0sz=table.tsz, sl0=table.sl0, tg=PAGE_SIZE,
                     ps=self.ipa_bits, s2r=True)
        dom = self.domains[domain] = ComposedDomain(domain, vmid, table, ste)
        return dom

    def free_domain(self, domain: int) -> None:
        dom = self.domains.pop(domain, None)
        if dom is None:  # a bypass domain: nothing of ours
            return
        for iova in list(dom.iovas):
            self._forget(dom, iova)
            dom.table.unmap(iova, PAGE_SIZE)
        self._flush(lambda drv: drv.tlbi_vmall(dom.vmid))
        self.hyp.give_vmid(dom.vmid)  # retired: nothing cached is tagged with it now
        # The pool is never freed into: reusing the table bounds what domain churn costs.
        self._spare.append(dom.table)

    def expected_ste(self, device: VirtioIommu, endpoint: int) -> int:
        """The physical STE `endpoint` should have, by the device's state."""
        mode = device.dma_mode(endpoint)
        if mode == "translate":
            return self.domains[device.domain_of(endpoint)].ste
        return self.guest.s2_ste if mode == "bypass" else ste_abort()

    # ------------------------------------------------------------- mappings
    def map(self, domain: int, iova: int, size: int, phys: int, flags: int) -> None:
        dom = self.domains[domain]
        if size > len(self.guest.pages) * PAGE_SIZE:
            raise BackendFault("larger than the guest's memory")
        pas = [self.guest.pages.get(phys + off) for off in range(0, size, PAGE_SIZE)]
        if None in pas:
            raise BackendFault("not the guest's memory")
        if not flags & (MAP_F_READ | MAP_F_WRITE):
            return  # no access: nothing the SMMU needs to hold
        done = 0
        try:
            for pa in pas:
                dom.table.map(iova + done, pa, PAGE_SIZE, read=bool(flags & MAP_F_READ),
                              write=bool(flags & MAP_F_WRITE), exec=False)
                dom.iovas[iova + done] = phys + done
                self.gpas[phys + done].add((domain, iova + done))
                done += PAGE_SIZE
        except MappingError as e:  # beyond the table's input range, or the MSI page
            self._remove(dom, iova, done)
            raise BackendError(str(e)) from None
        except OutOfMemory as e:  # the guest's quota of tables: all of it, or nothing
            self._remove(dom, iova, done)
            raise BackendNoMem(str(e)) from None
        dom.generation += 1

    def unmap(self, domain: int, iova: int, size: int) -> None:
        dom = self.domains[domain]
        self._remove(dom, iova, size)
        self.unmapped.append(Unmapped(domain, dom.vmid, iova, size))

    def _remove(self, dom: ComposedDomain, iova: int, size: int) -> None:
        """Take [iova, iova+size) out of the table, then invalidate and sync."""
        for page in [p for p in dom.iovas if iova <= p < iova + size]:
            self._forget(dom, page)
        ranges = dom.table.unmap(iova, size) if size else []
        self._flush(lambda drv: [drv.tlbi_s2_ipa(start, length, vmid=dom.vmid)
                                 for start, length in ranges])
        dom.generation += 1

    def _forget(self, dom: ComposedDomain, iova: int) -> None:
        gpa = dom.iovas.pop(iova)
        self.gpas[gpa].discard((dom.id, iova))
        if not self.gpas[gpa]:
            del self.gpas[gpa]

    def gpa_gone(self, gpa: int) -> None:
        """The hypervisor takes a guest page away: no composed mapping may keep it."""
        for domain, iova in sorted(self.gpas.get(gpa, ())):
            self._remove(self.domains[domain], iova, PAGE_SIZE)

    def _flush(self, invalidate) -> None:
        """Invalidate on every SMMU (a domain's endpoints may sit behind any), then
        complete.  (Endpoints' STEs are stage 2 only, EATS=0: no ATC to clean.)"""
        for phys in self.hyp.smmus.values():
            invalidate(phys.drv)
            phys.drv.sync()
