"""The vSMMU's transfer functions (vsmmu/hyp/transfer.py) on integers, against golden
words worked out by hand, and the same functions run on Z3 bit-vectors: for all
512-bit vSTEs, 128-bit commands and 256-bit event records, what reaches the
hardware or the guest stays inside the guest.

Golden-word conventions (IHI 0070; bit n of a structure is bit n % 64 of dword n // 64):
  STE  dword 0: V 0, Config 3:1, S1Fmt 5:4, S1ContextPtr 51:6, S1CDMax 63:59
       dword 1: S1DSS 1:0, S1CIR 3:2, S1COR 5:4, S1CSH 7:6, DRE 12, MEV 19, S1STALLD 27,
                EATS 29:28, STRW 31:30, SHCFG 45:44
       dword 2: S2VMID 15:0, S2T0SZ 37:32, S2SL0 39:38, S2IR0 41:40, S2OR0 43:42,
                S2SH0 45:44, S2TG 47:46, S2PS 50:48, S2AA64 51, S2R 58;  dword 3: S2TTB 51:4
  CMD  dword 0: OP 7:0, SSec 10, SSV 11, SSID 31:12 | NUM 16:12, SCALE 24:20, SID 63:32 |
                VMID 47:32, ASID 63:48;  dword 1: Leaf 0, TTL 9:8, TG 11:10, Addr 63:12
  EVT  dword 0: ID 7:0, SSV 11, SSID 31:12, SID 63:32;  dword 1: STAG 15:0, Stall 31,
                RnW 35, S2 39, CLASS 41:40;  dword 2: InputAddr;  dword 3: IPA 51:12 or
                FetchAddr 51:3
"""

from __future__ import annotations

import pytest
import z3

from vsmmu.arch.faults import FETCH_EVENTS, WALK_EVENTS
from vsmmu.arch.layouts import CMD_ANY, COMMANDS, EVENT, STE, Op
from vsmmu.hyp.transfer import (
    GUEST_EVENTS,
    Action,
    GuestContext,
    HostStream,
    guest_command,
    guest_event,
    vste_to_pste,
)

M64 = (1 << 64) - 1


def dw(*dwords: int) -> int:
    return sum((d & M64) << (64 * i) for i, d in enumerate(dwords))


# ------------------------------------------------------------------ vSTE
VMID, TTB = 5, 0x1000_8000
# The hypervisor's stage-2-only STE: V=1, Config=0b110 (dword 0 = 0xD); dword 2 = VMID 5
# | S2T0SZ 24 (0x18 << 32) | S2SL0 1 (1 << 38) | S2IR0 1 (1 << 40) | S2OR0 1 (1 << 42)
# | S2SH0 3 (3 << 44) | S2PS 40 bits (2 << 48) | S2AA64 (1 << 51) | S2R (1 << 58).
HOST_S2 = dw(0xD, 0, 0x040A_3558_0000_0005, TTB)
HOST = HostStream(HOST_S2, ssidsize=8, ats=False, oas_bits=40)
HOST_ATS = HostStream(HOST_S2, ssidsize=8, ats=True, oas_bits=40)

# A stage-1 vSTE with every whitelisted field set, and junk everywhere else:
#   dword 0: V 1 | Config 0b101 (0xA) | S1Fmt 2 (0x20) | S1ContextPtr 0x40010040
#            | S1CDMax 3 (3 << 59) | reserved bits 54:52 (0x0070_0000_0000_0000)
#   dword 1: S1DSS 1 | S1CIR 1 (0x4) | S1COR 1 (0x10) | S1CSH 3 (0xC0) | DRE (0x1000)
#            | S1STALLD (0x800_0000) | EATS 1 (0x1000_0000) | STRW 2 (0x8000_0000)
#            | SHCFG 3 (0x3000_0000_0000)
#   dwords 2-7: all ones (S2VMID 0xFFFF, S2TTB, every stage-2 field, reserved bits)
GUEST_DW0 = 0x1870_0000_4001_006B
GUEST_DW1 = 0x0000_3000_9800_10D5
GUEST_S1 = dw(GUEST_DW0, GUEST_DW1, M64, M64, M64, M64, M64, M64)
# Physical: Config forced to nested (0xF in dword 0), reserved bits gone; dword 1 keeps
# S1DSS/S1CIR/S1COR/S1CSH/S1STALLD (0x0800_00D5), gains MEV (1 << 19); with ATS the
# guest's EATS 1 becomes EATS 0b10 (split-stage: translated transactions keep stage 2).
NESTED = dw(0x1800_0000_4001_006F, 0x0808_00D5, 0x040A_3558_0000_0005, TTB)
NESTED_ATS = dw(0x1800_0000_4001_006F, 0x2808_00D5, 0x040A_3558_0000_0005, TTB)


