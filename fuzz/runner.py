"""Run fuzz programs on a booted system, every invariant checked after every step.

`boot()` brings up the platform the way real software would: the hypervisor,
then each guest's kernel programming its vSMMUs (reset, stream table,
queues), one stage-1 domain per assigned device with a DMA buffer at
`DMA_IOVA` and the MSI window mapped.  Programs start from that state, so
their typed writes land on structures the vSMMU and SMMU actually read.

`Runner` boots once and runs every program on that one booted system; after
each run it puts every object back in place from a snapshot (fuzz/snapshot.py)
and rolls physical memory back from its write journal: runs are independent
and deterministic, and a reset copies no object.

Errors a guest's own software hits (its driver timing out on a queue the
program halted, a table it cannot grow) are the guest's business and end
only that operation; a `Violation` from the monitor or any other exception
ends the run: that is a finding.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace

from properties.architecture import check_consumed, check_not_rejected, check_rings, rings
from properties.monitor import Monitor
from properties.violations import NO_CRASH, Violation
from vsmmu.arch.faults import FaultError
from vsmmu.arch.layouts import COMMANDS, REGISTERS, Op
from vsmmu.arch.virtio_layouts import (
    ATTACH_F_BYPASS,
    U64_MAX,
    attach_req,
    detach_req,
    map_req,
    unmap_req,
)
from vsmmu.guests.guest import Domain, GuestKernel
from vsmmu.guests.virtio_guest import ViommuDomain, ViommuError, VirtioGuestKernel
from vsmmu.hw.memory import PAGE_SIZE, BusError
from vsmmu.hyp.capacity import check_bootable
from vsmmu.hyp.host import GUEST_RAM
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.platform import GuestSpec, Platform, PlatformError, default_platform, load_platform
from vsmmu.sw.alloc import OutOfMemory
from vsmmu.sw.driver import CommandError, DriverTimeout
from vsmmu.sw.pagetable import MappingError

from .crossings import Crossings
from .program import GUEST_SLOTS, OPS
from .program import Op as ProgramOp
from .snapshot import Reset

DMA_IOVA = 0x1000_0000  # each device's boot domain maps DMA_BUF bytes here
DMA_BUF = 0x4000
FUZZ_RAM_MIB = 1  # guests of the fuzzing platform: small, so a run's copy is cheap
W, X, PRIV, SSV, TRANSLATED, ATOMIC = 1, 2, 4, 8, 16, 32  # dma/ats flags
GUEST_ERRORS = (DriverTimeout, CommandError, MappingError, OutOfMemory, BusError, FaultError,
                ViommuError)


def fuzz_platform(viommu: str = "smmuv3") -> Platform:
    """The embedded default topology (2 guests x 2 SMMUs, overlapping SIDs) with
    1 MiB guests: what `vsmmu fuzz` runs when no platform file is given; with
    `viommu="virtio"` the guests have a virtio-iommu instead of vSMMUs."""
    p = default_platform()
    return Platform(p.smmus, tuple(GuestSpec(g.name, FUZZ_RAM_MIB, viommu) for g in p.guests),
                    p.devices)


def platform_for(target: str, file: str | None = None,
                 design: str | None = None) -> Platform | None:
    """The platform a fuzz target's programs run on: `file` when given (raises
    PlatformError when it is bad, or when the hypervisor could not boot it, or when
    it has no device for programs to drive), else the embedded one, of virtio-iommu
    guests for the virtio-iommu target (None: the default); `design`, when given,
    replaces the platform's vSMMU design (PlatformError if there is none of that
    name)."""
    if not file:
        platform = fuzz_platform("virtio") if target == "virtio-iommu" else None
    else:
        platform = load_platform(file)
        check_bootable(platform)
        if not platform.devices:
            raise PlatformError(f"{file}: no device: fuzz programs need at least one to "
                                "assign, DMA from and invalidate")
    if design is None:
        return platform
    return replace(platform or fuzz_platform(), design=design)


@dataclass
class System:
    hyp: Hypervisor
    kernels: dict[str, GuestKernel | VirtioGuestKernel]
    domains: dict[str, Domain | ViommuDomain]  # device -> its boot domain
    monitor: Monitor | None
    crossings: Crossings | None = None  # coverage: fuzz/crossings.py


@dataclass
class RunResult:
    ops: int  # operations executed
    violation: Violation | None = None  # an invariant failed (no-crash: an exception)
    traceback: str | None = None  # for no-crash findings
    coverage: set[str] = field(default_factory=set)  # event and command names reached

    @property
    def ok(self) -> bool:
        return self.violation is None


def _kernel(hyp: Hypervisor, name: str) -> GuestKernel | VirtioGuestKernel:
    if hyp.guests[name].viommu is not None:
        return VirtioGuestKernel(hyp, name)
    kernel = GuestKernel(hyp, name)
    for drv in kernel.drivers.values():
        drv.max_polls = 16  # a fuzzed guest may halt its own queues: don't spin
    return kernel


def boot(platform: Platform | None = None, *, monitor: bool = True, z3: bool = True) -> System:
    hyp = Hypervisor(platform or fuzz_platform())
    kernels = {name: _kernel(hyp, name) for name in hyp.guests}
    domains = {}
    for device, (guest, _) in sorted(hyp.assigned.items()):
        kernel = kernels[guest]
        dom = kernel.domain()
        kernel.attach(device, dom)
        kernel.dma_map(dom, DMA_IOVA, kernel.buffer(DMA_BUF), DMA_BUF)
        kernel.map_msi(dom)
        domains[device] = dom
    system = System(hyp, kernels, domains, Monitor(hyp, z3_checks=z3) if monitor else None,
                    Crossings(hyp))
    if system.monitor:
        system.monitor.check()
    return system


class Session:
    """One program run an operation at a time, on a private copy of the booted
    system: `step` runs an operation and the checks after it."""

    def __init__(self, execute: Callable[[ProgramOp], None], coverage: Callable[[], set[str]]):
        self._execute, self._coverage = execute, coverage
        self.result = RunResult(0)

    def step(self, op: ProgramOp) -> bool:
        """False once a violation (or any other exception: no-crash) ended the run."""
        if self.result.violation is not None:
            return False
        i = self.result.ops
        self.result.ops += 1
        try:
            self._execute(op)
        except Violation as v:
            v.step = i
            self.result.violation = v
        except Exception as e:  # noqa: BLE001 - any other exception is a finding
            self.result.violation = Violation(NO_CRASH, {"exception": type(e).__name__,
                                                         "message": str(e)[:200],
                                                         "op": op.text()}, i)
            self.result.traceback = traceback.format_exc()
        return self.result.violation is None

    def finish(self) -> RunResult:
        self.result.coverage = self._coverage()
        return self.result


class SessionRunner:
    """`run` for a runner whose `session()` gives a fresh `Session`."""

    def session(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def run(self, ops: list[ProgramOp],
            progress: Callable[[int, int], None] | None = None) -> RunResult:
        """Run `ops`, every check after each; `progress(done, total)` after each step."""
        with self.session() as s:
            for i, op in enumerate(ops):
                if not s.step(op):
                    break
                if progress is not None:
                    progress(i + 1, len(ops))
            return s.finish()


class Runner(SessionRunner):
    def __init__(self, platform: Platform | None = None, *, monitor: bool = True,
                 z3: bool = True):
        self.template = boot(platform, monitor=monitor, z3=z3)
        self.mem = self.template.hyp.mem
        self.reset = Reset(self.template, self.mem)

    @property
    def design(self) -> str:
        return self.template.hyp.design.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The booted system, put back as it was after the run."""
        system = self.template
        with self.reset:
            yield Session(lambda op: _checked_step(system, op), lambda: _coverage(system))


