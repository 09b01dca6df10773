"""Seed corpora: what real guest software does, written down as programs.

Each seed is built by running it on a booted fuzzing platform (`runner.boot`):
typed operations (`vste`, `cd`, `pte`, `dma`, hypervisor actions, ...) run as
the runner runs them, and guest-kernel code (`vsmmu.guests.guest.GuestKernel` and its
Linux-style driver: page tables, TLBI_NH_VA range invalidations, CMD_SYNC with
an MSI) runs for real while its writes to guest RAM become `mem` operations
and its commands `cmd` operations.  Replayed from the same boot state, the
program does what the kernel did.  Structures the runner's typed operations
locate themselves (a device's CD, the vSTE of a vSID) are written with them,
with words from the driver's builders (`ste_s1`, `cd`).

`write_seeds(root, target)` writes `root/<target>/seed-<name>` (canonical
program bytes, what a fuzzer loads) for the harness targets; `write_texts`
writes the same programs as text to `root/programs/` for people.  The checked-in
`corpora/` is their output: `python -m fuzz.corpus [DIR]` regenerates it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vsmmu.arch.layouts import REG, REGISTERS, STE, Config
from vsmmu.arch.layouts import Op as Opcode
from vsmmu.arch.virtio_layouts import map_req, probe_req, unmap_req
from vsmmu.guests.guest import GuestKernel
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM, IPA_BITS, MSI_WINDOW
from vsmmu.sw.driver import cd, cmd, ste_s1

from .program import OP_BY_NAME, Op, encode, parse, to_text
from .runner import (
    ATOMIC,
    DMA_BUF,
    DMA_IOVA,
    PRIV,
    SSV,
    TRANSLATED,
    System,
    W,
    boot,
    execute,
    fuzz_platform,
)
from .targets import TARGETS

MAX_SEED_BYTES = 1024


def _reg(name: str) -> int:
    """A register's operand in `mmio_read`/`mmio_write`: its index in REGISTERS."""
    return [r.name for r in REGISTERS].index(name)


class SeedBuilder:
    """One seed program, built by running it on a booted fuzzing platform."""

    def __init__(self, name: str, doc: str, viommu: str = "smmuv3"):
        self.name, self.doc = name, doc
        self.system: System = boot(fuzz_platform(viommu), monitor=False)
        self.ops: list[Op] = []

    # ------------------------------------------------------------ names
    def slot(self, guest: str) -> int:
        return int(guest.removeprefix("g"))

    def smmu(self, name: str) -> int:
        return list(self.system.hyp.smmus).index(name)

    def device(self, name: str) -> int:
        return list(self.system.hyp.devices).index(name)

    def kernel(self, guest: str) -> GuestKernel:
        return self.system.kernels[guest]

    def cd_table(self, device: str) -> int:
        """The IPA of a device's CD table (what its vSTE's S1ContextPtr holds)."""
        guest = self.system.hyp.assigned[device][0]
        smmu, vsid = self.kernel(guest).vsid(device)
        return self.kernel(guest).drivers[smmu]._cd_tables[vsid].ptr

    # ------------------------------------------------------------ typed operations
    def op(self, text: str) -> None:
        """One operation, in program text: run it and write it down."""
        [op] = parse(text)
        execute(self.system, op)
        self.ops.append(op)

    def dma(self, device: str, iova: int, size: int = 8, flags: int = 0, ssid: int = 0) -> None:
        self.op(f"dma device={self.device(device)} iova={iova:#x} size={size - 1} "
                f"flags={flags:#x} ssid={ssid}")

    def vste(self, device: str, word: int) -> None:
        guest, vsid = self.system.hyp.assigned[device]
        smmu = self.system.hyp.devices[device].smmu
        self.op(f"vste guest={self.slot(guest)} smmu={self.smmu(smmu)} vsid={vsid} "
                f"ste={word.to_bytes(64, 'little').hex()}")

    def cd(self, device: str, word: int, ssid: int = 0) -> None:
        guest = self.system.hyp.assigned[device][0]
        self.op(f"cd guest={self.slot(guest)} device={self.device(device)} ssid={ssid} "
                f"cd={word.to_bytes(64, 'little').hex()}")

    def cmd(self, guest: str, smmu: str, word: int) -> None:
        self.op(f"cmd guest={self.slot(guest)} smmu={self.smmu(smmu)} "
                f"cmd={word.to_bytes(16, 'little').hex()}")

    def events(self, guest: str, smmu: str) -> None:
        self.op(f"events guest={self.slot(guest)} smmu={self.smmu(smmu)}")

    def mmio_write(self, guest: str, smmu: str, reg: str, value: int) -> None:
        self.op(f"mmio_write guest={self.slot(guest)} smmu={self.smmu(smmu)} reg={_reg(reg)} "
                f"value={value:#x}")

    # ------------------------------------------------------------ guest kernel code
    @contextmanager
    def guest_code(self, guest: str) -> Iterator[GuestKernel]:
        """Run guest-kernel code for real, writing down its RAM writes (each changed
        aligned 8 bytes, as `mem`) and its commands (as `cmd`, one per command)."""
        kernel = self.kernel(guest)
        view = self.system.hyp.guests[guest].view
        slot, in_queue = self.slot(guest), [0]
        write = view.write

        def recording_write(addr: int, data: bytes, initiator: object = None) -> None:
            if initiator is not None or in_queue[0]:  # the vSMMU's own, or a queue slot
                write(addr, data, initiator)
                return
            lo, hi = addr & -8, (addr + len(data) + 7) & -8
            before = view.read(lo, hi - lo)
            write(addr, data, initiator)
            after = view.read(lo, hi - lo)
            for off in range(0, hi - lo, 8):
                if before[off : off + 8] != after[off : off + 8]:
                    self.ops.append(Op(OP_BY_NAME["mem"],
                                       (slot, lo + off - GUEST_RAM, after[off : off + 8])))

        def recording_submit(smmu: str, submit: Callable[..., None]) -> Callable[..., None]:
            def run(*words: int) -> None:
                for word in words:
                    self.ops.append(Op(OP_BY_NAME["cmd"], (slot, self.smmu(smmu),
                                                           word.to_bytes(16, "little"))))
                in_queue[0] += 1
                try:
                    submit(*words)
                finally:
                    in_queue[0] -= 1
            return run

        view.write = recording_write
        for name, drv in kernel.drivers.items():
            drv.submit = recording_submit(name, drv.submit)
        try:
            yield kernel
        finally:
            del view.write
            for drv in kernel.drivers.values():
                del drv.submit