def with_dw0(word: int, dword0: int) -> int:
    return word & ~M64 | dword0


@pytest.mark.parametrize("vste, host, expected", [
    (GUEST_S1, HOST, NESTED),
    (GUEST_S1, HOST_ATS, NESTED_ATS),
    # Bypass (Config 0b100 -> dword 0 = 0x9, EATS cleared): stage 2 only, nothing of the
    # guest's; abort (0x1): the abort STE.
    (with_dw0(GUEST_S1 & ~(3 << 92), 0x9), HOST, HOST_S2),
    (with_dw0(GUEST_S1 & ~(3 << 92), 0x1), HOST_ATS, 0x1),
    # Rejected (V=0 physical STE: the SMMU raises C_BAD_STE): V=0, S2/nested Config
    # (the vSMMU has no stage 2), S1CDMax 9 > SSIDSIZE 8, EATS 0b10 with stage-1
    # translation, S1ContextPtr 1 << 40 beyond the vSMMU's 40-bit OAS (§5.2, §3.4.3).
    (GUEST_S1 & ~1, HOST, 0),
    (with_dw0(GUEST_S1, 0xD), HOST, 0),
    (with_dw0(GUEST_S1, 0xF), HOST, 0),
    (with_dw0(GUEST_S1, 0x4800_0000_4001_006B), HOST, 0),
    (GUEST_S1 ^ 3 << 92, HOST_ATS, 0),  # EATS 0b10
    (with_dw0(GUEST_S1, 0x1870_0100_0000_002B), HOST, 0),
    # The reserved Configs 0b001-0b011 behave as abort (§5.2 STE.Config): the abort STE.
    (with_dw0(GUEST_S1, 0x3), HOST, 0x1),
    (with_dw0(GUEST_S1, 0x5), HOST, 0x1),
    (with_dw0(GUEST_S1, 0x7), HOST, 0x1),
    # EATS 0b11 is reserved without DPT and behaves as 0b00 (§5.2 STE.EATS): no ATS.
    (GUEST_S1 | 3 << 92, HOST_ATS, NESTED),
    # The highest S1ContextPtr within 40 bits, 0xFF_FFFF_FFC0: accepted.
    (with_dw0(GUEST_S1, 0x1870_00FF_FFFF_FFEB), HOST,
     with_dw0(NESTED, 0x1800_00FF_FFFF_FFEF)),
    # Abort and bypass ignore the stage-1 fields, EATS and S1CDMax included.
    (with_dw0(GUEST_S1, 0x9), HOST_ATS, HOST_S2),  # bypass with EATS 1
    (with_dw0(GUEST_S1, 0x1), HOST_ATS, 0x1),  # abort with EATS 1
    # S1CDMax 8 == SSIDSIZE: accepted.
    (with_dw0(GUEST_S1, 0x4070_0000_4001_006B), HOST,
     with_dw0(NESTED, 0x4000_0000_4001_006F)),
], ids=["s1", "s1-ats", "bypass", "abort", "v0", "s2", "nested", "cdmax9", "eats2",
        "ctxptr-beyond-oas", "cfg1", "cfg2", "cfg3", "eats3", "ctxptr-max", "bypass-eats",
        "abort-eats", "cdmax8"])
def test_vste_to_pste_golden(vste, host, expected):
    assert vste_to_pste(vste, host) == expected


def test_vste_to_pste_ssidsize_is_the_hosts():
    vste = with_dw0(GUEST_S1, 0x0870_0000_4001_006B)  # S1CDMax 1
    assert vste_to_pste(vste, HostStream(HOST_S2, ssidsize=0, ats=False, oas_bits=40)) == 0
    assert vste_to_pste(vste, HostStream(HOST_S2, ssidsize=1, ats=False, oas_bits=40)) != 0


# -------------------------------------------------------------- commands
CTX = GuestContext(vmid=5, vsids={0: 0x10, 1: 0x13, 7: 0x20}, ats=True)
NO_ATS = GuestContext(vmid=5, vsids={0: 0x10}, ats=False)


