"""The virtual SMMUv3 a guest sees (trap and emulate).

Where it sits is the design's `placement`: ours is one `VSmmu` per (guest,
physical SMMU), the N:N model, so StreamIDs of different physical SMMUs never
meet in one table; a "single" design gives each guest one `VSmmu` for all
physical SMMUs, whose vSID table names each stream's SMMU and pSID (Xen's domU
vSMMU).  Either way it serves a set of physical SMMUs (`smmus`).  It is an
`SmmuFrontend` —
the same register file, queues and stream-table lookup as the hardware —
whose memory is the guest's IPA space.  What it does with guest input is
decided by the transfer functions (transfer.py); this class only moves data:

* vSTEs are read from the guest's stream table when the guest enables the
  vSMMU, changes GBPA while disabled, or issues CFGI_STE(_RANGE); each becomes
  a physical STE written with the driver's hitless sequence;
* guest commands are consumed on a PROD write, at most the design's
  `cmdq_budget` per trap (ours: a guest cannot pin the hypervisor, Xen design
  risk 7); forwarded ones go to the physical queue of the stream they name,
  or of every SMMU served when they name none, at most the design's
  `cmdq_share` outstanding there (past it a command waits at CONS for a later
  tick), and the guest's CMD_SYNC completes only after a physical CMD_SYNC
  has on each;
* physical events of the guest's streams come back through `forward`.

Each slice of hypervisor work a guest causes — one trapped register write, or
one continuation (`tick`) — is counted in the units the model can measure
(guest commands consumed, vSTEs read, physical STEs written, physical commands
issued) and shown to the observers as ("work", counts) when the slice ends.

A vSTE the vSMMU cannot use (unreadable, outside the guest's table, or
rejected by the transfer function) is installed as a V=0 physical STE: the
hardware then raises C_BAD_STE for it, and `forward` turns that into the
event the guest's own table deserved (F_STE_FETCH, C_BAD_STREAMID, C_BAD_STE).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..arch.faults import Fault, FaultError
from ..arch.features import Features
from ..arch.layouts import COMMANDS, EVENT, STE, CmdError, Config, Event, Op
from ..hw.frontend import STE_SIZE, SmmuFrontend
from ..sw.driver import CommandError
from .host import GuestMemory, PhysicalSmmu
from .transfer import (
    ABORT_STE,
    REFERENCE,
    Action,
    Design,
    GuestContext,
    HostStream,
    guest_command,
    guest_event,
    vste_to_pste,
)


def guest_features(physs: Sequence[Features], ipa_bits: int,
                   design: Design = REFERENCE) -> Features:
    """What a vSMMU advertises: stage 1 only (the hypervisor owns stage 2), the
    guest's IPA size as its output size, 16-bit vSIDs, and the stage-1
    capabilities (granules, SSIDs, 2-level CD tables, RIL, ATS, HAD) every
    physical SMMU it serves has, less what the design does not offer."""
    def every(name: str) -> bool:
        return all(getattr(p, name) for p in physs)

    def least(name: str) -> int:
        return min(getattr(p, name) for p in physs)

    granules = frozenset.intersection(*(p.granules for p in physs))
    return replace(Features(
        s1p=True, s2p=False, asid16=every("asid16"), vmid16=False, sidsize=16,
        ssidsize=least("ssidsize"), oas_bits=ipa_bits, granules=granules, st_2lvl=True,
        cd_2lvl=every("cd_2lvl"), ril=every("ril"), ats=every("ats"), msi=True,
        had=every("had"), xnx=False, cmdqs=least("cmdqs"), eventqs=least("eventqs"),
    ), **design.features)


# The units of a slice of hypervisor work (`VSmmu.work`).
WORK = ("guest commands", "vSTEs read", "physical STEs written", "physical commands")

# Config values a design may stop on: the reserved 0b001-0b011, and nested, which a
# stage-1-only vSMMU does not offer (IHI 0070 §5.2 STE.Config).
RESERVED_CONFIGS = frozenset({0b001, 0b010, 0b011, Config.NESTED})


class HypervisorPanic(Exception):
    """The design's hypervisor stops on this guest input (a BUG() in its source):
    the whole machine goes down, which the `no-crash` invariant reports."""


class VSmmu(SmmuFrontend):
    def __init__(self, guest: GuestMemory, smmus: Sequence[PhysicalSmmu], ipa_bits: int,
                 design: Design = REFERENCE, key: str | None = None):
        self.guest, self.design = guest, design
        self.smmus = {p.name: p for p in smmus}  # the physical SMMUs it serves
        self.key = key or smmus[0].name  # its name among the guest's vSMMUs
        self.mem = guest.view
        self.vsids: dict[int, int] = {}  # vSID -> pSID
        self.homes: dict[int, PhysicalSmmu] = {}  # vSID -> the physical SMMU of its stream
        self.ats_vsids: set[int] = set()  # devices allowed to use ATS
        self.installed: dict[int, int] = {}  # vSID -> physical STE last written
        self.pending: dict[int, Fault] = {}  # vSID -> the fault a physical C_BAD_STE stands for
        self._unsynced: set[str] = set()  # SMMUs with forwarded commands not yet synced
        # SMMU -> the positions (driver's `submitted` counts, rising) of its commands
        # there the SMMU may not have consumed yet
        self._inflight: dict[str, deque[int]] = {}
        # Watchers of what crosses the trust boundary (the invariant monitor):
        # ("command", (physical command word, SMMU name)) and ("event", (guest record,
        # physical record, vSID, fetch IPA)), each before it takes effect; ("dropped",
        # (physical record, vSID)) for one the design keeps from the guest; ("queue
        # wait", (SMMU name, other issuers' commands ahead)) before a physical SYNC
        # for the guest; ("work", counts) after each slice of work.
        self.observers: list[Callable[[str, VSmmu, object], None]] = []
        super().__init__(guest_features([p.smmu.feat for p in smmus], ipa_bits, design),
                         f"{guest.name}/{self.key}")
        # None: whatever the guest has queued, up to its queue's size, in one trap.
        self.cmdq_budget = design.cmdq_budget or 1 << self.feat.cmdqs
        self.work: dict[str, int] = {}

    # --------------------------------------------------------------- traps
    def write(self, offset: int, value: int, size: int = 4) -> None:
        self._slice(super().write, offset, value, size)

    def tick(self) -> None:
        self._slice(super().tick)

    def _slice(self, run, *args) -> None:
        outer = self.work
        self.work = dict.fromkeys(WORK, 0)
        try:
            run(*args)
        finally:
            work, self.work = self.work, outer
            self._notify("work", work)

    def _count(self, unit: str) -> None:
        if self.work:  # inside a slice (the hypervisor's own calls are not counted)
            self.work[unit] += 1

    # ------------------------------------------------------------ streams
    def attach(self, vsid: int, phys: PhysicalSmmu, psid: int, ats: bool = False) -> None:
        self.vsids[vsid], self.homes[vsid] = psid, phys
        if ats:
            self.ats_vsids.add(vsid)
        self.install(vsid)

    def detach(self, vsid: int) -> int:
        """Forget a stream (the hypervisor quarantines it); returns its pSID."""
        self.installed.pop(vsid, None)
        self.pending.pop(vsid, None)
        self.ats_vsids.discard(vsid)
        self.homes.pop(vsid)
        return self.vsids.pop(vsid)

    def physical_ste(self, vsid: int) -> tuple[int, Fault | None]:
        """The physical STE the guest's current state asks for, and the fault a
        physical C_BAD_STE on it will stand for."""
        if not self._f("CR0ACK", "SMMUEN"):  # the vSMMU's GBPA: abort, or stage 2 only
            abort = self._f("GBPA", "ABORT") or self.design.abort_when_disabled
            return (ABORT_STE if abort else self.guest.s2_ste), None
        self._count("vSTEs read")
        try:
            vste = self._read_vste(vsid)
        except FaultError as e:
            return 0, replace(e.fault, sid=vsid)
        ats = self.feat.ats and vsid in self.ats_vsids  # a design may offer no ATS
        host = HostStream(self.guest.s2_ste, self.feat.ssidsize, ats, self.feat.oas_bits,
                          self.design)
        pste = vste_to_pste(vste, host)
        return pste, (Fault(Event.C_BAD_STE, sid=vsid) if pste == 0 else None)

    def _read_vste(self, vsid: int) -> int:
        """The guest's vSTE for `vsid`, from its own stream table (FaultError when the
        table cannot be read there)."""
        return self._fetch(self._ste_addr(vsid), STE_SIZE, "ste", vsid, Event.F_STE_FETCH)

    def _check_panics(self, vsid: int) -> None:
        """The vSTEs on which the design's hypervisor stops (`Design.crashes`), read as
        its CFGI_STE handler reads them (Xen's: V=0 is skipped before decoding)."""
        if not self.design.crashes:
            return
        try:
            vste = self._read_vste(vsid)
        except FaultError:
            return
        if not STE.get(vste, "V"):
            return
        config = STE.get(vste, "CONFIG")
        if ("reserved-config" in self.design.crashes and config in RESERVED_CONFIGS
                or "nested-config" in self.design.crashes and config == Config.NESTED):
            raise HypervisorPanic(f"{self.name}: vSID {vsid:#x}: vSTE Config {config:#05b}")
        if ("live-s1-rewrite" in self.design.crashes and config == Config.S1_TRANS
                and STE.get(self.installed.get(vsid, 0), "CONFIG") == Config.NESTED):
            raise HypervisorPanic(f"{self.name}: vSID {vsid:#x}: stage 1 over a live "
                                  "stage-1 STE")

    def install(self, vsid: int, *, cfgi: bool = False) -> None:
        """Bring the physical STE in line with the guest's state; with `cfgi` (the
        guest asked for CFGI_STE) invalidate it even when unchanged, as the guest
        may rely on that for what is cached through the STE (its CDs)."""
        if cfgi:
            self._check_panics(vsid)
        pste, fault = self.physical_ste(vsid)
        if fault is None:
            self.pending.pop(vsid, None)
        else:
            self.pending[vsid] = fault
        home = self.homes[vsid]
        if self.installed.get(vsid) != pste:
            self._count("physical STEs written")
            home.drv.write_ste(self.vsids[vsid], pste)
            self.installed[vsid] = pste
        elif cfgi:
            self._submit(home, COMMANDS[Op.CFGI_STE].encode(OP=Op.CFGI_STE,
                                                            SID=self.vsids[vsid]))

    def refresh(self) -> None:
        for vsid in list(self.vsids):
            self.install(vsid)

    def _written(self, name: str) -> None:
        if name in ("CR0", "GBPA"):  # enable or bypass policy changed: every stream
            self.refresh()
        super()._written(name)

    # ----------------------------------------------------------- commands
    def context(self, smmu: str | None = None) -> GuestContext:
        """What the command transfer knows: the guest's streams (on `smmu` only, when
        given), and whether they are every stream there is (pKVM's host)."""
        served = [smmu] if smmu is not None else list(self.smmus)
        vsids = {v: p for v, p in self.vsids.items() if self.homes[v].name in served}
        owns_all = all(g == self.guest.name for name in served
                       for g, _ in self.smmus[name].owners.values())
        return GuestContext(self.guest.vmid, vsids, self.feat.ats, self.design, owns_all)

    def execute(self, cmd: int) -> CmdError | None:
        action, out = guest_command(cmd, self.context())
        targets = self._targets(cmd) if action == Action.FORWARD else []
        share = self.design.cmdq_share
        if share is not None and any(self.outstanding(p) >= share for p in targets):
            return None  # its share of a shared queue is full: again on a later tick
        self._count("guest commands")
        if action == Action.FORWARD:
            for phys in targets:
                self._notify("command", (out, phys.name))
                self._submit(phys, out)
            if self.design.sync_forwarded and not self._physical_sync():
                return CmdError.ILL
        elif action == Action.CFGI_STE:
            self._cfgi(COMMANDS[cmd & 0xFF].decode(cmd))
        elif action == Action.SYNC:
            if self._unsynced and not self._physical_sync():
                return CmdError.ILL
            self._signal_sync(COMMANDS[Op.SYNC].decode(cmd))
        elif action == Action.ILL:
            return CmdError.ILL
        elif action == Action.PANIC:
            raise HypervisorPanic(f"{self.name}: command {cmd:#034x} refused")
        return CmdError.NONE

    def _targets(self, cmd: int) -> list[PhysicalSmmu]:
        """The physical SMMUs a forwarded command goes to: its stream's, when it names
        one of the guest's vSIDs; otherwise (a VMID or ASID) every SMMU served."""
        layout = COMMANDS.get(cmd & 0xFF)
        if layout is not None and "SID" in layout:
            home = self.homes.get(layout.get(cmd, "SID"))
            if home is not None:
                return [home]
        return list(self.smmus.values())

    def _submit(self, phys: PhysicalSmmu, out: int) -> None:
        self._count("physical commands")
        phys.drv.submit(out)
        self._unsynced.add(phys.name)
        self._inflight.setdefault(phys.name, deque()).append(phys.drv.submitted)

    def outstanding(self, phys: PhysicalSmmu) -> int:
        """Commands this vSMMU put on `phys`'s queue that the SMMU has not consumed."""
        done = phys.drv.submitted - phys.drv.pending()
        mine = self._inflight.setdefault(phys.name, deque())
        while mine and mine[0] <= done:  # consumed in order: drop from the front
            mine.popleft()
        return len(mine)

    def _cfgi(self, c) -> None:
        if c.OP == Op.CFGI_STE:
            first, count = c.SID, 1
        elif c.RANGE == 31:
            first, count = 0, 1 << 32
        else:
            count = 1 << (c.RANGE + 1)
            first = c.SID & ~(count - 1)
        for vsid in [v for v in self.vsids if first <= v < first + count]:
            self.install(vsid, cfgi=True)

    def _physical_sync(self) -> bool:
        """Complete forwarded work on every SMMU it went to.  The transfer function
        only forwards commands the hardware accepts, so a physical CERROR is a
        hypervisor bug: it is recovered and reported to the guest as CERROR_ILL
        rather than hidden."""
        ok = True
        for name in sorted(self._unsynced):
            phys = self.smmus[name]
            # Whose commands the guest's sync waits behind, besides its own.
            self._notify("queue wait", (name, phys.drv.pending() - self.outstanding(phys)))
            self._count("physical commands")
            try:
                phys.drv.sync()
            except CommandError:
                phys.drv.recover()
                ok = False
        self._unsynced.clear()
        return ok

    # ------------------------------------------------------------- events
    def forward(self, record: int, vsid: int) -> bool:
        """A physical event record of one of this guest's streams, into the guest's
        event queue; False when it is not for the guest or the queue lost it."""
        fetch = Fault.decode(record).fetch_addr
        fetch_ipa = (self.guest.ipa_of(fetch) if fetch is not None else None) or 0
        ok, out = guest_event(record, vsid, fetch_ipa, self.design)
        if not ok:
            self._notify("dropped", (record, vsid))
            return False
        if EVENT.get(record, "ID") == Event.C_BAD_STE and vsid in self.pending:
            # The guest's own table was the problem: report that (its address is an IPA).
            ssid = EVENT.get(record, "SSID") if EVENT.get(record, "SSV") else None
            fault = replace(self.pending[vsid], ssid=ssid)
            out, fetch_ipa = fault.encode(), fault.fetch_addr or 0
        self._notify("event", (out, record, vsid, fetch_ipa))
        return self.record_word(out, vsid)

    def _notify(self, kind: str, what: object) -> None:
        for observe in self.observers:
            observe(kind, self, what)

