"""The SMMUv3 programming interface, written once for every SMMU software sees.

`SmmuFrontend` is what a driver talks to: the register file with its access
rules (widths, read-only registers, writes ignored while an enable is on,
immediate acks, GBPA.UPDATE), global errors and their interrupts or MSIs, the
event-queue producer (overflow flag, EVENTQ_ABT_ERR), the command-queue
consumer (bounded work per doorbell, CERROR halt until GERRORN acknowledges)
and the stream-table lookup (linear and 2-level).  The physical device
(`smmu.Smmu`) and the hypervisor's virtual one (`vsmmu.VSmmu`) both build on
it and differ in what a command does and where their memory is: physical
memory for the first, the guest's IPA space for the second.

A subclass supplies `features` (what ID registers advertise), `mem` (a memory
port with `read_int`/`write`/`write_int` taking an initiator) and `execute`.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from ..arch.faults import WALK_EVENTS, Fault, FaultError
from ..arch.features import Features
from ..arch.layouts import COMMANDS, EVENT, L1_STD, REG, REG_AT, CmdError, Event
from ..arch.layouts import REG_LAYOUT as _L
from ..arch.queue import QueueGeometry
from .memory import BusError

STE_SIZE, CMD_SIZE, EVT_SIZE = 64, 16, 32


class Initiator(NamedTuple):
    """Who performs a memory access: observers (invariant checkers) key on it."""

    smmu: str
    purpose: str  # "ste" "cd" "s1" "s2" (table walks) "cmdq" "evtq" "msi" "dma"
    sid: int | None = None


class SmmuFrontend:
    cmdq_budget = 1024  # commands consumed per doorbell, and per `tick()`
    # False: a doorbell only tells the SMMU there is work; the queue is consumed on
    # ticks, at `cmdq_budget` a tick (the hypervisor's physical SMMUs: model time).
    cmdq_on_doorbell = True

    def __init__(self, features: Features, name: str):
        self.feat = features
        self.name = name
        self.id_regs = features.id_registers()
        SmmuFrontend.reset(self)

    def reset(self) -> None:
        self.regs: dict[str, int] = {r.name: 0 for r in REG.values()}
        self.regs.update(self.id_regs)
        self.regs["GBPA"] = _L["GBPA"].encode(SHCFG=1)  # use incoming shareability
        self.irqs: Counter[str] = Counter()  # wired interrupts: eventq, gerror, cmd_sync
        self.lost: Counter[int] = Counter()  # StreamID -> event records lost
        self.cmd_errors: list[tuple[int | None, CmdError]] = []  # (command, CERROR) each stop
        self.overflows = 0  # times the overflow flag was raised (OVFLG made != OVACKFLG)
        # What this SMMU has been made to do, as "kind:name" (event, cmd, cerror, ste,
        # fault): a fuzzer's coverage table reads it; nothing in the model does.
        self.reached: set[str] = set()

    def execute(self, cmd: int) -> CmdError | None:
        """Perform one 128-bit command; returns the CERROR code (NONE: success), or None
        when it cannot be performed yet (an emulation waiting for room elsewhere)."""
        raise NotImplementedError

    # ------------------------------------------------------------ registers
    def _f(self, reg: str, field: str) -> int:
        return _L[reg].get(self.regs[reg], field)

    def _enabled(self, field: str) -> bool:
        """An enable counts while set in CR0 or not yet cleared in CR0ACK."""
        return bool(self._f("CR0", field) or self._f("CR0ACK", field))

    def read(self, offset: int, size: int = 4) -> int:
        reg, shift = self._resolve(offset, size)
        if reg is None:
            return 0  # RAZ: unimplemented or misaligned
        return (self.regs[reg.name] >> shift) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        reg, shift = self._resolve(offset, size)
        if reg is None:
            return  # WI
        mask = ((1 << (8 * size)) - 1) << shift
        merged = (self.regs[reg.name] & ~mask) | ((value << shift) & mask)
        self._write_reg(reg.name, merged & reg.layout.defined_mask)

    def _resolve(self, offset: int, size: int):
        """The register and bit shift an access reaches: whole registers, or
        32-bit halves of 64-bit ones.  Anything else is RAZ/WI."""
        if size not in (4, 8) or offset % size:
            return None, 0
        reg = REG_AT.get(offset)
        if reg is not None and size <= reg.size:
            return reg, 0
        reg = REG_AT.get(offset - 4)
        if reg is not None and reg.size == 8 and size == 4:
            return reg, 32
        return None, 0

    READ_ONLY = frozenset(
        {"IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5", "IIDR", "AIDR", "CR0ACK",
         "STATUSR", "IRQ_CTRLACK", "GERROR"}
    )
    # Registers that ignore writes while the named CR0 / IRQ_CTRL enable is on.
    _LOCKED_BY = {
        "CR1": ("CR0", "SMMUEN"), "CR2": ("CR0", "SMMUEN"),
        "STRTAB_BASE": ("CR0", "SMMUEN"), "STRTAB_BASE_CFG": ("CR0", "SMMUEN"),
        "CMDQ_BASE": ("CR0", "CMDQEN"), "CMDQ_CONS": ("CR0", "CMDQEN"),
        "EVENTQ_BASE": ("CR0", "EVENTQEN"), "EVENTQ_PROD": ("CR0", "EVENTQEN"),
        "GERROR_IRQ_CFG0": ("IRQ_CTRL", "GERROR_IRQEN"),
        "GERROR_IRQ_CFG1": ("IRQ_CTRL", "GERROR_IRQEN"),
        "GERROR_IRQ_CFG2": ("IRQ_CTRL", "GERROR_IRQEN"),
        "EVENTQ_IRQ_CFG0": ("IRQ_CTRL", "EVENTQ_IRQEN"),
        "EVENTQ_IRQ_CFG1": ("IRQ_CTRL", "EVENTQ_IRQEN"),
        "EVENTQ_IRQ_CFG2": ("IRQ_CTRL", "EVENTQ_IRQEN"),
    }

    def _locked(self, name: str) -> bool:
        lock = self._LOCKED_BY.get(name)
        if lock is None:
            return False
        reg, field = lock
        if reg == "CR0":
            return self._enabled(field)
        return bool(self._f("IRQ_CTRL", field) or self._f("IRQ_CTRLACK", field))

    def _write_reg(self, name: str, value: int) -> None:
        if name in self.READ_ONLY or self._locked(name):
            return
        if name == "GBPA":
            if not _L["GBPA"].get(value, "UPDATE"):  # only an UPDATE write takes effect
                return
            self.regs["GBPA"] = _L["GBPA"].put(value, "UPDATE", 0)
        elif name == "CR0":
            # No PRI queue and no VMID wildcards (IDR0.PRI = IDR0.VMW = 0): RES0.
            value &= ~(_L["CR0"]["PRIQEN"].mask | _L["CR0"]["VMW"].mask)
            if not self.feat.ats:
                value &= ~_L["CR0"]["ATSCHK"].mask
            self.regs["CR0"] = self.regs["CR0ACK"] = value
        elif name == "IRQ_CTRL":
            value &= ~_L["IRQ_CTRL"]["PRIQ_IRQEN"].mask
            self.regs["IRQ_CTRL"] = self.regs["IRQ_CTRLACK"] = value
        elif name == "CMDQ_CONS":
            rd = _L["CMDQ_CONS"].get(value, "RD")  # ERR belongs to the SMMU
            self.regs[name] = _L["CMDQ_CONS"].put(self.regs["CMDQ_CONS"], "RD", rd)
        else:
            if "ADDR" in _L[name]:  # the *_BASE and *_IRQ_CFG0 address registers
                value = _L[name].put(value, "ADDR", self._in_oas(_L[name].get(value, "ADDR")))
            self.regs[name] = value
        self._written(name)

    def _in_oas(self, addr: int) -> int:
        """An address the SMMU originates, truncated to the OAS.  IHI 0070 §3.4.3: for
        queue bases and MSI addresses that is the behaviour; for a stream-table fetch
        it is one of the two CONSTRAINED UNPREDICTABLE choices (the other,
        F_STE_FETCH), taken here because Arm recommends that an emulated SMMU mask
        guest-provided addresses to the IPA size, and a vSMMU is this class too.
        Register fields need not store the bits (§6.3: "not required to store")."""
        return addr & ((1 << self.feat.oas_bits) - 1)

    def _written(self, name: str) -> None:
        """A register write took effect: the doorbells that start the consumer."""
        if name in ("CR0", "CMDQ_PROD", "GERRORN") and self.cmdq_on_doorbell:
            self.process_cmdq()

    # -------------------------------------------------------------- GERROR
    def _gerror(self, bit: str) -> None:
        """Activate a global error (toggle GERROR unless already active) and signal it."""
        f = _L["GERROR"][bit]
        if f.get(self.regs["GERROR"]) != f.get(self.regs["GERRORN"]):
            return
        self.regs["GERROR"] ^= f.mask
        if self._f("IRQ_CTRLACK", "GERROR_IRQEN"):
            self._signal("GERROR", "gerror", "MSI_GERROR_ABT_ERR")

    def gerror_active(self, bit: str) -> bool:
        f = _L["GERROR"][bit]
        return f.get(self.regs["GERROR"]) != f.get(self.regs["GERRORN"])

    def _signal(self, queue: str, irq: str, abt_bit: str) -> None:
        """An interrupt as an MSI when configured, else a wired pulse."""
        addr = _L[f"{queue}_IRQ_CFG0"].get(self.regs[f"{queue}_IRQ_CFG0"], "ADDR")
        if self.feat.msi and addr:
            self._msi_write(addr, self.regs[f"{queue}_IRQ_CFG1"], abt_bit)
        else:
            self.irqs[irq] += 1

    def _msi_write(self, addr: int, data: int, abt_bit: str) -> None:
        try:
            self.mem.write_int(self._in_oas(addr), data & 0xFFFFFFFF, 4,
                               Initiator(self.name, "msi"))
        except BusError:
            if abt_bit != "MSI_GERROR_ABT_ERR":
                self._gerror(abt_bit)
            else:  # a failed GERROR MSI is reported without signalling again
                f = _L["GERROR"][abt_bit]
                if f.get(self.regs["GERROR"]) == f.get(self.regs["GERRORN"]):
                    self.regs["GERROR"] ^= f.mask

    def _reach_event(self, word: int) -> None:
        event = EVENT.get(word, "ID")
        name = EVENT["ID"].values.get(event, f"{event:#04x}")
        self.reached.add(f"event:{name}")
        if event in WALK_EVENTS:  # an IntEnum set: plain ints compare equal
            stage = "S2" if EVENT.get(word, "S2") else "S1"
            klass = EVENT["CLASS"].values.get(EVENT.get(word, "CLASS"), "?")
            self.reached.add(f"fault:{name} {stage} CLASS={klass}")

    def _signal_sync(self, c) -> None:
        """CMD_SYNC completion: CS=SIG_IRQ writes MSIDATA to MSIADDR when MSIs are
        implemented and an address is given, else pulses the wired interrupt.
        CS=SIG_SEV signals nothing here (IDR0.SEV=0: no WFE wake-up events)."""
        if c.CS == 1:
            if self.feat.msi and c.MSIADDR:
                self._msi_write(c.MSIADDR, c.MSIDATA, "MSI_CMDQ_ABT_ERR")
            else:
                self.irqs["cmd_sync"] += 1

    # --------------------------------------------------------- event queue
    def _evtq(self) -> QueueGeometry:
        base = self.regs["EVENTQ_BASE"]
        return QueueGeometry.from_base_reg(
            _L["EVENTQ_BASE"].get(base, "ADDR"), _L["EVENTQ_BASE"].get(base, "LOG2SIZE"),
            self.feat.eventqs, EVT_SIZE,
        )

    def record(self, fault: Fault) -> bool:
        """Write an event record; False when it was lost (queue off, full, or abort)."""
        return self.record_word(fault.encode(), fault.sid)

    def record_word(self, word: int, sid: int) -> bool:
        """Write a 256-bit record already encoded (the vSMMU forwards records)."""
        self._reach_event(word)
        if EVENT.get(word, "ID") == Event.C_BAD_STREAMID and not self._f("CR2", "RECINVSID"):
            # IHI 0070 §6.3.12 CR2.RECINVSID, §7.3.3: with RECINVSID=0 a transaction
            # with an invalid StreamID is still terminated but C_BAD_STREAMID is not
            # recorded.  That is the architecture's choice, not a lost event.
            return False
        if not self._f("CR0ACK", "EVENTQEN"):
            self.lost[sid] += 1
            return False
        q = self._evtq()
        prod, cons = self.regs["EVENTQ_PROD"], self.regs["EVENTQ_CONS"]
        if q.full(_L["EVENTQ_PROD"].get(prod, "WR"), _L["EVENTQ_CONS"].get(cons, "RD")):
            self.overflow()
            self.lost[sid] += 1
            return False
        wr = _L["EVENTQ_PROD"].get(prod, "WR")
        try:
            self.mem.write(q.addr(wr), word.to_bytes(EVT_SIZE, "little"),
                           Initiator(self.name, "evtq", sid))
        except BusError:
            self._gerror("EVENTQ_ABT_ERR")
            self.lost[sid] += 1
            return False
        self.regs["EVENTQ_PROD"] = _L["EVENTQ_PROD"].put(prod, "WR", q.inc(wr))
        if self._f("IRQ_CTRLACK", "EVENTQ_IRQEN"):
            self._signal("EVENTQ", "eventq", "MSI_EVENTQ_ABT_ERR")
        return True

    @property
    def events_lost(self) -> int:
        return sum(self.lost.values())

    def overflow(self) -> None:
        """Records were lost: raise the overflow flag (OVFLG made to differ from
        OVACKFLG, IHI 0070 §7.4), once until software acknowledges it.  A full queue
        raises it; so does a hypervisor whose own queue lost records a guest's
        vSMMU would have received."""
        prod, cons = self.regs["EVENTQ_PROD"], self.regs["EVENTQ_CONS"]
        if _L["EVENTQ_PROD"].get(prod, "OVFLG") == _L["EVENTQ_CONS"].get(cons, "OVACKFLG"):
            self.regs["EVENTQ_PROD"] = prod ^ _L["EVENTQ_PROD"]["OVFLG"].mask
            self.overflows += 1

    def overflow_pending(self) -> bool:
        """The overflow flag is raised and software has not acknowledged it."""
        return (_L["EVENTQ_PROD"].get(self.regs["EVENTQ_PROD"], "OVFLG")
                != _L["EVENTQ_CONS"].get(self.regs["EVENTQ_CONS"], "OVACKFLG"))

    # ------------------------------------------------------- command queue
    def _cmdq(self) -> QueueGeometry:
        base = self.regs["CMDQ_BASE"]
        return QueueGeometry.from_base_reg(
            _L["CMDQ_BASE"].get(base, "ADDR"), _L["CMDQ_BASE"].get(base, "LOG2SIZE"),
            self.feat.cmdqs, CMD_SIZE,
        )

    def cmdq_pending(self) -> int:
        q = self._cmdq()
        return q.used(_L["CMDQ_PROD"].get(self.regs["CMDQ_PROD"], "WR"),
                      _L["CMDQ_CONS"].get(self.regs["CMDQ_CONS"], "RD"))

    def tick(self) -> None:
        """Let time pass: consume more of the command queue."""
        self.process_cmdq()

    def process_cmdq(self) -> int:
        """Consume up to `cmdq_budget` commands; returns how many completed."""
        if not self._f("CR0ACK", "CMDQEN") or self.gerror_active("CMDQ_ERR"):
            return 0
        if (_L["CMDQ_PROD"].get(self.regs["CMDQ_PROD"], "WR")
                == _L["CMDQ_CONS"].get(self.regs["CMDQ_CONS"], "RD")):
            return 0  # equal index and wrap bits, whatever the queue's size: empty
        q = self._cmdq()
        done = 0
        while done < self.cmdq_budget:
            cons_reg = self.regs["CMDQ_CONS"]
            cons = _L["CMDQ_CONS"].get(cons_reg, "RD")
            if q.empty(_L["CMDQ_PROD"].get(self.regs["CMDQ_PROD"], "WR"), cons):
                break
            cmd = None
            try:
                cmd = self.mem.read_int(q.addr(cons), CMD_SIZE, Initiator(self.name, "cmdq"))
            except BusError:
                err = CmdError.ABT
            else:
                err = self.execute(cmd)
                if err is None:
                    break  # not now: the same command on the next doorbell or tick
                op = cmd & 0xFF
                self.reached.add(f"cmd:{COMMANDS[op].name[4:] if op in COMMANDS else hex(op)}")
            if err:
                # CONS stays on the failed command until software acks GERROR
                self.reached.add(f"cerror:{CmdError(err).name}")
                self.cmd_errors.append((cmd, CmdError(err)))
                self.regs["CMDQ_CONS"] = _L["CMDQ_CONS"].put(cons_reg, "ERR", err)
                self._gerror("CMDQ_ERR")
                break
            self.regs["CMDQ_CONS"] = _L["CMDQ_CONS"].put(cons_reg, "RD", q.inc(cons))
            done += 1
        return done

    # ---------------------------------------------------------- stream table
    def _fetch(self, pa: int, size: int, purpose: str, sid: int, event: Event) -> int:
        try:
            return self.mem.read_int(pa, size, Initiator(self.name, purpose, sid))
        except BusError:
            raise FaultError(Fault(event, fetch_addr=pa)) from None

    def _ste_addr(self, sid: int) -> int:
        cfg = self.regs["STRTAB_BASE_CFG"]
        log2 = min(_L["STRTAB_BASE_CFG"].get(cfg, "LOG2SIZE"), self.feat.sidsize)
        if sid >> log2:
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        base = _L["STRTAB_BASE"].get(self.regs["STRTAB_BASE"], "ADDR")
        two_level = self.feat.st_2lvl and _L["STRTAB_BASE_CFG"].get(cfg, "FMT") == 1
        if not two_level:  # reserved FMT values act as linear
            return (base & ~((STE_SIZE << log2) - 1)) + sid * STE_SIZE
        # IHI 0070 §6.3.25: SPLIT is 6, 8 or 10; any other value is reserved and
        # behaves as 6.
        split = _L["STRTAB_BASE_CFG"].get(cfg, "SPLIT")
        split = split if split in (6, 8, 10) else 6
        l1_size = 8 << max(0, log2 - split)
        l1_addr = (base & ~(max(l1_size, 64) - 1)) + (sid >> split) * 8
        desc = self._fetch(l1_addr, 8, "ste", sid, Event.F_STE_FETCH)
        span = L1_STD.get(desc, "SPAN")
        index = sid & ((1 << split) - 1)
        # IHI 0070 §5.1, §7.3.3: Span 0 is invalid and 12..31 are reserved, behaving as
        # 0; Span > SPLIT+1, or an index past the L2 array, is an invalid StreamID.
        if span == 0 or span > split + 1 or index >> (span - 1):
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        l2 = self._in_oas(L1_STD.get(desc, "L2PTR")) & ~((STE_SIZE << (span - 1)) - 1)
        return l2 + index * STE_SIZE

