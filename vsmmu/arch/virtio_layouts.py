"""virtio-iommu's wire format as data: virtio 1.2 (cs01) §5.13, unchanged in 1.3.

Feature bits (§5.13.3), the config space (§5.13.4), request heads and tails with
their type and status codes (§5.13.6), each request's body (§5.13.6.3-7), the
RESV_MEM probe property (§5.13.6.8) and fault records (§5.13.6.9).  Each byte
layout is one `vsmmu.arch.fields.Layout` table (fields named by byte offset and
size, checked to be packed); the device's parser (vsmmu/hyp/virtio_iommu.py),
the request encoders (`attach_req`, `map_req`, ... used by tests, guest drivers
and fuzzers) and the config/property/fault encoders all read those tables.
Constants cross-checked with Linux include/uapi/linux/virtio_iommu.h (v0.12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from .fields import Decoded, Field, Layout

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


class Feature(IntEnum):
    """Feature bit numbers (§5.13.3)."""

    INPUT_RANGE = 0
    DOMAIN_RANGE = 1
    MAP_UNMAP = 2
    BYPASS = 3
    PROBE = 4
    MMIO = 5
    BYPASS_CONFIG = 6

    @property
    def mask(self) -> int:
        return 1 << self.value


def feature_mask(*bits: Feature) -> int:
    return sum(1 << b for b in set(bits))


# A new device offers BYPASS_CONFIG rather than BYPASS (§5.13.3.2).
DEFAULT_FEATURES = feature_mask(
    Feature.INPUT_RANGE, Feature.DOMAIN_RANGE, Feature.MAP_UNMAP, Feature.PROBE,
    Feature.MMIO, Feature.BYPASS_CONFIG,
)


class ReqType(IntEnum):
    """Request types (§5.13.6)."""

    ATTACH = 1
    DETACH = 2
    MAP = 3
    UNMAP = 4
    PROBE = 5


class Status(IntEnum):
    """Status codes (§5.13.6)."""

    OK = 0
    IOERR = 1  # virtio communication error
    UNSUPP = 2  # unsupported request
    DEVERR = 3  # internal device error
    INVAL = 4  # invalid parameters
    RANGE = 5  # out-of-range parameters
    NOENT = 6  # entry not found
    FAULT = 7  # bad address
    NOMEM = 8  # insufficient resources


ATTACH_F_BYPASS = 1 << 0  # §5.13.6.3
MAP_F_READ = 1 << 0  # §5.13.6.5
MAP_F_WRITE = 1 << 1
MAP_F_MMIO = 1 << 2  # Linux's v0.9 header: EXEC at bit 2, MMIO at 3; v0.12 and the spec: no EXEC
MAP_F_MASK = MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO

PROBE_T_NONE = 0  # §5.13.6.7: a property of type 0 ends the list
PROBE_T_RESV_MEM = 1  # §5.13.6.8


class ResvSubtype(IntEnum):
    """RESV_MEM subtypes (§5.13.6.8.1)."""

    RESERVED = 0
    MSI = 1


RESV_SUBTYPES = frozenset(s.value for s in ResvSubtype)


class FaultReason(IntEnum):
    """Fault report reasons (§5.13.6.9)."""

    UNKNOWN = 0
    DOMAIN = 1
    MAPPING = 2


FAULT_F_READ = 1 << 0  # §5.13.6.9
FAULT_F_WRITE = 1 << 1
FAULT_F_EXEC = 1 << 2  # Linux uapi only, not in virtio 1.2/1.3: never emitted (undefined -> 0)
FAULT_F_ADDRESS = 1 << 8
FAULT_F_DEFINED = FAULT_F_READ | FAULT_F_WRITE | FAULT_F_ADDRESS


# ------------------------------------------------------------------ layouts
def _struct(name: str, *entries: tuple[str, int, int] | Field,
            values: Mapping[str, Mapping[int, str]] | None = None) -> Layout:
    """A little-endian byte struct: (field, byte offset, byte size) entries, or
    `Field`s for sub-byte fields.  The entries must tile the struct exactly,
    so a mistyped offset is an import-time error, not a silent gap."""
    values = values or {}
    fields: list[Field] = []
    for e in entries:
        if isinstance(e, Field):
            fields.append(e)
        else:
            fname, off, size = e
            fields.append(Field(fname, 8 * (off + size) - 1, 8 * off, values=values.get(fname, {})))
    bit = 0
    for f in sorted(fields, key=lambda f: f.lo):
        if f.lo != bit:
            raise ValueError(f"{name}.{f.name}: starts at bit {f.lo}, expected {bit}")
        bit = f.hi + 1
    if bit % 8:
        raise ValueError(f"{name}: {bit} bits is not whole bytes")
    return Layout(name, bit, fields)


REQ_TYPE_NAMES = {t.value: t.name for t in ReqType}
_HEAD = (("type", 0, 1), ("head_reserved", 1, 3))

# §5.13.4: struct virtio_iommu_config (40 bytes).
CONFIG = _struct(
    "virtio_iommu_config",
    ("page_size_mask", 0, 8),
    ("input_start", 8, 8), ("input_end", 16, 8),
    ("domain_start", 24, 4), ("domain_end", 28, 4),
    ("probe_size", 32, 4),
    ("bypass", 36, 1), ("reserved", 37, 3),
)
# §5.13.6: the device-writable tail of every request.
TAIL = _struct("virtio_iommu_req_tail", ("status", 0, 1), ("reserved", 1, 3),
               values={"status": {s.value: s.name for s in Status}})
# The device-readable part (head + payload) of each request, §5.13.6.3-7.
REQUESTS: dict[ReqType, Layout] = {
    ReqType.ATTACH: _struct(
        "virtio_iommu_req_attach", *_HEAD,
        ("domain", 4, 4), ("endpoint", 8, 4), ("flags", 12, 4), ("reserved", 16, 4)),
    ReqType.DETACH: _struct(
        "virtio_iommu_req_detach", *_HEAD,
        ("domain", 4, 4), ("endpoint", 8, 4), ("reserved", 12, 8)),
    ReqType.MAP: _struct(
        "virtio_iommu_req_map", *_HEAD,
        ("domain", 4, 4), ("virt_start", 8, 8), ("virt_end", 16, 8),
        ("phys_start", 24, 8), ("flags", 32, 4)),
    ReqType.UNMAP: _struct(
        "virtio_iommu_req_unmap", *_HEAD,
        ("domain", 4, 4), ("virt_start", 8, 8), ("virt_end", 16, 8), ("reserved", 24, 4)),
    ReqType.PROBE: _struct(
        "virtio_iommu_req_probe", *_HEAD,
        ("endpoint", 4, 4), ("reserved", 8, 64)),
}
# §5.13.6.7: property header {le16 {type:12, reserved:4}; le16 length}, and the
# RESV_MEM property (§5.13.6.8.1), 24 bytes: length = 20.
PROP_HEAD = _struct("virtio_iommu_probe_property",
                    Field("type", 11, 0), Field("prop_reserved", 15, 12), ("length", 2, 2))
RESV_MEM = _struct(
    "virtio_iommu_probe_resv_mem",
    Field("type", 11, 0), Field("prop_reserved", 15, 12), ("length", 2, 2),
    ("subtype", 4, 1), ("reserved", 5, 3), ("start", 8, 8), ("end", 16, 8),
    values={"subtype": {s.value: s.name for s in ResvSubtype}},
)
RESV_MEM_LENGTH = RESV_MEM.width // 8 - PROP_HEAD.width // 8
# §5.13.6.9: struct virtio_iommu_fault (24 bytes).
FAULT = _struct(
    "virtio_iommu_fault",
    ("reason", 0, 1), ("reserved", 1, 3), ("flags", 4, 4), ("endpoint", 8, 4),
    ("reserved1", 12, 4), ("address", 16, 8),
    values={"reason": {r.value: r.name for r in FaultReason}},
)


def size_of(layout: Layout) -> int:
    return layout.width // 8


def encode(layout: Layout, **fields: int) -> bytes:
    """Bytes of `layout` with the named fields set (others zero)."""
    return layout.to_bytes(layout.encode(**fields))


def decode(layout: Layout, data: bytes) -> Decoded | None:
    """The layout's fields from the first bytes of `data`; None if too short."""
    n = size_of(layout)
    if len(data) < n:
        return None
    return layout.decode(int.from_bytes(bytes(data[:n]), "little"))


