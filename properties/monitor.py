"""The per-step invariant monitor: attach to a running `Hypervisor`, check after
every step.

It watches from outside, the way the model allows: memory observers see every
access with its initiator (a device's DMA, a physical SMMU's table walk, a
vSMMU acting on a guest's behalf), vSMMU observers see every command and
event crossing the trust boundary, and after each step the monitor reads the
physical STEs, the configuration cache, the IOTLB and the device ATCs.  An
SMMU may fetch an STE at any moment, so a guest stream's physical STE is also
checked between the hypervisor's writes to it (every 64-bit store), not only
at the end of the step: a torn update is a window of lost stage-2 authority.
Violations found during a step are collected (the model is never interrupted
by a foreign exception) and `check()` raises the first, with the step index
and a concrete witness.

Costs are microseconds per access plus one pass over the caches per step;
the Z3 state checks (properties/z3state.py) run only when a guest's stage 2
changes.
"""

from __future__ import annotations

import functools
from collections import Counter

from vsmmu.arch.layouts import EVENT, STE, Config
from vsmmu.arch.virtio_layouts import Status
from vsmmu.hw.frontend import Initiator
from vsmmu.hw.memory import HYP, PAGE_SHIFT, PAGE_SIZE
from vsmmu.hyp.host import IPA_BITS, PhysicalSmmu
from vsmmu.hyp.hypervisor import Guest, Hypervisor
from vsmmu.hyp.transfer import GUEST_EVENTS
from vsmmu.hyp.virtual import VSmmu

from .predicates import (
    command_confined,
    event_confined,
    host_memory,
    queue_wait_bound,
    stage2_authority,
    trap_work_bound,
)
from .violations import (
    BOUNDED_HOST_MEMORY,
    BOUNDED_TRAP_WORK,
    CMD_CONFINEMENT,
    CMDQ_ISOLATION,
    EVENT_CONFINEMENT,
    HYP_READ_CONFINEMENT,
    HYP_WRITE_CONFINEMENT,
    MSI_CONFINEMENT,
    NO_CROSS_GUEST_DMA,
    NO_SILENT_EVENT_LOSS,
    REQUEST_ATOMICITY,
    S2_AUTHORITY,
    TLB_CONTAINMENT,
    UNMAP_COMPLETION,
    Violation,
)
from .z3state import StateResult, check_guest

HYP_VMID = 0  # tags the hypervisor's own stage-1-only streams, never a guest's


