#!/usr/bin/env python3
"""What the invariants cost, in one run, side by side:

* per step: the same two-guest DMA workload without a monitor, with the
  concrete checks, and with concrete + Z3 (the Z3 checks re-run every step
  here, as if stage 2 changed each time: the worst case);
* the Z3 state check (s2-containment) at 16 / 128 / 512 stage-2 mappings,
  scattered so that no two are contiguous (the hardest case for the encoding):
  asked afresh, and leaf by leaf after one more mapping (the monitor's way);
* each universal proof of `vsmmu prove`.

    ./run python -m fuzz.bench.checks [--steps N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from properties.monitor import Monitor
from properties.proofs import prove_all
from properties.z3state import s2_containment, s2_containment_by_leaf
from vsmmu.guests.guest import GuestKernel
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.walk import S2Config
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.sw.alloc import Allocator
from vsmmu.sw.pagetable import PageTable

IOVA = 0x1000_0000


def _workload(monitor: str):
    hyp = Hypervisor()
    mon = None if monitor == "off" else Monitor(hyp, z3_checks=monitor == "concrete+z3")
    devices = []
    for guest, dev in (("g0", "nic0"), ("g1", "nic1")):
        k = GuestKernel(hyp, guest)
        dom = k.domain()
        k.attach(dev, dom)
        k.dma_map(dom, IOVA, k.buffer(0x4000), 0x4000)
        devices.append(dev)

    def step(i: int) -> None:
        hyp.dma(devices[i & 1], IOVA + (i & 0x3FF0), 16, write=bool(i & 2), data=bytes(16))
        if mon is not None:
            if monitor == "concrete+z3":
                mon._z3_checked.clear()  # as if stage 2 changed: re-prove every step
            mon.check()

    return step


def per_step_us(monitor: str, steps: int) -> float:
    step = _workload(monitor)
    step(0)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - start) / steps * 1e6


def _scattered(mappings: int):
    """A stage 2 of `mappings` 4K pages, no two contiguous in input or output, and
    the owned ranges: (memory, table, config, allowed, the generator that made them)."""
    rnd = random.Random(mappings)
    mem = PhysMem(48)
    mem.add(0x1000_0000, 0x400_0000, "hyp")
    table = PageTable(mem, Allocator(0x1000_0000, 0x400_0000), stage=2, granule=4096, tsz=24)
    pages = rnd.sample(range(1 << 16), mappings)
    for i, page in enumerate(rnd.sample(range(1 << 18), mappings)):
        table.map(page * 0x3000, 0x8000_0000 + pages[i] * 0x2000, 4096)
    allowed = [(0x8000_0000 + p * 0x2000, 0x8000_0000 + p * 0x2000 + 4096) for p in pages]
    cfg = S2Config(t0sz=24, sl0=table.sl0, granule=4096, ps_bits=48, ttb=table.ttb,
                   affd=False, vmid=1)
    return mem, table, cfg, allowed, rnd


def z3_state_ms(mappings: int, rounds: int = 3) -> float:
    """s2-containment asked afresh: one query over every leaf."""
    mem, _, cfg, allowed, _ = _scattered(mappings)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = s2_containment(mem, cfg, allowed)
        times.append((time.perf_counter() - start) * 1e3)
        assert result.result == "holds", result
    return statistics.median(times)


def z3_incremental_ms(mappings: int, rounds: int = 3) -> float:
    """The monitor's leaf-by-leaf check after one more page is mapped (a fresh page,
    owned), every earlier leaf's answer remembered from the check before it."""
    mem, table, cfg, allowed, rnd = _scattered(mappings)
    s2_containment_by_leaf(mem, cfg, allowed)  # what the monitor knew before the change
    times = []
    for i in range(rounds):
        ipa, pa = (rnd.randrange(1 << 18) * 0x3000 + 0x1000, 0xC000_0000 + 2 * i * 4096)
        table.map(ipa, pa, 4096)
        allowed.append((pa, pa + 4096))
        start = time.perf_counter()
        result = s2_containment_by_leaf(mem, cfg, allowed)
        times.append((time.perf_counter() - start) * 1e3)
        assert result.result == "holds", result
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="DMA steps per workload")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    print("per step (two guests, one DMA each step):")
    base = per_step_us("off", args.steps)
    print(f"  {'monitor':16} {'us/step':>10} {'x off':>7}")
    for mode in ("off", "concrete", "concrete+z3"):
        us = base if mode == "off" else per_step_us(mode, args.steps)
        print(f"  {mode:16} {us:10.1f} {us / base:7.2f}")

    print("Z3 s2-containment, scattered 4K mappings (afresh; after one change, leaf by leaf):")
    for n in (16, 128, 512):
        print(f"  {n:4} mappings {z3_state_ms(n):10.1f} ms {z3_incremental_ms(n):10.1f} ms")

    print("universal proofs (vsmmu prove):")
    for r in prove_all():
        print(f"  {r.property:18} {r.subject:11} {r.result:8} {r.seconds * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
