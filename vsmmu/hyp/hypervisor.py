"""The hypervisor: guests, their stage 2, device assignment, and their vSMMUs (one
per physical SMMU, or one for all of them: the design's placement).

It owns everything a guest must not: physical memory allocation and its
ownership map, VMIDs, stage-2 tables, the physical stream tables and command
queues.  Every change that could leave a stale translation behind is followed
by the invalidation that removes it before the page or device is reused:

* stage-2 unmap: TLBI_S2_IPA for the range, TLBI_NH_ALL for the VMID (cached
  stage-1+2 entries survive TLBI_S2_IPA), ATC_INV for the guest's ATS
  devices, CMD_SYNC, and only then is the page scrubbed and freed;
* deassignment: an abort STE (quarantine) with CFGI_STE + CMD_SYNC, ATC_INV;
* guest destruction: all of the above, then TLBI_S12_VMALL; the VMID is
  retired only after that completes on every SMMU.

A guest gets either vSMMUs or, with `viommu = "virtio"`,
one virtio-iommu device for all its endpoints (vsmmu/hyp/virtio_iommu.py), whose
mappings vsmmu/hyp/virtio_backend.py composes with the guest's stage 2 into
tables the hypervisor owns; a page taken from the guest leaves those first.

MSIs: each guest has a doorbell page; the guest is told its reserved IOVA
window (`Guest.msi_window`: `MSI_WINDOW` unless its platform entry moves it,
checked as iommufd's SW_MSI options are), whose first page its stage 1 maps 1:1
to the same IPA and stage 2 maps to that doorbell (the SW_MSI / RMR approach).  A device write
that lands on a doorbell is logged as an MSI with its StreamID.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..arch.faults import Fault
from ..arch.layouts import Op
from ..arch.virtio_layouts import Config as ViommuConfig
from ..arch.virtio_layouts import FaultReason, ResvRegion, ResvSubtype, ViommuFault
from ..hw.frontend import Initiator
from ..hw.memory import FREE, HYP, PAGE_SIZE, PhysMem
from ..hw.smmu import DmaResult, Smmu
from ..platform import DeviceSpec, GuestSpec, Platform, default_platform
from ..sw.alloc import Allocator, Quota
from ..sw.driver import SmmuDriver, cmd, ste_abort, ste_s2
from ..sw.pagetable import IpaView, MappingError, PageTable
from .capacity import check_bootable
from .designs import profile
from .host import (
    GUEST_RAM,
    HYP_POOL,
    IPA_BITS,
    PHYS_CMDS_PER_TICK,
    RAM_POOL,
    VIRTIO_TABLE_BYTES,
    GuestMemory,
    PhysicalSmmu,
    VmidPool,
)
from .virtio_backend import VirtioBackend
from .virtio_iommu import VirtioIommu
from .virtual import VSmmu

VIRTIO_DOMAINS = 64  # per guest: a guest cannot make the hypervisor's tables grow unbounded
VIRTIO_MAPPINGS = 4096  # per guest, all domains together
# Faults a virtio-iommu endpoint's DMA gets from its STE rather than from a mapping.
_DOMAIN_FAULTS = frozenset({"C_BAD_STE", "F_STREAM_DISABLED", "F_TRANS_FORBIDDEN",
                            "F_BAD_ATS_TREQ", "F_UUT"})


def doorbell_owner(guest: str) -> tuple[str, str]:
    return ("msi", guest)


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent (start, length) ranges joined: one range invalidation, not one per page."""
    out: list[list[int]] = []
    for start, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == start:
            out[-1][1] += length
        else:
            out.append([start, length])
    return [(s, n) for s, n in out]


@dataclass
class Guest(GuestMemory):
    """A guest with its virtual IOMMUs: vSMMUs, or a virtio-iommu."""

    vsmmus: dict[str, VSmmu] = field(default_factory=dict)  # by VSmmu.key
    viommu: VirtioIommu | None = None  # instead of vSMMUs

    def vsmmu_for(self, smmu: str) -> VSmmu | None:
        """The vSMMU that serves a physical SMMU (None: a guest without vSMMUs)."""
        return next((v for v in self.vsmmus.values() if smmu in v.smmus), None)

    def stage2s(self) -> list[tuple[PageTable, int, int]]:
        """(table, VMID, stage-2 STE) of each stage 2 that translates for this guest:
        its own, and those the hypervisor composed for its virtio-iommu domains."""
        out = [(self.s2, self.vmid, self.s2_ste)]
        if self.viommu is not None:
            out += [(d.table, d.vmid, d.ste) for d in self.viommu.backend.domains.values()]
        return out


