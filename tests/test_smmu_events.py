"""Device-level tests of vsmmu.hw.smmu: every event the model produces, read back as raw
records from the event-queue memory, and the rules for when a record is written.

Records are compared as four 64-bit dwords (dword 0 first), each a literal worked out
by hand from the event record format (IHI 0070 §7.3):

  dword 0   EventID [7:0], SSV [11], SubstreamID [31:12], StreamID [63:32]
  dword 1   (record bits 127:64) PnU bit 33, InD bit 34, RnW bit 35, S2 bit 39,
            CLASS [41:40] (0b00 CD, 0b01 TT, 0b10 IN), TTRnW bit 44
  dword 2   InputAddr
  dword 3   FetchAddr [51:3] or IPA [51:12], both in place (low bits zero)

so in dword 1:  RnW 0x0000_0008_0000_0000   S2 0x0000_0080_0000_0000
                CLASS=IN 0x0000_0200_0000_0000   CLASS=TT 0x0000_0100_0000_0000
                TTRnW 0x0000_1000_0000_0000     PnU 0x0000_0002_0000_0000
Configuration errors (C_*) and fetch aborts carry no transaction fields: their
dwords 1-2 are zero.  Unless a test says otherwise the stream is SID 8 on the
qemu-peer.md §4 stage-1 setup (see tests/smmu_env.py), so dword 0 is
0x0000_0008_0000_00ID.
"""

from __future__ import annotations

import pytest
from smmu_env import (
    CDS,
    CMDQEN,
    CR0,
    CR0ACK,
    DATA,
    EVENTQ_BASE,
    EVENTQ_CONS,
    EVENTQ_IRQ_CFG0,
    EVENTQ_IRQ_CFG1,
    EVENTQ_PROD,
    EVENTQEN,
    EVTQ,
    GBPA,
    GERROR,
    GERROR_IRQ_CFG0,
    GERROR_IRQ_CFG1,
    GERRORN,
    IDR0,
    IDR1,
    IRQ_CTRL,
    IRQ_CTRLACK,
    MSI,
    PT,
    QEMU_CD_W0,
    QEMU_CD_W1,
    QEMU_CD_W2,
    QEMU_STE_W0,
    S2PT,
    SMMUEN,
    STRTAB,
    STRTAB_BASE,
    UNBACKED,
    Env,
    command,
    s2_fields,
    words,
)

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import STE, Event, Op


def s1_env(**setup) -> Env:
    env = Env().setup(**setup)
    env.qemu_s1()
    return env


def one_event(env: Env) -> tuple[int, int, int, int]:
    evs = env.events()
    assert len(evs) == 1, evs
    return evs[0]


# ================================================================ F_UUT (0x01)
def test_f_uut_atomic_write():
    env = s1_env()
    r = env.dma(8, 0x200000, 8, write=True, data=b"\xaa" * 8, atomic=True)
    assert not r.ok and r.fault.event == Event.F_UUT and r.recorded
    assert env.mem.read(DATA, 8) == bytes(8)  # nothing written
    # write: RnW=0, no S2/CLASS (not a walk fault)
    assert env.events() == [(0x0000_0008_0000_0001, 0, 0x200000, 0)]


def test_f_uut_atomic_privileged_read():
    env = s1_env()
    env.dma(8, 0x200040, 4, atomic=True, priv=True)
    # RnW 0x8_0000_0000 | PnU 0x2_0000_0000
    assert env.events() == [(0x0000_0008_0000_0001, 0x0000_000A_0000_0000, 0x200040, 0)]


# ================================================================ C_BAD_STREAMID (0x02)
def test_c_bad_streamid_linear_log2size():
    env = Env().setup(log2size=8)  # 256 STEs: SIDs 0..255
    r = env.dma(256, 0x1000)
    assert not r.ok and r.recorded
    assert env.events() == [(0x0000_0100_0000_0002, 0, 0, 0)]  # SID 0x100


def test_c_bad_streamid_clamped_to_sidsize():
    """LOG2SIZE=8 but IDR1.SIDSIZE=6: the table is 2^min(8, 6) = 64 STEs."""
    env = Env(Features(sidsize=6))
    assert env.r(IDR1) & 0x3F == 6
    env.setup(log2size=8)
    env.put_ste(64, QEMU_STE_W0)  # would be valid if the SMMU fetched it
    env.dma(64, 0x1000)
    env.dma(63, 0x1000)  # in range: its STE is all zero, V=0
    assert env.events() == [
        (0x0000_0040_0000_0002, 0, 0, 0),  # SID 64: C_BAD_STREAMID
        (0x0000_003F_0000_0004, 0, 0, 0),  # SID 63: C_BAD_STE
    ]


def test_c_bad_streamid_two_level_span_zero():
    env = Env().setup(two_level=True, log2size=16, split=8)
    # SID 0x1234: L1 index 0x12 at STRTAB + 0x90; SPAN=0 means "no level-2 table".
    env.put(STRTAB + 0x12 * 8, 0x42000000 | 0)
    env.mem.add(0x42000000, 0x4000)
    env.dma(0x1234, 0x1000)
    assert env.events() == [(0x0000_1234_0000_0002, 0, 0, 0)]


def test_c_bad_streamid_two_level_index_beyond_span():
    env = Env().setup(two_level=True, log2size=16, split=8)
    env.mem.add(0x42000000, 0x4000)
    # SPAN=2: the level-2 table holds 2^(2-1) = 2 STEs, for SIDs 0x1200 and 0x1201.
    env.put(STRTAB + 0x12 * 8, 0x42000000 | 2)
    env.put(0x42000000 + 1 * 64, 0x9, 8)  # SID 0x1201: V=1, Config=0b100 bypass
    env.put(0x42000000 + 2 * 64, 0x9, 8)  # beyond SPAN: must never be used
    assert env.dma(0x1201, DATA).ok
    env.dma(0x1202, DATA)
    assert env.events() == [(0x0000_1202_0000_0002, 0, 0, 0)]


