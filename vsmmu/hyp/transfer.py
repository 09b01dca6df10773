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
data a reviewer can read in one screen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import reduce
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
# The stage-1 half copied into a nested physical STE (V, Config, EATS are decided here).
S1_HALF = _mask(STE, VSTE_GUEST_FIELDS[2:-1])
ABORT_STE = STE.encode(V=1, CONFIG=Config.ABORT)
# What the vSMMU (IDR0.S1P only) accepts; the reserved 0b001-0b011 behave as abort
# (IHI 0070 §5.2 STE.Config).
GUEST_CONFIGS = frozenset({Config.ABORT, 0b001, 0b010, 0b011, Config.BYPASS, Config.S1_TRANS})


@dataclass(frozen=True)
class HostStream:
    """What the hypervisor fixes for one assigned stream."""

    s2_ste: int  # the guest's stage-2-only STE: V, Config=S2, VMID, S2 fields, S2R, S2PTW
    ssidsize: int  # the vSMMU's advertised IDR1.SSIDSIZE
    ats: bool  # the device may use ATS: EATS=translate is honoured
    oas_bits: int  # the vSMMU's advertised OAS: the guest's S1ContextPtr lies within it


def vste_to_pste(vste: Any, host: HostStream) -> Any:
    """The physical STE for a guest vSTE.  An invalid vSTE gives 0 (V=0): the SMMU
    raises C_BAD_STE for it, which the vSMMU forwards to the guest with the vSID."""
    config = STE.get(vste, "CONFIG")
    eats = STE.get(vste, "EATS")
    # Stage-1 fields matter only to a stage-1 config (abort and bypass ignore them).
    valid = bv.all_of(
        STE.get(vste, "V") == 1,
        bv.member(config, GUEST_CONFIGS),
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
    nested = STE.put(nested, "MEV", 1)  # merge events: a guest must not flood the host
    if host.ats:
        # The guest's "translate" becomes split-stage ATS (S1CHK): ATS answers carry
        # IPAs and translated transactions still go through stage 2.  Full ATS would
        # let the device's translated transactions skip stage 2 altogether.
        nested = STE.put(nested, "EATS", 0) | bv.ite(
            eats == 1, STE["EATS"].put(0, EATS_S1CHK), 0, 512)
    nested = nested | (vste & S1_HALF)
    out = bv.ite(config == Config.S1_TRANS, nested,
                 bv.ite(config == Config.BYPASS, host.s2_ste, ABORT_STE, 512), 512)
    return bv.ite(valid, out, 0, 512)


# -------------------------------------------------------------- commands
class Action(IntEnum):
    FORWARD = 1  # issue `out` on the physical command queue
    CFGI_STE = 2  # re-read the vSTE(s) the command names and rebuild physical STEs
    SYNC = 3  # complete forwarded work, then signal the guest
    NOP = 4  # accepted, nothing to do (a hint, or a stream the guest does not have)
    ILL = 5  # CERROR_ILL to the guest


@dataclass(frozen=True)
class GuestContext:
    """What the command transfer needs to know about one vSMMU."""

    vmid: int
    vsids: dict[int, int] = field(default_factory=dict)  # vSID -> pSID on this SMMU
    ats: bool = False


Rule = Callable[[Any, GuestContext], tuple[Any, Any]]


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


def guest_command(cmd: Any, ctx: GuestContext) -> tuple[Any, Any]:
    """(action, physical command) for one guest command.  `out` is meaningful only
    for FORWARD."""
    op = CMD_ANY.get(cmd, "OP")
    if not is_symbolic(op):
        rule = GUEST_COMMANDS.get(op)
        return rule(cmd, ctx) if rule else (Action.ILL, 0)
    action, out = Action.ILL, 0
    for code, rule in GUEST_COMMANDS.items():
        a, o = rule(cmd, ctx)
        hit = op == code
        action, out = bv.ite(hit, a, action, 8), bv.ite(hit, o, out, 128)
    return action, out


# ----------------------------------------------------------------- events
# Events about a guest's own configuration or transactions.  C_BAD_STREAMID and
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


def guest_event(record: Any, vsid: Any, fetch_ipa: Any) -> tuple[Any, Any]:
    """(forward?, guest record) for a physical record of a stream the guest owns.
    `fetch_ipa` is the guest address of a failed fetch (the hypervisor's reverse
    stage-2 lookup of the physical fetch address), 0 when it has none."""
    event = EVENT.get(record, "ID")
    forward = bv.member(event, frozenset(int(e) for e in GUEST_EVENTS))
    out = EVENT.put(record & _KEPT, "SID", vsid)
    fetch = bv.member(event, frozenset(int(e) for e in FETCH_EVENTS))
    stage2 = bv.all_of(EVENT.get(record, "S2") == 1,
                       bv.member(event, frozenset(int(e) for e in WALK_EVENTS)))
    with_fetch = EVENT.put(out, "FETCH_ADDR", fetch_ipa)
    with_ipa = out | (record & EVENT["IPA"].mask)  # stage-2 faults: the guest's own IPA
    out = bv.ite(fetch, with_fetch, bv.ite(stage2, with_ipa, out, 256), 256)
    return forward, out

