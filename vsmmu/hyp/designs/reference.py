"""`vsmmu`: this project's own design, the hardened reference and the default.

Its rules are the tables of vsmmu/hyp/transfer.py; this module only names them
and says where each choice comes from.
"""

from __future__ import annotations

from ..transfer import REFERENCE
from .profile import Choice, Profile

PROFILE = Profile(REFERENCE, (
    "the hardened reference: one vSMMU per physical SMMU, vSTEs sanitised to the "
    "Linux nesting whitelist, every guest command validated and confined to the "
    "guest's VMID and streams (CERROR_ILL otherwise), at most 64 commands per trap"
), (
    Choice("placement", "one vSMMU per (guest, physical SMMU), a vSID->pSID table each "
           "(N:N); an unmapped vSID is C_BAD_STREAMID to the guest",
           "shared/DESIGN.md (seed design points); Xen design thread, Babchuk 27 Aug 2025 "
           "(StreamIDs overlap across physical SMMUs)"),
    Choice("guest STE fields", "V, Config, S1Fmt, S1ContextPtr, S1CDMax, S1DSS, S1CIR, "
           "S1COR, S1CSH, S1STALLD, EATS; every other bit, stage 2 and the VMID are the "
           "hypervisor's", "Linux drivers/iommu/arm/arm-smmu-v3 iommufd nesting "
           "(STRTAB_STE_0/1 NESTING_ALLOWED)"),
    Choice("invalid vSTE", "a V=0 physical STE: the SMMU's C_BAD_STE reaches the guest "
           "with its vSID (F_STE_FETCH / C_BAD_STREAMID for its own table)",
           "IHI 0070 §5.2, §7.3.3 (what a guest driver expects of a real SMMU)"),
    Choice("vSTE Config", "abort and reserved 0b001-0b011: abort; bypass: the guest's "
           "stage 2 alone; S1 translate: nested with the hypervisor's stage 2",
           "IHI 0070 §5.2 STE.Config; shared/DESIGN.md (stage 2 stays the hypervisor's)"),
    Choice("ATS", "a guest's EATS=translate becomes split-stage ATS (S1CHK) for devices "
           "assigned with ATS: translated transactions still go through stage 2",
           "IHI 0070 §3.9.1.3, §5.2 STE.EATS"),
    Choice("commands", "CFGI_STE(_RANGE): re-read the vSTEs and rebuild; CFGI_CD(_ALL), "
           "ATC_INV: vSID->pSID; TLBI_NH_*: the guest's VMID forced; TLBI_NSNH_ALL: "
           "TLBI_NH_ALL of the guest's VMID; PREFETCH_*: dropped; SYNC: after a physical "
           "SYNC; anything else or SSec=1: CERROR_ILL", "IHI 0070 §4.1-4.7; "
           "shared/DESIGN.md (validated before anything touches hardware)"),
    Choice("shared queue", "at most 64 forwarded commands outstanding on a physical "
           "queue per guest; past that the guest's queue waits (CONS stays) until the SMMU "
           "has consumed some, so a guest's CMD_SYNC waits behind at most 64 of each other "
           "guest's", "Grall, 3 Dec 2025 (2d07bef7-...@xen.org: scheduling over shared "
           "resources his main concern); the share is our choice"),
    Choice("commands per trap", "at most 64, the rest on later traps",
           "Xen design doc risk 7 and Grall, 13 Aug 2025 (a guest must not hog the "
           "non-preemptible hypervisor)"),
    Choice("events", "a guest's configuration and translation faults, with its vSID and "
           "only guest addresses; F_STE_FETCH / C_BAD_STREAMID of the host's table never; "
           "nested STEs set MEV", "IHI 0070 §7.3; shared/DESIGN.md (events go only to the "
           "owner)"),
    Choice("parking", "a device taken from a guest is quarantined (abort STE, CFGI_STE, "
           "ATC_INV, CMD_SYNC) before it can be handed to anyone; a device given to a "
           "guest starts on the guest's vSMMU GBPA (abort after the guest's driver reset)",
           "Documentation/userspace-api/iommufd.rst and iommufd_device_bind (binding "
           "takes DMA ownership first); Gunthorpe, 'iommu: Always use the blocking "
           "domain' (0-v2-f62259511ac0+6-iommu_dma_block_jgg@nvidia.com)"),
    Choice("lost events", "a guest's full queue raises its own overflow flag; the "
           "hypervisor's physical queue overflowing raises it on every guest with a "
           "stream on that SMMU, whose records may be among those lost",
           "IHI 0070 §7.4 (OVFLG/OVACKFLG); iommufd vEVENTQ lost-events flag "
           "(IOMMU_VEVENTQ_FLAG_LOST_EVENTS), the same promise to a VMM"),
    Choice("MSIs", "a reserved window in each guest's IPA space whose first page stage 2 "
           "maps to the guest's doorbell: Linux's 0x8000000 + 1 MiB unless the platform "
           "moves it (sw_msi_start / sw_msi_size_mib), refused unless 1 MiB aligned, "
           "without wrap, inside the IPA space and clear of the guest's RAM",
           "arm-smmu-v3 MSI_IOVA_BASE/LENGTH; iommufd SW_MSI_START/SIZE v2 (6c36de14..."
           "1760487869.git.nicolinc@nvidia.com: EINVAL, EOVERFLOW, EADDRINUSE); "
           "iommufd/driver.c iommufd_sw_msi (a doorbell page at the window's start); "
           "the IPA-space check is ours (asked for in 20250129145800.GG5556@nvidia.com)"),
    Choice("guest addresses", "register addresses above the vSMMU's OAS (the guest's IPA "
           "size) are not stored", "IHI 0070 §3.4.3 note 6 (an emulated SMMU masks guest "
           "addresses to the IPA size)"),
))
