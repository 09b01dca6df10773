"""STE and CD validation: raw 512-bit words to checked configurations.

Each ILLEGAL combination raises `BadConfig`, a `FaultError` carrying
C_BAD_STE or C_BAD_CD (the record stays architectural) plus `rule`, the
human-readable reason, for logs, triage and tests.
Rules follow IHI 0070 (STE/CD field descriptions) as summarised in
shared/reference/smmu-anchors.md §1; where this model picks one of several
CONSTRAINED UNPREDICTABLE behaviours the choice is noted inline.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch.faults import Fault, FaultError
from ..arch.features import STALL_MODEL, Features
from ..arch.layouts import CD, STE, TG0_GRANULE, TG1_GRANULE, Config, Event
from .walk import S1Config, S2Config, s2_geometry

S1_FMT_LINEAR, S1_FMT_2LVL_4K, S1_FMT_2LVL_64K = 0, 1, 2
DSS_TERMINATE, DSS_BYPASS, DSS_SUBSTREAM0 = 0, 1, 2
EATS_ABORT, EATS_TRANSLATE, EATS_S1CHK = 0, 1, 2


class BadConfig(FaultError):
    """C_BAD_STE / C_BAD_CD with the rule that rejected the structure."""

    def __init__(self, event: Event, rule: str):
        super().__init__(Fault(event))
        self.rule = rule

    def __str__(self) -> str:
        return f"{self.fault.event.name}: {self.rule}"


@dataclass(frozen=True)
class StreamConfig:
    """A valid STE, decoded."""

    config: Config
    vmid: int  # tags TLB entries; S2VMID, also for stage-1-only streams when S2P
    s2: S2Config | None
    s2_record: bool  # S2R
    ctx_ptr: int = 0  # S1ContextPtr (an IPA when nested)
    s1_fmt: int = S1_FMT_LINEAR
    s1_cdmax: int = 0  # log2 of the number of CDs
    s1_dss: int = DSS_TERMINATE
    eats: int = EATS_ABORT
    word: int = 0  # the raw STE, for the invariant checkers

    @property
    def stage1(self) -> bool:
        return self.config in (Config.S1_TRANS, Config.NESTED)


@dataclass(frozen=True)
class ContextConfig:
    """A valid CD, decoded."""

    s1: S1Config
    record: bool  # CD.R
    word: int = 0


def _bad_ste(rule: str) -> BadConfig:
    return BadConfig(Event.C_BAD_STE, rule)


def _bad_cd(rule: str) -> BadConfig:
    return BadConfig(Event.C_BAD_CD, rule)


def decode_ste(word: int, feat: Features) -> StreamConfig:
    s = STE.decode(word)
    if not s.V:
        raise _bad_ste("V=0")
    # IHI 0070 §5.2 STE.Config: 0b001-0b011 are reserved and behave as 0b000 (abort,
    # no event).
    config = Config(s.CONFIG) if s.CONFIG & 0b100 else Config.ABORT
    if config in (Config.ABORT, Config.BYPASS):
        return StreamConfig(config, vmid=0, s2=None, s2_record=False, word=word)
    stage1 = config in (Config.S1_TRANS, Config.NESTED)
    stage2 = config in (Config.S2_TRANS, Config.NESTED)
    if stage1 and not feat.s1p:
        raise _bad_ste("stage 1 enabled but IDR0.S1P=0")
    if stage2 and not feat.s2p:
        raise _bad_ste("stage 2 enabled but IDR0.S2P=0")
    # IHI 0070 §5.2 STE.STRW is IGNORED with stage 2 enabled; a Non-secure STE on an
    # SMMU without IDR0.HYP has only NS-EL1 (0bx1 is ILLEGAL, 0b10 RES0, CONSTRAINED
    # UNPREDICTABLE: ILLEGAL here too).
    if s.STRW != 0 and config == Config.S1_TRANS:
        raise _bad_ste("STRW selects EL2/EL3 but IDR0.HYP=0")
    # IHI 0070 §5.2 STE.EATS is IGNORED without IDR0.ATS; split-stage (0b10) is ILLEGAL
    # unless nested; 0b11 is "full ATS with DPT checks", reserved without IDR3.DPT (not
    # implemented here) and behaving as 0b00.
    if feat.ats and s.EATS == EATS_S1CHK and config != Config.NESTED:
        raise _bad_ste(f"EATS={s.EATS} not valid for Config {config.name}")
    eats = s.EATS if feat.ats and s.EATS != 0b11 else EATS_ABORT

    s2 = _decode_s2(s, feat) if stage2 else None
    vmid = s.S2VMID if feat.vmid16 else s.S2VMID & 0xFF
    if not stage1:
        return StreamConfig(config, vmid=vmid, s2=s2, s2_record=bool(s.S2R), eats=eats, word=word)

    if s.S1STALLD and STALL_MODEL != 0b00:
        # IHI 0070 §5.2 STE.S1STALLD: ILLEGAL with stage 1 enabled unless stalls are
        # supported and not forced (IDR0.STALL_MODEL=0b00).
        raise _bad_ste(f"S1STALLD=1 but IDR0.STALL_MODEL={STALL_MODEL:#04b}")
    if s.S1CDMAX > feat.ssidsize:
        raise _bad_ste(f"S1CDMax={s.S1CDMAX} beyond IDR1.SSIDSIZE={feat.ssidsize}")
    # IHI 0070 §5.2 STE.S1Fmt, STE.S1DSS: both are IGNORED with a single CD, and their
    # reserved 0b11 behaves as 0b00 (a linear CD table; terminate).
    fmt = s.S1FMT if s.S1CDMAX and s.S1FMT != 0b11 else S1_FMT_LINEAR
    if fmt != S1_FMT_LINEAR and not feat.cd_2lvl:
        raise _bad_ste("2-level CD table but IDR0.CD2L=0")
    dss = s.S1DSS if s.S1DSS != 0b11 else DSS_TERMINATE
    # IHI 0070 §5.2 STE.S1ContextPtr: a PA within the OAS, or with stage 2 an IPA within
    # the IAS; out of range is CONSTRAINED UNPREDICTABLE (§3.4.3), ILLEGAL being one of
    # the permitted behaviours and the one chosen here.
    ctx_limit = feat.ias_bits if s2 else feat.oas_bits
    if s.S1CONTEXTPTR >> ctx_limit:
        raise _bad_ste(f"S1ContextPtr {s.S1CONTEXTPTR:#x} beyond {ctx_limit}-bit address size")
    return StreamConfig(
        config, vmid=vmid if feat.s2p else 0, s2=s2, s2_record=bool(s.S2R),
        ctx_ptr=s.S1CONTEXTPTR, s1_fmt=fmt, s1_cdmax=s.S1CDMAX, s1_dss=dss,
        eats=eats, word=word,
    )


def _decode_s2(s, feat: Features) -> S2Config:
    granule = TG0_GRANULE.get(s.S2TG)
    if granule is None or granule not in feat.granules:
        raise _bad_ste(f"S2TG={s.S2TG} is reserved or not implemented")
    if not s.S2AA64:
        raise _bad_ste("S2AA64=0: AArch32 stage-2 tables are not implemented")
    if s.S2ENDI:
        raise _bad_ste("S2ENDI=1: big-endian tables are not implemented (IDR0.TTENDIAN=LE)")
    if s.S2S:
        raise _bad_ste("S2S=1: stall model not implemented (IDR0.STALL_MODEL=0b01)")
    if s.S2HA or s.S2HD:
        raise _bad_ste("S2HA/S2HD set but IDR0.HTTU=0")
    ps_bits = feat.pa_bits(s.S2PS)
    if granule != 65536:
        ps_bits = min(ps_bits, 48)  # 52-bit output needs the 64K granule (no LPA2)
    # IHI 0070 §5.2 STE.S2T0SZ: the smallest valid value follows from the input
    # address size, not from S2PS (which bounds the output only): 64-IAS with the 64K
    # granule, MAX(16, 64-IAS) with 4K/16K (no S2DS); out of range is ILLEGAL from
    # SMMUv3.1.  QEMU bounds it by the effective S2PS instead (fuzz/peers/divergences.py).
    ias = feat.ias_bits
    min_t0sz = 64 - ias if granule == 65536 else max(16, 64 - ias)
    if not min_t0sz <= s.S2T0SZ <= 39:
        raise _bad_ste(f"S2T0SZ={s.S2T0SZ} outside {min_t0sz}..39 for a {ias}-bit IAS")
    geometry = s2_geometry(s.S2T0SZ, s.S2SL0, granule, pa_max=feat.oas_bits)
    if geometry is None:
        raise _bad_ste(f"S2SL0={s.S2SL0} inconsistent with S2T0SZ={s.S2T0SZ}, granule {granule}")
    if s.S2TTB >> ps_bits:
        raise _bad_ste(f"S2TTB {s.S2TTB:#x} beyond the {ps_bits}-bit S2PS")
    return S2Config(
        t0sz=s.S2T0SZ, sl0=s.S2SL0, granule=granule, ps_bits=ps_bits, ttb=s.S2TTB,
        affd=bool(s.S2AFFD), vmid=s.S2VMID if feat.vmid16 else s.S2VMID & 0xFF,
        ptw=bool(s.S2PTW), xnx=feat.xnx,
    )


def decode_cd(word: int, feat: Features) -> ContextConfig:
    c = CD.decode(word)
    if not c.V:
        raise _bad_cd("V=0")
    if not c.AA64:
        raise _bad_cd("AA64=0: AArch32 stage-1 tables are not implemented")
    if c.ENDI:
        raise _bad_cd("ENDI=1: big-endian tables are not implemented")
    if not c.A:
        raise _bad_cd("A=0 with IDR0.TERM_MODEL=1")  # IHI 0070 §5.5
    if c.S:
        raise _bad_cd("S=1: stall model not implemented")
    if c.HA or c.HD:
        raise _bad_cd("HA/HD set but IDR0.HTTU=0")
    oa_bits = feat.pa_bits(c.IPS)
    halves = []
    for n, tsz, tg, epd, ttb, table in (
        (0, c.T0SZ, c.TG0, c.EPD0, c.TTB0, TG0_GRANULE),
        (1, c.T1SZ, c.TG1, c.EPD1, c.TTB1, TG1_GRANULE),
    ):
        granule = table.get(tg)
        if not epd:  # a disabled half's fields are ignored
            if granule is None or granule not in feat.granules:
                raise _bad_cd(f"TG{n}={tg} is reserved or not implemented")
            if not 16 <= tsz <= 39:
                raise _bad_cd(f"T{n}SZ={tsz} outside 16..39")
            if ttb >> oa_bits:
                raise _bad_cd(f"TTB{n} {ttb:#x} beyond the {oa_bits}-bit IPS")
        halves.append(granule or 4096)
    s1 = S1Config(
        t0sz=c.T0SZ, t1sz=c.T1SZ, tg0=halves[0], tg1=halves[1],
        epd0=bool(c.EPD0), epd1=bool(c.EPD1), ttb0=c.TTB0, ttb1=c.TTB1,
        oa_bits=oa_bits, tbi0=bool(c.TBI & 1), tbi1=bool(c.TBI & 2), affd=bool(c.AFFD),
        had0=bool(c.HAD0) and feat.had, had1=bool(c.HAD1) and feat.had,
        wxn=bool(c.WXN), uwxn=bool(c.UWXN),
        asid=c.ASID if feat.asid16 else c.ASID & 0xFF,
    )
    return ContextConfig(s1=s1, record=bool(c.R), word=word)
