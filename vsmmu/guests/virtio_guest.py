"""A guest kernel's virtio-iommu driver: what Linux's virtio-iommu.c does inside a VM.

Feature negotiation (MAP_UNMAP, INPUT_RANGE, DOMAIN_RANGE, PROBE, MMIO,
BYPASS_CONFIG; bypass left 0, so unattached endpoints are blocked), PROBE of
each endpoint for its reserved regions, domains as IDs, ATTACH / MAP / UNMAP
requests, fault events drained from the event queue.  Requests are built
with the device's own encoders and sent whole (the virtqueue ring that would
carry them is not modelled: each request is the bytes of its buffers).

It offers the same calls as `GuestKernel` for what they share (`domain`,
`attach`, `dma_map`, `dma_unmap`, `map_msi`, `buffer`), so tests, seeds and the
fuzz runner boot either kind of guest the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arch.virtio_layouts import (
    MAP_F_READ,
    MAP_F_WRITE,
    Feature,
    ResvSubtype,
    Status,
    attach_req,
    detach_req,
    feature_mask,
    map_req,
    parse_properties,
    probe_req,
    unmap_req,
)
from ..hw.memory import PAGE_SIZE
from ..hyp.host import GUEST_RAM
from ..hyp.hypervisor import Hypervisor
from ..sw.alloc import Allocator

DRIVER_FEATURES = feature_mask(Feature.MAP_UNMAP, Feature.INPUT_RANGE, Feature.DOMAIN_RANGE,
                               Feature.PROBE, Feature.MMIO, Feature.BYPASS_CONFIG)


class ViommuError(Exception):
    """A request the driver needed failed: its status."""

    def __init__(self, what: str, status: Status | None):
        super().__init__(f"{what}: {status.name if status is not None else 'no reply'}")
        self.status = status


@dataclass
class ViommuDomain:
    id: int
    devices: list[str] = field(default_factory=list)


class VirtioGuestKernel:
    def __init__(self, hyp: Hypervisor, name: str):
        self.hyp = hyp
        self.name = name
        self.guest = hyp.guests[name]
        self.dev = self.guest.viommu
        if self.dev is None:
            raise ValueError(f"guest {name!r} has no virtio-iommu")
        self.alloc = Allocator(GUEST_RAM, self.guest.ram)
        self.drivers: dict = {}  # no vSMMUs
        self.dev.negotiate(DRIVER_FEATURES)
        self._next_domain = 1

    def request(self, what: str, req: bytes, in_len: int = 4) -> bytes:
        response = self.dev.process(req, in_len)
        if response.status != Status.OK:
            raise ViommuError(what, response.status)
        return response.data

    # ------------------------------------------------------------ devices
    def endpoint(self, device: str) -> int:
        owner, endpoint = self.hyp.assigned[device]
        if owner != self.name:
            raise ValueError(f"device {device!r} is not assigned to {self.name!r}")
        return endpoint

    def reserved(self, device: str) -> list[tuple[int, int, int]]:
        """PROBE: (start, end, subtype) of each reserved region of the device."""
        size = self.dev.config.probe_size
        props = self.request("PROBE", probe_req(self.endpoint(device)), size + 4)[:size]
        return [(p.start, p.end, p.subtype) for p in parse_properties(props)]

    def domain(self) -> ViommuDomain:
        dom = ViommuDomain(self._next_domain)
        self._next_domain += 1
        return dom

    def attach(self, device: str, dom: ViommuDomain) -> None:
        self.request("ATTACH", attach_req(dom.id, self.endpoint(device)))
        dom.devices.append(device)

    def detach(self, device: str, dom: ViommuDomain) -> None:
        self.request("DETACH", detach_req(dom.id, self.endpoint(device)))
        dom.devices.remove(device)

    # ---------------------------------------------------------------- DMA
    def buffer(self, size: int) -> int:
        """Guest memory (a GPA) for a DMA buffer."""
        return self.alloc.alloc(size, PAGE_SIZE)

    def dma_map(self, dom: ViommuDomain, iova: int, gpa: int, size: int, *,
                write: bool = True) -> None:
        flags = MAP_F_READ | (MAP_F_WRITE if write else 0)
        self.request("MAP", map_req(dom.id, iova, iova + size - 1, gpa, flags))

    def dma_unmap(self, dom: ViommuDomain, iova: int, size: int) -> None:
        self.request("UNMAP", unmap_req(dom.id, iova, iova + size - 1))

    def map_msi(self, dom: ViommuDomain) -> int:
        """The MSI doorbell IOVA: the device's reserved MSI region (nothing to map)."""
        for device in dom.devices:
            for start, _end, subtype in self.reserved(device):
                if subtype == ResvSubtype.MSI:
                    return start
        raise ViommuError("PROBE: no MSI region", None)

    # ------------------------------------------------------------- events
    def events(self) -> list[bytes]:
        out = []
        while (record := self.dev.pop_event()) is not None:
            out.append(record)
        return out