def test_c_bad_streamid_span_above_split_plus_one():
    """IHI 0070 §5.1.1, §7.3.3: an L1 descriptor with Span > SPLIT+1 is an invalid
    StreamID, and so is one with a reserved Span (12..31 behave as 0)."""
    env = Env().setup(two_level=True, log2size=16, split=6)
    env.mem.add(0x42000000, 0x4000)
    env.put(0x42000000 + 0x34 * 64, 0x9, 8)  # SID 0x1234's STE: V=1, bypass
    env.put(STRTAB + 0x48 * 8, 0x42000000 | 7)  # SPLIT 6: Span 7 = SPLIT+1 is the largest
    assert env.dma(0x1234, DATA).ok
    env.put(STRTAB + 0x48 * 8, 0x42000000 | 8)
    env.cmd(command(Op.CFGI_STE, SID=0x1234, LEAF=1), command(Op.SYNC))
    env.dma(0x1234, DATA)
    env.setup(two_level=True, log2size=16, split=10)
    env.put(STRTAB + 0x4 * 8, 0x42000000 | 12)  # reserved Span, above SPLIT+1 = 11 too
    env.dma(0x1234, DATA)
    assert env.events() == [(0x0000_1234_0000_0002, 0, 0, 0)] * 2


RECINVSID_CASES = {  # (setup keywords, descriptor to install, SID)
    "beyond LOG2SIZE": (dict(log2size=8), None, 256),
    "L1 Span=0": (dict(two_level=True, log2size=16, split=8), (STRTAB + 0x12 * 8, 0), 0x1234),
}


@pytest.mark.parametrize("recinvsid", [True, False])
@pytest.mark.parametrize("case", RECINVSID_CASES.values(), ids=RECINVSID_CASES.keys())
def test_recinvsid_decides_whether_c_bad_streamid_is_recorded(case, recinvsid):
    """IHI 0070 §6.3.12 CR2.RECINVSID (bit 1), §7.3.3: an invalid StreamID always
    terminates the transaction; C_BAD_STREAMID is recorded only when RECINVSID=1."""
    setup, desc, sid = case
    env = Env().setup(recinvsid=recinvsid, **setup)
    if desc:
        env.put(*desc)
    r = env.dma(sid, 0x1000)
    assert not r.ok and r.fault.event == Event.C_BAD_STREAMID and r.recorded == recinvsid
    assert env.events() == ([(sid << 32 | 0x02, 0, 0, 0)] if recinvsid else [])
    assert env.r(GERROR) == 0  # not recording it is no error either


# ================================================================ F_STE_FETCH (0x03)
def test_f_ste_fetch_linear():
    env = Env().setup(enable=False)
    env.w(STRTAB_BASE, UNBACKED, 8)
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN)
    env.dma(8, 0x200000)
    # FetchAddr = 0x4f000000 + 8 * 64
    assert env.events() == [(0x0000_0008_0000_0003, 0, 0, 0x4F00_0200)]


def test_f_ste_fetch_two_level_l1_and_l2():
    env = Env().setup(two_level=True, log2size=16, split=8, enable=False)
    env.w(STRTAB_BASE, UNBACKED, 8)
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN)
    env.dma(0x1234, 0)  # L1 descriptor 0x12 at 0x4f000000 + 0x90
    assert one_event(env) == (0x0000_1234_0000_0003, 0, 0, 0x4F00_0090)

    env = Env().setup(two_level=True, log2size=16, split=8)
    env.put(STRTAB + 0x12 * 8, 0x4F100000 | 9)  # L2 table unbacked, SPAN=9
    env.dma(0x1234, 0)  # STE 0x34 of the L2 table: 0x4f100000 + 0x34 * 64
    assert one_event(env) == (0x0000_1234_0000_0003, 0, 0, 0x4F10_0D00)


# ================================================================ C_BAD_STE (0x04)
S1 = dict(V=1, CONFIG=0b101, S1CONTEXTPTR=CDS)
S2 = dict(V=1, CONFIG=0b110)
BAD_STES = {
    "V=0": words(QEMU_STE_W0 & ~1),
    "S2TG=3": STE.encode(**S2, **s2_fields(S2TG=3)),
    "S2SL0=2 with S2T0SZ=25 (4K: start level 0 needs > 39 bits)": STE.encode(
        **S2, **s2_fields(S2SL0=2)),
    "S2SL0=3": STE.encode(**S2, **s2_fields(S2SL0=3)),
    # §5.2 STE.S2T0SZ: MAX(16, 64-IAS)..39 with 4K, IAS = OAS = 48 bits, whatever S2PS
    "S2T0SZ=15 (4K, 48-bit IAS allows 16..39)": STE.encode(**S2, **s2_fields(S2T0SZ=15)),
    "S2T0SZ=40": STE.encode(**S2, **s2_fields(S2T0SZ=40)),
    "S2AA64=0": STE.encode(**S2, **s2_fields(S2AA64=0)),
    "S2ENDI=1": STE.encode(**S2, **s2_fields(S2ENDI=1)),
    "S2S=1": STE.encode(**S2, **s2_fields(S2S=1)),
    "S2HA=1": STE.encode(**S2, **s2_fields(S2HA=1)),
    "S2HD=1": STE.encode(**S2, **s2_fields(S2HD=1)),
    "S2TTB at 2^44 with S2PS=44 bits": STE.encode(**S2, **s2_fields(ttb=1 << 44)),
    "nested S2AA64=0": STE.encode(V=1, CONFIG=0b111, S1CONTEXTPTR=CDS,
                                  **s2_fields(S2AA64=0)),
    "S1CDMax=9 > SSIDSIZE=8": STE.encode(**S1, S1CDMAX=9),
    # Model choice (bits above the OAS are RES0, CONSTRAINED UNPREDICTABLE): ILLEGAL
    "S1ContextPtr at 2^48, beyond the 48-bit OAS": STE.encode(V=1, CONFIG=0b101,
                                                              S1CONTEXTPTR=1 << 48),
    "EATS=2 on a stage-1-only stream": STE.encode(**S1, EATS=2),
    "STRW=EL2 without IDR0.HYP": STE.encode(**S1, STRW=2),
    # §5.2 STE.S1STALLD: ILLEGAL with stage 1 unless IDR0.STALL_MODEL=0b00 (here 0b01)
    "S1STALLD=1 without stall support": STE.encode(**S1, S1STALLD=1),
    "nested S1STALLD=1 without stall support": STE.encode(V=1, CONFIG=0b111,
                                                          S1CONTEXTPTR=CDS, S1STALLD=1,
                                                          **s2_fields()),
}


