"""An SMMUv3 driver that programs the device the way Linux's arm-smmu-v3 does.

It reaches the SMMU only through two ports, so the same code drives the
physical model (demo, benchmarks, the hypervisor) and, as a guest driver, a
vSMMU through trapped MMIO and guest memory:
  * an MMIO port: `read(offset, size) -> int`, `write(offset, value, size)`
    (an `Smmu` is one);
  * a memory port: `read(addr, size) -> bytes`, `write(addr, data)` (a
    `PhysMem`, or a guest's IPA space), plus an `Allocator` for the stream
    table, CD tables and queues, and `poll()`, which lets the device make
    progress between register reads (for the physical `Smmu`: `smmu.tick`).

Every wait is bounded: a device that never answers raises `DriverTimeout`.
STE and CD updates follow the "used bits" discipline (`ste_used`/`cd_used`,
relevance as data): bits the live entry ignores are written first, then a
single critical 64-bit word, and only when two words matter at once does the
entry pass through V=0.  Each step is followed by CFGI + CMD_SYNC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..arch.faults import Fault
from ..arch.layouts import (
    CD,
    CMD_ANY,
    COMMANDS,
    L1_CD,
    L1_STD,
    PA_BITS,
    REG,
    STE,
    TG0_GRANULE,
    CmdError,
    Config,
    Op,
)
from ..arch.queue import QueueGeometry
from .alloc import Allocator, MemPort, write_u64, zero

STE_BYTES, CD_BYTES, CMD_BYTES, EVT_BYTES = 64, 64, 16, 32
STRTAB_SPLIT = 8  # 2-level stream table: 256 STEs (16 KiB) per L2 table, as Linux
CD_LEAF_BITS = 10  # 2-level CD table: S1Fmt=2, 1024 CDs (64 KiB) per leaf, as Linux
S1FMT_LINEAR, S1FMT_64K_L2 = 0, 2
SHCFG_INCOMING = 1
DEFAULT_MAIR = 0x44_04_FF  # AttrIndx 0 Normal WB RW-allocate, 1 Device-nGnRE, 2 Normal NC

_PA_ENC = {bits: enc for enc, bits in PA_BITS.items()}
_TG_ENC = {size: enc for enc, size in TG0_GRANULE.items()}  # TG0 and S2TG share it
_TLBI_TG = {4096: 1, 16384: 2, 65536: 3}
_CS = {"none": 0, "irq": 1, "sev": 2}
_QWORDS = 8  # an STE or CD is eight 64-bit words
_M64 = (1 << 64) - 1


class MmioPort(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, value: int, size: int) -> None: ...


class DriverTimeout(Exception):
    """The device made no progress within the poll budget."""


class CommandError(Exception):
    """The command queue stopped on a command (CONS.ERR, GERROR.CMDQ_ERR active)."""

    def __init__(self, err: int, index: int, cmd: int):
        self.err = CmdError(err) if err in CmdError._value2member_map_ else err
        self.index = index
        self.cmd = cmd
        name = self.err.name if isinstance(self.err, CmdError) else f"{err:#x}"
        super().__init__(f"command queue error {name} at index {index}: "
                         f"{CMD_ANY.format(cmd)} ({cmd:#034x})")


@dataclass(frozen=True)
class SmmuInfo:
    """What probe() found in IDR0/1/3/5."""

    s1: bool
    s2: bool
    asid16: bool
    vmid16: bool
    sidsize: int
    ssidsize: int
    oas_bits: int
    granules: frozenset[int]
    st_2lvl: bool
    cd_2lvl: bool
    ril: bool
    ats: bool
    msi: bool
    had: bool
    xnx: bool
    cmdqs: int
    eventqs: int


@dataclass(frozen=True)
class EventBatch:
    """What one events() call drained."""

    faults: tuple[Fault, ...]
    overflow: bool  # the SMMU lost events since the last drain (OVFLG != OVACKFLG)
    unknown: tuple[int, ...] = ()  # raw records with an event id Fault cannot decode


@dataclass
class CdTable:
    """A stream's CD table: pass ptr/s1cdmax/s1fmt to ste_s1()."""

    ptr: int
    s1cdmax: int
    two_level: bool
    leaves: dict[int, int] = field(default_factory=dict)  # L1 index -> leaf address

    @property
    def s1fmt(self) -> int:
        return S1FMT_64K_L2 if self.two_level else S1FMT_LINEAR


