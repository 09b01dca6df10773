"""The virtio-iommu device: request semantics, with a hypervisor behind it.

A guest driver sends ATTACH / DETACH / MAP / UNMAP / PROBE requests as raw
little-endian bytes; `VirtioIommu.handle(request, in_len)` parses them as
untrusted data, applies the specification's rules, keeps the domain and
mapping bookkeeping itself (sorted disjoint intervals per domain, looked up
with `bisect`), and hands already-validated decisions to a `Backend` (the
hypervisor that mirrors them into physical tables).  It returns exactly the
bytes the device writes into the request's device-writable buffer: empty when
the buffers go back unwritten (used length zero), else the tail -- or, for
PROBE, the properties and the tail.

Every byte layout, code and encoder is data in vsmmu/arch/virtio_layouts.py;
this module is what the device does with them.

Source: virtio 1.2 (cs01) §5.13 "IOMMU Device", unchanged in 1.3; constants
cross-checked with Linux include/uapi/linux/virtio_iommu.h (v0.12 header).
Rules, by section:

- §5.13.3   feature bits INPUT_RANGE 0, DOMAIN_RANGE 1, MAP_UNMAP 2, BYPASS 3,
            PROBE 4, MMIO 5, BYPASS_CONFIG 6.
- §5.13.4   config: page_size_mask, input_range, domain_range, probe_size,
            bypass; §5.13.4.1 the driver may write only `bypass`, and only
            with BYPASS_CONFIG negotiated; §5.13.4.2 at least one page size,
            bypass is 0 or 1, may start at 1 only if BYPASS_CONFIG is offered.
- §5.13.5   after reset no endpoint is attached (bypass keeps its value).
- §5.13.6   head {type, reserved[3]}, tail {status, reserved[3]}; status
            codes OK..NOMEM (0..8); a request whose tail cannot be found is
            returned unwritten; the least significant bit of page_size_mask is
            the granule; domain_range / input_range bound requests when the
            feature is offered (else any domain, the whole 64-bit space);
            the bypass-mode rule (see `dma_mode`).
- §5.13.6.2 unknown type: buffer not written, used length zero; head
            reserved ignored; tail reserved written as zero; unattached
            endpoints not in bypass have no access.
- §5.13.6.3 ATTACH (+ .2): reserved != 0 -> INVAL; unknown flag -> INVAL;
            unknown endpoint -> NOENT; bypass flag inconsistent with an
            existing domain -> INVAL; an attached endpoint first leaves its
            old domain (as DETACH then ATTACH); ATTACH_F_BYPASS makes a
            bypass (identity) domain.
- §5.13.6.4 DETACH (+ .2): reserved ignored; unknown endpoint -> NOENT; domain
            absent or endpoint not attached to it -> INVAL (a MAY); a domain
            without endpoints ceases to exist.
- §5.13.6.5 MAP (+ .1, .2): flags READ 1<<0, WRITE 1<<1, MMIO 1<<2 (no EXEC
            in the spec); unknown flag -> INVAL; virt_start, phys_start,
            virt_end + 1 unaligned -> RANGE; existing mapping in the range ->
            INVAL; domain absent -> NOENT; bypass domain -> INVAL; outside
            input_range -> fails (RANGE); PA = VA - virt_start + phys_start.
- §5.13.6.6 UNMAP (+ .2): removes every mapping inside [virt_start, virt_end];
            a split -> RANGE and nothing removed; spilling over unmapped
            space is OK; reserved != 0 -> INVAL (a MAY); domain absent ->
            NOENT; bypass domain -> INVAL.  The section's seven examples are
            reproduced in tests/test_virtio_iommu.py.
- §5.13.6.7 PROBE (+ .2): reserved ignored; unknown endpoint -> NOENT;
            properties buffer smaller than probe_size -> INVAL and no
            property written; unused bytes zero (type 0 ends the list);
            PROBE not offered -> unwritten, used length zero.
- §5.13.6.8 RESV_MEM property {type:12, reserved:4, length, subtype,
            reserved[3], start, end}, subtypes RESERVED 0 / MSI 1;
            §5.13.6.8.1.2 at most one MSI region, no overlaps, and the device
            rejects a MAP overlapping a RESV_MEM region.
- §5.13.6.9 fault records {reason, reserved[3], flags, endpoint, reserved1,
            address}, reasons UNKNOWN 0 / DOMAIN 1 / MAPPING 2, flags READ
            1<<0, WRITE 1<<1, ADDRESS 1<<8; undefined flags written as zero;
            with no buffer available the device may drop the event.

Choices where the spec leaves room (each marked "choice" below): a
device-readable part too short for its type -> IOERR (QEMU says INVAL);
MAP over a RESV_MEM region -> INVAL; MAP with phys_end past 2^64 or refused
by the backend as not guest memory -> FAULT; ATTACH to a domain outside
domain_range -> RANGE; ATTACH of an endpoint whose reserved regions overlap
mappings already in the domain -> UNSUPP (incompatible properties); MAP /
UNMAP without MAP_UNMAP negotiated -> UNSUPP; the MMIO and ATTACH_F_BYPASS
flags count as unrecognized unless MMIO / BYPASS_CONFIG is negotiated;
virt_end == virt_start is accepted (a one-byte mapping is legal with byte
granularity); UNMAP with reserved != 0 removes nothing; a mapping limit and a
domain limit give NOMEM; a full event queue drops and counts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..arch.fields import Decoded
from ..arch.virtio_layouts import (
    ATTACH_F_BYPASS,
    DEFAULT_FEATURES,
    MAP_F_MMIO,
    MAP_F_READ,
    MAP_F_WRITE,
    REQ_TYPE_NAMES,
    REQUESTS,
    RESV_MEM,
    RESV_SUBTYPES,
    TAIL,
    U32_MAX,
    U64_MAX,
    Config,
    FaultReason,
    Feature,
    ReqType,
    ResvRegion,
    ResvSubtype,
    Status,
    ViommuFault,
    decode,
    size_of,
    tail,
    writable_size,
)


@dataclass(frozen=True)
class MapEntry:
    """One mapping, as created by one MAP request: [virt_start, virt_end]."""

    virt_start: int
    virt_end: int
    phys_start: int
    flags: int

    @property
    def size(self) -> int:
        return self.virt_end - self.virt_start + 1


@dataclass(frozen=True)
class Response:
    """What `process` did: `data` is written at offset 0 of the device-writable
    buffer and len(data) is the used length; `status` is None when the buffers
    are returned unwritten."""

    req_type: int | None
    status: Status | None
    data: bytes

    @property
    def properties(self) -> bytes:
        return self.data[:-size_of(TAIL)] if self.req_type == ReqType.PROBE else b""


# ------------------------------------------------------------------ backend
class BackendError(Exception):
    """Raised by a backend that cannot carry out a validated decision; the
    device answers `status` and changes nothing.  Anything else a backend
    raises is a bug and propagates."""

    status = Status.DEVERR


class BackendFault(BackendError):
    """E.g. MAP of a guest-physical range that is not the guest's memory."""

    status = Status.FAULT


