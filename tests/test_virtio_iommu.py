"""Tests for vsmmu.hyp.virtio_iommu against virtio 1.2 §5.13 (IOMMU device).

Golden byte strings are written out by hand from the spec's structs (all
fields little-endian, packed), not produced by the module's encoders.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmmu.arch import virtio_layouts as wire
from vsmmu.arch.virtio_layouts import (
    ATTACH_F_BYPASS,
    MAP_F_MMIO,
    MAP_F_READ,
    MAP_F_WRITE,
    Config,
    FaultReason,
    Feature,
    ReqType,
    ResvRegion,
    ResvSubtype,
    Status,
    ViommuFault,
    attach_req,
    detach_req,
    feature_mask,
    map_req,
    probe_req,
    unmap_req,
)
from vsmmu.hyp import virtio_iommu as vi
from vsmmu.hyp.virtio_iommu import (
    BackendError,
    BackendFault,
    BackendNoMem,
    BackendUnsupported,
    VirtioIommu,
)

RW = MAP_F_READ | MAP_F_WRITE
MSI = ResvRegion(0x8000000, 0x80FFFFF, ResvSubtype.MSI)
RESV = ResvRegion(0xFEE00000, 0xFEEFFFFF, ResvSubtype.RESERVED)
BYTE = Config(page_size_mask=1, input_range=(0, 0xFFFF), domain_range=(0, 15), probe_size=64)
TAIL_OK = bytes.fromhex("00000000")


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


class Recorder:
    """A backend that records each call and mirrors the decisions it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.maps: dict[int, dict[int, tuple[int, int, int]]] = {}
        self.eps: dict[int, tuple[int | None, bool]] = {}
        self.fail: dict[str, BackendError] = {}

    def _call(self, *call) -> None:
        if call[0] in self.fail:
            raise self.fail[call[0]]
        self.calls.append(call)

    def attach(self, endpoint, domain, bypass):
        self._call("attach", endpoint, domain, bypass)
        self.eps[endpoint] = (domain, bypass)

    def detach(self, endpoint, bypass):
        self._call("detach", endpoint, bypass)
        self.eps[endpoint] = (None, bypass)

    def map(self, domain, iova, size, phys, flags):
        self._call("map", domain, iova, size, phys, flags)
        self.maps.setdefault(domain, {})[iova] = (size, phys, flags)

    def unmap(self, domain, iova, size):
        self._call("unmap", domain, iova, size)
        assert self.maps[domain].pop(iova)[0] == size

    def free_domain(self, domain):
        self._call("free_domain", domain)
        self.maps.pop(domain, None)


def device(endpoints=None, config=BYTE, **kw) -> tuple[VirtioIommu, Recorder]:
    rec = Recorder()
    eps = {8: [], 9: []} if endpoints is None else endpoints
    return VirtioIommu(eps, rec, config=config, **kw), rec


def status(dev: VirtioIommu, req: bytes, in_len: int = 4) -> Status | None:
    return dev.process(req, in_len).status


def spans(dev: VirtioIommu, domain: int = 1) -> list[tuple[int, int]]:
    return [(m.virt_start, m.virt_end) for m in dev.mappings(domain)]


def check_mirror(dev: VirtioIommu, rec: Recorder) -> None:
    """The backend holds exactly the device's bookkeeping, and it is sane."""
    total = 0
    for d, dom in dev.domains.items():
        ms = dev.mappings(d)
        assert {m.virt_start: (m.size, m.phys_start, m.flags) for m in ms} == rec.maps.get(d, {})
        assert all(a.virt_end < b.virt_start for a, b in zip(ms, ms[1:], strict=False))
        for m in ms:
            for ep in dom.endpoints:
                assert not any(r.start <= m.virt_end and m.virt_start <= r.end
                               for r in dev.endpoints[ep])
        total += len(ms)
    assert {d for d, m in rec.maps.items() if m} <= set(dev.domains)
    assert total == dev.mapping_count <= dev.max_mappings
    for ep in dev.endpoints:
        d = dev.domain_of(ep)
        want = (None, dev.unattached_bypass()) if d is None else (d, dev.is_bypass_domain(d))
        assert rec.eps[ep] == want