def _checked_step(system: System, op: ProgramOp) -> None:
    execute(system, op)
    if system.monitor:
        system.monitor.check()


def _coverage(system: System) -> set[str]:
    """What the run made the SMMUs do ("smmu.event:C_BAD_STE"), what guests made
    their vSMMUs do ("vsmmu.cmd:TLBI_NH_ASID") and their virtio-iommus answer
    ("viommu.status:RANGE"), and which boundary crossings guest addresses made
    ("cross.vsmmu.evtq:other-guest")."""
    reached = {f"smmu.{key}" for phys in system.hyp.smmus.values() for key in phys.smmu.reached}
    reached |= system.crossings.reached
    for guest in system.hyp.guests.values():
        for vsmmu in guest.vsmmus.values():
            reached |= {f"vsmmu.{key}" for key in vsmmu.reached}
        if guest.viommu is not None:
            reached |= {f"viommu.{key}" for key in guest.viommu.reached}
    return reached


# ------------------------------------------------------------ operations
def _guest(system: System, slot: int) -> str | None:
    name = f"g{slot}"
    return name if name in system.hyp.guests else None


def _at(items: list, index: int):
    return items[index % len(items)] if items else None


def _vsmmu(system: System, slot: int, smmu: int):
    guest = _guest(system, slot)
    if guest is None:
        return None, None, None
    vsmmus = system.hyp.guests[guest].vsmmus  # none: a virtio-iommu guest
    name = _at(list(vsmmus), smmu)  # one per physical SMMU, or one for all (a design's)
    return (guest, name, vsmmus[name]) if name is not None else (None, None, None)


def _device(system: System, index: int) -> str:
    return _at(list(system.hyp.devices), index)


