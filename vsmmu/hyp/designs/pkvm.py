"""`pkvm`: pKVM's trap-and-emulate SMMUv3 (Mostafa Saleh, Google; series v4 onward).

The untrusted party is the host kernel, which drives the whole SMMU; the
hypervisor traps its MMIO, keeps a shadow stream table and command queue, and
puts its own stage 2 under every STE.  In our model the host is the platform's
first guest, owning every device at vSID == pSID (`Design.topology`); the other
guests are protected VMs with no device, whose memory, like the hypervisor's,
the host's devices must never reach.

Sources (cited below by tag): the v4 cover letter (CL4, 19 Aug 2025,
`<20250819215156.2494305-1-smostafa@google.com>`) and its patches 19/28 (MMIO
emulation), 22/28 (emulate CMDQ, with Will Deacon's review
`<aMQroI4NDu74PDGT@willie-the-truck>`), 24/28 (shadow STEs), 25/28 (GBPA), 28/28
(nesting), all `...-<n+1>-smostafa@google.com`; the v3 cover letter (CL3,
`<20250728175316.3706196-1-smostafa@google.com>`); the v6 documentation patch (DOC,
linux-arm-kernel, 1 May 2026); and a later (v7-era) `pkvm/arm-smmu-v3.c` read
in the search index whose repository and commit we could not resolve (LATE).
No version was merged.  A hypervisor WARN is fatal in pKVM (upstream
`nvhe_hyp_panic_handler`), so "refused" below means the machine stops.
"""

from __future__ import annotations

from ...arch import bv
from ...arch.layouts import COMMANDS, Event, Op
from ..transfer import VSTE_GUEST_FIELDS, Action, Design, always
from .profile import Choice, Profile


def _raw(cmd, ctx):
    # Default-allow: forwarded as the host wrote it (its SIDs are physical ones).
    return Action.FORWARD, cmd


def _when(ok, out):
    return bv.ite(ok, Action.FORWARD, Action.PANIC, 8), bv.ite(ok, out, 0, 128)


def _leaf_only(cmd, ctx):
    leaf = COMMANDS[Op.CFGI_STE].get(cmd, "LEAF") == 1
    return bv.ite(leaf, Action.CFGI_STE, Action.PANIC, 8), 0


def _all_only(cmd, ctx):  # CFGI_ALL: forwarded, nothing re-shadowed
    return _when(COMMANDS[Op.CFGI_STE_RANGE].get(cmd, "RANGE") == 31, cmd)


def _vmid0(op: Op):
    layout = COMMANDS[op]

    def rule(cmd, ctx):  # the host's VMID 0 is, in our model, its own VMID
        return _when(layout.get(cmd, "VMID") == 0, layout.put(cmd, "VMID", ctx.vmid))

    return rule


def _sync(cmd, ctx):
    # CS=IRQ was meant to become CS=SEV with no MSI address; LATE edits a copy and
    # forwards the host's command unchanged: the SMMU writes MSIDATA at MSIADDR.
    irq = COMMANDS[Op.SYNC].get(cmd, "CS") == 1
    return bv.ite(irq, Action.FORWARD, Action.SYNC, 8), bv.ite(irq, cmd, 0, 128)


# LATE smmu_filter_command: refused commands stop the machine; no case: forwarded.
COMMANDS_PKVM = {
    Op.CFGI_STE: _leaf_only,
    Op.CFGI_STE_RANGE: _all_only,
    Op.TLBI_NH_ASID: _vmid0(Op.TLBI_NH_ASID),
    Op.TLBI_NH_VA: _vmid0(Op.TLBI_NH_VA),
    Op.TLBI_NH_VAA: _vmid0(Op.TLBI_NH_VAA),
    **{op: always(Action.PANIC) for op in (Op.TLBI_NH_ALL, Op.TLBI_EL2_ALL, Op.TLBI_EL2_ASID,
                             Op.TLBI_EL2_VA, Op.TLBI_EL2_VAA, Op.TLBI_S12_VMALL,
                             Op.TLBI_S2_IPA)},
    Op.SYNC: _sync,
}

PKVM = Design(
    "pkvm",
    # Dwords 0 and 1 are copied from the host's STE; of those our model acts on the
    # stage-1 fields, MEV and EATS (the attribute overrides it does not model).
    vste_fields=(*VSTE_GUEST_FIELDS, "MEV"),
    merge_events=False,
    commands=COMMANDS_PKVM,
    otherwise=_raw,
    cmdq_budget=None,
    cmdq_share=None,
    events=frozenset(Event),
    features={"msi": False},
    crashes=frozenset({"nested-config"}),
    full_ats=True,
    s2_config=True,
    abort_when_disabled=True,
    topology="host",
)

