"""QEMU's behaviour re-implemented on our model: `QuirkSmmu`.

Most rows of `divergences.KNOWN_DIVERGENCES` name a *quirk*: one of QEMU's
deviations from the architecture, or its reading of IMPLEMENTATION DEFINED or
UNPREDICTABLE behaviour.  `QuirkSmmu` is our `Smmu` with a set of them switched
on; `execution.ModelTarget` runs it when given quirks (and applies
high-iova-bypasses-smmu and unprivileged-as-privileged to edu's DMAs itself), and
`divergences.classify` explains a divergence only if such a replay reproduces
QEMU's observation exactly.
"""

from __future__ import annotations

from dataclasses import replace

from vsmmu.arch.faults import Fault, FaultError
from vsmmu.arch.features import Features
from vsmmu.arch.layouts import (
    EVENT,
    L1_STD,
    REG,
    STE,
    CmdError,
    Config,
    Event,
    FaultClass,
    Op,
)
from vsmmu.hw.decode import StreamConfig, decode_ste
from vsmmu.hw.memory import BusError, PhysMem
from vsmmu.hw.smmu import READ, Aborted, Smmu
from vsmmu.hw.walk import GRANULES, s1_start_level, s2_geometry

from .scenarios import MASK64

# ====================================================================== QEMU's quirks
# Used only to *check* a divergence: our model with one or more of QEMU's known
# deviations switched on must reproduce QEMU's observation exactly, or the
# divergence is not the known one.  The names are KNOWN_DIVERGENCES ids.
QEMU_IOMMU_VA_BITS = 48  # QEMU's IOMMU memory region is 2^48 bytes (SMMU_MAX_VA_BITS)
_EL2_EL3_TLBI = frozenset({Op.TLBI_EL3_ALL, Op.TLBI_EL3_VA, Op.TLBI_EL2_ALL, Op.TLBI_EL2_ASID,
                           Op.TLBI_EL2_VA, Op.TLBI_EL2_VAA})
_CFGI = frozenset({Op.CFGI_STE, Op.CFGI_STE_RANGE, Op.CFGI_CD, Op.CFGI_CD_ALL})


class _WalkReadMask:
    """QEMU without 52-bit addresses reads a 64K-granule descriptor's bits 15:12
    (OA[51:48] under FEAT_LPA) as nothing: table-walk reads see them cleared."""

    def __init__(self, mem: PhysMem, smmu: QuirkSmmu):
        self._mem, self._smmu = mem, smmu

    def __getattr__(self, name):
        return getattr(self._mem, name)

    def read_int(self, pa: int, size: int, initiator: object = None) -> int:
        value = self._mem.read_int(pa, size, initiator)
        purpose = getattr(initiator, "purpose", None)
        if size == 8 and purpose in ("s1", "s2") and self._smmu._granule == 65536:
            value &= ~0xF000
        return value