class BackendNoMem(BackendError):
    status = Status.NOMEM


class BackendUnsupported(BackendError):
    """E.g. an ATTACH the physical IOMMU cannot do (§5.13.6.3.2: UNSUPP)."""

    status = Status.UNSUPP


class Backend(Protocol):
    """The hypervisor behind the device; every call is already validated."""

    def attach(self, endpoint: int, domain: int, bypass: bool) -> None:
        """`endpoint` now translates through `domain` (identity if bypass),
        leaving whatever it used before."""

    def detach(self, endpoint: int, bypass: bool) -> None:
        """`endpoint` is unattached: identity if bypass, else DMA aborted."""

    def map(self, domain: int, iova: int, size: int, phys: int, flags: int) -> None: ...

    def unmap(self, domain: int, iova: int, size: int) -> None: ...

    def free_domain(self, domain: int) -> None:
        """The domain's last endpoint left: it and its mappings are gone."""


class NullBackend:
    """Accepts everything (the device model alone)."""

    def attach(self, endpoint: int, domain: int, bypass: bool) -> None:
        pass

    def detach(self, endpoint: int, bypass: bool) -> None:
        pass

    def map(self, domain: int, iova: int, size: int, phys: int, flags: int) -> None:
        pass

    def unmap(self, domain: int, iova: int, size: int) -> None:
        pass

    def free_domain(self, domain: int) -> None:
        pass


