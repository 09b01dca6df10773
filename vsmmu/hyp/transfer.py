"""The vSMMU's transfer functions, over the `bv` interface (ints or Z3 terms).

Three pure functions decide everything a guest can make the hypervisor do to
hardware; the vSMMU calls them on integers, the proofs (properties/) call the
very same code on Z3 bit-vectors and quantify over every guest input:

* `vste_to_pste`: a guest's 512-bit vSTE to the physical STE.  Only the
  fields Linux's nesting whitelist allows come from the guest; stage 2, the
  VMID and every other field come from the hypervisor (s2-authority).
* `guest_command`: a guest's 128-bit command to what reaches the physical
  command queue: VMIDs forced, vSIDs translated, everything else refused
  (cmd-confinement).
* `guest_event`: a physical event record to what the guest's event queue
  receives: the vSID, guest-visible addresses only (event-confinement).

The per-opcode and per-event rules are tables, so what the guest may do is
data a reviewer can read in one screen.  A `Design` gathers those tables and
the few other choices a vSMMU design makes (event merging, ATS, the
commands one trap consumes); `REFERENCE` is this project's hardened design,
and designs/ holds profiles of the published ones, each run by the same
functions here (mechanism) on its own tables (policy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property, reduce
from typing import Any

from ..arch import bv
from ..arch.faults import FETCH_EVENTS, WALK_EVENTS
from ..arch.fields import is_symbolic
from ..arch.layouts import CMD_ANY, COMMANDS, EVENT, STE, Config, Event, Op
from ..hw.decode import EATS_S1CHK


def _mask(layout, names) -> int:
    return reduce(lambda m, n: m | layout[n].mask, names, 0)


# ------------------------------------------------------------------ vSTE
# Linux NESTING_ALLOWED: the only guest bits that can reach hardware.  Others are
# ignored, not rejected: QEMU's smmuv3-accel masks the guest STE to these before
# the kernel checks it, and Linux guests set SHCFG in their bypass STEs.
VSTE_GUEST_FIELDS = (
    "V", "CONFIG", "S1FMT", "S1CONTEXTPTR", "S1CDMAX",
    "S1DSS", "S1CIR", "S1COR", "S1CSH", "S1STALLD", "EATS",
)
VSTE_ALLOWED = _mask(STE, VSTE_GUEST_FIELDS)
ABORT_STE = STE.encode(V=1, CONFIG=Config.ABORT)
# What the vSMMU (IDR0.S1P only) accepts; the reserved 0b001-0b011 behave as abort
# (IHI 0070 §5.2 STE.Config).
GUEST_CONFIGS = frozenset({Config.ABORT, 0b001, 0b010, 0b011, Config.BYPASS, Config.S1_TRANS})


def vste_to_pste(vste: Any, host: HostStream) -> Any:
    """The physical STE for a guest vSTE under the host's design.  An invalid vSTE
    gives 0 (V=0): the SMMU raises C_BAD_STE for it, which the vSMMU forwards to
    the guest with the vSID (where the design forwards C_BAD_STE)."""
    design = host.design
    config = STE.get(vste, "CONFIG")
    eats = STE.get(vste, "EATS")
    configs = GUEST_CONFIGS | ({Config.S2_TRANS} if design.s2_config else set())
    # Stage-1 fields matter only to a stage-1 config (abort and bypass ignore them).
    valid = bv.all_of(
        STE.get(vste, "V") == 1,
        bv.member(config, frozenset(configs)),
        bv.implies(config == Config.S1_TRANS, bv.all_of(
            bv.ule(STE.get(vste, "S1CDMAX"), host.ssidsize),
            # S1CHK (split-stage) needs nesting, which the vSMMU does not offer; the
            # reserved 0b11 behaves as 0b00 (§5.2 STE.EATS, no DPT).
            bv.not_(eats == EATS_S1CHK),
            # A stage-1-only STE's context pointer is a PA within the OAS; beyond it,
            # SMMUv3.1 makes the STE ILLEGAL (§5.2 STE.S1ContextPtr, §3.4.3).
            bv.ule(STE.get(vste, "S1CONTEXTPTR"), (1 << host.oas_bits) - 1),
        )),
    )
    nested = STE.put(host.s2_ste, "CONFIG", Config.NESTED)
    # Merged events: a guest must not flood the host (ours; a design may differ).
    nested = STE.put(nested, "MEV", int(design.merge_events))
    if design.full_ats:  # the guest's EATS as it wrote it (pKVM copies dword 1)
        nested = STE.put(nested, "EATS", eats)
    elif host.ats:
        # The guest's "translate" becomes split-stage ATS (S1CHK): ATS answers carry
        # IPAs and translated transactions still go through stage 2.  Full ATS would
        # let the device's translated transactions skip stage 2 altogether.
        nested = STE.put(nested, "EATS", 0) | bv.ite(
            eats == 1, STE["EATS"].put(0, EATS_S1CHK), 0, 512)
    nested = nested | (vste & design.s1_half)
    s2_only = bv.any_of(config == Config.BYPASS, config == Config.S2_TRANS)
    out = bv.ite(config == Config.S1_TRANS, nested,
                 bv.ite(s2_only, host.s2_ste, ABORT_STE, 512), 512)
    return bv.ite(valid, out, 0, 512)


# -------------------------------------------------------------- commands
class Action(IntEnum):
    FORWARD = 1  # issue `out` on the physical command queue
    CFGI_STE = 2  # re-read the vSTE(s) the command names and rebuild physical STEs
    SYNC = 3  # complete forwarded work, then signal the guest
    NOP = 4  # accepted, nothing to do (a hint, or a stream the guest does not have)
    ILL = 5  # CERROR_ILL to the guest
    PANIC = 6  # the design's hypervisor stops (a WARN or BUG in its source)


Rule = Callable[[Any, "GuestContext"], tuple[Any, Any]]


def _clean(op: Op, cmd: Any) -> Any:
    """Only architected fields travel: reserved bits are dropped, not forwarded."""
    return cmd & COMMANDS[op].defined_mask


def _with_vmid(op: Op) -> Rule:
    def rule(cmd, ctx):
        return Action.FORWARD, COMMANDS[op].put(_clean(op, cmd), "VMID", ctx.vmid)

    return rule


def _nsnh_all(cmd, ctx):
    # The guest's "everything" is its own VMID: NH_ALL, never a global flush.
    return Action.FORWARD, COMMANDS[Op.TLBI_NH_ALL].encode(OP=Op.TLBI_NH_ALL, VMID=ctx.vmid)


def _with_psid(op: Op, needs_ats: bool = False) -> Rule:
    layout = COMMANDS[op]

    def rule(cmd, ctx):
        if needs_ats and not ctx.ats:
            return Action.ILL, 0
        found, psid = bv.lookup(layout.get(cmd, "SID"), ctx.vsids, 32)
        action = bv.ite(found, Action.FORWARD, Action.NOP, 8)
        if "SSEC" in layout:
            action = bv.ite(layout.get(cmd, "SSEC") == 1, Action.ILL, action, 8)
        return action, layout.put(_clean(op, cmd), "SID", psid)

    return rule


def always(action: Action) -> Rule:
    """The rule that answers every command with `action` (nothing forwarded)."""
    return lambda cmd, ctx: (action, 0)


def _plain(action: Action, op: Op | None = None) -> Rule:
    layout = COMMANDS[op] if op is not None else None

    def rule(cmd, ctx):
        if layout is not None and "SSEC" in layout:
            return bv.ite(layout.get(cmd, "SSEC") == 1, Action.ILL, action, 8), 0
        return action, 0

    return rule


# Every opcode a guest may use; anything else (stage-2 and EL2/EL3 TLBIs: the
# vSMMU has no stage 2; PRI_RESP: no PRI; RESUME and STALL_TERM: no stalls,
# IDR0.STALL_MODEL=0b01, IHI 0070 §4.7.1-2; unknown opcodes) is CERROR_ILL.
GUEST_COMMANDS: dict[Op, Rule] = {
    Op.PREFETCH_CONFIG: _plain(Action.NOP, Op.PREFETCH_CONFIG),  # hints: dropped
    Op.PREFETCH_ADDR: _plain(Action.NOP, Op.PREFETCH_ADDR),
    Op.CFGI_STE: _plain(Action.CFGI_STE, Op.CFGI_STE),
    Op.CFGI_STE_RANGE: _plain(Action.CFGI_STE, Op.CFGI_STE_RANGE),
    Op.CFGI_CD: _with_psid(Op.CFGI_CD),
    Op.CFGI_CD_ALL: _with_psid(Op.CFGI_CD_ALL),
    Op.TLBI_NH_ALL: _with_vmid(Op.TLBI_NH_ALL),
    Op.TLBI_NH_ASID: _with_vmid(Op.TLBI_NH_ASID),
    Op.TLBI_NH_VA: _with_vmid(Op.TLBI_NH_VA),
    Op.TLBI_NH_VAA: _with_vmid(Op.TLBI_NH_VAA),
    Op.TLBI_NSNH_ALL: _nsnh_all,
    Op.ATC_INV: _with_psid(Op.ATC_INV, needs_ats=True),
    Op.SYNC: lambda cmd, ctx: (
        bv.ite(COMMANDS[Op.SYNC].get(cmd, "CS") == 0b11, Action.ILL, Action.SYNC, 8), 0),
}


# The events the reference design tells a guest of: about its own configuration
# or transactions.  C_BAD_STREAMID and
# F_STE_FETCH concern the hypervisor's stream table and never reach a guest.
GUEST_EVENTS = frozenset({
    Event.F_UUT, Event.C_BAD_STE, Event.F_BAD_ATS_TREQ, Event.F_STREAM_DISABLED,
    Event.F_TRANS_FORBIDDEN, Event.C_BAD_SUBSTREAMID, Event.F_CD_FETCH, Event.C_BAD_CD,
    Event.F_WALK_EABT, Event.F_TRANSLATION, Event.F_ADDR_SIZE, Event.F_ACCESS,
    Event.F_PERMISSION, Event.F_TLB_CONFLICT, Event.F_CFG_CONFLICT,
})
# Fields copied from the physical record: what the transaction was, never where
# hardware fetched from (a PA) and never the physical StreamID.
_KEPT = _mask(EVENT, ("ID", "SSV", "SSID", "STALL", "PNU", "IND", "RNW", "S2", "CLASS",
                      "TTRNW", "INPUT_ADDR"))


# ----------------------------------------------------------------- designs
@dataclass(frozen=True)
class Design:
    """What a vSMMU design decides, as data the mechanism reads (VSmmu and the
    functions below).  A profile in designs/ names it and cites a source
    for each choice."""

    name: str
    vste_fields: tuple[str, ...] = VSTE_GUEST_FIELDS  # guest STE fields that reach hardware
    merge_events: bool = True  # STE.MEV on the guest's nested STEs
    commands: Mapping[Op, Rule] = field(default_factory=lambda: GUEST_COMMANDS)
    otherwise: Rule = always(Action.ILL)  # an opcode without a rule
    cmdq_budget: int | None = 64  # guest commands one PROD trap consumes; None: all queued
    # The most forwarded commands a guest may have outstanding on a shared physical
    # queue: past it, its next forward waits (CONS stays) until the SMMU catches up,
    # so no guest is behind more than this many of each other guest's.  None: no share.
    cmdq_share: int | None = 64
    sync_forwarded: bool = False  # each forwarded command completed before the next
    events: frozenset[Event] = GUEST_EVENTS  # physical events the guest is told of
    s2_events: bool = True  # stage-2 faults among them too (at the guest's own IPA)
    raw_events: bool = False  # forwarded as the hardware wrote them: pSID, PAs and all
    # What the vSMMU advertises unlike ours (Features fields: ssidsize=0, ats=False...).
    features: Mapping[str, Any] = field(default_factory=dict)
    # Guest inputs on which the design's hypervisor stops (a BUG): see virtual.py.
    crashes: frozenset[str] = frozenset()
    full_ats: bool = False  # the guest's EATS reaches hardware unchanged
    s2_config: bool = False  # a vSTE Config=S2 is accepted (as the hypervisor's stage 2)
    abort_when_disabled: bool = False  # the vSMMU's SMMUEN=0 aborts whatever its GBPA says
    # "guests": every guest has vSMMUs; "host": one untrusted host owns every device,
    # at vSID == pSID, and the other guests none (pKVM's world).
    topology: str = "guests"
    # "per-smmu": a guest's vSMMU per physical SMMU; "single": one vSMMU for all of
    # them, its vSIDs given first-free in assignment order (Xen's domU).
    placement: str = "per-smmu"
    # A device taken from its owner is parked on an abort STE (with its ATC
    # invalidated) before anyone else can be given it; without, its old
    # configuration stays live until the next owner's is written.
    park: bool = True
    # When the physical event queue overflows, the records lost cannot be told apart:
    # every guest with a stream on that SMMU has its vSMMU's overflow flag raised.
    signal_lost: bool = True

    @cached_property
    def s1_half(self) -> int:
        """The guest's stage-1 fields copied into a nested STE (V, Config and EATS
        are decided by vste_to_pste)."""
        return _mask(STE, self.vste_fields) & ~_mask(STE, ("V", "CONFIG", "EATS"))


REFERENCE = Design("vsmmu")


@dataclass(frozen=True)
class HostStream:
    """What the hypervisor fixes for one assigned stream."""

    s2_ste: int  # the guest's stage-2-only STE: V, Config=S2, VMID, S2 fields, S2R, S2PTW
    ssidsize: int  # the vSMMU's advertised IDR1.SSIDSIZE
    ats: bool  # the device may use ATS: EATS=translate is honoured
    oas_bits: int  # the vSMMU's advertised OAS: the guest's S1ContextPtr lies within it
    design: Design = REFERENCE


@dataclass(frozen=True)
class GuestContext:
    """What the command transfer needs to know about one vSMMU."""

    vmid: int
    vsids: dict[int, int] = field(default_factory=dict)  # vSID -> pSID on this SMMU
    ats: bool = False
    design: Design = REFERENCE
    owns_all: bool = False  # every stream of this SMMU is the guest's (pKVM's host)


def guest_command(cmd: Any, ctx: GuestContext) -> tuple[Any, Any]:
    """(action, physical command) for one guest command.  `out` is meaningful only
    for FORWARD."""
    op = CMD_ANY.get(cmd, "OP")
    rules, otherwise = ctx.design.commands, ctx.design.otherwise
    if not is_symbolic(op):
        return rules.get(op, otherwise)(cmd, ctx)
    action, out = otherwise(cmd, ctx)
    for code, rule in rules.items():
        a, o = rule(cmd, ctx)
        hit = op == code
        action, out = bv.ite(hit, a, action, 8), bv.ite(hit, o, out, 128)
    return action, out


# ----------------------------------------------------------------- events
def guest_event(record: Any, vsid: Any, fetch_ipa: Any,
                design: Design | None = None) -> tuple[Any, Any]:
    """(forward?, guest record) for a physical record of a stream the guest owns.
    `fetch_ipa` is the guest address of a failed fetch (the hypervisor's reverse
    stage-2 lookup of the physical fetch address), 0 when it has none."""
    design = design or REFERENCE
    event = EVENT.get(record, "ID")
    forward = bv.member(event, frozenset(int(e) for e in design.events))
    if not design.s2_events:
        forward = bv.all_of(forward, EVENT.get(record, "S2") == 0)
    if design.raw_events:
        return forward, record
    out = EVENT.put(record & _KEPT, "SID", vsid)
    fetch = bv.member(event, frozenset(int(e) for e in FETCH_EVENTS))
    stage2 = bv.all_of(EVENT.get(record, "S2") == 1,
                       bv.member(event, frozenset(int(e) for e in WALK_EVENTS)))
    with_fetch = EVENT.put(out, "FETCH_ADDR", fetch_ipa)
    with_ipa = out | (record & EVENT["IPA"].mask)  # stage-2 faults: the guest's own IPA
    out = bv.ite(fetch, with_fetch, bv.ite(stage2, with_ipa, out, 256), 256)
    return forward, out