# ------------------------------------------------------------ the seeds
def _dma_boot_buffer() -> SeedBuilder:
    b = SeedBuilder("dma-boot-buffer", "every assigned device reads and writes its boot DMA "
                    "buffer, the buffer's last bytes, and its guest's MSI doorbell")
    for device in ("nic0", "disk0", "nvme0", "nic1", "gpu0"):
        b.dma(device, DMA_IOVA, 8, W)
        b.dma(device, DMA_IOVA + DMA_BUF - 8, 8)
    b.dma("nic0", DMA_IOVA + 0x40, 16, W | PRIV)
    b.dma("nvme0", DMA_IOVA + 0x80, 8, W | ATOMIC)
    b.dma("nic0", MSI_WINDOW[0] + 0x40, 4, W)
    b.dma("gpu0", MSI_WINDOW[0] + 0x40, 4, W)
    return b


def _map_unmap() -> SeedBuilder:
    b = SeedBuilder("map-unmap", "the guest unmaps two pages of a live DMA mapping with the "
                    "TLBI_NH_VA range commands Linux issues, the device faults, the guest maps "
                    "fresh pages there (no invalidation: Linux does not on map)")
    dom = b.system.domains["nic0"]
    b.dma("nic0", DMA_IOVA + 0x1000, 8, W)
    with b.guest_code("g0") as k:
        k.dma_unmap(dom, DMA_IOVA, 2 * PAGE_SIZE)
    b.dma("nic0", DMA_IOVA + 0x1000, 8)
    b.events("g0", "smmu0")
    with b.guest_code("g0") as k:
        k.dma_map(dom, DMA_IOVA, k.buffer(2 * PAGE_SIZE), 2 * PAGE_SIZE)
    b.dma("nic0", DMA_IOVA + 0x1000, 8, W)
    return b