def _push(system: System, guest: str, smmu: str, *cmds: int) -> None:
    """The guest's driver queues commands.  With the invariants on, its vSMMU must
    behave as an SMMUv3 to it (properties/architecture.py `queue-protocol`): no
    illegal command consumed without stopping on it, no progress while CMDQ_ERR."""
    vsmmu = system.hyp.guests[guest].vsmmus[smmu]
    if not system.monitor:
        system.kernels[guest].drivers[smmu].submit(*cmds)
        return
    before = rings(vsmmu)
    try:
        try:
            system.kernels[guest].drivers[smmu].submit(*cmds)
        finally:  # did its queue stop on a command it must perform?
            check_not_rejected(vsmmu, before)
        after = rings(vsmmu)
        check_rings(vsmmu, before, after)
        check_consumed(vsmmu, before, after, len(cmds))
    except Violation as v:
        v.witness["vsmmu"] = vsmmu.name
        raise


def execute(system: System, op: ProgramOp) -> None:
    """One operation on a booted system (no invariant check: the caller's monitor)."""
    try:
        HANDLERS[op.spec.name](system, op)
    except GUEST_ERRORS:
        pass  # the guest's own software failed on state it (the program) broke


def _mmio_write(system, op):
    _, _, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is not None:
        reg = REGISTERS[op.reg % len(REGISTERS)]
        vsmmu.write(reg.offset, op.value & ((1 << (8 * reg.size)) - 1), reg.size)


def _mmio_read(system, op):
    _, _, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is not None:
        reg = REGISTERS[op.reg % len(REGISTERS)]
        vsmmu.read(reg.offset, reg.size)


def _vste(system, op):
    guest, smmu, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is None:
        return
    addr = vsmmu._ste_addr(op.vsid)  # where the guest's own table puts it
    system.hyp.guests[guest].view.write(addr, op.ste)
    # Leaf=1, as Linux's arm_smmu_sync_ste_for_sid issues it (and pKVM requires).
    _push(system, guest, smmu, COMMANDS[Op.CFGI_STE].encode(OP=Op.CFGI_STE, SID=op.vsid,
                                                            LEAF=1))


def _own_device(system, slot, index):
    guest, device = _guest(system, slot), _device(system, index)
    if guest is None or system.hyp.assigned.get(device, (None,))[0] != guest:
        return None, None
    return guest, device


def _cd(system, op):
    guest, device = _own_device(system, op.guest, op.device)
    if guest is None or not system.kernels[guest].drivers:  # no vSMMU: no CDs
        return
    smmu, vsid = system.kernels[guest].vsid(device)
    try:
        addr = system.kernels[guest].drivers[smmu].cd_addr(vsid, op.ssid)
    except ValueError:  # no CD table, or an SSID beyond it: nothing to write
        return
    system.hyp.guests[guest].view.write(addr, op.cd)
    _push(system, guest, smmu,
          COMMANDS[Op.CFGI_CD].encode(OP=Op.CFGI_CD, SID=vsid, SSID=op.ssid, LEAF=1))


def _pte(system, op):
    guest, device = _own_device(system, op.guest, op.device)
    dom = system.domains.get(device) if guest else None
    if not isinstance(dom, Domain) or device not in dom.devices:  # no guest stage 1
        return
    path = dom.table.descriptors(op.iova)
    _, addr, _ = path[min(op.level, len(path) - 1)]
    system.hyp.guests[guest].view.write_int(addr, op.desc, 8)


def _cmd(system, op):
    guest, smmu, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is not None:
        _push(system, guest, smmu, int.from_bytes(op.cmd, "little"))


def _cmd_burst(system, op):
    guest, smmu, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is not None:
        _push(system, guest, smmu, *[int.from_bytes(op.cmd, "little")] * (op.count + 1))


def _dma(system, op):
    f = op.flags
    kw = dict(write=bool(f & W), exec=bool(f & X), priv=bool(f & PRIV),
              ssid=op.ssid if f & SSV else None, translated=bool(f & TRANSLATED),
              atomic=bool(f & ATOMIC))
    if kw["write"]:
        kw["data"] = bytes(range(op.size + 1))
    device = _device(system, op.device)
    system.crossings.dma(device, op.iova)
    system.hyp.dma(device, op.iova, op.size + 1, **kw)


def _burst(system, op):
    system.hyp.burst(_device(system, op.device), op.iova, op.count + 1)


def _ats(system, op):
    device = system.hyp.devices[_device(system, op.device)]
    smmu = system.hyp.smmus[device.smmu].smmu
    f = op.flags
    smmu.ats_request(device.sid, op.iova, ssid=op.ssid if f & SSV else None,
                     write=bool(f & W), exec=bool(f & X), priv=bool(f & PRIV))
    system.hyp.route_events()


def _mem(system, op):
    guest = _guest(system, op.guest)
    if guest is not None:
        ram = system.hyp.guests[guest].ram
        system.hyp.guests[guest].view.write(GUEST_RAM + op.offset % ram, op.data)


