"""The physical SMMU against the architecture: the oracles of the `smmu` target.

Every check reads the SMMU as software sees it (registers, queue memory), never
the model's internals, except the configuration it cached for a transaction
(which control, CD.R or STE.S2R, decided whether a fault is recorded).
Checked after every operation of the `smmu` target (fuzz/physical.py):

  * `fault-reporting`: a DMA that faults with a fault the architecture makes
    recordable is reported, never swallowed, when the event queue is enabled,
    has room and can be written (no EVENTQ_ABT_ERR): configuration and fetch
    errors always (C_BAD_STREAMID when CR2.RECINVSID=1); translation,
    address-size, access and permission faults when the configuration the
    SMMU used has CD.R=1 (stage 1) or STE.S2R=1 (stage 2).  The record lands
    at PROD with the fault's event ID and SID.
    And the converse: such a fault is not recorded when CD.R=0 or STE.S2R=0,
    nor C_BAD_STREAMID when CR2.RECINVSID=0;
  * `stream-bounds`: a transaction whose StreamID is beyond the stream table
    (SID >> min(STRTAB_BASE_CFG.LOG2SIZE, IDR1.SIDSIZE) != 0) ends in
    C_BAD_STREAMID, never in an STE read from past the table;
  * `queue-protocol`, read from the registers as software sees them: an
    undefined command opcode, or CMD_SYNC with CS=0b11, stops the command
    queue with CERROR_ILL; and the converse, a well-formed command the SMMU
    must perform (`must_accept`) never does; while CMDQ_ERR is active the
    queue does not move; neither queue's PROD and CONS ever drift more than
    its size apart (the SMMU never overwrites events software has not consumed).

The command-queue checks hold of every SMMUv3 a guest sees too: the system
targets apply them to each vSMMU (fuzz/runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from vsmmu.arch.faults import RECORD_CONTROLLED, Fault
from vsmmu.arch.layouts import COMMANDS, EVENT, REG, CmdError, Event, Op
from vsmmu.arch.queue import QueueGeometry
from vsmmu.hw.smmu import Smmu

from .violations import FAULT_REPORTING, QUEUE_PROTOCOL, STREAM_BOUNDS, Violation


# ------------------------------------------------------------ the event queue
@dataclass(frozen=True)
class QueueState:
    enabled: bool
    full: bool
    prod: int
    abort_active: bool
    geometry: QueueGeometry


def _reg(smmu: Smmu, name: str) -> int:
    return REG[name].read(smmu)


def _field(smmu: Smmu, reg: str, name: str) -> int:
    return REG[reg].layout.get(_reg(smmu, reg), name)


def _gerror_active(smmu: Smmu, name: str) -> bool:
    """A global error is active while its GERROR and GERRORN bits differ."""
    return bool(REG["GERROR"].layout.get(_reg(smmu, "GERROR") ^ _reg(smmu, "GERRORN"), name))


def queue_state(smmu: Smmu) -> QueueState:
    """The event queue as software reads it from the registers."""
    geo = QueueGeometry.from_base_reg(_field(smmu, "EVENTQ_BASE", "ADDR"),
                                      _field(smmu, "EVENTQ_BASE", "LOG2SIZE"),
                                      _field(smmu, "IDR1", "EVENTQS"), 32)
    prod = _field(smmu, "EVENTQ_PROD", "WR")
    return QueueState(bool(_field(smmu, "CR0ACK", "EVENTQEN")),
                      geo.full(prod, _field(smmu, "EVENTQ_CONS", "RD")), prod,
                      _gerror_active(smmu, "EVENTQ_ABT_ERR"), geo)


# ------------------------------------------------------------ queue protocol


@dataclass(frozen=True)
class Ring:
    prod: int
    cons: int  # the whole CONS register (the command queue's holds ERR too)
    log2: int

    @property
    def distance(self) -> int:
        """Entries from CONS to PROD, wrap bit included: at most 2^log2 when sane."""
        mask = (2 << self.log2) - 1
        return ((self.prod & mask) - (self.cons & mask)) & mask


def rings(smmu: Smmu) -> dict[str, Ring | int | None]:
    """Both queues as software reads them (enabled ones only), and GERRORN while
    CMDQ_ERR is active (else None)."""
    # An error acknowledged during the operation (GERRORN written) lets the queue go on.
    out: dict[str, Ring | int | None] = {
        "cmdq_error": _reg(smmu, "GERRORN") if _gerror_active(smmu, "CMDQ_ERR") else None}
    for q in ("CMDQ", "EVENTQ"):
        if _field(smmu, "CR0ACK", f"{q}EN"):
            log2 = min(_field(smmu, f"{q}_BASE", "LOG2SIZE"), _field(smmu, "IDR1", f"{q}S"))
            out[q] = Ring(_field(smmu, f"{q}_PROD", "WR"), _reg(smmu, f"{q}_CONS"), log2)
    return out


def check_rings(smmu: Smmu, before: dict[str, Ring | int | None],
                after: dict[str, Ring | int | None] | None = None) -> None:
    """`after`: `rings(smmu)` now, when the caller has read it already."""
    after = rings(smmu) if after is None else after
    cmdq_before, cmdq_after = before.get("CMDQ"), after.get("CMDQ")
    if (before["cmdq_error"] is not None and before["cmdq_error"] == after["cmdq_error"]
            and isinstance(cmdq_before, Ring) and isinstance(cmdq_after, Ring)
            and cmdq_before.cons != cmdq_after.cons):
        raise Violation(QUEUE_PROTOCOL, dict(queue="cmdq", problem="moved while CMDQ_ERR",
                                             cons_before=cmdq_before.cons,
                                             cons_after=cmdq_after.cons))
    for q, smmu_side in (("CMDQ", "cons"), ("EVENTQ", "prod")):
        old, new = before.get(q), after.get(q)
        # Only the SMMU's own pointer is its responsibility (software may write the other).
        if (isinstance(old, Ring) and isinstance(new, Ring) and old.log2 == new.log2
                and getattr(old, smmu_side) != getattr(new, smmu_side)
                and old.distance <= 1 << old.log2 < new.distance):
            raise Violation(QUEUE_PROTOCOL, dict(queue=q.lower(), problem="overrun",
                                                 prod=new.prod, cons=new.cons, log2=new.log2))


def illegal_command(word: int) -> bool:
    """Commands every SMMUv3 rejects with CERROR_ILL: an undefined opcode, CMD_SYNC
    with the reserved CS=0b11, or SSec=1 on the Non-secure queue ("ILLEGAL,
    regardless of whether Secure state is supported", IHI 0070 §4.1.6)."""
    op = word & 0xFF
    if op not in COMMANDS:
        return True
    layout = COMMANDS[op]
    return (op == Op.SYNC and layout.get(word, "CS") == 0b11) or (
        "SSEC" in layout and layout.get(word, "SSEC") == 1)

# Commands with no parameter an SMMU may call ILLEGAL (IHI 0070 §4.1.3), by the
# IDR0 feature they need (None: every SMMU): well formed, that is with SSec=0
# (§4.1.6) and every RES0 bit zero (§4.1.5 lets an SMMU reject those), an SMMU
# with the feature must perform them.  Range TLBIs and CFGI_STE_RANGE are left
# out: some of their parameter combinations are ILLEGAL.
MUST_ACCEPT = {Op.PREFETCH_CONFIG: None, Op.CFGI_STE: None, Op.TLBI_NSNH_ALL: None,
               Op.SYNC: None, Op.CFGI_CD: "S1P", Op.CFGI_CD_ALL: "S1P",
               Op.TLBI_NH_ALL: "S1P", Op.TLBI_NH_ASID: "S1P"}


def must_accept(smmu: Smmu, word: int) -> bool:
    """Whether `smmu`, by its IDR0, must perform the command `word` (not CERROR_ILL)."""
    op = word & 0xFF
    if op not in MUST_ACCEPT or illegal_command(word):
        return False
    layout = COMMANDS[op]
    if word & layout.reserved_mask or ("SSEC" in layout and layout.get(word, "SSEC")):
        return False
    feature = MUST_ACCEPT[Op(op)]
    return feature is None or bool(_field(smmu, "IDR0", feature))


def check_not_rejected(smmu: Smmu, before: dict[str, Ring | int | None]) -> None:
    """A command queue that has just stopped with CERROR_ILL stopped on a command
    it may reject: not on one `must_accept` says it must perform."""
    old = before.get("CMDQ")
    if before["cmdq_error"] is not None or not isinstance(old, Ring):
        return
    if not _gerror_active(smmu, "CMDQ_ERR") or _field(smmu, "CMDQ_CONS", "ERR") != CmdError.ILL:
        return
    entries = 1 << old.log2
    base = _field(smmu, "CMDQ_BASE", "ADDR") & ~((16 << old.log2) - 1)
    slot = base + (_field(smmu, "CMDQ_CONS", "RD") & (entries - 1)) * 16
    word = smmu.mem.read_int(slot, 16)
    if must_accept(smmu, word):
        raise Violation(QUEUE_PROTOCOL, dict(queue="cmdq", problem="legal command rejected",
                                             command=word, slot=slot))


def check_consumed(smmu: Smmu, before: dict[str, Ring | int | None],
                   after: dict[str, Ring | int | None], pushed: int) -> None:
    """The SMMU must not consume an illegal command without stopping on it.  What it
    consumed while software pushed `pushed` commands is read back from the registers
    (CONS before and after) and the queue memory they point at."""
    old, new = before.get("CMDQ"), after.get("CMDQ")
    if (before["cmdq_error"] is not None or after["cmdq_error"] is not None
            or not isinstance(old, Ring) or not isinstance(new, Ring) or old.log2 != new.log2
            or old.distance + pushed >= 1 << old.log2):  # a slot may be reused: unsure
        return
    mask, entries = (2 << old.log2) - 1, 1 << old.log2
    base = _field(smmu, "CMDQ_BASE", "ADDR") & ~((16 << old.log2) - 1)
    for k in range(((new.cons & mask) - (old.cons & mask)) & mask):
        slot = base + ((old.cons + k) & (entries - 1)) * 16
        word = smmu.mem.read_int(slot, 16)
        if illegal_command(word):
            raise Violation(QUEUE_PROTOCOL, dict(queue="cmdq", problem="illegal command consumed",
                                                 command=word, slot=slot))


# ------------------------------------------------------------ stream bounds
def beyond_table(smmu: Smmu, sid: int) -> int | None:
    """The stream table's log2 size when `sid` is beyond it and the SMMU must say
    C_BAD_STREAMID (None: within it, translation off, or its STE already cached)."""
    if not _field(smmu, "CR0ACK", "SMMUEN") or smmu.config_cache.get_ste(sid) is not None:
        return None
    log2 = min(_field(smmu, "STRTAB_BASE_CFG", "LOG2SIZE"), _field(smmu, "IDR1", "SIDSIZE"))
    return log2 if sid >> log2 else None


def check_stream_bounds(sid: int, beyond: int | None, fault: Fault | None) -> None:
    """`beyond`: what `beyond_table` said before the transaction."""
    if beyond and (fault is None or fault.event != Event.C_BAD_STREAMID):
        raise Violation(STREAM_BOUNDS, dict(sid=sid, table_log2=beyond, got=(
            fault.event.name if fault else "translated")))


# ------------------------------------------------------------ fault reporting
# The errors of finding a transaction's STE: the configuration errors an
# ATS-translated transaction can meet (it has no CD and no walk but stage 2's).
STREAM_CONFIG_ERRORS = frozenset({Event.C_BAD_STREAMID, Event.F_STE_FETCH, Event.C_BAD_STE})
def record_rule(smmu: Smmu, fault: Fault, sid: int, ssid: int | None,
                translated: bool = False) -> tuple[bool, str] | None:
    """Whether the architecture requires (True) or forbids (False) recording `fault`,
    with the control that says so; None when the configuration the SMMU used is no
    longer cached, so we cannot tell.  `translated`: an ATS-translated transaction."""
    if translated and fault.event in STREAM_CONFIG_ERRORS:
        # IHI 0070 §3.9.1.3 and §6.3.12 CR2.REC_CFG_ATS: a Translated transaction's
        # configuration error aborts it and is recorded only in the extended set of
        # events, which needs IDR0.ATSRECERR=1 (CR2.REC_CFG_ATS is not modelled).
        if _field(smmu, "IDR0", "ATSRECERR"):
            return None
        return False, "translated, IDR0.ATSRECERR=0"
    if fault.event == Event.C_BAD_STREAMID:  # IHI 0070 §6.3.12 CR2.RECINVSID
        recinvsid = _field(smmu, "CR2", "RECINVSID")
        return bool(recinvsid), f"CR2.RECINVSID={recinvsid}"
    if fault.event not in RECORD_CONTROLLED:
        return True, "always"
    stream = smmu.config_cache.get_ste(sid)
    if stream is None:
        return None
    if fault.s2:
        return stream.s2_record, f"STE.S2R={int(stream.s2_record)}"
    ctx = smmu.config_cache.get_cd(sid, ssid or 0) if stream.stage1 else None
    return None if ctx is None else (ctx.record, f"CD.R={int(ctx.record)}")


def check_reported(smmu: Smmu, fault: Fault, sid: int, ssid: int | None, recorded: bool,
                    before: QueueState, translated: bool = False) -> None:
    rule = record_rule(smmu, fault, sid, ssid, translated)
    if rule is None:
        return
    required, why = rule
    if not required:
        if recorded:
            raise Violation(FAULT_REPORTING, dict(event=fault.event.name, sid=sid, ssid=ssid,
                                                  control=why, problem="recorded"))
        return
    if not before.enabled or before.full:
        return
    after = queue_state(smmu)
    if before.abort_active or after.abort_active:
        return  # the queue's memory is unbacked: EVENTQ_ABT_ERR reports the loss
    witness = dict(event=fault.event.name, sid=sid, ssid=ssid, s2=fault.s2, control=why)
    if not recorded or after.prod != before.geometry.inc(before.prod):
        raise Violation(FAULT_REPORTING, dict(witness, problem="not recorded"))
    record = smmu.mem.read_int(before.geometry.addr(before.prod), 32)
    if (EVENT.get(record, "ID"), EVENT.get(record, "SID")) != (fault.event, sid):
        raise Violation(FAULT_REPORTING, dict(witness, problem="wrong record",
                                              record_id=EVENT.get(record, "ID")))
