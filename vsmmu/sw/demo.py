"""`vsmmu demo`: program the SMMUv3 model like a host driver and show what it does.

Four devices behind one SMMU, one per kind of configuration (stage 1, stage 2,
nested, a malformed STE), each doing legal and illegal DMA; then a bad command.
Every line of the output is an observation of the model (translation results,
event records read back from the event queue, CMDQ_CONS.ERR), not a script.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch.layouts import CD, STE, CmdError, Op
from ..hw.memory import HYP, PhysMem
from ..hw.smmu import Smmu
from .alloc import Allocator
from .driver import CommandError, SmmuDriver, cd, cmd, ste_abort, ste_nested, ste_s1, ste_s2
from .pagetable import IpaView, PageTable

K4, M2 = 4096, 1 << 21
HYP_POOL = (0x1000_0000, 0x100_0000)  # the host's tables and queues
S1_BUFS = 0x4000_0000  # stage-1 device buffers
GUEST_RAM, GUEST_IPA = 0x6000_0000, 0x8000_0000  # a VM's 2 MiB: IPA -> PA

SID_S1, SID_S2, SID_NESTED, SID_BROKEN = 0x10, 0x20, 0x30, 0x40


@dataclass
class Step:
    device: str
    sid: int
    addr: int
    access: str
    outcome: str  # "ok" / "fault" / "abort"
    pa: int | None
    event: str | None


def _build(mem: PhysMem, smmu: Smmu) -> SmmuDriver:
    alloc = Allocator(*HYP_POOL)
    drv = SmmuDriver(smmu, mem, alloc, poll=smmu.tick)
    drv.reset(two_level=True)

    # Stage 1: a 4-level 4K table (48-bit IOVA), one RW and one read-only page.
    s1 = PageTable(mem, alloc, stage=1, granule=K4, tsz=16)
    s1.map(0x1000_0000, S1_BUFS, K4)
    s1.map(0x1000_1000, S1_BUFS + K4, K4, write=False)
    table = drv.alloc_cd_table(SID_S1, 0)
    drv.write_cd(SID_S1, 0, cd(1, s1.ttb, 16))
    drv.write_ste(SID_S1, ste_s1(table.ptr))

    # Stage 2 only: a VM's IPA window, 2 MiB block.
    s2 = PageTable(mem, alloc, stage=2, granule=K4, tsz=24)
    s2.map(GUEST_IPA, GUEST_RAM, M2)
    s2_half = ste_s2(vmid=5, ttb=s2.ttb, t0sz=24, sl0=s2.sl0)
    drv.write_ste(SID_S2, s2_half)

    # Nested: the VM's own stage-1 table and CD, built in its IPA space.
    gmem = IpaView(mem, s2)
    galloc = Allocator(GUEST_IPA + 0x10_0000, 0x8_0000)
    g1 = PageTable(gmem, galloc, stage=1, granule=K4, tsz=25)
    g1.map(0x2000_0000, GUEST_IPA, K4)  # IOVA -> IPA -> PA GUEST_RAM
    g1.map(0x2000_1000, 0x9000_0000, K4)  # an IPA the VM does not own: stage 2 stops it
    ctx = galloc.alloc(64, 64)
    gmem.write(ctx, CD.to_bytes(cd(7, g1.ttb, 25)))
    drv.write_ste(SID_NESTED, ste_nested(ste_s1(ctx), s2_half))

    # A malformed STE (stage 2 with AArch32 tables: QEMU 10.0 asserts on this one).
    bad = STE.put(s2_half, "S2AA64", 0)
    drv.write_ste(SID_BROKEN, ste_abort())
    mem.write_int(drv.ste_addr(SID_BROKEN), bad, 64)
    drv.cfgi_ste(SID_BROKEN)
    return drv


_DMAS = [
    ("stage-1", SID_S1, 0x1000_0010, "write"),
    ("stage-1", SID_S1, 0x1000_1010, "read"),
    ("stage-1", SID_S1, 0x1000_1010, "write"),  # read-only page
    ("stage-1", SID_S1, 0x1000_2000, "read"),  # unmapped
    ("stage-2", SID_S2, GUEST_IPA + 0x1234, "write"),
    ("stage-2", SID_S2, GUEST_IPA + M2, "read"),  # beyond the VM's window
    ("nested", SID_NESTED, 0x2000_0040, "write"),
    ("nested", SID_NESTED, 0x2000_1000, "read"),  # S1 leaf outside stage 2
    ("bad STE", SID_BROKEN, 0x1000, "read"),
    ("no STE", 0x1_0000_0000 >> 16, 0x1000, "read"),  # SID beyond the table
]


def run() -> dict:
    """Run the scenario; returns plain data (the CLI prints it as text or JSON)."""
    mem = PhysMem(48)
    mem.add(HYP_POOL[0], HYP_POOL[1], HYP)
    mem.add(S1_BUFS, 2 * K4, "dev-s1")
    mem.add(GUEST_RAM, M2, "vm5")
    smmu = Smmu(mem)
    drv = _build(mem, smmu)
    steps = []
    for device, sid, addr, access in _DMAS:
        write = access == "write"
        res = smmu.dma(sid, addr, 8, write=write, data=b"vsmmu!!!" if write else None)
        outcome = "ok" if res.ok else ("fault" if res.fault else "abort")
        steps.append(Step(device, sid, addr, access, outcome, res.pa,
                          str(res.fault) if res.fault else None))
    events = drv.events()

    # A command the SMMU must refuse: the queue halts until the driver recovers it.
    drv.submit(cmd(Op.TLBI_EL3_ALL))
    try:
        drv.sync()
        cerror = None
    except CommandError as e:
        cerror = {"err": CmdError(e.err).name, "index": e.index, "cmd": f"{e.cmd:#034x}"}
        drv.recover()
    return {
        "dma": [vars(s) for s in steps],
        "events": [str(f) for f in events.faults],
        "events_overflow": events.overflow,
        "cmdq_error": cerror,
        "iotlb_entries": len(smmu.iotlb),
        "iotlb_hits": smmu.iotlb.hits,
        "iotlb_misses": smmu.iotlb.misses,
    }


def format_text(result: dict) -> str:
    lines = ["DMA through the SMMUv3 model:"]
    for s in result["dma"]:
        where = f"-> PA {s['pa']:#x}" if s["outcome"] == "ok" else s["event"] or "aborted"
        lines.append(f"  {s['device']:8} sid={s['sid']:#06x} {s['access']:5} "
                     f"{s['addr']:#x}  {where}")
    lines.append(f"Event queue ({len(result['events'])} records):")
    lines += [f"  {e}" for e in result["events"]]
    if result["cmdq_error"]:
        e = result["cmdq_error"]
        lines.append(f"Command queue: CERROR_{e['err']} at index {e['index']} ({e['cmd']}), "
                     "recovered")
    lines.append(f"IOTLB: {result['iotlb_entries']} entries, {result['iotlb_hits']} hits, "
                 f"{result['iotlb_misses']} misses")
    return "\n".join(lines)
