"""Availability: `bounded-trap-work` (properties/predicates.py `trap_work_bound`),
`no-silent-event-loss` (an event about a guest's stream that a design keeps from it,
or that the hardware drops without the guest being told) and `cmdq-isolation` (a
command error on a physical queue, which stops it for everyone).

Work is what the model counts per slice (one trapped register write, or one
continuation): guest commands consumed, vSTEs read, physical STEs written,
physical commands issued.  Our design consumes at most 64 guest commands a
trap and continues on later ticks; a design that drains the whole queue in
the trap (Xen's v3) breaks the bound with one PROD write.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fuzz.program import parse
from fuzz.runner import boot, fuzz_platform
from fuzz.targets import runner_for
from properties.monitor import Monitor
from properties.predicates import host_memory, trap_work_bound
from properties.violations import (
    BOUNDED_HOST_MEMORY,
    BOUNDED_TRAP_WORK,
    CMDQ_ISOLATION,
    NO_SILENT_EVENT_LOSS,
    Violation,
)
from vsmmu.arch.virtio_layouts import Status
from vsmmu.guests.guest import GuestKernel
from vsmmu.guests.virtio_guest import ViommuError
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM, VIRTIO_TABLE_BYTES
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.platform import default_platform

PREFETCH = 0x01  # CMD_PREFETCH_CONFIG, SID 0: a hint every design accepts


def booted(design: str):
    hyp = Hypervisor(replace(default_platform(), design=design))
    mon = Monitor(hyp, z3_checks=False)
    kernels = {g: GuestKernel(hyp, g) for g in ("g0", "g1")}
    mon.check()
    return hyp, mon, kernels


def test_the_bound_depends_on_the_design_and_the_streams_only():
    hyp, _, _ = booted("vsmmu")
    v = hyp.guests["g0"].vsmmus["smmu0"]
    assert len(v.vsids) == 2  # nic0 and disk0 (default platform)
    assert trap_work_bound(v) == (64, 64 * (2 + 6) + 6)  # B=64, V=2
    xen = booted("xen-v3")[0].guests["g0"].vsmmus["vsmmu"]  # one for both SMMUs
    assert len(xen.vsids) == 3  # nic0, disk0 and nvme0
    assert trap_work_bound(xen) == (64, 64 * (2 + 9) + 9)  # declares none: judged by ours


def test_draining_the_whole_queue_in_one_trap_is_found():
    hyp, mon, kernels = booted("xen-v3")
    kernels["g0"].drivers["vsmmu"].submit(*[PREFETCH] * 100)  # one PROD write
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == BOUNDED_TRAP_WORK
    assert e.value.witness["guest commands"] == 100


def test_ours_holds_while_one_guest_floods_and_the_other_works():
    hyp, mon, kernels = booted("vsmmu")
    flood, other = kernels["g0"].drivers["smmu0"], kernels["g1"].drivers["smmu0"]
    for _ in range(8):
        flood.submit(*[PREFETCH] * 200)  # more than three traps' worth each time
        other.sync()  # g1's own commands still complete
        mon.check()
        hyp.step()  # continuations: at most 64 more of g0's a tick
        mon.check()
    flood.sync()
    mon.check()


def test_one_register_write_witness():
    """What the fuzzer finds: CMDQ_PROD moved far ahead over a queue of zeros."""
    ops = parse("mmio_write guest=0x0 smmu=0x0 reg=0x18 value=0xc0")
    v = runner_for("system", design="xen-v3", z3=False).run(ops).violation
    assert v is not None and v.invariant == BOUNDED_TRAP_WORK
    assert v.witness["guest commands"] > 64
    assert runner_for("system", z3=False).run(ops).violation is None


# ------------------------------------------------------- no-silent-event-loss
def test_an_event_a_design_keeps_from_the_guest_is_found():
    ops = parse("s2_unmap guest=0x0 page=0x11\n"  # a page g0's stage-1 walk uses
                "dma device=0x0 iova=0x10000000 size=0x3 flags=0x0 ssid=0x0")
    v = runner_for("system", design="xen-v3", z3=False).run(ops).violation
    assert v is not None and v.invariant == NO_SILENT_EVENT_LOSS
    record = v.witness["record"]
    assert record & 0xFF == 0x10 and record >> 103 & 1  # F_TRANSLATION, S2 (bit 103)
    assert runner_for("system", z3=False).run(ops).violation is None


def test_ours_tells_a_flooded_guest_and_the_other_keeps_its_events():
    hyp, mon, kernels = booted("vsmmu")
    for _ in range(300):  # more faults than g0's event queue holds
        hyp.dma("nic0", 0x7000_0000, 4)  # unmapped: a stage-1 F_TRANSLATION each
        hyp.dma("nic1", 0x7000_0000, 4)  # g1's device, faulting too
        mon.check()
    g0 = hyp.guests["g0"].vsmmus["smmu0"]
    assert g0.read(0x100A8) >> 31  # EVENTQ_PROD.OVFLG: g0 is told events were lost
    assert kernels["g1"].drivers["smmu0"].events()  # g1 (nic1, smmu0) still gets its own


# A storm: g0's device faults 300 times before the hypervisor's event handler runs.
# The physical event queue holds 256 records (QUEUE_LOG2 8), so 44 of g0's are lost
# and nobody can say whose: every guest with a stream on smmu0 is told.
EVENTQ_PROD, EVENTQ_CONS = 0x100A8, 0x100AC  # page 1; OVFLG / OVACKFLG are bit 31


def test_a_physical_overflow_tells_every_guest_on_that_smmu_and_they_keep_working():
    hyp, mon, kernels = booted("vsmmu")
    phys = hyp.smmus["smmu0"].smmu
    hyp.burst("nic0", 0x7000_0000, 300)  # unmapped: a stage-1 F_TRANSLATION each
    assert phys.lost == {0x10: 44}
    assert phys.read(EVENTQ_PROD) >> 31 == phys.read(EVENTQ_CONS) >> 31 == 1  # acked
    g1 = hyp.guests["g1"].vsmmus["smmu0"]
    assert g1.overflow_pending() and g1.read(EVENTQ_PROD) >> 31  # told, none of its lost
    assert hyp.guests["g1"].vsmmus["smmu1"].overflows == 0  # nothing lost on smmu1
    mon.check()
    hyp.dma("nic1", 0x7000_0000, 4)  # g1's device faults once more: it still arrives
    batch = kernels["g1"].drivers["smmu0"].events()
    assert batch.overflow and [f.sid for f in batch.faults] == [0]  # vSID 0, no PA
    mon.check()


def test_a_design_that_does_not_tell_is_found():
    hyp, mon, _ = booted("vsmmu")
    hyp.design = replace(hyp.design, signal_lost=False)
    hyp.burst("nic0", 0x7000_0000, 300)
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == NO_SILENT_EVENT_LOSS
    assert e.value.witness == {"smmu": "smmu0", "guest": "g0", "lost": 44,
                               "vsmmu": "g0/smmu0"}


# ------------------------------------------------------------- cmdq-isolation
def test_a_forwarded_command_the_smmu_refuses_stops_the_queue_and_is_found():
    """pKVM forwards opcodes it does not list as the host wrote them (22/28): opcode
    0x00 reaches the hardware, which stops its queue on CERROR_ILL when it gets there
    (a tick: the physical SMMU works in model time)."""
    hyp, mon, kernels = booted("pkvm")
    kernels["g0"].drivers["smmu0"].submit(0x0)
    hyp.step()
    with pytest.raises(Violation):
        mon.check()
    [stop] = [v for v in mon.found if v.invariant == CMDQ_ISOLATION]
    assert stop.witness == {"smmu": "smmu0", "problem": "stopped", "error": "ILL",
                            "command": 0}


def test_ours_never_stops_a_physical_queue_while_one_guest_floods_and_the_other_works():
    hyp, mon, kernels = booted("vsmmu")
    flood, other = kernels["g0"].drivers["smmu0"], kernels["g1"].drivers["smmu0"]
    for op in (0x0, 0x20, 0x28, 0x2A, 0x41, 0x44, 0xFF):  # illegal for a guest: CERROR_ILL
        flood.submit(op)
        flood.recover()  # the guest's own queue stopped; nothing reached the hardware
        hyp.burst("nic0", 0x7000_0000, 40)  # and a fault storm besides
        other.submit(0x10)  # TLBI_NH_ALL: forwarded with g1's VMID...
        other.sync()  # ...and completed on the physical queue
        mon.check()
    assert all(not p.smmu.cmd_errors for p in hyp.smmus.values())


# ------------------------------------------------------- bounded-host-memory
GIB = 1 << 30


def _scatter(kernel, dom, count: int) -> int:
    """Map one page at each of `count` GiB-apart IOVAs (a level-2 and a level-3 table
    each, 8 KiB of the hypervisor's pool); returns how many were mapped."""
    for i in range(count):
        try:
            kernel.dma_map(dom, (i + 1) * GIB, GUEST_RAM, PAGE_SIZE)
        except ViommuError as e:
            assert e.status == Status.NOMEM
            return i
    return count


def test_a_guest_scattering_mappings_hits_its_quota_and_the_other_keeps_mapping():
    system = boot(fuzz_platform("virtio"), z3=False)
    g0, g1 = system.kernels["g0"], system.kernels["g1"]
    mapped = _scatter(g0, system.domains["nic0"], 400)
    held, limit = host_memory(system.hyp.guests["g0"])
    assert mapped < 400 and held <= limit == VIRTIO_TABLE_BYTES  # NOMEM before 2 MiB
    assert limit - held < 2 * PAGE_SIZE  # it stopped at the quota, not before
    assert _scatter(g1, system.domains["nic1"], 8) == 8  # the pool still serves g1
    system.monitor.check()


def test_an_unbounded_table_pool_is_found():
    system = boot(fuzz_platform("virtio"), z3=False)
    system.hyp.guests["g0"].viommu.backend.quota.limit = 1 << 40  # no per-guest limit
    assert _scatter(system.kernels["g0"], system.domains["nic0"], 300) == 300
    with pytest.raises(Violation) as e:
        system.monitor.check()
    assert e.value.invariant == BOUNDED_HOST_MEMORY
    assert e.value.witness["guest"] == "g0" and e.value.witness["held"] > 2 << 20


def _flood_then_sync(design):
    """g0 queues TLBI_NH_ALLs in five traps and never syncs; then g1 invalidates and
    syncs on smmu0 (its sync waits for its own TLBI).  The cmdq-isolation findings."""
    hyp, mon, kernels = booted("vsmmu")
    hyp.design = design
    for v in hyp.guests["g0"].vsmmus.values():
        v.design = design
    flood = kernels["g0"].drivers["smmu0"]
    for _ in range(5):
        flood.submit(*[0x10] * 64)  # one PROD write each: a trap of 64
    kernels["g1"].drivers["smmu0"].submit(0x10)
    kernels["g1"].drivers["smmu0"].sync()
    try:
        mon.check()
    except Violation:
        pass
    return [v for v in mon.found if v.invariant == CMDQ_ISOLATION]


def test_without_a_share_one_guest_fills_the_shared_queue_and_is_found():
    from vsmmu.hyp.transfer import REFERENCE
    [late] = _flood_then_sync(replace(REFERENCE, cmdq_share=None))
    assert late.witness["vsmmu"] == "g1/smmu0" and late.witness["problem"] == "delayed"
    assert late.witness["behind"] > late.witness["bound"] == 64  # one other guest's share


def test_with_our_share_a_sync_waits_behind_at_most_one_share_of_each_other_guest():
    from vsmmu.hyp.transfer import REFERENCE
    assert _flood_then_sync(REFERENCE) == []


@pytest.mark.parametrize("target", ["system", "smmu", "virtio-iommu"])
def test_a_burst_wraps_at_2_64_like_any_device_address(target):
    ops = parse("burst device=0x0 iova=0xfffffffffffff000 count=0x3")  # 3 pages past 2^64
    assert runner_for(target, z3=False).run(ops).violation is None
