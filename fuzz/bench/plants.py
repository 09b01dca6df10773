"""Planted bugs: the benchmark's ground truth (`vsmmu bench bugs`).

Each planted bug is a small patch applied at run time to the otherwise correct
model, reproducing one class of real vSMMU bug (shared reference notes,
smmu-anchors.md §4 and §6; the class number is `Plant.cls`).  The model has no
bug switches: a plant is entered as a context manager (`plant.patch()`) in the
process that runs the model, and everything it changes is undone on exit.
A harness enters the one named by VSMMU_FUZZ_PLANT (fuzz/harness.py).

Every plant names the harness (`target`) whose inputs can reach it, and says
in one line what the buggy code does.  Tests check that each plant is real
(a hand-written program trips an invariant with it and runs clean without it)
and that the set covers every class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from unittest import mock

from vsmmu.arch.faults import Fault, FaultError
from vsmmu.arch.layouts import STE, CmdError, Config, Event, Op
from vsmmu.arch.queue import QueueGeometry
from vsmmu.arch.virtio_layouts import REQUESTS, ReqType, Status, decode, unmap_req
from vsmmu.hw import frontend, smmu, walk
from vsmmu.hw.decode import decode_ste
from vsmmu.hw.memory import BusError
from vsmmu.hw.tlb import Iotlb
from vsmmu.hyp import transfer, virtual
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.hyp.virtio_backend import VirtioBackend
from vsmmu.hyp.virtio_iommu import VirtioIommu
from vsmmu.sw.driver import SmmuDriver

# smmu-anchors.md §6, by number.
CLASSES = {
    1: "vSID not translated or not owned",
    2: "guest STE bits leak into the physical STE",
    3: "guest VMID passed through",
    4: "IOTLB key missing VMID or ASID",
    5: "missing or too-narrow invalidation",
    6: "nested permission or walk gap",
    7: "stream-table bounds",
    8: "address-size checks missing",
    9: "torn or non-hitless STE update",
    10: "CMDQ error semantics",
    11: "queue index math",
    12: "event queue",
    13: "DoS",
    14: "lifetime",
    15: "GBPA/SMMUEN",
    # the virtio-iommu issue's own (no reference section: virtio 1.2 §5.13)
    16: "virtio-iommu request semantics",
    17: "virtio-iommu mappings composed onto stage 2",
}


@dataclass(frozen=True)
class Plant:
    name: str
    cls: int  # CLASSES key
    target: str  # the fuzz target (fuzz/harness.py TARGETS) whose inputs reach it
    doc: str
    patch: Callable[[], AbstractContextManager[None]]


PLANTS: dict[str, Plant] = {}


def _plant(name: str, cls: int, target: str):
    def register(fn: Callable[[], Iterator[None]]) -> Callable[[], Iterator[None]]:
        PLANTS[name] = Plant(name, cls, target, (fn.__doc__ or "").strip().split("\n\n")[0],
                             contextmanager(fn))
        return fn

    return register


def _skipping(cls: type, method: str, owner: type, step: str) -> AbstractContextManager:
    """`cls.method` patched to run with `owner.step` doing nothing (only inside it)."""
    correct = getattr(cls, method)

    def without_step(self, *args, **kwargs):
        with mock.patch.object(owner, step, lambda *a, **k: None):
            return correct(self, *args, **kwargs)

    return mock.patch.object(cls, method, without_step)


def _forward_raw(*ops: Op):
    """Guest command rules that forward the command as the guest wrote it."""
    return {op: (lambda cmd, ctx, op=op: (transfer.Action.FORWARD, transfer._clean(op, cmd)))
            for op in ops}


# ------------------------------------------------------------ the vSMMU
@_plant("vsid-not-translated", 1, "command")
def _vsid_not_translated():
    """CFGI_CD, CFGI_CD_ALL and ATC_INV reach the SMMU with the guest's vSID as the pSID."""
    with mock.patch.dict(transfer.GUEST_COMMANDS,
                         _forward_raw(Op.CFGI_CD, Op.CFGI_CD_ALL, Op.ATC_INV)):
        yield


@_plant("vste-s2-fields-leak", 2, "vste")
def _vste_s2_fields_leak():
    """The vSTE's S2TTB and S2VMID are copied into the nested physical STE with the stage-1 half."""
    correct = virtual.vste_to_pste
    leaky = STE["S2TTB"].mask | STE["S2VMID"].mask

    def to_pste(vste, host):
        out = correct(vste, host)
        if STE.get(out, "CONFIG") == Config.NESTED:
            return out | vste & leaky
        return out

    with mock.patch.object(virtual, "vste_to_pste", to_pste):
        yield


