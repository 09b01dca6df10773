"""What a run of a scenario is observed as, and how two observations are compared.

Compared: the bytes that landed in the data window, the edu buffer (what DMA
reads returned), per step the event records (QEMU's one-record-per-4-bytes
duplicates collapsed, its documented record quirks normalised), EVENTQ
overflow, and per command batch CMDQ_CONS (RD, ERR) and GERROR; at the end
GERROR and CMDQ_CONS.  The record quirks folded away by `normalise` and
`collapse` are listed, with their rules, in `divergences.NORMALISATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vsmmu.arch.faults import TRANSACTION_EVENTS, WALK_EVENTS, Fault
from vsmmu.arch.layouts import REG, FaultClass


# ====================================================================== observations
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