# ------------------------------------------------------------ constants
def test_constants_match_spec():
    # §5.13.3 feature bits; §5.13.6 types and status codes
    assert [(f.name, f.value) for f in Feature] == [
        ("INPUT_RANGE", 0), ("DOMAIN_RANGE", 1), ("MAP_UNMAP", 2), ("BYPASS", 3),
        ("PROBE", 4), ("MMIO", 5), ("BYPASS_CONFIG", 6)]
    assert [(t.name, t.value) for t in ReqType] == [
        ("ATTACH", 1), ("DETACH", 2), ("MAP", 3), ("UNMAP", 4), ("PROBE", 5)]
    assert [s.name for s in Status] == [
        "OK", "IOERR", "UNSUPP", "DEVERR", "INVAL", "RANGE", "NOENT", "FAULT", "NOMEM"]
    assert [s.value for s in Status] == list(range(9))
    # §5.13.6.5: no EXEC flag; MMIO is bit 2.  §5.13.6.3: ATTACH_F_BYPASS bit 0.
    assert (MAP_F_READ, MAP_F_WRITE, MAP_F_MMIO, ATTACH_F_BYPASS) == (1, 2, 4, 1)
    assert (wire.PROBE_T_NONE, wire.PROBE_T_RESV_MEM) == (0, 1)
    assert (ResvSubtype.RESERVED, ResvSubtype.MSI) == (0, 1)
    assert [(r.name, r.value) for r in FaultReason] == [
        ("UNKNOWN", 0), ("DOMAIN", 1), ("MAPPING", 2)]
    assert (wire.FAULT_F_READ, wire.FAULT_F_WRITE, wire.FAULT_F_ADDRESS) == (1, 2, 0x100)


def test_struct_sizes_match_linux_uapi():
    # sizeof() of the Linux structs minus the 4-byte tail (the writable part)
    sizes = {t: wire.size_of(wire.REQUESTS[t]) for t in ReqType}
    assert sizes == {ReqType.ATTACH: 20, ReqType.DETACH: 20, ReqType.MAP: 36,
                     ReqType.UNMAP: 28, ReqType.PROBE: 72}
    structs = (wire.CONFIG, wire.TAIL, wire.RESV_MEM, wire.FAULT)
    assert [wire.size_of(x) for x in structs] == [40, 4, 24, 24]
    assert wire.RESV_MEM_LENGTH == 20


# ------------------------------------------------------- golden layouts
GOLDEN_ATTACH = h("01 000000  01000000  08000000  00000000  00000000")  # domain 1, endpoint 8
GOLDEN_DETACH = h("02 000000  01000000  08000000  0000000000000000")
# The spec's own example: map(domain=1, 0x1000..0x1fff -> 0xa000, READ)
GOLDEN_MAP = h("03 000000  01000000  0010000000000000  ff1f000000000000"
               "00a0000000000000  01000000")
GOLDEN_UNMAP = h("04 000000  01000000  0010000000000000  ff1f000000000000  00000000")
GOLDEN_PROBE = h("05 000000  08000000") + bytes(64)
# RESV_MEM {type=1, length=20, subtype=MSI, start=0x8000000, end=0x80fffff}
GOLDEN_MSI_PROP = h("0100 1400  01 000000  0000000800000000  ffff0f0800000000")


def test_encoders_match_hand_written_bytes():
    assert attach_req(1, 8) == GOLDEN_ATTACH
    assert detach_req(1, 8) == GOLDEN_DETACH
    assert map_req(1, 0x1000, 0x1FFF, 0xA000, MAP_F_READ) == GOLDEN_MAP
    assert unmap_req(1, 0x1000, 0x1FFF) == GOLDEN_UNMAP
    assert probe_req(8) == GOLDEN_PROBE
    assert MSI.prop() == GOLDEN_MSI_PROP
    assert wire.tail(Status.RANGE) == h("05000000")
    # overrides reach every field, reserved ones included
    assert attach_req(1, 8, ATTACH_F_BYPASS, head_reserved=0x030201, reserved=0xAABBCCDD) == h(
        "01 010203  01000000  08000000  01000000  ddccbbaa")
    assert wire.request(ReqType.MAP, type=0x7F)[:1] == b"\x7f"


def test_golden_session_through_handle():
    """Hand-written requests driven through handle(): the spec's §5.13 intro."""
    dev, rec = device({8: [MSI]}, Config(page_size_mask=0x1000, probe_size=32))
    out = dev.handle(GOLDEN_PROBE, 36)
    assert out == GOLDEN_MSI_PROP + bytes(8) + TAIL_OK
    assert dev.handle(GOLDEN_ATTACH, 4) == TAIL_OK
    assert dev.handle(GOLDEN_MAP, 4) == TAIL_OK
    assert dev.translate(8, 0x1234) == 0xA234
    assert dev.handle(GOLDEN_UNMAP, 4) == TAIL_OK
    assert isinstance(dev.translate(8, 0x1234), ViommuFault)
    assert dev.handle(GOLDEN_DETACH, 4) == TAIL_OK
    assert rec.calls[-5:] == [("attach", 8, 1, False), ("map", 1, 0x1000, 0x1000, 0xA000, 1),
                              ("unmap", 1, 0x1000, 0x1000), ("detach", 8, False),
                              ("free_domain", 1)]
    check_mirror(dev, rec)


