"""The hypervisor's own actions on the default platform: guests' IPA spaces, VMIDs,
stage-2 unmap and page reassignment (ballooning), device assignment, guest
destruction, event routing.  Each action that could leave a stale translation
must invalidate it — on every SMMU, followed by CMD_SYNC — before the page or
device is reused, and what it hands over must be scrubbed.

Command words are worked out by hand (dword 0: OP 7:0, NUM 16:12, SCALE 24:20,
VMID 47:32 / SID 63:32; dword 1: Leaf bit 0, TG 11:10, Addr 63:12, ATC Size 5:0).
"""

from __future__ import annotations

import pytest
from vsmmu_env import (
    ABORT_STE,
    IOVA,
    K4,
    MSI_IOVA,
    RAM,
    RAM_END,
    RAM_SIZE,
    cmd_names,
    dw,
    fresh,
    s2_only_ste,
)

from vsmmu.guests.guest import GuestKernel
from vsmmu.hw.memory import HYP, BusError
from vsmmu.hyp.host import GUEST_RAM
from vsmmu.platform import GuestSpec
from vsmmu.sw.driver import ste_s1

SYNC = 0x46
F_TRANSLATION = 0x10
RNW, S2, CLASS_IN = 1 << 35, 1 << 39, 2 << 40


@pytest.fixture
def env():
    yield from fresh()


@pytest.fixture(scope="module")
def shared():
    gen = fresh()
    yield next(gen)
    gen.close()


def _watch_scrubs(env) -> None:
    """Record ownership changes (which scrub) in the command log, to check ordering."""
    set_owner = env.hyp.mem.set_owner

    def wrapper(pa, size, owner, **kw):
        env.cmds.append(("set_owner", pa, owner))
        set_owner(pa, size, owner, **kw)

    env.hyp.mem.set_owner = wrapper


def s2_ipa(vmid: int, ipa: int) -> int:
    # TLBI_S2_IPA 0x2a, one 4K page with RIL: TG=1 (4K), NUM=0, SCALE=0, Leaf=1.
    return dw(0x2A | vmid << 32, ipa | 1 << 10 | 1)


