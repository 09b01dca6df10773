"""Device-level tests of vsmmu.hw.smmu's command queue: every opcode with its effect,
every CERROR path, and the PROD/CONS arithmetic.

Commands are built by field name (inputs); what is checked is architecture-observable:
CMDQ_CONS (RD in bits 19:0 with the wrap bit just above the index, ERR in 30:24),
GERROR/GERRORN, memory written by MSIs, and DMA results before and after invalidation.
`Env.setup()` issues three commands (CFGI_ALL, TLBI_NSNH_ALL, SYNC) into a 256-entry
queue, so a test's first command sits at index 3 and CONS starts at 3.

Invalidation tests follow one pattern: translate (filling a cache), change the
structure in memory without telling the SMMU, see the stale result, issue the
command, see the new one.
"""

from __future__ import annotations

import pytest
from smmu_env import (
    CDS,
    CMDQ,
    CMDQ_BASE,
    CMDQ_CONS,
    CMDQ_PROD,
    CMDQEN,
    CR0,
    DATA,
    EVENTQEN,
    GERROR,
    GERRORN,
    IDR1,
    MSI,
    PT,
    QEMU_CD_W0,
    QEMU_CD_W1,
    QEMU_CD_W2,
    QEMU_STE_W0,
    S2PT,
    SMMUEN,
    SYNC,
    UNBACKED,
    Env,
    command,
    words,
)

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import STE, Event, Op


def s1_env(**setup) -> Env:
    env = Env().setup(**setup)
    env.qemu_s1()
    return env


def ok_after(env: Env, *cmds: int) -> None:
    """Run `cmds` + SYNC and check the queue consumed them all without error."""
    env.cmd(*cmds, SYNC)
    assert env.r(CMDQ_CONS) == env.prod and env.r(GERROR) == 0


# ================================================================ prefetch
@pytest.mark.parametrize("op", [Op.PREFETCH_CONFIG, Op.PREFETCH_ADDR])
def test_prefetch_is_a_hint_whose_errors_are_not_reported(op):
    env = s1_env()
    env.put_ste(9, words(QEMU_STE_W0 & ~1))  # V=0
    env.put_ste(10, words(UNBACKED | 0xB))  # CD fetch would abort
    ok_after(env, command(op, SID=9), command(op, SID=10), command(op, SID=300),
             command(op, SID=8, SSV=1, SSID=5))
    assert env.events() == []


def test_prefetch_config_fills_the_config_cache():
    env = s1_env()
    ok_after(env, command(Op.PREFETCH_CONFIG, SID=8))
    env.put_ste(8, words(0x1))  # abort, but the SMMU already holds the S1 config
    assert env.dma(8, 0x200800).pa == 0x44000800


# ================================================================ CFGI_*
def test_cfgi_ste():
    env = s1_env()
    assert env.dma(8, 0x200800).pa == 0x44000800
    env.put_ste(8, words(0x9))  # now bypass
    assert env.dma(8, 0x200800).pa == 0x44000800  # stale STE still used
    ok_after(env, command(Op.CFGI_STE, SID=9))  # another stream: no effect
    assert env.dma(8, 0x200800).pa == 0x44000800
    ok_after(env, command(Op.CFGI_STE, SID=8))
    r = env.dma(8, 0x200800)  # bypass: PA = IOVA, which has no memory behind it
    assert r.pa == 0x200800 and r.bus_error


def test_cfgi_ste_range():
    env = s1_env()
    for sid in range(8, 13):
        env.put_ste(sid, QEMU_STE_W0)
        assert env.dma(sid, 0x200800).pa == 0x44000800
        env.put_ste(sid, words(0x9))  # bypass, not yet seen
    # Range=1: 2^(1+1) = 4 StreamIDs, aligned: SID 9 names 8..11.
    ok_after(env, command(Op.CFGI_STE_RANGE, SID=9, RANGE=1))
    assert [env.dma(s, 0x200800).pa for s in range(8, 13)] == [0x200800] * 4 + [0x44000800]
    ok_after(env, command(Op.CFGI_STE_RANGE, SID=0, RANGE=31))  # Range=31: all
    assert env.dma(12, 0x200800).pa == 0x200800