def test_config_space_bytes():
    c = Config(page_size_mask=0x1000, input_range=(0, 0xFFFFFFFFFFFF), domain_range=(0, 0xFFFF),
               probe_size=512)
    golden = h("0010000000000000  0000000000000000  ffffffffffff0000"
               "00000000 ffff0000  00020000  00 000000")
    assert c.encode() == golden
    assert Config.decode(golden) == c
    with pytest.raises(ValueError):
        Config.decode(golden[:39])


def test_fault_record_bytes():
    f = ViommuFault(FaultReason.MAPPING, 8, 0x1234, write=True)
    assert f.encode() == h("02 000000  02010000  08000000  00000000  3412000000000000")
    # without an address, F_ADDRESS is clear and address zero
    assert ViommuFault(FaultReason.DOMAIN, 9, read=True).encode() == h(
        "01 000000  01000000  09000000  00000000  0000000000000000")


# -------------------------------------------------------------- framing
def test_tail_not_found_returns_buffers_unwritten():
    dev, _ = device()
    for n in (-1, 0, 3):  # §5.13.6: no room for the tail
        assert dev.process(attach_req(1, 8), n) == vi.Response(ReqType.ATTACH, None, b"")
    assert dev.domain_of(8) is None


@pytest.mark.parametrize("t", [0, 6, 0x7F, 0xFF])
def test_unknown_type_is_not_written(t):
    dev, _ = device()
    assert dev.handle(bytes([t]) + bytes(40), 4) == b""  # §5.13.6.2: used length zero


@pytest.mark.parametrize("t", list(ReqType))
def test_short_request_is_ioerr(t):
    dev, _ = device()
    full = wire.request(t)
    for n in (1, len(full) - 1):
        assert dev.handle(full[:n], 4) == h("01000000")
    assert dev.handle(b"", 4) == h("01000000")


def test_trailing_bytes_and_big_buffers():
    dev, _ = device()
    assert dev.handle(attach_req(1, 8) + b"\xff" * 100, 1 << 40) == TAIL_OK  # only the tail
    assert dev.domain_of(8) == 1


def test_head_reserved_is_ignored():
    dev, _ = device()
    assert status(dev, attach_req(1, 8, head_reserved=0xFFFFFF)) is Status.OK  # §5.13.6.2


# --------------------------------------------------------------- ATTACH
def test_attach_reserved_and_flags_are_inval():
    dev, rec = device()
    assert status(dev, attach_req(1, 8, reserved=1)) is Status.INVAL
    assert status(dev, attach_req(1, 8, flags=2)) is Status.INVAL
    assert dev.domains == {}
    nob, _ = device(features=wire.DEFAULT_FEATURES & ~Feature.BYPASS_CONFIG.mask)
    assert status(nob, attach_req(1, 8, ATTACH_F_BYPASS)) is Status.INVAL  # not negotiated


def test_attach_range_and_noent():
    dev, _ = device()
    assert status(dev, attach_req(16, 8)) is Status.RANGE  # domain_range is 0..15
    assert status(dev, attach_req(1, 7)) is Status.NOENT
    anyd, _ = device(features=wire.DEFAULT_FEATURES & ~Feature.DOMAIN_RANGE.mask)
    assert status(anyd, attach_req(0xFFFFFFFF, 8)) is Status.OK  # any domain is valid


def test_attach_moves_endpoint_and_old_domain_ceases():
    dev, rec = device()
    dev.handle(attach_req(1, 8), 4)
    dev.handle(map_req(1, 0, 9, 0x100), 4)
    rec.calls.clear()
    assert status(dev, attach_req(2, 8)) is Status.OK
    assert rec.calls == [("attach", 8, 2, False), ("free_domain", 1)]
    assert dev.domain_of(8) == 2 and 1 not in dev.domains and dev.mapping_count == 0
    rec.calls.clear()
    assert status(dev, attach_req(2, 8)) is Status.OK and rec.calls == []  # already there
    check_mirror(dev, rec)


def test_attach_shared_domain_keeps_it_alive():
    dev, rec = device()
    dev.handle(attach_req(1, 8), 4)
    dev.handle(attach_req(1, 9), 4)
    dev.handle(map_req(1, 0, 9, 0x100), 4)
    assert status(dev, attach_req(2, 8)) is Status.OK
    assert spans(dev) == [(0, 9)] and dev.domains[1].endpoints == {9}
    check_mirror(dev, rec)


def test_attach_bypass_flag_must_match_domain():
    dev, rec = device()
    dev.handle(attach_req(1, 8), 4)
    assert status(dev, attach_req(1, 9, ATTACH_F_BYPASS)) is Status.INVAL
    assert status(dev, attach_req(2, 9, ATTACH_F_BYPASS)) is Status.OK
    assert status(dev, attach_req(2, 8)) is Status.INVAL
    assert dev.domain_of(8) == 1  # a rejected ATTACH leaves the endpoint where it was


