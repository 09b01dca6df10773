"""The isolation predicates, over the `bv` interface: one definition serves the
per-step concrete checks (ints) and the universal proofs (Z3 terms)."""

from __future__ import annotations

from functools import reduce
from typing import Any

from vsmmu.arch import bv
from vsmmu.arch.layouts import CMD_ANY, COMMANDS, EVENT, STE, Config, Op
from vsmmu.hyp.host import VIRTIO_TABLE_BYTES
from vsmmu.hyp.transfer import REFERENCE, VSTE_ALLOWED, GuestContext

# The hypervisor's half of a guest stream's STE: every stage-2 field and the VMID.
S2_FIELDS = ("S2VMID", "S2T0SZ", "S2SL0", "S2IR0", "S2OR0", "S2SH0", "S2TG", "S2PS",
             "S2AA64", "S2ENDI", "S2AFFD", "S2PTW", "S2HD", "S2HA", "S2S", "S2R", "S2TTB")
S2_MASK = reduce(lambda m, f: m | STE[f].mask, S2_FIELDS, 0)
# Bits a physical STE of a guest stream may hold that the hypervisor did not put there.
GUEST_BITS = VSTE_ALLOWED | STE["MEV"].mask | STE["CONFIG"].mask


def stage2_authority(pste: Any, s2_ste: int) -> Any:
    """A guest stream's physical STE is invalid, abort, or stage 2 / nested with the
    hypervisor's stage-2 fields and VMID; every other bit is the hypervisor's or one
    the nesting whitelist allows.  Never bypass, never stage-1 only, and never full
    ATS (EATS=0b01): its translated transactions would skip stage 2."""
    config = STE.get(pste, "CONFIG")
    translating = bv.all_of(
        bv.member(config, frozenset({Config.S2_TRANS, Config.NESTED})),
        pste & S2_MASK == s2_ste & S2_MASK,
        (pste ^ s2_ste) & ~GUEST_BITS & ((1 << 512) - 1) == 0,
        STE.get(pste, "EATS") != 1,
    )
    return bv.any_of(STE.get(pste, "V") == 0, config == Config.ABORT, translating)


# What a guest may cause on the physical queue, and the field rules per opcode.
# TLBI_S12_VMALL of the guest's own VMID is confined too: a design may widen a
# guest's invalidation to it (Xen's v3 series does); wider costs time, not isolation.
# So are the prefetch hints for the guest's own streams.
FORWARDABLE = frozenset({Op.CFGI_CD, Op.CFGI_CD_ALL, Op.TLBI_NH_ALL, Op.TLBI_NH_ASID,
                         Op.TLBI_NH_VA, Op.TLBI_NH_VAA, Op.ATC_INV, Op.TLBI_S12_VMALL,
                         Op.PREFETCH_CONFIG, Op.PREFETCH_ADDR})
# Invalidations of every stream or every VMID: confined only for a guest that owns
# every stream of the SMMU (pKVM's host), where "every" is its own.
GLOBAL = frozenset({Op.CFGI_STE_RANGE, Op.TLBI_NSNH_ALL})


def command_confined(out: Any, ctx: GuestContext) -> Any:
    """A physical command issued for a guest names only its pSIDs and its VMID,
    carries no reserved bits and no Secure stream, and is of a forwardable kind."""
    op = CMD_ANY.get(out, "OP")
    psids = frozenset(ctx.vsids.values())
    kinds = FORWARDABLE | GLOBAL if ctx.owns_all else FORWARDABLE
    rules = []
    for code in kinds:
        layout = COMMANDS[code]
        conds = [out & ~layout.defined_mask & ((1 << 128) - 1) == 0]
        if "SSEC" in layout:
            conds.append(layout.get(out, "SSEC") == 0)
        if code not in GLOBAL:
            if "VMID" in layout:
                conds.append(layout.get(out, "VMID") == ctx.vmid)
            if "SID" in layout:
                conds.append(bv.member(layout.get(out, "SID"), psids))
        elif code == Op.CFGI_STE_RANGE:  # all of them: Range 31 (CFGI_ALL)
            conds.append(layout.get(out, "RANGE") == 31)
        rules.append(bv.implies(op == code, bv.all_of(*conds)))
    return bv.all_of(bv.member(op, frozenset(int(o) for o in kinds)), *rules)


_DWORD3 = ((1 << 64) - 1) << 192


def event_confined(out: Any, record: Any, vsid: Any, fetch_ipa: Any) -> Any:
    """A record written into a guest's event queue names the guest's vSID, and its
    address dword holds nothing but the guest's own IPA (a stage-2 fault's input)
    or the guest address of a failed fetch: never a physical address."""
    d3 = out & _DWORD3
    allowed_d3 = bv.any_of(
        d3 == 0,
        d3 == EVENT.put(0, "FETCH_ADDR", fetch_ipa),
        d3 == record & EVENT["IPA"].mask,
    )
    return bv.all_of(EVENT.get(out, "SID") == vsid, allowed_d3)


def trap_work_bound(vsmmu: Any) -> tuple[int, int]:
    """(guest commands, units of work) one slice of a vSMMU's work may take: B, the
    design's per-trap command budget (ours, for a design that declares none: a
    hypervisor that is not preempted must bound what a trap does; Grall on the Xen
    series, 27 Nov 2025), and B x (2 + 3V) + 3V units for the V streams attached:
    a command is a unit, and may forward one more or re-read every stream
    (CFGI_STE_RANGE: a vSTE read, an STE write or CFGI, each per stream); a register
    write that re-enables the vSMMU re-reads every stream once.  No size the guest
    chooses (queue size, range, stream table) enters it."""
    budget = vsmmu.design.cmdq_budget or REFERENCE.cmdq_budget
    streams = len(vsmmu.vsids)
    return budget, budget * (2 + 3 * streams) + 3 * streams


def queue_wait_bound(vsmmu: Any, others: int) -> int:
    """The most commands of other guests a guest's CMD_SYNC may wait behind on a
    physical queue it shares with `others` guests: each one's share (the design's,
    ours for a design that declares none)."""
    return (vsmmu.design.cmdq_share or REFERENCE.cmdq_share) * others


def host_memory(guest: Any) -> tuple[int, int]:
    """(bytes the hypervisor holds on the guest's behalf, the most it declares it may):
    what a guest's own requests make it allocate, which is its virtio-iommu domains'
    tables (counted by the tables themselves, whatever pool they came from).  A
    vSMMU's state is sized by the platform's streams, not by the guest."""
    if guest.viommu is None:
        return 0, VIRTIO_TABLE_BYTES
    return sum(t.table_bytes for t in guest.viommu.backend.tables()), VIRTIO_TABLE_BYTES
