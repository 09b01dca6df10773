"""Running a scenario on one target: our model or QEMU.

The same program runs twice through the same encoders and the same driver
(`vsmmu.sw.driver.SmmuDriver`, `vsmmu.sw.pagetable.PageTable`):
  * on our model: a `vsmmu.hw.smmu.Smmu` over a `PhysMem` laid out like QEMU's
    virt machine (128 MiB of RAM at 0x4000_0000, the edu device as SID 8, its
    DMA buffer emulated), with the features QEMU's ID registers advertise
    (`ModelTarget`; with quirks switched on, a `quirks.QuirkSmmu`);
  * on QEMU, through `fuzz.peers.qemu_peer.QemuPeer` (qtest, edu as DMA master)
    (`QemuTarget`).
`execute` builds the scenario's structures, runs its steps and returns what it
observed (`comparison.Observation`).
"""

from __future__ import annotations

import os
import random
import traceback

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import (
    CD,
    L1_STD,
    REG,
    S1_DESC,
    STE,
    TABLE_DESC,
    CmdError,
)
from vsmmu.arch.queue import QueueGeometry
from vsmmu.hw.memory import PhysMem
from vsmmu.hw.smmu import Smmu
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
from vsmmu.sw.pagetable import IpaView, PageTable

from .comparison import Observation, StepObs, collapse, normalise
from .qemu_peer import RAM_BASE, RAM_SIZE, PeerCrash, QemuPeer
from .quirks import QEMU_IOMMU_VA_BITS, QuirkSmmu
from .scenarios import (
    BUF_SIZE,
    DATA,
    DATA_SIZE,
    GUEST_TABLES,
    HOST_TABLES,
    MASK64,
    Q_CMD_LOG2,
    Q_EVT_LOG2,
    SCRATCH,
    SID,
    UNBACKED,
    Scenario,
    ipa_hole,
)


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
    return REG[name].read(target.mmio)


def _wreg(target, name: str, value: int) -> None:
    REG[name].write(target.mmio, value)


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
        ste = STE.encode(ste, S1CONTEXTPTR=ipa_hole(random.Random(1), s2, 64 - s2["t0sz"], 64))
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