def test_attach_refused_by_backend_changes_nothing():
    dev, rec = device()
    dev.handle(attach_req(1, 8), 4)
    rec.fail["attach"] = BackendUnsupported()
    assert status(dev, attach_req(2, 8)) is Status.UNSUPP  # §5.13.6.3.2
    assert dev.domain_of(8) == 1 and set(dev.domains) == {1}
    check_mirror(dev, rec)


def test_attach_endpoint_whose_reserved_region_is_mapped_is_unsupp():
    dev, rec = device({8: [], 9: [ResvRegion(0x20, 0x2F)]})
    dev.handle(attach_req(1, 8), 4)
    dev.handle(map_req(1, 0x28, 0x37, 0x1000), 4)
    assert status(dev, attach_req(1, 9)) is Status.UNSUPP
    assert dev.domain_of(9) is None


# --------------------------------------------------------------- DETACH
def test_detach_rules():
    dev, rec = device()
    dev.handle(attach_req(1, 8), 4)
    assert status(dev, detach_req(1, 7)) is Status.NOENT
    assert status(dev, detach_req(2, 8)) is Status.INVAL  # not attached to that domain
    assert status(dev, detach_req(1, 9)) is Status.INVAL  # endpoint 9 attached nowhere
    rec.calls.clear()
    assert status(dev, detach_req(1, 8, reserved=(1 << 64) - 1)) is Status.OK  # ignored
    assert rec.calls == [("detach", 8, False), ("free_domain", 1)]
    assert dev.domains == {} and dev.dma_mode(8) == "abort"
    # the domain ID is free again, even for a bypass domain
    assert status(dev, attach_req(1, 8, ATTACH_F_BYPASS)) is Status.OK
    check_mirror(dev, rec)


# ------------------------------------------------------------------ MAP
def attached(**kw) -> tuple[VirtioIommu, Recorder]:
    dev, rec = device(**kw)
    assert status(dev, attach_req(1, 8)) is Status.OK
    return dev, rec


@pytest.mark.parametrize("req, want", [
    (map_req(1, 0x1001, 0x1FFF, 0x5000), Status.RANGE),  # virt_start unaligned
    (map_req(1, 0x1000, 0x1FFE, 0x5000), Status.RANGE),  # virt_end + 1 unaligned
    (map_req(1, 0x1000, 0x1FFF, 0x5800), Status.RANGE),  # phys_start unaligned
    (map_req(1, 1 << 48, (1 << 48) + 0xFFF, 0), Status.RANGE),  # past input_range
    (map_req(1, 0x1000, 0x1FFF, 0x5000, flags=8), Status.INVAL),  # undefined flag (EXEC in v0.9)
    (map_req(1, 0x1000, 0x1FFF, 0x5000, flags=1 << 31), Status.INVAL),
    (map_req(1, 0x2000, 0x0FFF, 0x5000), Status.INVAL),  # virt_end < virt_start
    (map_req(2, 0x1000, 0x1FFF, 0x5000), Status.NOENT),
    (map_req(1, 0x1000, 0x1FFF, (1 << 64) - 0x1000), Status.OK),
    (map_req(1, 0x1000, 0x2FFF, (1 << 64) - 0x1000), Status.FAULT),  # phys_end past 2^64
    (map_req(1, 0x1000, 0x1FFF, 0x5000, flags=MAP_F_WRITE), Status.OK),
    (map_req(1, 0x1000, 0x1FFF, 0x5000, flags=0), Status.OK),
])
def test_map_checks(req, want):
    dev, rec = attached(config=Config(page_size_mask=0x1000))
    assert status(dev, req) is want
    assert dev.mapping_count == (want is Status.OK)
    check_mirror(dev, rec)


def test_map_without_input_range_feature_spans_64_bits():
    dev, _ = attached(config=Config(page_size_mask=0x1000),
                      features=wire.DEFAULT_FEATURES & ~Feature.INPUT_RANGE.mask)
    assert status(dev, map_req(1, 1 << 60, (1 << 64) - 1, 0)) is Status.OK


def test_map_mmio_needs_feature():
    dev, _ = attached()
    assert status(dev, map_req(1, 0, 0xF, 0x100, RW | MAP_F_MMIO)) is Status.OK
    nommio, _ = attached(features=wire.DEFAULT_FEATURES & ~Feature.MMIO.mask)
    assert status(nommio, map_req(1, 0, 0xF, 0x100, RW | MAP_F_MMIO)) is Status.INVAL


@pytest.mark.parametrize("s, e", [(0x10, 0x1F), (0x18, 0x27), (0x08, 0x17), (0x00, 0x3F),
                                  (0x14, 0x14)])
