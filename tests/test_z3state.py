"""The Z3 state checks: the symbolic stage-2 walk agrees with the concrete walker,
and the checks find what they should, with witnesses, at every granule."""

from __future__ import annotations

import random

import pytest
import z3
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.runner import boot
from properties.z3state import (
    check_guest,
    intervals,
    s2_containment,
    s2_containment_by_leaf,
    symbolic_s2_walk,
    tlb_containment,
    unroll_s2,
)
from vsmmu.arch.faults import FaultError
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.tlb import TlbEntry
from vsmmu.hw.walk import S2Config, walk_s2
from vsmmu.sw.alloc import Allocator
from vsmmu.sw.pagetable import PageTable

POOL, RAM = (0x1000_0000, 0x10_0000), 0x8000_0000


def stage2(granule: int, mappings: list[tuple[int, int, int]], tsz: int = 24, pool=POOL):
    mem = PhysMem(48)
    mem.add(*pool, "hyp")
    table = PageTable(mem, Allocator(*pool), stage=2, granule=granule, tsz=tsz)
    for ipa, pa, size in mappings:
        table.map(ipa, pa, size)
    cfg = S2Config(t0sz=table.tsz, sl0=table.sl0, granule=granule, ps_bits=48,
                   ttb=table.ttb, affd=False, vmid=1)
    return mem, cfg


def symbolic_at(mem, cfg, ipa: int) -> set[int]:
    var = z3.BitVec("ipa", 64)
    outs = set()
    at = (var, z3.BitVecVal(ipa, 64))
    for leaf in symbolic_s2_walk(mem, cfg, var):
        if z3.is_true(z3.simplify(z3.substitute(leaf.cond, at))):
            out = z3.simplify(z3.substitute(leaf.out, at)).as_long()
            assert leaf.lo <= out < leaf.hi  # the bounds the query relies on hold
            outs.add(out)
    return outs


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([4096, 16384, 65536]), st.randoms(use_true_random=False))
def test_symbolic_walk_agrees_with_the_concrete_walker(granule, rnd: random.Random):
    slots = rnd.sample(range(64), 8)
    mappings = [(s * granule * 3, RAM + rnd.randrange(256) * granule, granule) for s in slots]
    mem, cfg = stage2(granule, mappings)
    probes = [m[0] + rnd.randrange(granule) for m in mappings]
    probes += [rnd.randrange(1 << 30) for _ in range(8)]
    for ipa in probes:
        try:
            expected = {walk_s2(mem, cfg, ipa).out}
        except FaultError:
            expected = set()
        assert symbolic_at(mem, cfg, ipa) == expected, hex(ipa)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_s2_containment_finds_the_one_foreign_page(granule):
    own = [(i * granule, RAM + i * granule, granule) for i in range(16)]
    foreign = (0x40 * granule, 0x9000_0000, granule)
    allowed = intervals([RAM + i * granule + j for i in range(16)
                         for j in range(0, granule, 4096)])
    mem, cfg = stage2(granule, own)
    assert s2_containment(mem, cfg, allowed).result == "holds"
    mem, cfg = stage2(granule, [*own, foreign])
    r = s2_containment(mem, cfg, allowed)
    assert r.result == "violated"
    assert r.witness["ipa"] // granule == 0x40
    assert r.witness["pa"] // granule == 0x9000_0000 // granule


def test_s2_containment_block_mappings():
    allowed = [(RAM, RAM + (1 << 21))]
    mem, cfg = stage2(4096, [(0, RAM, 1 << 21)])  # one 2 MiB block
    assert s2_containment(mem, cfg, allowed).result == "holds"
    r = s2_containment(mem, cfg, [(RAM, RAM + (1 << 20))])  # half of it is foreign
    assert r.result == "violated" and r.witness["pa"] >= RAM + (1 << 20)


def test_tlb_containment():
    allowed = [(RAM, RAM + 0x2000)]
    good = TlbEntry(1, 5, 0x1000, 0x1000, RAM, 3, None, None)
    stale = TlbEntry(1, 5, 0x5000, 0x1000, 0x9000_0000, 3, None, None)
    assert tlb_containment([good], allowed).result == "holds"
    r = tlb_containment([good, stale], allowed)
    assert r.result == "violated" and 0x5000 <= r.witness["addr"] < 0x6000