@_plant("vste-bypass-passthrough", 2, "vste")
def _vste_bypass_passthrough():
    """A vSTE with Config=bypass becomes a physical bypass STE, not the guest's stage 2."""
    correct = virtual.vste_to_pste

    def to_pste(vste, host):
        out = correct(vste, host)
        if out == host.s2_ste and STE.get(vste, "CONFIG") == Config.BYPASS:
            return STE.encode(V=1, CONFIG=Config.BYPASS)
        return out

    with mock.patch.object(virtual, "vste_to_pste", to_pste):
        yield


@_plant("guest-vmid-passthrough", 3, "command")
def _guest_vmid_passthrough():
    """Guest TLBI_NH_* commands keep the VMID the guest wrote."""
    with mock.patch.dict(transfer.GUEST_COMMANDS, _forward_raw(
            Op.TLBI_NH_ALL, Op.TLBI_NH_ASID, Op.TLBI_NH_VA, Op.TLBI_NH_VAA)):
        yield


@_plant("nsnh-all-global", 3, "command")
def _nsnh_all_global():
    """A guest's TLBI_NSNH_ALL reaches the SMMU as a global flush of every VMID."""
    with mock.patch.dict(transfer.GUEST_COMMANDS, _forward_raw(Op.TLBI_NSNH_ALL)):
        yield


@_plant("event-psid-leak", 12, "system")
def _event_psid_leak():
    """Events are forwarded to the guest with the physical StreamID."""
    correct = virtual.guest_event

    def to_guest(record, vsid, fetch_ipa, design):
        return correct(record, frontend.EVENT.get(record, "SID"), fetch_ipa, design)

    with mock.patch.object(virtual, "guest_event", to_guest):
        yield


@_plant("vsmmu-disabled-bypass", 15, "system")
def _vsmmu_disabled_bypass():
    """With the vSMMU disabled and its GBPA set to bypass, streams bypass the physical SMMU."""
    correct = virtual.VSmmu.physical_ste

    def physical_ste(self, vsid):
        if not self._f("CR0ACK", "SMMUEN") and not self._f("GBPA", "ABORT"):
            return STE.encode(V=1, CONFIG=Config.BYPASS), None
        return correct(self, vsid)

    with mock.patch.object(virtual.VSmmu, "physical_ste", physical_ste):
        yield


# ------------------------------------------------------------ the hypervisor
@_plant("forgotten-tlbi", 14, "system")
def _forgotten_tlbi():
    """Reassigning a page to another guest skips the TLB invalidation.

    A cached translation keeps reaching the page's new owner (XSA-346's class:
    a page reused before the flush)."""
    with _skipping(Hypervisor, "reassign_page", Hypervisor, "_invalidate_s2"):
        yield


@_plant("s2-unmap-before-sync", 14, "system")
def _s2_unmap_before_sync():
    """A stage-2 unmap queues its invalidations but frees the page without waiting
    for the CMD_SYNC that completes them: the SMMU has not consumed the TLBI yet, so
    a cached translation outlives the page (XSA-346's class, the hardware behind)."""
    with _skipping(Hypervisor, "_invalidate_s2", SmmuDriver, "sync"):
        yield


@_plant("deassign-without-quarantine", 14, "system")
def _deassign_without_quarantine():
    """Taking a device back leaves its physical STE pointing at the guest's stage 2."""
    with _skipping(Hypervisor, "deassign", SmmuDriver, "write_ste"):
        yield


@_plant("torn-ste-update", 9, "system")
def _torn_ste_update():
    """STEs are rewritten in one pass, word 0 (V, Config) first, then one CFGI_STE."""

    def write_entry(self, addr, target, used, invalidate):
        for i in range(8):
            word = target >> (64 * i) & (1 << 64) - 1
            if self.mem.read_int(addr + 8 * i, 8) != word:
                self.mem.write_int(addr + 8 * i, word, 8)
        invalidate()
        return 1

    with mock.patch.object(SmmuDriver, "_write_entry", write_entry):
        yield


# ------------------------------------------------------------ the SMMU
@_plant("iotlb-key-without-vmid", 4, "system")
def _iotlb_key_without_vmid():
    """IOTLB lookups match on ASID and address only: one VM hits another's entries."""

    def lookup(self, vmid, asid, addr):
        found = [e for e in self._entries.values() if e.asid == asid and e.covers(addr)]
        if found:
            self.hits += 1
        else:
            self.misses += 1
        return found

    with mock.patch.object(Iotlb, "lookup", lookup):
        yield


