"""The physical SMMU alone: malformed structures written straight into its memory.

The smmu harness interprets the same programs (fuzz/program.py) against one
`vsmmu.hw.smmu.Smmu`, brought up by `vsmmu.sw.driver.SmmuDriver` with six streams:

    sid  stream
    0    stage 1: CD table of 4 (S1DSS=substream 0, EATS=translate); CD0 (ASID 1,
         R=1) maps DMA_IOVA to data and the MSI window to a doorbell page;
         CD1 (ASID 2, R=0) maps DMA_IOVA elsewhere; CD2, CD3 invalid
    1    stage 2 only (VMID 1, S2R=1): IPA GUEST_RAM.. -> nested RAM
    2    nested (VMID 2, S2R=1): CD and stage-1 tables in IPA space, CD0 (ASID 3,
         R=1) maps DMA_IOVA to IPA GUEST_RAM
    3    bypass
    4    abort
    5    V=0
    8    beyond the stream table (a master software never configured)

The stream table has 8 entries and the event queue 8 slots, so that a short
program reaches the table bound, the queue's wrap and its overflow.

There is no hypervisor or guest here: a `vste` writes raw STE bytes for SID
`vsid`, a `cd` raw CD bytes for stream `device` (then CFGI and SYNC), a
`pte` a raw descriptor on the walk of `iova` in the stream's stage-1 table (its
stage-2 table when it has none), `cmd` raw commands into the command queue,
`mmio_write` any register, `mem` raw bytes anywhere in the driver's table
pool; `assign`/`deassign` reinstall a stream's STE or abort it, `s2_map`/
`s2_unmap` change stage 2 with the TLB invalidations a hypervisor owes,
`reassign` remaps a stage-1 page of stream 0 (with TLBI), `destroy` resets the
SMMU and `create` brings it up again; `events` and `recover` are the driver's.

Checked after every operation: `no-crash` (nothing raises but the errors software
expects of its own driver calls: timeouts, a halted command queue, unbacked memory)
and the architecture's own rules, `fault-reporting`, `stream-bounds` and
`queue-protocol` (properties/architecture.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from properties.architecture import (
    beyond_table,
    check_consumed,
    check_not_rejected,
    check_reported,
    check_rings,
    check_stream_bounds,
    queue_state,
    rings,
)
from vsmmu.arch.features import Features
from vsmmu.arch.layouts import CD, REGISTERS
from vsmmu.hw.memory import HYP, PAGE_SIZE, PhysMem
from vsmmu.hw.smmu import Smmu
from vsmmu.hyp.host import GUEST_RAM, IPA_BITS, MSI_WINDOW
from vsmmu.platform import DEFAULT_DESIGN
from vsmmu.sw.alloc import Allocator
from vsmmu.sw.driver import SmmuDriver, cd, ste_abort, ste_bypass, ste_nested, ste_s1, ste_s2
from vsmmu.sw.pagetable import IpaView, PageTable

from .hints import Hints
from .program import OP_BY_NAME, OPS, Op
from .program import Op as ProgramOp
from .runner import (
    DMA_BUF,
    DMA_IOVA,
    GUEST_ERRORS,
    PRIV,
    SSV,
    TRANSLATED,
    Session,
    SessionRunner,
    W,
    X,
)
from .snapshot import Reset

LOG2_SIDS = 3  # the rig's stream table: SIDs 0..7
STRAY_SID = 1 << LOG2_SIDS
EVTQ_LOG2 = 3

POOL = (0x1000_0000, 0x40_0000)  # driver tables, queues, page tables
DATA = (0x8000_0000, 0x10_0000)  # what stage-1 and bypass streams reach
NESTED_RAM = (0x9000_0000, 0x10_0000)  # backs IPA [GUEST_RAM, +1 MiB)
DOORBELL = 0x0900_0000
IPA_POOL = (GUEST_RAM + 0x8_0000, 0x8_0000)  # nested stream's CD and stage-1 tables
S2_PAGES = NESTED_RAM[1] // PAGE_SIZE


@dataclass
class Stream:
    sid: int
    ste: int | None  # the STE it was brought up with (`assign` reinstalls it); None: no slot
    port: object = None  # memory its CDs and stage-1 tables are written through
    cd_table: int | None = None
    cdmax: int = 0
    s1: PageTable | None = None  # CD0's table
    s2: PageTable | None = None


@dataclass
class Rig:
    mem: PhysMem
    smmu: Smmu
    drv: SmmuDriver
    streams: list[Stream] = field(default_factory=list)
    s2: PageTable | None = None


def _s2_fields(s2: PageTable, vmid: int) -> int:
    return ste_s2(vmid=vmid, ttb=s2.ttb, t0sz=s2.tsz, sl0=s2.sl0, ps=48, s2r=True)


def build(features: Features | None = None) -> Rig:
    mem = PhysMem(48)
    mem.add(*POOL, HYP)
    for base, size in (DATA, NESTED_RAM, (DOORBELL, PAGE_SIZE)):
        mem.add(base, size)
    alloc = Allocator(*POOL)
    smmu = Smmu(mem, features or Features(), "smmu0")
    drv = SmmuDriver(smmu, mem, alloc, smmu.tick, max_polls=16)
    drv.reset(log2_sids=LOG2_SIDS, evtq_log2=EVTQ_LOG2)
    rig = Rig(mem, smmu, drv)

    # sid 0: stage 1, CDs in physical memory
    table = drv.alloc_cd_table(0, 2)
    pt0 = PageTable(mem, alloc, stage=1, tsz=64 - IPA_BITS)
    pt0.map(DMA_IOVA, DATA[0], DMA_BUF)
    pt0.map(MSI_WINDOW[0], DOORBELL, PAGE_SIZE)
    pt1 = PageTable(mem, alloc, stage=1, tsz=64 - IPA_BITS)
    pt1.map(DMA_IOVA, DATA[0] + 0x1_0000, DMA_BUF)
    drv.write_cd(0, 0, cd(1, pt0.ttb, pt0.tsz, ips=48))
    drv.write_cd(0, 1, cd(2, pt1.ttb, pt1.tsz, ips=48, r=False))
    s1_ste = ste_s1(table.ptr, s1cdmax=2, s1dss=2, eats=1)
    rig.streams.append(Stream(0, s1_ste, mem, table.ptr, 2, pt0))

    # stage 2 shared by sids 1 and 2 (different VMIDs)
    s2 = rig.s2 = PageTable(mem, alloc, stage=2, tsz=64 - IPA_BITS)
    s2.map(GUEST_RAM, NESTED_RAM[0], NESTED_RAM[1])
    s2.map(MSI_WINDOW[0], DOORBELL, PAGE_SIZE)
    rig.streams.append(Stream(1, _s2_fields(s2, 1), s2=s2))

    # sid 2: nested, stage-1 structures in IPA space
    view = IpaView(mem, s2)
    ipa_alloc = Allocator(*IPA_POOL)
    cd_ipa = ipa_alloc.alloc(64 * 2, 64)
    view.write(cd_ipa, bytes(128))
    pt2 = PageTable(view, ipa_alloc, stage=1, tsz=64 - IPA_BITS)
    pt2.map(DMA_IOVA, GUEST_RAM, DMA_BUF)
    view.write(cd_ipa, CD.to_bytes(cd(3, pt2.ttb, pt2.tsz, ips=IPA_BITS)))
    nested = ste_nested(ste_s1(cd_ipa, s1cdmax=1, s1dss=2), _s2_fields(s2, 2))
    rig.streams.append(Stream(2, nested, view, cd_ipa, 1, pt2, s2))

    rig.streams += [Stream(3, ste_bypass()), Stream(4, ste_abort()), Stream(5, 0)]
    for stream in rig.streams:
        drv.write_ste(stream.sid, stream.ste)
    rig.streams.append(Stream(STRAY_SID, None))
    return rig


def hints(rig: Rig) -> Hints:
    """Mutator hints for the rig: its SIDs, ASIDs, VMIDs and structure addresses."""
    drv = rig.drv
    addrs = {drv._strtab.base, drv._cmdq.base, drv._evtq.base}
    for s in rig.streams:
        addrs |= {a for a in (s.cd_table, s.s1 and s.s1.ttb, s.s2 and s.s2.ttb) if a}
    return Hints(
        guests=(0,), smmus=1, devices=len(rig.streams),
        vsids=tuple(s.sid for s in rig.streams), asids=(1, 2, 3), vmids=(1, 2),
        iovas=(DMA_IOVA, GUEST_RAM, MSI_WINDOW[0], DATA[0]),
        ipas=tuple(sorted(addrs)), pages=tuple(range(0, S2_PAGES, 8)),
    )


def _push(rig: Rig, *words: int) -> None:
    """The driver queues commands; the SMMU must not consume an illegal one
    without stopping on it (`check_consumed`), nor stop on one it must perform
    (`check_not_rejected`)."""
    before = rings(rig.smmu)
    try:
        rig.drv.submit(*words)
    except GUEST_ERRORS:
        return
    finally:  # did the queue stop on a command it must perform?
        check_not_rejected(rig.smmu, before)
    check_consumed(rig.smmu, before, rings(rig.smmu), len(words))


# ------------------------------------------------------------ the runner
class PhysicalRunner(SessionRunner):
    """Boots the rig once; every run on it, put back as it was after each."""

    design = DEFAULT_DESIGN  # the physical SMMU alone: no vSMMU, no design

    def __init__(self, features: Features | None = None):
        self.template = build(features)
        self.mem = self.template.mem
        self.reset = Reset(self.template, self.mem)

    def hints(self) -> Hints:
        return hints(self.template)

    @contextmanager
    def session(self) -> Iterator[Session]:
        rig = self.template
        with self.reset:
            yield Session(lambda op: _checked_step(rig, op),
                          lambda: {f"smmu.{key}" for key in rig.smmu.reached})


def _checked_step(rig: Rig, op: ProgramOp) -> None:
    before = rings(rig.smmu)
    HANDLERS[op.spec.name](rig, op)
    if op.spec.name != "mmio_write":  # software may set any pointer it likes
        check_rings(rig.smmu, before)


def _software(handler):
    """A driver-side operation: errors the driver raises on state the program
    broke (timeouts, a halted queue, unbacked tables) end only that operation."""
    def run(rig: Rig, op: ProgramOp) -> None:
        try:
            handler(rig, op)
        except GUEST_ERRORS:
            pass
    return run


def _stream(rig: Rig, index: int) -> Stream:
    return rig.streams[index % len(rig.streams)]


def _mmio_write(rig, op):
    reg = REGISTERS[op.reg % len(REGISTERS)]
    rig.smmu.write(reg.offset, op.value & ((1 << (8 * reg.size)) - 1), reg.size)


def _mmio_read(rig, op):
    reg = REGISTERS[op.reg % len(REGISTERS)]
    rig.smmu.read(reg.offset, reg.size)


@_software
def _vste(rig, op):
    try:
        addr = rig.drv.ste_addr(op.vsid)
    except ValueError:  # beyond the stream table
        return
    rig.mem.write(addr, op.ste)
    rig.drv.cfgi_ste(op.vsid)


@_software
def _cd(rig, op):
    s = _stream(rig, op.device)
    if s.cd_table is None:
        return
    ssid = op.ssid % (1 << s.cdmax)
    s.port.write(s.cd_table + 64 * ssid, op.cd)
    rig.drv.cfgi_cd(s.sid, ssid)


@_software
def _pte(rig, op):
    s = _stream(rig, op.device)
    table = s.s1 or s.s2
    if table is None:
        return
    path = table.descriptors(op.iova & -PAGE_SIZE)
    _, addr, _ = path[min(op.level, len(path) - 1)]
    table.mem.write(addr, op.desc.to_bytes(8, "little"))


def _cmd(rig, op):
    _push(rig, int.from_bytes(op.cmd, "little"))


def _cmd_burst(rig, op):
    _push(rig, *[int.from_bytes(op.cmd, "little")] * (op.count + 1))


def _dma(rig, op):
    s = _stream(rig, op.device)
    f = op.flags
    ssid = op.ssid if f & SSV else None
    kw = dict(write=bool(f & W), exec=bool(f & X), priv=bool(f & PRIV), ssid=ssid,
              translated=bool(f & TRANSLATED))
    if kw["write"]:
        kw["data"] = bytes(range(op.size + 1))
    before = queue_state(rig.smmu)
    beyond = beyond_table(rig.smmu, s.sid)
    result = rig.smmu.dma(s.sid, op.iova, op.size + 1, **kw)
    check_stream_bounds(s.sid, beyond, result.fault)
    if result.fault is not None:
        check_reported(rig.smmu, result.fault, s.sid, ssid, result.recorded, before,
                       kw["translated"])


def _burst(rig, op):
    # Each read a `dma` operation of its own: the same oracles, the same crash frames.
    for i in range(op.count + 1):
        iova = (op.iova + i * PAGE_SIZE) % (1 << 64)
        _dma(rig, Op(OP_BY_NAME["dma"], (op.device, iova, 3, 0, 0)))


def _ats(rig, op):
    s = _stream(rig, op.device)
    f = op.flags
    rig.smmu.ats_request(s.sid, op.iova, ssid=op.ssid if f & SSV else None,
                         write=bool(f & W), exec=bool(f & X), priv=bool(f & PRIV))


def _mem(rig, op):
    base, size = POOL
    rig.mem.write(base + op.offset % (size - 8), op.data)


@_software
def _assign(rig, op):
    s = _stream(rig, op.device)
    if s.ste is not None:
        rig.drv.write_ste(s.sid, s.ste)


@_software
def _deassign(rig, op):
    s = _stream(rig, op.device)
    if s.ste is not None:
        rig.drv.write_ste(s.sid, ste_abort())


def _s2_page(op) -> int:
    return GUEST_RAM + (op.page % S2_PAGES) * PAGE_SIZE


def _s2_invalidate(rig: Rig, ipa: int) -> None:
    for vmid in (1, 2):
        rig.drv.tlbi_s2_ipa(ipa, PAGE_SIZE, vmid=vmid)
    rig.drv.tlbi_nh_all(2)  # the nested stream's combined entries


@_software
def _s2_unmap(rig, op):
    ipa = _s2_page(op)
    rig.s2.unmap(ipa, PAGE_SIZE)
    _s2_invalidate(rig, ipa)


@_software
def _s2_map(rig, op):
    ipa = _s2_page(op)
    if rig.s2.translate(ipa) is None:
        rig.s2.map(ipa, NESTED_RAM[0] + (ipa - GUEST_RAM), PAGE_SIZE)


@_software
def _reassign(rig, op):
    iova = DMA_IOVA + (op.page % (DMA_BUF // PAGE_SIZE)) * PAGE_SIZE
    table = rig.streams[0].s1
    table.unmap(iova, PAGE_SIZE)
    rig.drv.tlbi_va(iova, PAGE_SIZE, asid=1)
    table.map(iova, DATA[0] + (op.dst_page % (DATA[1] // PAGE_SIZE)) * PAGE_SIZE, PAGE_SIZE)


def _destroy(rig, op):
    rig.smmu.reset()


@_software
def _create(rig, op):
    rig.drv.reset(log2_sids=LOG2_SIDS, evtq_log2=EVTQ_LOG2)
    for s in rig.streams:
        if s.ste is not None:
            rig.drv.write_ste(s.sid, s.ste)


@_software
def _events(rig, op):
    rig.drv.events()


@_software
def _recover(rig, op):
    rig.drv.recover()


def _step(rig, op):
    for _ in range(op.count + 1):
        rig.smmu.tick()


def _viommu_req(rig, op):
    pass  # no hypervisor, so no virtio-iommu: the virtio-iommu target fuzzes those


_viommu_map = _viommu_unmap = _viommu_attach = _viommu_config = _viommu_req


# Every operation of the program format, by name: `_<name>` above (a missing one
# fails at import, not in a campaign).
HANDLERS = {spec.name: globals()[f"_{spec.name}"] for spec in OPS}