def _reattach() -> SeedBuilder:
    b = SeedBuilder("reattach", "the guest moves a device to a new stage-1 domain: builds its "
                    "page table, writes the CD with the new ASID and TTB0, re-writes the vSTE, "
                    "invalidates the old ASID, then the device does DMA through it")
    b.dma("nic0", DMA_IOVA, 8, W)
    old = b.system.domains["nic0"]
    with b.guest_code("g0") as k:
        dom = k.domain()
        dom.asid = 9  # beyond the ASIDs the boot domains use
        k.dma_map(dom, DMA_IOVA, k.buffer(PAGE_SIZE), PAGE_SIZE)
        k.map_msi(dom)
    b.cd("nic0", cd(dom.asid, dom.table.ttb, dom.tsz, dom.table.granule, ips=IPA_BITS))
    b.cmd("g0", "smmu0", cmd(Opcode.SYNC))
    b.vste("nic0", ste_s1(b.cd_table("nic0")))
    b.cmd("g0", "smmu0", cmd(Opcode.TLBI_NH_ASID, ASID=old.asid))
    b.cmd("g0", "smmu0", cmd(Opcode.SYNC))
    b.dma("nic0", DMA_IOVA, 8, W)
    b.dma("nic0", DMA_IOVA + PAGE_SIZE, 8)  # no longer mapped
    b.dma("nic0", MSI_WINDOW[0], 4, W)
    b.events("g0", "smmu0")
    return b


def _sync_msi() -> SeedBuilder:
    b = SeedBuilder("sync-msi", "Linux's invalidation commands (TLBI_NH_ASID, TLBI_NH_ALL, "
                    "CFGI_ALL, PREFETCH_CONFIG), each batch completed by a CMD_SYNC that "
                    "signals with an MSI write to a guest completion word")
    with b.guest_code("g0") as k:
        word = k.buffer(64)
        drv = k.drivers["smmu0"]
        drv.tlbi_asid(b.system.domains["nic0"].asid)
        drv.sync(cs="irq", msi_addr=word, msi_data=0x1234)
        drv.submit(cmd(Opcode.PREFETCH_CONFIG, SID=1), cmd(Opcode.CFGI_STE_RANGE, RANGE=31))
        drv.sync(cs="irq", msi_addr=word + 8, msi_data=0x5678)
        k.drivers["smmu1"].tlbi_nh_all()
        k.drivers["smmu1"].sync(cs="irq", msi_addr=word + 16, msi_data=1)
    b.op(f"mmio_read guest=0 smmu=0 reg={_reg('CMDQ_CONS')}")
    b.dma("nic0", DMA_IOVA, 8, W)
    return b


def _event_service() -> SeedBuilder:
    b = SeedBuilder("event-service", "faults of every kind a guest's own state causes "
                    "(a bad vSTE, an SSID beyond its CD table, an unmapped IOVA), each "
                    "followed by the guest draining its event queue, then the vSTE repaired")
    b.vste("nic0", STE.encode(V=1, CONFIG=0b110))  # stage 2: the vSMMU has none (ILLEGAL)
    b.dma("nic0", DMA_IOVA, 8)
    b.events("g0", "smmu0")
    b.vste("nic0", ste_s1(b.cd_table("nic0")))
    b.dma("nic0", DMA_IOVA, 8, SSV, ssid=3)
    b.dma("nic0", DMA_IOVA + DMA_BUF, 8, W)
    b.events("g0", "smmu0")
    b.dma("nic0", DMA_IOVA, 8, W)
    return b


def _pte_rewrite() -> SeedBuilder:
    b = SeedBuilder("pte-rewrite", "the guest points a live leaf descriptor at another of "
                    "its pages with the TLBI_NH_VA Linux would send, then clears it")
    dom = b.system.domains["nvme0"]
    b.dma("nvme0", DMA_IOVA, 8, W)
    [(_, _, leaf)] = dom.table.descriptors(DMA_IOVA)[-1:]
    smmu = b.smmu("smmu1")
    tlbi = cmd(Opcode.TLBI_NH_VA, ASID=dom.asid, ADDR=DMA_IOVA, LEAF=1).to_bytes(16, "little")
    sync = cmd(Opcode.SYNC).to_bytes(16, "little")
    for desc in (leaf + PAGE_SIZE, 0):
        b.op(f"pte guest=0 device={b.device('nvme0')} iova={DMA_IOVA:#x} level=3 "
             f"desc={desc:#x}")
        b.op(f"cmd guest=0 smmu={smmu} cmd={tlbi.hex()}")
        b.op(f"cmd guest=0 smmu={smmu} cmd={sync.hex()}")
        b.dma("nvme0", DMA_IOVA, 8, W)
    b.events("g0", "smmu1")
    return b