@_plant("tlbi-range-num-off-by-one", 5, "system")
def _tlbi_range_num_off_by_one():
    """Range TLBIs cover NUM << SCALE granules instead of (NUM + 1) << SCALE."""
    correct = smmu.Smmu._tlbi_range

    def tlbi_range(self, c):
        start, length, level = correct(self, c)
        if self.feat.ril and c.TG:
            length -= length // (c.NUM + 1)
        return start, length, level

    with mock.patch.object(smmu.Smmu, "_tlbi_range", tlbi_range):
        yield


@_plant("nested-fetch-skips-s2", 6, "vste")
def _nested_fetch_skips_s2():
    """In a nested walk, CD and stage-1 table addresses are used as PAs, skipping stage 2."""
    with mock.patch.object(smmu.Smmu, "_cd_pa", lambda self, stream, ipa, sid: ipa), \
            mock.patch.object(smmu.Smmu, "_s2_fetch", lambda self, stream, ipa, cls, sid: ipa):
        yield


@_plant("s2-input-size-unchecked", 8, "system")
def _s2_input_size_unchecked():
    """Stage 2 takes IPAs beyond S2T0SZ, indexing past the end of its start table."""
    correct = walk.walk_s2

    def walk_s2(mem, cfg, ipa, *, fault_class=walk.FaultClass.IN, initiator=None):
        ia = 64 - cfg.t0sz
        geo = walk._s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule)
        if not ipa >> ia or ipa >> 48 or geo is None:
            return correct(mem, cfg, ipa, fault_class=fault_class, initiator=initiator)
        g = walk.GRANULES[cfg.granule]
        lsb = g.shift + g.stride * (3 - geo[0])
        try:  # the start-level index is not masked to the table
            desc = mem.read_int(cfg.ttb + (ipa >> lsb) * 8, 8, initiator)
        except BusError:
            raise FaultError(Fault(Event.F_WALK_EABT, s2=True, ipa=ipa)) from None
        if desc & 3 != 3:
            raise FaultError(Fault(Event.F_TRANSLATION, s2=True, ipa=ipa))
        below = replace(cfg, ttb=desc & walk._DESC_OA & -(1 << g.shift), t0sz=64 - lsb,
                        sl0=g.s2_start.index(geo[0] + 1))
        leaf = correct(mem, below, ipa & (1 << lsb) - 1, fault_class=fault_class,
                       initiator=initiator)
        return replace(leaf, in_base=ipa & -leaf.size)

    with mock.patch.object(smmu, "walk_s2", walk_s2), mock.patch.object(walk, "walk_s2", walk_s2):
        yield


@_plant("cmdq-unbudgeted", 13, "command")
def _cmdq_unbudgeted():
    """The vSMMU consumes every queued guest command inside the PROD trap (no budget)."""
    correct = virtual.VSmmu.__init__

    def init(self, *args, **kwargs):
        correct(self, *args, **kwargs)
        self.cmdq_budget = 1 << self.feat.cmdqs

    with mock.patch.object(virtual.VSmmu, "__init__", init):
        yield


@_plant("s2aa64-assert", 13, "smmu")
def _s2aa64_assert():
    """An STE with a stage-2 config and S2AA64=0 trips an assertion (QEMU's, still present)."""

    def decode(word, feat):
        if STE.get(word, "V") and STE.get(word, "CONFIG") in (Config.S2_TRANS, Config.NESTED):
            assert STE.get(word, "S2AA64"), "AArch32 stage 2 is not supported"
        return decode_ste(word, feat)

    with mock.patch.object(smmu, "decode_ste", decode):
        yield


@_plant("events-despite-r0", 12, "smmu")
def _events_despite_r0():
    """Translation faults are recorded even when CD.R=0 or STE.S2R=0 says not to."""
    with mock.patch.object(smmu.Smmu, "_record_allowed", lambda self, fault, stream, ctx: True):
        yield