@pytest.mark.parametrize("guest, ctx, action, physical", [
    # CFGI_CD SID 1 SSID 7 Leaf, plus reserved bit 8 and dword-1 bit 63: SID -> 0x13.
    (dw(0x0000_0001_0000_7105, 0x8000_0000_0000_0001), CTX, Action.FORWARD,
     dw(0x0000_0013_0000_7005, 1)),
    (dw(0x0000_0007_0000_0006), CTX, Action.FORWARD, dw(0x0000_0020_0000_0006)),  # CD_ALL
    (dw(0x0000_0002_0000_0005), CTX, Action.NOP, None),  # vSID 2: not the guest's
    (dw(0x0000_0001_0000_0405), CTX, Action.ILL, None),  # SSec
    (dw(0x0000_0010_0000_0006), CTX, Action.NOP, None),  # a pSID as a vSID: unknown
    # TLBI_NH_VA VMID 0x99 ASID 0x1234 NUM 3 SCALE 2, reserved 11:8, 19:17, 31:25 set;
    # dword 1 Leaf, TTL 2, TG 4K, Addr 0x12345000  ->  VMID 5, reserved bits gone.
    (dw(0x1234_0099_FE2E_3F12, 0x1234_5601), CTX, Action.FORWARD,
     dw(0x1234_0005_0020_3012, 0x1234_5601)),
    (dw(0xFFFF_0099_0000_0010, M64), CTX, Action.FORWARD, 0x0000_0005_0000_0010),  # NH_ALL
    (dw(0x0042_FFFF_0000_0011), CTX, Action.FORWARD, 0x0042_0005_0000_0011),  # NH_ASID
    (dw(0x0000_0002_0000_0013, 0x8000), CTX, Action.FORWARD, dw(0x5_0000_0013, 0x8000)),
    (dw(0xFFFF_FFFF_FFFF_FF30, M64), CTX, Action.FORWARD, 0x0000_0005_0000_0010),  # NSNH
    # ATC_INV Global SID 0 Size 52 -> SID 0x10; without ATS advertised: illegal.
    (dw(0x0000_0000_0000_0240, 52), CTX, Action.FORWARD, dw(0x0000_0010_0000_0240, 52)),
    (dw(0x0000_0000_0000_0240, 52), NO_ATS, Action.ILL, None),
    (0x0000_1234_0000_0003, CTX, Action.CFGI_STE, None),
    (dw(0x0000_0000_0000_0004, 31), CTX, Action.CFGI_STE, None),
    (0x0000_1234_0000_0404, CTX, Action.ILL, None),  # CFGI_STE_RANGE with SSec
    (0x01, CTX, Action.NOP, None), (0x02, CTX, Action.NOP, None),
    (0x401, CTX, Action.ILL, None),  # PREFETCH_CONFIG with SSec
    # RESUME, STALL_TERM: CERROR_ILL with STALL_MODEL=0b01 (IHI 0070 §4.7.1, §4.7.2)
    (0x44, CTX, Action.ILL, None), (0x45, CTX, Action.ILL, None),
    (0x444, CTX, Action.ILL, None),  # RESUME with SSec
    (0x46, CTX, Action.SYNC, None), (0x1046, CTX, Action.SYNC, None),
    (0x2046, CTX, Action.SYNC, None), (0x3046, CTX, Action.ILL, None),  # CS 0b11
    *[(op, CTX, Action.ILL, None) for op in (0x18, 0x1A, 0x20, 0x21, 0x22, 0x23, 0x28,
                                              0x2A, 0x41)],
    *[(op, CTX, Action.ILL, None) for op in (0x00, 0x07, 0x0F, 0x31, 0x47, 0xFF)],
])
def test_guest_command_golden(guest, ctx, action, physical):
    got_action, out = guest_command(guest, ctx)
    assert got_action == action
    if action == Action.FORWARD:
        assert out == physical


def test_every_opcode_has_a_golden_case():
    # Each architected opcode appears in the table above (the ids are the raw ops).
    covered = {0x05, 0x06, 0x12, 0x10, 0x11, 0x13, 0x30, 0x40, 0x03, 0x04, 0x01, 0x02, 0x44,
               0x45, 0x46, 0x18, 0x1A, 0x20, 0x21, 0x22, 0x23, 0x28, 0x2A, 0x41}
    assert covered == {op.value for op in Op}


# ----------------------------------------------------------------- events
# Physical F_TRANSLATION at stage 2: SSV + SSID 5, SID 0x10; STAG 0xABCD (dropped: no
# stalls), RnW, S2, CLASS=IN, reserved bit 63 of dword 1; InputAddr 0x10000; dword 3
# IPA 0x40011000 with junk in the bits below it and above 51.
S2_FAULT = dw(0x0000_0010_0000_5810, 0x8000_0288_0000_ABCD, 0x10000, 0xF000_0000_4001_1ABC)


