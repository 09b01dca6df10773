"""The values worth choosing when fuzzing a platform.

`Hints`: occupied guest slots, vSIDs, ASIDs, VMIDs, IOVAs, and the IPAs of the
structures the vSMMUs and SMMUs read (CD tables, page tables, stream tables,
queues, DMA buffers), host PAs, and addresses by whose memory they are as PAs
(`aliases`, fuzz/crossings.py).  `hints_from(system)` reads them from a booted
system; the defaults describe the embedded fuzzing platform.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM, IPA_BITS, MSI_WINDOW
from vsmmu.hyp.virtio_iommu import VirtioIommu

from .crossings import aliases_of
from .runner import DMA_BUF, DMA_IOVA


@dataclass(frozen=True)
class Hints:
    """Values worth choosing, for the platform being fuzzed."""

    guests: tuple[int, ...] = (0, 1)  # occupied guest slots
    smmus: int = 2
    devices: int = 6
    vsids: tuple[int, ...] = (0, 1)
    asids: tuple[int, ...] = (1, 2, 3)
    vmids: tuple[int, ...] = (1, 2)
    iovas: tuple[int, ...] = (DMA_IOVA, MSI_WINDOW[0])
    ipas: tuple[int, ...] = (GUEST_RAM,)  # where the structures the SMMUs read live
    # Host physical addresses (guest RAM, stage-2 tables): a guest pointer holding
    # one finds the bugs that use an IPA as a PA.
    pas: tuple[int, ...] = ()
    pages: tuple[int, ...] = tuple(range(0x30))  # RAM page indexes (from GUEST_RAM)
    dma_pages: tuple[int, ...] = ()  # the pages behind the devices' DMA buffers
    # (device index, guest slot, RAM page index behind DMA_IOVA) per assigned device
    buffers: tuple[tuple[int, int, int], ...] = ()
    # virtio-iommu: (guest slot, domain, first IOVA, last IOVA) of each boot mapping
    mappings: tuple[tuple[int, int, int, int], ...] = ()
    # (group, address) by whose memory the address is as a PA: what the mutator
    # offers when it aims at a crossing not reached yet (fuzz/crossings.py)
    aliases: tuple[tuple[str, int], ...] = ()


def _guest_translate(hyp, device: str, dom, iova: int) -> int | None:
    """The guest address a device's boot domain maps `iova` to, as the guest set it."""
    if hasattr(dom, "table"):
        return dom.table.translate(iova)
    viommu = hyp.guests[hyp.assigned[device][0]].viommu
    for m in viommu.mappings(dom.id):
        if m.virt_start <= iova <= m.virt_end:
            return m.phys_start + iova - m.virt_start
    return None


def hints_from(system) -> Hints:
    """Hints for a booted `runner.System`: its guests, streams and the guest IPAs
    of every table, queue and DMA buffer the boot left behind."""
    hyp = system.hyp
    ipas: set[int] = set()
    dma_pages: set[int] = set()
    buffers = []
    devices = list(hyp.devices)
    for kernel in system.kernels.values():
        for drv in kernel.drivers.values():
            ipas |= {drv._strtab.base, drv._cmdq.base, drv._evtq.base}
            ipas |= {table.ptr for table in drv._cd_tables.values()}
    for device, dom in system.domains.items():
        if hasattr(dom, "table"):  # a stage-1 domain (a virtio-iommu one has no guest table)
            ipas.add(dom.table.ttb)
        for iova in range(DMA_IOVA, DMA_IOVA + DMA_BUF, PAGE_SIZE):
            buffer = _guest_translate(hyp, device, dom, iova)
            if buffer is not None:
                ipas.add(buffer)
                dma_pages.add((buffer - GUEST_RAM) // PAGE_SIZE)
        first = _guest_translate(hyp, device, dom, DMA_IOVA)
        guest = hyp.assigned.get(device, ("",))[0]
        if first is not None and guest[1:].isdigit():
            buffers.append((devices.index(device), int(guest[1:]),
                            (first - GUEST_RAM) // PAGE_SIZE))
    slots = tuple(sorted(int(g[1:]) for g in hyp.guests if g[1:].isdigit()))
    mappings = {(int(name[1:]), domain, m.virt_start, m.virt_end)
                for name, guest in hyp.guests.items()
                if name[1:].isdigit() and isinstance(guest.viommu, VirtioIommu)
                for domain in guest.viommu.domains for m in guest.viommu.mappings(domain)}
    return Hints(
        guests=slots or (0,),
        smmus=len(hyp.smmus),
        devices=len(hyp.devices),
        vsids=tuple(sorted({vsid for _, vsid in hyp.assigned.values()})) or (0,),
        asids=tuple(sorted({dom.asid for dom in system.domains.values()
                            if hasattr(dom, "asid")})) or (1,),
        vmids=tuple(sorted(g.vmid for g in hyp.guests.values())) or (1,),
        # (the pages either side of the boot buffers: a mapping next to an existing one,
        # a range over both) ... and past the guest's IPA space, where stage 2 must
        # fault: guest RAM's aliases there are what a walk that leaves the input
        # size unchecked would index past its start table with
        iovas=(DMA_IOVA, DMA_IOVA + DMA_BUF - PAGE_SIZE, DMA_IOVA - PAGE_SIZE,
               DMA_IOVA + DMA_BUF, MSI_WINDOW[0], 1 << IPA_BITS,
               *(k << IPA_BITS | GUEST_RAM for k in range(1, 8))),
        ipas=tuple(sorted(ipas)),
        pas=tuple(sorted({pa for g in hyp.guests.values()
                          for pa in (g.s2.ttb, *sorted(g.pages.values())[:1])})),
        pages=tuple(sorted({(ipa - GUEST_RAM) // PAGE_SIZE for ipa in ipas if ipa >= GUEST_RAM})),
        dma_pages=tuple(sorted(dma_pages)),
        buffers=tuple(sorted(buffers)),
        mappings=tuple(sorted(mappings)),
        aliases=aliases_of(hyp),
    )


