"""Z3 state checks: statements over *all* addresses about the current state.

* s2-containment: for every IPA a guest's stage-2 walk can resolve (any
  level, block or page, AF set or AFFD, output within S2PS), the output lies
  in the guest's own pages.  The table tree is unrolled from memory and each
  table becomes a piecewise-affine function of a symbolic index (runs of
  descriptors with a constant stride are one segment: exact, and small for
  the contiguous mappings hypervisors make), so the walk is a formula over a
  symbolic IPA.  Permissions are ignored: the check over-approximates what
  the guest can reach.  (A plain Z3 array of 4096 descriptors took > 10 s;
  this encoding takes milliseconds.)
* tlb-containment: for every address, no IOTLB entry tagged with the
  guest's VMID translates it outside the guest's pages.

They run when the guest's stage 2 changes (`Guest.s2_generation`), are
cached by it, use a fresh solver per query with a time limit, and report
Z3's `unknown` as its own outcome.  The symbolic walk is checked against the
concrete walker (vsmmu/walk.py) by a differential test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import z3

from vsmmu.hypervisor import Guest, Hypervisor
from vsmmu.layouts import S2_DESC
from vsmmu.memory import PAGE_SHIFT, BusError, PhysMem
from vsmmu.walk import GRANULES, S2Config, s2_geometry

from .violations import S2_CONTAINMENT, TLB_CONTAINMENT

TIMEOUT_MS = 10_000
_OA, _OA_HI, _AF = S2_DESC["OA"].mask, S2_DESC["OA_HI"].mask, S2_DESC["AF"].mask


@dataclass(frozen=True)
class StateResult:
    property: str
    guest: str
    result: str  # "holds" | "violated" | "unknown"
    seconds: float
    witness: dict[str, int] | None = None


def intervals(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page addresses as [start, end) byte ranges, merged."""
    out: list[list[int]] = []
    for pa in sorted(pages):
        if out and out[-1][1] == pa:
            out[-1][1] += 1 << PAGE_SHIFT
        else:
            out.append([pa, pa + (1 << PAGE_SHIFT)])
    return [(a, b) for a, b in out]


def _outside(pa: z3.BitVecRef, allowed: list[tuple[int, int]]) -> z3.BoolRef:
    return z3.And(*[z3.Not(z3.And(z3.ULE(lo, pa), z3.ULT(pa, hi))) for lo, hi in allowed])


def _segments(entries: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """(first, end, desc, step): descriptors first..end-1 are desc + (i - first) * step.
    A table mapping contiguous memory collapses to one segment."""
    segs: list[list[int]] = []
    for idx, desc in entries:
        if segs:
            first, end, d0, step = segs[-1]
            if idx == end and (end - first == 1 or desc - d0 == (idx - first) * step):
                if end - first == 1:
                    segs[-1][3] = desc - d0
                segs[-1][1] += 1
                continue
        segs.append([idx, idx + 1, desc, 0])
    return [tuple(s) for s in segs]


def _table_fn(idx: z3.BitVecRef, entries: list[tuple[int, int]]) -> z3.BitVecRef:
    """The table's descriptor at a symbolic index (0 where it holds nothing)."""
    desc = z3.BitVecVal(0, 64)
    for first, end, d0, step in reversed(_segments(entries)):
        inside = z3.And(z3.UGE(idx, first), z3.ULT(idx, end))
        desc = z3.If(inside, d0 + (idx - first) * (step & ((1 << 64) - 1)), desc)
    return desc


def _next_table(desc: Any, shift: int) -> Any:
    out = desc & _OA & -(1 << shift)
    if shift == 16:
        out |= (desc & _OA_HI) << (48 - S2_DESC["OA_HI"].lo)
    return out


def symbolic_s2_walk(mem: PhysMem, cfg: S2Config, ipa: z3.BitVecRef,
                     pa_max: int = 48) -> list[tuple[z3.BoolRef, z3.BitVecRef]]:
    """(condition, output) for each way the walk of `ipa` can end in a leaf.

    The table tree is unrolled concretely (the hypervisor's tables are few); the
    index within each table stays symbolic, so the query is over every IPA."""
    g = GRANULES[cfg.granule]
    start, _ = s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule, pa_max=pa_max)
    ia = 64 - cfg.t0sz
    top = ia - (g.shift + g.stride * (3 - start))  # index bits at the start level
    leaves = []
    todo = [(cfg.ttb & -((1 << top) * 8), start, top, z3.BoolVal(True))]
    while todo:
        base, level, bits, path = todo.pop()
        try:
            data = mem.read(base, 8 << bits)
        except BusError:
            continue  # an unbacked table resolves nothing (F_WALK_EABT)
        entries = [(i, d) for i in range(1 << bits)
                   if (d := int.from_bytes(data[8 * i : 8 * i + 8], "little"))]
        lsb = g.shift + g.stride * (3 - level)
        idx = z3.Extract(bits - 1, 0, z3.LShR(ipa, lsb)) if bits < 64 else ipa
        idx = z3.ZeroExt(64 - bits, idx)
        desc = _table_fn(idx, entries)
        valid = desc & 1 == 1
        kind = desc & 2 == 2  # table (levels 0-2) or page (level 3)
        accessed = z3.BoolVal(True) if cfg.affd else desc & _AF == _AF
        out = (_next_table(desc, g.shift) & -(1 << lsb)) | (ipa & ((1 << lsb) - 1))
        leaf = kind if level == 3 else z3.Not(kind)
        if level == 3 or level in g.block_levels:
            leaves.append((z3.And(path, valid, leaf, accessed, z3.ULT(out, 1 << cfg.ps_bits)),
                           out))
        if level < 3:
            for i, d in entries:
                nxt = _next_table(d, g.shift)
                if d & 3 == 3 and nxt < 1 << cfg.ps_bits:
                    todo.append((nxt, level + 1, g.stride, z3.And(path, idx == i)))
    return leaves


