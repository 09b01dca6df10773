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

import bisect
from dataclasses import dataclass
from typing import Any

import z3

from vsmmu.hypervisor import Guest, Hypervisor
from vsmmu.layouts import S2_DESC
from vsmmu.memory import PAGE_SHIFT, BusError, PhysMem
from vsmmu.walk import GRANULES, S2Config, s2_geometry

from .solver import find
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
    """Page addresses as sorted, merged [start, end) byte ranges."""
    return _merged([(pa, pa + (1 << PAGE_SHIFT)) for pa in pages])


def _outside(pa: z3.BitVecRef, allowed: list[tuple[int, int]]) -> z3.BoolRef:
    # (A Z3 array of owned pages instead of one comparison per range was slower:
    # 128 scattered pages went from 0.2 s to 0.7 s.)
    if not allowed:
        return z3.BoolVal(True)
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


def _next_table(desc: Any, shift: int) -> Any:
    out = desc & _OA & -(1 << shift)
    if shift == 16:
        out |= (desc & _OA_HI) << (48 - S2_DESC["OA_HI"].lo)
    return out


@dataclass(frozen=True)
class Leaf:
    """One way a walk can end: `cond` on the IPA, the output `out`, and concrete
    bounds [lo, hi) that every output of this leaf lies in."""

    cond: z3.BoolRef
    out: z3.BitVecRef
    lo: int
    hi: int


def _bounds(d0: int, step: int, n: int, lsb: int, shift: int) -> tuple[int, int]:
    """[lo, hi) holding every output of descriptors d0 + k*step, k < n.  Exact for
    short runs; from the two ends when the run cannot carry into other bits;
    otherwise everything (sound, just slower to solve)."""
    if n <= 64:
        outs = [_next_table(d0 + k * step, shift) & -(1 << lsb) for k in range(n)]
    elif shift != 16 and step >= 0 and not step & 0xFFF and (d0 + (n - 1) * step) >> 48 == d0 >> 48:
        outs = [d0 & _OA & -(1 << lsb), (d0 + (n - 1) * step) & _OA & -(1 << lsb)]
    else:
        return 0, 1 << 64
    return min(outs), max(outs) + (1 << lsb)


def symbolic_s2_walk(mem: PhysMem, cfg: S2Config, ipa: z3.BitVecRef,
                     pa_max: int = 48) -> list[Leaf]:
    """Every way the stage-2 walk of a symbolic `ipa` can end in a leaf.

    The table tree is unrolled concretely (the hypervisor's tables are few); the
    index within each table stays symbolic, so the query is over every IPA.
    Each run of descriptors with a constant stride (`_segments`) is one leaf
    whose descriptor is an affine function of the index: exact, and one term
    for a table mapping contiguous memory."""
    g = GRANULES[cfg.granule]
    start, _ = s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule, pa_max=pa_max)
    ia = 64 - cfg.t0sz
    top = ia - (g.shift + g.stride * (3 - start))  # index bits at the start level
    leaves: list[Leaf] = []
    # (table, level, index bits, IPA bits above this level's index that lead here)
    todo = [(cfg.ttb & -((1 << top) * 8), start, top, 0)]
    while todo:
        base, level, bits, prefix = todo.pop()
        try:
            data = mem.read(base, 8 << bits)
        except BusError:
            continue  # an unbacked table resolves nothing (F_WALK_EABT)
        entries = [(i, d) for i in range(1 << bits)
                   if (d := int.from_bytes(data[8 * i : 8 * i + 8], "little"))]
        lsb = g.shift + g.stride * (3 - level)
        if level == 3 or level in g.block_levels:
            idx = z3.ZeroExt(64 - bits, z3.Extract(lsb + bits - 1, lsb, ipa))
            # One equality on the IPA bits above this index says how the walk got here.
            path = [] if level == start else [z3.Extract(ia - 1, lsb + bits, ipa) == prefix]
            for first, end, d0, step in _segments(entries):
                desc = d0 + (idx - first) * (step & ((1 << 64) - 1))
                leaf_kind = desc & 2 == 2 if level == 3 else desc & 2 == 0  # page / block
                out = (_next_table(desc, g.shift) & -(1 << lsb)) | (ipa & ((1 << lsb) - 1))
                lo, hi = _bounds(d0, step, end - first, lsb, g.shift)
                cond = z3.And(*path, z3.UGE(idx, first), z3.ULT(idx, end), desc & 1 == 1,
                              leaf_kind, z3.BoolVal(True) if cfg.affd else desc & _AF == _AF,
                              z3.ULT(out, 1 << cfg.ps_bits))
                leaves.append(Leaf(cond, out, lo, hi))
        if level < 3:
            for i, d in entries:
                nxt = _next_table(d, g.shift)
                if d & 3 == 3 and nxt < 1 << cfg.ps_bits:
                    todo.append((nxt, level + 1, g.stride, (prefix << bits) | i))
    return leaves


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, adjacent ranges joined."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _relevant(allowed: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The allowed ranges that meet [lo, hi) (the list is sorted and disjoint)."""
    i = bisect.bisect_right(allowed, (lo, 1 << 64)) - 1
    out = []
    for a, b in allowed[max(i, 0):]:
        if a >= hi:
            break
        if b > lo:
            out.append((a, b))
    return out


