"""`queue-protocol` on every command queue a guest or the hypervisor sees: an illegal
command stops it, a well-formed command the SMMU must perform never does
(properties/architecture.py), on the physical SMMU and on each guest's vSMMU.

Command words are 128-bit little-endian, worked out from IHI 0070 §4: the opcode
in bits 7:0 (§4.1.1: PREFETCH_CONFIG 0x01, CFGI_STE 0x03, CFGI_CD 0x05, CFGI_CD_ALL
0x06, TLBI_NH_ALL 0x10, TLBI_NH_ASID 0x11, TLBI_NSNH_ALL 0x30, SYNC 0x46), SSec bit
10, SYNC's CS bits 13:12; bit 8 is RES0 in every command with an opcode byte alone.
"""

from __future__ import annotations

import pytest

from fuzz.physical import PhysicalRunner
from fuzz.program import parse
from fuzz.runner import Runner, boot
from fuzz.targets import runner_for
from properties.architecture import illegal_command, must_accept
from properties.violations import QUEUE_PROTOCOL
from vsmmu.hyp import virtual
from vsmmu.hyp.transfer import Action

WELL_FORMED = {"PREFETCH_CONFIG": 0x01, "CFGI_STE": 0x03, "CFGI_CD": 0x05, "CFGI_CD_ALL": 0x06,
               "TLBI_NH_ALL": 0x10, "TLBI_NH_ASID": 0x11, "TLBI_NSNH_ALL": 0x30, "SYNC": 0x46}
UNDEFINED = 0xFF  # a Reserved opcode (§4.1.1: 0x90-0xFF)


def _cmd(word: int) -> str:
    return f"cmd guest=0x0 smmu=0x0 cmd={word.to_bytes(16, 'little').hex()}"


@pytest.mark.parametrize("name, word", WELL_FORMED.items())
def test_every_must_accept_command_is_performed(name, word):
    for runner in (Runner(), PhysicalRunner()):
        result = runner.run(parse(_cmd(word)))
        assert result.ok, (name, type(runner).__name__, result.violation)
        assert not any(k.endswith("cerror:ILL") for k in result.coverage), name


def test_what_must_be_accepted_by_idr0_ssec_and_res0():
    system = boot(monitor=False)
    phys = system.hyp.smmus["smmu0"].smmu
    vsmmu = system.hyp.guests["g0"].vsmmus["smmu0"]
    assert all(must_accept(phys, w) and must_accept(vsmmu, w) for w in WELL_FORMED.values())
    assert not must_accept(vsmmu, 0x403)  # CFGI_STE with SSec=1: ILLEGAL (§4.1.6)
    assert not must_accept(vsmmu, 0x103)  # a RES0 bit set: an SMMU may reject it (§4.1.5)
    assert not must_accept(vsmmu, 0x3046)  # SYNC with the reserved CS=0b11
    assert not must_accept(vsmmu, UNDEFINED)
    assert not must_accept(vsmmu, 0x12)  # TLBI_NH_VA: some range parameters are ILLEGAL


def _rejects_hints(monkeypatch):
    """A vSMMU whose transfer function calls hints (NOP) illegal: the effect of the
    mutant that makes Action.ILL equal Action.NOP."""
    correct = virtual.guest_command

    def guest_command(cmd, ctx):
        action, out = correct(cmd, ctx)
        return (Action.ILL if action == Action.NOP else action), out

    monkeypatch.setattr(virtual, "guest_command", guest_command)


def test_a_vsmmu_that_rejects_a_legal_command_is_caught(monkeypatch):
    _rejects_hints(monkeypatch)
    v = Runner().run(parse(_cmd(WELL_FORMED["PREFETCH_CONFIG"]))).violation
    assert v is not None and v.invariant == QUEUE_PROTOCOL
    assert (v.witness["problem"], v.witness["command"], v.witness["vsmmu"]) == (
        "legal command rejected", 0x01, "g0/smmu0")


def test_a_vsmmu_that_consumes_an_illegal_command_is_caught(monkeypatch):
    correct = virtual.VSmmu.execute
    monkeypatch.setattr(virtual.VSmmu, "execute",
                        lambda self, cmd: correct(self, cmd) and 0)  # never an error
    v = Runner().run(parse(_cmd(UNDEFINED))).violation
    assert v is not None and v.invariant == QUEUE_PROTOCOL
    assert (v.witness["problem"], v.witness["command"], v.witness["vsmmu"]) == (
        "illegal command consumed", UNDEFINED, "g0/smmu0")


def test_without_the_monitor_nothing_is_checked(monkeypatch):
    _rejects_hints(monkeypatch)
    assert Runner(monitor=False).run(parse(_cmd(WELL_FORMED["PREFETCH_CONFIG"]))).ok


@pytest.mark.parametrize(("word", "illegal"), [
    (0x403, True),  # CFGI_STE, SSec=1 (bit 10): ILLEGAL on the Non-secure queue (§4.1.6)
    (0x401, True),  # PREFETCH_CONFIG, SSec=1
    (0x003, False),  # CFGI_STE, SSec=0
    (0x3046, True),  # CMD_SYNC, CS=0b11
    (0x0046, False),
    (UNDEFINED, True), (0x00, True),  # Reserved opcodes (§4.1.1)
])
def test_what_every_smmu_must_reject(word, illegal):
    assert illegal_command(word) is illegal


def test_a_design_that_performs_a_secure_stream_command_is_caught():
    """xen-v3 does not look at SSec: its PREFETCH_CONFIG no-op consumes the command."""
    ops = parse(_cmd(0x401))
    v = runner_for("system", design="xen-v3", z3=False).run(ops).violation
    assert v is not None and v.invariant == QUEUE_PROTOCOL
    assert Runner().run(ops).violation is None