@pytest.mark.parametrize("ste", BAD_STES.values(), ids=BAD_STES.keys())
def test_c_bad_ste(ste):
    env = s1_env()
    env.put_ste(8, ste)
    r = env.dma(8, 0x200000)
    assert not r.ok and r.recorded and r.fault.event == Event.C_BAD_STE
    assert env.events() == [(0x0000_0008_0000_0004, 0, 0, 0)]


def test_s2aa64_zero_does_not_crash():
    """QEMU asserts on S2AA64=0 (qemu-peer.md §6.4); here it is just an ILLEGAL STE."""
    env = s1_env()
    env.put_ste(8, STE.encode(**S2, **s2_fields(S2AA64=0)))
    for kw in ({}, {"write": True}, {"translated": True}):
        r = env.dma(8, 0x4000000, **kw)
        assert not r.ok and r.fault.event == Event.C_BAD_STE
    assert not env.smmu.ats_request(8, 0x4000000).ok
    env.cmd(command(Op.PREFETCH_CONFIG, SID=8))
    assert env.r(GERROR) == 0


LACKING = {  # (features, STE or None, CD words or None): the SMMU lacks what it names
    "Config=S1 without IDR0.S1P": (Features(s1p=False), STE.encode(**S1), None),
    "S1Fmt 2-level without IDR0.CD2L": (Features(cd_2lvl=False),
                                        STE.encode(**S1, S1CDMAX=1, S1FMT=1), None),
    "S2TG=64K without IDR5.GRAN64K": (Features(granules=frozenset({4096})),
                                      STE.encode(**S2, **s2_fields(S2TG=1)), None),
    # TG0 bits 7:6 = 0b01 (64K) in CD word 0
    "CD.TG0=64K without IDR5.GRAN64K": (Features(granules=frozenset({4096})), None,
                                        (0xC0000059, QEMU_CD_W1, QEMU_CD_W2, 0)),
}


@pytest.mark.parametrize("feat, ste, cd", LACKING.values(), ids=LACKING.keys())
def test_structure_using_a_feature_the_smmu_lacks_is_illegal(feat, ste, cd):
    """IHI 0070 §5.2 / §5.4: a field selecting what the ID registers do not
    advertise makes the STE (C_BAD_STE, 0x04) or CD (C_BAD_CD, 0x0A) ILLEGAL."""
    env = Env(feat).setup()
    env.qemu_s1()
    if ste is not None:
        env.put_ste(8, ste)
    if cd is not None:
        env.put_cd(CDS, words(*cd))
    assert not env.dma(8, 0x200000).ok
    assert env.events() == [(0x0000_0008_0000_0004 if ste is not None else
                             0x0000_0008_0000_000A, 0, 0, 0)]


def test_c_bad_ste_for_a_stage_the_smmu_lacks():
    env = Env(Features(s2p=False)).setup()
    env.put_ste(8, STE.encode(**S2, **s2_fields()))
    env.dma(8, 0x4000000)
    assert env.events() == [(0x0000_0008_0000_0004, 0, 0, 0)]


# ================================================================ F_BAD_ATS_TREQ (0x05)
def test_f_bad_ats_treq_eats_abort():
    env = s1_env()  # the qemu-peer STE has EATS=0
    r = env.smmu.ats_request(8, 0x200000)
    assert not r.ok and r.fault.event == Event.F_BAD_ATS_TREQ
    r = env.smmu.ats_request(8, 0x201000, write=True)
    assert not r.ok
    assert env.events() == [
        (0x0000_0008_0000_0005, 0x0000_0008_0000_0000, 0x200000, 0),  # read request: RnW
        (0x0000_0008_0000_0005, 0, 0x201000, 0),  # write request: RnW=0
    ]
    assert env.smmu.atc_lookup(8, 0x200000) is None


def test_ats_requests_record_only_f_bad_ats_treq():
    """IHI 0070 §3.9.1.2: a Translation Request to a bypass STE is UR with
    F_BAD_ATS_TREQ; to an abort STE UR and no event; a configuration error (here an
    invalid STE) is CA, recorded only with CR2.REC_CFG_ATS, which IDR0.ATSRECERR=0
    leaves out."""
    env = s1_env()
    env.put_ste(8, words(0x9))  # V=1, Config=0b100: bypass
    env.put_ste(9, words(0x1))  # abort
    env.put_ste(10, 0)  # V=0
    r = env.smmu.ats_request(8, 0x1000)
    assert not r.ok and r.fault.event == Event.F_BAD_ATS_TREQ
    assert not env.smmu.ats_request(9, 0x1000).ok
    r = env.smmu.ats_request(10, 0x1000)
    assert not r.ok and r.fault.event == Event.C_BAD_STE
    # F_BAD_ATS_TREQ, SID 8, a read request (RnW, word 1 bit 35), InputAddr 0x1000
    assert env.events() == [(0x0000_0008_0000_0005, 0x0000_0008_0000_0000, 0x1000, 0)]


def test_ats_translated_transactions_record_no_configuration_error():
    """IHI 0070 §3.9.1.3: a Translated transaction that hits a configuration error
    (an invalid STE) or is unsupported (an atomic: F_UUT) is aborted with no event
    unless CR2.REC_CFG_ATS=1, which this SMMU lacks."""
    env = s1_env()
    env.put_ste(10, 0)
    r = env.dma(10, DATA, translated=True)
    assert not r.ok and r.fault.event == Event.C_BAD_STE and not r.recorded
    r = env.dma(8, DATA, write=True, translated=True, atomic=True)
    assert not r.ok and r.fault.event == Event.F_UUT and not r.recorded
    assert env.events() == []


# ================================================================ F_STREAM_DISABLED (0x06)
def test_f_stream_disabled():
    env = s1_env()
    # two CDs (S1CDMax=1) and S1DSS=terminate: a transaction without SSID is refused
    env.put_ste(8, STE.encode(**S1, S1CDMAX=1, S1DSS=0))
    r = env.dma(8, 0x200000)
    assert not r.ok and r.fault.event == Event.F_STREAM_DISABLED
    assert env.events() == [(0x0000_0008_0000_0006, 0, 0, 0)]


def test_reserved_config_behaves_as_abort():
    """IHI 0070 §5.2 STE.Config: 0b001-0b011 are reserved and behave as 0b000: the
    transaction is terminated, no event recorded (§7.3.7)."""
    env = s1_env()
    for config_dword in (0x3, 0x5, 0x7):  # V=1, Config 0b001 / 0b010 / 0b011
        env.put_ste(8, words(config_dword))
        r = env.dma(8, 0x200000)
        assert not r.ok and r.fault is None and not r.recorded
    assert env.events() == []


