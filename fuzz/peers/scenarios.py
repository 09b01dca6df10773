"""Scenarios of the differential test against QEMU: the memory map and the generator.

A *scenario* is generated from (seed, index) alone: a stream-table layout, one
STE for the edu device's StreamID (abort, bypass, stage 1, stage 2 or nested,
valid or with one field broken), its CD and page tables (4K/16K/64K granules,
pages and blocks, RO/RW, AP, S2AP, AF, address sizes), then a few steps: edu
DMAs to mapped, unmapped, unbacked and out-of-range addresses, batches of
commands (some illegal), and, in the `stale` scenarios, structure updates made
without the invalidation the architecture requires.

A scenario is plain JSON data; `execution` builds and runs it on a target, on the
memory map below (QEMU's virt machine), identically on both sides.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vsmmu.arch.layouts import COMMANDS, Op
from vsmmu.hw.walk import GRANULES, s1_start_level, s2_geometry
from vsmmu.sw.driver import cmd as make_cmd

from .qemu_peer import EDU_BUF_USABLE

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
            m["out"] = ipa_hole(rng, s2, ia2, s1["granule"])
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


def ipa_hole(rng: random.Random, s2: dict, ia: int, granule: int) -> int:
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