def _hyp_unmap_reassign() -> SeedBuilder:
    b = SeedBuilder("hyp-unmap-reassign", "the hypervisor unmaps the page behind a device's "
                    "DMA buffer (stage-2 fault, event), balloons another page to the other "
                    "guest, and backs the first again")
    page = (b.system.domains["nic0"].table.translate(DMA_IOVA) - GUEST_RAM) // PAGE_SIZE
    b.dma("nic0", DMA_IOVA, 8, W)
    b.op(f"s2_unmap guest=0 page={page:#x}")
    b.dma("nic0", DMA_IOVA, 8)
    b.events("g0", "smmu0")
    b.op(f"reassign guest=0 page={page + 1:#x} dst=1 dst_page=0x0")
    b.dma("nic0", DMA_IOVA + PAGE_SIZE, 8, W)
    b.dma("nic1", DMA_IOVA, 8, W)
    b.op(f"s2_map guest=0 page={page:#x}")
    b.dma("nic0", DMA_IOVA, 8, W)
    b.op("step count=0x1")
    return b


def _hyp_assign() -> SeedBuilder:
    b = SeedBuilder("hyp-assign", "the hypervisor moves a device between guests (quarantine "
                    "in between), the new owner points its vSTE at an existing CD table, then "
                    "the hypervisor destroys and re-creates that guest")
    b.op(f"deassign device={b.device('nic0')}")
    b.dma("nic0", DMA_IOVA, 8, W)
    b.op(f"assign device={b.device('nic0')} guest=1")
    b.vste("nic0", ste_s1(b.cd_table("nic1")))
    b.dma("nic0", DMA_IOVA, 8, W)
    b.events("g1", "smmu0")
    b.op("destroy guest=1")
    b.dma("nic0", DMA_IOVA, 8)
    b.op("create guest=1")
    b.op("step count=0x0")
    return b


def _ats() -> SeedBuilder:
    b = SeedBuilder("ats", "a guest enables ATS on its device's vSTE; the device requests a "
                    "translation and uses it, the guest invalidates its ATC, the hypervisor "
                    "unmaps the page behind it")
    b.vste("gpu0", ste_s1(b.cd_table("gpu0"), eats=1))
    device = b.device("gpu0")
    b.op(f"ats device={device} iova={DMA_IOVA:#x} flags={W:#x} ssid=0x0")
    phys = b.system.hyp.smmus["smmu1"].smmu
    [(in_base, _size, out, _perm)] = phys.atc[(b.system.hyp.devices["gpu0"].sid, None)]
    b.dma("gpu0", out + (DMA_IOVA - in_base), 8, W | TRANSLATED)
    with b.guest_code("g1") as k:
        drv = k.drivers["smmu1"]
        drv.submit(cmd(Opcode.ATC_INV, SID=0, ADDR=DMA_IOVA, SIZE=0))
        drv.sync()
    b.op(f"ats device={device} iova={DMA_IOVA:#x} flags=0x0 ssid=0x0")
    page = (b.system.domains["gpu0"].table.translate(DMA_IOVA) - GUEST_RAM) // PAGE_SIZE
    b.op(f"s2_unmap guest=1 page={page:#x}")
    b.dma("gpu0", out + (DMA_IOVA - in_base), 8, TRANSLATED)
    b.events("g1", "smmu1")
    return b