def test_unknown_is_its_own_outcome():
    mem, cfg = stage2(4096, [(i * 4096, RAM + 2 * i * 4096, 4096) for i in range(64)])
    r = s2_containment(mem, cfg, [(RAM, RAM + 4096)], timeout_ms=1)
    assert r.result in ("unknown", "violated")  # never "holds" for a state that violates


def test_an_unrolling_is_what_tables_say_not_where_they_lie():
    # check_guest remembers answers by the unrolling: equal for the same mappings
    # in tables elsewhere, different when one output changes
    mappings = [(0, RAM, 4096), (0x20_0000, RAM + 0x3000, 4096), (0x40_0000, RAM, 1 << 21)]
    mem, cfg = stage2(4096, mappings)
    moved_mem, moved_cfg = stage2(4096, mappings, pool=(0x2000_0000, 0x10_0000))
    assert moved_cfg.ttb != cfg.ttb
    assert unroll_s2(moved_mem, moved_cfg) == unroll_s2(mem, cfg)
    changed_mem, changed_cfg = stage2(4096, [*mappings[:1], (0x20_0000, RAM + 0x4000, 4096),
                                             *mappings[2:]])
    assert unroll_s2(changed_mem, changed_cfg) != unroll_s2(mem, cfg)


def test_check_guest_sees_a_change_after_remembering_the_state_before():
    system = boot(monitor=False)
    hyp, g0 = system.hyp, system.hyp.guests["g0"]
    for _ in range(2):  # the second time from memory
        assert {r.result for r in check_guest(hyp, g0)} == {"holds"}
    foreign = hyp.mem.pages_of("g1")[0]
    g0.s2.map(0x7000_0000, foreign, 4096)
    [violation] = [r for r in check_guest(hyp, g0) if r.result == "violated"]
    assert violation.guest == "g0" and violation.witness["pa"] == foreign
    assert violation.witness["ipa"] == 0x7000_0000


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_leaf_by_leaf_agrees_with_the_one_query_check_through_changes(rnd: random.Random):
    """The monitor's incremental check against the reference, change after change:
    pages mapped (some foreign), unmapped, blocks split, owned pages given away and a
    descriptor overwritten by hand.  Same verdict every time; a witness that is one."""
    mem = PhysMem(48)
    mem.add(*POOL, "hyp")
    table = PageTable(mem, Allocator(*POOL), stage=2, granule=4096, tsz=24)
    cfg = S2Config(t0sz=24, sl0=table.sl0, granule=4096, ps_bits=48, ttb=table.ttb,
                   affd=False, vmid=1)
    owned = {RAM + i * 4096 for i in range(64)}
    for _ in range(12):
        what = rnd.choice(["map", "map", "foreign", "block", "unmap", "give", "poke"])
        ipa = rnd.randrange(512) * 4096
        try:
            if what == "map":
                table.map(ipa, rnd.choice(sorted(owned)), 4096)
            elif what == "foreign":
                table.map(ipa, 0x9000_0000 + rnd.randrange(16) * 4096, 4096)
            elif what == "block":
                table.map(0x4000_0000 + rnd.randrange(4) * (1 << 21), RAM, 1 << 21)
            elif what == "unmap":
                table.unmap(rnd.randrange(4) * (1 << 20), rnd.randrange(1, 64) * 4096)
            elif what == "give":
                owned.discard(rnd.choice(sorted(owned)))
            else:
                [*_, (level, slot, _)] = table.descriptors(ipa)
                if level == 3:  # a page descriptor (0b11, AF) to anywhere in 16 MiB
                    mem.write(slot, (0x8000_0000 + rnd.randrange(1 << 12) * 4096 | 0x403
                                     ).to_bytes(8, "little"))
        except ValueError:  # MappingError: a map over a mapping, refused
            pass
        allowed = intervals(sorted(owned))
        fresh = s2_containment(mem, cfg, allowed)
        leafwise = s2_containment_by_leaf(mem, cfg, allowed)
        assert leafwise.result == fresh.result, what
        if leafwise.result == "violated":
            pa = walk_s2(mem, cfg, leafwise.witness["ipa"]).out
            assert pa == leafwise.witness["pa"] and pa & ~0xFFF not in owned