class Monitor:
    def __init__(self, hyp: Hypervisor, *, z3_checks: bool = True):
        self.hyp = hyp
        self.step = 0
        self.found: list[Violation] = []
        self.z3_checks = z3_checks
        self.unknown: list[StateResult] = []  # Z3 could not decide: reported, never a pass
        self._z3_checked: dict[str, tuple] = {}  # guest -> stage-2 generations last proved
        self._vsmmu_guest: dict[str, str] = {}  # vSMMU name -> guest
        self._msis_checked = 0
        self._ste_slots: dict[int, tuple[str, int]] = {}  # STE address -> (SMMU, pSID)
        self._written_stes: set[tuple[str, int]] = set()  # written since the last access
        # Records each physical SMMU has lost, and each vSMMU's overflow signals, as of
        # the last check (no-silent-event-loss for what the hardware dropped).
        self._lost_seen = {name: Counter(p.smmu.lost) for name, p in hyp.smmus.items()}
        self._overflows_seen: dict[str, int] = {}
        self._cmd_errors_seen = {name: len(p.smmu.cmd_errors) for name, p in hyp.smmus.items()}
        self._find_ste_slots()
        hyp.mem.observers.append(self._on_access)
        self._attach_new_guests()

    # ------------------------------------------------------------- helpers
    def _attach_new_guests(self) -> None:
        for guest in self.hyp.guests.values():
            if guest.viommu is not None and self._on_request not in guest.viommu.observers:
                guest.viommu.observers.append(self._on_request)
            for vsmmu in guest.vsmmus.values():
                if vsmmu.name not in self._vsmmu_guest:
                    self._vsmmu_guest[vsmmu.name] = guest.name
                    vsmmu.observers.append(self._on_vsmmu)

    def _violate(self, invariant: str, **witness) -> None:
        self.found.append(Violation(invariant, witness, self.step))

    def _stream_owner(self, smmu: str, sid: int | None) -> str | None:
        phys = self.hyp.smmus.get(smmu)
        owner = phys.owners.get(sid) if phys is not None and sid is not None else None
        return owner[0] if owner else None

    def _foreign_page(self, pa: int, size: int, allowed: set) -> tuple[int, object] | None:
        """The first page of [pa, pa+size) whose owner is not allowed, with its owner."""
        for page in range(pa >> PAGE_SHIFT, ((pa + max(size, 1) - 1) >> PAGE_SHIFT) + 1):
            owner = self.hyp.mem.owner(page << PAGE_SHIFT)
            if owner not in allowed:
                return page << PAGE_SHIFT, owner
        return None

    @staticmethod
    def _guest_pages(guest: str | None) -> set:
        return {guest, ("msi", guest)} if guest is not None else {HYP}

    def _ste(self, phys: PhysicalSmmu, sid: int) -> int:
        """The STE of `sid` in memory (0 where no table holds it yet), looked at without
        an access that observers, this monitor among them, would see."""
        addr = phys.drv.ste_addr(sid, create=False)
        return 0 if addr is None else int.from_bytes(self.hyp.mem.peek(addr, STE.width // 8),
                                                     "little")

    def _find_ste_slots(self) -> None:
        self._ste_slots.clear()
        for dev in self.hyp.devices.values():
            addr = self.hyp.smmus[dev.smmu].drv.ste_addr(dev.sid, create=False)
            if addr is not None:  # None: no level-2 table for it yet
                self._ste_slots[addr] = (dev.smmu, dev.sid)

    # ------------------------------------------------------- memory accesses
    def _on_access(self, kind: str, pa: int, size: int, who: object) -> None:
        # Observers run before the access: what earlier writes left is visible now.
        if self._written_stes:
            self._check_written_stes()
        if kind == "w" and who is None and pa & ~63 in self._ste_slots:
            self._written_stes.add(self._ste_slots[pa & ~63])
        if not isinstance(who, Initiator):
            return  # software (the hypervisor or a guest CPU), not a confinement subject
        if who.purpose == "dma":
            guest = self._stream_owner(who.smmu, who.sid)
            bad = self._foreign_page(pa, size, self._guest_pages(guest))
            if bad:
                self._violate(NO_CROSS_GUEST_DMA, smmu=who.smmu, sid=who.sid, guest=guest,
                              access=kind, pa=bad[0], page_owner=bad[1])
            return
        guest = self._vsmmu_guest.get(who.smmu)
        if guest is None and "/" in who.smmu:  # a vSMMU created during this step
            self._attach_new_guests()
            guest = self._vsmmu_guest.get(who.smmu)
        if guest is None and who.purpose in ("s1", "cd"):  # the SMMU reading guest tables
            guest = self._stream_owner(who.smmu, who.sid)
        bad = self._foreign_page(pa, size, self._guest_pages(guest))
        if bad:
            invariant = HYP_READ_CONFINEMENT if kind == "r" else HYP_WRITE_CONFINEMENT
            self._violate(invariant, agent=who.smmu, purpose=who.purpose, sid=who.sid,
                          guest=guest, pa=bad[0], page_owner=bad[1])

    # ------------------------------------------------------- trust boundary
    def _on_vsmmu(self, kind: str, vsmmu: VSmmu, what: object) -> None:
        if kind == "work":
            self._check_work(vsmmu, what)
            return
        if kind == "dropped":  # the design kept it from the guest, telling it nothing
            record, vsid = what
            if EVENT.get(record, "ID") in GUEST_EVENTS:
                self._violate(NO_SILENT_EVENT_LOSS, vsmmu=vsmmu.name, record=record,
                              vsid=vsid)
            return
        if kind == "queue wait":  # a fair share of a shared physical queue
            smmu, behind = what
            others = sum(g.name != vsmmu.guest.name and g.vsmmu_for(smmu) is not None
                         for g in self.hyp.guests.values())
            bound = queue_wait_bound(vsmmu, others)
            if behind > bound:
                self._violate(CMDQ_ISOLATION, vsmmu=vsmmu.name, smmu=smmu, problem="delayed",
                              behind=behind, bound=bound)
            return
        if kind == "command":  # confined to the guest's streams on the SMMU it goes to
            command, smmu = what
            if not command_confined(command, vsmmu.context(smmu)):
                self._violate(CMD_CONFINEMENT, vsmmu=vsmmu.name, command=command,
                              smmu=smmu, vmid=vsmmu.guest.vmid)
            return
        out, record, vsid, fetch_ipa = what
        # A failed fetch is reported at the guest address that failed: inside the
        # guest's IPA space, though possibly unmapped (that is why it failed).
        guest_address = fetch_ipa >> IPA_BITS == 0
        if vsid not in vsmmu.vsids or not guest_address or not event_confined(
                out, record, vsid, fetch_ipa):
            self._violate(EVENT_CONFINEMENT, vsmmu=vsmmu.name, record=out, vsid=vsid,
                          fetch_ipa=fetch_ipa)

    def _check_work(self, vsmmu: VSmmu, work: dict[str, int]) -> None:
        commands, total = trap_work_bound(vsmmu)
        if work["guest commands"] > commands or sum(work.values()) > total:
            self._violate(BOUNDED_TRAP_WORK, vsmmu=vsmmu.name, **work,
                          bound=f"{commands} commands, {total} units")

    def _on_request(self, viommu, response, before) -> None:
        """A virtio-iommu request that fails changes nothing (§5.13.6: UNMAP that would
        split a mapping removes none; a refused MAP maps nothing)."""
        if response.status != Status.OK and viommu.state() != before:
            self._violate(REQUEST_ATOMICITY, request=response.req_type,
                          status=response.status)

    # ------------------------------------------------------------ per step
    def check(self) -> None:
        """End of a step: check the state, then raise the first violation seen."""
        self._attach_new_guests()
        self._written_stes.clear()  # the final state is checked below
        self._find_ste_slots()
        self._check_stes()
        self._check_caches()
        self._check_unmaps()
        self._check_msis()
        self._check_lost_events()
        self._check_cmdqs()
        self._check_host_memory()
        if self.z3_checks:
            self._check_z3()
        self.step += 1
        if self.found:
            raise self.found[0]

    def _check_lost_events(self) -> None:
        """Records the hardware dropped (its queue full) cannot reach their guest; once
        the hypervisor has handled the overflow, each guest owning a stream whose
        records were lost has been told: its vSMMU raised the overflow flag since the
        last check, or still shows one the guest has not acknowledged."""
        told = {}
        for guest in self.hyp.guests.values():
            for vsmmu in guest.vsmmus.values():
                told[vsmmu.name] = (vsmmu.overflow_pending() or vsmmu.overflows
                                    > self._overflows_seen.get(vsmmu.name, 0))
                self._overflows_seen[vsmmu.name] = vsmmu.overflows
        for name, phys in self.hyp.smmus.items():
            if phys.smmu.overflow_pending():
                continue  # not handled yet: judged once the hypervisor acknowledges it
            seen, self._lost_seen[name] = self._lost_seen[name], Counter(phys.smmu.lost)
            lost: Counter[str] = Counter()
            for sid, n in phys.smmu.lost.items():
                if n > seen[sid] and (owner := phys.owners.get(sid)) is not None:
                    lost[owner[0]] += n - seen[sid]
            for guest_name, records in sorted(lost.items()):
                vsmmu = self.hyp.guests[guest_name].vsmmu_for(name)
                if vsmmu is not None and not told[vsmmu.name]:  # virtio-iommu: no flag
                    self._violate(NO_SILENT_EVENT_LOSS, smmu=name, guest=guest_name,
                                  lost=records, vsmmu=vsmmu.name)

    def _check_cmdqs(self) -> None:
        """The hypervisor issues only commands the SMMU accepts, so a command error on a
        physical queue came from what a guest made it issue: the queue stopped for
        everyone until it was recovered."""
        for name, phys in self.hyp.smmus.items():
            errors = phys.smmu.cmd_errors
            for cmd, err in errors[self._cmd_errors_seen[name]:]:
                self._violate(CMDQ_ISOLATION, smmu=name, problem="stopped", error=err.name,
                              command=cmd)
            self._cmd_errors_seen[name] = len(errors)

    def _check_host_memory(self) -> None:
        for guest in self.hyp.guests.values():
            held, limit = host_memory(guest)
            if held > limit:
                self._violate(BOUNDED_HOST_MEMORY, guest=guest.name, held=held, limit=limit)

    def _check_written_stes(self) -> None:
        written, self._written_stes = self._written_stes, set()
        for smmu, sid in written:
            owner = self.hyp.smmus[smmu].owners.get(sid)
            guest = self.hyp.guests.get(owner[0]) if owner else None
            word = self._ste(self.hyp.smmus[smmu], sid)
            if guest is not None and not self._authority_ok(word, guest):
                self._violate(S2_AUTHORITY, smmu=smmu, sid=sid, guest=guest.name,
                              where="memory", when="mid-update", ste=STE.format(word))

    def _check_stes(self) -> None:
        guests = self.hyp.guests
        for name, phys in self.hyp.smmus.items():
            for dev in self.hyp.devices.values():
                if dev.smmu != name:
                    continue
                owner = phys.owners.get(dev.sid)
                guest = guests.get(owner[0]) if owner else None
                cached = phys.smmu.config_cache.get_ste(dev.sid)
                in_memory = self._ste(phys, dev.sid)
                if guest is not None and guest.viommu is not None:
                    # A virtio-iommu endpoint's STE is exactly what the device state says.
                    expected = guest.viommu.backend.expected_ste(guest.viommu, owner[1])
                    if in_memory != expected:
                        self._violate(S2_AUTHORITY, smmu=name, sid=dev.sid, guest=guest.name,
                                      where="memory", ste=STE.format(in_memory),
                                      expected=STE.format(expected))
                for where, word in (("memory", in_memory),
                                    ("config cache", cached.word if cached else None)):
                    if word is not None and not self._authority_ok(word, guest):
                        self._violate(S2_AUTHORITY, smmu=name, sid=dev.sid,
                                      guest=guest.name if guest else None, where=where,
                                      ste=STE.format(word))

    @staticmethod
    def _authority_ok(word: int, guest: Guest | None) -> bool:
        if guest is None:  # unassigned or quarantined: nothing may translate
            return STE.get(word, "V") == 0 or STE.get(word, "CONFIG") == Config.ABORT
        return _under_some_stage2(word, tuple(s2_ste for _, _, s2_ste in guest.stage2s()))

    def _check_caches(self) -> None:
        by_vmid = {vmid: g.name for g in self.hyp.guests.values() for _, vmid, _ in g.stage2s()}
        for name, phys in self.hyp.smmus.items():
            for e in phys.smmu.iotlb.entries():
                if e.vmid == HYP_VMID:
                    continue
                guest = by_vmid.get(e.vmid)
                bad = None if guest is None else self._foreign_page(
                    e.out_base, e.size, self._guest_pages(guest))
                if guest is None or bad:
                    self._violate(TLB_CONTAINMENT, smmu=name, cache="iotlb", vmid=e.vmid,
                                  guest=guest, iova=e.in_base, size=e.size, out=e.out_base,
                                  page_owner=bad[1] if bad else "retired VMID")
            for (sid, _ssid), entries in phys.smmu.atc.items():
                guest = self._stream_owner(name, sid)
                if guest is not None:
                    # A guest stream's ATS is split-stage whenever it had any: s2-authority
                    # forbids full ATS on every STE it could have used, so what its device
                    # caches are IPAs, which stage 2 translates again (even after the
                    # guest has since replaced the STE, say with V=0).
                    continue
                for in_base, size, out_base, _perm in entries:
                    bad = self._foreign_page(out_base, size, self._guest_pages(guest))
                    if bad:
                        self._violate(TLB_CONTAINMENT, smmu=name, cache="atc", sid=sid,
                                      guest=guest, iova=in_base, out=bad[0],
                                      page_owner=bad[1])

    def _check_unmaps(self) -> None:
        """A completed UNMAP leaves nothing reachable: no leaf in the composed table,
        no IOTLB entry of the domain's VMID over the range."""
        for guest in self.hyp.guests.values():
            if guest.viommu is None:
                continue
            backend = guest.viommu.backend
            done, backend.unmapped = backend.unmapped, []
            for u in done:
                dom = backend.domains.get(u.domain)
                left = [] if dom is None else [
                    iova for iova in range(u.iova, u.iova + u.size, PAGE_SIZE)
                    if dom.vmid == u.vmid and dom.table.translate(iova) is not None]
                cached = [e for phys in self.hyp.smmus.values() for e in phys.smmu.iotlb.entries()
                          if e.vmid == u.vmid and e.overlaps(u.iova, u.size)]
                if left or cached:
                    self._violate(UNMAP_COMPLETION, guest=guest.name, domain=u.domain,
                                  iova=u.iova, size=u.size,
                                  still=f"mapped at {left[0]:#x}" if left else
                                  f"IOTLB {cached[0].in_base:#x}+{cached[0].size:#x}")

    def _check_z3(self) -> None:
        """The for-all-addresses checks, for each guest whose stage 2 changed."""
        for guest in self.hyp.guests.values():
            generation = (guest.s2_generation, *(
                (d.id, d.generation) for d in (guest.viommu.backend.domains.values()
                                               if guest.viommu else ())))
            if self._z3_checked.get(guest.name) == generation:
                continue
            self._z3_checked[guest.name] = generation
            for r in check_guest(self.hyp, guest):
                if r.result == "violated":
                    self._violate(r.property, guest=guest.name, **r.witness)
                elif r.result == "unknown":
                    self.unknown.append(r)

    def _check_msis(self) -> None:
        for msi in self.hyp.msis[self._msis_checked:]:
            device_owner = self._stream_owner(msi.smmu, msi.sid)
            if device_owner != msi.doorbell_of:
                self._violate(MSI_CONFINEMENT, smmu=msi.smmu, sid=msi.sid,
                              device_guest=device_owner, doorbell_of=msi.doorbell_of)
        self._msis_checked = len(self.hyp.msis)


@functools.lru_cache(maxsize=1 << 12)
def _under_some_stage2(word: int, s2_stes: tuple[int, ...]) -> bool:
    """s2-authority of one concrete STE: a pure function of its arguments, remembered
    because every step re-checks the same few STEs against the same stage 2s."""
    return any(stage2_authority(word, s2_ste) for s2_ste in s2_stes)