def test_cfgi_ste_range_31_ignores_sid():
    env = s1_env()
    assert env.dma(8, 0x200800).ok
    env.put_ste(8, words(0x9))
    ok_after(env, command(Op.CFGI_STE_RANGE, SID=0xFFFF_FFFF, RANGE=31))
    assert env.dma(8, 0x200800).pa == 0x200800


def test_cfgi_cd_and_cd_all():
    env = s1_env()
    env.put_ste(8, STE.encode(V=1, CONFIG=0b101, S1CONTEXTPTR=CDS, S1CDMAX=2))
    for ssid in range(3):
        env.put_cd(CDS + 64 * ssid, words(QEMU_CD_W0, QEMU_CD_W1, QEMU_CD_W2))
        assert env.dma(8, 0x200800, ssid=ssid).pa == 0x44000800
        env.put_cd(CDS + 64 * ssid, words(0x40000019, QEMU_CD_W1, QEMU_CD_W2))  # V=0
    assert all(env.dma(8, 0x200800, ssid=s).ok for s in range(3))  # stale CDs
    ok_after(env, command(Op.CFGI_CD, SID=8, SSID=1))
    assert [env.dma(8, 0x200800, ssid=s).ok for s in range(3)] == [True, False, True]
    ok_after(env, command(Op.CFGI_CD_ALL, SID=8))
    assert [env.dma(8, 0x200800, ssid=s).ok for s in range(3)] == [False, False, False]
    # C_BAD_CD with SSV=1: dword 0 = 0x0a | SSV 0x800 | SSID << 12 | SID 8 << 32
    assert [e[0] for e in env.events()] == [0x0000_0008_0000_180A, 0x0000_0008_0000_080A,
                                            0x0000_0008_0000_180A, 0x0000_0008_0000_280A]


def test_cfgi_cd_keeps_the_iotlb():
    """CFGI_CD invalidates the configuration, not translations cached under its ASID."""
    env = s1_env()
    assert env.dma(8, 0x200000).pa == 0x44000000
    env.put(PT + 0x2000, 0x44010743)
    ok_after(env, command(Op.CFGI_CD, SID=8))
    assert env.dma(8, 0x200000).pa == 0x44000000


# ================================================================ TLBI, stage 1
def stale_s1() -> Env:
    """IOVA 0x200000 cached as -> 0x44000000, then remapped to 0x44010000 in memory."""
    env = s1_env()
    assert env.dma(8, 0x200000).pa == 0x44000000
    env.put(PT + 0x2000, 0x44010743)
    assert env.dma(8, 0x200000).pa == 0x44000000
    return env


def after(*cmds: int) -> int:
    env = stale_s1()
    ok_after(env, *cmds)
    return env.dma(8, 0x200000).pa