def _query(prop: str, guest: str, cases: list[z3.BoolRef], names: dict[str, Any],
           timeout_ms: int) -> StateResult:
    """Is any case satisfiable?  One fresh solver on their disjunction.  Measured
    at 512 scattered mappings (fuzz/bench_properties.py): 0.9 s, against 3.1 s
    with assumption literals on one incremental solver and 1.4 s with a fresh
    solver per case."""
    answer = find(z3.Or(*cases) if cases else z3.BoolVal(False), names, timeout_ms)
    result = {"unsat": "holds", "sat": "violated", "unknown": "unknown"}[answer.verdict]
    return StateResult(prop, guest, result, answer.seconds, answer.model)


def s2_containment(mem: PhysMem, cfg: S2Config, allowed: list[tuple[int, int]],
                   guest: str = "", timeout_ms: int = TIMEOUT_MS) -> StateResult:
    allowed = _merged(allowed)
    ipa = z3.BitVec("ipa", 64)
    pa = z3.BitVec("pa", 64)
    # Each leaf is compared only with the owned ranges its outputs can meet.
    in_range = z3.ULT(ipa, 1 << (64 - cfg.t0sz))
    escapes = [z3.And(in_range, leaf.cond, pa == leaf.out,
                      _outside(pa, _relevant(allowed, leaf.lo, leaf.hi)))
               for leaf in symbolic_s2_walk(mem, cfg, ipa)]
    return _query(S2_CONTAINMENT, guest, escapes, {"ipa": ipa, "pa": pa}, timeout_ms)


def tlb_containment(entries, allowed: list[tuple[int, int]], guest: str = "",
                    timeout_ms: int = TIMEOUT_MS) -> StateResult:
    """`entries`: the guest's IOTLB entries (vsmmu.tlb.TlbEntry)."""
    addr = z3.BitVec("addr", 64)
    pa = z3.BitVec("pa", 64)
    allowed = _merged(allowed)
    escapes = [z3.And(z3.ULE(e.in_base, addr), z3.ULT(addr, e.in_base + e.size),
                      pa == addr - e.in_base + e.out_base,
                      _outside(pa, _relevant(allowed, e.out_base, e.out_base + e.size)))
               for e in entries]
    return _query(TLB_CONTAINMENT, guest, escapes, {"addr": addr, "pa": pa}, timeout_ms)


def guest_s2_config(guest: Guest) -> S2Config:
    return table_s2_config(guest.s2, guest.vmid)


def table_s2_config(t, vmid: int) -> S2Config:
    return S2Config(t0sz=t.tsz, sl0=t.sl0, granule=t.granule, ps_bits=48, ttb=t.ttb,
                    affd=False, vmid=vmid)


def allowed_pages(hyp: Hypervisor, guest: Guest) -> list[tuple[int, int]]:
    return intervals(hyp.mem.pages_of(guest.name) + hyp.mem.pages_of(("msi", guest.name)))


def check_guest(hyp: Hypervisor, guest: Guest, timeout_ms: int = TIMEOUT_MS) -> list[StateResult]:
    """Both state checks for one guest (every stage 2 of it), on the current state."""
    allowed = allowed_pages(hyp, guest)
    configs = [table_s2_config(table, vmid) for table, vmid, _ in guest.stage2s()]
    vmids = {c.vmid for c in configs}
    entries = [e for phys in hyp.smmus.values() for e in phys.smmu.iotlb.entries()
               if e.vmid in vmids]
    return [*(s2_containment(hyp.mem, c, allowed, guest.name, timeout_ms) for c in configs),
            tlb_containment(entries, allowed, guest.name, timeout_ms)]