def _vsmmu_disable() -> SeedBuilder:
    b = SeedBuilder("vsmmu-disable", "a guest turns translation off on one vSMMU (its streams "
                    "follow GBPA: abort) and back on")
    cr0 = REG["CR0"].layout
    b.mmio_write("g0", "smmu1", "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1))
    b.dma("nvme0", DMA_IOVA, 8, W)
    b.mmio_write("g0", "smmu1", "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1, SMMUEN=1))
    b.dma("nvme0", DMA_IOVA, 8, W)
    b.vste("nvme0", STE.encode(V=1, CONFIG=Config.BYPASS))
    b.dma("nvme0", DMA_IOVA, 8, W)
    b.events("g0", "smmu1")
    return b


def _vsmmu_bypass() -> SeedBuilder:
    b = SeedBuilder("vsmmu-bypass", "a guest sets its vSMMU's GBPA to bypass and turns "
                    "translation off (Linux's shutdown path without disable_bypass): its "
                    "device DMAs by IPA, through stage 2 only; then back on")
    cr0, gbpa = REG["CR0"].layout, REG["GBPA"].layout
    b.mmio_write("g0", "smmu1", "GBPA", gbpa.encode(UPDATE=1, ABORT=0))
    b.mmio_write("g0", "smmu1", "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1))
    b.dma("nvme0", GUEST_RAM + 0x20 * PAGE_SIZE, 8, W)
    b.mmio_write("g0", "smmu1", "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1, SMMUEN=1))
    b.dma("nvme0", DMA_IOVA, 8, W)
    return b


# ------------------------------------------------------------ virtio-iommu guests
def _viommu_boot_map(b: SeedBuilder, device: str) -> tuple[int, int]:
    """A device's boot domain and the guest RAM page behind its boot DMA buffer
    (the domain's MAP at DMA_IOVA)."""
    guest = b.system.hyp.guests[b.system.hyp.assigned[device][0]]
    domain = b.system.domains[device].id
    [m] = [m for m in guest.viommu.mappings(domain) if m.virt_start == DMA_IOVA]
    return domain, (m.phys_start - GUEST_RAM) // PAGE_SIZE


def _viommu_map_unmap() -> SeedBuilder:
    b = SeedBuilder("viommu-map-unmap", "a virtio-iommu guest maps two more pages for its "
                    "device, which DMAs through them; it unmaps them, the device faults and "
                    "the guest reads the fault event", "virtio")
    domain, page = _viommu_boot_map(b, "nic0")
    b.op(f"viommu_map guest=0 domain={domain} iova=0x20000000 pages=1 page={page:#x} flags=0x3")
    b.dma("nic0", 0x2000_1000, 8, W)
    b.op(f"viommu_unmap guest=0 domain={domain} iova=0x20000000 pages=1")
    b.dma("nic0", 0x2000_1000, 8, W)
    b.op("events guest=0 smmu=0")
    return b


def _viommu_unmap_several() -> SeedBuilder:
    b = SeedBuilder("viommu-unmap-several", "a virtio-iommu guest maps two pages right after "
                    "its device's boot mapping, then one UNMAP over both mappings removes them "
                    "both (the specification's example); DMA through either faults", "virtio")
    domain, page = _viommu_boot_map(b, "nic0")
    after = DMA_IOVA + DMA_BUF
    b.op(f"viommu_map guest=0 domain={domain} iova={after:#x} pages=1 page={page:#x} flags=0x3")
    b.dma("nic0", after + PAGE_SIZE, 8, W)
    b.op(f"viommu_unmap guest=0 domain={domain} iova={DMA_IOVA:#x} "
         f"pages={(DMA_BUF + 2 * PAGE_SIZE) // PAGE_SIZE - 1}")
    b.dma("nic0", DMA_IOVA, 8, W)
    b.dma("nic0", after, 8, W)
    b.op("events guest=0 smmu=0")
    return b


def _viommu_domains() -> SeedBuilder:
    b = SeedBuilder("viommu-domains", "a virtio-iommu guest moves its device to a new domain "
                    "(no mappings: DMA faults), to a bypass domain, detaches it (DMA aborted), "
                    "then turns the device's bypass for unattached endpoints on", "virtio")
    device = b.device("nic0")
    b.op(f"viommu_attach guest=0 device={device} domain=5 flags=0x0")
    b.dma("nic0", DMA_IOVA, 8, W)
    b.op(f"viommu_attach guest=0 device={device} domain=6 flags=0x1")
    b.dma("nic0", GUEST_RAM, 8, W)
    b.op(f"viommu_attach guest=0 device={device} domain=6 flags=0x2")
    b.dma("nic0", GUEST_RAM, 8, W)
    b.op("viommu_config guest=0 bypass=1 features=0x0")
    b.dma("nic0", GUEST_RAM, 8, W)
    return b


def _viommu_hyp() -> SeedBuilder:
    b = SeedBuilder("viommu-hyp", "the hypervisor unmaps, then balloons to the other guest, "
                    "pages a virtio-iommu guest has mapped for DMA: the composed mappings go "
                    "first, the device's DMA faults", "virtio")
    _, page = _viommu_boot_map(b, "nic0")
    b.dma("nic0", DMA_IOVA, 8, W)
    b.op(f"s2_unmap guest=0 page={page:#x}")
    b.dma("nic0", DMA_IOVA, 8, W)
    b.op(f"reassign guest=0 page={page + 1:#x} dst=1 dst_page=0")
    b.dma("nic0", DMA_IOVA + PAGE_SIZE, 8, W)
    b.op("events guest=0 smmu=0")
    return b


def _viommu_requests() -> SeedBuilder:
    b = SeedBuilder("viommu-requests", "raw virtio-iommu requests: PROBE of an endpoint, an "
                    "UNMAP that would split a mapping (RANGE, nothing removed), a MAP over the "
                    "MSI reserved region (INVAL), a MAP with a reserved flag", "virtio")
    domain, page = _viommu_boot_map(b, "nic0")
    for req, in_len in (
            (probe_req(b.system.hyp.assigned["nic0"][1]), 516),
            (unmap_req(domain, DMA_IOVA, DMA_IOVA + PAGE_SIZE - 1), 4),
            (map_req(domain, MSI_WINDOW[0], MSI_WINDOW[0] + PAGE_SIZE - 1, GUEST_RAM, 3), 4),
            (map_req(domain, 0x3000_0000, 0x3000_0FFF, GUEST_RAM + page * PAGE_SIZE, 0x13), 4)):
        b.op(f"viommu_req guest=0 req={req.ljust(72, bytes(1)).hex()} len={len(req)} "
             f"in_len={in_len}")
    b.dma("nic0", DMA_IOVA + PAGE_SIZE, 8, W)
    return b


SEEDS: tuple[Callable[[], SeedBuilder], ...] = (
    _dma_boot_buffer, _map_unmap, _reattach, _sync_msi, _event_service, _pte_rewrite,
    _hyp_unmap_reassign, _hyp_assign, _ats, _vsmmu_disable, _vsmmu_bypass,
    _viommu_map_unmap, _viommu_unmap_several, _viommu_domains, _viommu_hyp, _viommu_requests,
)

# Which seeds each harness target starts from.  The smmu target's harness reads
# bytes its own way: it gets only two short programs.
TARGET_SEEDS: dict[str, tuple[str, ...]] = {
    "system": ("dma-boot-buffer", "map-unmap", "reattach", "sync-msi", "event-service",
               "pte-rewrite", "hyp-unmap-reassign", "hyp-assign", "ats", "vsmmu-disable",
               "vsmmu-bypass"),
    "vste": ("reattach", "event-service", "hyp-assign", "ats", "vsmmu-disable"),
    "command": ("map-unmap", "reattach", "sync-msi", "pte-rewrite", "ats"),
    "smmu": ("dma-boot-buffer", "event-service"),
    "virtio-iommu": ("viommu-map-unmap", "viommu-unmap-several", "viommu-domains",
                     "viommu-hyp", "viommu-requests"),
}


@functools.cache
def seeds() -> dict[str, tuple[str, tuple[Op, ...]]]:
    """Every seed: name -> (what it does, program).  Built once per process."""
    out = {}
    for build in SEEDS:
        b = build()
        out[b.name] = (b.doc, tuple(b.ops))
    return out


def write_seeds(root: str | Path, target: str) -> list[Path]:
    """Write `root/<target>/seed-<name>` (canonical program bytes) for one harness
    target; returns the paths written."""
    if target not in TARGET_SEEDS:
        raise ValueError(f"unknown target {target!r}: one of {', '.join(TARGET_SEEDS)}")
    everything = seeds()
    directory = Path(root) / target
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TARGET_SEEDS[target]:
        data = encode(list(everything[name][1]))
        if len(data) > MAX_SEED_BYTES:
            raise ValueError(f"seed {name} is {len(data)} bytes, over {MAX_SEED_BYTES}")
        path = directory / f"seed-{name}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def write_texts(root: str | Path) -> list[Path]:
    """Write every seed as commented program text to `root/programs/seed-<name>.txt`."""
    directory = Path(root) / "programs"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (doc, ops) in seeds().items():
        path = directory / f"seed-{name}.txt"
        path.write_text(f"# {name}: {doc}\n" + to_text(list(ops)))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "corpora")
    for target in TARGETS:
        write_seeds(root, target)
    write_texts(root)
    print(f"seeds written under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
