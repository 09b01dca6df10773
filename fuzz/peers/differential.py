"""Differential testing: our SMMUv3 model against QEMU's, scenario by scenario.

A *scenario* is generated from (seed, index) alone: a stream-table layout, one
STE for the edu device's StreamID (abort, bypass, stage 1, stage 2 or nested,
valid or with one field broken), its CD and page tables (4K/16K/64K granules,
pages and blocks, RO/RW, AP, S2AP, AF, address sizes), then a few steps: edu
DMAs to mapped, unmapped, unbacked and out-of-range addresses, batches of
commands (some illegal), and, in the `stale` scenarios, structure updates made
without the invalidation the architecture requires.

The same program runs twice through the same encoders and the same driver
(`vsmmu.sw.driver.SmmuDriver`, `vsmmu.sw.pagetable.PageTable`):
  * on our model: a `vsmmu.hw.smmu.Smmu` over a `PhysMem` laid out like QEMU's
    virt machine (128 MiB of RAM at 0x4000_0000, the edu device as SID 8, its
    DMA buffer emulated), with the features QEMU's ID registers advertise;
  * on QEMU, through `fuzz.peers.qemu_peer.QemuPeer` (qtest, edu as DMA master).
Compared: the bytes that landed in the data window, the edu buffer (what DMA
reads returned), per step the event records (QEMU's one-record-per-4-bytes
duplicates collapsed, its documented record quirks normalised), EVENTQ
overflow, and per command batch CMDQ_CONS (RD, ERR) and GERROR; at the end
GERROR and CMDQ_CONS.

Every QEMU run gets a fresh QEMU (booted while the previous case runs): a case
is reproducible on its own (`--seed S --start I --cases 1`).

Every difference is then explained by rows of `KNOWN_DIVERGENCES` (a QEMU
deviation from the architecture, with the rule; IMPLEMENTATION DEFINED or
UNPREDICTABLE behaviour; a QEMU crash) or reported as unexplained.  A row is
not matched by a loose pattern: most rows name a *quirk*, QEMU's behaviour
re-implemented on our model (`QuirkSmmu`), and a divergence is explained only
if our model with the quirks switched on reproduces QEMU's observation exactly;
the smallest such set is reported.  Rows that cannot be replayed (crashes,
stale caches, a geometry we reject outright) match the whole case.
`NORMALISATIONS` lists the event-record quirks folded away before comparing.
Run: `vsmmu diff-qemu` (see `add_arguments`/`main`), or `python -m fuzz.peers.differential`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from vsmmu.arch.faults import TRANSACTION_EVENTS, WALK_EVENTS, Fault, FaultError
from vsmmu.arch.features import Features
from vsmmu.arch.layouts import (
    CD,
    COMMANDS,
    EVENT,
    L1_STD,
    REG,
    S1_DESC,
    STE,
    TABLE_DESC,
    CmdError,
    Config,
    Event,
    FaultClass,
    Op,
)
from vsmmu.arch.queue import QueueGeometry
from vsmmu.hw.decode import BadConfig, StreamConfig, decode_ste
from vsmmu.hw.memory import BusError, PhysMem
from vsmmu.hw.smmu import READ, Aborted, Smmu
from vsmmu.hw.walk import GRANULES, s1_start_level, s2_geometry
from vsmmu.sw.alloc import Allocator, read_u64, write_u64
from vsmmu.sw.driver import (
    CommandError,
    SmmuDriver,
    ste_abort,
    ste_bypass,
    ste_nested,
    ste_s1,
    ste_s2,
)
from vsmmu.sw.driver import cd as make_cd
from vsmmu.sw.driver import cmd as make_cmd
from vsmmu.sw.pagetable import IpaView, PageTable

from .qemu_peer import EDU_BUF_USABLE, RAM_BASE, RAM_SIZE, PeerCrash, QemuPeer

# ------------------------------------------------------------------ memory map
# Everything lives in the virt machine's RAM, identically on both sides.
SID = 8  # edu at 00:01.0; the virt machine's iommu-map makes StreamID = RID
HOST_TABLES = (0x4100_0000, 0x0100_0000)  # stream table, queues, CDs, S1/S2 tables
GUEST_TABLES = (0x4200_0000, 0x0020_0000)  # a nested guest's CD and S1 tables (S2-mapped)
DATA, DATA_SIZE = 0x4400_0000, 0x8_0000  # where valid mappings point: compared in full
SCRATCH = 0x47F0_0000  # the edu buffer is loaded and dumped through here (bypass DMAs)
UNBACKED = 0x4C00_0000  # past the end of RAM: QEMU unassigned, our PhysMem unbacked
HIGH = 0x1_0000_0000  # an output address beyond a 32-bit IPS/S2PS
BUF_SIZE = EDU_BUF_USABLE  # the part of edu's buffer DMAs use (and we compare)
MASK64 = (1 << 64) - 1
GRANULE_SIZES = (4096, 16384, 65536)
PS_CHOICES = (32, 36, 40, 42, 44, 48)

Q_CMD_LOG2, Q_EVT_LOG2 = 8, 10


# ====================================================================== scenarios
@dataclass(frozen=True)
class Scenario:
    """One generated test case: `spec` is plain JSON data (reproducible from seed, index)."""

    seed: int
    index: int
    kind: str
    spec: dict

    @property
    def name(self) -> str:
        return f"{self.index:04d}:{self.kind}:{self.spec.get('label', '')}"


KIND_WEIGHTS = {
    "s1": 26, "s2": 12, "nested": 12, "bypass": 4, "abort": 2, "disabled": 3,
    "bad-ste": 12, "bad-cd": 10, "strtab": 6, "cmdq": 8, "evtq": 2, "stale": 5, "fetch": 4,
}


def generate(seed: int, index: int) -> Scenario:
    """The scenario at `index` of the run seeded `seed` (independent of every other)."""
    rng = random.Random(f"vsmmu-diff:{seed}:{index}")
    kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
    kind = rng.choices(kinds, weights)[0]
    spec = _GENERATORS[kind](rng)
    spec["kind"] = kind
    return Scenario(seed, index, kind, spec)


def scenarios(seed: int, count: int, start: int = 0) -> Iterator[Scenario]:
    for i in range(start, start + count):
        yield generate(seed, i)


# --------------------------------------------------------------- building blocks
def _lsb(granule: int, level: int) -> int:
    g = GRANULES[granule]
    return g.shift + g.stride * (3 - level)


def _block_sizes(granule: int, ia: int, start: int) -> list[int]:
    return [1 << _lsb(granule, lv) for lv in sorted(GRANULES[granule].block_levels)
            if lv >= start and _lsb(granule, lv) < ia]


def _strtab(rng: random.Random) -> dict:
    if rng.random() < 0.3:
        return {"two_level": True, "log2": 16}
    return {"two_level": False, "log2": rng.choice((4, 5, 6, 8, 8, 8, 10))}


def _maps(rng: random.Random, granule: int, ia: int, start: int, n: int, *, stage: int,
          outs: tuple[str, ...], data_base: int = DATA) -> list[dict]:
    """n non-overlapping mappings.  `out` kinds: data (into the data window, `data_base`
    being where the window sits in the output space), unbacked, high, hole (nested:
    an IPA stage 2 does not map; filled in by the caller)."""
    maps: list[dict] = []
    for _ in range(n):
        out_kind = rng.choice(outs)
        size = granule
        blocks = _block_sizes(granule, ia, start)
        if out_kind == "data" and blocks and rng.random() < 0.25:
            size = rng.choice(blocks)
        if out_kind == "data":
            if size > granule:
                out = data_base & -size
            else:
                out = data_base + rng.randrange(DATA_SIZE // granule) * granule
        elif out_kind == "unbacked":
            out = UNBACKED + rng.randrange(16) * granule
        elif out_kind == "high":
            out = HIGH + rng.randrange(16) * granule
        else:  # hole: decided by the caller
            out = 0
        for _try in range(20):
            iova = rng.randrange(max(1, (1 << ia) // size)) * size
            if all(iova + size <= m["iova"] or m["iova"] + m["size"] <= iova for m in maps):
                break
        else:
            continue
        m = {"iova": iova, "size": size, "out": out, "out_kind": out_kind,
             "af": rng.random() < 0.88}
        if stage == 1:
            m.update(write=rng.random() < 0.7, user=rng.random() < 0.85)
        else:
            m.update(read=rng.random() < 0.85, write=rng.random() < 0.7)
        maps.append(m)
    return maps


def _dma_steps(rng: random.Random, maps: list[dict], ia: int, n: int, *,
               tbi: bool = False, drain: bool = True, data_base: int = DATA) -> list[dict]:
    """n DMAs: into mappings (for data mappings, inside the data window, which sits
    at `data_base` of the mappings' output space), across a mapping's end, to
    unmapped input addresses, and beyond the input range."""
    steps = []
    for _ in range(n):
        length = rng.choice((4, 4, 8, 16, 32, 64, 64, 128, 256, 512))
        pick = rng.random()
        targets = [m for m in maps if m["size"] >= 4096]
        if targets and pick < 0.72:
            m = rng.choice(targets)
            lo, hi = 0, min(m["size"], 1 << 16)
            if m["out_kind"] == "data":
                lo = max(0, data_base - m["out"])
                hi = min(m["size"], data_base + DATA_SIZE - m["out"])
            length = min(length, hi - lo)
            iova = m["iova"] + lo + rng.randrange((hi - lo - length) // 4 + 1) * 4
            if rng.random() < 0.06:
                iova += rng.randrange(1, 4)
                length = max(4, length - 4)
            label = "mapped"
        elif targets and pick < 0.8:
            m = rng.choice(targets)  # straddle the end of a mapping
            back = rng.choice((4, 8, 16, 32))
            iova, length, label = m["iova"] + m["size"] - back, max(length, 2 * back), "cross"
        elif pick < 0.94 or ia >= 64:
            for _try in range(20):
                iova = rng.randrange(1 << min(ia, 60)) & ~3
                if all(not m["iova"] - 4096 <= iova < m["iova"] + m["size"] + 4096 for m in maps):
                    break
            label = "unmapped"
        else:
            iova = rng.choice(((1 << ia) + rng.randrange(1 << 16) * 4,
                               0xFFFF_FFFF_FFFF_0000 + rng.randrange(1 << 12) * 4))
            label = "beyond"
        if tbi and rng.random() < 0.5:
            iova = (iova & ((1 << 56) - 1)) | rng.randrange(1, 256) << 56
        length = max(4, min(length, BUF_SIZE, (1 << 64) - iova))
        off = rng.randrange((BUF_SIZE - length) // 4 + 1) * 4
        steps.append({"op": "dma", "write": rng.random() < 0.6, "iova": iova & MASK64,
                      "off": off, "len": length, "target": label, "drain": drain})
    return steps


def _s1_spec(rng: random.Random, *, nested: bool = False) -> dict:
    granule = rng.choice(GRANULE_SIZES)
    tsz = rng.randint(16, 39)
    ia = 64 - tsz
    start = s1_start_level(ia, GRANULES[granule])
    outs = ("data", "data", "data", "data", "unbacked", "high")
    if nested:
        outs = ("data", "data", "data", "data", "hole")
    maps = _maps(rng, granule, ia, start, rng.randint(1, 3), stage=1, outs=outs)
    spec = {
        "granule": granule, "tsz": tsz,
        "ips": rng.choice((32, 36, 40, 42, 44, 44, 48, 48)) if rng.random() > 0.03 else 52,
        "asid": rng.randrange(1 << 16), "r": rng.random() < 0.9, "affd": rng.random() < 0.1,
        "maps": maps,
    }
    if rng.random() < 0.12:
        spec["aptable"] = rng.randint(1, 3)
        spec["had"] = rng.random() < 0.5
    if rng.random() < 0.08:
        spec["tbi"] = 1
    return spec


def _s2_geometries(granule: int, ps: int) -> list[tuple[int, int]]:
    eff = min(ps, 44) if granule != 65536 else min(ps, 44)
    lo = 64 - eff if granule == 65536 else max(16, 64 - eff)
    return [(t, sl0) for t in range(lo, 40) for sl0 in (0, 1, 2)
            if s2_geometry(t, sl0, granule, pa_max=44) is not None]


def _s2_spec(rng: random.Random, *, nested: bool = False) -> dict:
    granule = rng.choice(GRANULE_SIZES)
    ps = rng.choice(PS_CHOICES)
    t0sz, sl0 = rng.choice(_s2_geometries(granule, ps))
    ia = 64 - t0sz
    start = s2_geometry(t0sz, sl0, granule, pa_max=44)[0]
    spec = {"granule": granule, "t0sz": t0sz, "sl0": sl0, "ps": ps,
            "vmid": rng.randrange(1 << 16), "s2r": rng.random() < 0.9,
            "affd": rng.random() < 0.1}
    if not nested:
        spec["maps"] = _maps(rng, granule, ia, start, rng.randint(1, 3), stage=2,
                             outs=("data", "data", "data", "unbacked", "high"))
        return spec
    # Nested: an IPA window for the guest's tables and one for the data, stage-2
    # mapped (the data window possibly in two halves with their own permissions).
    slots = (1 << ia) // (4 << 20)
    picks = rng.sample(range(slots), 2)
    ipa_t, ipa_d = picks[0] * (4 << 20), picks[1] * (4 << 20)
    half = DATA_SIZE // 2
    data_maps = []
    for i, (ipa, pa, size) in enumerate(((ipa_d, DATA, half), (ipa_d + half, DATA + half, half))):
        full = i == 0 or rng.random() < 0.8
        data_maps.append({"iova": ipa, "out": pa, "size": size, "out_kind": "data",
                          "read": full or rng.random() < 0.5,
                          "write": full or rng.random() < 0.5, "af": rng.random() < 0.92})
    spec.update(ipa_tables=ipa_t, ipa_data=ipa_d, maps=data_maps,
                table_perm=rng.choice(("rw",) * 12 + ("ro", "none")))
    return spec


def _s1_steps(rng: random.Random, spec: dict, n: int | None = None) -> list[dict]:
    ia = 64 - spec["tsz"]
    return _dma_steps(rng, spec["maps"], ia, n or rng.randint(1, 4), tbi=bool(spec.get("tbi")),
                      data_base=spec.get("data_window", DATA))


# ------------------------------------------------------------------ kinds
def _gen_s1(rng: random.Random) -> dict:
    s1 = _s1_spec(rng)
    return {"label": f"{s1['granule'] // 1024}k", "strtab": _strtab(rng), "config": "s1",
            "s1": s1, "steps": _s1_steps(rng, s1)}


def _gen_s2(rng: random.Random) -> dict:
    s2 = _s2_spec(rng)
    steps = _dma_steps(rng, s2["maps"], 64 - s2["t0sz"], rng.randint(1, 4))
    return {"label": f"{s2['granule'] // 1024}k", "strtab": _strtab(rng), "config": "s2",
            "s2": s2, "steps": steps}


def _gen_nested(rng: random.Random) -> dict:
    s2 = _s2_spec(rng, nested=True)
    s1 = _s1_spec(rng, nested=True)
    ia2 = 64 - s2["t0sz"]
    for m in s1["maps"]:  # stage-1 outputs are IPAs: the data window, or a stage-2 hole
        if m["out_kind"] == "data":
            m["out"] = m["out"] - DATA + s2["ipa_data"] if m["size"] <= DATA_SIZE else 0
            if m["size"] > DATA_SIZE:  # a block cannot sit inside the window: use a page
                m["size"], m["out"] = s1["granule"], s2["ipa_data"]
                m["iova"] &= -m["size"]
        if m["out_kind"] == "hole" or m["out"] & (s1["granule"] - 1):
            m["out_kind"] = "hole"
            m["out"] = _ipa_hole(rng, s2, ia2, s1["granule"])
    # Overlaps may have been introduced by shrinking blocks: keep the first of each.
    kept: list[dict] = []
    for m in s1["maps"]:
        if all(m["iova"] + m["size"] <= k["iova"] or k["iova"] + k["size"] <= m["iova"]
               for k in kept):
            kept.append(m)
    s1["maps"] = kept
    s1["data_window"] = s2["ipa_data"]
    return {"label": f"s1:{s1['granule'] // 1024}k s2:{s2['granule'] // 1024}k",
            "strtab": _strtab(rng), "config": "nested", "s1": s1, "s2": s2,
            "steps": _s1_steps(rng, s1)}


def _ipa_hole(rng: random.Random, s2: dict, ia: int, granule: int) -> int:
    """An IPA stage 2 does not map (outside both windows), granule-aligned, < 2^ia."""
    windows = [(s2["ipa_tables"], GUEST_TABLES[1]), (s2["ipa_data"], DATA_SIZE)]
    for _try in range(50):
        ipa = rng.randrange(max(1, (1 << ia) // granule)) * granule
        if all(not b - granule < ipa < b + s for b, s in windows):
            return ipa
    return (1 << ia) - granule


def _gen_bypass(rng: random.Random) -> dict:
    steps = []
    for _ in range(rng.randint(1, 3)):
        where = rng.random()
        if where < 0.75:
            iova = DATA + rng.randrange(DATA_SIZE // 4 - 256) * 4
        elif where < 0.9:
            iova = UNBACKED + rng.randrange(1 << 16) * 4
        else:
            iova = (1 << rng.choice((44, 46, 48))) + rng.randrange(1 << 16) * 4
        length = rng.choice((4, 16, 64, 256))
        steps.append({"op": "dma", "write": rng.random() < 0.6, "iova": iova,
                      "off": rng.randrange((BUF_SIZE - length) // 4) * 4, "len": length,
                      "target": "identity", "drain": True})
    return steps


def _gen_bypass_kind(rng: random.Random) -> dict:
    return {"label": "", "strtab": _strtab(rng), "config": "bypass",
            "steps": _gen_bypass(rng)}


def _gen_abort(rng: random.Random) -> dict:
    return {"label": "", "strtab": _strtab(rng), "config": "abort", "steps": _gen_bypass(rng)}


def _gen_disabled(rng: random.Random) -> dict:
    gbpa_abort = rng.random() < 0.5
    return {"label": f"gbpa.abort={int(gbpa_abort)}", "strtab": _strtab(rng),
            "config": rng.choice(("s1", "bypass", "abort")), "s1": _s1_spec(rng),
            "smmuen": False, "gbpa_abort": gbpa_abort, "steps": _gen_bypass(rng)}


# One field broken at a time; each value is one the field can hold.
STE_MUTATIONS_S1 = [
    {"V": 0}, {"CONFIG": 1}, {"CONFIG": 2}, {"CONFIG": 3}, {"S1CDMAX": 1}, {"S1CDMAX": 5},
    {"S1FMT": 1}, {"S1FMT": 3}, {"S1STALLD": 1}, {"STRW": 1}, {"STRW": 2}, {"STRW": 3},
    {"EATS": 1}, {"EATS": 2}, {"EATS": 3}, {"S1DSS": 1}, {"S1DSS": 3}, {"MEV": 1},
    {"PRIVCFG": 2}, {"PRIVCFG": 3}, {"INSTCFG": 2}, {"SHCFG": 2}, {"CONT": 3}, {"DCP": 1},
    {"S1CONTEXTPTR": "beyond-oas"},
]
STE_MUTATIONS_S2 = [
    {"V": 0}, {"S2T0SZ": 0}, {"S2T0SZ": 10}, {"S2T0SZ": 15}, {"S2T0SZ": 40}, {"S2T0SZ": 44},
    {"S2T0SZ": 63}, {"S2SL0": 3}, {"S2SL0": "other"}, {"S2TG": 3}, {"S2TG": "other"},
    {"S2PS": 6}, {"S2PS": 7}, {"S2PS": 0}, {"S2AA64": 0}, {"S2ENDI": 1}, {"S2S": 1},
    {"S2HA": 1}, {"S2HD": 1}, {"S2TTB": "beyond-ps"}, {"S2R": 0}, {"S2AFFD": 1},
    {"S2PTW": 1}, {"S2FWB": 1}, {"STRW": 2}, {"EATS": 2}, {"CONFIG": 2}, {"S2VMID": "random"},
]
CD_MUTATIONS = [
    {"V": 0}, {"AA64": 0}, {"A": 0}, {"S": 1}, {"HA": 1}, {"HD": 1}, {"ENDI": 1},
    {"T0SZ": 0}, {"T0SZ": 8}, {"T0SZ": 12}, {"T0SZ": 15}, {"T0SZ": 40}, {"T0SZ": 48},
    {"T0SZ": 63}, {"TG0": 3}, {"TG0": "other"}, {"IPS": 6}, {"IPS": 7}, {"IPS": 0},
    {"TTB0": "beyond-ips"}, {"EPD0": 1}, {"R": 0}, {"EPD1": 0},
    # (TTB1 where both sides agree there is nothing: our RAM-only memory map has no
    # QEMU flash or devices below RAM)
    {"EPD1": 0, "TG1": 2, "T1SZ": 25, "TTB1": UNBACKED},
    {"TBI": 3}, {"AFFD": 1}, {"WXN": 1}, {"ASET": 1}, {"HAD0": 1}, {"TTB0": "unaligned"},
]


def _gen_bad_ste(rng: random.Random) -> dict:
    config = rng.choice(("s1", "s1", "s2", "nested"))
    spec = {"strtab": _strtab(rng), "config": config}
    if config == "s1":
        spec["s1"] = _s1_spec(rng)
        mut = dict(rng.choice(STE_MUTATIONS_S1))
        spec["steps"] = _s1_steps(rng, spec["s1"])
    elif config == "s2":
        spec = _gen_s2(rng)
        mut = dict(rng.choice(STE_MUTATIONS_S2))
    else:
        spec = _gen_nested(rng)
        mut = dict(rng.choice(STE_MUTATIONS_S2 + STE_MUTATIONS_S1))
    for k, v in list(mut.items()):
        if v == "random":
            mut[k] = rng.randrange(1 << 16)
    spec["ste_mut"] = mut
    spec["label"] = f"{spec['config']} " + ",".join(f"{k}={v}" for k, v in mut.items())
    spec.setdefault("strtab", _strtab(rng))
    return spec


def _gen_bad_cd(rng: random.Random) -> dict:
    spec = _gen_s1(rng) if rng.random() < 0.8 else _gen_nested(rng)
    mut = dict(rng.choice(CD_MUTATIONS))
    if "TBI" in mut:
        spec["s1"]["tbi"] = 1
        spec["steps"] = _s1_steps(rng, spec["s1"])
    spec["cd_mut"] = mut
    spec["label"] = f"{spec['config']} " + ",".join(f"{k}={v}" for k, v in mut.items())
    return spec


def _gen_strtab(rng: random.Random) -> dict:
    spec = _gen_s1(rng) if rng.random() < 0.6 else _gen_bypass_kind(rng)
    pick = rng.random()
    if pick < 0.25:
        spec["strtab"] = {"two_level": False, "log2": rng.choice((0, 1, 2, 3))}
        spec["label"] = f"linear log2={spec['strtab']['log2']}"
    elif pick < 0.4:  # a 2-level table first, then the driver resets to a linear one
        spec["strtab"] = {"two_level": False, "log2": rng.choice((4, 8)), "before_2lvl": True}
        spec["label"] = "2lvl then linear"
    else:
        span = rng.choice((0, 1, 2, 3, 4, 4, 5, 6, 8, 9, 10, 11, 12, 20, 31))
        spec["strtab"] = {"two_level": True, "log2": 16, "span": span}
        spec["label"] = f"2lvl span={span}"
    return spec


_CMD_OPS_LEGAL = [
    Op.CFGI_STE, Op.CFGI_STE_RANGE, Op.CFGI_CD, Op.CFGI_CD_ALL, Op.TLBI_NH_ALL,
    Op.TLBI_NH_ASID, Op.TLBI_NH_VA, Op.TLBI_NH_VAA, Op.TLBI_S12_VMALL, Op.TLBI_S2_IPA,
    Op.TLBI_NSNH_ALL, Op.PREFETCH_CONFIG, Op.PREFETCH_ADDR, Op.SYNC, Op.RESUME, Op.STALL_TERM,
]
_CMD_OPS_ILLEGAL = [
    Op.TLBI_EL2_ALL, Op.TLBI_EL2_ASID, Op.TLBI_EL2_VA, Op.TLBI_EL2_VAA, Op.TLBI_EL3_ALL,
    Op.TLBI_EL3_VA, Op.PRI_RESP, Op.ATC_INV,
]
_UNKNOWN_OPCODES = (0x00, 0x07, 0x08, 0x09, 0x0F, 0x14, 0x2B, 0x31, 0x47, 0x80, 0xFF)


def _random_cmd(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.12:
        return rng.choice(_UNKNOWN_OPCODES) | rng.getrandbits(56) << 8 & ~(0xFF << 8)
    op = rng.choice(_CMD_OPS_ILLEGAL) if pick < 0.3 else rng.choice(_CMD_OPS_LEGAL)
    layout = COMMANDS[op]
    fields: dict[str, int] = {}
    for f in layout:
        if f.name == "OP":
            continue
        if f.name == "SSEC":
            fields["SSEC"] = int(rng.random() < 0.15)
        elif f.name == "CS":
            fields["CS"] = rng.choice((0, 0, 1, 2, 3))
        elif f.name == "SID":
            fields["SID"] = rng.choice((SID, SID, rng.randrange(1 << 16), rng.randrange(1 << 32)))
        elif f.name == "ADDR":
            fields["ADDR"] = rng.randrange(1 << 32) << 12 & f.max
        elif f.name in ("MSIADDR", "MSIDATA", "MSIATTR", "MSH", "SSID", "STAG", "PRGINDEX"):
            fields[f.name] = 0 if rng.random() < 0.8 else rng.randrange(1 << f.width) & f.max
        else:
            fields[f.name] = rng.randrange(1 << min(f.width, 16))
    return make_cmd(op, **fields)


def _gen_cmdq(rng: random.Random) -> dict:
    spec = _gen_s1(rng)
    spec["steps"] = _s1_steps(rng, spec["s1"], 1)
    for _ in range(rng.randint(1, 2)):
        spec["steps"].append({"op": "cmds", "cmds": [_random_cmd(rng)
                                                     for _ in range(rng.randint(1, 3))]})
        spec["steps"] += _s1_steps(rng, spec["s1"], 1)
    ops = [c & 0xFF for s in spec["steps"] if s["op"] == "cmds" for c in s["cmds"]]
    spec["label"] = " ".join(f"{o:#04x}" for o in ops)
    return spec


def _gen_evtq(rng: random.Random) -> dict:
    spec = _gen_s1(rng)
    log2 = rng.choice((0, 1, 2))
    spec["queues"] = {"evtq_log2": log2}
    spec["s1"]["r"] = True
    n = (1 << log2) + rng.randint(0, 2)
    ia = 64 - spec["s1"]["tsz"]
    steps = []
    for i in range(n):  # 4-byte faulting writes (one record each, even on QEMU)
        iova = (1 << ia) + i * 4096 if rng.random() < 0.5 else ((1 << ia) - (i + 1) * 65536)
        if any(m["iova"] <= iova < m["iova"] + m["size"] for m in spec["s1"]["maps"]):
            iova = (1 << ia) + i * 4096
        steps.append({"op": "dma", "write": True, "iova": iova & MASK64, "off": 0, "len": 4,
                      "target": "unmapped", "drain": False})
    steps.append({"op": "events"})
    spec["steps"] = steps
    spec["label"] = f"log2={log2} faults={n}"
    return spec


def _gen_stale(rng: random.Random) -> dict:
    spec = _gen_s1(rng)
    s1 = spec["s1"]
    s1["r"] = True
    pages = [m for m in s1["maps"] if m["out_kind"] == "data" and m["size"] == s1["granule"]]
    what = rng.choice(("pte", "unmap", "ste", "cd-asid") if pages else ("ste", "cd-asid"))
    if pages:
        m = pages[0]
        m.update(write=True, user=True, af=True)
    else:
        m = None
    warm = ({"op": "dma", "write": True, "iova": m["iova"], "off": 0, "len": 64,
             "target": "mapped", "drain": True} if m else _s1_steps(rng, s1, 1)[0])
    again = dict(warm, off=64, stale=True)
    if what == "pte":
        new_out = DATA + rng.randrange(DATA_SIZE // s1["granule"]) * s1["granule"]
        poke = {"op": "poke", "what": "pte", "iova": m["iova"], "out": new_out}
        inv = rng.choice(([make_cmd(Op.TLBI_NH_ASID, ASID=s1["asid"])],
                          [make_cmd(Op.TLBI_NH_VA, ASID=s1["asid"], ADDR=m["iova"], LEAF=1)],
                          [make_cmd(Op.TLBI_NSNH_ALL)]))
    elif what == "unmap":
        poke = {"op": "poke", "what": "unmap", "iova": m["iova"]}
        inv = [make_cmd(Op.TLBI_NH_VA, ASID=s1["asid"], ADDR=m["iova"], LEAF=1)]
    elif what == "ste":
        # (not bypass: IOVA == PA could reach the virt machine's devices)
        poke = {"op": "poke", "what": "ste", "config": "abort"}
        inv = [make_cmd(Op.CFGI_STE, SID=SID, LEAF=1)]
    else:
        poke = {"op": "poke", "what": "cd-asid", "asid": (s1["asid"] + 1) & 0xFFFF}
        inv = [make_cmd(Op.CFGI_CD, SID=SID)]
    after = dict(warm, off=128)
    spec["steps"] = [warm, poke, again, {"op": "cmds", "cmds": inv}, after]
    spec["label"] = what
    return spec


def _gen_fetch(rng: random.Random) -> dict:
    what = rng.choice(("strtab", "cd", "ttb", "s2ttb", "nested-cd"))
    if what in ("strtab", "cd", "ttb"):
        spec = _gen_s1(rng)
    elif what == "s2ttb":
        spec = _gen_s2(rng)
    else:
        spec = _gen_nested(rng)
    spec["fetch"] = what
    spec["label"] = what
    return spec


_GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "s1": _gen_s1, "s2": _gen_s2, "nested": _gen_nested, "bypass": _gen_bypass_kind,
    "abort": _gen_abort, "disabled": _gen_disabled, "bad-ste": _gen_bad_ste,
    "bad-cd": _gen_bad_cd, "strtab": _gen_strtab, "cmdq": _gen_cmdq, "evtq": _gen_evtq,
    "stale": _gen_stale, "fetch": _gen_fetch,
}


# ====================================================================== targets
class ModelTarget:
    """Our model on the virt machine's memory map, with an emulated edu buffer."""

    name = "ours"

    def __init__(self, features: Features, quirks: frozenset[str] = frozenset()):
        self.features = features
        self.quirks = frozenset(quirks)
        self.phys = PhysMem(48)
        self.phys.add(RAM_BASE, RAM_SIZE)
        self.phys.checkpoint()

    def begin(self, buffer: bytes, canary: bytes) -> None:
        self.phys.rollback()
        self.phys.checkpoint()
        if self.quirks:
            self.smmu = QuirkSmmu(self.phys, self.features, self.quirks)
        else:
            self.smmu = Smmu(self.phys, self.features)
        self.mmio, self.mem, self.poll = self.smmu, self.phys, self.smmu.tick
        self.buf = bytearray(buffer)
        self.phys.write(DATA, canary)

    def dma(self, write: bool, iova: int, off: int, n: int) -> None:
        """What edu does: one bus access per 4 KiB page (as PCIe splits requests), each
        translated on its own; a faulting read fills its part of the buffer with zeros
        (QEMU reads unassigned memory as zeros), and the DMA goes on with the next page."""
        priv = "unprivileged-as-privileged" in self.quirks
        pos = 0
        while pos < n:
            cur = (iova + pos) & MASK64
            chunk = min(n - pos, 4096 - (cur & 0xFFF))
            if "high-iova-bypasses-smmu" in self.quirks and cur >> QEMU_IOMMU_VA_BITS:
                if not write:  # never reaches the SMMU: unassigned, reads as zeros
                    self.buf[off + pos : off + pos + chunk] = bytes(chunk)
            elif write:
                self.smmu.dma(SID, cur, write=True, priv=priv,
                              data=bytes(self.buf[off + pos:][:chunk]))
            else:
                r = self.smmu.dma(SID, cur, chunk, priv=priv)
                data = r.data if r.ok and r.data is not None else bytes(chunk)
                self.buf[off + pos : off + pos + chunk] = data
            pos += chunk

    def read(self, addr: int, n: int) -> bytes:
        return self.phys.read(addr, n)

    def finish(self) -> bytes:
        return bytes(self.buf[:BUF_SIZE])


class QemuTarget:
    """QEMU through a running `QemuPeer`."""

    name = "qemu"

    def __init__(self, peer: QemuPeer):
        self.peer = peer

    def begin(self, buffer: bytes, canary: bytes) -> None:
        p = self.peer
        p.scrub(keep=((DATA, DATA_SIZE),))
        p.load_buffer(buffer, SCRATCH)
        p.memwrite(DATA, canary)
        self.mmio, self.mem, self.poll = p.mmio, p.mem, lambda: None

    def dma(self, write: bool, iova: int, off: int, n: int) -> None:
        if write:
            self.peer.dma_to_memory(iova, off, n)
        else:
            self.peer.dma_from_memory(iova, off, n)

    def read(self, addr: int, n: int) -> bytes:
        return self.peer.memread(addr, n)

    def finish(self) -> bytes:
        return self.peer.dump_buffer(SCRATCH, BUF_SIZE)


# ====================================================================== running
@dataclass
class StepObs:
    op: str
    events: list[dict] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)  # the records as read, before collapsing
    overflow: bool = False
    cmd: dict | None = None
    stale: bool = False