def test_reserved_s1fmt_and_s1dss_behave_as_0b00():
    """IHI 0070 §5.2: S1Fmt 0b11 behaves as 0b00 (a linear CD table); S1DSS 0b11 as
    0b00 (a transaction without a substream is terminated with F_STREAM_DISABLED)."""
    env = s1_env()
    env.put_cd(CDS + 64, words(QEMU_CD_W0, QEMU_CD_W1, QEMU_CD_W2))  # CD 1, linear
    env.put_ste(8, STE.encode(**S1, S1CDMAX=1, S1FMT=3, S1DSS=3))
    assert env.dma(8, 0x200000, ssid=1).pa == 0x44000000  # CD 1 at CDS + 64
    assert not env.dma(8, 0x200000).ok
    assert env.events() == [(0x0000_0008_0000_0006, 0, 0, 0)]


def test_eats_0b11_behaves_as_0b00_without_dpt():
    """IHI 0070 §5.2 STE.EATS: 0b11 (full ATS with DPT checks) is reserved when
    IDR3.DPT=0 and behaves as 0b00: a translation request gets F_BAD_ATS_TREQ."""
    env = s1_env()
    env.put_ste(8, STE.encode(**S1, EATS=3))
    assert env.dma(8, 0x200000).pa == 0x44000000  # the STE is valid
    r = env.smmu.ats_request(8, 0x200000)
    assert not r.ok and r.fault.event == Event.F_BAD_ATS_TREQ


def test_fields_ignored_where_the_architecture_ignores_them():
    """IHI 0070 §5.2: STE.STRW is IGNORED with stage 2 enabled, STE.EATS without
    IDR0.ATS; neither can then make the STE ILLEGAL."""
    env = Env().setup()
    env.s2_only(STRW=2)  # EL2 would be ILLEGAL on a stage-1-only STE (IDR0.HYP=0)
    assert env.dma(8, 0x04000800).pa == 0x44000800
    no_ats = Env(Features(ats=False)).setup()
    no_ats.qemu_s1()
    no_ats.put_ste(8, STE.encode(**S1, EATS=2))  # split-stage without nesting
    assert no_ats.dma(8, 0x200000).pa == 0x44000000
    assert env.events() == no_ats.events() == []


def test_s1dss_bypass_and_substream0():
    env = s1_env()
    env.put_ste(8, STE.encode(**S1, S1CDMAX=1, S1DSS=1))  # bypass stage 1
    assert env.dma(8, DATA + 0x40).pa == DATA + 0x40
    env.put_ste(9, STE.encode(**S1, S1CDMAX=1, S1DSS=2))  # use CD 0
    assert env.dma(9, 0x200040).pa == 0x44000040
    assert env.events() == []


# ================================================================ F_TRANS_FORBIDDEN (0x07)
def test_f_trans_forbidden():
    env = s1_env()  # EATS=0: ATS-translated transactions are not allowed
    r = env.dma(8, DATA, 4, write=True, data=b"\x11" * 4, translated=True)
    assert not r.ok and r.fault.event == Event.F_TRANS_FORBIDDEN
    assert env.mem.read(DATA, 4) == bytes(4)
    assert env.events() == [(0x0000_0008_0000_0007, 0, 0x44000000, 0)]  # write: RnW=0
    # With EATS=1 (STE bit 92 = word 2 bit 28) the address is already a PA.
    env.put_ste(9, words(QEMU_STE_W0, 0, 0x10000000))
    r = env.dma(9, DATA, 4, write=True, data=b"\x11" * 4, translated=True)
    assert r.ok and env.mem.read(DATA, 4) == b"\x11" * 4


# ================================================================ C_BAD_SUBSTREAMID (0x08)
def test_c_bad_substreamid_on_bypass_and_s2_streams():
    env = s1_env()
    env.put_ste(8, words(0x9))  # bypass
    env.s2_only(sid=9)
    env.dma(8, DATA, ssid=1)
    env.dma(9, 0x4000000, ssid=1)
    # dword 0: ID 0x08 | SSV 0x800 | SSID 1 << 12
    assert env.events() == [
        (0x0000_0008_0000_1808, 0, 0, 0),
        (0x0000_0009_0000_1808, 0, 0, 0),
    ]


def test_c_bad_substreamid_ranges():
    env = s1_env()
    env.put_ste(8, QEMU_STE_W0)  # S1CDMax=0: no substreams at all
    env.put_ste(9, STE.encode(**S1, S1CDMAX=1))  # SSIDs 0 and 1
    env.put_ste(10, STE.encode(**S1, S1CDMAX=1, S1DSS=2))  # SSID 0 is reserved for no-SSID
    env.put_cd(CDS + 64, words(QEMU_CD_W0, QEMU_CD_W1, QEMU_CD_W2))  # CD 1
    assert env.dma(9, 0x200000, ssid=1).pa == 0x44000000
    env.dma(8, 0x200000, ssid=1)
    env.dma(9, 0x200000, ssid=2)
    env.dma(10, 0x200000, ssid=0)
    assert env.events() == [
        (0x0000_0008_0000_1808, 0, 0, 0),  # SSID 1, S1CDMax=0
        (0x0000_0009_0000_2808, 0, 0, 0),  # SSID 2 >= 2^1
        # SSV=1 SSID=0 with S1DSS=substream0: §5.2 STE.S1DSS 0b10 terminates it with
        # F_STREAM_DISABLED (0x06), not C_BAD_SUBSTREAMID
        (0x0000_000A_0000_0806, 0, 0, 0),
    ]


def test_c_bad_substreamid_invalid_l1cd():
    env = s1_env()
    # 2-level CD table, 4K leaves (64 CDs each), 256 SSIDs: L1CD[1] covers SSIDs 64..127.
    env.put_ste(8, STE.encode(**S1, S1CDMAX=8, S1FMT=1))
    env.put(CDS + 8, 0x41301000)  # L1CD[1]: L2Ptr, V=0
    env.dma(8, 0x200000, ssid=0x45)
    assert env.events() == [(0x0000_0008_0004_5808, 0, 0, 0)]  # SSV | SSID 0x45 << 12