@dataclass(frozen=True)
class Msi:
    doorbell_of: str  # the guest whose doorbell was written
    smmu: str
    sid: int  # the physical StreamID that wrote it (the device ID)


def host_topology(p: Platform) -> Platform:
    """pKVM's world on a platform: its first guest is the untrusted host and owns every
    device, each at vSID == pSID (the host drives physical StreamIDs); the other
    guests are protected VMs with no device."""
    if not p.guests:
        return p
    host = p.guests[0].name
    return replace(p, devices=tuple(replace(d, guest=host, vsid=d.sid) for d in p.devices))


class Hypervisor:
    def __init__(self, platform: Platform | None = None):
        self.platform = platform or default_platform()
        check_bootable(self.platform)
        self.design = profile(self.platform.design).design
        if self.design.topology == "host":
            self.platform = host_topology(self.platform)
        self.mem = PhysMem(48)
        self.mem.add(*HYP_POOL, HYP)
        self.hyp_alloc = Allocator(*HYP_POOL)
        self._free_pages: list[int] = []
        self._next_ram = RAM_POOL
        self._free_vmids = VmidPool()
        self.smmus: dict[str, PhysicalSmmu] = {}
        self.guests: dict[str, Guest] = {}
        self.devices: dict[str, DeviceSpec] = {d.name: d for d in self.platform.devices}
        self.assigned: dict[str, tuple[str, int]] = {}  # device -> (guest, vSID)
        self.msis: list[Msi] = []
        self.unrouted: list[Fault] = []  # physical events of streams no guest owns
        self.mem.observers.append(self._observe)
        # Watch every guest's IPA port (`IpaView.observers`), guests made later too.
        self.view_observers: list = []
        for spec in self.platform.smmus:
            smmu = Smmu(self.mem, spec.features, spec.name)
            smmu.cmdq_on_doorbell, smmu.cmdq_budget = False, PHYS_CMDS_PER_TICK
            drv = SmmuDriver(smmu, self.mem, self.hyp_alloc, poll=smmu.tick)
            drv.reset(two_level=spec.features.st_2lvl and spec.features.sidsize > 8)
            self.smmus[spec.name] = PhysicalSmmu(spec.name, smmu, drv)
        for g in self.platform.guests:
            self.create_guest(g)
        for d in self.platform.devices:
            if d.guest is not None:
                # A virtio-iommu's endpoint IDs, and the vSIDs of a vSMMU for all
                # SMMUs, span SMMUs: numbered in assignment order.
                spanning = (self.guests[d.guest].viommu is not None
                            or self.design.placement == "single")
                self.assign(d.name, d.guest, None if spanning else d.vsid)

    # ------------------------------------------------------------ memory
    def _page(self, owner) -> int:
        """A scrubbed physical page for `owner`."""
        if self._free_pages:
            pa = self._free_pages.pop()
            self.mem.set_owner(pa, PAGE_SIZE, owner)
        else:
            pa = self._next_ram
            self._next_ram += PAGE_SIZE
            self.mem.add(pa, PAGE_SIZE, owner)
        return pa

    def _release(self, pa: int) -> None:
        self.mem.set_owner(pa, PAGE_SIZE, FREE)  # scrubbed on the way out
        self._free_pages.append(pa)

    def _observe(self, kind: str, pa: int, size: int, initiator: object) -> None:
        if kind != "w" or not isinstance(initiator, Initiator) or initiator.purpose != "dma":
            return
        owner = self.mem.owner(pa)
        if isinstance(owner, tuple) and owner[0] == "msi":
            self.msis.append(Msi(owner[1], initiator.smmu, initiator.sid))

    # ------------------------------------------------------------ guests
    def create_guest(self, spec: GuestSpec) -> Guest:
        if spec.name in self.guests:
            raise ValueError(f"guest {spec.name!r} exists")
        vmid = self._free_vmids.take()
        s2 = PageTable(self.mem, self.hyp_alloc, stage=2, granule=PAGE_SIZE, tsz=64 - IPA_BITS)
        doorbell = self._page(doorbell_owner(spec.name))
        s2.map(spec.msi_window[0], doorbell, PAGE_SIZE, exec=False)
        s2_ste = ste_s2(vmid=vmid, ttb=s2.ttb, t0sz=s2.tsz, sl0=s2.sl0, tg=PAGE_SIZE,
                        ps=IPA_BITS, s2r=True)
        view = IpaView(self.mem, s2, self.view_observers)
        guest = Guest(spec.name, vmid, s2, view, s2_ste, doorbell, spec.ram_mib << 20,
                      spec.msi_window)
        self.guests[spec.name] = guest
        self.map(spec.name, GUEST_RAM, guest.ram)
        if spec.viommu == "virtio":
            config = ViommuConfig(page_size_mask=PAGE_SIZE, input_range=(0, (1 << IPA_BITS) - 1),
                                  domain_range=(0, VIRTIO_DOMAINS - 1))
            backend = VirtioBackend(self, guest, IPA_BITS,
                                    Quota(self.hyp_alloc, VIRTIO_TABLE_BYTES))
            guest.viommu = VirtioIommu({}, backend, config=config, max_mappings=VIRTIO_MAPPINGS,
                                       max_domains=VIRTIO_DOMAINS)
            return guest
        if self.design.topology == "host" and spec.name != self.platform.guests[0].name:
            return guest  # a protected VM: no SMMU interface at all
        if self.design.placement == "single":
            vsmmu = VSmmu(guest, list(self.smmus.values()), IPA_BITS, self.design, "vsmmu")
            guest.vsmmus[vsmmu.key] = vsmmu
            return guest
        for name, phys in self.smmus.items():
            guest.vsmmus[name] = VSmmu(guest, [phys], IPA_BITS, self.design)
        return guest

    def take_vmid(self) -> int:
        return self._free_vmids.take()

    def give_vmid(self, vmid: int) -> None:
        """Retire a VMID: the caller has invalidated everything tagged with it."""
        self._free_vmids.give(vmid)

    def destroy_guest(self, name: str) -> None:
        guest = self.guests[name]
        if guest.viommu is not None:
            guest.viommu.system_reset()  # frees its domains (and their VMIDs)
        for dev, (owner, _) in list(self.assigned.items()):
            if owner == name:
                self.deassign(dev)
        self.unmap(name, GUEST_RAM, guest.ram)
        # Pages it holds outside its RAM range (ballooned in by reassign_page, or map()
        # elsewhere) are its too: without this they stay owned by the dead guest's name,
        # unscrubbed, and a new guest of that name would inherit them.
        for ipa in sorted(guest.pages):
            self.unmap(name, ipa, PAGE_SIZE)
        for phys in self.smmus.values():
            phys.drv.submit(cmd(Op.TLBI_S12_VMALL, VMID=guest.vmid))
            phys.drv.sync()
        self._release(guest.doorbell)
        del self.guests[name]
        self._free_vmids.give(guest.vmid)  # retired: no SMMU caches anything tagged with it

    # ----------------------------------------------------------- stage 2
    def map(self, guest_name: str, ipa: int, size: int) -> None:
        """Back [ipa, ipa+size) of a guest with fresh pages: all of it, or nothing."""
        guest = self.guests[guest_name]
        pas = [self._page(guest_name) for _ in range(0, size, PAGE_SIZE)]
        try:
            guest.add_pages(ipa, pas)
        except MappingError:
            # Already mapped (a backed page, the MSI window) or outside the IPA space:
            # the pages go back to the free list rather than stay owned and unmapped.
            for pa in reversed(pas):
                self._release(pa)
            raise

    def unmap(self, guest_name: str, ipa: int, size: int) -> list[int]:
        """Take pages away from a guest; returns their PAs, already free and scrubbed."""
        guest = self.guests[guest_name]
        self._leaving(guest, [ipa + off for off in range(0, size, PAGE_SIZE)])
        ranges = guest.s2.unmap(ipa, size)
        self._invalidate_s2(guest, ranges)
        freed = []
        for off in range(0, size, PAGE_SIZE):
            pa = guest.drop_page(ipa + off)
            if pa is not None:
                self._release(pa)
                freed.append(pa)
        return freed

    def reassign_page(self, src: str, ipa: int, dst: str, dst_ipa: int) -> int:
        """Balloon one page from `src` to `dst` (scrubbed in between); returns its PA."""
        source, target = self.guests[src], self.guests[dst]
        if dst_ipa in target.pages:
            raise ValueError(f"IPA {dst_ipa:#x} of {dst!r} is already backed")
        # Whatever would make add_page fail is checked before the page leaves src: after
        # the unmap it would be lost (owned by dst, mapped nowhere, never freed).
        if (dst_ipa % PAGE_SIZE or not 0 <= dst_ipa < 1 << IPA_BITS
                or target.view.pa_of(dst_ipa) is not None):
            raise ValueError(f"IPA {dst_ipa:#x} of {dst!r} cannot take a page")
        if ipa not in source.pages:
            raise ValueError(f"IPA {ipa:#x} of {src!r} is not backed")
        self._leaving(source, [ipa])
        pa = source.drop_page(ipa)
        self._invalidate_s2(source, source.s2.unmap(ipa, PAGE_SIZE))
        self.mem.set_owner(pa, PAGE_SIZE, dst)  # scrubs
        target.add_page(dst_ipa, pa)
        return pa

    @staticmethod
    def _leaving(guest: Guest, ipas: list[int]) -> None:
        """Pages about to leave a guest leave its virtio-iommu mappings first."""
        if guest.viommu is not None:
            backend = guest.viommu.backend
            for ipa in ipas:
                backend.gpa_gone(ipa)

    def _invalidate_s2(self, guest: Guest, ranges: list[tuple[int, int]]) -> None:
        ranges = _coalesce(ranges)
        for phys in self.smmus.values():
            for start, length in ranges:
                phys.drv.tlbi_s2_ipa(start, length, vmid=guest.vmid)
            phys.drv.tlbi_nh_all(guest.vmid)  # combined stage-1+2 entries too
            vsmmu = guest.vsmmu_for(phys.name)
            for psid, (owner, vsid) in phys.owners.items():
                if owner == guest.name and vsmmu is not None and vsid in vsmmu.ats_vsids:
                    phys.drv.submit(cmd(Op.ATC_INV, SID=psid, GLOBAL=1, SIZE=52))
            phys.drv.sync()

    # ----------------------------------------------------------- devices
    def assign(self, device: str, guest_name: str, vsid: int | None = None) -> int:
        """Give a device to a guest as vSID `vsid` on its SMMU's vSMMU (or as that
        endpoint ID on its virtio-iommu); returns the vSID (endpoint ID)."""
        spec = self.devices[device]
        if device in self.assigned:
            raise ValueError(f"device {device!r} is assigned to {self.assigned[device][0]!r}")
        guest = self.guests[guest_name]
        if guest.viommu is not None:
            taken = {ep for g, ep in self.assigned.values() if g == guest_name}
            if vsid is None:
                vsid = next(v for v in range(1 << 16) if v not in taken)
            elif vsid in taken:
                raise ValueError(f"endpoint {vsid:#x} is taken on {guest_name}'s virtio-iommu")
            self.smmus[spec.smmu].owners[spec.sid] = (guest_name, vsid)
            self.assigned[device] = (guest_name, vsid)
            start, size = guest.msi_window
            guest.viommu.add_endpoint(vsid, [ResvRegion(start, start + size - 1,
                                                        ResvSubtype.MSI)])
            return vsid
        if not self.takes_devices(guest_name):
            raise ValueError(f"{guest_name} has no IOMMU interface to take {device!r} on")
        vsmmu = guest.vsmmu_for(spec.smmu)
        if vsid is None and self.design.topology == "host":
            vsid = spec.sid  # the host drives physical StreamIDs
        if vsid is None:
            vsid = next(v for v in range(1 << 16) if v not in vsmmu.vsids)
        elif vsid in vsmmu.vsids:
            raise ValueError(f"vSID {vsid:#x} is taken on {vsmmu.name}")
        self.smmus[spec.smmu].owners[spec.sid] = (guest_name, vsid)
        self.assigned[device] = (guest_name, vsid)
        vsmmu.attach(vsid, self.smmus[spec.smmu], spec.sid, ats=spec.ats)
        return vsid

    def takes_devices(self, guest_name: str) -> bool:
        """Whether a device can be assigned to the guest: not to a protected VM of a
        host-topology design, which has no IOMMU interface."""
        guest = self.guests[guest_name]
        return guest.viommu is not None or bool(guest.vsmmus)

    def deassign(self, device: str) -> None:
        """Quarantine (the design's `park`): abort STE, config and ATC invalidation,
        sync — before the device can be handed to anyone else."""
        spec = self.devices[device]
        guest_name, vsid = self.assigned.pop(device)
        phys = self.smmus[spec.smmu]
        guest = self.guests[guest_name]
        if guest.viommu is not None:
            guest.viommu.remove_endpoint(vsid)
        else:
            guest.vsmmu_for(spec.smmu).detach(vsid)
        del phys.owners[spec.sid]
        if not self.design.park:
            return
        phys.drv.write_ste(spec.sid, ste_abort())
        if spec.ats:
            phys.drv.submit(cmd(Op.ATC_INV, SID=spec.sid, GLOBAL=1, SIZE=52))
            phys.drv.sync()

    # ------------------------------------------------------------ running
    def dma(self, device: str, addr: int, size: int = 4, **kw) -> DmaResult:
        """A transaction from a device, then the events it caused are routed."""
        spec = self.devices[device]
        result = self.smmus[spec.smmu].smmu.dma(spec.sid, addr, size, **kw)
        self.route_events()
        return result

    def burst(self, device: str, addr: int, count: int) -> None:
        """`count` transactions from a device, a page apart, back to back: faster than
        the hypervisor's event handler, which runs once after them (a fault storm can
        overflow the physical event queue)."""
        spec = self.devices[device]
        smmu = self.smmus[spec.smmu].smmu
        for i in range(count):
            smmu.dma(spec.sid, (addr + i * PAGE_SIZE) % (1 << 64), 4)  # 64-bit addresses
        self.route_events()

    def route_events(self) -> None:
        """The event handler: drain every physical event queue; each record goes to
        the guest that owns its stream, through that guest's vSMMU, or nowhere.  When
        the queue overflowed, whose records were lost is unknown: under the design's
        `signal_lost`, every guest with a stream there is told (its vSMMU's overflow
        flag; a virtio-iommu has none to raise)."""
        for phys in self.smmus.values():
            batch = phys.drv.events()
            if batch.overflow and self.design.signal_lost:
                for guest_name in sorted({g for g, _ in phys.owners.values()}):
                    vsmmu = self.guests[guest_name].vsmmu_for(phys.name)
                    if vsmmu is not None:
                        vsmmu.overflow()
            for fault in batch.faults:
                owner = phys.owners.get(fault.sid)
                if owner is None:
                    self.unrouted.append(fault)
                    continue
                guest_name, vsid = owner
                guest = self.guests[guest_name]
                if guest.viommu is None:
                    guest.vsmmu_for(phys.name).forward(fault.encode(), vsid)
                    continue
                # What virtio-iommu can say: the endpoint, the IOVA, why (never a PA).
                reason = (FaultReason.DOMAIN if fault.event.name in _DOMAIN_FAULTS
                          else FaultReason.MAPPING)
                guest.viommu.report_fault(ViommuFault(
                    reason, vsid, fault.input_addr, read=fault.rnw, write=not fault.rnw))

    def step(self) -> None:
        """Let time pass: budgeted guest command queues continue, hardware catches up."""
        for guest in self.guests.values():
            for vsmmu in guest.vsmmus.values():
                vsmmu.tick()
        for phys in self.smmus.values():
            phys.smmu.tick()
        self.route_events()
