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

Checked after every operation (a `Violation`, as for the system runner):
  * `no-crash`: nothing raises but the errors software expects of its own
    driver calls (timeouts, a halted command queue, unbacked memory);
  * `fault-reporting`: a DMA that faults with a fault the architecture makes
    recordable is reported, never swallowed, when the event queue is enabled,
    has room and can be written (no EVENTQ_ABT_ERR): configuration and fetch
    errors always; translation, address-size, access and permission faults
    when the configuration the SMMU used has CD.R=1 (stage 1) or STE.S2R=1
    (stage 2).  The record lands at PROD with the fault's event ID and SID.
    And the converse: such a fault is not recorded when CD.R=0 or STE.S2R=0;
  * `stream-bounds`: a transaction whose StreamID is beyond the stream table
    (SID >> min(STRTAB_BASE_CFG.LOG2SIZE, IDR1.SIDSIZE) != 0) ends in
    C_BAD_STREAMID, never in an STE read from past the table;
  * `queue-protocol`, read from the registers as software sees them: an
    undefined command opcode, or CMD_SYNC with CS=0b11, stops the command
    queue with CERROR_ILL; while CMDQ_ERR is active the queue does not move;
    neither queue's PROD and CONS ever drift more than its size apart (the
    SMMU never overwrites events software has not consumed).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from properties.violations import Violation
from vsmmu.arch.faults import RECORD_CONTROLLED, Fault
from vsmmu.arch.features import Features
from vsmmu.arch.layouts import CD, COMMANDS, EVENT, REG, REGISTERS, Event, Op
from vsmmu.arch.queue import QueueGeometry
from vsmmu.hw.memory import HYP, PAGE_SIZE, PhysMem
from vsmmu.hw.smmu import Smmu
from vsmmu.hyp.hypervisor import GUEST_RAM, IPA_BITS, MSI_WINDOW
from vsmmu.sw.alloc import Allocator
from vsmmu.sw.driver import SmmuDriver, cd, ste_abort, ste_bypass, ste_nested, ste_s1, ste_s2
from vsmmu.sw.pagetable import IpaView, PageTable

from .mutate import Hints
from .program import OPS
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

FAULT_REPORTING = "fault-reporting"
STREAM_BOUNDS = "stream-bounds"
QUEUE_PROTOCOL = "queue-protocol"
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


# ------------------------------------------------------------ the event queue
@dataclass(frozen=True)
class _QueueState:
    enabled: bool
    full: bool
    prod: int
    abort_active: bool
    geometry: QueueGeometry


def _reg(smmu: Smmu, name: str) -> int:
    r = REG[name]
    return smmu.read(r.offset, r.size)


def _queue_state(smmu: Smmu) -> _QueueState:
    """The event queue as software reads it from the registers."""
    layout = REG["EVENTQ_BASE"].layout
    base = _reg(smmu, "EVENTQ_BASE")
    geo = QueueGeometry.from_base_reg(layout.get(base, "ADDR"), layout.get(base, "LOG2SIZE"),
                                      REG["IDR1"].layout.get(_reg(smmu, "IDR1"), "EVENTQS"), 32)
    prod = REG["EVENTQ_PROD"].layout.get(_reg(smmu, "EVENTQ_PROD"), "WR")
    cons = REG["EVENTQ_CONS"].layout.get(_reg(smmu, "EVENTQ_CONS"), "RD")
    gerror = REG["GERROR"].layout
    active = gerror.get(_reg(smmu, "GERROR") ^ _reg(smmu, "GERRORN"), "EVENTQ_ABT_ERR")
    return _QueueState(bool(REG["CR0ACK"].layout.get(_reg(smmu, "CR0ACK"), "EVENTQEN")),
                       geo.full(prod, cons), prod, bool(active), geo)


def record_rule(smmu: Smmu, fault: Fault, sid: int, ssid: int | None) -> tuple[bool, str] | None:
    """Whether the architecture requires (True) or forbids (False) recording `fault`,
    with the control that says so; None when the configuration the SMMU used is no
    longer cached, so we cannot tell."""
    if fault.event not in RECORD_CONTROLLED:
        return True, "always"
    stream = smmu.config_cache.get_ste(sid)
    if stream is None:
        return None
    if fault.s2:
        return stream.s2_record, f"STE.S2R={int(stream.s2_record)}"
    ctx = smmu.config_cache.get_cd(sid, ssid or 0) if stream.stage1 else None
    return None if ctx is None else (ctx.record, f"CD.R={int(ctx.record)}")


