"""A Hypothesis state machine over the fuzzing operations, on a booted system.

Each rule is one program operation (`fuzz.program.Op`) drawn from strategies
that know the platform: DMA at and around the boot buffer, vSTEs, CDs,
page-table entries and commands built from the layout tables with the
addresses the guests really use, hypervisor map/unmap/reassign/assign/
deassign/destroy/create, event service, time.  The operation runs as the
fuzz runner runs it, and after every step the invariant monitor checks every
isolation invariant; a second invariant says no operation raised.  A failure
prints the program so far, which `vsmmu triage` replays and minimizes.

Budget: the active Hypothesis profile's (`ci` under CI, `dev` locally,
`nightly` for long runs with a database); 20 steps per case.
"""

from __future__ import annotations

import copy
import functools
import traceback

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from fuzz.program import GUEST_SLOTS, OP_BY_NAME, OPS, Op, to_text
from fuzz.runner import DMA_BUF, DMA_IOVA, W, boot, execute
from properties.violations import Violation
from vsmmu.arch.fields import Field
from vsmmu.arch.layouts import CD, COMMANDS, REGISTERS, S1_DESC, STE, Config
from vsmmu.hw.memory import PAGE_SIZE, BusError
from vsmmu.hyp.host import GUEST_RAM, IPA_BITS, MSI_WINDOW
from vsmmu.sw.driver import cd, ste_s1
from vsmmu.sw.pagetable import MappingError


@functools.cache
def booted():
    """The booted fuzzing platform every case starts from (copied, never changed)."""
    return boot()


def _facts():
    system = booted()
    drivers = [d for k in system.kernels.values() for d in k.drivers.values()]
    return dict(
        devices=len(system.hyp.devices),
        smmus=len(system.hyp.smmus),
        ram=min(g.ram for g in system.hyp.guests.values()),
        cd_tables=sorted({t.ptr for d in drivers for t in d._cd_tables.values()}),
        ttbs=sorted({dom.table.ttb for dom in system.domains.values()}),
        buffers=sorted({dom.table.translate(DMA_IOVA) for dom in system.domains.values()}),
        asids=sorted({dom.asid for dom in system.domains.values()}),
        vmids=sorted({g.vmid for g in system.hyp.guests.values()}),
        leaf=next(iter(system.domains.values())).table.descriptors(DMA_IOVA)[-1][2],
    )


FACTS = _facts()

