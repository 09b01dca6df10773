"""The classification of divergences: the known ones (`KNOWN_DIVERGENCES`) and `classify`.

Every difference is explained by rows of `KNOWN_DIVERGENCES` (a QEMU
deviation from the architecture, with the rule; IMPLEMENTATION DEFINED or
UNPREDICTABLE behaviour; a QEMU crash) or reported as unexplained.  A row is
not matched by a loose pattern: most rows name a *quirk*, QEMU's behaviour
re-implemented on our model (`quirks.QuirkSmmu`), and a divergence is explained
only if our model with the quirks switched on reproduces QEMU's observation
exactly; the smallest such set is reported.  Rows that cannot be replayed
(crashes, stale caches, a geometry we reject outright) match the whole case.
`NORMALISATIONS` lists the event-record quirks folded away before comparing
(`comparison.normalise`, `comparison.collapse`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import STE, Config
from vsmmu.hw.decode import BadConfig, decode_ste

from .comparison import Difference, Observation, compare
from .execution import ModelTarget, execute
from .scenarios import Scenario

# ====================================================================== known divergences
QEMU_DEVIATION, IMPDEF, OUR_BUG, PEER_CRASH = "qemu-deviation", "impdef", "our-bug", "peer-crash"
UNEXPLAINED = "unexplained"
EXPLAINED = frozenset({QEMU_DEVIATION, IMPDEF, PEER_CRASH})


@dataclass(frozen=True)
class Known:
    """One known way QEMU's SMMUv3 and ours differ.  `quirk` rows are checked by
    replaying the case on `QuirkSmmu` with the quirk on (it must then agree exactly
    with QEMU); the others by `match` on the whole case."""

    id: str
    cls: str
    rule: str  # the architecture rule, or why either behaviour is allowed
    qemu: str  # what QEMU does instead
    since: tuple[int, ...] = (0,)  # QEMU versions it applies to: since <= v < until
    until: tuple[int, ...] = (99,)
    quirk: bool = True
    match: Callable[[CaseResult, Features], bool] | None = None

    def applies(self, version: tuple[int, ...]) -> bool:
        return self.since <= version < self.until


@dataclass
class CaseResult:
    scenario: Scenario
    ours: Observation
    qemu: Observation
    diffs: list[Difference]
    seconds: float = 0.0
    verdict: str | None = None  # None: agree; else a class
    known: list[str] = field(default_factory=list)


def _crashed_with(text: str) -> Callable[[CaseResult, Features], bool]:
    return lambda r, features: bool(r.qemu.crash) and text in r.qemu.crash


def _qemu_accepts_s2_geometry(ste: int, oas_bits: int = 44) -> bool:
    """QEMU 9.x/10.0's check of S2T0SZ/S2SL0/S2TG (s2t0sz_valid, s2_pgtable_config_valid):
    a range for S2T0SZ and at most 16 concatenated tables, nothing else."""
    s = STE.decode(ste)
    gran = {0: 12, 1: 16, 2: 14}.get(s.S2TG)
    if gran is None or s.S2SL0 == 3:
        return False
    ps = min({0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}.get(s.S2PS, 48), oas_bits)
    if gran != 16:
        ps = min(ps, 48)
    lo = 64 - ps if gran == 16 else max(16, 64 - ps)
    if not lo <= s.S2T0SZ <= 39:
        return False
    start = 2 - s.S2SL0 if gran == 12 else 3 - s.S2SL0
    shift = gran + (3 - (start - 1)) * (gran - 3)
    return (((1 << (64 - s.S2T0SZ)) - 1) >> shift) + 1 <= 16


def _s2_geometry_only_we_reject(r: CaseResult, features: Features) -> bool:
    """Ours rejects the STE's stage-2 geometry (C_BAD_STE on every DMA) where QEMU's
    weaker check accepts it: whatever QEMU then walks is a consequence."""
    if not r.ours.ste or STE.get(r.ours.ste, "CONFIG") not in (Config.S2_TRANS, Config.NESTED):
        return False
    try:
        decode_ste(r.ours.ste, features)
    except BadConfig as e:
        if "S2SL0" not in e.rule and "S2T0SZ" not in e.rule:
            return False
    else:
        return False
    dmas = [s for s in r.ours.steps if s.op == "dma" and s.events]
    return all(e["event"] == "C_BAD_STE" for s in dmas for e in s.events) and \
        _qemu_accepts_s2_geometry(r.ours.ste, features.oas_bits)

# The table.  Rules cite Arm IHI 0070 (SMMUv3) and DDI 0487 (Arm ARM) by section or
# field; "QEMU" is what the peer was seen to do (versions: `since`/`until`).
KNOWN_DIVERGENCES: tuple[Known, ...] = (
    # ------------------------------------------------------------ QEMU crashes
    Known("crash-cd-ips-52", PEER_CRASH,
          "IHI 0070 CD.IPS: 0b110 (52 bits) is an architected encoding and, like any IPS, "
          "is capped to SMMU_IDR5.OAS; 0b111 is reserved. Neither may crash the SMMU.",
          "oas2bits() hits g_assert_not_reached (hw/arm/smmuv3-internal.h): QEMU aborts "
          "(guest-triggerable DoS)",
          since=(9, 0), quirk=False, match=_crashed_with("oas2bits")),
    Known("crash-s2aa64-0", PEER_CRASH,
          "IHI 0070 STE.S2AA64=0 selects AArch32 stage-2 tables: an SMMU without them "
          "treats the STE as ILLEGAL (C_BAD_STE).",
          "decode_ste_s2_cfg() hits g_assert_not_reached: QEMU aborts (guest-triggerable DoS)",
          since=(9, 0), quirk=False, match=_crashed_with("decode_ste_s2_cfg")),
    # ------------------------------------------------------------ translation
    Known("high-iova-bypasses-smmu", QEMU_DEVIATION,
          "IHI 0070 §3.4 (Address sizes): the SMMU takes 64-bit input addresses; one "
          "outside the TTB0/TTB1 ranges is a stage-1 F_TRANSLATION, one beyond the IAS "
          "with stage 1 bypassed a stage-1 F_ADDR_SIZE, in both cases recorded.",
          "its IOMMU memory region is 2^48 bytes: a DMA at or above 2^48 never reaches the "
          "SMMU, is dropped and nothing is recorded (seen on 7.2, not on 10.0)",
          until=(10, 0)),
    Known("unprivileged-as-privileged", QEMU_DEVIATION,
          "DDI 0487 D8.4 (stage-1 data access permissions): AP[1]=0, or APTable[0]=1 above "
          "it, denies unprivileged access; a PCIe request without a PASID prefix is "
          "Unprivileged (IHI 0070 §13: PnU=0, as QEMU's own records say).",
          "checks every access as privileged (smmu-internal.h: 'all transactions are "
          "considered as privileged'): AP[1] and APTable[0] are ignored"),
    Known("aptable-before-leaf", QEMU_DEVIATION,
          "DDI 0487 D8 fault prioritisation: Translation, then Access flag, then Permission "
          "fault; APTable only restricts the permissions of the final descriptor.",
          "checks APTable[1] while descending, so a write under a read-only table gives "
          "F_PERMISSION even when the leaf is invalid (F_TRANSLATION) or has AF=0 (F_ACCESS)"),
    Known("aptable-lost-on-tlb-hit", QEMU_DEVIATION,
          "DDI 0487 D8.4.2 (hierarchical permissions): APTable limits every access through "
          "the table, including ones that hit a cached translation.",
          "caches only the leaf's AP: a write that hits an entry cached by a read passes a "
          "write-protecting APTable"),
    Known("ttb1-selected-by-zero-top-bits", QEMU_DEVIATION,
          "DDI 0487 D8 / IHI 0070 CD.T1SZ: TTB1 translates VAs whose bits above T1SZ are "
          "all ones; a VA in neither range is a stage-1 F_TRANSLATION.",
          "selects TTB1 when those bits are all zero (so a VA just beyond TTB0's range walks "
          "TTB1) and never for the real TTB1 range (seen on 7.2, fixed by 10.0)",
          until=(10, 0)),
    Known("no-access-flag", QEMU_DEVIATION,
          "IHI 0070 CD.AFFD/STE.S2AFFD=0 without HTTU: an access through a descriptor with "
          "AF=0 is an Access flag fault (F_ACCESS).",
          "never checks AF", until=(8, 0)),
    Known("s1-output-size-unchecked", QEMU_DEVIATION,
          "IHI 0070 §3.4 / DDI 0487 D8: a stage-1 table or output address beyond the "
          "effective CD.IPS (capped to the OAS) is a stage-1 Address Size fault (F_ADDR_SIZE).",
          "does not check it before 9.1 ('Add missing size check for stage-1'): the access "
          "goes to the out-of-range address", until=(9, 1)),
    Known("nested-ttb-translated-eagerly", QEMU_DEVIATION,
          "IHI 0070 (nested translation) / DDI 0487 D8: a stage-1 walk reads only the "
          "table its VA selects (TTB0 or TTB1), each access translated by stage 2 when it "
          "is made; the other half's TTB cannot fault this transaction.",
          "translates both enabled TTBs through stage 2 when it decodes the CD: a bad TTB1 "
          "gives a stage-2 CLASS=TT fault on every transaction, TTB0 ones included",
          since=(9, 0)),
    Known("leaf-size-checked-last", QEMU_DEVIATION,
          "DDI 0487 D8 fault prioritisation: an Address size fault on the output address "
          "of the final descriptor is a walk fault, before Access flag and Permission faults "
          "(stage 1 against CD.IPS, stage 2 against STE.S2PS).",
          "checks the leaf's AF and permissions first: F_ACCESS/F_PERMISSION instead of "
          "F_ADDR_SIZE", since=(9, 1)),
    Known("s2-concat-index", QEMU_DEVIATION,
          "DDI 0487 D8.2 (concatenated translation tables at the initial stage-2 lookup): "
          "the IPA bits above the start level's stride select one of up to 16 tables.",
          "walks the first table whatever those bits are: such IPAs alias into table 0 "
          "(wrong PA, or F_TRANSLATION/F_ACCESS from table 0's entries)", since=(9, 0)),
    Known("s2-tlb-hit-permission-unrecorded", QEMU_DEVIATION,
          "IHI 0070 STE.S2R=1: stage-2 F_PERMISSION is recorded; caching must not change "
          "which faults are reported.",
          "a stage-2-only permission fault on an IOTLB hit is attributed to stage 1 and, "
          "with no CD.R, dropped", since=(9, 0)),
    Known("s2-only-ias-fault-unrecorded", QEMU_DEVIATION,
          "IHI 0070 §3.4: with stage 1 bypassed an input address beyond the IAS is a "
          "stage-1 F_ADDR_SIZE; no CD is in use, so CD.R cannot suppress it.",
          "raises it but drops it (record_faults of the absent CD is 0); the same for a "
          "nested CD pointer (an IPA) beyond the IAS", since=(9, 0)),
    Known("bypass-oas-unchecked", QEMU_DEVIATION,
          "IHI 0070 §3.4: with STE.Config=bypass an input address beyond the OAS is "
          "terminated and a stage-1 F_ADDR_SIZE recorded.",
          "passes it through to an unassigned address: dropped, nothing recorded"),
    # ------------------------------------------------------------ configuration
    Known("s2-geometry-unchecked", QEMU_DEVIATION,
          "IHI 0070 STE.S2T0SZ: 'Use of a value of S2T0SZ that is inconsistent with the "
          "permitted range (given S2SL0 and S2TG) is ILLEGAL' (C_BAD_STE).",
          "checks only an S2T0SZ range and at most 16 concatenated tables, then walks a "
          "start level that resolves no bits (whatever it finds)",
          since=(9, 0), quirk=False, match=_s2_geometry_only_we_reject),
    Known("l1std-span", QEMU_DEVIATION,
          "IHI 0070 L1STD.Span: the L2 table holds 2^(Span-1) STEs; Span=0, Span > SPLIT+1 "
          "(and the reserved 12-31) leave the range invalid: a StreamID beyond the L2 table "
          "is C_BAD_STREAMID.",
          "takes 2^Span STEs (reads one past the table), reports C_BAD_STE beyond them and "
          "accepts any Span up to 31 (fixed upstream in 2026: 'span must be within ... "
          "SPLIT + 1')"),
    Known("strtab-2lvl-sticky", QEMU_DEVIATION,
          "IHI 0070 SMMU_STRTAB_BASE_CFG.FMT selects the stream table format in use "
          "(0b00 linear).",
          "latches 2-level once FMT=1 has been written: a later linear table is walked as "
          "2-level (C_BAD_STREAMID / wrong STE)"),
    Known("cd-fetch-address-field", QEMU_DEVIATION,
          "IHI 0070 F_CD_FETCH record: the CD address goes in FetchAddr (bits 243:195).",
          "writes it to InputAddr (bits 191:128), FetchAddr = 0"),
    Known("strw-without-hyp", IMPDEF,
          "IHI 0070 §5.2 STE.STRW (G.b), stage-1-only Non-secure STE with SMMU_IDR0.HYP=0: "
          "0bx1 is ILLEGAL and 0b10 RES0 (CONSTRAINED UNPREDICTABLE); ours: ILLEGAL "
          "(C_BAD_STE) for both. IGNORED with stage 2 enabled, by both.",
          "ignores STRW"),
    Known("ctxptr-beyond-oas-fetched", QEMU_DEVIATION,
          "IHI 0070 §5.2 STE.S1ContextPtr, §3.4.3 (G.b): with stage 1 only, a pointer "
          "beyond SMMU_IDR5.OAS makes the STE ILLEGAL (C_BAD_STE) from SMMUv3.1, which QEMU "
          "advertises (AIDR); with stage 2, beyond the IAS it is C_BAD_STE or a stage-2 "
          "Translation fault.",
          "fetches the CD from the out-of-range address: F_CD_FETCH"),
    Known("s2ha-s2hd-without-httu", QEMU_DEVIATION,
          "IHI 0070 §5.2 STE.S2HA/S2HD (G.b): with stage 2 enabled, S2HA=1 is ILLEGAL when "
          "SMMU_IDR0.HTTU=0b00 and S2HD=1 when HTTU is 0b00 or 0b01 (C_BAD_STE), as QEMU "
          "does for CD.HA/HD.",
          "ignores them"),
    Known("lpa-bits-64k-ignored", IMPDEF,
          "DDI 0487 D8.3: with the 64KB granule, descriptor bits[15:12] hold OA[51:48] only "
          "with 52-bit PAs (FEAT_LPA); with SMMU_IDR5.OAS=44 they are RES0 and a set bit is "
          "CONSTRAINED UNPREDICTABLE. Ours reads them as OA[51:48] (F_ADDR_SIZE).",
          "ignores them"),
    Known("gbpa-ignored", QEMU_DEVIATION,
          "IHI 0070 SMMU_GBPA: with SMMUEN=0 and GBPA.ABORT=1 incoming transactions are "
          "terminated.",
          "has no GBPA (reads 0, writes ignored) and always bypasses", until=(8, 1)),
    # ------------------------------------------------------------ queues
    Known("evtq-overflow-abort", QEMU_DEVIATION,
          "IHI 0070 §7.4 (event queue overflow): a record that finds the queue full is "
          "discarded and SMMU_EVENTQ_PROD.OVFLG toggles; GERROR.EVENTQ_ABT_ERR is for an "
          "abort of the queue write itself.",
          "raises GERROR.EVENTQ_ABT_ERR and never sets OVFLG"),
    Known("cmd-el2-el3-ignored", QEMU_DEVIATION,
          "IHI 0070 §4: CMD_TLBI_EL2_* are CERROR_ILL when SMMU_IDR0.HYP=0 and CMD_TLBI_EL3_* "
          "on the Non-secure command queue.",
          "ignores them"),
    Known("cmd-pri-atc-ignored", QEMU_DEVIATION,
          "IHI 0070 §4: CMD_PRI_RESP when SMMU_IDR0.PRI=0 and CMD_ATC_INV when "
          "SMMU_IDR0.ATS=0 are CERROR_ILL.",
          "ignores them"),
    Known("cmd-stall-ignored", QEMU_DEVIATION,
          "IHI 0070 §4.7.1 CMD_RESUME, §4.7.2 CMD_STALL_TERM: CERROR_ILL when "
          "SMMU_IDR0.STALL_MODEL=0b01 (stalls not supported), which QEMU advertises.",
          "ignores them"),
    Known("cmd-sync-cs-reserved", QEMU_DEVIATION,
          "IHI 0070 CMD_SYNC.CS=0b11 is reserved: CERROR_ILL (also openvmm PR #3661).",
          "ignores the value"),
    Known("cmd-ssec-unchecked", QEMU_DEVIATION,
          "IHI 0070 §4: SSec=1 in a command on the Non-secure command queue is CERROR_ILL.",
          "checks SSec on CFGI_* only"),
    Known("cmd-s2-without-s2p", QEMU_DEVIATION,
          "IHI 0070 §4: CMD_TLBI_S12_VMALL and CMD_TLBI_S2_IPA are CERROR_ILL when "
          "SMMU_IDR0.S2P=0.",
          "ignores them", until=(9, 0)),
    # ------------------------------------------------------------ caching
    Known("stale-without-invalidation", IMPDEF,
          "IHI 0070 §16.2 (configuration and TLB caching): until CFGI_*/TLBI_* and CMD_SYNC "
          "complete, a transaction may use the old or the new structure (UNPREDICTABLE "
          "which); steps after the invalidation are compared as usual.",
          "may differ in what it cached", quirk=False),
)
KNOWN = {k.id: k for k in KNOWN_DIVERGENCES}

# Differences in event records folded away before comparing (`normalise`, `collapse`):
# QEMU deviations too, but on every fault, so they would hide everything else.
NORMALISATIONS: tuple[Known, ...] = (
    Known("event-per-4-bytes", QEMU_DEVIATION,
          "IHI 0070 §7: one event per faulting transaction.",
          "retries a faulting DMA 4 bytes at a time and records every try (collapsed to "
          "the first record per fields and 4 KiB page)", quirk=False),
    Known("event-ipa-low-bits", QEMU_DEVIATION,
          "IHI 0070 §7.3 stage-2 fault records: IPA[51:12] in bits 243:204, bits 11:0 RES0.",
          "leaves IPA[11:0] set (only IPA[51:12] is compared)", quirk=False),
    Known("event-class-zero", QEMU_DEVIATION,
          "IHI 0070 §7.3 CLASS: 0b00 CD, 0b01 TT, 0b10 IN.",
          "writes CLASS=0 before 9.1 ('Fix encoding of CLASS in events'); not compared there",
          until=(9, 1), quirk=False),
    Known("event-walk-direction", QEMU_DEVIATION,
          "IHI 0070 §7.3: RnW is the incoming transaction's direction; TTRnW (bit 108) that "
          "of the table access for CLASS=TT.",
          "sets RnW=1 (its own read) on a stage-2 fault of a stage-1 table or CD fetch "
          "(CLASS=TT/CD) and never sets TTRnW: RnW of such records and TTRnW are not compared",
          quirk=False),
)


# Divergences that were ours (class our-bug): found by this harness or while classifying
# its divergences, fixed in vsmmu/,
# kept here as (id, rule, fix) so the history of the table stays in one place.
FIXED_OUR_BUGS: tuple[tuple[str, str, str], ...] = (
    ("pagetable-last-slot",
     "DDI 0487 D8: the input range of a table is [0, 2^(64-TxSZ)) (and outputs "
     "[0, 2^PA bits)): its last page or block is mappable.",
     "vsmmu/sw/pagetable.py rejected a mapping ending exactly at 2^bits (off by one)"),
    ("driver-recover-consecutive-errors",
     "IHI 0070 §7.1: after GERRORN acknowledges CMDQ_ERR the SMMU resumes at CONS and "
     "raises CMDQ_ERR again at the next bad command.",
     "vsmmu/sw/driver.py recover() waited for no error at all and timed out on two bad "
     "commands in a row; it now waits for the stop to move"),
    ("disabled-bypass-beyond-oas",
     "IHI 0070 §3.4: with SMMUEN=0 and GBPA.ABORT=0 an input address beyond the OAS is "
     "aborted, no event recorded.",
     "vsmmu/hw/smmu.py passed it through to memory"),
)


def _stale_steps(s: Scenario) -> frozenset[int]:
    return frozenset(i for i, st in enumerate(s.spec["steps"]) if st.get("stale"))


def classify(r: CaseResult, features: Features, version: tuple[int, ...],
             model: ModelTarget | None = None) -> CaseResult:
    """Set r.verdict and r.known; see `Known`.  `model` (a ModelTarget with these
    features) is reused for the replays when given."""
    if not r.diffs:
        r.verdict, r.known = None, []
        return r
    rows = [k for k in KNOWN_DIVERGENCES if k.applies(version)]
    for k in rows:
        if k.match is not None and k.match(r, features):
            r.verdict, r.known = k.cls, [k.id]
            return r
    if r.qemu.crash:
        r.verdict, r.known = PEER_CRASH, ["qemu-crash"]
        return r
    stale = _stale_steps(r.scenario)
    class_known = version >= (9, 1)
    stale_differs = bool(stale) and any(
        i in stale and (sa.events != sb.events or sa.overflow != sb.overflow)
        for i, (sa, sb) in enumerate(zip(r.ours.steps, r.qemu.steps, strict=False)))
    tail = ["stale-without-invalidation"] if stale_differs else []
    if not compare(r.ours, r.qemu, stale=stale):
        r.verdict, r.known = IMPDEF, tail
        return r

    replay = model or ModelTarget(features)
    plain = replay.quirks

    def agrees(quirks) -> bool:
        replay.quirks = frozenset(quirks)
        try:
            obs = execute(r.scenario, replay, class_known=class_known)
        finally:
            replay.quirks = plain
        return not compare(obs, r.qemu, stale=stale)

    needed = [k.id for k in rows if k.quirk]
    if not agrees(needed):  # an imprecise emulation can spoil the others: try them alone
        needed = next(([q] for q in needed if agrees([q])), [])
        if not needed:
            r.verdict, r.known = UNEXPLAINED, []
            return r
    for q in list(needed):  # keep only the quirks the agreement needs
        trial = [x for x in needed if x != q]
        if agrees(trial):
            needed = trial
    classes = {KNOWN[q].cls for q in needed}
    r.verdict = QEMU_DEVIATION if QEMU_DEVIATION in classes else IMPDEF
    r.known = needed + tail
    return r