# ================================================================ F_CD_FETCH (0x09)
def test_f_cd_fetch():
    env = s1_env()
    env.put_ste(8, words(UNBACKED | 0xB))
    env.put_ste(9, STE.encode(V=1, CONFIG=0b101, S1CONTEXTPTR=UNBACKED, S1CDMAX=2))
    env.dma(8, 0x200000)
    env.dma(9, 0x200000, ssid=3)
    assert env.events() == [
        (0x0000_0008_0000_0009, 0, 0, 0x4F00_0000),
        (0x0000_0009_0000_3809, 0, 0, 0x4F00_00C0),  # CD 3 at +3 * 64; SSV, SSID 3
    ]


def test_f_cd_fetch_two_level_leaf():
    env = s1_env()
    env.put_ste(8, STE.encode(**S1, S1CDMAX=8, S1FMT=1))
    env.put(CDS + 8, UNBACKED | 1)  # L1CD[1]: valid, leaf unbacked
    env.dma(8, 0x200000, ssid=0x45)  # CD 5 of that leaf: 0x4f000000 + 5 * 64
    assert env.events() == [(0x0000_0008_0004_5809, 0, 0, 0x4F00_0140)]


# ================================================================ C_BAD_CD (0x0a)
BAD_CDS = {
    "V=0": (0x40000019, QEMU_CD_W1, QEMU_CD_W2, 0),
    "AA64=0": (QEMU_CD_W0, 0x00016005, QEMU_CD_W2, 0),  # bit 41 = word 1 bit 9
    "A=0": (QEMU_CD_W0, 0x00012205, QEMU_CD_W2, 0),  # bit 46 = word 1 bit 14
    "ENDI=1": (0xC0008019, QEMU_CD_W1, QEMU_CD_W2, 0),  # bit 15
    "S=1": (QEMU_CD_W0, 0x00017205, QEMU_CD_W2, 0),  # bit 44 = word 1 bit 12
    "HA=1": (QEMU_CD_W0, 0x00016A05, QEMU_CD_W2, 0),  # bit 43 = word 1 bit 11
    "HD=1": (QEMU_CD_W0, 0x00016605, QEMU_CD_W2, 0),  # bit 42 = word 1 bit 10
    "T0SZ=40": (0xC0000028, QEMU_CD_W1, QEMU_CD_W2, 0),
    "T0SZ=15": (0xC000000F, QEMU_CD_W1, QEMU_CD_W2, 0),
    "TG0=3": (0xC00000D9, QEMU_CD_W1, QEMU_CD_W2, 0),  # bits 7:6
    # EPD1=0 enables the TTB1 half, whose TG1=0b00 is reserved (and T1SZ=0 out of range)
    "TTB1 half enabled with TG1=0": (0x80000019, QEMU_CD_W1, QEMU_CD_W2, 0),
    # IPS=0 (32 bits) and TTB0 = 0x1_0000_0000: TTB0 holds address bits 51:4 at CD bits
    # 115:68, so address bit 32 is CD bit 96 = word 3 bit 0
    "TTB0 beyond IPS": (QEMU_CD_W0, 0x00016200, 0, 0x1),
}


@pytest.mark.parametrize("cd", BAD_CDS.values(), ids=BAD_CDS.keys())
def test_c_bad_cd(cd):
    env = s1_env()
    env.put_cd(CDS, words(*cd))
    r = env.dma(8, 0x200000)
    assert not r.ok and r.recorded and r.fault.event == Event.C_BAD_CD
    assert env.events() == [(0x0000_0008_0000_000A, 0, 0, 0)]


def test_c_bad_cd_recorded_even_with_r0():
    env = s1_env()
    env.put_cd(CDS, words(0xC0000028, 0x00014205, QEMU_CD_W2))  # T0SZ=40 and R=0
    env.dma(8, 0x200000)
    assert env.events() == [(0x0000_0008_0000_000A, 0, 0, 0)]


# ================================================================ F_WALK_EABT (0x0b)
def test_f_walk_eabt_stage1():
    env = s1_env()
    env.put_cd(CDS, words(QEMU_CD_W0, 0x00014205, UNBACKED))  # TTB0 unbacked, and R=0
    env.dma(8, 0x200000)
    # always recorded; CLASS=TT, TTRnW: the failed access was a table read
    # dword 1 = RnW 0x8_0000_0000 | TT 0x100_0000_0000 | TTRnW 0x1000_0000_0000
    assert env.events() == [(0x0000_0008_0000_000B, 0x0000_1108_0000_0000, 0x200000,
                             0x4F00_0000)]


def test_f_walk_eabt_stage1_leaf_table():
    env = s1_env()
    env.put(PT + 0x1000 + 8, 0x4F002003)  # L2[1] -> unbacked L3 table
    env.dma(8, 0x201000, write=True)  # L3 index 1: fetch 0x4f002008
    assert env.events() == [(0x0000_0008_0000_000B, 0x0000_1100_0000_0000, 0x201000,
                             0x4F00_2008)]


def test_f_walk_eabt_stage2():
    env = s1_env()
    env.s2_only(ttb=UNBACKED)
    env.dma(8, 0x4000800)  # S2 L1 index 0: fetch 0x4f000000
    # RnW | S2 0x80_0000_0000 | CLASS=IN 0x200_0000_0000
    assert env.events() == [(0x0000_0008_0000_000B, 0x0000_0288_0000_0000, 0x4000800,
                             0x4F00_0000)]


# ================================================================ F_TRANSLATION (0x10)
def test_f_translation_s1_hole_matches_qemu():
    """qemu-peer.md §4: a write to unmapped IOVA 0x300000 gives the words
    00000010 00000008 00000000 00000200 00300000 00000000 00000000 00000000 (QEMU 10)."""
    env = s1_env()
    r = env.dma(8, 0x300000, 64, write=True)
    assert not r.ok and r.recorded
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0200_0000_0000, 0x300000, 0)]


def test_f_translation_s2_hole():
    env = s1_env()
    env.s2_only()
    env.dma(8, 0x40000800)  # S2 L1 index 1: invalid
    # RnW | S2 | CLASS=IN; IPA with bits 11:0 clear
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0288_0000_0000, 0x40000800,
                             0x4000_0000)]


def test_f_translation_s2_ipa_beyond_s2t0sz():
    env = s1_env()
    env.s2_only()
    env.dma(8, 0x80_0000_0000)  # bit 39: outside the 39-bit IPA space
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0288_0000_0000, 0x80_0000_0000,
                             0x80_0000_0000)]