NEW, OLD = 0x44010000, 0x44000000
TLBI_S1 = {
    "NH_ALL VMID 0": (command(Op.TLBI_NH_ALL, VMID=0), NEW),
    "NH_ALL VMID 1": (command(Op.TLBI_NH_ALL, VMID=1), OLD),
    "NH_ASID 1": (command(Op.TLBI_NH_ASID, ASID=1), NEW),
    "NH_ASID 2": (command(Op.TLBI_NH_ASID, ASID=2), OLD),
    "NH_ASID 1 VMID 3": (command(Op.TLBI_NH_ASID, ASID=1, VMID=3), OLD),
    "NH_VA ASID 1 0x200000": (command(Op.TLBI_NH_VA, ASID=1, ADDR=0x200000), NEW),
    "NH_VA ASID 1 0x201000": (command(Op.TLBI_NH_VA, ASID=1, ADDR=0x201000), OLD),
    "NH_VA ASID 2 0x200000": (command(Op.TLBI_NH_VA, ASID=2, ADDR=0x200000), OLD),
    "NH_VAA 0x200000": (command(Op.TLBI_NH_VAA, ADDR=0x200000), NEW),
    "NH_VAA 0x1ff000": (command(Op.TLBI_NH_VAA, ADDR=0x1FF000), OLD),
    # RIL: (NUM+1) * 2^SCALE pages of the TG granule (1 = 4K, 2 = 16K, 3 = 64K) from ADDR.
    "RIL 4K NUM=1 from 0x1fe000 (0x1fe000, 0x1ff000)": (
        command(Op.TLBI_NH_VA, ASID=1, TG=1, NUM=1, ADDR=0x1FE000), OLD),
    "RIL 4K NUM=2 from 0x1fe000 (.. 0x200000)": (
        command(Op.TLBI_NH_VA, ASID=1, TG=1, NUM=2, ADDR=0x1FE000), NEW),
    "RIL 4K SCALE=4 from 0x1f0000 (16 pages, ends at 0x200000)": (
        command(Op.TLBI_NH_VAA, TG=1, SCALE=4, ADDR=0x1F0000), OLD),
    "RIL 4K SCALE=5 from 0x1f0000 (32 pages)": (
        command(Op.TLBI_NH_VAA, TG=1, SCALE=5, ADDR=0x1F0000), NEW),
    "RIL 4K NUM=1 SCALE=3 from 0x1f0000 (2 * 8 pages, ends at 0x200000)": (
        command(Op.TLBI_NH_VA, ASID=1, TG=1, NUM=1, SCALE=3, ADDR=0x1F0000), OLD),
    "RIL 4K NUM=2 SCALE=3 from 0x1f0000 (3 * 8 pages)": (
        command(Op.TLBI_NH_VA, ASID=1, TG=1, NUM=2, SCALE=3, ADDR=0x1F0000), NEW),
    "TTL=3 (the entry's level)": (
        command(Op.TLBI_NH_VA, ASID=1, TG=1, TTL=3, ADDR=0x200000), NEW),
    "TTL=2 (another level: entry kept)": (
        command(Op.TLBI_NH_VA, ASID=1, TG=1, TTL=2, ADDR=0x200000), OLD),
    "S12_VMALL VMID 0": (command(Op.TLBI_S12_VMALL, VMID=0), NEW),
    "S12_VMALL VMID 5": (command(Op.TLBI_S12_VMALL, VMID=5), OLD),
    "S2_IPA VMID 0 (stage-1 entry kept)": (command(Op.TLBI_S2_IPA, ADDR=0x200000), OLD),
    "NSNH_ALL": (command(Op.TLBI_NSNH_ALL), NEW),
    "CFGI_ALL (configuration only)": (command(Op.CFGI_STE_RANGE, RANGE=31), OLD),
}


@pytest.mark.parametrize(("cmd", "pa"), TLBI_S1.values(), ids=TLBI_S1.keys())
def test_tlbi_stage1(cmd, pa):
    assert after(cmd) == pa


def test_tlbi_range_without_ril_is_one_address():
    env = Env(Features(ril=False)).setup()
    env.qemu_s1()
    assert env.r(0xC) >> 10 & 1 == 0  # IDR3.RIL
    env.dma(8, 0x200000)
    env.put(PT + 0x2000, 0x44010743)
    # TG/NUM are ignored without RIL: this names 0x1fe000 only
    ok_after(env, command(Op.TLBI_NH_VA, ASID=1, TG=1, NUM=2, ADDR=0x1FE000))
    assert env.dma(8, 0x200000).pa == OLD


def test_tlbi_nh_all_without_stage2_ignores_vmid():
    env = Env(Features(s2p=False)).setup()
    env.qemu_s1()
    env.dma(8, 0x200000)
    env.put(PT + 0x2000, 0x44010743)
    ok_after(env, command(Op.TLBI_NH_ALL, VMID=7))
    assert env.dma(8, 0x200000).pa == NEW


# ================================================================ TLBI, stage 2 and nested
def stale_s2() -> Env:
    """S2-only SID 8 (VMID 5) and nested SID 9 (VMID 5) cached, then the S2 block removed."""
    env = Env().setup()
    env.s2_only(sid=8)
    env.nested(sid=9)
    assert env.dma(8, 0x4000800).pa == 0x44000800
    assert env.dma(9, 0x200800).pa == 0x44000800
    env.put(S2PT, 0)
    assert env.dma(8, 0x4000800).ok and env.dma(9, 0x200800).ok  # both stale
    return env