@dataclass
class Observation:
    steps: list[StepObs] = field(default_factory=list)
    landed: list[tuple[int, int]] = field(default_factory=list)  # changed data-window ranges
    memory: bytes = b""
    buffer: bytes = b""
    buffer_changed: list[tuple[int, int]] = field(default_factory=list)
    gerror: int = 0  # active global errors (GERROR ^ GERRORN)
    cmdq_cons: int = 0
    error: str | None = None  # the harness could not complete the scenario on this side
    crash: str | None = None  # QEMU died
    ste: int = 0  # the STE the scenario installed (for the rows that judge it)


def _case_data(s: Scenario) -> tuple[bytes, bytes]:
    rng = random.Random(f"vsmmu-diff-data:{s.seed}:{s.index}")
    buffer = rng.randbytes(BUF_SIZE)
    canary = rng.randbytes(4096) * (DATA_SIZE // 4096)
    return buffer, canary


def _ranges(a: bytes, b: bytes, base: int = 0) -> list[tuple[int, int]]:
    """[start, end) runs where a and b differ (4-byte resolution is plenty)."""
    out: list[tuple[int, int]] = []
    step = 4096
    for page in range(0, len(a), step):
        if a[page : page + step] == b[page : page + step]:
            continue
        for i in range(page, min(page + step, len(a)), 4):
            if a[i : i + 4] != b[i : i + 4]:
                if out and out[-1][1] == base + i:
                    out[-1] = (out[-1][0], base + i + 4)
                else:
                    out.append((base + i, base + i + 4))
    return out


class _Env:
    """What a scenario built on one target: the driver and the tables, for later steps."""

    def __init__(self, target, spec: dict):
        self.target, self.spec = target, spec
        self.alloc = Allocator(*HOST_TABLES)
        self.drv = SmmuDriver(target.mmio, target.mem, self.alloc, target.poll)
        self.pt: PageTable | None = None
        self.s2pt: PageTable | None = None
        self.guest = None  # the memory port stage-1 structures are written through
        self.cd_addr: int | None = None
        self.cd_word = 0
        self.ste_word = 0


def _reg(target, name: str) -> int:
    r = REG[name]
    return target.mmio.read(r.offset, r.size)


def _wreg(target, name: str, value: int) -> None:
    r = REG[name]
    target.mmio.write(r.offset, value, r.size)


def _gerror(target) -> int:
    return _reg(target, "GERROR") ^ _reg(target, "GERRORN")


def _map_all(pt: PageTable, maps: list[dict], stage: int) -> None:
    for m in maps:
        if stage == 1:
            pt.map(m["iova"], m["out"], m["size"], write=m["write"], user=m["user"], af=m["af"])
        else:
            pt.map(m["iova"], m["out"], m["size"], read=m["read"], write=m["write"], af=m["af"])


def _build(env: _Env) -> None:
    spec, t, drv = env.spec, env.target, env.drv
    st = spec["strtab"]
    q = spec.get("queues", {})
    if st.get("before_2lvl"):
        drv.reset(two_level=True, log2_sids=16, cmdq_log2=Q_CMD_LOG2, evtq_log2=Q_EVT_LOG2)
    drv.reset(two_level=st["two_level"], log2_sids=st["log2"], cmdq_log2=Q_CMD_LOG2,
              evtq_log2=q.get("evtq_log2", Q_EVT_LOG2), gbpa_abort=spec.get("gbpa_abort", True))
    config = spec["config"]
    s1, s2 = spec.get("s1"), spec.get("s2")
    s2_word = 0
    if config in ("s2", "nested"):
        env.s2pt = PageTable(t.mem, env.alloc, stage=2, granule=s2["granule"], tsz=s2["t0sz"],
                             sl0=s2["sl0"], pa_bits=48)  # outputs beyond S2PS on purpose
        if config == "nested":
            perm = s2["table_perm"]
            env.s2pt.map(s2["ipa_tables"], GUEST_TABLES[0], GUEST_TABLES[1],
                         read=perm != "none", write=perm == "rw")
        _map_all(env.s2pt, s2["maps"], 2)
        s2_word = ste_s2(vmid=s2["vmid"], ttb=env.s2pt.ttb, t0sz=s2["t0sz"], sl0=s2["sl0"],
                         tg=s2["granule"], ps=s2["ps"], affd=s2["affd"], s2r=s2["s2r"])
    if config in ("s1", "nested"):
        if config == "nested":
            env.guest = IpaView(t.mem, env.s2pt)
            galloc = Allocator(s2["ipa_tables"], GUEST_TABLES[1])
        else:
            env.guest, galloc = t.mem, env.alloc
        env.pt = PageTable(env.guest, galloc, stage=1, granule=s1["granule"], tsz=s1["tsz"])
        _map_all(env.pt, s1["maps"], 1)
        if s1.get("aptable") and s1["maps"]:
            path = env.pt.descriptors(s1["maps"][0]["iova"])
            if len(path) > 1:
                _, slot, desc = path[0]
                write_u64(env.guest, slot, TABLE_DESC.encode(desc, APTABLE=s1["aptable"]))
        word = make_cd(s1["asid"], env.pt.ttb, s1["tsz"], tg0=s1["granule"], ips=s1["ips"],
                       r=s1["r"], affd=s1["affd"], HAD0=int(bool(s1.get("had"))),
                       TBI=int(s1.get("tbi", 0)))
        word = _mutate(CD, word, spec.get("cd_mut", {}), s1=s1)
        env.cd_addr = galloc.alloc(64, 64)
        env.guest.write(env.cd_addr, word.to_bytes(64, "little"))
        env.cd_word = word
        s1_word = ste_s1(env.cd_addr)
        ste = ste_nested(s1_word, s2_word) if config == "nested" else s1_word
    elif config == "s2":
        ste = s2_word
    elif config == "bypass":
        ste = ste_bypass()
    else:
        ste = ste_abort()
    ste = _mutate(STE, ste, spec.get("ste_mut", {}), s2=s2)
    env.ste_word = ste
    fetch = spec.get("fetch")
    if fetch == "cd":
        ste = STE.encode(ste, S1CONTEXTPTR=UNBACKED)
    elif fetch == "nested-cd":
        ste = STE.encode(ste, S1CONTEXTPTR=_ipa_hole(random.Random(1), s2, 64 - s2["t0sz"], 64))
    elif fetch == "ttb" and env.cd_addr is not None:
        env.guest.write(env.cd_addr, CD.encode(env.cd_word, TTB0=UNBACKED).to_bytes(64, "little"))
    elif fetch == "s2ttb":
        ste = STE.encode(ste, S2TTB=UNBACKED)
    if not SID >> st["log2"]:  # else the STE has no place in the table: C_BAD_STREAMID
        drv.write_ste(SID, ste)
    if "span" in st:  # rewrite the L1 descriptor covering SID with another Span
        base = REG["STRTAB_BASE"].layout.get(_reg(t, "STRTAB_BASE"), "ADDR")
        slot = base + 8 * (SID >> 8)
        l2 = L1_STD.get(read_u64(t.mem, slot), "L2PTR")
        write_u64(t.mem, slot, L1_STD.encode(SPAN=st["span"], L2PTR=l2))
        drv.cfgi_all()
    cr0 = REG["CR0"].layout
    if fetch == "strtab":
        _wreg(t, "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1))
        _wreg(t, "STRTAB_BASE", REG["STRTAB_BASE"].layout.encode(ADDR=UNBACKED))
        _wreg(t, "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1, SMMUEN=1))
        drv.cfgi_all()
    if spec.get("smmuen") is False:
        _wreg(t, "CR0", cr0.encode(CMDQEN=1, EVENTQEN=1))


def _mutate(layout, word: int, mut: dict, *, s1: dict | None = None,
            s2: dict | None = None) -> int:
    fields = {}
    for name, value in mut.items():
        if name not in layout:
            continue
        if value == "beyond-oas":
            value = layout.get(word, name) | 1 << 44
        elif value == "beyond-ps":
            value = layout.get(word, name) | 1 << (min(s2["ps"], 44) if s2 else 44)
        elif value == "beyond-ips":
            fields["IPS"] = 0
            value = layout.get(word, name) | 1 << 32
        elif value == "unaligned":
            value = layout.get(word, name) | 0x10
        elif value == "other":  # another valid-looking encoding than the current one
            value = (layout.get(word, name) + 1) % 3
        fields[name] = value
    return layout.encode(word, **fields) if fields else word


def _drain(target) -> tuple[list[int], bool]:
    """Every record between CONS and PROD (raw 256-bit words); acknowledges overflow."""
    base = _reg(target, "EVENTQ_BASE")
    layout = REG["EVENTQ_BASE"].layout
    q = QueueGeometry.from_base_reg(layout.get(base, "ADDR"), layout.get(base, "LOG2SIZE"),
                                    19, 32)
    prod_reg, cons_reg = _reg(target, "EVENTQ_PROD"), _reg(target, "EVENTQ_CONS")
    pl, cl = REG["EVENTQ_PROD"].layout, REG["EVENTQ_CONS"].layout
    prod, cons = pl.get(prod_reg, "WR"), cl.get(cons_reg, "RD")
    n = min(q.used(prod, cons), q.entries)
    raw = []
    if n:
        first = q.index(cons)
        k = min(n, q.entries - first)
        data = target.mem.read(q.addr(cons), 32 * k)
        if n > k:
            data += target.mem.read(q.base, 32 * (n - k))
        raw = [int.from_bytes(data[i : i + 32], "little") for i in range(0, len(data), 32)]
        for _ in range(n):
            cons = q.inc(cons)
    ovf = pl.get(prod_reg, "OVFLG")
    overflow = ovf != cl.get(cons_reg, "OVACKFLG")
    _wreg(target, "EVENTQ_CONS", cl.encode(RD=cons, OVACKFLG=ovf))
    return raw, overflow


def _run_cmds(env: _Env, cmds: list[int]) -> dict:
    """Submit, SYNC, and recover (as Linux does) from up to 4 queue stops."""
    drv, t = env.drv, env.target
    errors = []
    stop = None
    try:
        drv.submit(*cmds)
        drv.sync()
    except CommandError as e:
        stop = e
    for _ in range(4):
        if stop is None:
            break
        errors.append({"err": stop.err.name if isinstance(stop.err, CmdError) else stop.err,
                       "index": stop.index, "op": stop.cmd & 0xFF,
                       "gerror": _gerror(t)})
        stop = None
        try:
            drv.recover()
            drv.sync()
        except CommandError as e:
            stop = e
    cons = _reg(t, "CMDQ_CONS")
    layout = REG["CMDQ_CONS"].layout
    return {"errors": errors, "rd": layout.get(cons, "RD"), "err": layout.get(cons, "ERR"),
            "gerror": _gerror(t)}


def _poke(env: _Env, step: dict) -> None:
    t, drv = env.target, env.drv
    if step["what"] in ("pte", "unmap"):
        _, slot, desc = env.pt.descriptors(step["iova"])[-1]
        new = S1_DESC.encode(desc, OA=step["out"]) if step["what"] == "pte" else 0
        write_u64(env.guest, slot, new)
    elif step["what"] == "ste":
        word = ste_abort() if step["config"] == "abort" else ste_bypass()
        t.mem.write(drv.ste_addr(SID), word.to_bytes(64, "little"))
    elif step["what"] == "cd-asid":
        word = CD.encode(env.cd_word, ASID=step["asid"])
        env.guest.write(env.cd_addr, word.to_bytes(64, "little"))


def execute(scenario: Scenario, target, *, class_known: bool = True) -> Observation:
    """Run `scenario` on one target.  PeerCrash propagates (the caller restarts QEMU)."""
    buffer, canary = _case_data(scenario)
    target.begin(buffer, canary)
    obs = Observation()
    env = _Env(target, scenario.spec)
    try:
        _build(env)
        obs.ste = env.ste_word
        for step in scenario.spec["steps"]:
            so = StepObs(step["op"], stale=bool(step.get("stale")))
            if step["op"] == "dma":
                target.dma(step["write"], step["iova"], step["off"], step["len"])
                if step.get("drain", True):
                    so.raw, so.overflow = _drain(target)
            elif step["op"] == "events":
                so.raw, so.overflow = _drain(target)
            elif step["op"] == "cmds":
                so.cmd = _run_cmds(env, step["cmds"])
            elif step["op"] == "poke":
                _poke(env, step)
            so.events = collapse([normalise(w, class_known=class_known) for w in so.raw])
            obs.steps.append(so)
        obs.gerror = _gerror(target)
        obs.cmdq_cons = _reg(target, "CMDQ_CONS")
    except PeerCrash:
        raise
    except Exception as e:  # a failure on one side is an observation
        if isinstance(target, QemuTarget) and type(e).__name__ in ("PeerError",):
            raise
        tb = traceback.extract_tb(e.__traceback__)[-1]
        obs.error = f"{type(e).__name__}: {e} ({os.path.basename(tb.filename)}:{tb.lineno})"
    obs.memory = target.read(DATA, DATA_SIZE)
    obs.landed = _ranges(obs.memory, canary, DATA)
    obs.buffer = target.finish()
    obs.buffer_changed = _ranges(obs.buffer, buffer)
    return obs


# ====================================================================== comparing
def normalise(word: int, *, class_known: bool = True) -> dict:
    """The fields of an event record that are compared, QEMU's quirks folded away
    (see NORMALISATIONS): IPA[11:0] are not read (Fault.decode keeps IPA[51:12]),
    CLASS is dropped when the peer predates its encoding fix, RnW of a stage-2 fault
    on the SMMU's own read of a stage-1 table or CD (CLASS=TT/CD) and TTRnW are not
    compared."""
    try:
        f = Fault.decode(word)
    except ValueError:
        return {"event": f"{word & 0xFF:#04x}", "raw": f"{word:#066x}"}
    d: dict = {"event": f.event.name, "sid": f.sid}
    if f.ssid is not None:
        d["ssid"] = f.ssid
    if f.event in TRANSACTION_EVENTS:
        d.update(addr=f.input_addr, rnw=f.rnw, ind=f.ind, pnu=f.pnu)
    if f.event in WALK_EVENTS:
        d["s2"] = f.s2
        if class_known:
            d["class"] = f.fault_class.name
        if f.s2 and f.fault_class in (FaultClass.TT, FaultClass.CD):
            d.pop("rnw", None)
    if f.ipa is not None:
        d["ipa"] = f.ipa
    if f.fetch_addr is not None:
        d["fetch"] = f.fetch_addr
    return d


def collapse(events: list[dict]) -> list[dict]:
    """QEMU retries a faulting DMA 4 bytes at a time and records each try: keep the
    first record of each (fields, 4 KiB page of the address) group, in order."""
    seen, out = set(), []
    for d in events:
        key = tuple(sorted((k, v >> 12 if k == "addr" else v) for k, v in d.items()))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


@dataclass
class Difference:
    aspect: str  # events overflow cmd memory buffer gerror cmdq error crash
    step: int | None
    ours: object
    qemu: object


def compare(a: Observation, b: Observation, *,
            stale: frozenset[int] = frozenset()) -> list[Difference]:
    """What differs between our observation `a` and QEMU's `b`.  Steps in `stale` ran
    on a structure changed without invalidation (either outcome is architectural):
    they are not compared, and when one of them differs neither are memory and the
    edu buffer, which such a step may have changed."""
    diffs: list[Difference] = []
    if b.crash:
        return [Difference("crash", None, None, b.crash)]
    if a.error != b.error:
        diffs.append(Difference("error", None, a.error, b.error))
    stale_differs = any(
        sa.events != sb.events or sa.overflow != sb.overflow
        for i, (sa, sb) in enumerate(zip(a.steps, b.steps, strict=False)) if i in stale)
    for i, (sa, sb) in enumerate(zip(a.steps, b.steps, strict=False)):
        if i in stale:
            continue
        if sa.events != sb.events:
            diffs.append(Difference("events", i, sa.events, sb.events))
        if sa.overflow != sb.overflow:
            diffs.append(Difference("overflow", i, sa.overflow, sb.overflow))
        if sa.cmd != sb.cmd:
            diffs.append(Difference("cmd", i, sa.cmd, sb.cmd))
    if len(a.steps) != len(b.steps) and not diffs:
        diffs.append(Difference("steps", None, len(a.steps), len(b.steps)))
    if (a.landed != b.landed or a.memory != b.memory) and not stale_differs:
        diffs.append(Difference("memory", None, _fmt_ranges(a.landed), _fmt_ranges(b.landed)))
    if a.buffer != b.buffer and not stale_differs:
        diffs.append(Difference("buffer", None, _fmt_ranges(a.buffer_changed),
                                _fmt_ranges(b.buffer_changed)))
    if a.gerror != b.gerror:
        diffs.append(Difference("gerror", None, a.gerror, b.gerror))
    la = REG["CMDQ_CONS"].layout
    if la.get(a.cmdq_cons, "ERR") != la.get(b.cmdq_cons, "ERR") or \
            la.get(a.cmdq_cons, "RD") != la.get(b.cmdq_cons, "RD"):
        diffs.append(Difference("cmdq", None, hex(a.cmdq_cons), hex(b.cmdq_cons)))
    return diffs


def _fmt_ranges(rs: list[tuple[int, int]]) -> list[str]:
    return [f"{s:#x}+{e - s:#x}" for s, e in rs[:8]] + (["..."] if len(rs) > 8 else [])


# ====================================================================== QEMU's quirks
# Used only to *check* a divergence: our model with one or more of QEMU's known
# deviations switched on must reproduce QEMU's observation exactly, or the
# divergence is not the known one.  The names are KNOWN_DIVERGENCES ids.
QEMU_IOMMU_VA_BITS = 48  # QEMU's IOMMU memory region is 2^48 bytes (SMMU_MAX_VA_BITS)
_EL2_EL3_TLBI = frozenset({Op.TLBI_EL3_ALL, Op.TLBI_EL3_VA, Op.TLBI_EL2_ALL, Op.TLBI_EL2_ASID,
                           Op.TLBI_EL2_VA, Op.TLBI_EL2_VAA})
_CFGI = frozenset({Op.CFGI_STE, Op.CFGI_STE_RANGE, Op.CFGI_CD, Op.CFGI_CD_ALL})


class _WalkReadMask:
    """QEMU without 52-bit addresses reads a 64K-granule descriptor's bits 15:12
    (OA[51:48] under FEAT_LPA) as nothing: table-walk reads see them cleared."""

    def __init__(self, mem: PhysMem, smmu: QuirkSmmu):
        self._mem, self._smmu = mem, smmu

    def __getattr__(self, name):
        return getattr(self._mem, name)

    def read_int(self, pa: int, size: int, initiator: object = None) -> int:
        value = self._mem.read_int(pa, size, initiator)
        purpose = getattr(initiator, "purpose", None)
        if size == 8 and purpose in ("s1", "s2") and self._smmu._granule == 65536:
            value &= ~0xF000
        return value


class QuirkSmmu(Smmu):
    """`Smmu` with some of QEMU's deviations from the architecture (never a model of it)."""

    def __init__(self, mem: PhysMem, features: Features, quirks: frozenset[str]):
        self.quirks = frozenset(quirks)
        self._sticky_split: int | None = None
        self._qemu_cached: set[tuple[int, int, int]] = set()
        self._leaf_perm: dict[tuple[int, int, int], object] = {}
        self._hit = False
        self._config: Config | None = None
        self._access = READ  # of the translation in progress
        self._granule = 0  # of the walk in progress (for lpa-bits-64k-ignored)
        if "lpa-bits-64k-ignored" in self.quirks:
            mem = _WalkReadMask(mem, self)
        super().__init__(mem, features)

    # ---------------------------------------------------------------- registers
    def _write_reg(self, name: str, value: int) -> None:
        if name == "GBPA" and "gbpa-ignored" in self.quirks:
            return
        super()._write_reg(name, value)
        layout = REG["STRTAB_BASE_CFG"].layout
        if (name == "STRTAB_BASE_CFG" and "strtab-2lvl-sticky" in self.quirks
                and self.regs[name] == value and layout.get(value, "FMT") == 1):
            self._sticky_split = layout.get(value, "SPLIT")

    # ---------------------------------------------------------------- commands
    def execute(self, cmd: int) -> CmdError:
        q, op = self.quirks, cmd & 0xFF
        if 0x10 <= op <= 0x30:
            self._qemu_cached.clear()
            self._leaf_perm.clear()
        if "cmd-el2-el3-ignored" in q and op in _EL2_EL3_TLBI:
            return CmdError.NONE
        if "cmd-pri-atc-ignored" in q and op in (Op.PRI_RESP, Op.ATC_INV):
            return CmdError.NONE
        if "cmd-sync-cs-reserved" in q and op == Op.SYNC and (cmd >> 12) & 3 == 3:
            return CmdError.NONE
        if "cmd-s2-without-s2p" in q and op in (Op.TLBI_S12_VMALL, Op.TLBI_S2_IPA) \
                and not self.feat.s2p:
            return CmdError.NONE
        if "cmd-ssec-unchecked" in q and op not in _CFGI:
            cmd &= ~(1 << 10)
        return super().execute(cmd)

    # ---------------------------------------------------------------- stream table
    def _ste_addr(self, sid: int) -> int:
        q = self.quirks
        L = REG["STRTAB_BASE_CFG"].layout
        cfg = self.regs["STRTAB_BASE_CFG"]
        two_level = L.get(cfg, "FMT") == 1
        sticky = "strtab-2lvl-sticky" in q and self._sticky_split is not None and not two_level
        span_quirk = "l1std-span" in q and (two_level or sticky)
        if not (sticky or span_quirk):
            return super()._ste_addr(sid)
        log2 = min(L.get(cfg, "LOG2SIZE"), self.feat.sidsize)
        if sid >> log2:
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        split = L.get(cfg, "SPLIT") if two_level else self._sticky_split
        base = REG["STRTAB_BASE"].layout.get(self.regs["STRTAB_BASE"], "ADDR")
        base &= -(1 << max(5, log2 - split - 1 + 3))
        desc = self._fetch(base + (sid >> split) * 8, 8, "ste", sid, Event.F_STE_FETCH)
        span, index = L1_STD.get(desc, "SPAN"), sid & ((1 << split) - 1)
        if span == 0:
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        if span_quirk:
            if index > (1 << span) - 1:  # QEMU: 2^Span STEs, and C_BAD_STE beyond
                raise FaultError(Fault(Event.C_BAD_STE))
            return L1_STD.get(desc, "L2PTR") + index * 64
        if span > split + 1 or index >> (span - 1):
            raise FaultError(Fault(Event.C_BAD_STREAMID))
        return (L1_STD.get(desc, "L2PTR") & -(64 << (span - 1))) + index * 64

    def _stream(self, sid: int) -> StreamConfig:
        q = self.quirks
        if not q & {"config-reserved-abort", "strw-without-hyp", "eats-without-ats",
                    "s1stalld-without-stall", "ctxptr-beyond-oas-fetched",
                    "s2ha-s2hd-without-httu"}:
            return super()._stream(sid)
        cached = self.config_cache.get_ste(sid)
        if cached is not None:
            return cached
        word = self._fetch(self._ste_addr(sid), 64, "ste", sid, Event.F_STE_FETCH)
        s = STE.decode(word)
        if s.V and not s.CONFIG & 0b100 and "config-reserved-abort" in q:
            stream = StreamConfig(Config.ABORT, vmid=0, s2=None, s2_record=False, word=word)
        else:
            if (s.V and s.CONFIG in (Config.S1_TRANS, Config.NESTED) and s.S1STALLD
                    and "s1stalld-without-stall" in q):
                raise BadConfig(Event.C_BAD_STE, "QEMU: S1STALLD=1")
            if "strw-without-hyp" in q:
                word = STE.put(word, "STRW", 0)
            if "eats-without-ats" in q:
                word = STE.put(word, "EATS", 0)
            if "s2ha-s2hd-without-httu" in q:
                word = STE.put(STE.put(word, "S2HA", 0), "S2HD", 0)
            ctx_ptr = STE.get(word, "S1CONTEXTPTR")
            if "ctxptr-beyond-oas-fetched" in q:  # decode as if in range, fetch as written
                word = STE.put(word, "S1CONTEXTPTR", ctx_ptr & ((1 << self.feat.oas_bits) - 1))
            stream = decode_ste(word, self.feat)
            if stream.stage1 and stream.ctx_ptr != ctx_ptr:
                stream = replace(stream, ctx_ptr=ctx_ptr)
        self.config_cache.put_ste(sid, stream)
        return stream

    def _context(self, sid, stream, ssid):
        fresh = self.config_cache.get_cd(sid, ssid) is None
        ctx = super()._context(sid, stream, ssid)
        if fresh and stream.config == Config.NESTED and "nested-ttb-translated-eagerly" \
                in self.quirks:
            # QEMU translates both TTBs through stage 2 when it decodes the CD, and
            # keeps nothing cached when one of them faults.
            try:
                for epd, ttb in ((ctx.s1.epd0, ctx.s1.ttb0), (ctx.s1.epd1, ctx.s1.ttb1)):
                    if not epd:
                        self._s2_fetch(stream, ttb, FaultClass.TT, sid)
            except FaultError as e:
                self.config_cache.inv_cd(sid, ssid)
                e.ctx = ctx
                raise
        return ctx

    # ---------------------------------------------------------------- translation
    def translate(self, sid, addr, access=READ, ssid=None):
        self._hit, self._config, self._access = False, None, access
        return super().translate(sid, addr, access, ssid)

    def _translate_stream(self, sid, stream, addr, access, ssid):
        self._config = stream.config
        return super()._translate_stream(sid, stream, addr, access, ssid)

    def _check_ias(self, addr: int) -> int:
        if "bypass-oas-unchecked" in self.quirks and self._config == Config.BYPASS:
            return addr
        return super()._check_ias(addr)

    def _complete(self, fault, sid, ssid, addr, access):
        f = super()._complete(fault, sid, ssid, addr, access)
        return replace(f, pnu=False) if "unprivileged-as-privileged" in self.quirks else f

    def _lookup(self, vmid, asid, addr):
        e = super()._lookup(vmid, asid, addr)
        self._hit = e is not None and (e.vmid, e.asid, e.in_base) in self._qemu_cached
        return e

    def _check_perm(self, e, addr, access) -> None:
        key = (e.vmid, e.asid, e.in_base)
        if self._hit and key in self._leaf_perm and e.s1_perm is not None:
            e = replace(e, s1_perm=self._leaf_perm[key])
        super()._check_perm(e, addr, access)
        self._qemu_cached.add(key)  # QEMU caches successful translations only

    def _record_allowed(self, fault, stream, ctx) -> bool:
        q = self.quirks
        s2_only = stream is not None and stream.config == Config.S2_TRANS
        if "s2-tlb-hit-permission-unrecorded" in q and s2_only and self._hit \
                and fault.event == Event.F_PERMISSION:
            return False
        if "s2-only-ias-fault-unrecorded" in q and s2_only and not fault.s2 \
                and fault.event == Event.F_ADDR_SIZE:
            return False
        return super()._record_allowed(fault, stream, ctx)

    def _walk(self, stream, ctx, addr, access, sid):
        if ctx is not None and access.write and "aptable-before-leaf" in self.quirks:
            self._aptable_first(stream, ctx, addr, sid)
        try:
            entry = super()._walk(stream, ctx, addr, access, sid)
        except FaultError as e:
            f = e.fault
            if (ctx is None or f.event != Event.F_ADDR_SIZE or f.s2
                    or "leaf-size-checked-last" not in self.quirks):
                raise
            # QEMU checks a leaf's AF, then its permissions, then its output size.
            loose = replace(ctx, s1=replace(ctx.s1, oa_bits=64))
            try:
                leaf = self._s1_walk(stream, loose, addr, sid)
            except FaultError as again:
                if again.fault.event == Event.F_ACCESS and not again.fault.s2:
                    raise again from None
                raise e from None
            if leaf.out_base >> ctx.s1.oa_bits and not access.allowed_by(leaf.perm):
                raise FaultError(Fault(Event.F_PERMISSION)) from None
            raise
        if ctx is not None and "aptable-lost-on-tlb-hit" in self.quirks:
            # QEMU caches the leaf's AP alone: remember what a hit will be checked against.
            loose = replace(ctx, s1=replace(ctx.s1, had0=True, had1=True))
            leaf = self._s1_walk(stream, loose, addr, sid)
            self._leaf_perm[(entry.vmid, entry.asid, entry.in_base)] = leaf.perm
        return entry

    def _aptable_first(self, stream, ctx, addr: int, sid: int) -> None:
        """QEMU checks each table descriptor's APTable[1] (no write) as it descends,
        before the leaf's validity, AF and AP: F_PERMISSION at the first such table."""
        c = ctx.s1
        va = addr & MASK64
        top = va >> 55 & 1
        tsz, gsize, epd, ttb, had = ((c.t1sz, c.tg1, c.epd1, c.ttb1, c.had1) if top else
                                     (c.t0sz, c.tg0, c.epd0, c.ttb0, c.had0))
        g = GRANULES.get(gsize)
        level = None if g is None else s1_start_level(64 - tsz, g)
        if epd or had or level is None:
            return
        ia = 64 - tsz
        lsb = g.shift + g.stride * (3 - level)
        index_mask = (1 << (ia - lsb)) - 1
        base = ttb & -((index_mask + 1) * 8)
        while level < 3:
            desc_addr = base + ((va >> lsb) & index_mask) * 8
            try:
                pa = desc_addr
                if stream.config == Config.NESTED:
                    pa = self._s2_fetch(stream, desc_addr, FaultClass.TT, sid)
                desc = self.mem.read_int(pa, 8)
            except (FaultError, BusError):
                return
            if desc & 3 != 3:
                return
            if desc >> 62 & 1:
                raise FaultError(Fault(Event.F_PERMISSION))
            base = desc & ((1 << 48) - 1) & -(1 << g.shift)
            level, lsb, index_mask = level + 1, lsb - g.stride, (1 << g.stride) - 1

    def _in_walk(self, granule: int, walk, *args):
        outer, self._granule = self._granule, granule
        try:
            return walk(*args)
        finally:
            self._granule = outer

    def _s1_walk(self, stream, ctx, addr, sid):
        half = ctx.s1.tg1 if (addr >> 55) & 1 else ctx.s1.tg0
        return self._in_walk(half, self._s1_walk_quirks, stream, ctx, addr, sid)

    def _s1_walk_quirks(self, stream, ctx, addr, sid):
        if "ttb1-selected-by-zero-top-bits" in self.quirks:
            ctx = self._qemu72_select_tt(ctx, addr)
        if "no-access-flag" in self.quirks:
            ctx = replace(ctx, s1=replace(ctx.s1, affd=True))
        if "s1-output-size-unchecked" in self.quirks:
            ctx = replace(ctx, s1=replace(ctx.s1, oa_bits=64))
        return super()._s1_walk(stream, ctx, addr, sid)

    @staticmethod
    def _qemu72_select_tt(ctx, va: int):
        """QEMU 7.2's select_tt(): TTB0 if its top bits are zero; else TTB1 if *its* top
        bits are zero too (the bug; TTB1 needs ones); else a disabled half if there is
        one; else none.  Returns a CD whose TTB0 half is the chosen one (our walker then
        walks it for this VA, which has VA[55]=0) or whose both halves are disabled."""
        c = ctx.s1
        va &= MASK64
        tsz = (0 if c.epd0 else c.t0sz, 0 if c.epd1 else c.t1sz)
        tbi_byte = 8 if (c.tbi1 if va >> 55 & 1 else c.tbi0) else 0

        def zero(n: int) -> bool:
            width = n - tbi_byte
            return width <= 0 or not (va >> (64 - n)) & ((1 << width) - 1)

        sel = (0 if tsz[0] and zero(tsz[0]) else 1 if tsz[1] and zero(tsz[1]) else
               0 if not tsz[0] else 1 if not tsz[1] else None)
        if sel is None or (c.epd0, c.epd1)[sel]:
            return replace(ctx, s1=replace(c, epd0=True, epd1=True))
        if sel == 0 or va >> 55 & 1:
            return ctx
        return replace(ctx, s1=replace(c, t0sz=c.t1sz, tg0=c.tg1, ttb0=c.ttb1, had0=c.had1,
                                         tbi0=c.tbi1, epd0=False))

    def _alias(self, s2, ipa: int) -> int:
        """QEMU's stage-2 walk ignores the concatenated-table index bits of the IPA."""
        if "s2-concat-index" not in self.quirks or ipa >> (64 - s2.t0sz):
            return ipa
        geo = s2_geometry(s2.t0sz, s2.sl0, s2.granule, pa_max=self.feat.oas_bits)
        if geo is None:
            return ipa
        g = GRANULES[s2.granule]
        return ipa & ((1 << (g.shift + g.stride * (4 - geo[0]))) - 1)

    def _s2_walk(self, stream, ipa, sid):
        return self._in_walk(stream.s2.granule, self._s2_walk_quirks, stream, ipa, sid)

    def _s2_walk_quirks(self, stream, ipa, sid):
        try:
            return self._s2_walk_aliased(stream, ipa, sid)
        except FaultError as e:
            f = e.fault
            if f.event != Event.F_ADDR_SIZE or not f.s2 \
                    or "leaf-size-checked-last" not in self.quirks:
                raise
            # QEMU checks a stage-2 leaf's AF, then its S2AP, then its output size.
            loose = replace(stream, s2=replace(stream.s2, ps_bits=64))
            try:
                leaf = self._s2_walk_aliased(loose, ipa, sid)
            except FaultError as again:
                if again.fault.event == Event.F_ACCESS:
                    raise again from None
                raise e from None
            if leaf.out_base >> stream.s2.ps_bits and not self._access.allowed_by(leaf.perm):
                raise FaultError(Fault(Event.F_PERMISSION, s2=True, ipa=ipa)) from None
            raise

    def _s2_walk_aliased(self, stream, ipa, sid):
        alias = self._alias(stream.s2, ipa)
        if alias == ipa:
            return super()._s2_walk(stream, ipa, sid)
        try:
            leaf = super()._s2_walk(stream, alias, sid)
        except FaultError as e:
            if e.fault.ipa == alias:
                e.fault = replace(e.fault, ipa=ipa)
            raise
        return replace(leaf, out=leaf.out_base + (ipa & (leaf.size - 1)), in_base=ipa & -leaf.size)

    def _s2_fetch(self, stream, ipa, cls, sid):
        return self._in_walk(stream.s2.granule, self._s2_fetch_quirks, stream, ipa, cls, sid)

    def _s2_fetch_quirks(self, stream, ipa, cls, sid):
        if ("s2-only-ias-fault-unrecorded" in self.quirks and cls == FaultClass.CD
                and ipa >> self.feat.oas_bits):
            # QEMU checks the CD's IPA like a stage-1-bypassed input address: a stage-1
            # F_ADDR_SIZE recorded only under CD.R, of the CD it has not read yet.
            raise Aborted("QEMU: unrecorded F_ADDR_SIZE on the CD's IPA")
        alias = self._alias(stream.s2, ipa)
        try:
            return super()._s2_fetch(stream, alias, cls, sid)
        except FaultError as e:
            if alias != ipa and e.fault.ipa == alias:
                e.fault = replace(e.fault, ipa=ipa)
            raise

    # ---------------------------------------------------------------- events
    def record(self, fault: Fault) -> bool:
        if "cd-fetch-address-field" in self.quirks and fault.event == Event.F_CD_FETCH:
            word = EVENT["FETCH_ADDR"].put(fault.encode(), 0)
            return self.record_word(EVENT["INPUT_ADDR"].put(word, fault.fetch_addr or 0),
                                    fault.sid)
        return super().record(fault)

    def record_word(self, word: int, sid: int) -> bool:
        if "evtq-overflow-abort" in self.quirks and self._f("CR0ACK", "EVENTQEN"):
            q = self._evtq()
            L = REG["EVENTQ_PROD"].layout
            if q.full(L.get(self.regs["EVENTQ_PROD"], "WR"),
                      REG["EVENTQ_CONS"].layout.get(self.regs["EVENTQ_CONS"], "RD")):
                self._gerror("EVENTQ_ABT_ERR")
                self.events_lost += 1
                return False
        return super().record_word(word, sid)


# ====================================================================== known divergences
QEMU_DEVIATION, IMPDEF, OUR_BUG, PEER_CRASH = "qemu-deviation", "impdef", "our-bug", "peer-crash"
UNEXPLAINED = "unexplained"
EXPLAINED = frozenset({QEMU_DEVIATION, IMPDEF, PEER_CRASH})


@dataclass(frozen=True)
class Known:
    """One known way QEMU's SMMUv3 and ours differ.  `quirk` rows are checked by
    replaying the case on `QuirkSmmu` with the quirk on (it must then agree exactly
    with QEMU); the others by `match` on the whole case."""

    id: str
    cls: str
    rule: str  # the architecture rule, or why either behaviour is allowed
    qemu: str  # what QEMU does instead
    since: tuple[int, ...] = (0,)  # QEMU versions it applies to: since <= v < until
    until: tuple[int, ...] = (99,)
    quirk: bool = True
    match: Callable[[CaseResult, Features], bool] | None = None

    def applies(self, version: tuple[int, ...]) -> bool:
        return self.since <= version < self.until


@dataclass
class CaseResult:
    scenario: Scenario
    ours: Observation
    qemu: Observation
    diffs: list[Difference]
    seconds: float = 0.0
    verdict: str | None = None  # None: agree; else a class
    known: list[str] = field(default_factory=list)


def _crashed_with(text: str) -> Callable[[CaseResult, Features], bool]:
    return lambda r, features: bool(r.qemu.crash) and text in r.qemu.crash


def _qemu_accepts_s2_geometry(ste: int, oas_bits: int = 44) -> bool:
    """QEMU 9.x/10.0's check of S2T0SZ/S2SL0/S2TG (s2t0sz_valid, s2_pgtable_config_valid):
    a range for S2T0SZ and at most 16 concatenated tables, nothing else."""
    s = STE.decode(ste)
    gran = {0: 12, 1: 16, 2: 14}.get(s.S2TG)
    if gran is None or s.S2SL0 == 3:
        return False
    ps = min({0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}.get(s.S2PS, 48), oas_bits)
    if gran != 16:
        ps = min(ps, 48)
    lo = 64 - ps if gran == 16 else max(16, 64 - ps)
    if not lo <= s.S2T0SZ <= 39:
        return False
    start = 2 - s.S2SL0 if gran == 12 else 3 - s.S2SL0
    shift = gran + (3 - (start - 1)) * (gran - 3)
    return (((1 << (64 - s.S2T0SZ)) - 1) >> shift) + 1 <= 16


def _s2_geometry_only_we_reject(r: CaseResult, features: Features) -> bool:
    """Ours rejects the STE's stage-2 geometry (C_BAD_STE on every DMA) where QEMU's
    weaker check accepts it: whatever QEMU then walks is a consequence."""
    if not r.ours.ste or STE.get(r.ours.ste, "CONFIG") not in (Config.S2_TRANS, Config.NESTED):
        return False
    try:
        decode_ste(r.ours.ste, features)
    except BadConfig as e:
        if "S2SL0" not in e.rule and "S2T0SZ" not in e.rule:
            return False
    else:
        return False
    dmas = [s for s in r.ours.steps if s.op == "dma" and s.events]
    return all(e["event"] == "C_BAD_STE" for s in dmas for e in s.events) and \
        _qemu_accepts_s2_geometry(r.ours.ste, features.oas_bits)

# The table.  Rules cite Arm IHI 0070 (SMMUv3) and DDI 0487 (Arm ARM) by section or
# field; "QEMU" is what the peer was seen to do (versions: `since`/`until`).
KNOWN_DIVERGENCES: tuple[Known, ...] = (
    # ------------------------------------------------------------ QEMU crashes
    Known("crash-cd-ips-52", PEER_CRASH,
          "IHI 0070 CD.IPS: 0b110 (52 bits) is an architected encoding and, like any IPS, "
          "is capped to SMMU_IDR5.OAS; 0b111 is reserved. Neither may crash the SMMU.",
          "oas2bits() hits g_assert_not_reached (hw/arm/smmuv3-internal.h): QEMU aborts "
          "(guest-triggerable DoS)",
          since=(9, 0), quirk=False, match=_crashed_with("oas2bits")),
    Known("crash-s2aa64-0", PEER_CRASH,
          "IHI 0070 STE.S2AA64=0 selects AArch32 stage-2 tables: an SMMU without them "
          "treats the STE as ILLEGAL (C_BAD_STE).",
          "decode_ste_s2_cfg() hits g_assert_not_reached: QEMU aborts (guest-triggerable DoS)",
          since=(9, 0), quirk=False, match=_crashed_with("decode_ste_s2_cfg")),
    # ------------------------------------------------------------ translation
    Known("high-iova-bypasses-smmu", QEMU_DEVIATION,
          "IHI 0070 §3.4 (Address sizes): the SMMU takes 64-bit input addresses; one "
          "outside the TTB0/TTB1 ranges is a stage-1 F_TRANSLATION, one beyond the IAS "
          "with stage 1 bypassed a stage-1 F_ADDR_SIZE, in both cases recorded.",
          "its IOMMU memory region is 2^48 bytes: a DMA at or above 2^48 never reaches the "
          "SMMU, is dropped and nothing is recorded (seen on 7.2, not on 10.0)",
          until=(10, 0)),
    Known("unprivileged-as-privileged", QEMU_DEVIATION,
          "DDI 0487 D8.4 (stage-1 data access permissions): AP[1]=0, or APTable[0]=1 above "
          "it, denies unprivileged access; a PCIe request without a PASID prefix is "
          "Unprivileged (IHI 0070 §13: PnU=0, as QEMU's own records say).",
          "checks every access as privileged (smmu-internal.h: 'all transactions are "
          "considered as privileged'): AP[1] and APTable[0] are ignored"),
    Known("aptable-before-leaf", QEMU_DEVIATION,
          "DDI 0487 D8 fault prioritisation: Translation, then Access flag, then Permission "
          "fault; APTable only restricts the permissions of the final descriptor.",
          "checks APTable[1] while descending, so a write under a read-only table gives "
          "F_PERMISSION even when the leaf is invalid (F_TRANSLATION) or has AF=0 (F_ACCESS)"),
    Known("aptable-lost-on-tlb-hit", QEMU_DEVIATION,
          "DDI 0487 D8.4.2 (hierarchical permissions): APTable limits every access through "
          "the table, including ones that hit a cached translation.",
          "caches only the leaf's AP: a write that hits an entry cached by a read passes a "
          "write-protecting APTable"),
    Known("ttb1-selected-by-zero-top-bits", QEMU_DEVIATION,
          "DDI 0487 D8 / IHI 0070 CD.T1SZ: TTB1 translates VAs whose bits above T1SZ are "
          "all ones; a VA in neither range is a stage-1 F_TRANSLATION.",
          "selects TTB1 when those bits are all zero (so a VA just beyond TTB0's range walks "
          "TTB1) and never for the real TTB1 range (seen on 7.2, fixed by 10.0)",
          until=(10, 0)),
    Known("no-access-flag", QEMU_DEVIATION,
          "IHI 0070 CD.AFFD/STE.S2AFFD=0 without HTTU: an access through a descriptor with "
          "AF=0 is an Access flag fault (F_ACCESS).",
          "never checks AF", until=(8, 0)),
    Known("s1-output-size-unchecked", QEMU_DEVIATION,
          "IHI 0070 §3.4 / DDI 0487 D8: a stage-1 table or output address beyond the "
          "effective CD.IPS (capped to the OAS) is a stage-1 Address Size fault (F_ADDR_SIZE).",
          "does not check it before 9.1 ('Add missing size check for stage-1'): the access "
          "goes to the out-of-range address", until=(9, 1)),
    Known("nested-ttb-translated-eagerly", QEMU_DEVIATION,
          "IHI 0070 (nested translation) / DDI 0487 D8: a stage-1 walk reads only the "
          "table its VA selects (TTB0 or TTB1), each access translated by stage 2 when it "
          "is made; the other half's TTB cannot fault this transaction.",
          "translates both enabled TTBs through stage 2 when it decodes the CD: a bad TTB1 "
          "gives a stage-2 CLASS=TT fault on every transaction, TTB0 ones included",
          since=(9, 0)),
    Known("leaf-size-checked-last", QEMU_DEVIATION,
          "DDI 0487 D8 fault prioritisation: an Address size fault on the output address "
          "of the final descriptor is a walk fault, before Access flag and Permission faults "
          "(stage 1 against CD.IPS, stage 2 against STE.S2PS).",
          "checks the leaf's AF and permissions first: F_ACCESS/F_PERMISSION instead of "
          "F_ADDR_SIZE", since=(9, 1)),
    Known("s2-concat-index", QEMU_DEVIATION,
          "DDI 0487 D8.2 (concatenated translation tables at the initial stage-2 lookup): "
          "the IPA bits above the start level's stride select one of up to 16 tables.",
          "walks the first table whatever those bits are: such IPAs alias into table 0 "
          "(wrong PA, or F_TRANSLATION/F_ACCESS from table 0's entries)", since=(9, 0)),
    Known("s2-tlb-hit-permission-unrecorded", QEMU_DEVIATION,
          "IHI 0070 STE.S2R=1: stage-2 F_PERMISSION is recorded; caching must not change "
          "which faults are reported.",
          "a stage-2-only permission fault on an IOTLB hit is attributed to stage 1 and, "
          "with no CD.R, dropped", since=(9, 0)),
    Known("s2-only-ias-fault-unrecorded", QEMU_DEVIATION,
          "IHI 0070 §3.4: with stage 1 bypassed an input address beyond the IAS is a "
          "stage-1 F_ADDR_SIZE; no CD is in use, so CD.R cannot suppress it.",
          "raises it but drops it (record_faults of the absent CD is 0); the same for a "
          "nested CD pointer (an IPA) beyond the IAS", since=(9, 0)),
    Known("bypass-oas-unchecked", QEMU_DEVIATION,
          "IHI 0070 §3.4: with STE.Config=bypass an input address beyond the OAS is "
          "terminated and a stage-1 F_ADDR_SIZE recorded.",
          "passes it through to an unassigned address: dropped, nothing recorded"),
    # ------------------------------------------------------------ configuration
    Known("config-reserved-abort", QEMU_DEVIATION,
          "IHI 0070 STE.Config: 0b001-0b011 are reserved; an STE using them is ILLEGAL "
          "(C_BAD_STE).",
          "treats every Config with bit 2 clear as abort: silently terminated"),
    Known("s2-geometry-unchecked", QEMU_DEVIATION,
          "IHI 0070 STE.S2T0SZ: 'Use of a value of S2T0SZ that is inconsistent with the "
          "permitted range (given S2SL0 and S2TG) is ILLEGAL' (C_BAD_STE).",
          "checks only an S2T0SZ range and at most 16 concatenated tables, then walks a "
          "start level that resolves no bits (whatever it finds)",
          since=(9, 0), quirk=False, match=_s2_geometry_only_we_reject),
    Known("l1std-span", QEMU_DEVIATION,
          "IHI 0070 L1STD.Span: the L2 table holds 2^(Span-1) STEs; Span=0, Span > SPLIT+1 "
          "(and the reserved 12-31) leave the range invalid: a StreamID beyond the L2 table "
          "is C_BAD_STREAMID.",
          "takes 2^Span STEs (reads one past the table), reports C_BAD_STE beyond them and "
          "accepts any Span up to 31 (fixed upstream in 2026: 'span must be within ... "
          "SPLIT + 1')"),
    Known("strtab-2lvl-sticky", QEMU_DEVIATION,
          "IHI 0070 SMMU_STRTAB_BASE_CFG.FMT selects the stream table format in use "
          "(0b00 linear).",
          "latches 2-level once FMT=1 has been written: a later linear table is walked as "
          "2-level (C_BAD_STREAMID / wrong STE)"),
    Known("cd-fetch-address-field", QEMU_DEVIATION,
          "IHI 0070 F_CD_FETCH record: the CD address goes in FetchAddr (bits 243:195).",
          "writes it to InputAddr (bits 191:128), FetchAddr = 0"),
    Known("strw-without-hyp", IMPDEF,
          "IHI 0070 STE.STRW with SMMU_IDR0.HYP=0: only NS-EL1 exists; 0b01 is reserved and "
          "the EL2 encodings unsupported. Ours: ILLEGAL (C_BAD_STE); either reading is allowed "
          "(CONSTRAINED UNPREDICTABLE use of a reserved/unsupported encoding).",
          "ignores STRW"),
    Known("eats-without-ats", IMPDEF,
          "IHI 0070 STE.EATS is RES0 when SMMU_IDR0.ATS=0; a non-zero value is CONSTRAINED "
          "UNPREDICTABLE. Ours still rejects the reserved 0b11 and S1CHK without nesting.",
          "ignores EATS"),
    Known("ctxptr-beyond-oas-fetched", IMPDEF,
          "IHI 0070 STE.S1ContextPtr: address bits above SMMU_IDR5.OAS are RES0; a set bit "
          "is CONSTRAINED UNPREDICTABLE. Ours: ILLEGAL (C_BAD_STE).",
          "fetches the CD from the out-of-range address: F_CD_FETCH"),
    Known("s2ha-s2hd-without-httu", IMPDEF,
          "IHI 0070 STE.S2HA/S2HD are RES0 when SMMU_IDR0.HTTU=0; a set bit is CONSTRAINED "
          "UNPREDICTABLE. Ours: ILLEGAL (C_BAD_STE), as QEMU does for CD.HA/HD.",
          "ignores them"),
    Known("lpa-bits-64k-ignored", IMPDEF,
          "DDI 0487 D8.3: with the 64KB granule, descriptor bits[15:12] hold OA[51:48] only "
          "with 52-bit PAs (FEAT_LPA); with SMMU_IDR5.OAS=44 they are RES0 and a set bit is "
          "CONSTRAINED UNPREDICTABLE. Ours reads them as OA[51:48] (F_ADDR_SIZE).",
          "ignores them"),
    Known("s1stalld-without-stall", IMPDEF,
          "IHI 0070 STE.S1STALLD is RES0 when SMMU_IDR0.STALL_MODEL=0b01 (no stalls); a "
          "non-zero value is CONSTRAINED UNPREDICTABLE. Ours ignores it.",
          "C_BAD_STE"),
    Known("gbpa-ignored", QEMU_DEVIATION,
          "IHI 0070 SMMU_GBPA: with SMMUEN=0 and GBPA.ABORT=1 incoming transactions are "
          "terminated.",
          "has no GBPA (reads 0, writes ignored) and always bypasses", until=(8, 1)),
    # ------------------------------------------------------------ queues
    Known("evtq-overflow-abort", QEMU_DEVIATION,
          "IHI 0070 §7.4 (event queue overflow): a record that finds the queue full is "
          "discarded and SMMU_EVENTQ_PROD.OVFLG toggles; GERROR.EVENTQ_ABT_ERR is for an "
          "abort of the queue write itself.",
          "raises GERROR.EVENTQ_ABT_ERR and never sets OVFLG"),
    Known("cmd-el2-el3-ignored", QEMU_DEVIATION,
          "IHI 0070 §4: CMD_TLBI_EL2_* are CERROR_ILL when SMMU_IDR0.HYP=0 and CMD_TLBI_EL3_* "
          "on the Non-secure command queue.",
          "ignores them"),
    Known("cmd-pri-atc-ignored", QEMU_DEVIATION,
          "IHI 0070 §4: CMD_PRI_RESP when SMMU_IDR0.PRI=0 and CMD_ATC_INV when "
          "SMMU_IDR0.ATS=0 are CERROR_ILL.",
          "ignores them"),
    Known("cmd-sync-cs-reserved", QEMU_DEVIATION,
          "IHI 0070 CMD_SYNC.CS=0b11 is reserved: CERROR_ILL (also openvmm PR #3661).",
          "ignores the value"),
    Known("cmd-ssec-unchecked", QEMU_DEVIATION,
          "IHI 0070 §4: SSec=1 in a command on the Non-secure command queue is CERROR_ILL.",
          "checks SSec on CFGI_* only"),
    Known("cmd-s2-without-s2p", QEMU_DEVIATION,
          "IHI 0070 §4: CMD_TLBI_S12_VMALL and CMD_TLBI_S2_IPA are CERROR_ILL when "
          "SMMU_IDR0.S2P=0.",
          "ignores them", until=(9, 0)),
    # ------------------------------------------------------------ caching
    Known("stale-without-invalidation", IMPDEF,
          "IHI 0070 §16.2 (configuration and TLB caching): until CFGI_*/TLBI_* and CMD_SYNC "
          "complete, a transaction may use the old or the new structure (UNPREDICTABLE "
          "which); steps after the invalidation are compared as usual.",
          "may differ in what it cached", quirk=False),
)
KNOWN = {k.id: k for k in KNOWN_DIVERGENCES}

# Differences in event records folded away before comparing (`normalise`, `collapse`):
# QEMU deviations too, but on every fault, so they would hide everything else.
NORMALISATIONS: tuple[Known, ...] = (
    Known("event-per-4-bytes", QEMU_DEVIATION,
          "IHI 0070 §7: one event per faulting transaction.",
          "retries a faulting DMA 4 bytes at a time and records every try (collapsed to "
          "the first record per fields and 4 KiB page)", quirk=False),
    Known("event-ipa-low-bits", QEMU_DEVIATION,
          "IHI 0070 §7.3 stage-2 fault records: IPA[51:12] in bits 243:204, bits 11:0 RES0.",
          "leaves IPA[11:0] set (only IPA[51:12] is compared)", quirk=False),
    Known("event-class-zero", QEMU_DEVIATION,
          "IHI 0070 §7.3 CLASS: 0b00 CD, 0b01 TT, 0b10 IN.",
          "writes CLASS=0 before 9.1 ('Fix encoding of CLASS in events'); not compared there",
          until=(9, 1), quirk=False),
    Known("event-walk-direction", QEMU_DEVIATION,
          "IHI 0070 §7.3: RnW is the incoming transaction's direction; TTRnW (bit 108) that "
          "of the table access for CLASS=TT.",
          "sets RnW=1 (its own read) on a stage-2 fault of a stage-1 table or CD fetch "
          "(CLASS=TT/CD) and never sets TTRnW: RnW of such records and TTRnW are not compared",
          quirk=False),
)


# Divergences that were ours (class our-bug): found by this harness or while classifying
# its divergences, fixed in vsmmu/,
# kept here as (id, rule, fix) so the history of the table stays in one place.
FIXED_OUR_BUGS: tuple[tuple[str, str, str], ...] = (
    ("pagetable-last-slot",
     "DDI 0487 D8: the input range of a table is [0, 2^(64-TxSZ)) (and outputs "
     "[0, 2^PA bits)): its last page or block is mappable.",
     "vsmmu/sw/pagetable.py rejected a mapping ending exactly at 2^bits (off by one)"),
    ("driver-recover-consecutive-errors",
     "IHI 0070 §7.1: after GERRORN acknowledges CMDQ_ERR the SMMU resumes at CONS and "
     "raises CMDQ_ERR again at the next bad command.",
     "vsmmu/sw/driver.py recover() waited for no error at all and timed out on two bad "
     "commands in a row; it now waits for the stop to move"),
    ("disabled-bypass-beyond-oas",
     "IHI 0070 §3.4: with SMMUEN=0 and GBPA.ABORT=0 an input address beyond the OAS is "
     "aborted, no event recorded.",
     "vsmmu/hw/smmu.py passed it through to memory"),
)


def _stale_steps(s: Scenario) -> frozenset[int]:
    return frozenset(i for i, st in enumerate(s.spec["steps"]) if st.get("stale"))


def classify(r: CaseResult, features: Features, version: tuple[int, ...],
             model: ModelTarget | None = None) -> CaseResult:
    """Set r.verdict and r.known; see `Known`.  `model` (a ModelTarget with these
    features) is reused for the replays when given."""
    if not r.diffs:
        r.verdict, r.known = None, []
        return r
    rows = [k for k in KNOWN_DIVERGENCES if k.applies(version)]
    for k in rows:
        if k.match is not None and k.match(r, features):
            r.verdict, r.known = k.cls, [k.id]
            return r
    if r.qemu.crash:
        r.verdict, r.known = PEER_CRASH, ["qemu-crash"]
        return r
    stale = _stale_steps(r.scenario)
    class_known = version >= (9, 1)
    stale_differs = bool(stale) and any(
        i in stale and (sa.events != sb.events or sa.overflow != sb.overflow)
        for i, (sa, sb) in enumerate(zip(r.ours.steps, r.qemu.steps, strict=False)))
    tail = ["stale-without-invalidation"] if stale_differs else []
    if not compare(r.ours, r.qemu, stale=stale):
        r.verdict, r.known = IMPDEF, tail
        return r

    replay = model or ModelTarget(features)
    plain = replay.quirks

    def agrees(quirks) -> bool:
        replay.quirks = frozenset(quirks)
        try:
            obs = execute(r.scenario, replay, class_known=class_known)
        finally:
            replay.quirks = plain
        return not compare(obs, r.qemu, stale=stale)

    needed = [k.id for k in rows if k.quirk]
    if not agrees(needed):  # an imprecise emulation can spoil the others: try them alone
        needed = next(([q] for q in needed if agrees([q])), [])
        if not needed:
            r.verdict, r.known = UNEXPLAINED, []
            return r
    for q in list(needed):  # keep only the quirks the agreement needs
        trial = [x for x in needed if x != q]
        if agrees(trial):
            needed = trial
    classes = {KNOWN[q].cls for q in needed}
    r.verdict = QEMU_DEVIATION if QEMU_DEVIATION in classes else IMPDEF
    r.known = needed + tail
    return r


# ====================================================================== the run
def run_cases(binary: str, seed: int, count: int, *, start: int = 0,
              progress: Callable[[CaseResult], None] | None = None) -> Iterator[CaseResult]:
    """Run `count` scenarios on both sides, classify each divergence; yields
    CaseResults.  Each case gets a fresh QEMU (some QEMU state survives every reset a
    driver can do: see strtab-2lvl-sticky), booted while the previous case runs."""
    peer = QemuPeer(binary).spawn()
    nxt: QemuPeer | None = None
    try:
        peer.connect()
        version, features = peer.version_tuple, peer.features
        class_known = version >= (9, 1)
        model = ModelTarget(features)
        for s in scenarios(seed, count, start):
            t0 = time.perf_counter()
            peer.connect()
            if peer.features != features:
                raise RuntimeError("QEMU's ID registers changed between runs")
            nxt = QemuPeer(binary).spawn()
            ours = execute(s, model, class_known=class_known)
            try:
                theirs = execute(s, QemuTarget(peer), class_known=class_known)
            except PeerCrash as e:
                theirs = Observation(crash=str(e))
            peer.close()
            peer, nxt = nxt, None
            r = CaseResult(s, ours, theirs, compare(ours, theirs))
            classify(r, features, version, model)
            r.seconds = time.perf_counter() - t0
            if progress:
                progress(r)
            yield r
    finally:
        peer.close()
        if nxt is not None:
            nxt.close()


@dataclass
class Report:
    qemu_version: str
    qemu_binary: str
    seed: int
    start: int
    results: list[CaseResult]
    seconds: float

    @property
    def agree(self) -> int:
        return sum(1 for r in self.results if r.verdict is None)

    @property
    def divergent(self) -> list[CaseResult]:
        return [r for r in self.results if r.verdict is not None]

    @property
    def unexplained(self) -> list[CaseResult]:
        return [r for r in self.divergent if r.verdict not in EXPLAINED]

    def as_dict(self) -> dict:
        by_known = Counter(k for r in self.divergent for k in r.known)
        return {
            "qemu_version": self.qemu_version,
            "cases": len(self.results),
            "agree": self.agree,
            "divergences": [_divergence_dict(r) for r in self.divergent],
            "qemu_binary": self.qemu_binary,
            "seed": self.seed,
            "start": self.start,
            "classes": dict(Counter(r.verdict for r in self.divergent)),
            "known": {k: {"count": n, "class": KNOWN[k].cls if k in KNOWN else PEER_CRASH,
                          "rule": KNOWN[k].rule if k in KNOWN else "QEMU died"}
                      for k, n in sorted(by_known.items())},
            "seconds": round(self.seconds, 3),
        }


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, int) and not isinstance(x, bool) and x > 0xFFFF:
        return hex(x)
    return x


def _divergence_dict(r: CaseResult) -> dict:
    def side(which: str) -> dict:
        out = {}
        for d in r.diffs:
            key = d.aspect if d.step is None else f"{d.aspect}@step{d.step}"
            out[key] = _jsonable(getattr(d, which))
        return out

    return {
        "case": r.scenario.name,
        "ours": side("ours"),
        "qemu": side("qemu"),
        "class": r.verdict,
        "known": r.known,
        "rules": [KNOWN[k].rule for k in r.known if k in KNOWN],
        "seed": r.scenario.seed,
        "index": r.scenario.index,
        "scenario": _jsonable(r.scenario.spec),
    }


def run(binary: str, seed: int = 0, cases: int = 300, *, start: int = 0,
        progress: Callable[[CaseResult], None] | None = None) -> Report:
    t0 = time.perf_counter()
    version_line = QemuPeer(binary).version  # raises if the binary is not a QEMU
    results = list(run_cases(binary, seed, cases, start=start, progress=progress))
    return Report(version_line, binary, seed, start, results, time.perf_counter() - t0)


# ====================================================================== command line
def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vsmmu diff-qemu`."""
    parser.add_argument("--cases", type=_positive, default=300, metavar="N",
                        help="number of generated scenarios (default 300)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="scenario seed (default 0); case i of seed S is always the same")
    parser.add_argument("--start", type=_non_negative, default=0, metavar="I",
                        help="index of the first case (replay one: --start I --cases 1)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: qemu_version, cases, agree, divergences")
    parser.add_argument("--qemu", metavar="PATH", default=None,
                        help="qemu-system-aarch64 to test against (default: $QEMU, else "
                             "qemu-system-aarch64 on PATH)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="text mode: print every divergence's differences")


def _resolve_qemu(path: str | None) -> str | None:
    binary = path or os.environ.get("QEMU") or "qemu-system-aarch64"
    return shutil.which(binary)


def main(args: argparse.Namespace) -> int:
    """`vsmmu diff-qemu`: 0 when every divergence is explained (qemu-deviation, impdef,
    peer-crash), 1 when one is not, 2 for usage errors or a missing/broken QEMU."""
    binary = _resolve_qemu(args.qemu)
    if binary is None:
        what = args.qemu or os.environ.get("QEMU") or "qemu-system-aarch64"
        print(f"vsmmu diff-qemu: {what} not found (install it: apt-get install "
              "qemu-system-arm, or pass --qemu PATH)", file=sys.stderr)
        return 2
    progress = None
    if not args.json and sys.stderr.isatty():
        def progress(r: CaseResult) -> None:
            print(f"\r{r.scenario.index + 1 - args.start}/{args.cases}", end="",
                  file=sys.stderr, flush=True)
    try:
        report = run(binary, args.seed, args.cases, start=args.start, progress=progress)
    except (PeerCrash, OSError, RuntimeError) as e:
        print(f"vsmmu diff-qemu: cannot run {binary}: {e}", file=sys.stderr)
        return 2
    if progress:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_text(report, verbose=args.verbose))
    return 1 if report.unexplained else 0


def format_text(report: Report, *, verbose: bool = False) -> str:
    lines = [f"{report.qemu_version}  ({report.qemu_binary})",
             f"seed {report.seed}: {len(report.results)} cases, {report.agree} agree, "
             f"{len(report.divergent)} diverge, {len(report.unexplained)} unexplained "
             f"({report.seconds:.1f} s)"]
    by_known = Counter(k for r in report.divergent for k in r.known)
    if by_known:
        lines.append("")
        lines.append(f"{'known divergence':36} {'class':15} {'cases':>5}")
        for k, n in by_known.most_common():
            cls = KNOWN[k].cls if k in KNOWN else PEER_CRASH
            lines.append(f"{k:36} {cls:15} {n:5}")
    for r in report.divergent:
        unexplained = r.verdict not in EXPLAINED
        if not (verbose or unexplained):
            continue
        lines.append("")
        lines.append(f"{r.verdict.upper() if unexplained else r.verdict}: {r.scenario.name} "
                     f"(--seed {r.scenario.seed} --start {r.scenario.index} --cases 1) "
                     f"{' '.join(r.known)}")
        for d in r.diffs:
            where = "" if d.step is None else f"@step{d.step}"
            lines.append(f"  {d.aspect}{where}")
            lines.append(f"    ours: {json.dumps(_jsonable(d.ours))[:300]}")
            lines.append(f"    qemu: {json.dumps(_jsonable(d.qemu))[:300]}")
    return "\n".join(lines)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m fuzz.peers.differential",
                                 description="differential testing against QEMU's SMMUv3")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