# -------------------------------------------------------------- intervals
class _Intervals:
    """Sorted disjoint inclusive intervals [start, end] with a value each."""

    __slots__ = ("starts", "ends", "values")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.values: list[MapEntry] = []

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Index slice [lo, hi) of the intervals that meet [start, end]."""
        lo = bisect_right(self.starts, start) - 1
        if lo < 0 or self.ends[lo] < start:
            lo += 1
        return lo, bisect_right(self.starts, end)

    def overlaps(self, start: int, end: int) -> bool:
        lo, hi = self.span(start, end)
        return lo < hi

    def find(self, addr: int) -> int | None:
        i = bisect_right(self.starts, addr) - 1
        return i if i >= 0 and self.ends[i] >= addr else None

    def insert(self, start: int, end: int, value: MapEntry) -> None:
        i = bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.values.insert(i, value)

    def delete(self, lo: int, hi: int) -> None:
        del self.starts[lo:hi], self.ends[lo:hi], self.values[lo:hi]


def _merged(regions: Iterable[ResvRegion]) -> _Intervals:
    out = _Intervals()
    for r in sorted(regions, key=lambda r: r.start):
        if out.ends and r.start <= out.ends[-1] + 1:
            out.ends[-1] = max(out.ends[-1], r.end)
        else:
            out.insert(r.start, r.end, MapEntry(r.start, r.end, 0, 0))
    return out


@dataclass
class _Domain:
    id: int
    bypass: bool
    endpoints: set[int] = field(default_factory=set)
    maps: _Intervals = field(default_factory=_Intervals)
    resv: _Intervals = field(default_factory=_Intervals)  # merged RESV_MEM of its endpoints


MAX_PROBE_SIZE = 1 << 16  # an owner sanity bound: PROBE output is probe_size + 4 bytes

DmaMode = Literal["bypass", "abort", "translate"]


# ------------------------------------------------------------------ device
class VirtioIommu:
    """One virtio-iommu device (one per guest).

    `endpoints` maps each valid endpoint ID to its reserved regions;
    `features` is what the device offers and `driver_features` what the driver
    accepted (default: all offered; `negotiate` changes it).  `max_mappings`
    bounds the mappings of all domains together and `max_domains` the
    domains: past either, MAP / ATTACH answer NOMEM, so a guest never makes
    the host's memory grow without bound.  Misconfiguration by the owner
    raises ValueError; guest requests never raise.
    """

    def __init__(self, endpoints: Mapping[int, Iterable[ResvRegion]],
                 backend: Backend | None = None, *, config: Config | None = None,
                 features: int = DEFAULT_FEATURES,
                 driver_features: int | None = None, max_mappings: int = 4096,
                 max_domains: int = 1024, max_events: int = 64) -> None:
        self.config = config or Config()
        self.offered = features
        self.backend: Backend = backend if backend is not None else NullBackend()
        self.max_mappings = max_mappings
        self.max_domains = max_domains
        self.endpoints: dict[int, tuple[ResvRegion, ...]] = {
            ep: tuple(sorted(regions, key=lambda r: r.start)) for ep, regions in endpoints.items()
        }
        self._validate()
        self.bypass = self.config.bypass
        self.domains: dict[int, _Domain] = {}
        self._domain_of: dict[int, int] = {}
        self.mapping_count = 0
        self.events: deque[ViommuFault] = deque()
        self.max_events = max_events
        self.events_dropped = 0
        self._announced: dict[int, bool] = {}
        self.negotiated = features if driver_features is None else features & driver_features
        # Watchers of each request (the invariant monitor): called after it with the
        # response and what the domains held before it (`state()`).
        self.observers: list[Callable[[VirtioIommu, Response, object], None]] = []
        self.reached: set[str] = set()  # coverage: request types and status codes answered
        self._sync_unattached()

    # ----------------------------------------------------------- endpoints
    def add_endpoint(self, endpoint: int, regions: Iterable[ResvRegion] = ()) -> None:
        """The hypervisor plugs an endpoint in (device assignment): unattached."""
        if endpoint in self.endpoints:
            raise ValueError(f"endpoint {endpoint:#x} exists")
        self.endpoints[endpoint] = tuple(sorted(regions, key=lambda r: r.start))
        try:
            self._validate()
        except ValueError:
            del self.endpoints[endpoint]
            raise
        self._sync_unattached()

    def remove_endpoint(self, endpoint: int) -> None:
        """The hypervisor unplugs an endpoint (it quarantines the stream itself):
        it leaves its domain, which goes away if it was the last one in it."""
        if endpoint in self._domain_of:
            self._leave(endpoint, announce=False)
        del self.endpoints[endpoint]
        self._announced.pop(endpoint, None)

    def state(self) -> tuple:
        """Everything a request can change: domains, their mappings, attachments."""
        return (tuple((d.id, d.bypass, tuple(d.maps.values)) for d in self.domains.values()),
                tuple(sorted(self._domain_of.items())), self.mapping_count)

    def _validate(self) -> None:
        c = self.config
        if not 0 < c.page_size_mask <= U64_MAX:
            raise ValueError("page_size_mask needs at least one bit (§5.13.4.2)")
        if not 0 <= c.input_range[0] <= c.input_range[1] <= U64_MAX:
            raise ValueError(f"bad input_range {c.input_range}")
        if not 0 <= c.domain_range[0] <= c.domain_range[1] <= U32_MAX:
            raise ValueError(f"bad domain_range {c.domain_range}")
        if c.bypass not in (0, 1) or (c.bypass and not self.offered & Feature.BYPASS_CONFIG.mask):
            raise ValueError("bypass is 0 or 1, and 1 only with BYPASS_CONFIG (§5.13.4.2)")
        if not 0 <= c.probe_size <= MAX_PROBE_SIZE:
            raise ValueError(f"probe_size {c.probe_size} above {MAX_PROBE_SIZE}")
        if self.max_mappings < 0 or self.max_domains < 0:
            raise ValueError("limits must be non-negative")
        for ep, regions in self.endpoints.items():
            if not 0 <= ep <= U32_MAX:
                raise ValueError(f"endpoint {ep:#x} is not a 32-bit ID")
            for r in regions:
                if not 0 <= r.start <= r.end <= U64_MAX or r.subtype not in RESV_SUBTYPES:
                    raise ValueError(f"endpoint {ep:#x}: bad region {r}")
            if sum(r.subtype == ResvSubtype.MSI for r in regions) > 1:
                raise ValueError(f"endpoint {ep:#x}: more than one MSI region (§5.13.6.8.1.2)")
            if any(a.end >= b.start for a, b in zip(regions, regions[1:], strict=False)):
                raise ValueError(f"endpoint {ep:#x}: overlapping regions (§5.13.6.8.1.2)")
            if (self.offered & Feature.PROBE.mask
                    and len(regions) * size_of(RESV_MEM) > c.probe_size):
                raise ValueError(f"endpoint {ep:#x}: properties exceed probe_size")

    # ------------------------------------------------------------ features
    def has(self, f: Feature) -> bool:
        return bool(self.negotiated & f.mask)

    def offers(self, f: Feature) -> bool:
        return bool(self.offered & f.mask)

    def negotiate(self, driver_features: int) -> int:
        """Feature negotiation after a device reset; returns the negotiated set."""
        self.reset()
        self.negotiated = self.offered & driver_features
        self._sync_unattached()
        return self.negotiated

    def reset(self) -> None:
        """Device reset (§5.13.5): nothing attached, no domains; bypass kept
        (§5.13.4.2); the event queue's buffers are gone with the queue."""
        for ep in list(self._domain_of):
            self._leave(ep)
        self.events.clear()
        self._sync_unattached()

    def system_reset(self) -> None:
        """System reset: as reset, and bypass back to its initial value."""
        self.bypass = self.config.bypass
        self.reset()

    # -------------------------------------------------------------- config
    def config_bytes(self) -> bytes:
        return self.config.encode(bypass=self.bypass)

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write to config space.  Only `bypass` is writable, and
        only with BYPASS_CONFIG negotiated (§5.13.4.1); other bytes are
        ignored.  The device presents only 0 or 1 (§5.13.4.2): bit 0 counts."""
        at = 36 - offset  # CONFIG.bypass is byte 36
        if not self.has(Feature.BYPASS_CONFIG) or not 0 <= at < len(data):
            return
        self.bypass = data[at] & 1
        self._sync_unattached()

    # ----------------------------------------------------------- DMA side
    def domain_of(self, endpoint: int) -> int | None:
        return self._domain_of.get(endpoint)

    def mappings(self, domain: int) -> list[MapEntry]:
        d = self.domains.get(domain)
        return list(d.maps.values) if d else []

    def is_bypass_domain(self, domain: int) -> bool:
        d = self.domains.get(domain)
        return bool(d and d.bypass)

    def unattached_bypass(self) -> bool:
        """§5.13.6: an unattached endpoint is in bypass mode if BYPASS_CONFIG
        is *offered* and bypass = 1 (even if the driver did not accept the
        feature), or BYPASS is *negotiated*."""
        return ((self.offers(Feature.BYPASS_CONFIG) and self.bypass == 1)
                or self.has(Feature.BYPASS))

    def dma_mode(self, endpoint: int) -> DmaMode:
        dom = self._domain_of.get(endpoint)
        if dom is None:
            return "bypass" if self.unattached_bypass() else "abort"
        return "bypass" if self.domains[dom].bypass else "translate"

    def translate(self, endpoint: int, address: int, write: bool = False) -> int | ViommuFault:
        """The physical address a DMA of `endpoint` reaches, or the fault to
        report.  Unattached and not in bypass: DOMAIN fault (§5.13.6.2).  In
        a translating domain an address in the endpoint's MSI region is passed
        through (the platform's doorbell window, as QEMU does); anything else
        needs a mapping with the access's flag (§5.13.6.5.2; write-only
        mappings stay write-only)."""
        if endpoint not in self.endpoints:
            raise ValueError(f"unknown endpoint {endpoint:#x}")
        mode = self.dma_mode(endpoint)
        if mode == "bypass":
            return address
        kind = {"write": True} if write else {"read": True}
        if mode == "abort":
            return ViommuFault(FaultReason.DOMAIN, endpoint, address, **kind)
        if any(r.subtype == ResvSubtype.MSI and r.start <= address <= r.end
               for r in self.endpoints[endpoint]):
            return address
        d = self.domains[self._domain_of[endpoint]]
        i = d.maps.find(address)
        if i is not None:
            m = d.maps.values[i]
            if m.flags & (MAP_F_WRITE if write else MAP_F_READ):
                return address - m.virt_start + m.phys_start
        return ViommuFault(FaultReason.MAPPING, endpoint, address, **kind)

    def report_fault(self, fault: ViommuFault) -> bool:
        """Queue a fault record for the driver; when no buffer is free the
        event is dropped and counted (§5.13.6.9).  False if dropped."""
        if fault.endpoint not in self.endpoints:
            raise ValueError(f"unknown endpoint {fault.endpoint:#x} (§5.13.6.9.2)")
        if len(self.events) >= self.max_events:
            self.events_dropped += 1
            return False
        self.events.append(fault)
        return True

    def pop_event(self) -> bytes | None:
        """The next fault record, as the driver reads it from the event queue."""
        return self.events.popleft().encode() if self.events else None

    # ------------------------------------------------------------ requests
    def handle(self, request: bytes, in_len: int) -> bytes:
        """Bytes written to the device-writable buffer (`in_len` bytes long)."""
        return self.process(request, in_len).data

    def process(self, request: bytes, in_len: int) -> Response:
        """Handle one request: `request` is its device-readable part."""
        before = self.state() if self.observers else None
        response = self._process(request, in_len)
        t, status = response.req_type, response.status
        self.reached.add(f"request:{REQ_TYPE_NAMES.get(t, 'UNKNOWN')}")
        self.reached.add(f"status:{status.name if status is not None else 'UNWRITTEN'}")
        for observe in self.observers:
            observe(self, response, before)
        return response

    def _process(self, request: bytes, in_len: int) -> Response:
        tail_n = size_of(TAIL)
        req_type = request[0] if len(request) else None
        if in_len < tail_n:  # the tail cannot be found: return unwritten (§5.13.6)
            return Response(req_type, None, b"")
        if req_type not in REQ_TYPE_NAMES and len(request):
            return Response(req_type, None, b"")  # §5.13.6.2
        if req_type == ReqType.PROBE and not self.offers(Feature.PROBE):
            return Response(req_type, None, b"")  # §5.13.6.7.2
        if req_type is None:
            return self._reply(None, Status.IOERR, in_len)
        t = ReqType(req_type)
        req = decode(REQUESTS[t], request)
        if req is None:  # choice: too short for its type is a communication error
            return self._reply(t, Status.IOERR, in_len)
        if t == ReqType.PROBE:
            return self._probe(req, in_len)
        handler = {ReqType.ATTACH: self._attach, ReqType.DETACH: self._detach,
                   ReqType.MAP: self._map, ReqType.UNMAP: self._unmap}[t]
        try:
            status = handler(req)
        except BackendError as e:
            status = e.status
        return self._reply(t, status, in_len)

    def _reply(self, t: ReqType | None, status: Status, in_len: int,
               props: bytes = b"") -> Response:
        """min(in_len, expected) bytes from offset 0, ending with the tail
        (reserved written as zero, §5.13.6.2)."""
        want = writable_size(t or 0, self.config.probe_size)
        n = min(in_len, want)
        body = props.ljust(n - size_of(TAIL), b"\0") if n == want else bytes(n - size_of(TAIL))
        return Response(t, status, body + tail(status))

    # ATTACH, §5.13.6.3.2
    def _attach(self, req: Decoded) -> Status:
        dom_id, ep = req.domain, req.endpoint
        known = ATTACH_F_BYPASS if self.has(Feature.BYPASS_CONFIG) else 0
        if req.reserved or req.flags & ~known:
            return Status.INVAL
        lo, hi = self.config.domain_range
        if self.offers(Feature.DOMAIN_RANGE) and not lo <= dom_id <= hi:
            return Status.RANGE  # choice: "out-of-range parameters"
        if ep not in self.endpoints:
            return Status.NOENT
        bypass = bool(req.flags & ATTACH_F_BYPASS)
        dom = self.domains.get(dom_id)
        if dom is not None and dom.bypass != bypass:
            return Status.INVAL
        old = self._domain_of.get(ep)
        if old == dom_id:
            return Status.OK
        if dom is None:
            freed = old is not None and len(self.domains[old].endpoints) == 1
            if len(self.domains) - freed >= self.max_domains:
                return Status.NOMEM
        elif any(dom.maps.overlaps(r.start, r.end) for r in self.endpoints[ep]):
            return Status.UNSUPP  # choice: its RESV_MEM would sit under live mappings
        self.backend.attach(ep, dom_id, bypass)
        if old is not None:
            self._leave(ep, announce=False)
        if dom is None:
            dom = self.domains[dom_id] = _Domain(dom_id, bypass)
        dom.endpoints.add(ep)
        dom.resv = _merged(r for e in dom.endpoints for r in self.endpoints[e])
        self._domain_of[ep] = dom_id
        self._announced.pop(ep, None)
        return Status.OK

    # DETACH, §5.13.6.4.2 (reserved ignored)
    def _detach(self, req: Decoded) -> Status:
        ep = req.endpoint
        if ep not in self.endpoints:
            return Status.NOENT
        if self._domain_of.get(ep) != req.domain:
            return Status.INVAL
        self.backend.detach(ep, self.unattached_bypass())
        self._leave(ep, announce=False)
        self._announced[ep] = self.unattached_bypass()
        return Status.OK

    def _leave(self, ep: int, announce: bool = True) -> None:
        """Bookkeeping of `ep` leaving its domain; a domain left empty ceases
        to exist with its mappings (§5.13.6.4)."""
        dom = self.domains[self._domain_of.pop(ep)]
        dom.endpoints.discard(ep)
        if announce:
            self.backend.detach(ep, self.unattached_bypass())
            self._announced[ep] = self.unattached_bypass()
        if dom.endpoints:
            dom.resv = _merged(r for e in dom.endpoints for r in self.endpoints[e])
            return
        self.backend.free_domain(dom.id)
        self.mapping_count -= len(dom.maps)
        del self.domains[dom.id]

    def _sync_unattached(self) -> None:
        """Tell the backend the mode of each unattached endpoint that changed."""
        bypass = self.unattached_bypass()
        for ep in self.endpoints:
            if ep not in self._domain_of and self._announced.get(ep) != bypass:
                self.backend.detach(ep, bypass)
                self._announced[ep] = bypass

    # MAP, §5.13.6.5.2
    def _map(self, req: Decoded) -> Status:
        if not self.has(Feature.MAP_UNMAP):
            return Status.UNSUPP  # choice: "only available when negotiated"
        known = MAP_F_READ | MAP_F_WRITE | (MAP_F_MMIO if self.has(Feature.MMIO) else 0)
        if req.flags & ~known:
            return Status.INVAL
        dom = self.domains.get(req.domain)
        if dom is None:
            return Status.NOENT
        if dom.bypass:
            return Status.INVAL
        start, end, phys = req.virt_start, req.virt_end, req.phys_start
        if end < start:  # §5.13.6.5.1: virt_end > virt_start
            return Status.INVAL
        g = self.config.granule
        if start % g or phys % g or (end + 1) % g:
            return Status.RANGE
        lo, hi = self.input_range()
        if start < lo or end > hi:
            return Status.RANGE  # §5.13.6: "fails"
        if phys + (end - start) > U64_MAX:
            return Status.FAULT  # choice: beyond any guest-physical space
        if dom.maps.overlaps(start, end):
            return Status.INVAL
        if dom.resv.overlaps(start, end):
            return Status.INVAL  # §5.13.6.8.1.2 "SHOULD reject"; choice: INVAL
        if self.mapping_count >= self.max_mappings:
            return Status.NOMEM
        self.backend.map(dom.id, start, end - start + 1, phys, req.flags)
        dom.maps.insert(start, end, MapEntry(start, end, phys, req.flags))
        self.mapping_count += 1
        return Status.OK

    def input_range(self) -> tuple[int, int]:
        return self.config.input_range if self.offers(Feature.INPUT_RANGE) else (0, U64_MAX)

    # UNMAP, §5.13.6.6.2
    def _unmap(self, req: Decoded) -> Status:
        if not self.has(Feature.MAP_UNMAP):
            return Status.UNSUPP
        if req.reserved:
            return Status.INVAL  # a MAY; choice: and nothing unmapped
        dom = self.domains.get(req.domain)
        if dom is None:
            return Status.NOENT
        if dom.bypass:
            return Status.INVAL
        start, end = req.virt_start, req.virt_end
        if end < start:
            return Status.INVAL
        lo, hi = dom.maps.span(start, end)
        if lo < hi and (dom.maps.starts[lo] < start or dom.maps.ends[hi - 1] > end):
            return Status.RANGE  # would split a mapping: nothing removed
        done = lo
        try:
            for m in dom.maps.values[lo:hi]:
                self.backend.unmap(dom.id, m.virt_start, m.size)
                done += 1
        finally:  # a backend error keeps what it did unmap removed
            dom.maps.delete(lo, done)
            self.mapping_count -= done - lo
        return Status.OK

    # PROBE, §5.13.6.7.2 (reserved ignored)
    def _probe(self, req: Decoded, in_len: int) -> Response:
        size = self.config.probe_size
        if in_len < size + size_of(TAIL):
            return self._reply(ReqType.PROBE, Status.INVAL, in_len)  # no property written
        regions = self.endpoints.get(req.endpoint)
        if regions is None:
            return self._reply(ReqType.PROBE, Status.NOENT, in_len)
        props = b"".join(r.prop() for r in regions)  # fits: checked at construction
        return self._reply(ReqType.PROBE, Status.OK, in_len, props)