S2_CASES = {
    # (command, S2-only entry dropped, nested entry dropped)
    "S12_VMALL VMID 5": (command(Op.TLBI_S12_VMALL, VMID=5), True, True),
    "S12_VMALL VMID 6": (command(Op.TLBI_S12_VMALL, VMID=6), False, False),
    "S2_IPA in the block": (command(Op.TLBI_S2_IPA, VMID=5, ADDR=0x3FFF000), True, False),
    "S2_IPA outside the block": (command(Op.TLBI_S2_IPA, VMID=5, ADDR=0x40000000), False,
                                 False),
    "S2_IPA other VMID": (command(Op.TLBI_S2_IPA, VMID=6, ADDR=0x4000000), False, False),
    "S2_IPA RIL 4K": (command(Op.TLBI_S2_IPA, VMID=5, TG=1, ADDR=0x4000000), True, False),
    "S2_IPA TTL=1 (1 GiB block level)": (
        command(Op.TLBI_S2_IPA, VMID=5, TG=1, TTL=1, ADDR=0x4000000), True, False),
    "S2_IPA TTL=3": (command(Op.TLBI_S2_IPA, VMID=5, TG=1, TTL=3, ADDR=0x4000000), False,
                     False),
    "NH_ALL VMID 5": (command(Op.TLBI_NH_ALL, VMID=5), False, True),
    "NH_ASID 1 VMID 5": (command(Op.TLBI_NH_ASID, VMID=5, ASID=1), False, True),
    "NSNH_ALL": (command(Op.TLBI_NSNH_ALL), True, True),
}


@pytest.mark.parametrize(("cmd", "s2_gone", "nested_gone"), S2_CASES.values(),
                         ids=S2_CASES.keys())
def test_tlbi_stage2_and_nested(cmd, s2_gone, nested_gone):
    env = stale_s2()
    ok_after(env, cmd)
    assert env.dma(8, 0x4000800).ok is not s2_gone
    r = env.dma(9, 0x200800)
    assert r.ok is not nested_gone
    if nested_gone:  # re-walked: stage-1 table fetch IPA 0x01410000 now has no S2 mapping
        assert r.fault.event == Event.F_TRANSLATION and r.fault.s2


# ================================================================ ATC_INV
def ats_env() -> Env:
    env = s1_env()
    env.put_ste(8, words(QEMU_STE_W0, 0, 0x10000000))  # EATS=0b01 (STE bit 92)
    r = env.smmu.ats_request(8, 0x200000)
    assert r.ok and r.out == 0x44000000 and r.size == 0x1000
    assert env.smmu.atc_lookup(8, 0x200800)[0] == 0x44000800
    return env


ATC_CASES = {
    "same page": (command(Op.ATC_INV, SID=8, ADDR=0x200000), True),
    "next page": (command(Op.ATC_INV, SID=8, ADDR=0x201000), False),
    "SIZE=1: 8K aligned range holding 0x201000": (
        command(Op.ATC_INV, SID=8, ADDR=0x201000, SIZE=1), True),
    "other SID": (command(Op.ATC_INV, SID=9, ADDR=0x200000), False),
    "SSV=1 SSID 1 (a PASID entry)": (command(Op.ATC_INV, SID=8, SSV=1, SSID=1,
                                             ADDR=0x200000), False),
    "GLOBAL": (command(Op.ATC_INV, SID=8, SSV=1, SSID=1, GLOBAL=1, ADDR=0x200000), True),
}


@pytest.mark.parametrize(("cmd", "gone"), ATC_CASES.values(), ids=ATC_CASES.keys())
def test_atc_inv(cmd, gone):
    env = ats_env()
    ok_after(env, cmd)
    assert (env.smmu.atc_lookup(8, 0x200800) is None) is gone


# ================================================================ PRI, stall, SYNC
def test_pri_resp_is_illegal_without_pri():
    env = Env().setup()
    env.cmd(command(Op.PRI_RESP, SID=8))
    assert env.r(CMDQ_CONS) == 0x0100_0003 and env.r(GERROR) == 0x1  # ILL at index 3