def _assign(system, op):
    device, guest = _device(system, op.device), _guest(system, op.guest)
    if guest is not None and device not in system.hyp.assigned \
            and system.hyp.takes_devices(guest):
        system.hyp.assign(device, guest)


def _deassign(system, op):
    device = _device(system, op.device)
    if device in system.hyp.assigned:
        system.hyp.deassign(device)


def _page(system, guest, page):
    return GUEST_RAM + (page % (system.hyp.guests[guest].ram // PAGE_SIZE)) * PAGE_SIZE


def _s2_unmap(system, op):
    guest = _guest(system, op.guest)
    if guest is not None:
        system.hyp.unmap(guest, _page(system, guest, op.page), PAGE_SIZE)


def _s2_map(system, op):
    guest = _guest(system, op.guest)
    if guest is not None:
        ipa = _page(system, guest, op.page)
        if ipa not in system.hyp.guests[guest].pages:
            system.hyp.map(guest, ipa, PAGE_SIZE)


def _reassign(system, op):
    src, dst = _guest(system, op.guest), _guest(system, op.dst)
    if src is None or dst is None or src == dst:
        return
    ipa = _page(system, src, op.page)
    target = system.hyp.guests[dst]
    dst_ipa = GUEST_RAM + target.ram + op.dst_page * PAGE_SIZE  # beyond its RAM: free
    if ipa in system.hyp.guests[src].pages and dst_ipa not in target.pages:
        system.hyp.reassign_page(src, ipa, dst, dst_ipa)


def _destroy(system, op):
    guest = _guest(system, op.guest)
    if guest is not None:
        system.hyp.destroy_guest(guest)
        system.kernels.pop(guest)
        for device in [d for d, dom in system.domains.items()
                       if system.hyp.assigned.get(d, (guest,))[0] == guest]:
            system.domains.pop(device)


def _create(system, op):
    name = f"g{op.guest % GUEST_SLOTS}"
    if name not in system.hyp.guests:
        kinds = [g.viommu for g in system.hyp.platform.guests] or ["smmuv3"]
        system.hyp.create_guest(GuestSpec(name, FUZZ_RAM_MIB, kinds[0]))
        system.kernels[name] = _kernel(system.hyp, name)


def _events(system, op):
    virtio = _viommu(system, op.guest)
    if virtio is not None:
        virtio.events()
        return
    guest, smmu, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is not None:
        system.kernels[guest].drivers[smmu].events()


def _recover(system, op):
    guest, smmu, vsmmu = _vsmmu(system, op.guest, op.smmu)
    if vsmmu is not None:
        system.kernels[guest].drivers[smmu].recover()


def _step(system, op):
    for _ in range(op.count + 1):
        system.hyp.step()


def _viommu(system, slot) -> VirtioGuestKernel | None:
    kernel = system.kernels.get(_guest(system, slot) or "")
    return kernel if isinstance(kernel, VirtioGuestKernel) else None


def _viommu_req(system, op):
    kernel = _viommu(system, op.guest)
    if kernel is not None:
        kernel.dev.process(op.req[: op.len], op.in_len)


def _last_iova(op) -> int:
    """The last byte of the pages+1 pages at op.iova (wrapping: then end < start)."""
    return (op.iova + (op.pages + 1) * PAGE_SIZE - 1) & U64_MAX


def _viommu_map(system, op):
    kernel = _viommu(system, op.guest)
    if kernel is not None:
        kernel.dev.process(map_req(op.domain, op.iova, _last_iova(op),
                                   GUEST_RAM + op.page * PAGE_SIZE, op.flags), 4)


def _viommu_unmap(system, op):
    kernel = _viommu(system, op.guest)
    if kernel is not None:
        kernel.dev.process(unmap_req(op.domain, op.iova, _last_iova(op)), 4)


def _viommu_attach(system, op):
    kernel = _viommu(system, op.guest)
    device = _device(system, op.device)
    if kernel is None or system.hyp.assigned.get(device, ("",))[0] != kernel.name:
        return
    endpoint = kernel.endpoint(device)
    req = (detach_req(op.domain, endpoint) if op.flags & 2 else
           attach_req(op.domain, endpoint, ATTACH_F_BYPASS if op.flags & 1 else 0))
    kernel.dev.process(req, 4)


def _viommu_config(system, op):
    kernel = _viommu(system, op.guest)
    if kernel is not None:
        if op.features & 0x80:
            kernel.dev.negotiate(op.features & 0x7F)
        kernel.dev.write_config(36, bytes((op.bypass,)))


# Every operation of the program format, by name: `_<name>` above (a missing one
# fails at import, not in a campaign).
HANDLERS = {spec.name: globals()[f"_{spec.name}"] for spec in OPS}
