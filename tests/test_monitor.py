"""The per-step monitor: silent on correct runs, and each checker fires on a
deliberately broken variant of the code it guards (non-vacuity)."""

from __future__ import annotations

import pytest

from properties.monitor import Monitor
from properties.violations import (
    CMD_CONFINEMENT,
    EVENT_CONFINEMENT,
    HYP_READ_CONFINEMENT,
    HYP_WRITE_CONFINEMENT,
    MSI_CONFINEMENT,
    NO_CROSS_GUEST_DMA,
    S2_AUTHORITY,
    S2_CONTAINMENT,
    TLB_CONTAINMENT,
    Violation,
)
from vsmmu.arch.layouts import COMMANDS, EVENT, REG, Op
from vsmmu.guests.guest import GuestKernel
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp import transfer, virtual
from vsmmu.hyp.host import MSI_WINDOW
from vsmmu.hyp.hypervisor import Hypervisor

IOVA = 0x1000_0000


def booted():
    hyp = Hypervisor()
    mon = Monitor(hyp)
    k0, k1 = GuestKernel(hyp, "g0"), GuestKernel(hyp, "g1")
    dom = k0.domain()
    k0.attach("nic0", dom)
    buf = k0.buffer(PAGE_SIZE)
    k0.dma_map(dom, IOVA, buf, PAGE_SIZE)
    mon.check()
    return hyp, mon, k0, k1, dom, buf


def invariants(mon) -> set[str]:
    return {v.invariant for v in mon.found}


def test_a_correct_run_is_clean():
    hyp, mon, k0, k1, dom, buf = booted()
    assert hyp.dma("nic0", IOVA, 8, write=True, data=b"12345678").ok
    mon.check()
    hyp.dma("nic0", k0.map_msi(dom), 4, write=True)
    k0.dma_unmap(dom, IOVA, PAGE_SIZE)
    assert not hyp.dma("nic0", IOVA, 4).ok
    k1.set_bypass("nic1")
    assert hyp.dma("nic1", 0x4000_0000, 4).ok
    hyp.reassign_page("g0", buf, "g1", 0x5000_0000)
    hyp.deassign("nic1")
    assert not hyp.dma("nic1", 0x4000_0000, 4).ok
    hyp.destroy_guest("g1")
    mon.check()
    assert mon.found == [] and len(hyp.msis) == 1


def test_stale_iotlb_after_reassignment(monkeypatch):
    hyp, mon, *_, buf = booted()
    assert hyp.dma("nic0", IOVA, 4).ok  # cache the translation
    monkeypatch.setattr(hyp, "_invalidate_s2", lambda guest, ranges: None)  # forgets TLBI
    hyp.reassign_page("g0", buf, "g1", 0x5000_0000)
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == TLB_CONTAINMENT and e.value.witness["page_owner"] == "g1"
    hyp.dma("nic0", IOVA, 4, write=True)
    assert NO_CROSS_GUEST_DMA in invariants(mon)


def test_unsanitized_vste_loses_stage2_authority(monkeypatch):
    hyp, mon, k0, *_ = booted()
    monkeypatch.setattr(virtual, "vste_to_pste", lambda vste, host: vste)  # no sanitizer
    k0.set_bypass("disk0")
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == S2_AUTHORITY and e.value.witness["sid"] == 0x13


def test_guest_vmid_reaching_hardware(monkeypatch):
    hyp, mon, k0, *_ = booted()
    real = transfer.guest_command

    def keep_vmid(cmd, ctx):
        action, out = real(cmd, ctx)
        vmid = COMMANDS[Op.TLBI_NH_ASID]["VMID"]
        return action, vmid.put(out, vmid.get(cmd)) if cmd & 0xFF == Op.TLBI_NH_ASID else out

    monkeypatch.setattr(virtual, "guest_command", keep_vmid)
    drv = k0.drivers["smmu0"]
    drv.submit(COMMANDS[Op.TLBI_NH_ASID].encode(OP=Op.TLBI_NH_ASID, ASID=1, VMID=0x77))
    drv.sync()
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == CMD_CONFINEMENT


def test_physical_sid_in_a_guest_event(monkeypatch):
    hyp, mon, *_ = booted()
    real = transfer.guest_event

    def leak_psid(record, vsid, fetch_ipa, design):
        forward, out = real(record, vsid, fetch_ipa, design)
        return forward, EVENT.put(out, "SID", EVENT.get(record, "SID"))

    monkeypatch.setattr(virtual, "guest_event", leak_psid)
    hyp.dma("nic0", IOVA + 0x10_0000, 4)  # unmapped: F_TRANSLATION for the guest
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == EVENT_CONFINEMENT


def test_vsmmu_using_guest_addresses_as_physical(monkeypatch):
    """A vSMMU that reads and writes guest structures at their IPAs *as PAs*
    (skipping stage 2) touches pages the guest does not own."""
    hyp, mon, *_ = booted()
    vsmmu = hyp.guests["g0"].vsmmus["smmu0"]
    hyp.mem.add(0x4000_0000, 0x80_0000, "g1")  # what those PAs happen to hold
    monkeypatch.setattr(vsmmu, "mem", hyp.mem)
    cr0 = REG["CR0"]
    vsmmu.write(cr0.offset, vsmmu.read(cr0.offset))  # re-reads every vSTE: wrong memory
    assert HYP_READ_CONFINEMENT in invariants(mon)
    hyp.dma("nic0", IOVA + 0x10_0000, 4)  # its event record is written to a PA
    assert HYP_WRITE_CONFINEMENT in invariants(mon)


def test_msi_reaching_another_guests_doorbell():
    hyp, mon, k0, k1, dom, _ = booted()
    g0, g1 = hyp.guests["g0"], hyp.guests["g1"]
    g0.s2.unmap(*MSI_WINDOW)  # a hypervisor bug: g0's window leads to g1's doorbell
    g0.s2.map(MSI_WINDOW[0], g1.doorbell, PAGE_SIZE)
    hyp.dma("nic0", k0.map_msi(dom), 4, write=True)
    with pytest.raises(Violation):
        mon.check()
    assert {MSI_CONFINEMENT, NO_CROSS_GUEST_DMA} <= invariants(mon)


def test_foreign_page_in_stage2_is_found_for_all_ipas():
    """A hypervisor that maps another guest's page into a guest's stage 2 is caught
    by the Z3 check before any device touches it, with the IPA as the witness."""
    hyp, mon, *_ = booted()
    g0, g1 = hyp.guests["g0"], hyp.guests["g1"]
    victim = g1.pages[0x4000_0000]
    g0.add_page(0x7000_0000, victim)  # bookkeeping as if it were g0's: the bug
    with pytest.raises(Violation) as e:
        mon.check()
    assert e.value.invariant == S2_CONTAINMENT
    ipa, pa = e.value.witness["ipa"], e.value.witness["pa"]  # any byte of the page will do
    assert ipa & ~0xFFF == 0x7000_0000 and pa == victim + (ipa & 0xFFF)
