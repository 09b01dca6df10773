"""Universal proofs of the vSMMU's transfer functions.

Each proof runs the transfer function the vSMMU executes (vsmmu/hyp/transfer.py)
on a Z3 bit-vector standing for *every* guest input, and asks Z3 for an input
that breaks the predicate (properties/predicates.py).  `unsat` is a proof;
a model is a counterexample, which is replayed on the integer code before it
is reported, so a "violated" result is always a real input that fails.
Z3's `unknown` (timeout) is reported as such, never as a pass.

The hypervisor-side parameters (a guest's stage-2 STE, its VMID and vSID map)
are concrete: the proofs run for each (guest, vSMMU) of a booted platform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import z3

from vsmmu.arch.layouts import EVENT, STE
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.hyp.transfer import (
    Action,
    GuestContext,
    HostStream,
    guest_command,
    guest_event,
    vste_to_pste,
)

from .predicates import command_confined, event_confined, stage2_authority
from .solver import find
from .violations import CMD_CONFINEMENT, EVENT_CONFINEMENT, S2_AUTHORITY

TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class ProofResult:
    property: str  # invariant name
    subject: str  # which guest / vSMMU it was proved for
    result: str  # "proved" | "violated" | "unknown"
    seconds: float
    counterexample: dict[str, str] | None = None  # inputs, hex

    def as_dict(self) -> dict[str, Any]:
        return {"property": self.property, "subject": self.subject, "result": self.result,
                "seconds": round(self.seconds, 4), "counterexample": self.counterexample}


def _solve(prop: str, subject: str, inputs: dict[str, z3.BitVecRef], claim: z3.BoolRef,
           replay: Callable[[dict[str, int]], bool], timeout_ms: int) -> ProofResult:
    """Look for inputs where `claim` fails; replay any model concretely."""
    answer = find(z3.Not(claim), inputs, timeout_ms)
    if answer.verdict != "sat":
        result = "proved" if answer.verdict == "unsat" else "unknown"
        return ProofResult(prop, subject, result, answer.seconds)
    values = answer.model
    if replay(values):  # the integer code disagrees with Z3: report it, never hide it
        raise AssertionError(f"{prop}: Z3 counterexample {values} passes concretely")
    return ProofResult(prop, subject, "violated", answer.seconds,
                       {k: f"{v:#x}" for k, v in values.items()})


def prove_vste(host: HostStream, subject: str = "", transfer=vste_to_pste,
               timeout_ms: int = TIMEOUT_MS) -> ProofResult:
    """s2-authority: for all 2^512 vSTEs, the physical STE keeps stage 2."""
    vste = STE.symbolic("vste")
    claim = stage2_authority(transfer(vste, host), host.s2_ste)
    return _solve(S2_AUTHORITY, subject, {"vste": vste}, claim,
                  lambda v: stage2_authority(transfer(v["vste"], host), host.s2_ste),
                  timeout_ms)


def prove_commands(ctx: GuestContext, subject: str = "", transfer=guest_command,
                   timeout_ms: int = TIMEOUT_MS) -> ProofResult:
    """cmd-confinement: for all 2^128 guest commands, what is forwarded is confined."""
    cmd = z3.BitVec("cmd", 128)

    def holds(action, out):
        return z3.Implies(action == Action.FORWARD, command_confined(out, ctx)) \
            if isinstance(action, z3.ExprRef) else \
            (action != Action.FORWARD or command_confined(out, ctx))

    return _solve(CMD_CONFINEMENT, subject, {"cmd": cmd}, holds(*transfer(cmd, ctx)),
                  lambda v: holds(*transfer(v["cmd"], ctx)), timeout_ms)


def prove_events(vsid_bits: int = 16, subject: str = "", transfer=guest_event,
                 timeout_ms: int = TIMEOUT_MS) -> ProofResult:
    """event-confinement: for all physical records, vSIDs and fetch addresses, a
    forwarded record carries the vSID and no physical address."""
    record = EVENT.symbolic("record")
    vsid = z3.BitVec("vsid", 32)
    fetch_ipa = z3.BitVec("fetch_ipa", 64)
    narrow = z3.ULT(vsid, 1 << vsid_bits)

    def holds(rec, vs, fi):
        fwd, out = transfer(rec, vs, fi)
        return fwd, out, event_confined(out, rec, vs, fi)

    fwd, _, ok = holds(record, vsid, fetch_ipa)

    def replay(v):
        f, _, good = holds(v["record"], v["vsid"], v["fetch_ipa"])
        return not f or good

    return _solve(EVENT_CONFINEMENT, subject,
                  {"record": record, "vsid": vsid, "fetch_ipa": fetch_ipa},
                  z3.Implies(z3.And(narrow, fwd), ok), replay, timeout_ms)


def prove_all(hyp: Hypervisor | None = None, timeout_ms: int = TIMEOUT_MS) -> list[ProofResult]:
    """Every proof for every (guest, vSMMU) of a platform (default: the embedded one),
    on the platform's design."""
    hyp = hyp or Hypervisor()
    design = hyp.design
    results = [prove_events(subject="all guests", timeout_ms=timeout_ms,
                            transfer=lambda r, v, f: guest_event(r, v, f, design))]
    for guest in hyp.guests.values():
        for vsmmu in guest.vsmmus.values():
            host = HostStream(guest.s2_ste, vsmmu.feat.ssidsize, vsmmu.feat.ats,
                              vsmmu.feat.oas_bits, design)
            results.append(prove_vste(host, vsmmu.name, timeout_ms=timeout_ms))
            results.append(prove_commands(vsmmu.context(), vsmmu.name, timeout_ms=timeout_ms))
    return results