def test_map_overlapping_existing_is_inval(s, e):
    dev, rec = attached()
    assert status(dev, map_req(1, 0x10, 0x1F, 0x100)) is Status.OK
    assert status(dev, map_req(1, s, e, 0x900)) is Status.INVAL  # §5.13.6.5.2
    assert spans(dev) == [(0x10, 0x1F)]
    assert status(dev, map_req(1, 0x20, 0x2F, 0x900)) is Status.OK  # adjacent is fine
    check_mirror(dev, rec)


def test_map_single_byte_with_byte_granule():
    dev, _ = attached()
    assert status(dev, map_req(1, 5, 5, 0x105)) is Status.OK
    assert dev.translate(8, 5) == 0x105


@pytest.mark.parametrize("err, want", [(BackendFault(), Status.FAULT),
                                       (BackendNoMem(), Status.NOMEM),
                                       (BackendError(), Status.DEVERR)])
def test_map_backend_errors(err, want):
    dev, rec = attached()
    rec.fail["map"] = err
    assert status(dev, map_req(1, 0, 0xF, 0xDEAD0000)) is want
    assert dev.mapping_count == 0
    check_mirror(dev, rec)


def test_map_unmap_need_map_unmap_feature():
    dev, _ = attached(driver_features=wire.DEFAULT_FEATURES & ~Feature.MAP_UNMAP.mask)
    assert status(dev, map_req(1, 0, 0xF, 0)) is Status.UNSUPP
    assert status(dev, unmap_req(1, 0, 0xF)) is Status.UNSUPP


# ---------------------------------------------------- reserved regions
@pytest.mark.parametrize("s, e", [(0x20, 0x2F), (0x10, 0x20), (0x2F, 0x3F), (0x00, 0xFF)])
def test_map_over_any_attached_endpoints_resv_mem_is_rejected(s, e):
    dev, rec = device({8: [ResvRegion(0x80, 0x8F, ResvSubtype.MSI)],
                       9: [ResvRegion(0x20, 0x2F)]})
    dev.handle(attach_req(1, 8), 4)
    dev.handle(attach_req(1, 9), 4)
    assert status(dev, map_req(1, s, e, 0x1000)) is Status.INVAL  # §5.13.6.8.1.2
    assert status(dev, map_req(1, 0x80, 0x80, 0x1000)) is Status.INVAL  # the MSI window
    assert status(dev, map_req(1, 0x30, 0x7F, 0x1000)) is Status.OK  # between them
    dev.handle(detach_req(1, 9), 4)
    assert status(dev, map_req(1, 0x20, 0x2F, 0x2000)) is Status.OK  # 9's region is gone
    check_mirror(dev, rec)


# ---------------------------------------------------------------- UNMAP
# §5.13.6.6: each example sequence starts with a blank address space.
UNMAP_EXAMPLES = [
    ("1", [], (0, 4), Status.OK, []),
    ("2", [(0, 9)], (0, 9), Status.OK, []),
    ("3", [(0, 4), (5, 9)], (0, 9), Status.OK, []),
    ("4", [(0, 9)], (0, 4), Status.RANGE, [(0, 9)]),
    ("5", [(0, 4), (5, 9)], (0, 4), Status.OK, [(5, 9)]),
    ("6", [(0, 4)], (0, 9), Status.OK, []),
    ("7", [(0, 4), (10, 14)], (0, 14), Status.OK, []),
]


@pytest.mark.parametrize("name, maps, rng, want, left", UNMAP_EXAMPLES,
                         ids=[f"example{e[0]}" for e in UNMAP_EXAMPLES])
def test_unmap_spec_examples(name, maps, rng, want, left):
    dev, rec = attached()
    for s, e in maps:
        assert status(dev, map_req(1, s, e, 0x1000 + s)) is Status.OK
    assert status(dev, unmap_req(1, *rng)) is want
    assert spans(dev) == left
    check_mirror(dev, rec)


@pytest.mark.parametrize("rng", [(0, 7), (3, 9), (2, 12), (5, 12), (1, 14)])
def test_unmap_split_removes_nothing(rng):
    dev, rec = attached()
    for s, e in [(0, 4), (5, 9), (10, 14)]:
        dev.handle(map_req(1, s, e, 0x1000 + s), 4)
    rec.calls.clear()
    assert status(dev, unmap_req(1, *rng)) is Status.RANGE
    assert spans(dev) == [(0, 4), (5, 9), (10, 14)] and rec.calls == []


def test_unmap_other_rules():
    dev, rec = attached()
    dev.handle(map_req(1, 0, 9, 0x100), 4)
    assert status(dev, unmap_req(2, 0, 9)) is Status.NOENT
    assert status(dev, unmap_req(1, 9, 0)) is Status.INVAL
    assert status(dev, unmap_req(1, 0, 9, reserved=1)) is Status.INVAL  # §5.13.6.6.2 MAY
    assert spans(dev) == [(0, 9)]  # ... and we chose not to unmap
    assert status(dev, unmap_req(1, 0, (1 << 64) - 1)) is Status.OK
    assert spans(dev) == []
    check_mirror(dev, rec)