class QuirkSmmu(Smmu):
    """`Smmu` with some of QEMU's deviations from the architecture (never a model of it)."""

    def __init__(self, mem: PhysMem, features: Features, quirks: frozenset[str]):
        self.quirks = frozenset(quirks)
        self._sticky_split: int | None = None
        self._qemu_cached: set[tuple[int, int, int]] = set()
        self._leaf_perm: dict[tuple[int, int, int], object] = {}
        self._hit = False
        self._config: Config | None = None
        self._access = READ  # of the translation in progress
        self._granule = 0  # of the walk in progress (for lpa-bits-64k-ignored)
        if "lpa-bits-64k-ignored" in self.quirks:
            mem = _WalkReadMask(mem, self)
        super().__init__(mem, features)

    # ---------------------------------------------------------------- registers
    def _write_reg(self, name: str, value: int) -> None:
        if name == "GBPA" and "gbpa-ignored" in self.quirks:
            return
        super()._write_reg(name, value)
        layout = REG["STRTAB_BASE_CFG"].layout
        if (name == "STRTAB_BASE_CFG" and "strtab-2lvl-sticky" in self.quirks
                and self.regs[name] == value and layout.get(value, "FMT") == 1):
            self._sticky_split = layout.get(value, "SPLIT")

    # ---------------------------------------------------------------- commands
    def execute(self, cmd: int) -> CmdError:
        q, op = self.quirks, cmd & 0xFF
        if 0x10 <= op <= 0x30:
            self._qemu_cached.clear()
            self._leaf_perm.clear()
        if "cmd-el2-el3-ignored" in q and op in _EL2_EL3_TLBI:
            return CmdError.NONE
        if "cmd-pri-atc-ignored" in q and op in (Op.PRI_RESP, Op.ATC_INV):
            return CmdError.NONE
        if "cmd-stall-ignored" in q and op in (Op.RESUME, Op.STALL_TERM):
            return CmdError.NONE
        if "cmd-sync-cs-reserved" in q and op == Op.SYNC and (cmd >> 12) & 3 == 3:
            return CmdError.NONE
        if "cmd-s2-without-s2p" in q and op in (Op.TLBI_S12_VMALL, Op.TLBI_S2_IPA) \
                and not self.feat.s2p:
            return CmdError.NONE
        if "cmd-ssec-unchecked" in q and op not in _CFGI:
            cmd &= ~(1 << 10)
        return super().execute(cmd)

    # ---------------------------------------------------------------- stream table
    def _ste_addr(self, sid: int) -> int:
        q = self.quirks
        L = REG["STRTAB_BASE_CFG"].layout
        cfg = self.regs["STRTAB_BASE_CFG"]
        two_level = L.get(cfg, "FMT") == 1
        sticky = "strtab-2lvl-sticky" in q and self._sticky_split is not None and not two_level
        span_quirk = "l1std-span" in q and (two_level or sticky)
        if not (sticky or span_quirk):
            return super()._ste_addr(sid)
        log2 = min(L.get(cfg, "LOG2SIZE"), self.feat.sidsize)
        if sid >> log2:
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        split = L.get(cfg, "SPLIT") if two_level else self._sticky_split
        base = REG["STRTAB_BASE"].layout.get(self.regs["STRTAB_BASE"], "ADDR")
        base &= -(1 << max(5, log2 - split - 1 + 3))
        desc = self._fetch(base + (sid >> split) * 8, 8, "ste", sid, Event.F_STE_FETCH)
        span, index = L1_STD.get(desc, "SPAN"), sid & ((1 << split) - 1)
        if span == 0:
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        if span_quirk:
            if index > (1 << span) - 1:  # QEMU: 2^Span STEs, and C_BAD_STE beyond
                raise FaultError(Fault(Event.C_BAD_STE))
            return L1_STD.get(desc, "L2PTR") + index * 64
        if span > split + 1 or index >> (span - 1):
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        return (L1_STD.get(desc, "L2PTR") & -(64 << (span - 1))) + index * 64

    def _stream(self, sid: int) -> StreamConfig:
        q = self.quirks
        if not q & {"strw-without-hyp", "ctxptr-beyond-oas-fetched", "s2ha-s2hd-without-httu"}:
            return super()._stream(sid)
        cached = self.config_cache.get_ste(sid)
        if cached is not None:
            return cached
        word = self._fetch(self._ste_addr(sid), 64, "ste", sid, Event.F_STE_FETCH)
        if "strw-without-hyp" in q:
            word = STE.put(word, "STRW", 0)
        if "s2ha-s2hd-without-httu" in q:
            word = STE.put(STE.put(word, "S2HA", 0), "S2HD", 0)
        ctx_ptr = STE.get(word, "S1CONTEXTPTR")
        if "ctxptr-beyond-oas-fetched" in q:  # decode as if in range, fetch as written
            word = STE.put(word, "S1CONTEXTPTR", ctx_ptr & ((1 << self.feat.oas_bits) - 1))
        stream = decode_ste(word, self.feat)
        if stream.stage1 and stream.ctx_ptr != ctx_ptr:
            stream = replace(stream, ctx_ptr=ctx_ptr)
        self.config_cache.put_ste(sid, stream)
        return stream

    def _context(self, sid, stream, ssid):
        fresh = self.config_cache.get_cd(sid, ssid) is None
        ctx = super()._context(sid, stream, ssid)
        if fresh and stream.config == Config.NESTED and "nested-ttb-translated-eagerly" \
                in self.quirks:
            # QEMU translates both TTBs through stage 2 when it decodes the CD, and
            # keeps nothing cached when one of them faults.
            try:
                for epd, ttb in ((ctx.s1.epd0, ctx.s1.ttb0), (ctx.s1.epd1, ctx.s1.ttb1)):
                    if not epd:
                        self._s2_fetch(stream, ttb, FaultClass.TT, sid)
            except FaultError as e:
                self.config_cache.inv_cd(sid, ssid)
                e.ctx = ctx
                raise
        return ctx

    # ---------------------------------------------------------------- translation
    def translate(self, sid, addr, access=READ, ssid=None):
        self._hit, self._config, self._access = False, None, access
        return super().translate(sid, addr, access, ssid)

    def _translate_stream(self, sid, stream, addr, access, ssid):
        self._config = stream.config
        return super()._translate_stream(sid, stream, addr, access, ssid)

    def _check_ias(self, addr: int) -> int:
        if "bypass-oas-unchecked" in self.quirks and self._config == Config.BYPASS:
            return addr
        return super()._check_ias(addr)

    def _complete(self, fault, sid, ssid, addr, access):
        f = super()._complete(fault, sid, ssid, addr, access)
        return replace(f, pnu=False) if "unprivileged-as-privileged" in self.quirks else f

    def _lookup(self, vmid, asid, addr):
        e = super()._lookup(vmid, asid, addr)
        self._hit = e is not None and (e.vmid, e.asid, e.in_base) in self._qemu_cached
        return e

    def _check_perm(self, e, addr, access) -> None:
        key = (e.vmid, e.asid, e.in_base)
        if self._hit and key in self._leaf_perm and e.s1_perm is not None:
            e = replace(e, s1_perm=self._leaf_perm[key])
        super()._check_perm(e, addr, access)
        self._qemu_cached.add(key)  # QEMU caches successful translations only

    def _record_allowed(self, fault, stream, ctx) -> bool:
        q = self.quirks
        s2_only = stream is not None and stream.config == Config.S2_TRANS
        if "s2-tlb-hit-permission-unrecorded" in q and s2_only and self._hit \
                and fault.event == Event.F_PERMISSION:
            return False
        if "s2-only-ias-fault-unrecorded" in q and s2_only and not fault.s2 \
                and fault.event == Event.F_ADDR_SIZE:
            return False
        return super()._record_allowed(fault, stream, ctx)

    def _walk(self, stream, ctx, addr, access, sid):
        if ctx is not None and access.write and "aptable-before-leaf" in self.quirks:
            self._aptable_first(stream, ctx, addr, sid)
        try:
            entry = super()._walk(stream, ctx, addr, access, sid)
        except FaultError as e:
            f = e.fault
            if (ctx is None or f.event != Event.F_ADDR_SIZE or f.s2
                    or "leaf-size-checked-last" not in self.quirks):
                raise
            # QEMU checks a leaf's AF, then its permissions, then its output size.
            loose = replace(ctx, s1=replace(ctx.s1, oa_bits=64))
            try:
                leaf = self._s1_walk(stream, loose, addr, sid)
            except FaultError as again:
                if again.fault.event == Event.F_ACCESS and not again.fault.s2:
                    raise again from None
                raise e from None
            if leaf.out_base >> ctx.s1.oa_bits and not access.allowed_by(leaf.perm):
                raise FaultError(Fault(Event.F_PERMISSION)) from None
            raise
        if ctx is not None and "aptable-lost-on-tlb-hit" in self.quirks:
            # QEMU caches the leaf's AP alone: remember what a hit will be checked against.
            loose = replace(ctx, s1=replace(ctx.s1, had0=True, had1=True))
            leaf = self._s1_walk(stream, loose, addr, sid)
            self._leaf_perm[(entry.vmid, entry.asid, entry.in_base)] = leaf.perm
        return entry

    def _aptable_first(self, stream, ctx, addr: int, sid: int) -> None:
        """QEMU checks each table descriptor's APTable[1] (no write) as it descends,
        before the leaf's validity, AF and AP: F_PERMISSION at the first such table."""
        c = ctx.s1
        va = addr & MASK64
        top = va >> 55 & 1
        tsz, gsize, epd, ttb, had = ((c.t1sz, c.tg1, c.epd1, c.ttb1, c.had1) if top else
                                     (c.t0sz, c.tg0, c.epd0, c.ttb0, c.had0))
        g = GRANULES.get(gsize)
        level = None if g is None else s1_start_level(64 - tsz, g)
        if epd or had or level is None:
            return
        ia = 64 - tsz
        lsb = g.shift + g.stride * (3 - level)
        index_mask = (1 << (ia - lsb)) - 1
        base = ttb & -((index_mask + 1) * 8)
        while level < 3:
            desc_addr = base + ((va >> lsb) & index_mask) * 8
            try:
                pa = desc_addr
                if stream.config == Config.NESTED:
                    pa = self._s2_fetch(stream, desc_addr, FaultClass.TT, sid)
                desc = self.mem.read_int(pa, 8)
            except (FaultError, BusError):
                return
            if desc & 3 != 3:
                return
            if desc >> 62 & 1:
                raise FaultError(Fault(Event.F_PERMISSION))
            base = desc & ((1 << 48) - 1) & -(1 << g.shift)
            level, lsb, index_mask = level + 1, lsb - g.stride, (1 << g.stride) - 1

    def _in_walk(self, granule: int, walk, *args):
        outer, self._granule = self._granule, granule
        try:
            return walk(*args)
        finally:
            self._granule = outer

    def _s1_walk(self, stream, ctx, addr, sid):
        half = ctx.s1.tg1 if (addr >> 55) & 1 else ctx.s1.tg0
        return self._in_walk(half, self._s1_walk_quirks, stream, ctx, addr, sid)

    def _s1_walk_quirks(self, stream, ctx, addr, sid):
        if "ttb1-selected-by-zero-top-bits" in self.quirks:
            ctx = self._qemu72_select_tt(ctx, addr)
        if "no-access-flag" in self.quirks:
            ctx = replace(ctx, s1=replace(ctx.s1, affd=True))
        if "s1-output-size-unchecked" in self.quirks:
            ctx = replace(ctx, s1=replace(ctx.s1, oa_bits=64))
        return super()._s1_walk(stream, ctx, addr, sid)

    @staticmethod
    def _qemu72_select_tt(ctx, va: int):
        """QEMU 7.2's select_tt(): TTB0 if its top bits are zero; else TTB1 if *its* top
        bits are zero too (the bug; TTB1 needs ones); else a disabled half if there is
        one; else none.  Returns a CD whose TTB0 half is the chosen one (our walker then
        walks it for this VA, which has VA[55]=0) or whose both halves are disabled."""
        c = ctx.s1
        va &= MASK64
        tsz = (0 if c.epd0 else c.t0sz, 0 if c.epd1 else c.t1sz)
        tbi_byte = 8 if (c.tbi1 if va >> 55 & 1 else c.tbi0) else 0

        def zero(n: int) -> bool:
            width = n - tbi_byte
            return width <= 0 or not (va >> (64 - n)) & ((1 << width) - 1)

        sel = (0 if tsz[0] and zero(tsz[0]) else 1 if tsz[1] and zero(tsz[1]) else
               0 if not tsz[0] else 1 if not tsz[1] else None)
        if sel is None or (c.epd0, c.epd1)[sel]:
            return replace(ctx, s1=replace(c, epd0=True, epd1=True))
        if sel == 0 or va >> 55 & 1:
            return ctx
        return replace(ctx, s1=replace(c, t0sz=c.t1sz, tg0=c.tg1, ttb0=c.ttb1, had0=c.had1,
                                         tbi0=c.tbi1, epd0=False))

    def _alias(self, s2, ipa: int) -> int:
        """QEMU's stage-2 walk ignores the concatenated-table index bits of the IPA."""
        if "s2-concat-index" not in self.quirks or ipa >> (64 - s2.t0sz):
            return ipa
        geo = s2_geometry(s2.t0sz, s2.sl0, s2.granule, pa_max=self.feat.oas_bits)
        if geo is None:
            return ipa
        g = GRANULES[s2.granule]
        return ipa & ((1 << (g.shift + g.stride * (4 - geo[0]))) - 1)

    def _s2_walk(self, stream, ipa, sid):
        return self._in_walk(stream.s2.granule, self._s2_walk_quirks, stream, ipa, sid)

    def _s2_walk_quirks(self, stream, ipa, sid):
        try:
            return self._s2_walk_aliased(stream, ipa, sid)
        except FaultError as e:
            f = e.fault
            if f.event != Event.F_ADDR_SIZE or not f.s2 \
                    or "leaf-size-checked-last" not in self.quirks:
                raise
            # QEMU checks a stage-2 leaf's AF, then its S2AP, then its output size.
            loose = replace(stream, s2=replace(stream.s2, ps_bits=64))
            try:
                leaf = self._s2_walk_aliased(loose, ipa, sid)
            except FaultError as again:
                if again.fault.event == Event.F_ACCESS:
                    raise again from None
                raise e from None
            if leaf.out_base >> stream.s2.ps_bits and not self._access.allowed_by(leaf.perm):
                raise FaultError(Fault(Event.F_PERMISSION, s2=True, ipa=ipa)) from None
            raise

    def _s2_walk_aliased(self, stream, ipa, sid):
        alias = self._alias(stream.s2, ipa)
        if alias == ipa:
            return super()._s2_walk(stream, ipa, sid)
        try:
            leaf = super()._s2_walk(stream, alias, sid)
        except FaultError as e:
            if e.fault.ipa == alias:
                e.fault = replace(e.fault, ipa=ipa)
            raise
        return replace(leaf, out=leaf.out_base + (ipa & (leaf.size - 1)), in_base=ipa & -leaf.size)

    def _s2_fetch(self, stream, ipa, cls, sid):
        return self._in_walk(stream.s2.granule, self._s2_fetch_quirks, stream, ipa, cls, sid)

    def _s2_fetch_quirks(self, stream, ipa, cls, sid):
        if ("s2-only-ias-fault-unrecorded" in self.quirks and cls == FaultClass.CD
                and ipa >> self.feat.oas_bits):
            # QEMU checks the CD's IPA like a stage-1-bypassed input address: a stage-1
            # F_ADDR_SIZE recorded only under CD.R, of the CD it has not read yet.
            raise Aborted("QEMU: unrecorded F_ADDR_SIZE on the CD's IPA")
        alias = self._alias(stream.s2, ipa)
        try:
            return super()._s2_fetch(stream, alias, cls, sid)
        except FaultError as e:
            if alias != ipa and e.fault.ipa == alias:
                e.fault = replace(e.fault, ipa=ipa)
            raise

    # ---------------------------------------------------------------- events
    def record(self, fault: Fault) -> bool:
        if "cd-fetch-address-field" in self.quirks and fault.event == Event.F_CD_FETCH:
            word = EVENT["FETCH_ADDR"].put(fault.encode(), 0)
            return self.record_word(EVENT["INPUT_ADDR"].put(word, fault.fetch_addr or 0),
                                    fault.sid)
        return super().record(fault)

    def record_word(self, word: int, sid: int) -> bool:
        if "evtq-overflow-abort" in self.quirks and self._f("CR0ACK", "EVENTQEN"):
            q = self._evtq()
            L = REG["EVENTQ_PROD"].layout
            if q.full(L.get(self.regs["EVENTQ_PROD"], "WR"),
                      REG["EVENTQ_CONS"].layout.get(self.regs["EVENTQ_CONS"], "RD")):
                self._gerror("EVENTQ_ABT_ERR")
                self.lost[sid] += 1
                return False
        return super().record_word(word, sid)
