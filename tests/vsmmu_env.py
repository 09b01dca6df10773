"""A harness for the vSMMU + hypervisor suites (tests/test_vsmmu_*.py, test_hypervisor.py).

`VEnv` is the default platform (`Hypervisor()`: smmu0/smmu1, guests g0/g1, the
devices of `platform.default_platform`) with both guests' kernels brought up
through `GuestKernel`, plus the observation points the tests assert on:

* every command the hypervisor (or a vSMMU on a guest's behalf) puts on a
  physical command queue, captured by wrapping each physical driver's `submit`;
* every access an SMMU makes to physical memory (DMA, table walks, STE/CD
  fetches, queue writes, MSIs), with its `Initiator`;
* raw guest-side views: a vSTE in the guest's stream table, the records in a
  guest's event queue as four 64-bit dwords, read through the guest's own
  registers and memory (what a guest kernel would see).

Expected values in the tests are worked out by hand; this module only builds
inputs and reads outputs.  Hand-derived constants shared by several files
live here, each with its derivation.

The default platform (platform.default_platform)::

    device  smmu   pSID  guest  vSID  ats
    nic0    smmu0  0x10  g0     0
    nic1    smmu0  0x11  g1     0
    hypdma  smmu0  0x12  -      -
    disk0   smmu0  0x13  g0     1
    gpu0    smmu1  0x10  g1     0     yes
    nvme0   smmu1  0x20  g0     0
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator

from smmu_env import EVENTQ_BASE, EVENTQ_CONS, EVENTQ_PROD

from vsmmu.arch.layouts import CMD_ANY, COMMANDS
from vsmmu.guests.guest import Domain, GuestKernel
from vsmmu.hw.frontend import Initiator
from vsmmu.hyp.hypervisor import Hypervisor

K4 = 0x1000
RAM = 0x4000_0000  # guest RAM IPA (hypervisor docstring: GUEST_RAM)
RAM_SIZE = 16 << 20  # default_platform: 16 MiB per guest
RAM_END = RAM + RAM_SIZE  # first IPA past a guest's RAM
MSI_IOVA = 0x0800_0000  # the reserved MSI window, IOVA == IPA (hypervisor: MSI_WINDOW)
IOVA = 0x10_0000  # where tests map their DMA buffers

# ------------------------------------------------------------ hand-derived words
# The hypervisor's stage-2 half for a 40-bit IPA space with 4K pages (IHI 0070 STE):
#   dword 2 = S2VMID[15:0]
#           | S2T0SZ = 64 - 40 = 24     at bits 37:32  -> 0x0000_0018_0000_0000
#           | S2SL0 = 1 (start level 1: a level-0 table would resolve only IPA bit 39,
#             so the walk starts at level 1 with two concatenated tables)
#                                        at bits 39:38  -> 0x0000_0040_0000_0000
#           | S2IR0 = 1 (WB RA WA)       at bits 41:40  -> 0x0000_0100_0000_0000
#           | S2OR0 = 1                  at bits 43:42  -> 0x0000_0400_0000_0000
#           | S2SH0 = 3 (inner)          at bits 45:44  -> 0x0000_3000_0000_0000
#           | S2TG = 0 (4K)              at bits 47:46
#           | S2PS = 2 (40 bits)         at bits 50:48  -> 0x0002_0000_0000_0000
#           | S2AA64 = 1                 at bit 51      -> 0x0008_0000_0000_0000
#           | S2R = 1 (record faults)    at bit 58      -> 0x0400_0000_0000_0000
#   dword 3 = S2TTB (address bits 51:4 at bits 51:4: the address itself)
S2_DW2 = 0x040A_3558_0000_0000
S2_ONLY_DW0 = 0xD  # V=1 | Config=0b110 << 1
NESTED_DW0 = 0xF  # V=1 | Config=0b111 << 1
MEV_DW1 = 1 << 19  # STE bit 83
ABORT_STE = 0x1  # V=1, Config=0b000
# Linux's stage-1 STE as GuestKernel.attach writes it: S1CIR=1 (bits 67:66), S1COR=1
# (69:68), S1CSH=3 (71:70) -> dword 1 = 0x4 | 0x10 | 0xC0.
GUEST_S1_DW1 = 0xD4


def dw(*dwords: int) -> int:
    """64-bit dwords, dword 0 first, as one little-endian integer."""
    return sum((d & (1 << 64) - 1) << (64 * i) for i, d in enumerate(dwords))


def dwords(word: int, n: int = 8) -> tuple[int, ...]:
    return tuple((word >> (64 * i)) & ((1 << 64) - 1) for i in range(n))


def s2_only_ste(vmid: int, ttb: int) -> int:
    return dw(S2_ONLY_DW0, 0, S2_DW2 | vmid, ttb)


def nested_ste(vmid: int, ttb: int, dw0: int, dw1: int) -> int:
    """The hypervisor's stage 2 with the guest's stage-1 dwords 0-1 (V/Config forced to
    nested, MEV forced on)."""
    return dw(dw0 | NESTED_DW0, dw1 | MEV_DW1, S2_DW2 | vmid, ttb)


# ------------------------------------------------------------ the environment
class VEnv:
    """The default platform with both guest kernels up (~0.25 s each: share one per
    module where tests restore what they change; `fresh()` collects it afterwards)."""

    def __init__(self) -> None:
        self.hyp = Hypervisor()
        self.kernels = {name: GuestKernel(self.hyp, name) for name in ("g0", "g1")}
        self.cmds: list[tuple[str, int]] = []  # (smmu, command) as submitted physically
        self.accesses: list[tuple[str, int, int, Initiator]] = []  # SMMU memory accesses
        for name, phys in self.hyp.smmus.items():
            phys.drv.submit = self._capturing(name, phys.drv.submit)
        self.hyp.mem.observers.append(self._observe)

    def close(self) -> None:
        """Break the hypervisor's reference cycles and collect it now: each instance
        holds ~150 MB of guest RAM, which would otherwise pile up between tests."""
        self.hyp.mem.observers.clear()
        self.kernels.clear()
        self.accesses.clear()
        gc.collect()

    def _capturing(self, name: str, submit):
        def wrapper(*cmds: int) -> None:
            self.cmds.extend((name, c) for c in cmds)
            submit(*cmds)

        return wrapper

    def _observe(self, kind: str, pa: int, size: int, initiator: object) -> None:
        if isinstance(initiator, Initiator):
            self.accesses.append((kind, pa, size, initiator))

    # ------------------------------------------------------------- lookups
    @property
    def g0(self) -> GuestKernel:
        return self.kernels["g0"]

    @property
    def g1(self) -> GuestKernel:
        return self.kernels["g1"]

    def guest(self, name: str):
        return self.hyp.guests[name]

    def vmid(self, name: str) -> int:
        return self.hyp.guests[name].vmid

    def s2_ttb(self, name: str) -> int:
        return self.hyp.guests[name].s2.ttb

    def vsmmu(self, guest: str, smmu: str):
        return self.hyp.guests[guest].vsmmus[smmu]

    def drv(self, guest: str, smmu: str):
        """The guest kernel's driver for its vSMMU of `smmu`."""
        return self.kernels[guest].drivers[smmu]

    def pste(self, smmu: str, psid: int) -> int:
        """The physical STE as the hypervisor's stream table holds it."""
        return self.hyp.smmus[smmu].drv.read_ste(psid)

    def iotlb(self, smmu: str, vmid: int | None = None) -> list:
        entries = self.hyp.smmus[smmu].smmu.iotlb.entries()
        return [e for e in entries if vmid is None or e.vmid == vmid]

    # ------------------------------------------------------------- observations
    def take_cmds(self) -> list[tuple[str, int]]:
        out, self.cmds = self.cmds, []
        return out

    def take_accesses(self) -> list[tuple[str, int, int, Initiator]]:
        out, self.accesses = self.accesses, []
        return out

    def dma_writes(self, accesses: Iterable | None = None) -> list[tuple[int, int, Initiator]]:
        acc = self.accesses if accesses is None else accesses
        return [(pa, n, i) for kind, pa, n, i in acc if kind == "w" and i.purpose == "dma"]

    def owner(self, pa: int):
        return self.hyp.mem.owner(pa)

    def pa(self, guest: str, ipa: int) -> int:
        return self.hyp.guests[guest].view.pa_of(ipa)

    # ------------------------------------------------------------- guest actions
    def dma_setup(self, guest: str, device: str, iova: int = IOVA, size: int = K4,
                  write: bool = True) -> tuple[Domain, int]:
        """Attach `device` to a fresh stage-1 domain mapping [iova, iova+size) to a fresh
        buffer; returns (domain, buffer IPA)."""
        k = self.kernels[guest]
        dom = k.domain()
        k.attach(device, dom)
        buf = k.buffer(size)
        k.dma_map(dom, iova, buf, size, write=write)
        return dom, buf

    def vste_addr(self, guest: str, smmu: str, vsid: int) -> int:
        return self.drv(guest, smmu).ste_addr(vsid)

    def vste(self, guest: str, smmu: str, vsid: int) -> int:
        return self.guest(guest).view.read_int(self.vste_addr(guest, smmu, vsid), 64)

    def put_vste(self, guest: str, smmu: str, vsid: int, word: int, cfgi: bool = True) -> None:
        """Write a raw vSTE into the guest's stream table, then (as the guest) CFGI_STE."""
        self.guest(guest).view.write_int(self.vste_addr(guest, smmu, vsid), word, 64)
        if cfgi:
            self.drv(guest, smmu).cfgi_ste(vsid)

    def guest_events(self, guest: str, smmu: str) -> list[tuple[int, int, int, int]]:
        """New records in the guest's event queue as four dwords, read the way a guest
        does (EVENTQ_BASE/PROD/CONS registers, queue in its IPA space); CONS advances."""
        v = self.vsmmu(guest, smmu)
        view = self.guest(guest).view
        base_reg = v.read(EVENTQ_BASE, 8)
        log2 = min(base_reg & 0x1F, 19)
        n = 1 << log2
        base = base_reg & 0x000F_FFFF_FFFF_FFE0 & ~(32 * n - 1)
        prod, cons = v.read(EVENTQ_PROD), v.read(EVENTQ_CONS)
        mask = 2 * n - 1
        out = []
        while (cons & mask) != (prod & mask):
            raw = view.read(base + (cons & (n - 1)) * 32, 32)
            out.append(tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, 32, 8)))
            cons = (cons & ~mask) | ((cons + 1) & mask)
        v.write(EVENTQ_CONS, cons | (prod & 1 << 31))  # acknowledge OVFLG as well
        return out

    def all_guest_events(self) -> dict[tuple[str, str], list]:
        """Drain every live guest's event queues; only the non-empty ones are returned."""
        out = {}
        for g in [g for g in self.kernels if g in self.hyp.guests]:
            for s in self.hyp.smmus:
                ev = self.guest_events(g, s)
                if ev:
                    out[(g, s)] = ev
        return out


def fresh() -> Iterator[VEnv]:
    """Body of an `env` fixture: a new VEnv, collected after the test."""
    env = VEnv()
    try:
        yield env
    finally:  # also when a module fixture closes the generator
        env.close()


def cmd_names(cmds: Iterable[tuple[str, int]]) -> list[tuple[str, str]]:
    """(smmu, command formatted) pairs, for readable assertion messages."""
    return [(s, COMMANDS.get(c & 0xFF, CMD_ANY).format(c)) for s, c in cmds]