# ----------------------------------------------------------------- encoders
def request(req_type: int, **fields: int) -> bytes:
    """The device-readable part of a request; any field (type, head_reserved,
    reserved, ...) may be overridden to build malformed requests."""
    fields.setdefault("type", int(req_type))
    return encode(REQUESTS[ReqType(req_type)], **fields)


def attach_req(domain: int, endpoint: int, flags: int = 0, **fields: int) -> bytes:
    return request(ReqType.ATTACH, domain=domain, endpoint=endpoint, flags=flags, **fields)


def detach_req(domain: int, endpoint: int, **fields: int) -> bytes:
    return request(ReqType.DETACH, domain=domain, endpoint=endpoint, **fields)


def map_req(domain: int, virt_start: int, virt_end: int, phys_start: int,
            flags: int = MAP_F_READ | MAP_F_WRITE, **fields: int) -> bytes:
    return request(ReqType.MAP, domain=domain, virt_start=virt_start, virt_end=virt_end,
                   phys_start=phys_start, flags=flags, **fields)


def unmap_req(domain: int, virt_start: int, virt_end: int, **fields: int) -> bytes:
    return request(ReqType.UNMAP, domain=domain, virt_start=virt_start, virt_end=virt_end,
                   **fields)


def probe_req(endpoint: int, **fields: int) -> bytes:
    return request(ReqType.PROBE, endpoint=endpoint, **fields)