@pytest.mark.parametrize("op", [Op.RESUME, Op.STALL_TERM])
def test_resume_and_stall_term_are_illegal_without_stalls(op):
    """IHI 0070 §4.7.1 CMD_RESUME, §4.7.2 CMD_STALL_TERM: CERROR_ILL when
    IDR0.STALL_MODEL=0b01 (no stall support), not a no-op."""
    env = s1_env()
    cons = env.r(CMDQ_CONS)
    env.cmd(command(op, SID=8))
    # CMDQ_CONS.ERR (bits 30:24) = 0x01 CERROR_ILL, RD stays on the command; GERROR.CMDQ_ERR
    assert env.r(CMDQ_CONS) == 0x0100_0000 | cons and env.r(GERROR) == 0x1
    assert env.events() == [] and env.dma(8, 0x200000).ok


def test_sync_signals():
    env = Env().setup()
    ok_after(env, command(Op.SYNC, CS=0, MSIADDR=MSI, MSIDATA=0x1111))  # SIG_NONE
    assert env.mem.read_int(MSI, 4) == 0 and sum(env.smmu.irqs.values()) == 0
    ok_after(env, command(Op.SYNC, CS=1, MSIADDR=MSI, MSIDATA=0xC0FFEE))  # SIG_IRQ, MSI
    assert env.mem.read_int(MSI, 4) == 0xC0FFEE
    ok_after(env, command(Op.SYNC, CS=1))  # no MSI address: the wired interrupt
    assert env.smmu.irqs["cmd_sync"] == 1
    ok_after(env, command(Op.SYNC, CS=2))  # SIG_SEV: completes, signals nothing (IDR0.SEV=0)
    assert dict(env.smmu.irqs) == {"cmd_sync": 1}


def test_sync_msi_without_msi_support_is_wired():
    env = Env(Features(msi=False)).setup()
    ok_after(env, command(Op.SYNC, CS=1, MSIADDR=MSI, MSIDATA=7))
    assert env.mem.read_int(MSI, 4) == 0 and env.smmu.irqs["cmd_sync"] == 1


def test_sync_msi_abort():
    env = Env().setup()
    env.cmd(command(Op.SYNC, CS=1, MSIADDR=UNBACKED, MSIDATA=7))
    assert env.r(CMDQ_CONS) == 4  # the SYNC itself completes
    assert env.r(GERROR) == 0x10  # MSI_CMDQ_ABT_ERR, bit 4


def test_sync_cs_reserved_is_illegal():
    env = Env().setup()
    env.cmd(0x3000 | Op.SYNC)  # CS = 0b11 in bits 13:12
    assert env.r(CMDQ_CONS) == 0x0100_0003 and env.r(GERROR) == 0x1


# ================================================================ CERROR_ILL
ILLEGAL = {
    **{f"opcode {op:#04x}": op for op in (0x00, 0x07, 0x08, 0x29, 0x47, 0xFF)},
    **{op.name: op.value for op in (Op.TLBI_EL3_ALL, Op.TLBI_EL3_VA, Op.TLBI_EL2_ALL,
                                      Op.TLBI_EL2_ASID, Op.TLBI_EL2_VA, Op.TLBI_EL2_VAA)},
    # SSec (bit 10) names a Secure stream: illegal on the Non-secure queue
    "CFGI_STE SSec=1": 0x403,
    "CFGI_STE_RANGE SSec=1": 0x404,
    "CFGI_CD SSec=1": 0x405,
    "CFGI_CD_ALL SSec=1": 0x406,
    "PREFETCH_CONFIG SSec=1": 0x401,
}


@pytest.mark.parametrize("cmd", ILLEGAL.values(), ids=ILLEGAL.keys())
def test_cerror_ill(cmd):
    env = Env().setup()
    env.cmd(SYNC, cmd, SYNC)  # at indexes 3, 4, 5
    assert env.r(CMDQ_CONS) == 0x0100_0004  # ERR=1 (CERROR_ILL), RD stays on index 4
    assert env.r(GERROR) == 0x1 and env.r(GERRORN) == 0