PROFILE = Profile(PKVM, (
    "pKVM's trap-and-emulate SMMUv3 (series v4-v8, not merged): the host kernel is "
    "untrusted and drives the SMMU; shadow stream table and command queue, the "
    "hypervisor's stage 2 under every STE, GBPA forced to abort, refusals stop the "
    "machine, unlisted commands forwarded as they are"
), (
    Choice("parties", "the host kernel (untrusted after boot) owns every device and "
           "drives physical StreamIDs; protected VMs and the hypervisor own memory the "
           "host's DMA must not reach. Modelled as the first guest owning every device at "
           "vSID == pSID, the others without devices (they keep a vSMMU we do not use)",
           "CL3 (pKVM overview), CL4; read"),
    Choice("stage 2", "one hypervisor stage 2 for every STE (an identity map of host "
           "memory, VMID 0); in the model the host guest's own stage 2 and VMID",
           "10/28 host stage-2 shadow, LATE smmu_attach_stage_2; read"),
    Choice("STE shadowing", "on the host's CFGI_STE with Leaf=1: dwords 0-1 copied, the "
           "hypervisor's stage 2 in dwords 2-3; bypass -> stage 2 only, S1 -> nested, S2 "
           "-> stage 2; nested requested: refused (stop); reserved Configs stay illegal "
           "(C_BAD_STE)", "24/28, 28/28, LATE smmu_reshadow_ste; read"),
    Choice("EATS", "copied from the host's STE: full ATS (0b01) lets a device's translated "
           "transactions skip stage 2; the hypervisor sends no ATC_INV when memory "
           "changes hands", "LATE smmu_attach_stage_2, smmu_tlb_inv_range; read (the hole "
           "inferred; the author is reported saying ATS is not handled: secondary)"),
    Choice("commands", "CFGI_STE Leaf=1: re-shadow (Leaf=0 refused); CFGI_ALL only with "
           "Range 31, forwarded; TLBI_NH_ASID/VA/VAA only with VMID 0; TLBI_NH_ALL, EL2 "
           "TLBIs, S12_VMALL, S2_IPA refused; every other opcode (CFGI_CD, ATC_INV, "
           "PREFETCH_*, PRI_RESP, RESUME, TLBI_NSNH_ALL, unknown) forwarded as written",
           "22/28, LATE smmu_filter_command; read"),
    Choice("refusal", "a WARN at EL2, which stops the machine; never CERROR to the host",
           "CL4 ('will likely trigger a WARN_ON ending up in panic'), upstream "
           "nvhe_hyp_panic_handler; read"),
    Choice("CMD_SYNC", "CS=IRQ forwarded unchanged with the host's MSI address (LATE's "
           "rewrite edits a copy); other SYNCs complete", "22/28 vs LATE "
           "smmu_filter_command; read (that the rewrite has no effect: our reading)"),
    Choice("commands per trap", "every command from CONS to the new PROD, then a wait "
           "until the hardware queue is empty (the wait not modelled: only the host "
           "issues commands there, so no other party's are behind them); no share",
           "CL4 ('eagerly consume'), LATE smmu_emulate_cmdq_insert; read"),
    Choice("events", "the hardware writes into the host's own event queue: nothing "
           "filtered. Modelled as forwarded with addresses as the host sees them (its "
           "stage 2 is an identity map, ours is not)", "19/28, LATE; read"),
    Choice("event queue overflow", "the host's queue is the hardware's: it sees the "
           "overflow flag itself. Modelled as every guest with a stream on the SMMU told "
           "(our mechanism)", "19/28, LATE; read (that the host reads OVFLG: inferred)"),
    Choice("GBPA", "forced to abort: with SMMUEN=0 every transaction aborts",
           "25/28, LATE smmu_abort_gbpa; read"),
    Choice("MSIs", "IDR0.MSI hidden; the *_IRQ_CFG0/1 registers pass through unchecked "
           "(not modelled: the register file is ours)", "19/28, LATE; read"),
    Choice("parking", "no hand-off in the model: the host keeps every device. Before the "
           "host enables the SMMU, GBPA abort blocks every stream; a device the host "
           "gives up is quarantined as ours does (hand-off to protected VMs is not in "
           "the series)", "25/28 (GBPA); CL3 (device assignment to protected VMs is "
           "future work); quarantine on hand-off: our guess"),
    Choice("not modelled", "CFGI_STE before SMMUEN refused; stream-table format checks on "
           "SMMUEN; CR1 forced; register allow-list; the shadow queue's size", "LATE; "
           "our choice to leave these (availability, issue 17) for later"),
))
