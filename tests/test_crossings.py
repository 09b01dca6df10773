"""Boundary crossings (fuzz/crossings.py): whose memory a guest's address would reach
as a PA, where a vSMMU or a device uses it, and the mutator's aim at what is missing."""

from __future__ import annotations

import random

from fuzz.crossings import CLASSES, PLACES, UNBACKED, Aim, address_class, aliases_of
from fuzz.hints import hints_from
from fuzz.mutate import Generator, Mutator
from fuzz.program import parse
from fuzz.results import GROUPS
from fuzz.runner import Runner, boot
from vsmmu.hw.frontend import Initiator
from vsmmu.hyp.host import GUEST_RAM


def _first_page(system, guest: str) -> int:
    return min(system.hyp.guests[guest].pages.values())


def test_classes_are_whose_memory_the_address_is_from_the_guests_side():
    system = boot(monitor=False)
    hyp = system.hyp
    g0_ram, g1_ram = _first_page(system, "g0"), _first_page(system, "g1")
    mem = hyp.mem
    assert address_class(mem, "g0", g0_ram) == "own"
    assert address_class(mem, "g1", g0_ram + 0xFF8) == "other-guest"
    assert address_class(mem, "g0", g1_ram) == "other-guest"
    assert address_class(mem, "g0", hyp.guests["g0"].doorbell) == "own-doorbell"
    assert address_class(mem, "g1", hyp.guests["g0"].doorbell) == "other-doorbell"
    # the hypervisor's pool sits at the PAs equal to guest RAM's IPAs (vsmmu/hyp/host.py)
    assert address_class(mem, "g0", GUEST_RAM) == "hypervisor"
    assert address_class(mem, "g0", UNBACKED) == "unbacked"
    assert address_class(mem, "g0", -1) == address_class(mem, "g0", 1 << 60) == "unbacked"
    [freed] = hyp.unmap("g1", GUEST_RAM, 0x1000)  # back to nobody, still backed
    assert address_class(mem, "g0", freed) == "free"


def test_a_vsmmu_access_is_classed_by_the_ipa_the_guest_gave_mapped_or_not():
    system = boot(monitor=False)
    guest = system.hyp.guests["g0"]
    vsmmu = next(iter(guest.vsmmus.values()))
    g1_ram = _first_page(system, "g1")
    try:  # g1's PA is no IPA of g0's: the access fails, the crossing was still made
        guest.view.read(g1_ram, 8, Initiator(vsmmu.name, "evtq"))
    except Exception:  # noqa: BLE001 - BusError: unmapped for g0
        pass
    guest.view.read(GUEST_RAM, 8, Initiator(vsmmu.name, "cmdq"))
    guest.view.read(GUEST_RAM, 8)  # the guest's own CPU: not a crossing
    assert system.crossings.reached == {"cross.vsmmu.evtq:other-guest",
                                        "cross.vsmmu.cmdq:hypervisor"}


def test_a_dma_address_is_classed_for_the_guest_that_owns_the_device():
    system = boot(monitor=False)
    g1_ram = _first_page(system, "g1")
    device = next(d for d, (g, _) in sorted(system.hyp.assigned.items()) if g == "g0")
    index = list(system.hyp.devices).index(device)
    result = Runner().run(parse(f"dma device={index:#x} iova={g1_ram:#x} size=0x3 flags=0x0 "
                                "ssid=0x0"))
    assert "cross.device.dma:other-guest" in result.coverage
    assert result.ok  # the SMMU translated it: no crossing happened, only its chance


def test_the_table_lists_every_place_and_class():
    prefix, names = GROUPS["boundary crossings"]
    assert prefix == "cross." and len(names) == len(PLACES) * len(CLASSES) == 35
    assert "vsmmu.evtq:other-guest" in names and "device.dma:unbacked" in names


def test_the_aim_offers_what_no_run_has_reached_yet():
    hints = hints_from(boot(monitor=False))
    groups = {g for g, _ in hints.aliases}
    assert {"guest", "doorbell", "hypervisor", "unbacked"} <= groups
    assert hints.aliases == aliases_of(boot(monitor=False).hyp)  # a function of the boot
    aim = Aim(hints.aliases)
    pools = {g: {a for gg, a in hints.aliases if gg == g} for g in groups}
    aim.saw({f"cross.device.dma:{c}" for c in CLASSES if c != "unbacked"} | {"smmu.cmd:SYNC"})
    assert aim.missing == {"unbacked"}
    rng = random.Random(0)
    assert {aim.pick(rng) for _ in range(20)} == pools["unbacked"]
    aim.saw({"cross.vsmmu.msi:unbacked"})
    assert not aim.missing and {aim.pick(rng) for _ in range(200)} == {a for _, a in hints.aliases}


def test_the_mutator_keeps_one_aim_and_is_still_repeatable():
    hints = hints_from(boot(monitor=False))
    m = Mutator(hints)
    assert Generator(random.Random(0), hints, m.bias, m.aim).aim is m.aim
    outputs = [m.mutate(b"", 1024, seed) for seed in range(30)]
    assert outputs == [Mutator(hints).mutate(b"", 1024, seed) for seed in range(30)]


def test_a_relocation_moves_a_structure_while_it_is_disabled():
    from fuzz.mutate import RELOCATABLE, SYSTEM
    from vsmmu.arch.layouts import REGISTERS

    system = boot(monitor=False)
    hints = hints_from(system)
    gen = Generator(random.Random(2), hints, SYSTEM)
    seen = set()
    for _ in range(60):
        off, base, on = gen.relocation()
        names = [REGISTERS[op.reg].name for op in (off, base, on)]
        assert names[0] == names[2] == "CR0" and names[1] in RELOCATABLE
        cr0 = REGISTERS[off.reg].layout
        assert cr0.get(off.value, RELOCATABLE[names[1]]) == 0 and on.value == 0xD
        seen.add(names[1])
        assert off.guest == base.guest == on.guest and off.smmu == base.smmu == on.smmu
    assert seen == set(RELOCATABLE)
    # moved to another guest's RAM, the event queue's next record is an other-guest
    # crossing, which the vSMMU refuses (unmapped IPA for g0): the model stays clean
    g1_ram = _first_page(system, "g1")
    evtq = REGISTERS.index(next(r for r in REGISTERS if r.name == "EVENTQ_BASE"))
    cr0 = REGISTERS.index(next(r for r in REGISTERS if r.name == "CR0"))
    prog = parse(f"mmio_write guest=0x0 smmu=0x0 reg={cr0:#x} value=0x9\n"
                 f"mmio_write guest=0x0 smmu=0x0 reg={evtq:#x} value={g1_ram | 4:#x}\n"
                 f"mmio_write guest=0x0 smmu=0x0 reg={cr0:#x} value=0xd\n"
                 "dma device=0x0 iova=0x0 size=0x3 flags=0x0 ssid=0x0\n")
    result = Runner().run(prog)
    assert result.ok and "cross.vsmmu.evtq:other-guest" in result.coverage
