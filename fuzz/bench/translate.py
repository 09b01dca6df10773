#!/usr/bin/env python3
"""Cost of one translation through the SMMUv3 model, in one run, side by side:
an IOTLB hit, a 4-level stage-1 walk (4K granule, 48-bit IOVA) and a nested walk
(that stage 1 over a 3-level stage 2, every table fetch translated: 24 reads).

    ./run python -m fuzz.bench.translate [--rounds N]

Walks are forced by a one-entry IOTLB and two alternating pages, so a "walk"
is what a miss really costs: walk, insert, evict.  Timings vary with the
machine; the ratios to the hit are the figures to compare.
"""

from __future__ import annotations

import argparse
import statistics
import time

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import CD
from vsmmu.hw.memory import HYP, PhysMem
from vsmmu.hw.smmu import Smmu
from vsmmu.sw.alloc import Allocator
from vsmmu.sw.driver import SmmuDriver, cd, ste_nested, ste_s1, ste_s2
from vsmmu.sw.pagetable import IpaView, PageTable

K4 = 4096
POOL, RAM, GUEST = (0x1000_0000, 0x100_0000), 0x4000_0000, 0x8000_0000
SID_S1, SID_NESTED = 1, 2
IOVAS = (0x1234_5000, 0x5678_9000)  # distinct L0..L3 indices: no shared walk prefix


def _rig(tlb_entries: int) -> Smmu:
    mem = PhysMem(48)
    mem.add(*POOL, HYP)
    mem.add(RAM, 0x20_0000, "dev")
    smmu = Smmu(mem, Features(tlb_entries=tlb_entries))
    alloc = Allocator(*POOL)
    drv = SmmuDriver(smmu, mem, alloc, poll=smmu.tick)
    drv.reset()

    s1 = PageTable(mem, alloc, stage=1, granule=K4, tsz=16)
    s2 = PageTable(mem, alloc, stage=2, granule=K4, tsz=32)
    s2.map(GUEST, RAM, 0x20_0000)
    g = PageTable(IpaView(mem, s2), Allocator(GUEST + 0x10_0000, 0x8_0000), stage=1,
                  granule=K4, tsz=16)
    for i, iova in enumerate(IOVAS):
        s1.map(iova, RAM + i * K4, K4)
        g.map(iova, GUEST + i * K4, K4)
    table = drv.alloc_cd_table(SID_S1, 0)
    drv.write_cd(SID_S1, 0, cd(1, s1.ttb, 16))
    drv.write_ste(SID_S1, ste_s1(table.ptr))
    ctx = GUEST + 0x18_0000
    IpaView(mem, s2).write(ctx, CD.to_bytes(cd(2, g.ttb, 16)))
    s2_half = ste_s2(vmid=3, ttb=s2.ttb, t0sz=32, sl0=s2.sl0)
    drv.write_ste(SID_NESTED, ste_nested(ste_s1(ctx), s2_half))
    return smmu


def _ns_per_call(smmu: Smmu, sid: int, iovas: tuple[int, ...], n: int) -> float:
    translate = smmu.translate
    start = time.perf_counter_ns()
    for i in range(n):
        translate(sid, iovas[i & 1])
    return (time.perf_counter_ns() - start) / n


def measure(rounds: int = 5, n: int = 4000) -> dict[str, float]:
    """Median ns per translation for each case."""
    hit_rig, miss_rig = _rig(512), _rig(1)
    cases = {
        "IOTLB hit": (hit_rig, SID_S1, IOVAS[:1] * 2),
        "stage-1 walk (4 levels)": (miss_rig, SID_S1, IOVAS),
        "nested walk (4x S1 over 3-level S2)": (miss_rig, SID_NESTED, IOVAS),
    }
    for rig, sid, iovas in cases.values():  # warm: config cache filled, pages resolve
        assert all(rig.translate(sid, a)[0] for a in iovas)
    return {
        name: statistics.median(_ns_per_call(rig, sid, iovas, n) for _ in range(rounds))
        for name, (rig, sid, iovas) in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="median of this many runs")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results = measure(args.rounds)
    hit = results["IOTLB hit"]
    print(f"{'translation':40} {'ns':>10} {'x hit':>8}")
    for name, ns in results.items():
        print(f"{name:40} {ns:10.0f} {ns / hit:8.1f}")


if __name__ == "__main__":
    main()