MISSING_FEATURE = [
    (Features(s1p=False), command(Op.CFGI_CD, SID=8)),
    (Features(s1p=False), command(Op.CFGI_CD_ALL, SID=8)),
    (Features(s1p=False), command(Op.TLBI_NH_ALL)),
    (Features(s1p=False), command(Op.TLBI_NH_ASID)),
    (Features(s1p=False), command(Op.TLBI_NH_VA)),
    (Features(s1p=False), command(Op.TLBI_NH_VAA)),
    (Features(s2p=False), command(Op.TLBI_S12_VMALL)),
    (Features(s2p=False), command(Op.TLBI_S2_IPA)),
    (Features(ats=False), command(Op.ATC_INV, SID=8)),
]


@pytest.mark.parametrize(("feat", "cmd"), MISSING_FEATURE)
def test_command_for_a_missing_feature_is_illegal(feat, cmd):
    env = Env(feat).setup()
    env.cmd(cmd)
    assert env.r(CMDQ_CONS) == 0x0100_0003 and env.r(GERROR) == 0x1


# ================================================================ error handshake
def test_cerror_halts_until_gerrorn_ack_then_resumes():
    env = Env().setup()
    env.cmd(command(Op.SYNC, CS=1, MSIADDR=MSI, MSIDATA=1), 0xFF,
            command(Op.SYNC, CS=1, MSIADDR=MSI + 4, MSIDATA=2))
    assert env.r(CMDQ_CONS) == 0x0100_0004 and env.r(GERROR) == 0x1
    assert env.mem.read_int(MSI, 4) == 1 and env.mem.read_int(MSI + 4, 4) == 0
    env.cmd(SYNC)  # more work and another doorbell: still halted
    assert env.r(CMDQ_CONS) == 0x0100_0004
    env.w(GERRORN, 0x0)  # a write that leaves the error active
    assert env.r(CMDQ_CONS) == 0x0100_0004
    env.w(CR0, CMDQEN | EVENTQEN | SMMUEN)  # a CR0 write does not restart it either
    assert env.r(CMDQ_CONS) & 0xFFFFF == 4
    # software fixes the entry at CONS and acknowledges: GERRORN = GERROR
    env.mem.write_int(CMDQ + 4 * 16, SYNC, 16)
    env.w(GERRORN, env.r(GERROR))
    assert env.r(CMDQ_CONS) & 0xFFFFF == 7 and env.mem.read_int(MSI + 4, 4) == 2
    assert env.r(GERROR) == 0x1 and env.r(GERRORN) == 0x1  # equal: nothing active
    env.cmd(0xFF)  # index 7: a second error toggles GERROR.CMDQ_ERR back to 0
    assert env.r(CMDQ_CONS) == 0x0100_0007
    assert env.r(GERROR) == 0x0 and env.r(GERRORN) == 0x1


def test_cerror_abt():
    env = Env()
    env.w(CMDQ_BASE, UNBACKED | 8, 8)
    env.w(CR0, CMDQEN)
    env.w(CMDQ_PROD, 1)
    assert env.r(CMDQ_CONS) == 0x0200_0000 and env.r(GERROR) == 0x1  # ERR=2 (CERROR_ABT)
    # recover: disable, move the queue to memory, acknowledge, enable
    env.w(CR0, 0)
    env.w(CMDQ_BASE, CMDQ | 8, 8)
    env.mem.write_int(CMDQ, SYNC, 16)
    env.w(GERRORN, 0x1)
    env.w(CR0, CMDQEN)
    assert env.r(CMDQ_CONS) & 0xFFFFF == 1 and env.r(GERROR) == env.r(GERRORN)


def test_cerror_atc_inv_sync():
    env = ats_env()
    env.smmu.unresponsive_atc.add(8)
    env.cmd(command(Op.ATC_INV, SID=8, ADDR=0x200000), SYNC)  # indexes 3 and 4
    # the ATC_INV completes, the SYNC waiting for it fails: ERR=3 (CERROR_ATC_INV_SYNC)
    assert env.r(CMDQ_CONS) == 0x0300_0004 and env.r(GERROR) == 0x1
    env.w(GERRORN, 0x1)  # retry the SYNC
    assert env.r(CMDQ_CONS) & 0xFFFFF == 5 and env.r(GERROR) == env.r(GERRORN)


def test_atc_inv_sync_for_responsive_atc_is_fine():
    env = ats_env()
    env.smmu.unresponsive_atc.add(9)
    ok_after(env, command(Op.ATC_INV, SID=8, ADDR=0x200000))