@_plant("stream-table-unbounded", 7, "smmu")
def _stream_table_unbounded():
    """A StreamID beyond a linear stream table reads an STE from past its end."""
    correct = frontend.SmmuFrontend._ste_addr

    def ste_addr(self, sid):
        try:
            return correct(self, sid)
        except FaultError as e:
            layout = frontend._L["STRTAB_BASE_CFG"]
            cfg = self.regs["STRTAB_BASE_CFG"]
            if e.fault.event != Event.C_BAD_STREAMID or layout.get(cfg, "FMT") == 1:
                raise
            log2 = min(layout.get(cfg, "LOG2SIZE"), self.feat.sidsize)
            base = frontend._L["STRTAB_BASE"].get(self.regs["STRTAB_BASE"], "ADDR")
            return (base & ~((frontend.STE_SIZE << log2) - 1)) + sid * frontend.STE_SIZE

    with mock.patch.object(frontend.SmmuFrontend, "_ste_addr", ste_addr):
        yield


@_plant("cmdq-errors-ignored", 10, "smmu")
def _cmdq_errors_ignored():
    """Illegal commands are skipped instead of stopping the queue with CERROR_ILL."""
    correct = smmu.Smmu.execute

    def execute(self, cmd):
        err = correct(self, cmd)
        return CmdError.NONE if err == CmdError.ILL else err

    with mock.patch.object(smmu.Smmu, "execute", execute):
        yield


class _NoWrapGeometry(QueueGeometry):
    def inc(self, ptr: int) -> int:  # the index wraps, the wrap bit never flips
        return (ptr & ~(self.entries - 1)) | ((ptr + 1) & (self.entries - 1))


class _NeverFullGeometry(QueueGeometry):
    def full(self, prod: int, cons: int) -> bool:
        return False


@_plant("evtq-wrap-bit", 11, "smmu")
def _evtq_wrap_bit():
    """The SMMU's queue pointers wrap their index without toggling the wrap bit."""
    with mock.patch.object(frontend, "QueueGeometry", _NoWrapGeometry):
        yield


@_plant("evtq-overflow-overwrites", 12, "smmu")
def _evtq_overflow_overwrites():
    """A full event queue takes more records, overwriting ones software has not read."""
    with mock.patch.object(frontend, "QueueGeometry", _NeverFullGeometry):
        yield


# ------------------------------------------------------------ virtio-iommu
class _PagesAsPas(dict):
    """A guest's page map that answers a GPA it does not have with the GPA itself."""

    def get(self, key, default=None):
        return super().get(key, key)


@_plant("viommu-gpa-unchecked", 17, "virtio-iommu")
def _viommu_gpa_unchecked():
    """MAP does not check phys_start against the guest's memory: an unknown GPA is a PA."""
    correct = VirtioBackend.map

    def map_(self, domain, iova, size, phys, flags):
        pages, self.guest.pages = self.guest.pages, _PagesAsPas(self.guest.pages)
        try:
            return correct(self, domain, iova, size, phys, flags)
        finally:
            self.guest.pages = pages

    with mock.patch.object(VirtioBackend, "map", map_):
        yield


@_plant("viommu-unmap-no-tlbi", 17, "virtio-iommu")
def _viommu_unmap_no_tlbi():
    """UNMAP removes the composed leaves but completes without invalidating the IOTLB."""
    with _skipping(VirtioBackend, "unmap", VirtioBackend, "_flush"):
        yield


@_plant("viommu-bypass-without-feature", 16, "virtio-iommu")
def _viommu_bypass_without_feature():
    """Unattached endpoints get the guest's stage 2 (bypass), negotiated or not."""
    with mock.patch.object(VirtioBackend, "detach",
                           lambda self, endpoint, bypass: self._install(endpoint,
                                                                         self.guest.s2_ste)):
        yield


@_plant("viommu-split-unmap-partial", 16, "virtio-iommu")
def _viommu_split_unmap_partial():
    """An UNMAP that would split a mapping removes the mappings it covers whole, then says RANGE."""
    correct = VirtioIommu._unmap

    def unmap(self, req):
        status = correct(self, req)
        dom = self.domains.get(req.domain)
        if status == Status.RANGE and dom is not None:
            for m in [m for m in dom.maps.values
                      if req.virt_start <= m.virt_start and m.virt_end <= req.virt_end]:
                correct(self, decode(REQUESTS[ReqType.UNMAP],
                                     unmap_req(req.domain, m.virt_start, m.virt_end)))
        return status

    with mock.patch.object(VirtioIommu, "_unmap", unmap):
        yield


def planted(names: str | None) -> AbstractContextManager[None]:
    """Enter the plants named (comma-separated; nothing when empty)."""
    stack = ExitStack()
    for name in filter(None, (names or "").split(",")):
        if name not in PLANTS:
            raise ValueError(f"unknown planted bug {name!r} (one of {', '.join(PLANTS)})")
        stack.enter_context(PLANTS[name].patch())
    return stack
