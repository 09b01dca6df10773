"""virtio-iommu guests on the hypervisor: their requests composed onto the physical
SMMU (IOVA -> GPA -> PA in tables the hypervisor owns), faults reported on the
virtio event queue, pages leaving the guest leaving its mappings first, bounded
resources, and the invariant monitor clean throughout."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fuzz.runner import DMA_BUF, DMA_IOVA, boot, fuzz_platform
from properties.monitor import Monitor
from vsmmu.arch.layouts import STE, Config
from vsmmu.arch.virtio_layouts import FAULT, FaultReason, Status, decode, map_req
from vsmmu.guests.virtio_guest import ViommuError
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM, MSI_WINDOW
from vsmmu.hyp.hypervisor import VIRTIO_MAPPINGS
from vsmmu.platform import PlatformError, platform_from_dict

IOVA = 0x2000_0000


@pytest.fixture
def system():
    s = boot(fuzz_platform("virtio"))
    yield s
    s.monitor.check()  # every test ends with every invariant holding


def _nic0(system):
    return system.kernels["g0"], system.domains["nic0"], system.hyp.guests["g0"]


def test_map_composes_iova_to_gpa_to_pa(system):
    kernel, dom, g0 = _nic0(system)
    gpa = GUEST_RAM + 0x10 * PAGE_SIZE
    kernel.dma_map(dom, IOVA, gpa, 2 * PAGE_SIZE)
    r = system.hyp.dma("nic0", IOVA + PAGE_SIZE + 8, 4, write=True, data=b"vsmm")
    assert r.ok and r.pa == g0.pages[gpa + PAGE_SIZE] + 8
    assert g0.view.read(gpa + PAGE_SIZE + 8, 4) == b"vsmm"  # the guest sees it at the GPA


def test_the_physical_ste_is_stage2_only_with_the_domains_own_vmid(system):
    _, dom, g0 = _nic0(system)
    phys = system.hyp.smmus["smmu0"]
    ste = phys.drv.read_ste(system.hyp.devices["nic0"].sid)
    composed = g0.viommu.backend.domains[dom.id]
    assert STE.get(ste, "CONFIG") == Config.S2_TRANS
    assert STE.get(ste, "S2VMID") == composed.vmid != g0.vmid
    assert STE.get(ste, "S2TTB") == composed.table.ttb


def test_gpa_outside_the_guest_is_a_fault_and_maps_nothing(system):
    kernel, dom, g0 = _nic0(system)
    g1_page = min(system.hyp.guests["g1"].pages.values())  # a PA the guest might try
    for gpa in (GUEST_RAM + g0.ram, g1_page):
        with pytest.raises(ViommuError) as e:
            kernel.dma_map(dom, IOVA, gpa, PAGE_SIZE)
        assert e.value.status == Status.FAULT
    assert not system.hyp.dma("nic0", IOVA, 4).ok


def test_unmap_completes_before_the_reply_and_the_fault_reaches_the_guest(system):
    kernel, dom, g0 = _nic0(system)
    assert system.hyp.dma("nic0", DMA_IOVA, 4).ok  # cached in the IOTLB
    kernel.dma_unmap(dom, DMA_IOVA, DMA_BUF)
    vmid = g0.viommu.backend.domains[dom.id].vmid
    iotlb = system.hyp.smmus["smmu0"].smmu.iotlb
    assert not [e for e in iotlb.entries() if e.vmid == vmid]
    assert not system.hyp.dma("nic0", DMA_IOVA + 4, 4, write=True, data=b"late").ok
    [record] = kernel.events()
    fault = decode(FAULT, record)
    assert (fault.reason, fault.endpoint, fault.address) == (
        FaultReason.MAPPING, kernel.endpoint("nic0"), DMA_IOVA + 4)
    assert fault.flags == 0b1_0000_0010  # ADDRESS | WRITE


def test_unattached_endpoints_are_blocked_unless_bypass_is_on(system):
    kernel, dom, g0 = _nic0(system)
    kernel.detach("nic0", dom)
    assert not system.hyp.dma("nic0", GUEST_RAM, 4).ok  # bypass=0: no access
    g0.viommu.write_config(36, b"\x01")  # BYPASS_CONFIG negotiated: the driver may set it
    r = system.hyp.dma("nic0", GUEST_RAM, 4)
    assert r.ok and r.pa == g0.pages[GUEST_RAM]  # IOVA = GPA, through the guest's stage 2


def test_msi_window_is_the_reserved_region_and_reaches_the_doorbell(system):
    kernel, dom, g0 = _nic0(system)
    assert kernel.reserved("nic0") == [(MSI_WINDOW[0], sum(MSI_WINDOW) - 1, 1)]
    assert kernel.map_msi(dom) == MSI_WINDOW[0]
    with pytest.raises(ViommuError):  # MAP over a reserved region: refused
        kernel.dma_map(dom, MSI_WINDOW[0], GUEST_RAM, PAGE_SIZE)
    assert system.hyp.dma("nic0", MSI_WINDOW[0], 4, write=True, data=b"\1\0\0\0").ok
    assert system.hyp.msis[-1].doorbell_of == "g0"


@pytest.mark.parametrize("viommu", ["virtio", "smmuv3"])
def test_a_moved_msi_window_is_what_the_guest_is_told_and_where_its_doorbell_is(viommu):
    """A platform moves g0's window to 2 MiB at 0x2000_0000 (iommufd's SW_MSI_START =
    0x20000000, SW_MSI_SIZE = 2): its doorbell is the window's first page, stage 2
    maps nothing at the default window, and a virtio-iommu guest's PROBE reports the
    whole window as RESV_MEM subtype MSI (1)."""
    p = fuzz_platform(viommu)
    moved = replace(p.guests[0], sw_msi_start=0x2000_0000, sw_msi_size_mib=2)
    system = boot(replace(p, guests=(moved, *p.guests[1:])))
    kernel, dom, g0 = _nic0(system)
    assert g0.view.pa_of(0x2000_0000) == g0.doorbell
    assert g0.view.pa_of(MSI_WINDOW[0]) is None
    if viommu == "virtio":
        assert kernel.reserved("nic0") == [(0x2000_0000, 0x201F_FFFF, 1)]
        assert kernel.map_msi(dom) == 0x2000_0000
    else:  # the boot mapped the doorbell page 1:1 in the domain's stage 1 (map_msi)
        assert dom.table.translate(0x2000_0000) == 0x2000_0000
    assert system.hyp.dma("nic0", 0x2000_0000, 4, write=True, data=b"\1\0\0\0").ok
    assert system.hyp.msis[-1].doorbell_of == "g0"
    system.monitor.check()


def test_pages_leaving_the_guest_leave_its_mappings_first(system):
    kernel, dom, g0 = _nic0(system)
    gpa = kernel.dev.mappings(dom.id)[0].phys_start
    system.hyp.unmap("g0", gpa, PAGE_SIZE)
    assert not system.hyp.dma("nic0", DMA_IOVA, 4).ok
    pa = system.hyp.reassign_page("g0", gpa + PAGE_SIZE, "g1", GUEST_RAM + 0x20_0000)
    r = system.hyp.dma("nic0", DMA_IOVA + PAGE_SIZE, 4)
    assert not r.ok and r.pa != pa
    # the guest's view still has the mapping: a later DMA faults, it is never redirected
    assert kernel.dev.mappings(dom.id)[0].virt_start == DMA_IOVA


def test_a_guest_cannot_grow_the_hypervisors_tables_without_bound(system):
    kernel, dom, g0 = _nic0(system)
    status = None
    for i in range(VIRTIO_MAPPINGS + 1):
        status = kernel.dev.process(map_req(dom.id, IOVA + i * PAGE_SIZE,
                                            IOVA + (i + 1) * PAGE_SIZE - 1, GUEST_RAM, 1), 4).status
        if status != Status.OK:
            break
    assert status == Status.NOMEM and g0.viommu.mapping_count == VIRTIO_MAPPINGS


def test_destroying_a_guest_retires_its_domain_vmids(system):
    g0 = system.hyp.guests["g0"]
    vmids = {d.vmid for d in g0.viommu.backend.domains.values()}
    assert len(vmids) == 3  # nic0, disk0, nvme0: one boot domain each
    system.hyp.destroy_guest("g0")
    system.kernels.pop("g0")
    for device in ("nic0", "disk0", "nvme0"):
        system.domains.pop(device)
    assert all(v in system.hyp._free_vmids for v in vmids)


def test_a_virtio_guest_and_a_vsmmu_guest_side_by_side():
    platform = platform_from_dict({
        "smmu": [{"name": "smmu0"}],
        "guest": [{"name": "g0", "viommu": "virtio"}, {"name": "g1"}],
        "device": [{"name": "a", "smmu": "smmu0", "sid": 1, "guest": "g0"},
                   {"name": "b", "smmu": "smmu0", "sid": 2, "guest": "g1"}]})
    system = boot(platform)
    assert system.hyp.guests["g0"].viommu is not None and system.hyp.guests["g1"].vsmmus
    assert system.hyp.dma("a", DMA_IOVA, 4).ok and system.hyp.dma("b", DMA_IOVA, 4).ok
    Monitor(system.hyp).check()


def test_viommu_kind_is_checked():
    with pytest.raises(PlatformError, match="viommu must be one of smmuv3, virtio"):
        platform_from_dict({"smmu": [{"name": "smmu0"}],
                            "guest": [{"name": "g0", "viommu": "vfio"}], "device": []})


def test_check_and_triage_replay_on_the_virtio_platform(capsys):
    from pathlib import Path

    from fuzz.cli import main

    corpora = Path(__file__).resolve().parents[1] / "corpora"
    assert main(["check", "--json", "--no-z3", "--target", "virtio-iommu",
                 str(corpora / "programs" / "seed-viommu-map-unmap.txt")]) == 0
    out = capsys.readouterr().out
    assert '"result": "clean"' in out and "smmu.event:F_TRANSLATION" in out
    assert main(["triage", "--no-z3", "--target", "virtio-iommu",
                 str(corpora / "virtio-iommu" / "seed-viommu-hyp")]) == 0


def test_domain_churn_does_not_grow_the_hypervisors_pool(system):
    kernel, dom, _ = _nic0(system)
    kernel.detach("nic0", dom)
    for domain in range(10, 12):  # the first cycles allocate at most one more table
        new = kernel.domain()
        new.id = domain
        kernel.attach("nic0", new)
        kernel.dma_map(new, IOVA, GUEST_RAM, PAGE_SIZE)
        kernel.detach("nic0", new)
    left = system.hyp.hyp_alloc.free
    for domain in range(12, 40):
        new = kernel.domain()
        new.id = domain
        kernel.attach("nic0", new)
        kernel.dma_map(new, IOVA, GUEST_RAM, PAGE_SIZE)
        kernel.detach("nic0", new)
    assert system.hyp.hyp_alloc.free == left
    kernel.attach("nic0", dom)