def test_unmap_backend_error_keeps_done_part_removed():
    dev, rec = attached()
    for s in (0, 10, 20):
        dev.handle(map_req(1, s, s + 4, 0x100), 4)

    calls = []

    def flaky(domain, iova, size):
        calls.append(iova)
        if len(calls) == 2:
            raise BackendError()
        rec.maps[domain].pop(iova)

    rec.unmap = flaky
    assert status(dev, unmap_req(1, 0, 30)) is Status.DEVERR
    assert spans(dev) == [(10, 14), (20, 24)] and dev.mapping_count == 2
    check_mirror(dev, rec)


# ------------------------------------------------------ limits (NOMEM)
def test_mapping_limit_is_nomem():
    dev, rec = attached(max_mappings=3)
    for i in range(3):
        assert status(dev, map_req(1, 16 * i, 16 * i + 15, 0)) is Status.OK
    assert status(dev, map_req(1, 100, 115, 0)) is Status.NOMEM
    assert status(dev, unmap_req(1, 0, 15)) is Status.OK
    assert status(dev, map_req(1, 100, 115, 0)) is Status.OK
    dev.handle(detach_req(1, 8), 4)  # the domain goes, with its mappings
    assert dev.mapping_count == 0
    check_mirror(dev, rec)


def test_domain_limit_is_nomem():
    dev, rec = device({8: [], 9: []}, max_domains=1)
    assert status(dev, attach_req(1, 8)) is Status.OK
    assert status(dev, attach_req(2, 9)) is Status.NOMEM
    assert status(dev, attach_req(1, 9)) is Status.OK  # existing domain
    assert status(dev, attach_req(2, 9)) is Status.NOMEM
    dev.handle(detach_req(1, 9), 4)
    assert status(dev, attach_req(2, 8)) is Status.OK  # leaving frees domain 1 first
    check_mirror(dev, rec)


# --------------------------------------------------------------- bypass
@pytest.mark.parametrize("offered, accepted, bypass, mode", [
    ([Feature.BYPASS_CONFIG], [Feature.BYPASS_CONFIG], 1, "bypass"),
    ([Feature.BYPASS_CONFIG], [], 1, "bypass"),  # applies even if not accepted
    ([Feature.BYPASS_CONFIG], [Feature.BYPASS_CONFIG], 0, "abort"),
    ([Feature.BYPASS], [Feature.BYPASS], 0, "bypass"),
    ([Feature.BYPASS], [], 0, "abort"),  # BYPASS must be negotiated
    ([], [], 0, "abort"),
])
def test_unattached_bypass_rule(offered, accepted, bypass, mode):
    dev, rec = device(config=Config(bypass=bypass), features=feature_mask(*offered),
                      driver_features=feature_mask(*accepted))
    assert dev.dma_mode(8) == mode
    assert rec.eps[8] == (None, mode == "bypass")
    got = dev.translate(8, 0x1234, write=True)
    if mode == "bypass":
        assert got == 0x1234
    else:
        assert got == ViommuFault(FaultReason.DOMAIN, 8, 0x1234, write=True)


def test_bypass_config_must_be_offered_to_start_at_one():
    with pytest.raises(ValueError):
        device(config=Config(bypass=1), features=feature_mask(Feature.BYPASS))


def test_write_bypass_config():
    dev, rec = device(config=Config())
    assert dev.config_bytes()[36] == 0
    dev.write_config(36, b"\x03")  # bit 0 counts; the device presents only 0 or 1
    assert dev.config_bytes()[36] == 1 and dev.dma_mode(8) == "bypass"
    assert rec.calls[-2:] == [("detach", 8, True), ("detach", 9, True)]
    dev.write_config(32, b"\0\0\0\0\0")  # probe_size bytes ignored, bypass cleared
    assert dev.config.probe_size == 512 and dev.dma_mode(9) == "abort"
    dev.write_config(0, b"\xff" * 36)  # never reaches bypass
    assert dev.bypass == 0
    locked, _ = device(driver_features=wire.DEFAULT_FEATURES & ~Feature.BYPASS_CONFIG.mask)
    locked.write_config(36, b"\x01")  # §5.13.4.1: only with BYPASS_CONFIG negotiated
    assert locked.bypass == 0


def test_attach_bypass_domain_is_identity():
    dev, rec = device()
    assert status(dev, attach_req(3, 8, ATTACH_F_BYPASS)) is Status.OK
    assert rec.eps[8] == (3, True) and dev.dma_mode(8) == "bypass"
    assert dev.translate(8, 0xABC000, write=True) == 0xABC000
    assert status(dev, map_req(3, 0, 0xF, 0)) is Status.INVAL
    assert status(dev, unmap_req(3, 0, 0xF)) is Status.INVAL