# ------------------------------------------------------------ the IPA space
def test_each_guest_sees_exactly_its_ram_and_its_doorbell(shared):
    env = shared
    for name in ("g0", "g1"):
        view = env.guest(name).view
        assert view.pa_of(RAM - K4) is None
        assert view.pa_of(RAM_END) is None
        assert view.pa_of(0) is None
        for ipa in (RAM, RAM + RAM_SIZE // 2, RAM_END - K4):
            assert env.owner(view.pa_of(ipa)) == name
        assert env.owner(view.pa_of(MSI_IOVA)) == ("msi", name)
        assert view.pa_of(MSI_IOVA) == env.guest(name).doorbell
        with pytest.raises(BusError):
            view.read(RAM_END - 4, 8)  # straddles the end of RAM
    assert len(env.hyp.mem.pages_of("g0")) == len(env.hyp.mem.pages_of("g1")) == RAM_SIZE // K4


def test_vmids_are_distinct_and_nonzero_and_tag_every_physical_ste(shared):
    env = shared
    g0v, g1v = env.vmid("g0"), env.vmid("g1")
    assert 0 not in (g0v, g1v) and g0v != g1v
    for dev, smmu, psid, guest in (("nic0", "smmu0", 0x10, "g0"), ("nic1", "smmu0", 0x11, "g1"),
                                   ("disk0", "smmu0", 0x13, "g0"), ("gpu0", "smmu1", 0x10, "g1"),
                                   ("nvme0", "smmu1", 0x20, "g0")):
        env.drv(guest, smmu)  # brought up: V=0 vSTEs, so V=0 physical STEs
        ste = env.pste(smmu, psid)
        assert ste == 0, dev
    env.g0.set_bypass("nic0")
    env.g1.set_bypass("gpu0")
    assert env.pste("smmu0", 0x10) == s2_only_ste(g0v, env.s2_ttb("g0"))
    assert env.pste("smmu1", 0x10) == s2_only_ste(g1v, env.s2_ttb("g1"))


def test_api_errors(shared):
    hyp = shared.hyp
    with pytest.raises(ValueError, match="assigned"):
        hyp.assign("nic0", "g1")
    with pytest.raises(ValueError, match="exists"):
        hyp.create_guest(GuestSpec("g0"))
    with pytest.raises(ValueError, match="already backed"):
        hyp.reassign_page("g0", RAM, "g1", RAM)
    with pytest.raises(ValueError, match="not backed"):
        hyp.reassign_page("g0", RAM_END, "g1", RAM_END)
    assert shared.owner(shared.pa("g0", RAM)) == "g0"  # nothing moved


@pytest.mark.parametrize("dst_ipa", [MSI_IOVA, RAM_END + 0x800, 1 << 40, -K4],
                         ids=["msi-window", "unaligned", "beyond-ipa-space", "negative"])
def test_failed_reassign_or_map_loses_no_page(shared, dst_ipa):
    """A destination the target cannot map is refused before the page leaves its owner;
    a failed map() gives its fresh page back.  No page ends up owned and unmapped."""
    hyp = shared.hyp
    src_ipa = RAM_END - K4
    pa = shared.pa("g0", src_ipa)
    counts = {o: len(hyp.mem.pages_of(o)) for o in ("g0", "g1")}
    shared.take_cmds()
    with pytest.raises(ValueError):
        hyp.reassign_page("g0", src_ipa, "g1", dst_ipa)
    assert shared.pa("g0", src_ipa) == pa and shared.owner(pa) == "g0"
    assert shared.take_cmds() == []  # not even unmapped
    with pytest.raises(ValueError):  # MappingError is a ValueError
        hyp.map("g1", dst_ipa, K4)
    assert {o: len(hyp.mem.pages_of(o)) for o in counts} == counts
    for name in counts:  # every page a guest owns is mapped in its stage 2
        assert len(hyp.mem.pages_of(name)) == len(shared.guest(name).pages)


def test_a_map_that_fails_part_way_maps_nothing_and_keeps_no_page(env):
    """map() of a range whose last page is the MSI doorbell's IPA: refused whole, every
    fresh page back on the free list (owned by nobody), the stage 2 unchanged."""
    hyp = env.hyp
    owned = len(hyp.mem.pages_of("g1"))
    start = MSI_IOVA - 2 * K4
    with pytest.raises(ValueError, match="already mapped"):
        hyp.map("g1", start, 3 * K4)
    assert len(hyp.mem.pages_of("g1")) == owned
    assert all(env.guest("g1").view.pa_of(start + i * K4) is None for i in range(2))


def test_every_guest_ram_ipa_taken_as_a_pa_is_the_hypervisors(shared):
    """The address map makes an IPA-for-PA confusion visible: each page of guest RAM,
    its IPA read as a physical address, is hypervisor memory (where its tables and
    queues are), never unbacked and never the guest's own."""
    hyp = shared.hyp
    for guest in hyp.guests.values():
        ipas = range(GUEST_RAM, GUEST_RAM + guest.ram, K4)
        assert {hyp.mem.owner(ipa) for ipa in ipas} == {HYP}, guest.name


# ------------------------------------------------------------ stage-2 unmap
def test_unmap_invalidates_before_freeing_and_scrubs(env):
    dom, buf = env.dma_setup("g0", "nic0")
    env.g0.set_bypass("disk0")
    assert env.hyp.dma("nic0", IOVA, 8, write=True, data=b"secret!!").ok
    assert env.hyp.dma("disk0", buf, 8).ok  # a stage-2-only entry for the same IPA
    pa = env.pa("g0", buf)
    _watch_scrubs(env)
    env.take_cmds()
    assert env.hyp.unmap("g0", buf, K4) == [pa]
    log = env.take_cmds()
    v = env.vmid("g0")
    for smmu in ("smmu0", "smmu1"):
        mine = [c for c in log if c[0] == smmu]
        assert mine == [(smmu, s2_ipa(v, buf)), (smmu, SYNC), (smmu, 0x10 | v << 32),
                        (smmu, SYNC), (smmu, SYNC)], cmd_names(mine)
    assert log[-1] == ("set_owner", pa, "free")  # after every SYNC
    assert env.owner(pa) == "free" and env.hyp.mem.read(pa, 8) == bytes(8)
    assert env.iotlb("smmu0", v) == []
    for dev, addr in (("nic0", IOVA), ("disk0", buf)):
        assert not env.hyp.dma(dev, addr, 8, write=True, data=b"stale!!!").ok
    assert env.hyp.mem.read(pa, 8) == bytes(8)
    with pytest.raises(BusError):
        env.guest("g0").view.read(buf, 8)
    events = env.guest_events("g0", "smmu0")
    assert [(e[0], e[3]) for e in events] == [(F_TRANSLATION, buf), (F_TRANSLATION | 1 << 32, buf)]
    # Mapping it again backs it with a scrubbed page.
    env.hyp.map("g0", buf, K4)
    assert env.guest("g0").view.read(buf, 8) == bytes(8)


# ------------------------------------------------------------ ballooning
def test_reassigned_page_is_unreachable_through_stale_mappings(env):
    """Ballooning: a page moves from g1 to g0.  g1's cached translations of it (nested
    IOTLB entry for gpu0 and nic1, and gpu0's ATC entry) are invalidated on both SMMUs
    before the page is scrubbed, and g0 receives zeros."""
    dom, buf = env.dma_setup("g1", "gpu0")
    env.g1.attach("nic1", dom)  # one domain behind both SMMUs
    drv = env.drv("g1", "smmu1")
    drv.write_ste(0, ste_s1(drv._cd_tables[0].ptr, eats=1))  # gpu0 uses ATS
    for dev in ("gpu0", "nic1"):
        r = env.hyp.dma(dev, IOVA, 8, write=True, data=b"g1 owns!")
        assert r.ok and r.pa == env.pa("g1", buf)
    phys1 = env.hyp.smmus["smmu1"].smmu
    ats = phys1.ats_request(0x10, IOVA, write=True)
    assert ats.ok and ats.out == buf  # split-stage ATS answers with the IPA
    assert phys1.atc_lookup(0x10, IOVA) is not None
    pa = env.pa("g1", buf)
    new_ipa = RAM_END + 0x10_0000  # outside g0's RAM: a balloon page
    g1v = env.vmid("g1")
    _watch_scrubs(env)
    env.take_cmds()
    assert env.hyp.reassign_page("g1", buf, "g0", new_ipa) == pa
    log = env.take_cmds()
    assert [c for c in log if c[0] == "smmu0"] == [
        ("smmu0", s2_ipa(g1v, buf)), ("smmu0", SYNC), ("smmu0", 0x10 | g1v << 32),
        ("smmu0", SYNC), ("smmu0", SYNC)]
    # smmu1 also clears gpu0's ATC: ATC_INV SID=0x10 Global=1 Size=52 (dword 0 bit 9).
    assert [c for c in log if c[0] == "smmu1"] == [
        ("smmu1", s2_ipa(g1v, buf)), ("smmu1", SYNC), ("smmu1", 0x10 | g1v << 32),
        ("smmu1", SYNC), ("smmu1", dw(0x10_0000_0240, 52)), ("smmu1", SYNC)]
    assert log[-1] == ("set_owner", pa, "g0")
    assert env.iotlb("smmu0", g1v) == [] and env.iotlb("smmu1", g1v) == []
    assert phys1.atc_lookup(0x10, IOVA) is None
    assert env.owner(pa) == "g0"
    assert env.guest("g0").view.read(new_ipa, 4096) == bytes(4096)  # scrubbed
    env.take_accesses()
    r = env.hyp.dma("gpu0", IOVA, 8, write=True, data=b"stale!!!")
    assert not r.ok
    assert env.guest_events("g1", "smmu1") == [(F_TRANSLATION, S2 | CLASS_IN, IOVA, buf)]
    assert not env.hyp.dma("nic1", IOVA, 8).ok
    assert env.guest_events("g1", "smmu0") == [(F_TRANSLATION, RNW | S2 | CLASS_IN, IOVA, buf)]
    assert env.dma_writes(env.take_accesses()) == []
    assert env.hyp.mem.read(pa, 8) == bytes(8)
    # The new owner uses it.
    dom0, _ = env.dma_setup("g0", "nic0")
    env.g0.dma_map(dom0, 0x80_0000, new_ipa, K4)
    r = env.hyp.dma("nic0", 0x80_0000, 8, write=True, data=b"g0 owns!")
    assert r.ok and r.pa == pa


# ------------------------------------------------------------ destruction
def test_destroyed_guest_is_quarantined_and_its_vmid_retired_after_s12_vmall(env):
    hyp = env.hyp
    for dev in ("nic1", "gpu0"):
        env.dma_setup("g1", dev)
        assert hyp.dma(dev, IOVA, 8, write=True, data=b"g1 data!").ok
    balloon = RAM_END + 0x20_0000
    moved = hyp.reassign_page("g0", RAM + 0x80_0000, "g1", balloon)
    env.guest("g1").view.write(balloon, b"g1 left this here")
    g1v = env.vmid("g1")
    g1_pages = set(hyp.mem.pages_of("g1"))
    doorbell = env.guest("g1").doorbell
    assert moved in g1_pages
    freed_at_vmall = []
    for name, phys in hyp.smmus.items():
        submit = phys.drv.submit

        def spy(*cmds, _submit=submit, _name=name):
            for c in cmds:
                if c & 0xFF == 0x28:  # TLBI_S12_VMALL
                    freed_at_vmall.append((_name, c, g1v in hyp._free_vmids))
            _submit(*cmds)

        phys.drv.submit = spy
    env.take_cmds()
    hyp.destroy_guest("g1")
    log = env.take_cmds()
    # Its devices are quarantined: abort STEs, and no owner for their events.
    assert env.pste("smmu0", 0x11) == ABORT_STE and env.pste("smmu1", 0x10) == ABORT_STE
    assert hyp.smmus["smmu0"].owners.get(0x11) is None
    assert hyp.smmus["smmu1"].owners.get(0x10) is None
    # S12_VMALL of its VMID on both SMMUs, each followed by a SYNC, before the VMID is free.
    assert freed_at_vmall == [("smmu0", 0x28 | g1v << 32, False),
                              ("smmu1", 0x28 | g1v << 32, False)]
    for smmu in ("smmu0", "smmu1"):
        mine = [c for _, c in (e for e in log if e[0] == smmu)]
        assert mine[-2:] == [0x28 | g1v << 32, SYNC]
        assert env.iotlb(smmu, g1v) == []
    # All of its memory is scrubbed and free: RAM, the ballooned-in page, its doorbell.
    assert hyp.mem.pages_of("g1") == [] and hyp.mem.pages_of(("msi", "g1")) == []
    for pa in (*sorted(g1_pages)[:4], moved, doorbell):
        assert env.owner(pa) == "free" and hyp.mem.read(pa, 32) == bytes(32)
    # Its devices DMA into nothing and tell no one.
    env.take_accesses()
    for dev in ("nic1", "gpu0"):
        r = hyp.dma(dev, IOVA, 8, write=True, data=b"zombie!!")
        assert not r.ok and r.fault is None
    assert env.dma_writes(env.take_accesses()) == []
    assert env.all_guest_events() == {} and hyp.unrouted == []

    # A new guest gets a clean slate: a retired VMID with nothing cached, scrubbed RAM.
    g2 = hyp.create_guest(GuestSpec("g2"))
    assert g2.vmid not in (env.vmid("g0"), 0)
    for smmu in ("smmu0", "smmu1"):
        assert env.iotlb(smmu, g2.vmid) == []
    reused = set(hyp.mem.pages_of("g2")) & g1_pages
    assert reused  # the hypervisor recycles pages...
    for pa in sorted(reused)[:8]:
        assert hyp.mem.read(pa, K4) == bytes(K4)  # ...scrubbed
    hyp.assign("nic1", "g2")
    g2k = GuestKernel(hyp, "g2")
    dom = g2k.domain()
    g2k.attach("nic1", dom)
    buf = g2k.buffer(K4)
    g2k.dma_map(dom, IOVA, buf, K4)
    assert g2k.guest.view.read(buf, K4) == bytes(K4)
    r = hyp.dma("nic1", IOVA, 8, write=True, data=b"g2 data!")
    assert r.ok and env.owner(r.pa) == "g2"
    env.kernels["g2"] = g2k


# ------------------------------------------------------------ event routing
def test_events_go_to_the_owner_of_the_physical_stream_only(env):
    """pSID 0x10 exists on both SMMUs (nic0 of g0, gpu0 of g1): a fault of each reaches
    its own guest's vSMMU for that SMMU, with vSID 0."""
    env.dma_setup("g0", "nic0")
    env.dma_setup("g1", "gpu0")
    assert not env.hyp.dma("nic0", 0x7000_0000, 4).ok
    assert not env.hyp.dma("gpu0", 0x7100_0000, 4).ok
    assert not env.hyp.dma("hypdma", 0x7200_0000, 4).ok
    events = env.all_guest_events()
    assert set(events) == {("g0", "smmu0"), ("g1", "smmu1")}
    assert [(e[0], e[2]) for e in events["g0", "smmu0"]] == [(F_TRANSLATION, 0x7000_0000)]
    assert [(e[0], e[2]) for e in events["g1", "smmu1"]] == [(F_TRANSLATION, 0x7100_0000)]
    assert [(f.sid, f.event) for f in env.hyp.unrouted] == [(0x12, 0x04)]


def test_step_lets_hardware_and_guest_queues_progress(shared):
    env = shared
    before = env.hyp.unrouted[:]
    env.take_cmds()
    env.hyp.step()  # nothing pending: no events, no commands
    assert env.hyp.unrouted == before and env.take_cmds() == []
