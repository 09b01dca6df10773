"""The emulated SMMUv3 device.

Software reaches it only as real software would: 32/64-bit register accesses
(`read`/`write`) and memory it shares (stream tables, CDs, page tables,
queues).  Devices reach it through `dma` (a transaction) and `ats_request`
(a PCIe ATS translation request).  Everything else is internal.

Model choices where the architecture leaves room (each is also in README):
  * register writes take effect and are acknowledged at once (CR0ACK,
    IRQ_CTRLACK, GBPA.UPDATE clear on completion);
  * the command queue is consumed when PROD, CR0 or GERRORN is written, at
    most `cmdq_budget` commands per doorbell; `tick()` continues the rest
    (with `cmdq_on_doorbell` off, on ticks only: an SMMU that lags behind);
  * terminate model only (IDR0.STALL_MODEL=0b01): no stalls, no PRI queue;
  * caches keep stale entries wherever invalidation is not architecturally
    guaranteed (see tlb.py), so software that forgets a command is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..arch.faults import RECORD_CONTROLLED, Fault, FaultError
from ..arch.features import Features
from ..arch.layouts import (
    COMMANDS,
    L1_CD,
    CmdError,
    Config,
    Event,
    FaultClass,
    Op,
)
from .decode import (
    DSS_BYPASS,
    DSS_SUBSTREAM0,
    DSS_TERMINATE,
    EATS_ABORT,
    EATS_S1CHK,
    S1_FMT_2LVL_4K,
    S1_FMT_LINEAR,
    ContextConfig,
    StreamConfig,
    decode_cd,
    decode_ste,
)
from .frontend import STE_SIZE, Initiator, SmmuFrontend
from .memory import BusError, PhysMem
from .tlb import S2_ONLY, ConfigCache, Iotlb, TlbEntry
from .walk import Access, Perm, s2_table_fetch, walk_s1, walk_s2

CD_SIZE = 64
READ = Access()
_TLBI_GRANULE = {1: 4096, 2: 16384, 3: 65536}


class Aborted(Exception):
    """A transaction terminated without an event (abort STE, GBPA.ABORT)."""


@dataclass(frozen=True)
class DmaResult:
    ok: bool
    pa: int | None = None  # output address of the first byte
    data: bytes | None = None  # what a read returned
    fault: Fault | None = None  # the fault that stopped it, recorded or not
    recorded: bool = False  # whether `fault` was written as an event
    bus_error: bool = False  # translation succeeded, the memory access failed


@dataclass(frozen=True)
class AtsResult:
    ok: bool
    out: int | None = None  # PA, or IPA for a split-stage (EATS=S1CHK) stream
    size: int = 0
    perm: Perm | None = None
    fault: Fault | None = None


class Smmu(SmmuFrontend):
    """The physical SMMUv3: the frontend plus translation, caches, DMA and ATS."""

    def __init__(self, mem: PhysMem, features: Features | None = None, name: str = "smmu0"):
        self.mem = mem
        features = features or Features()
        self.iotlb = Iotlb(features.tlb_entries)
        self.config_cache = ConfigCache(features.config_entries)
        super().__init__(features, name)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.iotlb.all()
        self.config_cache.clear()
        self.atc: dict[tuple[int, int | None], list[tuple[int, int, int, Perm]]] = {}
        self.unresponsive_atc: set[int] = set()  # SIDs whose ATC never acks invalidation
        self._atc_inv_timed_out = False

    def execute(self, cmd: int) -> CmdError:
        """Perform one 128-bit command; returns the CERROR code (NONE: success)."""
        layout = COMMANDS.get(cmd & 0xFF)
        if layout is None:
            return CmdError.ILL
        c = layout.decode(cmd)
        if c.get("SSEC"):
            return CmdError.ILL  # Secure streams are not reachable from this queue
        op = Op(c.OP)
        handler = getattr(self, f"_cmd_{op.name.lower()}", None)
        if handler is None:  # EL2/EL3 TLBIs: no EL2 streams (IDR0.HYP=0), NS queue
            return CmdError.ILL
        return handler(c) or CmdError.NONE

    def _cmd_prefetch_config(self, c) -> None:
        try:  # a hint: errors are not reported
            stream = self._stream(c.SID)
            if stream.stage1:
                self._context(c.SID, stream, c.SSID if c.SSV else 0)
        except (FaultError, Aborted):
            pass

    def _cmd_prefetch_addr(self, c) -> None:
        self._cmd_prefetch_config(c)

    def _cmd_cfgi_ste(self, c) -> None:
        self.config_cache.inv_ste(c.SID, 1)

    def _cmd_cfgi_ste_range(self, c) -> None:
        if c.RANGE == 31:
            self.config_cache.clear()
        else:
            span = 1 << (c.RANGE + 1)
            self.config_cache.inv_ste(c.SID & ~(span - 1), span)

    def _cmd_cfgi_cd(self, c):
        if not self.feat.s1p:
            return CmdError.ILL
        self.config_cache.inv_cd(c.SID, c.SSID)

    def _cmd_cfgi_cd_all(self, c):
        if not self.feat.s1p:
            return CmdError.ILL
        self.config_cache.inv_cd(c.SID, None)

    def _vmid(self, c) -> int:
        """A command's VMID as the IOTLB tags entries: 0 without stage 2, 8 bits
        without VMID16 (as decode_ste masks S2VMID)."""
        if not self.feat.s2p:
            return 0
        return c.VMID if self.feat.vmid16 else c.VMID & 0xFF

    def _tlbi_range(self, c) -> tuple[int, int, int | None]:
        """(start, length, level) of a TLBI_*_VA / S2_IPA: one address, or with
        RIL and TG != 0 the range (NUM+1) * 2^SCALE granules, TTL a level hint."""
        if self.feat.ril and c.TG:
            granule = _TLBI_GRANULE[c.TG]
            return c.ADDR & ~(granule - 1), ((c.NUM + 1) << c.SCALE) * granule, c.TTL or None
        return c.ADDR, 1, None

    def _cmd_tlbi_nh_all(self, c):
        if not self.feat.s1p:
            return CmdError.ILL
        self.iotlb.nh_all(self._vmid(c))

    def _cmd_tlbi_nh_asid(self, c):
        if not self.feat.s1p:
            return CmdError.ILL
        self.iotlb.nh_asid(self._vmid(c), self._asid(c.ASID))

    def _cmd_tlbi_nh_va(self, c):
        if not self.feat.s1p:
            return CmdError.ILL
        self.iotlb.nh_va(self._vmid(c), self._asid(c.ASID), *self._tlbi_range(c))

    def _cmd_tlbi_nh_vaa(self, c):
        if not self.feat.s1p:
            return CmdError.ILL
        self.iotlb.nh_va(self._vmid(c), None, *self._tlbi_range(c))

    def _cmd_tlbi_s12_vmall(self, c):
        if not self.feat.s2p:
            return CmdError.ILL
        self.iotlb.s12_vmall(self._vmid(c))

    def _cmd_tlbi_s2_ipa(self, c):
        if not self.feat.s2p:
            return CmdError.ILL
        self.iotlb.s2_ipa(self._vmid(c), *self._tlbi_range(c))

    def _cmd_tlbi_nsnh_all(self, c) -> None:
        self.iotlb.all()

    def _asid(self, asid: int) -> int:
        return asid if self.feat.asid16 else asid & 0xFF

    def _cmd_atc_inv(self, c):
        if not self.feat.ats:
            return CmdError.ILL
        span = 4096 << c.SIZE
        start = c.ADDR & ~(span - 1)
        for key in [k for k in self.atc if k[0] == c.SID]:
            if c.GLOBAL or key[1] == (c.SSID if c.SSV else None):
                self.atc[key] = [e for e in self.atc[key]
                                 if not (e[0] < start + span and start < e[0] + e[1])]
        if c.SID in self.unresponsive_atc:
            self._atc_inv_timed_out = True  # reported by the next CMD_SYNC

    def _cmd_pri_resp(self, c):
        return CmdError.ILL  # IDR0.PRI=0

    def _cmd_resume(self, c):
        return CmdError.ILL  # IHI 0070 §4.7.1: CERROR_ILL when STALL_MODEL=0b01

    def _cmd_stall_term(self, c):
        return CmdError.ILL  # IHI 0070 §4.7.2: likewise

    def _cmd_sync(self, c):
        if c.CS == 0b11:
            return CmdError.ILL
        if self._atc_inv_timed_out:
            self._atc_inv_timed_out = False
            return CmdError.ATC_INV_SYNC
        self._signal_sync(c)

    # ------------------------------------------------------- configuration
    def _stream(self, sid: int) -> StreamConfig:
        cached = self.config_cache.get_ste(sid)
        if cached is not None:
            return cached
        word = self._fetch(self._ste_addr(sid), STE_SIZE, "ste", sid, Event.F_STE_FETCH)
        stream = decode_ste(word, self.feat)
        self.reached.add(f"ste:{stream.config.name}")
        self.config_cache.put_ste(sid, stream)
        return stream

    def _context(self, sid: int, stream: StreamConfig, ssid: int) -> ContextConfig:
        cached = self.config_cache.get_cd(sid, ssid)
        if cached is not None:
            return cached
        ptr = stream.ctx_ptr
        if stream.s1_fmt == S1_FMT_LINEAR:
            cd_ipa = ptr + ssid * CD_SIZE
        else:
            leaf_bits = 6 if stream.s1_fmt == S1_FMT_2LVL_4K else 10
            l1_ipa = ptr + (ssid >> leaf_bits) * 8
            desc = self._fetch(self._cd_pa(stream, l1_ipa, sid), 8, "cd", sid,
                               Event.F_CD_FETCH)
            if not L1_CD.get(desc, "V"):
                raise FaultError(Fault(Event.C_BAD_SUBSTREAMID))
            cd_ipa = L1_CD.get(desc, "L2PTR") + (ssid & ((1 << leaf_bits) - 1)) * CD_SIZE
        word = self._fetch(self._cd_pa(stream, cd_ipa, sid), CD_SIZE, "cd", sid,
                           Event.F_CD_FETCH)
        ctx = decode_cd(word, self.feat)
        self._check_asid_conflict(sid, ssid, stream, ctx)
        self.config_cache.put_cd(sid, ssid, ctx)
        return ctx

    def _check_asid_conflict(self, sid, ssid, stream: StreamConfig, ctx: ContextConfig) -> None:
        """Two cached CDs with one (VMID, ASID) but different tables would share
        TLB entries: report F_CFG_CONFLICT rather than mix them."""
        mine = _table_identity(ctx)
        for (osid, ossid), other in self.config_cache.cds().items():
            if (osid, ossid) == (sid, ssid) or other.s1.asid != ctx.s1.asid:
                continue
            ostream = self.config_cache.get_ste(osid)
            same_vm = ostream is not None and ostream.vmid == stream.vmid
            if same_vm and _table_identity(other) != mine:
                raise FaultError(Fault(Event.F_CFG_CONFLICT))

    def _cd_pa(self, stream: StreamConfig, ipa: int, sid: int) -> int:
        """CD and L1CD addresses are IPAs when nested: translate with CLASS=CD."""
        if stream.config != Config.NESTED:
            return ipa
        return self._s2_fetch(stream, ipa, FaultClass.CD, sid)

    def _s2_fetch(self, stream: StreamConfig, ipa: int, cls: FaultClass, sid: int) -> int:
        """Stage-2 translation of an SMMU read (CD or stage-1 table) in a nested walk."""
        return s2_table_fetch(self.mem, stream.s2, ipa, Initiator(self.name, "s2", sid),
                              fault_class=cls)

    def _s1_walk(self, stream: StreamConfig, ctx: ContextConfig, addr: int, sid: int):
        """Stage 1 (table reads tagged "s1"); nested: every table address through stage 2."""
        fetch = None
        if stream.config == Config.NESTED:
            fetch = lambda ipa, cls: self._s2_fetch(stream, ipa, cls, sid)  # noqa: E731
        return walk_s1(self.mem, ctx.s1, addr, s2=fetch, initiator=Initiator(self.name, "s1", sid))

    def _s2_walk(self, stream: StreamConfig, ipa: int, sid: int):
        return walk_s2(self.mem, stream.s2, ipa, initiator=Initiator(self.name, "s2", sid))

    # --------------------------------------------------------- translation
    def _complete(self, fault: Fault, sid, ssid, addr, access: Access) -> Fault:
        return replace(fault, sid=sid, ssid=ssid, input_addr=addr, rnw=not access.write,
                       ind=access.exec, pnu=access.priv)

    def _record_allowed(self, fault: Fault, stream: StreamConfig | None, ctx) -> bool:
        if fault.event not in RECORD_CONTROLLED:
            return True
        if fault.s2:
            return stream is not None and stream.s2_record
        return ctx is None or ctx.record  # no CD: stage 1 was bypassed, always record

    def translate(self, sid: int, addr: int, access: Access = READ, ssid: int | None = None):
        """Translate one address; returns (pa, stream, ctx) or raises FaultError
        (with a complete, not yet recorded fault, and `.stream`/`.ctx` attached)
        or Aborted."""
        stream = ctx = None
        try:
            if not self._f("CR0ACK", "SMMUEN"):
                self._check_disabled_bypass(addr)
                return addr, None, None
            stream = self._stream(sid)
            pa, _, ctx = self._translate_stream(sid, stream, addr, access, ssid)
            return pa, stream, ctx
        except FaultError as e:
            e.fault = self._complete(e.fault, sid, ssid, addr, access)
            # Keep the CD _translate_stream attached: the local `ctx` is still None when
            # it raised, and without the CD its R=0 could not suppress stage-1 faults
            # (IHI 0070 CD.R: F_TRANSLATION/F_ADDR_SIZE/F_ACCESS/F_PERMISSION not recorded).
            e.stream, e.ctx = stream, getattr(e, "ctx", ctx)
            raise

    def _check_disabled_bypass(self, addr: int) -> None:
        """SMMUEN=0: GBPA decides; an address beyond the OAS cannot be output and the
        transaction is aborted without an event (IHI 0070 §3.4, Address sizes)."""
        if self._f("GBPA", "ABORT"):
            raise Aborted("GBPA.ABORT with SMMUEN=0")
        if addr >> self.feat.oas_bits:
            raise Aborted("SMMUEN=0 bypass of an address beyond the OAS")

    def _translate_stream(self, sid, stream: StreamConfig, addr, access, ssid):
        if ssid is not None and (
            not stream.stage1 or not stream.s1_cdmax or ssid >> stream.s1_cdmax
        ):
            raise FaultError(Fault(Event.C_BAD_SUBSTREAMID))
        if ssid == 0 and stream.s1_dss == DSS_SUBSTREAM0:
            # IHI 0070 §5.2 STE.S1DSS=0b10: substream 0 belongs to transactions without
            # one; a transaction that selects it is terminated with F_STREAM_DISABLED.
            raise FaultError(Fault(Event.F_STREAM_DISABLED))
        if stream.config == Config.ABORT:
            raise Aborted("STE Config=abort")
        if stream.config == Config.BYPASS:
            return self._check_ias(addr), None, None
        stage1 = stream.stage1
        if stage1 and ssid is None and stream.s1_cdmax:
            if stream.s1_dss == DSS_TERMINATE:
                raise FaultError(Fault(Event.F_STREAM_DISABLED))
            stage1 = stream.s1_dss != DSS_BYPASS
        ctx = None
        if stage1:
            ctx = self._context(sid, stream, ssid if ssid is not None else 0)
            asid = ctx.s1.asid
        else:
            if stream.s2 is None:  # stage-1-only stream with stage 1 bypassed
                return self._check_ias(addr), None, None
            self._check_ias(addr)
            asid = S2_ONLY
        try:
            entry = self._lookup(stream.vmid, asid, addr)
            if entry is None:
                entry = self._walk(stream, ctx, addr, access, sid)
                self.iotlb.insert(entry)
            self._check_perm(entry, addr, access)
        except FaultError as e:
            e.ctx = ctx
            raise
        return entry.output(addr), entry, ctx

    def _check_ias(self, addr: int) -> int:
        """With stage 1 bypassed the input must fit the output size."""
        if addr >> self.feat.oas_bits:
            raise FaultError(Fault(Event.F_ADDR_SIZE))
        return addr

    def _lookup(self, vmid: int, asid: int, addr: int) -> TlbEntry | None:
        hits = self.iotlb.lookup(vmid, asid, addr)
        if len({h.output(addr) for h in hits}) > 1:
            raise FaultError(Fault(Event.F_TLB_CONFLICT))
        return hits[0] if hits else None

    def _walk(self, stream: StreamConfig, ctx: ContextConfig | None, addr: int,
              access: Access, sid: int) -> TlbEntry:
        if ctx is None:  # stage 2 only
            leaf = self._s2_walk(stream, addr, sid)
            return TlbEntry(stream.vmid, S2_ONLY, leaf.in_base, leaf.size, leaf.out_base,
                            leaf.level, None, leaf.perm)
        s1 = self._s1_walk(stream, ctx, addr, sid)
        if stream.config != Config.NESTED:
            return TlbEntry(stream.vmid, ctx.s1.asid, s1.in_base, s1.size, s1.out_base,
                            s1.level, s1.perm, None)
        if not access.allowed_by(s1.perm):
            # Stage 1 completes, permission check included, before stage 2 translates its
            # output: an S1 F_PERMISSION wins over any S2 fault on the output IPA.
            raise FaultError(Fault(Event.F_PERMISSION))
        s2 = self._s2_walk(stream, s1.out, sid)
        size = min(s1.size, s2.size)
        offset = addr & (size - 1)
        return TlbEntry(stream.vmid, ctx.s1.asid, addr - offset, size, s2.out - offset,
                        max(s1.level, s2.level), s1.perm, s2.perm, ipa_base=s1.out - offset)

    def _check_perm(self, e: TlbEntry, addr: int, access: Access) -> None:
        if e.s1_perm is not None and not access.allowed_by(e.s1_perm):
            raise FaultError(Fault(Event.F_PERMISSION))
        if e.s2_perm is not None and not access.allowed_by(e.s2_perm):
            ipa = e.ipa_base + (addr - e.in_base) if e.ipa_base is not None else addr
            raise FaultError(Fault(Event.F_PERMISSION, s2=True, ipa=ipa))

    # ------------------------------------------------------------- devices
    def dma(self, sid: int, addr: int, size: int = 4, *, ssid: int | None = None,
            write: bool = False, exec: bool = False, priv: bool = False,
            data: bytes | None = None, translated: bool = False,
            atomic: bool = False) -> DmaResult:
        """One device transaction, split at 4 KiB boundaries as PCIe requires;
        stops at the first fault (earlier pieces have happened)."""
        access = Access(write=write, exec=exec, priv=priv)
        if write:
            data = bytes(data if data is not None else b"\0" * size)
            size = len(data)
        if atomic:  # no atomic/exclusive support: an unsupported upstream transaction
            # (recorded, except for an ATS-translated one: IHI 0070 §3.9.1.3)
            return self._fail(Fault(Event.F_UUT, sid=sid, ssid=ssid, input_addr=addr,
                                    rnw=not write, ind=exec, pnu=priv), None, None,
                              record=not translated)
        out, first_pa, pos = bytearray(), None, 0
        while pos < size:
            cur = addr + pos
            n = min(size - pos, 4096 - (cur & 0xFFF))
            try:
                if translated:
                    pa = self._translated(sid, cur, access, ssid)
                else:
                    pa, _, _ = self.translate(sid, cur, access, ssid)
            except Aborted:
                return DmaResult(False, first_pa, bytes(out) if not write else None)
            except FaultError as e:
                return self._fail(e.fault, getattr(e, "stream", None), getattr(e, "ctx", None),
                                  record=getattr(e, "record", True))
            first_pa = pa if first_pa is None else first_pa
            initiator = Initiator(self.name, "dma", sid)
            try:
                if write:
                    self.mem.write(pa, data[pos : pos + n], initiator)
                else:
                    out += self.mem.read(pa, n, initiator)
            except BusError:
                return DmaResult(False, first_pa, bus_error=True)
            pos += n
        return DmaResult(True, first_pa, None if write else bytes(out))

    def _fail(self, fault: Fault, stream, ctx, record: bool = True) -> DmaResult:
        recorded = record and self._record_allowed(fault, stream, ctx) and self.record(fault)
        return DmaResult(False, fault=fault, recorded=recorded)

    def _translated(self, sid: int, addr: int, access: Access, ssid) -> int:
        """A transaction the device marked as already translated by ATS."""
        stream = None
        try:
            if not self._f("CR0ACK", "SMMUEN"):
                self._check_disabled_bypass(addr)
                return addr
            try:
                stream = self._stream(sid)
            except FaultError as e:
                # IHI 0070 §3.9.1.3: a configuration error aborts a Translated
                # transaction; it is recorded only with CR2.REC_CFG_ATS=1, which this
                # SMMU lacks (IDR0.ATSRECERR=0).
                e.record = False
                raise
            if stream.config == Config.ABORT:
                raise Aborted("STE Config=abort")
            if stream.eats == EATS_ABORT:
                raise FaultError(Fault(Event.F_TRANS_FORBIDDEN))
            if stream.eats != EATS_S1CHK:
                return addr
            entry = self._lookup(stream.vmid, S2_ONLY, addr)
            if entry is None:
                leaf = self._s2_walk(stream, addr, sid)
                entry = TlbEntry(stream.vmid, S2_ONLY, leaf.in_base, leaf.size, leaf.out_base,
                                 leaf.level, None, leaf.perm)
                self.iotlb.insert(entry)
            self._check_perm(entry, addr, access)
            return entry.output(addr)
        except FaultError as e:
            e.fault = self._complete(e.fault, sid, ssid, addr, access)
            e.stream, e.ctx = stream, None
            raise

    def ats_request(self, sid: int, addr: int, *, ssid: int | None = None,
                    write: bool = False, exec: bool = False, priv: bool = False) -> AtsResult:
        """A PCIe ATS translation request (IHI 0070 §3.9.1.2).  ATS disabled (SMMUEN=0,
        bypass, EATS=0b00) is a UR completion with F_BAD_ATS_TREQ; Config=abort a UR
        completion and no event.  A configuration error is a CA completion, recorded
        only with CR2.REC_CFG_ATS=1, which this SMMU lacks (IDR0.ATSRECERR=0); a
        translation fault gives the device no access and records nothing."""
        access = Access(write=write, exec=exec, priv=priv)
        # F_BAD_ATS_TREQ describes the request: its RnW/InD/PnU come from the request's
        # access like every other transaction event's (they were left at read/data/user).
        bad_treq = self._complete(Fault(Event.F_BAD_ATS_TREQ), sid, ssid, addr, access)
        if not self.feat.ats or not self._f("CR0ACK", "SMMUEN"):
            return self._ats_fail(bad_treq)
        try:
            stream = self._stream(sid)
            if stream.config == Config.ABORT:
                return AtsResult(False)
            if stream.eats == EATS_ABORT:
                return self._ats_fail(bad_treq)
            out, entry = self._ats_translate(sid, stream, addr, access, ssid)
        except FaultError as e:
            return AtsResult(False, fault=self._complete(e.fault, sid, ssid, addr, access))
        except Aborted:
            return AtsResult(False)
        self.atc.setdefault((sid, ssid), []).append(entry)
        return AtsResult(True, out, entry[1], entry[3])

    def _ats_fail(self, fault: Fault) -> AtsResult:
        self.record(fault)
        return AtsResult(False, fault=fault)

    def _ats_translate(self, sid, stream: StreamConfig, addr, access, ssid):
        """(output, (in_base, size, out_base, perm)) for an ATS completion; with
        EATS=S1CHK only stage 1 is applied (the device gets an IPA)."""
        if stream.eats == EATS_S1CHK:
            ctx = self._context(sid, stream, ssid if ssid is not None else 0)
            leaf = self._s1_walk(stream, ctx, addr, sid)
            if not access.allowed_by(leaf.perm):
                raise FaultError(Fault(Event.F_PERMISSION))
            return leaf.out, (leaf.in_base, leaf.size, leaf.out_base, leaf.perm)
        pa, entry, _ = self._translate_stream(sid, stream, addr, access, ssid)
        if entry is None:  # stage 1 and 2 bypassed: one page, every permission
            return pa, (addr & ~0xFFF, 4096, pa & ~0xFFF, Perm.ALL)
        return pa, (entry.in_base, entry.size, entry.out_base, entry.perm)

    def atc_lookup(self, sid: int, addr: int, ssid: int | None = None):
        """The device's ATC: a cached ATS completion covering `addr`, if any."""
        for in_base, size, out_base, perm in self.atc.get((sid, ssid), ()):
            if in_base <= addr < in_base + size:
                return out_base + (addr - in_base), perm
        return None


def _table_identity(ctx: ContextConfig):
    s = ctx.s1
    return (s.t0sz, s.t1sz, s.tg0, s.tg1, s.epd0, s.epd1, s.ttb0, s.ttb1, s.oa_bits)