# ================================================================ queue arithmetic
def test_cmdq_prod_cons_wrap_small_queue():
    """LOG2SIZE=2: pointers are index [1:0] plus the wrap bit [2]."""
    env = Env().setup(cmdq_log2=2)
    assert env.r(CMDQ_CONS) == 3  # setup's three commands: wrap 0, index 3
    msi = [command(Op.SYNC, CS=1, MSIADDR=MSI + 4 * i, MSIDATA=i + 1) for i in range(8)]
    env.cmd(*msi[:3])  # indexes 3, 0, 1
    assert env.prod == 6 and env.r(CMDQ_CONS) == 6  # wrap 1, index 2
    env.cmd(*msi[3:7])  # a full queue: indexes 2, 3, 0, 1
    assert env.prod == 2 and env.r(CMDQ_CONS) == 2  # wrap 0, index 2
    assert [env.mem.read_int(MSI + 4 * i, 4) for i in range(7)] == [1, 2, 3, 4, 5, 6, 7]


def test_cmdq_full_queue_is_not_empty():
    env = Env().setup(cmdq_log2=2)
    env.smmu.cmdq_budget = 1  # one command per doorbell or tick
    env.cmd(*[command(Op.SYNC, CS=1, MSIADDR=MSI + 4 * i, MSIDATA=i + 1) for i in range(4)])
    # PROD = 0b111 (wrap 1, index 3), CONS was 0b011: same index, other wrap: full
    assert env.prod == 7
    assert env.r(CMDQ_CONS) == 4  # one consumed: wrap 1, index 0
    seen = []
    for _ in range(4):
        env.smmu.tick()
        seen.append(env.r(CMDQ_CONS))
    assert seen == [5, 6, 7, 7]
    assert [env.mem.read_int(MSI + 4 * i, 4) for i in range(4)] == [1, 2, 3, 4]


def test_cmdq_log2size_clamped_to_cmdqs():
    env = Env(Features(cmdqs=2))
    assert env.r(IDR1) >> 21 & 0x1F == 2  # IDR1.CMDQS
    env.w(CMDQ_BASE, CMDQ | 5, 8)  # asks for 32 entries; the SMMU uses 4
    for i in range(4):
        env.mem.write_int(CMDQ + 16 * i, SYNC, 16)
    env.mem.write_int(CMDQ + 16 * 4, 0xFF, 16)  # entry 4 exists only in a 32-entry queue
    env.w(CR0, CMDQEN)
    env.w(CMDQ_PROD, 5)  # 4 entries: wrap 1, index 1 -> indexes 0, 1, 2, 3, 0
    assert env.r(CMDQ_CONS) == 5 and env.r(GERROR) == 0


def test_cmdq_base_alignment():
    env = Env()
    env.w(CMDQ_BASE, (CMDQ + 0x80) | 4, 8)  # 16 entries = 256 bytes: bits 7:0 ignored
    env.mem.write_int(CMDQ, command(Op.SYNC, CS=1, MSIADDR=MSI, MSIDATA=0xA1), 16)
    env.w(CR0, CMDQEN)
    env.w(CMDQ_PROD, 1)
    assert env.r(CMDQ_CONS) == 1 and env.mem.read_int(MSI, 4) == 0xA1


def test_cmdq_disabled_consumes_nothing():
    env = Env().setup()
    env.w(CR0, EVENTQEN | SMMUEN)
    env.cmd(SYNC)
    assert env.r(CMDQ_CONS) == 3
    env.w(CR0, EVENTQEN | SMMUEN | CMDQEN)  # enabling consumes what is pending
    assert env.r(CMDQ_CONS) == 4


def test_write_after_tlbi_lands_at_new_pa_only():
    """End to end: a write after remap + TLBI lands at the new PA only."""
    env = stale_s1()
    ok_after(env, command(Op.TLBI_NH_VA, ASID=1, ADDR=0x200000))
    assert env.dma(8, 0x200010, 4, write=True, data=b"new!").ok
    assert env.mem.read(0x44010010, 4) == b"new!" and env.mem.read(DATA + 0x10, 4) == bytes(4)