def _query(prop: str, guest: str, claim_violated: z3.BoolRef, names: dict[str, Any],
           timeout_ms: int) -> StateResult:
    start = time.perf_counter()
    solver = z3.Solver()
    solver.set(timeout=timeout_ms)
    solver.add(claim_violated)
    verdict = solver.check()
    seconds = time.perf_counter() - start
    if verdict == z3.unsat:
        return StateResult(prop, guest, "holds", seconds)
    if verdict == z3.unknown:
        return StateResult(prop, guest, "unknown", seconds)
    model = solver.model()
    witness = {k: model.eval(v, model_completion=True).as_long() for k, v in names.items()}
    return StateResult(prop, guest, "violated", seconds, witness)


def s2_containment(mem: PhysMem, cfg: S2Config, allowed: list[tuple[int, int]],
                   guest: str = "", timeout_ms: int = TIMEOUT_MS) -> StateResult:
    ipa = z3.BitVec("ipa", 64)
    pa = z3.BitVec("pa", 64)
    leaves = symbolic_s2_walk(mem, cfg, ipa)
    escapes = z3.Or(*[z3.And(cond, pa == out) for cond, out in leaves]) if leaves \
        else z3.BoolVal(False)
    claim = z3.And(z3.ULT(ipa, 1 << (64 - cfg.t0sz)), escapes, _outside(pa, allowed))
    return _query(S2_CONTAINMENT, guest, claim, {"ipa": ipa, "pa": pa}, timeout_ms)


def tlb_containment(entries, allowed: list[tuple[int, int]], guest: str = "",
                    timeout_ms: int = TIMEOUT_MS) -> StateResult:
    """`entries`: the guest's IOTLB entries (vsmmu.tlb.TlbEntry)."""
    addr = z3.BitVec("addr", 64)
    pa = z3.BitVec("pa", 64)
    hits = [z3.And(z3.ULE(e.in_base, addr), z3.ULT(addr, e.in_base + e.size),
                   pa == addr - e.in_base + e.out_base) for e in entries]
    claim = z3.And(z3.Or(*hits), _outside(pa, allowed)) if hits else z3.BoolVal(False)
    return _query(TLB_CONTAINMENT, guest, claim, {"addr": addr, "pa": pa}, timeout_ms)


def guest_s2_config(guest: Guest) -> S2Config:
    t = guest.s2
    return S2Config(t0sz=t.tsz, sl0=t.sl0, granule=t.granule, ps_bits=48, ttb=t.ttb,
                    affd=False, vmid=guest.vmid)


def allowed_pages(hyp: Hypervisor, guest: Guest) -> list[tuple[int, int]]:
    return intervals(hyp.mem.pages_of(guest.name) + hyp.mem.pages_of(("msi", guest.name)))


def check_guest(hyp: Hypervisor, guest: Guest, timeout_ms: int = TIMEOUT_MS) -> list[StateResult]:
    """Both state checks for one guest, on the hypervisor's current state."""
    allowed = allowed_pages(hyp, guest)
    entries = [e for phys in hyp.smmus.values() for e in phys.smmu.iotlb.entries()
               if e.vmid == guest.vmid]
    return [
        s2_containment(hyp.mem, guest_s2_config(guest), allowed, guest.name, timeout_ms),
        tlb_containment(entries, allowed, guest.name, timeout_ms),
    ]