@pytest.mark.parametrize("record, vsid, fetch_ipa, forward, expected", [
    (S2_FAULT, 0, 0, True, dw(0x5810, 0x288_0000_0000, 0x10000, 0x4001_1000)),
    (S2_FAULT, 3, 0x1234_5678, True,
     dw(0x0000_0003_0000_5810, 0x288_0000_0000, 0x10000, 0x4001_1000)),
    # Stage 1 (S2 clear): dword 3 is not the guest's business.
    (S2_FAULT & ~(1 << 103), 1, 0, True, dw(0x1_0000_5810, 0x208_0000_0000, 0x10000, 0)),
    # F_CD_FETCH from PA 0x1_0000_1238: the guest sees the IPA it gave (0x40000238).
    (dw(0x0000_0010_0000_0009, 0, 0, 0x1_0000_1238), 0, 0x4000_0238, True,
     dw(0x9, 0, 0, 0x4000_0238)),
    # F_WALK_EABT at S2 (a fetch of a hypervisor table): no IPA to give, so none.
    (dw(0x0000_0010_0000_000B, 0x80_0000_0000, 0x5000, 0x1000_9008), 0, 0, True,
     dw(0xB, 0x80_0000_0000, 0x5000, 0)),
    # C_BAD_STE: the vSID, nothing else.
    (dw(0x0000_0010_0000_0004), 2, 0, True, dw(0x0000_0002_0000_0004)),
    # The hypervisor's own stream-table faults and PRI never reach a guest.
    (dw(0x0000_0010_0000_0002), 0, 0, False, None),
    (dw(0x0000_0010_0000_0003, 0, 0, 0x1000_0040), 0, 0, False, None),
    (dw(0x0000_0010_0000_0024), 0, 0, False, None),
    (dw(0x0000_0010_0000_0055), 0, 0, False, None),  # unknown ID
])
def test_guest_event_golden(record, vsid, fetch_ipa, forward, expected):
    ok, out = guest_event(record, vsid, fetch_ipa)
    assert ok == forward
    if forward:
        assert out == expected


# ================================================================ Z3
def _unsat(*constraints) -> None:
    s = z3.Solver()
    s.set("timeout", 1000)  # ms: each query here takes a few tens of ms
    s.add(*constraints)
    result = s.check()
    assert result == z3.unsat, s.model() if result == z3.sat else result


def _sat(*constraints) -> None:
    s = z3.Solver()
    s.set("timeout", 1000)
    s.add(*constraints)
    assert s.check() == z3.sat


def _f(layout, word, name):
    return layout.get(word, name)


@pytest.mark.parametrize("host", [HOST, HOST_ATS], ids=["no-ats", "ats"])
def test_z3_every_vste_keeps_the_hosts_stage2(host):
    vste = STE.symbolic("vste")
    p = vste_to_pste(vste, host)
    valid = _f(STE, p, "V") == 1
    config = _f(STE, p, "CONFIG")
    # Never bypass, stage-1-only or reserved: abort, S2-only or nested.
    _unsat(valid, z3.Not(z3.Or(config == 0b000, config == 0b110, config == 0b111)))
    # Abort is exactly the abort STE; anything else carries the host's dwords 2-7
    # (S2VMID, S2TTB and every stage-2 field) unchanged.
    _unsat(valid, config == 0, p != 1)
    _unsat(valid, config != 0, z3.Extract(511, 128, p) != HOST_S2 >> 128)
    _unsat(valid, config != 0, _f(STE, p, "S2VMID") != VMID)
    _unsat(valid, config != 0, _f(STE, p, "S2TTB") != TTB)
    # STRW, SHCFG and the other dword-1 controls outside the whitelist stay the host's (0).
    host_only = sum(STE[n].mask for n in ("DRE", "CONT", "DCP", "PPAR", "S2FWB", "STRW",
                                          "MEMATTR", "MTCFG", "ALLOCCFG", "SHCFG", "NSCFG",
                                          "PRIVCFG", "INSTCFG"))
    _unsat(valid, p & host_only != 0)
    _unsat(valid, config == 0b111, _f(STE, p, "MEV") != 1)  # events merged: no flood
    # The context pointer stays within the guest's IPA space (the vSMMU's OAS).
    _unsat(valid, config == 0b111, z3.UGT(_f(STE, p, "S1CONTEXTPTR"), (1 << 40) - 1))
    if not host.ats:
        _unsat(_f(STE, p, "EATS") != 0)
    else:
        _unsat(_f(STE, p, "EATS") != 0, config != 0b111)
        _unsat(_f(STE, p, "EATS") > 1)
    _sat(valid, config == 0b111)  # the queries above are not vacuous


