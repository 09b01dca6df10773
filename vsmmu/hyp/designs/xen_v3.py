"""`xen-v3`: the Xen vSMMUv3 series v3 as posted (Milan Djokic, EPAM, 31 Mar 2026).

Sources: the series `[PATCH v3 00/23]` (cover `cover.1774918270.git.milan_djokic@
epam.com`; every patch's Message-ID is `<hash>.1774918270.git.milan_djokic@epam.com`,
given below by patch number), its design document (23/23,
`docs/designs/arm-viommu.rst`), and the reviews on xen-devel by Luca Fancellu
(10-13 Apr 2026) and Julien Grall (Dec 2022 on the RFC; 27 Nov 2025
`485a8166-5079-4c0e-a6bf-f6aee8af991d@xen.org`; 3 Dec 2025
`2d07bef7-a7a1-4458-9da6-43bf2956d7d8@xen.org`; 14 Apr 2026 on 08/23 and 09/23).
The series is not merged; no v4 was found.

Each choice says whether it was read in the source, inferred from reading the
code, or is our guess where the source is silent; and what our model of it
cannot express yet.
"""

from __future__ import annotations

from ...arch.layouts import COMMANDS, Event, Op
from ..transfer import Action, Design, always
from .profile import Choice, Profile


def _flush_domain(cmd, ctx):
    # iommu_iotlb_flush_all(d): Xen's stage-2 driver invalidates the domain's whole
    # VMID (CMD_TLBI_S12_VMALL); the guest's ASID, address and Leaf are ignored.
    return Action.FORWARD, COMMANDS[Op.TLBI_S12_VMALL].encode(OP=Op.TLBI_S12_VMALL,
                                                              VMID=ctx.vmid)


# arm_vsmmu_handle_cmds (09/23): nine opcodes handled, everything else logged as
# "unhandled" and skipped with CONS advanced (Design.otherwise); never CERROR.
COMMANDS_V3 = {
    Op.PREFETCH_CONFIG: always(Action.NOP),
    Op.CFGI_STE: always(Action.CFGI_STE),  # SSec not looked at
    Op.CFGI_STE_RANGE: always(Action.NOP),  # CFGI_ALL too: no-op for any Range
    Op.CFGI_CD: always(Action.NOP),
    Op.CFGI_CD_ALL: always(Action.NOP),
    Op.TLBI_NH_ASID: _flush_domain,
    Op.TLBI_NH_VA: _flush_domain,
    Op.TLBI_NSNH_ALL: _flush_domain,
    Op.SYNC: always(Action.SYNC),  # CS never decoded
}

XEN_V3 = Design(
    "xen-v3",
    # Only dword 0 of the vSTE is read: V, Config, S1ContextPtr, S1Fmt, S1CDMax.
    vste_fields=("V", "CONFIG", "S1FMT", "S1CONTEXTPTR", "S1CDMAX"),
    merge_events=False,
    commands=COMMANDS_V3,
    otherwise=always(Action.NOP),
    cmdq_budget=None,
    cmdq_share=None,
    sync_forwarded=True,
    events=frozenset({Event.F_TRANSLATION, Event.F_ADDR_SIZE, Event.F_ACCESS,
                      Event.F_PERMISSION}),
    s2_events=False,
    raw_events=True,
    features={"ssidsize": 0, "ats": False, "msi": False, "ril": False, "had": False,
              "cd_2lvl": False},
    crashes=frozenset({"reserved-config", "live-s1-rewrite"}),
    placement="single",
    signal_lost=False,
)