def tail(status: int, **fields: int) -> bytes:
    return encode(TAIL, status=status, **fields)


def writable_size(req_type: int, probe_size: int) -> int:
    """What a driver allocates for the device-writable part."""
    return probe_size + size_of(TAIL) if req_type == ReqType.PROBE else size_of(TAIL)


def resv_mem_prop(subtype: int, start: int, end: int, **fields: int) -> bytes:
    fields.setdefault("type", PROBE_T_RESV_MEM)
    fields.setdefault("length", RESV_MEM_LENGTH)
    return encode(RESV_MEM, subtype=subtype, start=start, end=end, **fields)


def parse_properties(buf: bytes) -> list[Decoded]:
    """A driver's reading of a PROBE properties buffer (§5.13.6.7): headers
    until type 0 or the end; each property is (length + 4) bytes.  Property
    bodies come back decoded as RESV_MEM when that is their type, otherwise
    as bare headers.  Total: never raises on any bytes."""
    out: list[Decoded] = []
    off = 0
    head = size_of(PROP_HEAD)
    while off + head <= len(buf):
        h = decode(PROP_HEAD, buf[off:])
        assert h is not None
        if h.type == PROBE_T_NONE:
            break
        body = buf[off:off + head + h.length]
        if h.type == PROBE_T_RESV_MEM and len(body) >= size_of(RESV_MEM):
            d = decode(RESV_MEM, body)
            assert d is not None
            out.append(d)
        else:
            out.append(h)
        off += head + h.length
    return out


# ------------------------------------------------------- values and config
@dataclass(frozen=True)
class ResvRegion:
    """A RESV_MEM region of an endpoint: [start, end] inclusive."""

    start: int
    end: int
    subtype: ResvSubtype = ResvSubtype.RESERVED

    def prop(self) -> bytes:
        return resv_mem_prop(self.subtype, self.start, self.end)


@dataclass(frozen=True)
class Config:
    """The device configuration (§5.13.4), as the owner sets it up."""

    page_size_mask: int = 0x1000 | 0x200000 | 0x40000000  # 4K granule; 2M, 1G hints
    input_range: tuple[int, int] = (0, (1 << 48) - 1)
    domain_range: tuple[int, int] = (0, 0xFFFF)
    probe_size: int = 512  # QEMU's value
    bypass: int = 0

    @property
    def granule(self) -> int:
        return self.page_size_mask & -self.page_size_mask

    def encode(self, bypass: int | None = None) -> bytes:
        return encode(
            CONFIG, page_size_mask=self.page_size_mask,
            input_start=self.input_range[0], input_end=self.input_range[1],
            domain_start=self.domain_range[0], domain_end=self.domain_range[1],
            probe_size=self.probe_size, bypass=self.bypass if bypass is None else bypass)

    @classmethod
    def decode(cls, data: bytes) -> Config:
        d = decode(CONFIG, data)
        if d is None:
            raise ValueError(f"config space is {size_of(CONFIG)} bytes, got {len(data)}")
        return cls(d.page_size_mask, (d.input_start, d.input_end),
                   (d.domain_start, d.domain_end), d.probe_size, d.bypass)


@dataclass(frozen=True)
class ViommuFault:
    """A fault report (§5.13.6.9) as a value; `encode` writes the record."""

    reason: FaultReason
    endpoint: int
    address: int | None = None  # None: F_ADDRESS clear
    read: bool = False
    write: bool = False

    @property
    def flags(self) -> int:
        return ((FAULT_F_READ if self.read else 0) | (FAULT_F_WRITE if self.write else 0)
                | (FAULT_F_ADDRESS if self.address is not None else 0))

    def encode(self) -> bytes:
        return encode(FAULT, reason=int(self.reason), flags=self.flags, endpoint=self.endpoint,
                      address=self.address or 0)
