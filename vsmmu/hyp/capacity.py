"""What this hypervisor can boot, checked before it starts.

The platform loader checks a description on its own terms (names, ranges,
references); this checks it against the hypervisor's resources, so that a
platform the loader accepts never fails half-way through booting (a command
error from a missing stage, a table pool out of memory, minutes of mapping).
Each limit is one PlatformError line that names it.
"""

from __future__ import annotations

from ..arch.features import Features
from ..hw.memory import PAGE_SIZE
from ..platform import Platform, PlatformError
from ..sw.driver import CMD_BYTES, EVT_BYTES, STE_BYTES, STRTAB_SPLIT
from .designs import PROFILES
from .host import GUEST_RAM, HYP_POOL, IPA_BITS, VIRTIO_TABLE_BYTES

# All guests' RAM together: the hypervisor backs and maps every page at boot, about
# 6 ms and 70 KB of this process per MiB on the 2-core machine the project runs on.
MAX_GUEST_RAM_MIB = 2048
# The share of the hypervisor's table pool boot may take; the rest is for run time
# (virtio-iommu domains' tables, level-2 stream tables, stage-2 tables that grow).
BOOT_SHARE = 2
QUEUE_LOG2 = 8  # the hypervisor's command and event queues: 256 entries (SmmuDriver.reset)


def stream_table_bytes(f: Features) -> int:
    """The hypervisor's stream table for one SMMU, as SmmuDriver.reset lays it out:
    2-level when offered and SIDs exceed one level-2 table, else linear."""
    if f.st_2lvl and f.sidsize > STRTAB_SPLIT:
        return max(8 << (f.sidsize - STRTAB_SPLIT), 64)
    return STE_BYTES << f.sidsize


def stage2_bytes(ram_mib: int) -> int:
    """A guest's stage 2 at boot, 4 KiB granule: a level-3 table per 2 MiB of RAM,
    a level-2 table per GiB, and the pages above them and for the MSI window."""
    return (-(-ram_mib // 2) + -(-ram_mib // 1024) + 4) * PAGE_SIZE


def check_bootable(p: Platform) -> None:
    if p.design not in PROFILES:
        raise PlatformError(f"unknown design {p.design!r} (known: {', '.join(PROFILES)})")
    if (PROFILES[p.design].design.placement == "single"
            and not frozenset.intersection(*(s.features.granules for s in p.smmus))):
        raise PlatformError(f"design {p.design!r} gives a guest one vSMMU for every SMMU, "
                            "and these SMMUs share no translation granule")
    for s in p.smmus:
        if not (s.features.s1p and s.features.s2p):
            raise PlatformError(
                f"smmu {s.name!r}: the hypervisor needs stage 1 and stage 2 (features s1p and "
                "s2p): every guest has a stage 2, nested under its own stage 1")
    for g in p.guests:
        check_msi_window(g.name, *g.msi_window, g.ram_mib << 20)
    ram = sum(g.ram_mib for g in p.guests)
    if ram > MAX_GUEST_RAM_MIB:
        raise PlatformError(f"the guests have {ram} MiB of RAM together, more than the "
                            f"{MAX_GUEST_RAM_MIB} MiB the hypervisor maps at boot")
    queues = (CMD_BYTES + EVT_BYTES) << QUEUE_LOG2
    need = sum(stream_table_bytes(s.features) + queues for s in p.smmus)
    need += sum(stage2_bytes(g.ram_mib) for g in p.guests)
    pool = HYP_POOL[1]
    virtio, run_time = sum(g.viommu == "virtio" for g in p.guests), pool - pool // BOOT_SHARE
    if virtio * VIRTIO_TABLE_BYTES > run_time:
        raise PlatformError(
            f"{virtio} virtio-iommu guests: their table quotas ({VIRTIO_TABLE_BYTES >> 20} "
            f"MiB each) would take more than the {run_time >> 20} MiB of the hypervisor's "
            "pool kept for run time")
    if need > pool // BOOT_SHARE:
        raise PlatformError(
            f"the hypervisor's tables would take {need >> 20} MiB at boot, more than "
            f"{pool // BOOT_SHARE >> 20} MiB of its {pool >> 20} MiB pool: use 2-level "
            "stream tables (st_2lvl) or a smaller sidsize, or less guest RAM")


def check_msi_window(guest: str, start: int, size: int, ram: int) -> None:
    """The hypervisor's checks of a guest's MSI window, beyond the platform's own
    (alignment, wrap): it lies in the guest's IPA space (the domain geometry the
    iommufd review asked for, 20250129145800.GG5556@nvidia.com, though no version of
    the series checks it) and clear of the guest's RAM (iommufd: EADDRINUSE, found
    when the window is reserved in the IOAS at attach)."""
    end = start + size
    if end > 1 << IPA_BITS:
        raise PlatformError(f"guest {guest!r}: the MSI window [{start:#x}, {end:#x}) is "
                            f"outside its {IPA_BITS}-bit IPA space")
    if start < GUEST_RAM + ram and GUEST_RAM < end:
        raise PlatformError(f"guest {guest!r}: the MSI window [{start:#x}, {end:#x}) "
                            f"overlaps its RAM [{GUEST_RAM:#x}, {GUEST_RAM + ram:#x})")