# ------------------------------------------------------------ queue protocol
def _field(smmu: Smmu, reg: str, name: str) -> int:
    return REG[reg].layout.get(_reg(smmu, reg), name)


def _cmdq_error(smmu: Smmu) -> bool:
    return bool(REG["GERROR"].layout.get(_reg(smmu, "GERROR") ^ _reg(smmu, "GERRORN"),
                                         "CMDQ_ERR"))


@dataclass(frozen=True)
class _Ring:
    prod: int
    cons: int  # the whole CONS register (the command queue's holds ERR too)
    log2: int

    @property
    def distance(self) -> int:
        """Entries from CONS to PROD, wrap bit included: at most 2^log2 when sane."""
        mask = (2 << self.log2) - 1
        return ((self.prod & mask) - (self.cons & mask)) & mask


def _rings(smmu: Smmu) -> dict[str, _Ring | int | None]:
    """Both queues as software reads them (enabled ones only), and GERRORN while
    CMDQ_ERR is active (else None)."""
    # An error acknowledged during the operation (GERRORN written) lets the queue go on.
    out: dict[str, _Ring | int | None] = {
        "cmdq_error": _reg(smmu, "GERRORN") if _cmdq_error(smmu) else None}
    for q in ("CMDQ", "EVENTQ"):
        if _field(smmu, "CR0ACK", f"{q}EN"):
            log2 = min(_field(smmu, f"{q}_BASE", "LOG2SIZE"), _field(smmu, "IDR1", f"{q}S"))
            out[q] = _Ring(_field(smmu, f"{q}_PROD", "WR"), _reg(smmu, f"{q}_CONS"), log2)
    return out


def _check_rings(smmu: Smmu, before: dict[str, _Ring | int | None]) -> None:
    after = _rings(smmu)
    cmdq_before, cmdq_after = before.get("CMDQ"), after.get("CMDQ")
    if (before["cmdq_error"] is not None and before["cmdq_error"] == after["cmdq_error"]
            and isinstance(cmdq_before, _Ring) and isinstance(cmdq_after, _Ring)
            and cmdq_before.cons != cmdq_after.cons):
        raise Violation(QUEUE_PROTOCOL, dict(queue="cmdq", problem="moved while CMDQ_ERR",
                                             cons_before=cmdq_before.cons,
                                             cons_after=cmdq_after.cons))
    for q, smmu_side in (("CMDQ", "cons"), ("EVENTQ", "prod")):
        old, new = before.get(q), after.get(q)
        # Only the SMMU's own pointer is its responsibility (software may write the other).
        if (isinstance(old, _Ring) and isinstance(new, _Ring) and old.log2 == new.log2
                and getattr(old, smmu_side) != getattr(new, smmu_side)
                and old.distance <= 1 << old.log2 < new.distance):
            raise Violation(QUEUE_PROTOCOL, dict(queue=q.lower(), problem="overrun",
                                                 prod=new.prod, cons=new.cons, log2=new.log2))


def _illegal(word: int) -> bool:
    """Commands every SMMUv3 rejects with CERROR_ILL: an undefined opcode, or
    CMD_SYNC with the reserved CS=0b11."""
    op = word & 0xFF
    return op not in COMMANDS or (op == Op.SYNC and COMMANDS[Op.SYNC].get(word, "CS") == 0b11)