def test_nested_s1_leaf_into_s2_hole():
    env = s1_env()
    env.nested()
    env.put(PT + 0x12000 + 16, 0x50000743)  # L3[2]: IOVA 0x202000 -> IPA 0x50000000
    env.dma(8, 0x202000, write=True)
    # S2 | CLASS=IN (write: RnW=0); InputAddr is the IOVA, IPA the stage-1 output
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0280_0000_0000, 0x202000,
                             0x5000_0000)]


def test_nested_cd_pointer_outside_s2():
    env = s1_env()
    env.nested(ste=dict(S1CONTEXTPTR=0x60000000))
    env.dma(8, 0x200000)
    # RnW | S2 | CLASS=CD (0b00)
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0088_0000_0000, 0x200000,
                             0x6000_0000)]


def test_nested_ttb0_outside_s2():
    env = s1_env()
    env.nested()
    env.put_cd(CDS + 0x10000, words(QEMU_CD_W0, QEMU_CD_W1, 0x60000000))
    env.dma(8, 0x200000, write=True)
    # S2 | CLASS=TT | TTRnW; RnW=0 because the transaction was a write (QEMU says 1)
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_1180_0000_0000, 0x200000,
                             0x6000_0000)]


def test_nested_s1_hole_is_a_stage1_fault():
    env = s1_env()
    env.nested()
    env.dma(8, 0x300000)
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x300000, 0)]


# ================================================================ F_ADDR_SIZE (0x11)
def test_f_addr_size_stage1_output():
    env = s1_env()
    env.put_cd(CDS, words(QEMU_CD_W0, 0x00016200, QEMU_CD_W2))  # IPS=0: 32-bit output
    env.put(PT + 0x2000 + 3 * 8, 0x1_4400_3743)  # IOVA 0x203000 -> 0x1_4400_3000
    assert env.dma(8, 0x200000).ok  # below 2^32 still fine
    env.dma(8, 0x203000)
    assert env.events() == [(0x0000_0008_0000_0011, 0x0000_0208_0000_0000, 0x203000, 0)]


def test_f_addr_size_stage2_output():
    env = s1_env()
    # S2PS=0 (32 bits), S2T0SZ=32, S2SL0=1: a level-1 table of 4 entries
    env.s2_only(S2PS=0, S2T0SZ=32)
    env.put(S2PT, 0x1_4000_07FD)  # 1 GiB block at PA 0x1_4000_0000: beyond 32 bits
    env.dma(8, 0x1800)
    assert env.events() == [(0x0000_0008_0000_0011, 0x0000_0288_0000_0000, 0x1800, 0x1000)]


def test_f_addr_size_bypassed_stage1_input_beyond_oas():
    env = s1_env()
    env.s2_only()
    env.dma(8, 1 << 48)  # IDR5.OAS = 48 bits: a stage-1 (S2=0) address size fault
    assert env.events() == [(0x0000_0008_0000_0011, 0x0000_0208_0000_0000, 1 << 48, 0)]


# ================================================================ F_ACCESS (0x12)
def test_f_access_and_affd():
    env = s1_env()
    env.put(PT + 0x2000 + 4 * 8, 0x44004343)  # 0x743 without AF (bit 10)
    env.dma(8, 0x204000)
    assert env.events() == [(0x0000_0008_0000_0012, 0x0000_0208_0000_0000, 0x204000, 0)]
    env.put_ste(9, words(0x4130100B))  # SID 9: CD 0x41301000 with AFFD (bit 35)
    env.put_cd(CDS + 0x1000, words(QEMU_CD_W0, 0x0002620D, QEMU_CD_W2))  # ASID 2
    r = env.dma(9, 0x204000)
    assert r.ok and r.pa == 0x44004000
    assert env.events() == []


# ================================================================ F_PERMISSION (0x13)
def test_f_permission_s1_read_only():
    env = s1_env()
    assert env.dma(8, 0x201000).ok
    r = env.dma(8, 0x201000, 4, write=True, data=b"\xff" * 4)
    assert not r.ok and r.fault.event == Event.F_PERMISSION
    assert env.mem.read(0x44001000, 4) == bytes(4)
    assert env.events() == [(0x0000_0008_0000_0013, 0x0000_0200_0000_0000, 0x201000, 0)]


def test_privcfg_does_not_override_without_attr_perms_ovr():
    """IHI 0070 §5.2 STE.PRIVCFG is RES0 unless IDR1.ATTR_PERMS_OVR=1 (not here): a
    transaction without a PASID stays unprivileged (DDI 0487 D8.4: AP[1]=0 denies it)
    whatever PRIVCFG asks.  QEMU treats every access as privileged."""
    env = s1_env()
    env.put(PT + 0x2000, 0x44000703)  # IOVA 0x200000: AF, SH=IS, AP=0b00 (EL1 only)
    for privcfg in (0b00, 0b11):  # 0b11: "privileged", were overrides implemented
        env.put_ste(8, STE.encode(**S1, PRIVCFG=privcfg))
        env.cmd(command(Op.CFGI_STE, SID=8, LEAF=1), command(Op.SYNC))
        r = env.dma(8, 0x200000)
        assert not r.ok and r.fault.event == Event.F_PERMISSION
        assert env.dma(8, 0x200000, priv=True).ok


def test_f_permission_s2ap():
    env = s1_env()
    env.s2_only()
    env.put(S2PT, 0x4000077D)  # S2AP=0b01: read only (0x7fd without S2AP[1] 0x80)
    assert env.dma(8, 0x4000800).pa == 0x44000800
    env.dma(8, 0x4000800, write=True)
    assert env.events() == [(0x0000_0008_0000_0013, 0x0000_0280_0000_0000, 0x4000800,
                             0x400_0000)]


def test_nested_s1_permission_beats_s2_fault_on_output():
    """Stage 1 finishes, permission check included, before stage 2 translates its output
    address: a write to an S1 read-only page whose IPA has no S2 mapping is an S1
    F_PERMISSION (S2=0), not an S2 F_TRANSLATION."""
    env = s1_env()
    env.nested()
    env.put(PT + 0x12000 + 8, 0x500017C3)  # L3[1]: IOVA 0x201000 -> IPA 0x50001000, RO
    env.dma(8, 0x201000, write=True)
    assert env.events() == [(0x0000_0008_0000_0013, 0x0000_0200_0000_0000, 0x201000, 0)]
    env.dma(8, 0x201000)  # a read passes stage 1 and then faults in stage 2
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0288_0000_0000, 0x201000,
                             0x5000_1000)]