# ------------------------------------------------------------ strategies
guests = st.sampled_from([0, 1]) | st.integers(0, GUEST_SLOTS - 1)  # mostly ones that exist
smmus = st.integers(0, FACTS["smmus"] - 1)
devices = st.integers(0, FACTS["devices"] - 1)
vsids = st.integers(0, 3)
ssids = st.integers(0, 3) | st.integers(0, 255)
buffer_pages = st.sampled_from([(b - GUEST_RAM) // PAGE_SIZE for b in FACTS["buffers"]])
pages = buffer_pages | buffer_pages | st.integers(0, FACTS["ram"] // PAGE_SIZE - 1)
# Guest IPAs that matter: RAM (the boot buffers, tables), the MSI window, beyond RAM.
ipas = (st.sampled_from(FACTS["buffers"] + FACTS["ttbs"] + FACTS["cd_tables"])
        | st.integers(0, FACTS["ram"] - 1).map(lambda o: GUEST_RAM + (o & -8))
        | st.just(MSI_WINDOW[0])
        | st.integers(0, (1 << IPA_BITS) - 1).map(lambda a: a & -64))
boot_buffer = st.integers(0, DMA_BUF - 1).map(lambda o: DMA_IOVA + o)
iovas = (boot_buffer | boot_buffer
         | st.integers(-PAGE_SIZE, DMA_BUF + PAGE_SIZE).map(lambda o: DMA_IOVA + o)
         | st.integers(0, PAGE_SIZE - 1).map(lambda o: MSI_WINDOW[0] + o)
         | ipas | st.integers(0, (1 << 64) - 1))


def field_values(f: Field) -> st.SearchStrategy[int]:
    """Any value the field holds (an aligned address for address fields)."""
    if f.addr_lo is not None:
        return st.integers(0, f.max >> f.addr_lo).map(lambda v: v << f.addr_lo)
    return st.integers(0, f.max)


@st.composite
def perturbed(draw, layout, word: int) -> int:
    """`word` with up to two fields set to arbitrary values."""
    for f in draw(st.lists(st.sampled_from(list(layout)), max_size=2)):
        word = layout.put(word, f.name, draw(field_values(f)))
    return word


@st.composite
def vste_words(draw) -> bytes:
    kind = draw(st.sampled_from(["s1", "s1", "abort", "bypass", "s2", "invalid"]))
    if kind == "s1":
        word = ste_s1(draw(st.sampled_from(FACTS["cd_tables"]) | ipas.map(lambda a: a & -64)),
                      s1cdmax=draw(st.integers(0, 3)), s1dss=draw(st.integers(0, 3)),
                      eats=draw(st.integers(0, 3)))
    else:
        config = {"abort": Config.ABORT, "bypass": Config.BYPASS, "s2": Config.S2_TRANS,
                  "invalid": Config.ABORT}[kind]
        word = STE.encode(V=int(kind != "invalid"), CONFIG=config)
    return draw(perturbed(STE, word)).to_bytes(64, "little")


@st.composite
def cd_words(draw) -> bytes:
    word = cd(draw(st.sampled_from(FACTS["asids"]) | st.integers(0, 15)),
              draw(st.sampled_from(FACTS["ttbs"]) | ipas.map(lambda a: a & -PAGE_SIZE)),
              draw(st.sampled_from([64 - IPA_BITS, 16, 25, 33])),
              ips=draw(st.sampled_from([32, 40, 48])))
    if draw(st.booleans()):
        word = CD.put(word, "V", 0)
    return draw(perturbed(CD, word)).to_bytes(64, "little")


_SMALL = {"SID": vsids, "SSID": ssids, "ASID": st.sampled_from(FACTS["asids"]) | st.integers(0, 7),
          "VMID": st.sampled_from(FACTS["vmids"]) | st.integers(0, 3),
          "ADDR": iovas.map(lambda a: a & -PAGE_SIZE & ((1 << 64) - 1)), "MSIADDR": ipas,
          "CS": st.integers(0, 3)}


@st.composite
def cmd_words(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=16, max_size=16))
    op = draw(st.sampled_from(sorted(COMMANDS)))
    layout = COMMANDS[op]
    values = {f.name: draw(_SMALL.get(f.name, field_values(f))) for f in layout
              if f.name != "OP" and draw(st.booleans())}
    values = {k: v for k, v in values.items() if layout[k].fits(v)}
    return layout.encode(OP=op, **values).to_bytes(16, "little")


pte_descs = (st.just(0)
             | (st.sampled_from(FACTS["buffers"]) | ipas.map(lambda a: a & -PAGE_SIZE)).map(
                 lambda ipa: S1_DESC.put(FACTS["leaf"], "OA", ipa & ((1 << 48) - 1)))
             | st.integers(0, (1 << 64) - 1))
_REG = {r.name: i for i, r in enumerate(REGISTERS)}
registers = st.sampled_from([_REG[n] for n in (
    "CR0", "GBPA", "CMDQ_PROD", "CMDQ_CONS", "EVENTQ_CONS", "EVENTQ_PROD", "GERRORN", "IRQ_CTRL",
    "STRTAB_BASE", "STRTAB_BASE_CFG", "CMDQ_BASE", "EVENTQ_BASE", "EVENTQ_IRQ_CFG0",
    "GERROR_IRQ_CFG0")]) | st.integers(0, len(REGISTERS) - 1)
reg_values = st.integers(0, 0xFF) | st.integers(0, (1 << 32) - 1) | st.integers(0, (1 << 64) - 1)


def op(name: str, **operands) -> Op:
    code = OP_BY_NAME[name]
    return Op(code, tuple(operands[o.name] for o in OPS[code].operands))


# ------------------------------------------------------------ the machine
class IsolationMachine(RuleBasedStateMachine):
    touched = Bundle("touched")  # (guest slot, page) a device just reached by DMA

    @initialize()
    def start(self):
        self.system = copy.deepcopy(booted())
        self.ops: list[Op] = []
        self.crash: str | None = None

    def do(self, o: Op) -> None:
        self.ops.append(o)
        try:
            execute(self.system, o)
        except Exception:  # noqa: BLE001 - reported by the no-crash invariant
            self.crash = traceback.format_exc()

    def program(self) -> str:
        return "program so far (replay with `vsmmu triage`):\n" + to_text(self.ops)

    # -------------------------------------------------------- devices
    @rule(device=devices, iova=iovas, size=st.integers(0, 255), flags=st.integers(0, 63),
          ssid=ssids)
    def dma(self, device, iova, size, flags, ssid):
        self.do(op("dma", device=device, iova=iova, size=size, flags=flags, ssid=ssid))

    @rule(target=touched, device=devices, offset=st.integers(0, DMA_BUF - 1),
          size=st.integers(0, 63), flags=st.sampled_from([0, W]))
    def dma_boot_buffer(self, device, offset, size, flags):
        """What a driver's DMA does: plain reads and writes of the buffer it mapped.
        The guest page behind it joins `touched` (its translation may be cached)."""
        self.do(op("dma", device=device, iova=DMA_IOVA + offset, size=size, flags=flags,
                   ssid=0))
        name = list(self.system.hyp.devices)[device]
        owner, dom = self.system.hyp.assigned.get(name), self.system.domains.get(name)
        try:  # the guest's table as it is now: a program may have broken or unmapped it
            ipa = dom.table.translate(DMA_IOVA + offset) if owner and dom else None
        except (BusError, MappingError):
            ipa = None
        if ipa is None or not GUEST_RAM <= ipa < GUEST_RAM + FACTS["ram"]:
            return multiple()
        return int(owner[0].removeprefix("g")), (ipa - GUEST_RAM) // PAGE_SIZE

    @rule(device=devices, iova=iovas, flags=st.integers(0, 15), ssid=ssids)
    def ats(self, device, iova, flags, ssid):
        self.do(op("ats", device=device, iova=iova, flags=flags, ssid=ssid))

    # -------------------------------------------------------- guest software
    @rule(guest=guests, smmu=smmus, vsid=vsids, ste=vste_words())
    def vste(self, guest, smmu, vsid, ste):
        self.do(op("vste", guest=guest, smmu=smmu, vsid=vsid, ste=ste))

    @rule(guest=guests, device=devices, ssid=ssids, word=cd_words())
    def cd(self, guest, device, ssid, word):
        self.do(op("cd", guest=guest, device=device, ssid=ssid, cd=word))

    @rule(guest=guests, device=devices, iova=iovas.map(lambda a: a & 0xFFFF_FFFF),
          level=st.integers(0, 3), desc=pte_descs)
    def pte(self, guest, device, iova, level, desc):
        self.do(op("pte", guest=guest, device=device, iova=iova, level=level, desc=desc))

    @rule(guest=guests, smmu=smmus, word=cmd_words())
    def cmd(self, guest, smmu, word):
        self.do(op("cmd", guest=guest, smmu=smmu, cmd=word))

    @rule(guest=guests, smmu=smmus, count=st.integers(0, 300), word=cmd_words())
    def cmd_burst(self, guest, smmu, count, word):
        self.do(op("cmd_burst", guest=guest, smmu=smmu, count=count, cmd=word))

    @rule(guest=guests, smmu=smmus, reg=registers, value=reg_values)
    def mmio_write(self, guest, smmu, reg, value):
        self.do(op("mmio_write", guest=guest, smmu=smmu, reg=reg, value=value))

    @rule(guest=guests, smmu=smmus, reg=st.integers(0, len(REGISTERS) - 1))
    def mmio_read(self, guest, smmu, reg):
        self.do(op("mmio_read", guest=guest, smmu=smmu, reg=reg))

    @rule(guest=guests, offset=st.integers(0, FACTS["ram"] - 1),
          data=st.binary(min_size=8, max_size=8))
    def mem(self, guest, offset, data):
        self.do(op("mem", guest=guest, offset=offset, data=data))

    @rule(guest=guests, smmu=smmus)
    def events(self, guest, smmu):
        self.do(op("events", guest=guest, smmu=smmu))

    @rule(guest=guests, smmu=smmus)
    def recover(self, guest, smmu):
        self.do(op("recover", guest=guest, smmu=smmu))

    # -------------------------------------------------------- the hypervisor
    @rule(device=devices, guest=guests)
    def assign(self, device, guest):
        self.do(op("assign", device=device, guest=guest))

    @rule(device=devices)
    def deassign(self, device):
        self.do(op("deassign", device=device))

    @rule(guest=guests, page=pages)
    def s2_unmap(self, guest, page):
        self.do(op("s2_unmap", guest=guest, page=page))

    @rule(guest=guests, page=pages)
    def s2_map(self, guest, page):
        self.do(op("s2_map", guest=guest, page=page))

    @rule(guest=guests, page=pages, dst=guests, dst_page=st.integers(0, 15))
    def reassign(self, guest, page, dst, dst_page):
        self.do(op("reassign", guest=guest, page=page, dst=dst, dst_page=dst_page))

    @rule(where=touched)
    def s2_unmap_touched(self, where):
        self.do(op("s2_unmap", guest=where[0], page=where[1]))

    @rule(where=touched, dst=guests, dst_page=st.integers(0, 15))
    def reassign_touched(self, where, dst, dst_page):
        self.do(op("reassign", guest=where[0], page=where[1], dst=dst, dst_page=dst_page))

    @rule(guest=guests)
    def destroy(self, guest):
        self.do(op("destroy", guest=guest))

    @rule(guest=guests)
    def create(self, guest):
        self.do(op("create", guest=guest))

    @rule(count=st.integers(0, 15))
    def step(self, count):
        self.do(op("step", count=count))

    # -------------------------------------------------------- invariants
    @invariant()
    def no_unexpected_exception(self):
        assert self.crash is None, f"no-crash:\n{self.crash}\n{self.program()}"

    @invariant()
    def every_isolation_invariant_holds(self):
        try:
            self.system.monitor.check()
        except Violation as v:
            raise AssertionError(f"{v}\n{self.program()}") from v


# The active profile decides examples, derandomization and the database; the
# machine only fixes the length of a case (and no per-case deadline: Z3 runs
# whenever a stage 2 changes).
IsolationMachine.TestCase.settings = settings(stateful_step_count=20, deadline=None)
TestIsolationMachine = IsolationMachine.TestCase


def test_the_machine_finds_a_planted_stale_translation(monkeypatch):
    """Non-vacuity: with the hypervisor's stage-2 invalidation removed, the machine
    finds the stale IOTLB entry and shrinks it to DMA + unmap."""
    monkeypatch.setattr("vsmmu.hyp.hypervisor.Hypervisor._invalidate_s2",
                        lambda self, guest, ranges: None)
    with pytest.raises(AssertionError, match="tlb-containment") as e:
        run_state_machine_as_test(IsolationMachine, settings=settings(
            stateful_step_count=20, deadline=None, max_examples=500, derandomize=True,
            database=None, print_blob=False, phases=[Phase.generate, Phase.shrink]))
    assert "s2_unmap" in str(e.value)