def test_reset_detaches_and_keeps_bypass():
    dev, rec = device(config=Config(bypass=1))
    dev.write_config(36, b"\0")
    dev.handle(attach_req(1, 8), 4)
    dev.handle(map_req(1, 0, 0xFFF, 0), 4)
    dev.report_fault(ViommuFault(FaultReason.UNKNOWN, 8))
    dev.reset()
    assert dev.domains == {} and dev.mapping_count == 0 and len(dev.events) == 0
    assert dev.bypass == 0 and dev.dma_mode(8) == "abort"
    check_mirror(dev, rec)
    dev.system_reset()
    assert dev.bypass == 1 and dev.dma_mode(8) == "bypass"
    check_mirror(dev, rec)
    dev.negotiate(feature_mask(Feature.MAP_UNMAP))
    assert dev.negotiated == feature_mask(Feature.MAP_UNMAP)
    assert dev.dma_mode(8) == "bypass"  # BYPASS_CONFIG offered, bypass = 1


# ------------------------------------------------- translation, faults
def test_translate_permissions_and_msi_window():
    dev, _ = device({8: [MSI]}, Config(page_size_mask=0x1000))
    dev.handle(attach_req(1, 8), 4)
    dev.handle(map_req(1, 0x1000, 0x1FFF, 0xA000, MAP_F_READ), 4)
    dev.handle(map_req(1, 0x2000, 0x2FFF, 0xB000, MAP_F_WRITE), 4)
    assert dev.translate(8, 0x1FFF) == 0xAFFF
    assert dev.translate(8, 0x1000, write=True) == ViommuFault(
        FaultReason.MAPPING, 8, 0x1000, write=True)
    assert dev.translate(8, 0x2000, write=True) == 0xB000
    assert dev.translate(8, 0x2000) == ViommuFault(FaultReason.MAPPING, 8, 0x2000, read=True)
    assert dev.translate(8, 0x3000) == ViommuFault(FaultReason.MAPPING, 8, 0x3000, read=True)
    assert dev.translate(8, MSI.start + 0x40, write=True) == MSI.start + 0x40
    with pytest.raises(ValueError):
        dev.translate(7, 0)


def test_fault_queue_is_bounded():
    dev, _ = device(max_events=2)
    faults = [ViommuFault(FaultReason.MAPPING, 8, a, read=True) for a in (0, 1, 2, 3)]
    assert [dev.report_fault(f) for f in faults] == [True, True, False, False]
    assert dev.events_dropped == 2
    assert dev.pop_event() == faults[0].encode()
    assert dev.report_fault(faults[3])
    assert [dev.pop_event(), dev.pop_event(), dev.pop_event()] == [
        faults[1].encode(), faults[3].encode(), None]
    with pytest.raises(ValueError):
        dev.report_fault(ViommuFault(FaultReason.UNKNOWN, 7))


# ---------------------------------------------------------------- PROBE
def test_probe_output_bytes():
    dev, _ = device({8: [RESV, MSI], 9: []}, BYTE)
    out = dev.handle(probe_req(8), 68)
    # regions sorted by start: MSI (0x8000000) before RESERVED (0xfee00000)
    golden = GOLDEN_MSI_PROP + h(
        "0100 1400  00 000000  0000e0fe00000000  ffffeffe00000000") + bytes(16) + TAIL_OK
    assert out == golden
    props = wire.parse_properties(dev.process(probe_req(8), 68).properties)
    assert [(p.subtype, p.start, p.end) for p in props] == [
        (1, MSI.start, MSI.end), (0, RESV.start, RESV.end)]
    assert dev.handle(probe_req(9), 68) == bytes(64) + TAIL_OK  # nothing: NONE at once
    assert dev.handle(probe_req(8, reserved=(1 << 512) - 1), 68) == golden  # ignored
    assert dev.handle(probe_req(8), 1000) == golden  # larger buffer: probe_size + tail only


def test_probe_properties_fill_probe_size_exactly():
    dev, _ = device({8: [MSI, RESV]}, Config(probe_size=48))
    out = dev.handle(probe_req(8), 52)
    assert len(out) == 52 and len(wire.parse_properties(out[:48])) == 2  # no room for NONE


def test_probe_buffer_smaller_than_probe_size_is_inval():
    dev, _ = device({8: [MSI]}, BYTE)
    # §5.13.6.7.2: no property written, INVAL; the tail ends the driver's buffer
    assert dev.process(probe_req(8), 67) == vi.Response(
        ReqType.PROBE, Status.INVAL, bytes(63) + h("04000000"))
    assert dev.handle(probe_req(8), 4) == h("04000000")


