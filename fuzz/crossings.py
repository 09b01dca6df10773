"""Boundary crossings: where a guest's address is used on its behalf, and whose
memory that address would reach if it were taken as a physical address.

An identity confusion (an IPA used as a PA, a stage 2 skipped, an IOVA let
through untranslated) only shows when the wrong address belongs to someone
else: a campaign whose guest-supplied addresses, taken as PAs, all land on
unbacked memory cannot find one however long it runs.  This records, for each
place the hypervisor's vSMMU or a device uses an address the guest chose, the
class of that address as a PA, relative to the guest:

  own, own-doorbell     the guest's RAM, its MSI doorbell page
  other-guest, other-doorbell   another guest's RAM or doorbell
  hypervisor            the hypervisor's pool (tables, queues)
  free                  backed, owned by nobody
  unbacked              nothing there

Places (`PLACES`): a vSMMU's accesses to the guest's stream table and L1
descriptors (`vsmmu.ste`), command queue, event queue and MSI doorbells (SYNC,
GERROR, event queue), at the IPA the guest programmed, whether or not its stage
2 maps it; and a device's DMA address (`device.dma`).  Not yet: the physical
SMMU's nested fetches (CD, stage-1 tables) at guest IPAs, and ids (vSIDs, VMIDs,
ASIDs).

Coverage keys: "cross.<place>:<class>" (the campaign's coverage table, and what
the mutator aims at: `Aim`, with `Hints.aliases`).
"""

from __future__ import annotations

from vsmmu.hw.frontend import Initiator
from vsmmu.hw.memory import FREE, HYP, PhysMem

PLACES = ("vsmmu.ste", "vsmmu.cmdq", "vsmmu.evtq", "vsmmu.msi", "device.dma")
CLASSES = ("own", "own-doorbell", "other-guest", "other-doorbell", "hypervisor", "free",
           "unbacked")
PREFIX = "cross."


def address_class(mem: PhysMem, guest: str, addr: int) -> str:
    """Whose memory `addr`, taken as a PA, is, seen from `guest`."""
    owner = mem.owner(addr) if 0 <= addr < 1 << mem.pa_bits else None
    if owner is None:
        return "unbacked"
    if owner == HYP:
        return "hypervisor"
    if owner == FREE:
        return "free"
    if isinstance(owner, tuple):  # ("msi", guest): a doorbell page
        return "own-doorbell" if owner[1] == guest else "other-doorbell"
    return "own" if owner == guest else "other-guest"


class Crossings:
    """Watches a hypervisor's guest IPA ports; `reached` holds this run's keys."""

    def __init__(self, hyp):
        self.mem = hyp.mem
        self.assigned = hyp.assigned
        self.reached: set[str] = set()
        hyp.view_observers.append(self._on_view)

    def _on_view(self, kind: str, ipa: int, size: int, who: object, pa: int | None) -> None:
        if isinstance(who, Initiator) and "/" in who.smmu:  # a vSMMU: "<guest>/<smmu>"
            guest = who.smmu.split("/", 1)[0]
            self.reached.add(f"{PREFIX}vsmmu.{who.purpose}:"
                             f"{address_class(self.mem, guest, ipa)}")

    def dma(self, device: str, addr: int) -> None:
        owner = self.assigned.get(device)
        if owner is not None:
            self.reached.add(f"{PREFIX}device.dma:{address_class(self.mem, owner[0], addr)}")


def universe() -> list[str]:
    return [f"{place}:{cls}" for place in PLACES for cls in CLASSES]


# ------------------------------------------------------------ aiming at them
# The class of an address depends on which guest uses it; the mutator offers
# addresses by whose memory they are, and the guest it puts them in decides.
GROUP = {"own": "guest", "other-guest": "guest", "own-doorbell": "doorbell",
         "other-doorbell": "doorbell", "hypervisor": "hypervisor", "free": "free",
         "unbacked": "unbacked"}
# Far above any pool (vsmmu/hyp/host.py), yet inside a guest's 40-bit IPA space:
# a guest pointer beyond its IPA space makes the vSMMU report that pointer in a
# fetch fault, which event-confinement (fetch addresses are guest IPAs) takes
# for a leak.  Known imprecision of that invariant, not aimed at here.
UNBACKED = 0xF0_0000_0000


def aliases_of(hyp) -> tuple[tuple[str, int], ...]:
    """(group, address) of a booted hypervisor: the first RAM pages and the doorbell
    of every guest, its stage-2 start table, free pages, an unbacked address."""
    out = {("unbacked", UNBACKED)}
    for guest in hyp.guests.values():
        out |= {("guest", pa) for pa in sorted(guest.pages.values())[:2]}
        out |= {("doorbell", guest.doorbell), ("hypervisor", guest.s2.ttb)}
    out |= {("free", pa) for pa in hyp.mem.pages_of(FREE)[:2]}
    return tuple(sorted(out))


class Aim:
    """The mutator's aim: an address of a group whose classes no run of this process
    has reached yet (any group once all are reached)."""

    def __init__(self, aliases: tuple[tuple[str, int], ...]):
        self.pools: dict[str, list[int]] = {}
        for group, addr in aliases:
            self.pools.setdefault(group, []).append(addr)
        self.missing = set(CLASSES)

    def saw(self, coverage: set[str]) -> None:
        """A run's coverage: the classes it reached are no longer aimed at."""
        if self.missing:
            for key in coverage:
                if key.startswith(PREFIX):
                    self.missing.discard(key.rpartition(":")[2])

    def pick(self, rng) -> int | None:
        if not self.pools:
            return None
        wanted = {GROUP[c] for c in self.missing} & self.pools.keys()
        group = rng.choice(sorted(wanted or self.pools))
        return rng.choice(self.pools[group])