def _push(rig: Rig, *words: int) -> None:
    """The driver queues commands; the SMMU must not consume an illegal one
    without stopping on it.  What it consumed is read back from the registers
    (CONS before and after) and the queue memory they point at."""
    before = _rings(rig.smmu)
    try:
        rig.drv.submit(*words)
    except GUEST_ERRORS:
        return
    after = _rings(rig.smmu)
    old, new = before.get("CMDQ"), after.get("CMDQ")
    if (before["cmdq_error"] is not None or after["cmdq_error"] is not None
            or not isinstance(old, _Ring) or not isinstance(new, _Ring) or old.log2 != new.log2
            or old.distance + len(words) >= 1 << old.log2):  # a slot may be reused: unsure
        return
    mask, entries = (2 << old.log2) - 1, 1 << old.log2
    base = _field(rig.smmu, "CMDQ_BASE", "ADDR") & ~((16 << old.log2) - 1)
    for k in range(((new.cons & mask) - (old.cons & mask)) & mask):
        slot = base + ((old.cons + k) & (entries - 1)) * 16
        word = rig.mem.read_int(slot, 16)
        if _illegal(word):
            raise Violation(QUEUE_PROTOCOL, dict(queue="cmdq", problem="illegal command consumed",
                                                 command=word, slot=slot))


# ------------------------------------------------------------ the runner
class PhysicalRunner(SessionRunner):
    """Boots the rig once; each run gets a private copy, memory rolled back after."""

    def __init__(self, features: Features | None = None):
        self.template = build(features)
        self.mem = self.template.mem
        self.mem.checkpoint()

    def hints(self) -> Hints:
        return hints(self.template)

    @contextmanager
    def session(self) -> Iterator[Session]:
        rig = copy.deepcopy(self.template, {id(self.mem): self.mem})
        try:
            yield Session(lambda op: _checked_step(rig, op),
                          lambda: {f"smmu.{key}" for key in rig.smmu.reached})
        finally:
            self.mem.rollback()


def _checked_step(rig: Rig, op: ProgramOp) -> None:
    before = _rings(rig.smmu)
    HANDLERS[op.spec.name](rig, op)
    if op.spec.name != "mmio_write":  # software may set any pointer it likes
        _check_rings(rig.smmu, before)


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
    before = _queue_state(rig.smmu)
    beyond = _beyond_table(rig.smmu, s.sid)
    result = rig.smmu.dma(s.sid, op.iova, op.size + 1, **kw)
    if beyond and (result.fault is None or result.fault.event != Event.C_BAD_STREAMID):
        raise Violation(STREAM_BOUNDS, dict(sid=s.sid, table_log2=beyond, got=(
            result.fault.event.name if result.fault else "translated")))
    if result.fault is not None:
        _check_reported(rig.smmu, result.fault, s.sid, ssid, result.recorded, before)


def _beyond_table(smmu: Smmu, sid: int) -> int | None:
    """The stream table's log2 size when `sid` is beyond it and the SMMU must say
    C_BAD_STREAMID (None: within it, translation off, or its STE already cached)."""
    if not _field(smmu, "CR0ACK", "SMMUEN") or smmu.config_cache.get_ste(sid) is not None:
        return None
    log2 = min(_field(smmu, "STRTAB_BASE_CFG", "LOG2SIZE"), _field(smmu, "IDR1", "SIDSIZE"))
    return log2 if sid >> log2 else None


def _check_reported(smmu: Smmu, fault: Fault, sid: int, ssid: int | None, recorded: bool,
                    before: _QueueState) -> None:
    rule = record_rule(smmu, fault, sid, ssid)
    if rule is None:
        return
    required, why = rule
    if not required:
        if recorded:
            raise Violation(FAULT_REPORTING, dict(event=fault.event.name, sid=sid, ssid=ssid,
                                                  control=why, problem="recorded"))
        return
    if not before.enabled or before.full:
        return
    after = _queue_state(smmu)
    if before.abort_active or after.abort_active:
        return  # the queue's memory is unbacked: EVENTQ_ABT_ERR reports the loss
    witness = dict(event=fault.event.name, sid=sid, ssid=ssid, s2=fault.s2, control=why)
    if not recorded or after.prod != before.geometry.inc(before.prod):
        raise Violation(FAULT_REPORTING, dict(witness, problem="not recorded"))
    record = smmu.mem.read_int(before.geometry.addr(before.prod), 32)
    if (EVENT.get(record, "ID"), EVENT.get(record, "SID")) != (fault.event, sid):
        raise Violation(FAULT_REPORTING, dict(witness, problem="wrong record",
                                              record_id=EVENT.get(record, "ID")))


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