def test_probe_unknown_endpoint_and_feature():
    dev, _ = device({8: [MSI]}, BYTE)
    assert dev.handle(probe_req(7), 68) == bytes(64) + h("06000000")
    noprobe, _ = device(features=wire.DEFAULT_FEATURES & ~Feature.PROBE.mask)
    assert noprobe.handle(probe_req(8), 516) == b""  # §5.13.6.7.2: not written


def test_properties_must_fit_probe_size():
    with pytest.raises(ValueError):
        device({8: [MSI, RESV]}, Config(probe_size=47))
    device({8: [MSI, RESV]}, Config(probe_size=47),
           features=wire.DEFAULT_FEATURES & ~Feature.PROBE.mask)  # no PROBE: no constraint


@pytest.mark.parametrize("regions", [
    [ResvRegion(0, 0xF, ResvSubtype.MSI), ResvRegion(0x10, 0x1F, ResvSubtype.MSI)],
    [ResvRegion(0, 0x10), ResvRegion(0x10, 0x1F)],
    [ResvRegion(0x10, 0x1)],
])
def test_bad_reserved_regions_are_refused(regions):
    with pytest.raises(ValueError):
        device({8: regions})


def test_parse_properties_is_total():
    assert wire.parse_properties(h("0200 0400 aabbccdd 0100 0000")) == [
        {"type": 2, "prop_reserved": 0, "length": 4}, {"type": 1, "prop_reserved": 0, "length": 0}]
    assert wire.parse_properties(h("0100 ffff")) == [
        {"type": 1, "prop_reserved": 0, "length": 0xFFFF}]


# --------------------------------------------------- every status code
def test_every_status_code_is_reachable():
    seen = set()
    dev, rec = attached(max_mappings=1)
    seen.add(status(dev, map_req(1, 0, 0xF, 0)))  # OK
    seen.add(status(dev, b"\x01"))  # IOERR
    seen.add(status(dev, attach_req(1, 8, reserved=1)))  # INVAL
    seen.add(status(dev, map_req(1, 0x10, 0x1F, 0)))  # NOMEM
    seen.add(status(dev, attach_req(99, 8)))  # RANGE
    seen.add(status(dev, attach_req(1, 99)))  # NOENT
    seen.add(status(dev, unmap_req(1, 0, 0xF)))
    seen.add(status(dev, map_req(1, 0x10, 0x1F, (1 << 64) - 1)))  # FAULT
    rec.fail["map"] = BackendError()
    seen.add(status(dev, map_req(1, 0x10, 0x1F, 0)))  # DEVERR
    rec.fail["attach"] = BackendUnsupported()
    seen.add(status(dev, attach_req(2, 9)))  # UNSUPP
    assert seen == set(Status)


# -------------------------------------------------------- untrusted input
@given(st.tuples(st.integers(0, 7), st.binary(max_size=90)), st.integers(-8, 600))
def test_handle_never_raises(req, in_len):
    dev, rec = device({8: [MSI], 9: [ResvRegion(0x20, 0x2F)]}, BYTE, max_mappings=4)
    dev.handle(attach_req(1, 8), 4)
    dev.handle(map_req(1, 0, 0xF, 0), 4)
    t, body = req
    out = dev.handle(bytes([t]) + body, in_len)
    assert len(out) <= max(0, min(in_len, 68))
    if out:
        assert out[-4] in set(Status) and out[-3:] == b"\0\0\0"
    check_mirror(dev, rec)


_ep = st.integers(7, 9)
_dom = st.integers(0, 3)
_addr = st.integers(0, 0x30)
OPS = st.one_of(
    st.builds(lambda d, e, f: attach_req(d, e, f), _dom, _ep, st.integers(0, 1)),
    st.builds(detach_req, _dom, _ep),
    st.builds(lambda d, s, n, f: map_req(d, s, min(s + n, 0xFFFF), 0x1000, f),
              _dom, _addr, st.integers(0, 8), st.integers(0, 7)),
    st.builds(lambda d, s, n: unmap_req(d, s, s + n), _dom, _addr, st.integers(0, 0x20)),
    st.builds(probe_req, _ep),
    st.sampled_from([b"bypass0", b"bypass1"]),
)


@given(st.lists(OPS, max_size=25))
def test_random_sessions_keep_backend_in_step(ops):
    dev, rec = device({8: [ResvRegion(0x20, 0x23)], 9: [MSI]}, BYTE, max_mappings=5,
                      max_domains=2)
    for op in ops:
        if op.startswith(b"bypass"):
            dev.write_config(36, bytes([op[-1] - ord("0")]))
        else:
            r = dev.process(op, 68 if op[0] == ReqType.PROBE else 4)
            assert r.status is not None
        check_mirror(dev, rec)