def test_nested_s2_permission_on_cached_entry():
    env = s1_env()
    env.nested()
    env.put(S2PT, 0x4000077D)  # S2 read-only
    assert env.dma(8, 0x200800).pa == 0x44000800
    env.dma(8, 0x200800, write=True)  # hits the combined TLB entry: S2 write denied
    assert env.events() == [(0x0000_0008_0000_0013, 0x0000_0280_0000_0000, 0x200800,
                             0x400_0000)]


# ================================================================ F_TLB_CONFLICT (0x20)
def test_f_tlb_conflict():
    env = s1_env()
    env.put(PT + 0x2000, 0x44010743)  # L3[0]: IOVA 0x200000 -> 0x44010000
    assert env.dma(8, 0x200000).pa == 0x44010000  # cached as a 4K entry
    # Replace the L3 table by a 2 MiB block, without TLBI (break-before-make broken).
    env.put(PT + 0x1000 + 8, 0x44000741)  # L2[1]: block 0x200000 -> 0x44000000
    assert env.dma(8, 0x201000).pa == 0x44001000  # cached as a 2 MiB entry
    r = env.dma(8, 0x200000)  # two entries, outputs 0x44010000 and 0x44000000
    assert not r.ok and r.fault.event == Event.F_TLB_CONFLICT
    assert env.events() == [(0x0000_0008_0000_0020, 0x0000_0008_0000_0000, 0x200000, 0)]
    env.cmd(command(Op.TLBI_NH_ASID, ASID=1), command(Op.SYNC))
    assert env.dma(8, 0x200000).pa == 0x44000000


# ================================================================ F_CFG_CONFLICT (0x21)
def test_f_cfg_conflict():
    env = s1_env()
    # SID 9: same VMID (0), a CD with the same ASID 1 but another TTB0.
    env.put_ste(9, words(0x4130100B))
    env.put_cd(CDS + 0x1000, words(QEMU_CD_W0, QEMU_CD_W1, 0x41410000))
    assert env.dma(8, 0x200000).ok
    r = env.dma(9, 0x200000)
    assert not r.ok and r.fault.event == Event.F_CFG_CONFLICT
    assert env.events() == [(0x0000_0009_0000_0021, 0x0000_0008_0000_0000, 0x200000, 0)]
    # Same tables: no conflict.
    env.put_ste(10, words(0x4130200B))
    env.put_cd(CDS + 0x2000, words(QEMU_CD_W0, QEMU_CD_W1, QEMU_CD_W2))
    assert env.dma(10, 0x200000).pa == 0x44000000


# ================================================================ E_PAGE_REQUEST (0x24)
def test_no_pri_so_no_page_requests():
    env = s1_env()
    assert env.r(IDR0) >> 16 & 1 == 0  # IDR0.PRI
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN | 0x2)  # PRIQEN is RES0 without PRI
    assert env.r(CR0ACK) == 0xD
    env.w(IRQ_CTRL, 0x2)  # PRIQ_IRQEN likewise
    assert env.r(IRQ_CTRLACK) == 0
    # A faulting transaction is terminated (IDR0.STALL_MODEL=0b01), never a page request.
    env.dma(8, 0x300000)
    assert [e[0] & 0xFF for e in env.events()] == [0x10]


# ================================================================ recording rules
def test_cd_r0_suppresses_stage1_faults():
    env = s1_env()
    env.put_cd(CDS, words(QEMU_CD_W0, 0x00014205, QEMU_CD_W2))  # R (bit 45) clear
    env.put(PT + 0x2000 + 4 * 8, 0x44004343)  # AF=0
    for addr, write, event in ((0x300000, False, Event.F_TRANSLATION),
                               (0x201000, True, Event.F_PERMISSION),
                               (0x204000, False, Event.F_ACCESS)):
        r = env.dma(8, addr, write=write)
        assert not r.ok and r.fault.event == event and not r.recorded
    assert env.events() == []


def test_s2r0_suppresses_stage2_faults():
    env = s1_env()
    env.s2_only(S2R=0)
    r = env.dma(8, 0x40000000)
    assert not r.ok and r.fault.event == Event.F_TRANSLATION and not r.recorded
    assert env.events() == []


def test_nested_record_bits_are_per_stage():
    env = s1_env()
    env.nested(ste=dict(S2R=0))  # S2 faults silent, S1 faults (CD.R=1) recorded
    env.put(PT + 0x12000 + 16, 0x50000743)  # IOVA 0x202000 -> IPA hole
    assert not env.dma(8, 0x202000).recorded
    assert env.dma(8, 0x300000).recorded
    assert [e[0] & 0xFF for e in env.events()] == [0x10]

    env = s1_env()
    env.nested(cd_w1=0x00014205)  # CD.R=0, S2R=1
    env.put(PT + 0x12000 + 16, 0x50000743)
    assert env.dma(8, 0x202000).recorded
    assert not env.dma(8, 0x300000).recorded
    assert env.events() == [(0x0000_0008_0000_0010, 0x0000_0288_0000_0000, 0x202000,
                             0x5000_0000)]


def test_abort_ste_is_silent():
    env = s1_env()
    env.put_ste(8, words(0x1))  # V=1, Config=0b000
    r = env.dma(8, DATA, 4, write=True, data=b"\x55" * 4)
    assert not r.ok and r.fault is None and not r.recorded
    assert env.mem.read(DATA, 4) == bytes(4)
    assert env.events() == [] and env.r(GERROR) == 0


def test_gbpa_bypass_and_abort_while_smmu_disabled():
    env = Env().setup(enable=False)  # event queue on, SMMUEN=0
    env.mem.write(DATA, b"data")
    assert env.r(GBPA) == 0x1000  # reset: SHCFG=0b01 (use incoming)
    r = env.dma(1000, DATA, 4)  # no stream table is consulted
    assert r.ok and r.pa == DATA and r.data == b"data"
    env.w(GBPA, 0x00100000)  # ABORT without UPDATE: no effect
    assert env.r(GBPA) == 0x1000
    assert env.dma(1000, DATA, 4).ok
    env.w(GBPA, 0x80100000)  # ABORT with UPDATE; UPDATE reads 0 once done
    assert env.r(GBPA) == 0x00100000
    r = env.dma(1000, DATA, 4)
    assert not r.ok and r.fault is None
    assert not env.dma(8, DATA, translated=True).ok
    assert env.events() == []