FORWARDABLE = {Op.CFGI_CD, Op.CFGI_CD_ALL, Op.TLBI_NH_ALL, Op.TLBI_NH_ASID, Op.TLBI_NH_VA,
               Op.TLBI_NH_VAA, Op.ATC_INV}
WITH_SID = (Op.CFGI_CD, Op.CFGI_CD_ALL, Op.ATC_INV)


def test_z3_every_forwarded_command_stays_in_the_guest():
    c = CMD_ANY.symbolic("cmd")
    action, out = guest_command(c, CTX)
    fwd = action == int(Action.FORWARD)
    op = _f(CMD_ANY, out, "OP")
    _unsat(fwd, z3.Not(z3.Or(*[op == o for o in FORWARDABLE])))
    for o in (Op.TLBI_NH_ALL, Op.TLBI_NH_ASID, Op.TLBI_NH_VA, Op.TLBI_NH_VAA):
        _unsat(fwd, op == o, _f(COMMANDS[o], out, "VMID") != CTX.vmid)
    for o in WITH_SID:
        sid = _f(COMMANDS[o], out, "SID")
        _unsat(fwd, op == o, z3.Not(z3.Or(*[sid == p for p in CTX.vsids.values()])))
    for o in FORWARDABLE:  # reserved bits never travel
        _unsat(fwd, op == o, out & ~COMMANDS[o].defined_mask != 0)
    # Stage-2, EL2/EL3 and global invalidations never come out of a guest command.
    _unsat(fwd, z3.Or(op == Op.TLBI_NSNH_ALL, op == Op.TLBI_S12_VMALL, op == Op.TLBI_S2_IPA))
    _sat(fwd, op == Op.ATC_INV)


def test_z3_ssec_and_reserved_cs_are_always_illegal():
    c = CMD_ANY.symbolic("cmd")
    action, _ = guest_command(c, CTX)
    op = _f(CMD_ANY, c, "OP")
    ssec_ops = [o for o in Op if "SSEC" in COMMANDS[o]]
    _unsat(z3.Or(*[op == o for o in ssec_ops]), z3.Extract(10, 10, c) == 1,
           action != int(Action.ILL))
    _unsat(op == Op.SYNC, z3.Extract(13, 12, c) == 3, action != int(Action.ILL))
    _unsat(z3.And(*[op != o for o in Op]), action != int(Action.ILL))


def test_z3_every_forwarded_event_carries_the_vsid_and_no_host_address():
    record = EVENT.symbolic("record")
    vsid = z3.BitVec("vsid", 32)
    fetch_ipa = z3.BitVec("fetch_ipa", 64)
    forward, out = guest_event(record, vsid, fetch_ipa)
    event = _f(EVENT, record, "ID")
    is_fetch = z3.Or(*[event == int(e) for e in FETCH_EVENTS])
    s2_walk = z3.And(_f(EVENT, record, "S2") == 1,
                     z3.Or(*[event == int(e) for e in WALK_EVENTS]))
    dword3 = z3.Extract(255, 192, out)
    _unsat(forward, _f(EVENT, out, "SID") != vsid)
    _unsat(forward, z3.And(*[event != int(e) for e in GUEST_EVENTS]))
    # A fetch event's address is the supplied IPA, never the physical one unless equal.
    phys_fetch = _f(EVENT, record, "FETCH_ADDR")  # address bits 51:3, as 52 bits
    given = z3.Concat(z3.Extract(51, 3, fetch_ipa), z3.BitVecVal(0, 3))
    _unsat(forward, is_fetch, _f(EVENT, out, "FETCH_ADDR") == phys_fetch, phys_fetch != given)
    _unsat(forward, is_fetch, dword3 != z3.ZeroExt(12, given))
    # Stage-2 walk faults: the IPA bits only; anything else: dword 3 empty.
    _unsat(forward, z3.Not(is_fetch), s2_walk,
           dword3 != z3.Extract(255, 192, record) & EVENT["IPA"].mask >> 192)
    _unsat(forward, z3.Not(is_fetch), z3.Not(s2_walk), dword3 != 0)
    # STAG and the reserved bits of dwords 0-1 never reach the guest.
    _unsat(forward, z3.Extract(79, 64, out) != 0)
    _sat(forward, is_fetch)