PROFILE = Profile(XEN_V3, (
    "Xen's vSMMUv3 series v3 as posted (not merged): the whole guest command queue "
    "drained in one trap, no CERROR ever, TLBIs widened to a flush of the domain, "
    "raw stage-1 fault records forwarded, hypervisor BUG()s on some guest vSTEs"
), (
    Choice("placement", "domU: one vSMMU for all physical SMMUs; its vSID->pSID table "
           "(65,536 entries) filled first-free in device order; invalidations that name no "
           "stream reach every physical SMMU, CFGI_STE its stream's. Not modelled: the "
           "dom0 placement (one per physical SMMU, vSID == pSID), and that Xen finds a "
           "pSID's master without its SMMU (the entry's phys_smmu is never set), which "
           "confuses only the domain's own devices",
           "21/23 (2105eb0c) vsmmuv3_allocate_free_vid, arm_vsmmu_handle_cfgi_ste; 22/23 "
           "(9db4c7b9); 23/23 design doc ('a single vIOMMU'); read"),
    Choice("guest STE fields", "only dword 0: V, Config, S1ContextPtr, S1Fmt, S1CDMax "
           "(0, as SSIDSIZE is 0); Xen writes dword 1 itself and its own stage 2 and VMID",
           "10/23 (5342a535) arm_vsmmu_decode_ste, 02/23 (baa5aa0d) "
           "arm_smmu_write_strtab_ent; read"),
    Choice("invalid vSTE", "stage 2 only: 'bad STE', nothing applied; in the model the "
           "stream is left on an invalid STE and the guest told nothing (Xen synthesises "
           "C_BAD_STE at CFGI time; not modelled). V=0 keeps the old configuration live "
           "(not modelled)", "10/23 arm_vsmmu_find_ste; read (V=0 consequence inferred)"),
    Choice("hypervisor crashes", "a reserved vSTE Config reaches BUG(); a stage-1 vSTE "
           "over a live stage-1 STE reaches BUG_ON in the STE writer: both stop Xen "
           "(the no-crash invariant)", "Luca Fancellu's reviews of 10/23 and 02/23, "
           "10 Apr 2026; read (reserved 0b111 as BUG: read; S1->bypass path: not modelled)"),
    Choice("commands", "CFGI_STE emulated; PREFETCH_CONFIG, CFGI_STE_RANGE/CFGI_ALL, "
           "CFGI_CD(_ALL), SYNC no-ops; TLBI_NH_ASID, TLBI_NH_VA, TLBI_NSNH_ALL widened to "
           "iommu_iotlb_flush_all of the domain (TLBI_S12_VMALL of its VMID); every other "
           "opcode (TLBI_NH_ALL, TLBI_NH_VAA, ATC_INV, unknown) skipped with CONS advanced; "
           "never CERROR", "09/23 (b223a8bb) arm_vsmmu_handle_cmds; read (S12_VMALL: "
           "inferred from Xen's stage-2 SMMUv3 driver)"),
    Choice("commands per trap", "the whole queue, up to 2^19 commands, inside the "
           "CMDQ_PROD trap under a spinlock; budget and continuation are future work",
           "09/23 vsmmuv3_mmio_write; 23/23 'Future improvements'; Grall 27 Nov 2025 (EL2 "
           "is not preempted); read"),
    Choice("shared queue", "no share of the physical queue, but each widened flush is "
           "completed before the next command (CMD_SYNC after it), so a guest leaves "
           "nothing outstanding there", "09/23; Xen's SMMUv3 driver arm_smmu_iotlb_flush_all "
           "(insert, then sync); inferred"),
    Choice("CMD_SYNC", "completes in the trap; CS not decoded; IDR0.MSI=0, SEV=0",
           "09/23, 08/23 (25adb33c) IDR0; read"),
    Choice("events", "only stage-1 F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION, "
           "as the raw 32-byte record: the physical StreamID is not rewritten to the vSID",
           "12/23 (b3c49d35), 18/23 (51e727a5) arm_vsmmu_handle_evt; forwarding read, "
           "pSID not rewritten inferred (21/23 touches only CFGI); Fancellu on 18/23: "
           "a header stub may leave this path dead in v3 as posted"),
    Choice("event queue full", "the guest's queue full: dropped with GERROR.EVTQ_ABT_ERR, "
           "the overflow flag never set, no rate limit (not modelled: the mechanism's "
           "overflow is ours). Xen's own queue overflowing: logged by Xen's driver, no "
           "guest told", "12/23 arm_vsmmu_write_evtq: read; Xen's SMMUv3 driver "
           "arm_smmu_evtq_thread ('EVTQ overflow detected -- events lost') and 18/23 "
           "(records forwarded one by one): inferred"),
    Choice("parking", "a device taken from a domain is quarantined: its DMA faults (basic "
           "quarantine, Xen's default). The series itself is silent on de-assignment; a "
           "device it is given keeps Xen's stage-2-only STE until the guest's first "
           "CFGI_STE", "xen-project/xen 980d6acf1517 (scratch-page quarantine made "
           "optional, basic stays default): read; 02/23, 11/23 for the first STE: "
           "inferred; that the Arm path quarantines the same way: our guess"),
    Choice("ID registers", "stage 1 only, SSIDSIZE 0, no ATS, PRI, MSI, RIL, HAD or CD2L",
           "08/23 vsmmuv3_mmio_read (hard-coded values); read"),
    Choice("ATS", "not advertised; ATC_INV skipped", "08/23, 09/23; read"),
    Choice("merged events", "STE.MEV left clear on the nested STEs", "02/23 lists the "
           "dword-1 fields Xen writes and MEV is not among them; inferred"),
    Choice("MSIs", "the series is silent on device MSIs; the ITS doorbell is mapped in "
           "the domain's stage 2 by f9f6b22abf. Modelled with our doorbell window",
           "xen-project/xen f9f6b22abf (2 Jul 2025); source silent, our guess"),
    Choice("registers", "GBPA not emulated, no locks or width checks, CR0ACK an "
           "immediate copy (not modelled: the mechanism's register file is ours)",
           "08/23; Grall 14 Apr 2026 (6d1806aa-b009-407a-9a7a-476f9f4deb70@xen.org); read"),
))