# ================================================================ the event queue
def test_event_queue_overflow_flag():
    env = s1_env(evtq_log2=1)  # two records
    for i in range(4):  # records 0 and 1 fit; 2 and 3 are lost
        env.dma(8, 0x300000 + 0x1000 * i)
    # WR = 0b10 (wrap 1, index 0), OVFLG (bit 31) toggled once, not twice
    assert env.r(EVENTQ_PROD) == 0x8000_0002
    assert env.smmu.events_lost == 2
    assert env.r(GERROR) == 0  # §7.4: overflow is not EVENTQ_ABT_ERR (§7.5)
    # read both, but do not acknowledge the overflow yet (CONS.OVACKFLG stays 0)
    assert [e[2] for e in env.events()] == [0x300000, 0x301000]
    assert env.r(EVENTQ_CONS) == 0x0000_0002
    env.dma(8, 0x304000)  # room again: recorded at index 0 although OVFLG is unacked
    assert env.r(EVENTQ_PROD) == 0x8000_0003
    assert [e[2] for e in env.events()] == [0x304000]
    env.w(EVENTQ_CONS, 0x8000_0003)  # acknowledge: OVACKFLG = OVFLG
    for i in range(3):  # index 1, index 0, then full again
        env.dma(8, 0x305000 + 0x1000 * i)
    # WR: 0b11 -> 0b00 -> 0b01 (full: CONS is 0b11); the overflow toggles OVFLG back to 0
    assert env.r(EVENTQ_PROD) == 0x0000_0001
    assert [e[2] for e in env.events()] == [0x305000, 0x306000]


def test_eventq_log2size_clamped_to_eventqs():
    env = Env(Features(eventqs=1))
    assert env.r(IDR1) >> 16 & 0x1F == 1
    env.setup(evtq_log2=4)  # asks for 16 records, gets 2
    env.qemu_s1()
    for i in range(3):
        env.dma(8, 0x300000 + 0x1000 * i)
    assert env.r(EVENTQ_PROD) == 0x8000_0002
    assert env.mem.read(EVTQ + 64, 32) == bytes(32)  # no third slot was written


def test_eventq_base_alignment():
    env = Env().setup(evtq_log2=2, enable=False)  # 4 records: 128 bytes
    env.w(CR0, CMDQEN)
    env.w(EVENTQ_BASE, (EVTQ + 0x40) | 2, 8)  # misaligned base: bits 6:0 ignored
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN)
    env.qemu_s1()
    env.dma(8, 0x300000)
    assert env.mem.read_int(EVTQ, 8) == 0x0000_0008_0000_0010


def test_eventq_abt_err_toggles_once():
    env = s1_env(enable=False)
    env.w(CR0, CMDQEN)
    env.w(EVENTQ_BASE, UNBACKED | 8, 8)
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN)
    env.dma(8, 0x300000)
    assert env.r(GERROR) == 0x4 and env.r(EVENTQ_PROD) == 0  # EVENTQ_ABT_ERR, bit 2
    env.dma(8, 0x301000)
    assert env.r(GERROR) == 0x4  # already active: not toggled back
    env.w(GERRORN, 0x4)  # acknowledge
    env.dma(8, 0x302000)
    assert env.r(GERROR) == 0x0 and env.r(GERRORN) == 0x4  # active again (they differ)


def test_event_irq_as_msi_and_wired():
    env = s1_env()
    env.w(EVENTQ_IRQ_CFG0, MSI, 8)
    env.w(EVENTQ_IRQ_CFG1, 0xCAFE0001)
    env.w(IRQ_CTRL, 0x4)  # EVENTQ_IRQEN
    assert env.r(IRQ_CTRLACK) == 0x4
    env.dma(8, 0x300000)
    assert env.mem.read_int(MSI, 4) == 0xCAFE0001
    assert env.smmu.irqs["eventq"] == 0

    env = s1_env()
    env.w(IRQ_CTRL, 0x4)  # EVENTQ_IRQ_CFG0.ADDR = 0: wired interrupt
    env.dma(8, 0x300000)
    env.dma(8, 0x301000)
    assert env.smmu.irqs["eventq"] == 2


def test_event_irq_without_msi_support_is_wired():
    env = Env(Features(msi=False)).setup()
    env.qemu_s1()
    assert env.r(IDR0) >> 13 & 1 == 0  # IDR0.MSI
    env.w(EVENTQ_IRQ_CFG0, MSI, 8)
    env.w(IRQ_CTRL, 0x4)
    env.dma(8, 0x300000)
    assert env.smmu.irqs["eventq"] == 1 and env.mem.read_int(MSI, 4) == 0


def test_event_msi_abort():
    env = s1_env()
    env.w(EVENTQ_IRQ_CFG0, UNBACKED, 8)
    env.w(IRQ_CTRL, 0x4)
    env.dma(8, 0x300000)
    assert env.r(GERROR) == 0x20  # MSI_EVENTQ_ABT_ERR, bit 5
    assert len(env.events()) == 1  # the record itself was written


def test_gerror_irq_as_msi_and_its_abort():
    env = Env().setup()
    env.w(GERROR_IRQ_CFG0, MSI + 8, 8)
    env.w(GERROR_IRQ_CFG1, 0x600D)
    env.w(IRQ_CTRL, 0x1)  # GERROR_IRQEN
    env.cmd(0xFF)  # CERROR_ILL -> GERROR.CMDQ_ERR -> GERROR interrupt
    assert env.r(GERROR) == 0x1 and env.mem.read_int(MSI + 8, 4) == 0x600D

    env = Env().setup()
    env.w(GERROR_IRQ_CFG0, UNBACKED, 8)
    env.w(IRQ_CTRL, 0x1)
    env.cmd(0xFF)
    assert env.r(GERROR) == 0x81  # CMDQ_ERR | MSI_GERROR_ABT_ERR (bit 7)

    env = Env().setup()
    env.w(IRQ_CTRL, 0x1)  # wired
    env.cmd(0xFF)
    assert env.smmu.irqs["gerror"] == 1