@dataclass
class _StreamTable:
    base: int
    log2: int
    two_level: bool
    l2: dict[int, int] = field(default_factory=dict)  # L1 index -> L2 table address


# ---------------------------------------------------------------- words
def _mask(layout, names) -> int:
    m = 0
    for n in names:
        m |= layout[n].mask
    return m


def _enc(table: dict[int, int], value: int, what: str) -> int:
    if value not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, not {value:#x}")
    return table[value]


def cmd(op: Op, **fields: int) -> int:
    """A 128-bit command from its layout's field names (SID=, SSID=, ASID=, ADDR=, ...)."""
    return COMMANDS[op].encode(OP=op, **fields)


def ste_abort() -> int:
    return STE.encode(V=1, CONFIG=Config.ABORT)


def ste_bypass() -> int:
    return STE.encode(V=1, CONFIG=Config.BYPASS, SHCFG=SHCFG_INCOMING)


def ste_s1(ctx_ptr: int, s1cdmax: int = 0, s1fmt: int = S1FMT_LINEAR, s1dss: int = 0,
           eats: int = 0, **fields: int) -> int:
    """Stage-1 STE: CDs at `ctx_ptr` (an IPA when nested); tables walked WB, inner shareable."""
    return STE.encode(
        V=1, CONFIG=Config.S1_TRANS, S1CONTEXTPTR=ctx_ptr, S1CDMAX=s1cdmax, S1FMT=s1fmt,
        S1DSS=s1dss, S1CIR=1, S1COR=1, S1CSH=3, EATS=eats, **fields,
    )


def ste_s2(*, vmid: int, ttb: int, t0sz: int, sl0: int, tg: int = 4096, ps: int = 48,
           affd: bool = False, s2r: bool = True, ptw: bool = False, **fields: int) -> int:
    """Stage-2 STE.  `tg` is the granule in bytes, `ps` the output size in bits."""
    return STE.encode(
        V=1, CONFIG=Config.S2_TRANS, S2VMID=vmid, S2TTB=ttb, S2T0SZ=t0sz, S2SL0=sl0,
        S2TG=_enc(_TG_ENC, tg, "S2 granule"), S2PS=_enc(_PA_ENC, ps, "S2PS bits"),
        S2IR0=1, S2OR0=1, S2SH0=3, S2AA64=1, S2AFFD=int(affd), S2R=int(s2r), S2PTW=int(ptw),
        **fields,
    )


def ste_nested(s1: int, s2: int) -> int:
    """A nested STE from a stage-1 STE (the guest's half) and a stage-2 STE (the
    hypervisor's half): their fields do not overlap but for V and Config."""
    if STE.get(s1, "CONFIG") != Config.S1_TRANS or STE.get(s2, "CONFIG") != Config.S2_TRANS:
        raise ValueError("ste_nested takes an S1_TRANS STE and an S2_TRANS STE")
    return STE.encode(s1 | s2, CONFIG=Config.NESTED)


def cd(asid: int, ttb0: int, t0sz: int, tg0: int = 4096, ips: int = 48, *, epd1: bool = True,
       r: bool = True, a: bool = True, aa64: bool = True, affd: bool = False,
       mair: int = DEFAULT_MAIR, **fields: int) -> int:
    """A valid CD for TTB0.  `tg0` is the granule in bytes, `ips` the output size in
    bits; other CD fields (TTB1, T1SZ, TG1, WXN, HAD0, ...) pass through by name."""
    return CD.encode(
        V=1, ASID=asid, TTB0=ttb0, T0SZ=t0sz, TG0=_enc(_TG_ENC, tg0, "TG0 granule"),
        IPS=_enc(_PA_ENC, ips, "IPS bits"), IR0=1, OR0=1, SH0=3, EPD1=int(epd1),
        R=int(r), A=int(a), AA64=int(aa64), AFFD=int(affd), MAIR=mair, **fields,
    )


# ------------------------------------------------------ which bits matter
_STE_S1 = _mask(STE, ("S1FMT", "S1CONTEXTPTR", "S1CDMAX", "S1DSS", "S1CIR", "S1COR", "S1CSH",
                      "DRE", "CONT", "DCP", "PPAR", "S1STALLD"))
_STE_S2 = _mask(STE, [f.name for f in STE if f.name.startswith("S2")])
_STE_XLATE = _mask(STE, ("EATS", "STRW", "S2VMID"))  # S2VMID also tags stage-1-only entries
_STE_ATTR = _mask(STE, ("MEMATTR", "MTCFG", "ALLOCCFG", "SHCFG", "NSCFG", "PRIVCFG", "INSTCFG"))
_STE_VCFG = _mask(STE, ("V", "CONFIG"))
# MEV only merges events: no intermediate mixing old and new MEV is unsafe, so it is never
# "used" (forcing MEV into the critical set is the bug Linux fixed, smmu-anchors §4).
_STE_SAFE = STE["MEV"].mask
_CD_TT0 = _mask(CD, ("T0SZ", "TG0", "IR0", "OR0", "SH0", "TTB0", "HAD0", "NSCFG0"))
_CD_TT1 = _mask(CD, ("T1SZ", "TG1", "IR1", "OR1", "SH1", "TTB1", "HAD1", "NSCFG1"))
_ALL = (1 << 512) - 1


def ste_used(word: int) -> int:
    """The STE bits the SMMU reads for this configuration (IHI 0070 §5.2)."""
    if not STE.get(word, "V"):
        return STE["V"].mask
    config = STE.get(word, "CONFIG")
    if config == Config.ABORT:
        return _STE_VCFG
    if config == Config.BYPASS:
        return _STE_VCFG | _STE_ATTR
    if config not in (Config.S1_TRANS, Config.S2_TRANS, Config.NESTED):
        return _ALL & ~_STE_SAFE  # reserved: assume the worst
    used = _STE_VCFG | _STE_XLATE
    if config != Config.S2_TRANS:
        used |= _STE_S1
    if config != Config.S1_TRANS:
        used |= _STE_S2
    # The incoming-attribute overrides apply when no stage-1 translation replaces them.
    s1_bypass = STE.get(word, "S1CDMAX") and STE.get(word, "S1DSS") == 1
    if config == Config.S2_TRANS or s1_bypass:
        used |= _STE_ATTR
    return used & ~_STE_SAFE


def cd_used(word: int) -> int:
    """The CD bits the SMMU reads: all of it, minus the fields of a disabled half."""
    if not CD.get(word, "V"):
        return CD["V"].mask
    used = CD.defined_mask
    if CD.get(word, "EPD0"):
        used &= ~_CD_TT0
    if CD.get(word, "EPD1"):
        used &= ~_CD_TT1
    return used


def _qwords(word: int) -> tuple[int, ...]:
    return tuple((word >> (64 * i)) & _M64 for i in range(_QWORDS))


def _join(qwords) -> int:
    return sum(q << (64 * i) for i, q in enumerate(qwords))


def update_steps(cur: int, target: int, used: Callable[[int], int]) -> list[int]:
    """The entries to write, in order, each followed by CFGI + SYNC, to turn `cur` into
    `target` so that the SMMU, reading between any two steps, sees on the bits it
    uses either the old entry, the new one, or V=0:
      * one 64-bit word holds every used bit that changes (hitless): first write the
        bits `cur` ignores, then that critical word, then clear what `target` ignores;
      * several do: write V=0 (word 0 = 0), then words 1..7, then word 0."""
    cq, tq = _qwords(cur), _qwords(target)
    cur_used, tgt_used = _qwords(used(cur)), _qwords(used(target))
    quiet = [c & u | t & ~u for c, t, u in zip(cq, tq, cur_used, strict=True)]
    critical = [i for i in range(_QWORDS) if (quiet[i] ^ tq[i]) & tgt_used[i]]
    if len(critical) == 1:
        i = critical[0]
        quiet[i] = cq[i]
        staged = [quiet, [*quiet[:i], tq[i], *quiet[i + 1:]], list(tq)]
    elif critical:
        staged = [[0, *cq[1:]], [0, *tq[1:]], list(tq)]
    else:
        staged = [list(tq)]
    steps, prev = [], list(cq)
    for entry in staged:
        if entry != prev:
            steps.append(_join(entry))
            prev = entry
    return steps


# ---------------------------------------------------------------- driver
class SmmuDriver:
    def __init__(self, mmio: MmioPort, mem: MemPort, alloc: Allocator,
                 poll: Callable[[], None] = lambda: None, *, max_polls: int = 1000):
        self.mmio, self.mem, self.alloc, self.poll = mmio, mem, alloc, poll
        self.max_polls = max_polls
        self.info: SmmuInfo | None = None
        self._strtab: _StreamTable | None = None
        self._cmdq: QueueGeometry | None = None
        self._evtq: QueueGeometry | None = None
        self._prod = 0  # shadow CMDQ_PROD: only this driver produces
        self.submitted = 0  # commands queued since the queues were set up
        self._cd_tables: dict[int, CdTable] = {}

    # ------------------------------------------------------------ registers
    def _read(self, name: str) -> int:
        return REG[name].read(self.mmio)

    def _write(self, name: str, value: int) -> None:
        REG[name].write(self.mmio, value)

    def _get(self, name: str, fld: str) -> int:
        return REG[name].layout.get(self._read(name), fld)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        for _ in range(self.max_polls):
            if done():
                return
            self.poll()
        if not done():
            raise DriverTimeout(f"{what}: no progress after {self.max_polls} polls")

    def _zeroed(self, size: int, align: int | None = None) -> int:
        addr = self.alloc.alloc(size, align or size)
        zero(self.mem, addr, size)
        return addr

    # ------------------------------------------------------------ probe / reset
    def probe(self) -> SmmuInfo:
        i0, i1, i3, i5 = (REG[n].layout.decode(self._read(n))
                          for n in ("IDR0", "IDR1", "IDR3", "IDR5"))
        self.info = SmmuInfo(
            s1=bool(i0.S1P), s2=bool(i0.S2P), asid16=bool(i0.ASID16), vmid16=bool(i0.VMID16),
            sidsize=i1.SIDSIZE, ssidsize=i1.SSIDSIZE,
            oas_bits=PA_BITS.get(i5.OAS, 48),  # reserved OAS: assume 48 bits, as Linux
            granules=frozenset(g for g, on in ((4096, i5.GRAN4K), (16384, i5.GRAN16K),
                                               (65536, i5.GRAN64K)) if on),
            st_2lvl=i0.ST_LEVEL == 1, cd_2lvl=bool(i0.CD2L), ril=bool(i3.RIL),
            ats=bool(i0.ATS), msi=bool(i0.MSI), had=bool(i3.HAD), xnx=bool(i3.XNX),
            cmdqs=i1.CMDQS, eventqs=i1.EVENTQS,
        )
        return self.info

    def reset(self, *, two_level: bool | None = None, log2_sids: int | None = None,
              cmdq_log2: int = 8, evtq_log2: int = 8, gbpa_abort: bool = True,
              irqs: bool = False, recinvsid: bool = True) -> None:
        """Bring the SMMU up from any state: disabled, fresh stream table and queues,
        caches invalidated, then CMDQ, EVENTQ and translation enabled in that order.
        `recinvsid`: record transactions with an invalid StreamID (CR2.RECINVSID, set
        by Linux); without it they are terminated silently."""
        info = self.info or self.probe()
        if self._get("CR0", "SMMUEN"):
            self._update_gbpa(abort=True)  # no bypass window while we disable it
        self._set_cr0(0)
        self._update_gbpa(abort=gbpa_abort)
        self._write("IRQ_CTRL", 0)
        self._wait(lambda: self._read("IRQ_CTRLACK") == 0, "IRQ_CTRLACK")
        gerror = self._read("GERROR")
        self._write("GERRORN", gerror)  # errors left by a previous owner would stall the CMDQ
        cr1 = REG["CR1"].layout.encode(QUEUE_IC=1, QUEUE_OC=1, QUEUE_SH=3,
                                       TABLE_IC=1, TABLE_OC=1, TABLE_SH=3)
        self._write("CR1", cr1)
        self._write("CR2", REG["CR2"].layout.encode(PTM=1, RECINVSID=int(recinvsid)))
        self._init_strtab(info, two_level, log2_sids)
        self._init_queues(info, cmdq_log2, evtq_log2)
        self._cd_tables.clear()

        enables = {"CMDQEN": 1}
        self._set_cr0(**enables)
        self.submit(cmd(Op.CFGI_STE_RANGE, RANGE=31), cmd(Op.TLBI_NSNH_ALL))
        self.sync()
        enables["EVENTQEN"] = 1
        self._set_cr0(**enables)
        if irqs:
            ctrl = REG["IRQ_CTRL"].layout.encode(GERROR_IRQEN=1, EVENTQ_IRQEN=1)
            self._write("IRQ_CTRL", ctrl)
            self._wait(lambda: self._read("IRQ_CTRLACK") == ctrl, "IRQ_CTRLACK")
        enables["SMMUEN"] = 1
        self._set_cr0(**enables)

    def _set_cr0(self, value: int = 0, **enables: int) -> None:
        layout = REG["CR0"].layout
        value = layout.encode(value, **enables)
        mask = _mask(layout, ("SMMUEN", "EVENTQEN", "CMDQEN"))
        self._write("CR0", value)
        self._wait(lambda: (self._read("CR0ACK") ^ value) & mask == 0, "CR0ACK")

    def _update_gbpa(self, *, abort: bool) -> None:
        def idle() -> bool:
            return not self._get("GBPA", "UPDATE")

        self._wait(idle, "GBPA.UPDATE idle")
        self._write("GBPA", REG["GBPA"].layout.encode(self._read("GBPA"), ABORT=int(abort),
                                                      UPDATE=1))
        self._wait(idle, "GBPA.UPDATE completion")

    def _init_strtab(self, info: SmmuInfo, two_level: bool | None, log2: int | None) -> None:
        log2 = info.sidsize if log2 is None else min(log2, info.sidsize)
        if two_level is None:
            two_level = info.st_2lvl and log2 > STRTAB_SPLIT
        if two_level and (not info.st_2lvl or log2 <= STRTAB_SPLIT):
            raise ValueError(f"a 2-level stream table needs IDR0.ST_LEVEL and more than "
                             f"{STRTAB_SPLIT} SID bits (have {log2})")
        size = max(8 << (log2 - STRTAB_SPLIT), 64) if two_level else STE_BYTES << log2
        base = self._zeroed(size)
        self._strtab = _StreamTable(base, log2, two_level)
        self._write("STRTAB_BASE", REG["STRTAB_BASE"].layout.encode(ADDR=base, RA=1))
        self._write("STRTAB_BASE_CFG", REG["STRTAB_BASE_CFG"].layout.encode(
            LOG2SIZE=log2, SPLIT=STRTAB_SPLIT if two_level else 0, FMT=int(two_level)))

    def _init_queues(self, info: SmmuInfo, cmdq_log2: int, evtq_log2: int) -> None:
        self._cmdq = self._new_queue("CMDQ", min(cmdq_log2, info.cmdqs), CMD_BYTES, RA=1)
        self._evtq = self._new_queue("EVENTQ", min(evtq_log2, info.eventqs), EVT_BYTES, WA=1)
        self._prod = self.submitted = 0

    def _new_queue(self, name: str, log2: int, entry: int, **alloc_hint: int) -> QueueGeometry:
        base = self._zeroed(max(entry << log2, 32))
        self._write(f"{name}_BASE", REG[f"{name}_BASE"].layout.encode(
            ADDR=base, LOG2SIZE=log2, **alloc_hint))
        self._write(f"{name}_PROD", 0)
        self._write(f"{name}_CONS", 0)
        return QueueGeometry(base, log2, entry)

    # ------------------------------------------------------------ commands
    def _queue(self) -> QueueGeometry:
        if self._cmdq is None:
            raise RuntimeError("the command queue is not set up: call reset() first")
        return self._cmdq

    def _cons(self) -> int:
        return self._get("CMDQ_CONS", "RD")

    def pending(self) -> int:
        """Commands queued that the SMMU has not consumed yet."""
        return self._queue().used(self._prod, self._cons())

    def _cmdq_error(self) -> CommandError | None:
        """The error the queue is stopped on, if GERROR.CMDQ_ERR is active."""
        f = REG["GERROR"].layout["CMDQ_ERR"]
        if not f.get(self._read("GERROR") ^ self._read("GERRORN")):
            return None
        q = self._queue()
        cons = self._read("CMDQ_CONS")
        rd = REG["CMDQ_CONS"].layout.get(cons, "RD")
        word = int.from_bytes(self.mem.read(q.addr(rd), CMD_BYTES), "little")
        return CommandError(REG["CMDQ_CONS"].layout.get(cons, "ERR"), q.index(rd), word)

    def _check(self) -> None:
        err = self._cmdq_error()
        if err is not None:
            raise err

    def submit(self, *cmds: int) -> None:
        """Queue commands at PROD and ring the doorbell; waits (bounded) while full."""
        q = self._queue()
        for word in cmds:
            if q.full(self._prod, self._cons()):
                self._write("CMDQ_PROD", self._prod)  # let the SMMU see what is queued

                def has_room() -> bool:
                    self._check()
                    return not q.full(self._prod, self._cons())

                self._wait(has_room, "command queue space")
            self.mem.write(q.addr(self._prod), word.to_bytes(CMD_BYTES, "little"))
            self._prod = q.inc(self._prod)
            self.submitted += 1
        self._write("CMDQ_PROD", self._prod)

    def sync(self, cs: str = "none", msi_addr: int = 0, msi_data: int = 0) -> None:
        """CMD_SYNC, then wait until CONS has passed it.  Raises CommandError when the
        queue stops on an earlier command."""
        q = self._queue()
        at = self._prod
        self.submit(cmd(Op.SYNC, CS=_enc(_CS, cs, "CMD_SYNC completion signal"),
                        MSIADDR=msi_addr, MSIDATA=msi_data))
        end = self._prod

        def passed() -> bool:
            if q.used(end, self._cons()) < q.used(end, at):
                return True
            self._check()
            return False

        self._wait(passed, "CMD_SYNC completion")

    def recover(self) -> CommandError | None:
        """Acknowledge a stopped command queue as Linux does: an illegal command is
        overwritten with CMD_SYNC, a fetch abort or ATC timeout is retried, then
        GERRORN := GERROR restarts the queue.  Returns the error handled, if any."""
        err = self._cmdq_error()
        if err is None:
            return None
        if err.err not in (CmdError.ABT, CmdError.ATC_INV_SYNC):
            q = self._queue()
            slot = q.base + err.index * CMD_BYTES
            self.mem.write(slot, cmd(Op.SYNC).to_bytes(CMD_BYTES, "little"))
        self._write("GERRORN", self._read("GERROR"))

        def acknowledged() -> bool:
            # The SMMU resumes at CONS and may stop again at once on a later bad
            # command (IHI 0070: CMDQ_ERR is raised afresh for it): that is progress,
            # for the next recover() to handle, not a failure to acknowledge this one.
            now = self._cmdq_error()
            return now is None or now.index != err.index

        self._wait(acknowledged, "GERROR.CMDQ_ERR acknowledgement")
        return err

    def _issue(self, *cmds: int) -> None:
        self.submit(*cmds)
        self.sync()

    def cfgi_ste(self, sid: int) -> None:
        self._issue(cmd(Op.CFGI_STE, SID=sid, LEAF=1))

    def cfgi_cd(self, sid: int, ssid: int, *, leaf: bool = True) -> None:
        self._issue(cmd(Op.CFGI_CD, SID=sid, SSID=ssid, LEAF=int(leaf)))

    def cfgi_all(self) -> None:
        self._issue(cmd(Op.CFGI_STE_RANGE, RANGE=31))

    def tlbi_asid(self, asid: int, vmid: int = 0) -> None:
        self._issue(cmd(Op.TLBI_NH_ASID, ASID=asid, VMID=vmid))

    def tlbi_nh_all(self, vmid: int = 0) -> None:
        """All stage-1 (and nested) entries of a VMID; follows TLBI_S2_IPA when nested."""
        self._issue(cmd(Op.TLBI_NH_ALL, VMID=vmid))

    def tlbi_vmall(self, vmid: int) -> None:
        self._issue(cmd(Op.TLBI_S12_VMALL, VMID=vmid))

    def tlbi_all(self) -> None:
        self._issue(cmd(Op.TLBI_NSNH_ALL))

    def tlbi_va(self, iova: int, size: int, *, asid: int, vmid: int = 0, granule: int = 4096,
                leaf: bool = True, leaf_size: int | None = None) -> None:
        """Invalidate stage-1 entries for [iova, iova+size): range commands when
        IDR3.RIL, else one TLBI_NH_VA per `leaf_size` (default: per granule page)."""
        self._tlbi_range(Op.TLBI_NH_VA, iova, size, granule, leaf, leaf_size,
                         ASID=asid, VMID=vmid)

    def tlbi_s2_ipa(self, ipa: int, size: int, *, vmid: int, granule: int = 4096,
                    leaf: bool = True, leaf_size: int | None = None) -> None:
        """Invalidate stage-2 entries for [ipa, ipa+size).  Nested (combined) entries
        need tlbi_nh_all(vmid) as well."""
        self._tlbi_range(Op.TLBI_S2_IPA, ipa, size, granule, leaf, leaf_size, VMID=vmid)

    def _tlbi_range(self, op: Op, start: int, size: int, granule: int, leaf: bool,
                    leaf_size: int | None, **ctx: int) -> None:
        cmds = [cmd(op, ADDR=addr, LEAF=int(leaf), **ctx, **rng)
                for addr, rng in self._tlbi_chunks(start, size, granule, leaf_size)]
        self._issue(*cmds)

    def _tlbi_chunks(self, start: int, size: int, granule: int,
                     leaf_size: int | None) -> Iterator[tuple[int, dict[str, int]]]:
        """(address, range fields) per command.  With RIL a range is split into runs of
        NUM+1 (up to 32) blocks of 2^SCALE pages, taking the lowest set bit first."""
        tg = _enc(_TLBI_TG, granule, "TLBI granule")
        addr = start & -granule
        end = start + size
        if not (self.info or self.probe()).ril:
            step = leaf_size or granule
            for a in range(start & -step, end, step):
                yield a, {}
            return
        pages = -(-(end - addr) // granule)
        while pages:
            scale = (pages & -pages).bit_length() - 1
            num = (pages >> scale) & 0x1F
            yield addr, dict(TG=tg, SCALE=scale, NUM=num - 1)
            addr += (num << scale) * granule
            pages -= num << scale

    # ------------------------------------------------------------ stream table
    def ste_addr(self, sid: int, *, create: bool = True) -> int | None:
        """Where the STE of `sid` lives (allocating its L2 table unless `create` is off)."""
        st = self._strtab
        if st is None:
            raise RuntimeError("no stream table: call reset() first")
        if sid < 0 or sid >> st.log2:
            raise ValueError(f"SID {sid:#x} beyond the {st.log2}-bit stream table")
        if not st.two_level:
            return st.base + sid * STE_BYTES
        l1 = sid >> STRTAB_SPLIT
        l2 = st.l2.get(l1)
        if l2 is None:
            if not create:
                return None
            # Zeroed (V=0) STEs first, then the L1 descriptor that makes them reachable.
            l2 = self._zeroed(STE_BYTES << STRTAB_SPLIT)
            write_u64(self.mem, st.base + 8 * l1,
                      L1_STD.encode(SPAN=STRTAB_SPLIT + 1, L2PTR=l2))
            st.l2[l1] = l2
        return l2 + (sid & ((1 << STRTAB_SPLIT) - 1)) * STE_BYTES

    def read_ste(self, sid: int) -> int:
        addr = self.ste_addr(sid, create=False)
        return 0 if addr is None else int.from_bytes(self.mem.read(addr, STE_BYTES), "little")

    def write_ste(self, sid: int, word: int) -> int:
        """Install an STE without the SMMU ever seeing a torn one; returns the number of
        CFGI_STE + CMD_SYNC rounds it took."""
        addr = self.ste_addr(sid)
        return self._write_entry(addr, word, ste_used,
                                 lambda: self._issue(cmd(Op.CFGI_STE, SID=sid, LEAF=1)))

    def _write_entry(self, addr: int, target: int, used: Callable[[int], int],
                     invalidate: Callable[[], None]) -> int:
        cur = int.from_bytes(self.mem.read(addr, 8 * _QWORDS), "little")
        steps = update_steps(cur, target, used)
        for entry in steps:
            old, new = _qwords(cur), _qwords(entry)
            for i in (*range(1, _QWORDS), 0):  # word 0 (V) last within a step
                if old[i] != new[i]:
                    write_u64(self.mem, addr + 8 * i, new[i])
            invalidate()
            cur = entry
        return len(steps)

    # ------------------------------------------------------------ CD tables
    def alloc_cd_table(self, sid: int, s1cdmax: int, two_level: bool = False) -> CdTable:
        """A zeroed CD table for `sid` with 2^s1cdmax CDs: linear, or 2-level with
        64 KiB (1024-CD) leaves allocated on first use."""
        info = self.info or self.probe()
        if s1cdmax > info.ssidsize:
            raise ValueError(f"S1CDMax {s1cdmax} beyond IDR1.SSIDSIZE {info.ssidsize}")
        if two_level and not info.cd_2lvl:
            raise ValueError("2-level CD tables need IDR0.CD2L")
        if two_level:
            ptr = self._zeroed(max(8 << max(0, s1cdmax - CD_LEAF_BITS), 64))
        else:
            ptr = self._zeroed(CD_BYTES << s1cdmax)
        table = self._cd_tables[sid] = CdTable(ptr, s1cdmax, two_level)
        return table

    def cd_addr(self, sid: int, ssid: int) -> int:
        """Where the CD of (sid, ssid) lives (allocating a 2-level leaf on first use)."""
        table = self._cd_tables.get(sid)
        if table is None:
            raise ValueError(f"SID {sid:#x} has no CD table: call alloc_cd_table() first")
        if ssid < 0 or ssid >> table.s1cdmax:
            raise ValueError(f"SSID {ssid:#x} beyond S1CDMax {table.s1cdmax}")
        if not table.two_level:
            return table.ptr + ssid * CD_BYTES
        l1 = ssid >> CD_LEAF_BITS
        leaf = table.leaves.get(l1)
        if leaf is None:
            leaf = self._zeroed(CD_BYTES << CD_LEAF_BITS, 4096)  # L2Ptr is 4K-aligned
            write_u64(self.mem, table.ptr + 8 * l1, L1_CD.encode(V=1, L2PTR=leaf))
            table.leaves[l1] = leaf
            self.cfgi_cd(sid, ssid, leaf=False)  # an invalid L1CD may have been cached
        return leaf + (ssid & ((1 << CD_LEAF_BITS) - 1)) * CD_BYTES

    def write_cd(self, sid: int, ssid: int, word: int) -> int:
        """Install a CD (0 clears it); returns the CFGI_CD + CMD_SYNC rounds it took."""
        addr = self.cd_addr(sid, ssid)
        return self._write_entry(addr, word, cd_used,
                                 lambda: self.cfgi_cd(sid, ssid))

    # ------------------------------------------------------------ events
    def events(self) -> EventBatch:
        """Drain the event queue and acknowledge an overflow (OVACKFLG := OVFLG)."""
        q = self._evtq
        if q is None:
            raise RuntimeError("the event queue is not set up: call reset() first")
        prod_reg = self._read("EVENTQ_PROD")
        prod = REG["EVENTQ_PROD"].layout.get(prod_reg, "WR")
        ovflg = REG["EVENTQ_PROD"].layout.get(prod_reg, "OVFLG")
        cons_layout = REG["EVENTQ_CONS"].layout
        cons_reg = self._read("EVENTQ_CONS")
        cons = cons_layout.get(cons_reg, "RD")
        faults, unknown = [], []
        for _ in range(min(q.used(prod, cons), q.entries)):  # never trust PROD blindly
            raw = int.from_bytes(self.mem.read(q.addr(cons), EVT_BYTES), "little")
            try:
                faults.append(Fault.decode(raw))
            except ValueError:
                unknown.append(raw)
            cons = q.inc(cons)
        overflow = ovflg != cons_layout.get(cons_reg, "OVACKFLG")
        acked = cons_layout.encode(RD=cons, OVACKFLG=ovflg)
        if acked != cons_reg:  # RD and OVACKFLG are all of it: an equal write changes nothing
            self._write("EVENTQ_CONS", acked)
        return EventBatch(tuple(faults), overflow, tuple(unknown))
