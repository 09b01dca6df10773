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

The monitor runs them when a guest's stage 2 changes; `check_guest` asks
s2-containment leaf by leaf and remembers each leaf's answer by what it
depends on (its descriptors and the owned pages near its outputs, not where
its table lies), so one changed mapping costs one small query.  Each query
gets a fresh solver with a time limit, and Z3's `unknown` is its own outcome.
The symbolic walk is checked against the concrete walker (vsmmu/hw/walk.py)
by a differential test; the leaf-by-leaf answer against the one query over
every leaf (s2_containment), change after change.
"""

from __future__ import annotations

import bisect
import functools
import sys
import time
from array import array
from dataclasses import dataclass, replace
from typing import Any

import z3

from vsmmu.arch.layouts import S2_DESC
from vsmmu.hw.memory import PAGE_SHIFT, BusError, PhysMem
from vsmmu.hw.walk import GRANULES, S2Config, s2_geometry
from vsmmu.hyp.hypervisor import Guest, Hypervisor

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


@dataclass(frozen=True)
class LeafTable:
    """A table at a level where walks may end: its index width, the IPA bits
    above its index that lead to it, and its leaf descriptors (pages at level 3,
    blocks above) as constant-stride runs (`_segments`)."""

    level: int
    bits: int
    prefix: int
    runs: tuple[tuple[int, int, int, int], ...]


def unroll_s2(mem: PhysMem, cfg: S2Config, pa_max: int = 48) -> tuple[LeafTable, ...]:
    """The concrete half of the walk: every table a walk can reach (the
    hypervisor's tables are few), read once.  Two stage 2s with equal configs
    and equal unrollings resolve every IPA alike, wherever their tables lie."""
    g = GRANULES[cfg.granule]
    start, _ = s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule, pa_max=pa_max)
    top = 64 - cfg.t0sz - (g.shift + g.stride * (3 - start))  # index bits at the start level
    tables: list[LeafTable] = []
    # (table, level, index bits, IPA bits above this level's index that lead here)
    todo = [(cfg.ttb & -((1 << top) * 8), start, top, 0)]
    while todo:
        base, level, bits, prefix = todo.pop()
        try:
            data = mem.read(base, 8 << bits)
        except BusError:
            continue  # an unbacked table resolves nothing (F_WALK_EABT)
        entries = _entries(data)
        if level == 3 or level in g.block_levels:  # the pages, or the blocks, here
            leaves = [(i, d) for i, d in entries if d & 3 == (3 if level == 3 else 1)]
            tables.append(LeafTable(level, bits, prefix, tuple(_segments(leaves))))
        if level < 3:
            for i, d in entries:
                nxt = _next_table(d, g.shift)
                if d & 3 == 3 and nxt < 1 << cfg.ps_bits:
                    todo.append((nxt, level + 1, g.stride, (prefix << bits) | i))
    return tuple(tables)


@functools.lru_cache(maxsize=2048)  # 8 MiB of the hypervisor's 4K stage-2 tables at most
def _entries(data: bytes) -> tuple[tuple[int, int], ...]:
    """(index, descriptor) of each non-zero descriptor of a table's bytes, remembered
    by those bytes: a change to one mapping changes one table, the others are
    looked up.  Most tables a hypervisor writes are nearly empty, so only the span
    between the first and the last non-zero byte is read entry by entry."""
    words = array("Q", data)
    if sys.byteorder == "big":
        words.byteswap()  # descriptors are little-endian
    first = (len(data) - len(data.lstrip(b"\0"))) // 8
    last = (len(data.rstrip(b"\0")) + 7) // 8
    return tuple((i, d) for i, d in enumerate(words[first:last], first) if d)


def symbolic_s2_walk(mem: PhysMem, cfg: S2Config, ipa: z3.BitVecRef,
                     pa_max: int = 48) -> list[Leaf]:
    """Every way the stage-2 walk of a symbolic `ipa` can end in a leaf."""
    return _leaves(unroll_s2(mem, cfg, pa_max), cfg, ipa, pa_max)


def _leaves(tables: tuple[LeafTable, ...], cfg: S2Config, ipa: z3.BitVecRef,
            pa_max: int = 48) -> list[Leaf]:
    """The symbolic half: the index within each unrolled table stays symbolic, so
    the leaves cover every IPA.  Each run of descriptors with a constant stride is
    one leaf whose descriptor is an affine function of the index: exact, and one
    term for a table mapping contiguous memory."""
    start, _ = s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule, pa_max=pa_max)
    return [_leaf(cfg, start, t.level, t.bits, t.prefix, run, ipa)
            for t in tables for run in t.runs]


def _leaf(cfg: S2Config, start: int, level: int, bits: int, prefix: int,
          run: tuple[int, int, int, int], ipa: z3.BitVecRef) -> Leaf:
    """One run of descriptors of the table at `level` that IPA bits above its index
    equal to `prefix` lead to (the start level: any)."""
    g = GRANULES[cfg.granule]
    lsb = g.shift + g.stride * (3 - level)
    idx = z3.ZeroExt(64 - bits, z3.Extract(lsb + bits - 1, lsb, ipa))
    # One equality on the IPA bits above this index says how the walk got here.
    path = [] if level == start else [z3.Extract(63 - cfg.t0sz, lsb + bits, ipa) == prefix]
    first, end, d0, step = run
    desc = d0 + (idx - first) * (step & ((1 << 64) - 1))
    leaf_kind = desc & 2 == 2 if level == 3 else desc & 2 == 0  # page / block
    out = (_next_table(desc, g.shift) & -(1 << lsb)) | (ipa & ((1 << lsb) - 1))
    lo, hi = _run_bounds(cfg, level, run)
    cond = z3.And(*path, z3.UGE(idx, first), z3.ULT(idx, end), desc & 1 == 1,
                  leaf_kind, z3.BoolVal(True) if cfg.affd else desc & _AF == _AF,
                  z3.ULT(out, 1 << cfg.ps_bits))
    return Leaf(cond, out, lo, hi)


def _run_bounds(cfg: S2Config, level: int, run: tuple[int, int, int, int]) -> tuple[int, int]:
    g = GRANULES[cfg.granule]
    first, end, d0, step = run
    return _bounds(d0, step, end - first, g.shift + g.stride * (3 - level), g.shift)


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
    at 512 scattered mappings (fuzz/bench/checks.py): 0.9 s, against 3.1 s
    with assumption literals on one incremental solver and 1.4 s with a fresh
    solver per case."""
    answer = find(z3.Or(*cases) if cases else z3.BoolVal(False), names, timeout_ms)
    result = {"unsat": "holds", "sat": "violated", "unknown": "unknown"}[answer.verdict]
    return StateResult(prop, guest, result, answer.seconds, answer.model)


def s2_containment(mem: PhysMem, cfg: S2Config, allowed: list[tuple[int, int]],
                   guest: str = "", timeout_ms: int = TIMEOUT_MS) -> StateResult:
    return replace(_s2_query(cfg, unroll_s2(mem, cfg), tuple(_merged(allowed)), timeout_ms),
                   guest=guest)


def _s2_query(cfg: S2Config, tables: tuple[LeafTable, ...], allowed: tuple[tuple[int, int], ...],
              timeout_ms: int) -> StateResult:
    ipa, pa = z3.BitVec("ipa", 64), z3.BitVec("pa", 64)
    escapes = [_escape(cfg, leaf, ipa, pa, _relevant(allowed, leaf.lo, leaf.hi))
               for leaf in _leaves(tables, cfg, ipa)]
    return _query(S2_CONTAINMENT, "", escapes, {"ipa": ipa, "pa": pa}, timeout_ms)


def _escape(cfg: S2Config, leaf: Leaf, ipa: z3.BitVecRef, pa: z3.BitVecRef,
            allowed: list[tuple[int, int]]) -> z3.BoolRef:
    """The walk of an in-range `ipa` ends in `leaf` at a `pa` outside `allowed` (only
    the owned ranges the leaf's outputs can meet need be given)."""
    return z3.And(z3.ULT(ipa, 1 << (64 - cfg.t0sz)), leaf.cond, pa == leaf.out,
                  _outside(pa, allowed))


def s2_containment_by_leaf(mem: PhysMem, cfg: S2Config, allowed: list[tuple[int, int]],
                           guest: str = "", timeout_ms: int = TIMEOUT_MS) -> StateResult:
    """s2_containment's question asked one leaf at a time, each answer remembered by
    what that leaf depends on, so that after a change only the leaves it made or
    altered, and those whose nearby owned pages changed, reach Z3 (the monitor's
    way; s2_containment, one query over every leaf, is the reference)."""
    return replace(_s2_by_leaf(cfg, unroll_s2(mem, cfg), tuple(_merged(allowed)), timeout_ms),
                   guest=guest)


def _s2_by_leaf(cfg: S2Config, tables: tuple[LeafTable, ...],
                allowed: tuple[tuple[int, int], ...], timeout_ms: int) -> StateResult:
    started = time.perf_counter()
    key = replace(cfg, vmid=0, ttb=0)  # a leaf's formula depends on neither
    start, _ = s2_geometry(cfg.t0sz, cfg.sl0, cfg.granule)
    unknown = False
    for t in tables:
        for run in t.runs:
            near = tuple(_relevant(allowed, *_run_bounds(cfg, t.level, run)))
            r = _leaf_escape(key, start, t.level, t.bits, t.prefix, run, near, timeout_ms)
            if r.result == "violated":
                return replace(r, seconds=time.perf_counter() - started)
            unknown = unknown or r.result == "unknown"
    return StateResult(S2_CONTAINMENT, "", "unknown" if unknown else "holds",
                       time.perf_counter() - started)


@functools.lru_cache(maxsize=1 << 14)
def _leaf_escape(cfg: S2Config, start: int, level: int, bits: int, prefix: int,
                 run: tuple[int, int, int, int], allowed: tuple[tuple[int, int], ...],
                 timeout_ms: int) -> StateResult:
    ipa, pa = z3.BitVec("ipa", 64), z3.BitVec("pa", 64)
    leaf = _leaf(cfg, start, level, bits, prefix, run, ipa)
    return _query(S2_CONTAINMENT, "", [_escape(cfg, leaf, ipa, pa, list(allowed))],
                  {"ipa": ipa, "pa": pa}, timeout_ms)


def tlb_containment(entries, allowed: list[tuple[int, int]], guest: str = "",
                    timeout_ms: int = TIMEOUT_MS) -> StateResult:
    """`entries`: the guest's IOTLB entries (vsmmu.hw.tlb.TlbEntry)."""
    return replace(_tlb_query(_spans(entries), tuple(_merged(allowed)), timeout_ms), guest=guest)


def _spans(entries) -> tuple[tuple[int, int, int], ...]:
    return tuple(sorted({(e.in_base, e.size, e.out_base) for e in entries}))


def _tlb_query(spans: tuple[tuple[int, int, int], ...], allowed: tuple[tuple[int, int], ...],
               timeout_ms: int) -> StateResult:
    addr = z3.BitVec("addr", 64)
    pa = z3.BitVec("pa", 64)
    escapes = [z3.And(z3.ULE(base, addr), z3.ULT(addr, base + size),
                      pa == addr - base + out,
                      _outside(pa, _relevant(list(allowed), out, out + size)))
               for base, size, out in spans]
    return _query(TLB_CONTAINMENT, "", escapes, {"addr": addr, "pa": pa}, timeout_ms)


# A fuzzing process meets the same stage 2s and IOTLBs again and again (every run
# starts from the boot state; most steps change one domain of many), so
# check_guest remembers answers by everything they depend on: per leaf of a stage
# 2 (_leaf_escape), and per set of cached spans, with the owned ranges.  (An
# `unknown` too: asking again spends the same time limit on the same query.)
# s2_containment and tlb_containment always ask Z3, for the benchmarks that time
# them and the tests that compare against them.
_remembered_tlb = functools.lru_cache(maxsize=1024)(_tlb_query)


def guest_s2_config(guest: Guest) -> S2Config:
    return table_s2_config(guest.s2, guest.vmid)


def table_s2_config(t, vmid: int) -> S2Config:
    return S2Config(t0sz=t.tsz, sl0=t.sl0, granule=t.granule, ps_bits=48, ttb=t.ttb,
                    affd=False, vmid=vmid)


def allowed_pages(hyp: Hypervisor, guest: Guest) -> list[tuple[int, int]]:
    return intervals(hyp.mem.pages_of(guest.name) + hyp.mem.pages_of(("msi", guest.name)))


def check_guest(hyp: Hypervisor, guest: Guest, timeout_ms: int = TIMEOUT_MS) -> list[StateResult]:
    """Both state checks for one guest (every stage 2 of it), on the current state."""
    allowed = tuple(allowed_pages(hyp, guest))
    configs = [table_s2_config(table, vmid) for table, vmid, _ in guest.stage2s()]
    vmids = {c.vmid for c in configs}
    spans = _spans(e for phys in hyp.smmus.values() for e in phys.smmu.iotlb.entries()
                   if e.vmid in vmids)
    results = [_s2_by_leaf(c, unroll_s2(hyp.mem, c), allowed, timeout_ms) for c in configs]
    results.append(_remembered_tlb(spans, allowed, timeout_ms))
    return [replace(r, guest=guest.name) for r in results]
