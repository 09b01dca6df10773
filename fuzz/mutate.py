"""Structure-aware mutation: libFuzzer's custom mutator and crossover over programs.

A fuzz input is a program (fuzz/program.py).  `Mutator.mutate` decodes it and
changes it the way a person probing a vSMMU would: insert a new *meaningful*
operation (DMA into a device's boot buffer at `runner.DMA_IOVA`, a vSTE or CD
built field by field from the layout table with a config that looks valid, a
command of any opcode in `layouts.Op` with its fields set by name, a register
write with a value built from that register's layout), delete, duplicate or
swap operations, or change one operand.  An operand that is a layout word (a
vSTE is an STE, a CD a CD, a command the layout of its opcode byte, a
page-table descriptor an S1_DESC, an MMIO value its register) is changed ONE
FIELD at a time: boundary values, reserved encodings (outside `Field.values`),
a flipped enable bit, or one reserved bit (`Layout.reserved_mask`) set.
An operation that takes a resource (a page a device's DMA reached, a
virtio-iommu mapping) is often aimed at one the operations before it made or
used, when inserted or mutated: an UNMAP runs from the edge of one mapping to
the edge of another, a MAP lands next to one, a guest is destroyed or a device
taken back right after a DMA filled the SMMUs' caches for it.  `Mutator.crossover` splices two
programs with a `step` between them, so one behaviour runs after the other has
settled.

Outputs are canonical programs of at most `program.MAX_OPS` operations and
`max_size` bytes.  With a small probability, and with an even chance for an
input that is not a canonical program (a hand-made file), the mutator falls
back to a byte-level mutation: `byte_mutate` (atheris.Mutate, with libFuzzer's
dictionary and comparison feedback, in the harnesses) or, by default, a seeded
one here; its output is canonicalized too (decoding is total: the same
program).  Everything but atheris.Mutate is a function of the seed
(`random.Random(seed)`) and of the crossings the process has reached (`Aim`,
fuzz/crossings.py): the same input, seed and aim give the same output.

The values worth choosing come from `Hints` (fuzz/hints.py).  `Bias` weights
the operations a harness inserts.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vsmmu.arch.fields import Field, Layout, deposit, extract
from vsmmu.arch.layouts import CD, CMD_ANY, COMMANDS, REGISTERS, S1_DESC, STE, Config
from vsmmu.arch.layouts import Op as Opcode
from vsmmu.arch.virtio_layouts import (
    ATTACH_F_BYPASS,
    REQUESTS,
    U64_MAX,
    ReqType,
    attach_req,
    detach_req,
    map_req,
    probe_req,
    size_of,
    unmap_req,
)
from vsmmu.hw.frontend import SmmuFrontend
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM, MSI_WINDOW
from vsmmu.sw.driver import DEFAULT_MAIR

from .crossings import Aim
from .hints import Hints
from .program import GUEST_SLOTS, MAX_OPS, OP_BY_NAME, OPS, Op, Operand, decode, encode
from .runner import ATOMIC, DMA_BUF, DMA_IOVA, PRIV, SSV, TRANSLATED, W, X

WRITABLE = tuple(i for i, reg in enumerate(REGISTERS) if reg.name not in SmmuFrontend.READ_ONLY)
BYTE_LEVEL = 0.05  # share of mutations left to the byte-level mutator
BYTE_LEVEL_GARBAGE = 0.5  # ... for inputs that are not canonical programs
# How often a new operation that takes a resource is aimed at one the program
# made or used (`Generator.aimed`); an existing one is re-aimed half as often.
AIMED = {"s2_unmap": 0.5, "reassign": 0.5, "viommu_unmap": 0.5, "viommu_map": 0.3,
         "destroy": 0.5, "deassign": 0.5}
SEPARATOR = Op(OP_BY_NAME["step"], (3,))  # between crossed-over programs: queues settle
# A guest moves its vSMMU's stream table or a queue only with that structure
# disabled (IHI 0070 §6.3.26 SMMU_CMDQ_BASE "is Guarded by SMMU_CR0.CMDQEN"; the
# stream table and event queue bases likewise by SMMUEN and EVENTQEN):
# `Generator.relocation` inserts CR0 off, the base at an aimed address, CR0 on,
# three register writes that single insertions almost never line up.
RELOCATE = 0.05  # share of insertions that move one (where the bias writes registers)
RELOCATABLE = {"STRTAB_BASE": "SMMUEN", "CMDQ_BASE": "CMDQEN", "EVENTQ_BASE": "EVENTQEN"}
_REG_INDEX = {reg.name: i for i, reg in enumerate(REGISTERS)}

ByteMutate = Callable[[bytes, int], bytes]


@dataclass(frozen=True)
class Bias:
    """How often each operation is inserted (relative weights; absent: 0), and
    which opcodes inserted commands use (None: every opcode in layouts.Op)."""

    ops: Mapping[str, float]
    opcodes: tuple[Opcode, ...] | None = None


SYSTEM = Bias({
    "dma": 14, "cmd": 10, "vste": 8, "cd": 6, "pte": 6, "mmio_write": 6, "reassign": 4,
    "ats": 3, "mem": 3, "s2_unmap": 3, "events": 3, "step": 3, "cmd_burst": 2, "assign": 2,
    "deassign": 2, "s2_map": 2, "recover": 2, "mmio_read": 1, "destroy": 1, "create": 1,
    "burst": 1,
})
VSTE = Bias(
    {"vste": 25, "dma": 20, "cd": 15, "cmd": 15, "pte": 5, "ats": 5, "events": 3, "step": 3,
     "mmio_write": 3},
    (Opcode.CFGI_STE, Opcode.CFGI_STE_RANGE, Opcode.CFGI_CD, Opcode.CFGI_CD_ALL,
     Opcode.PREFETCH_CONFIG, Opcode.SYNC),
)
COMMAND = Bias({"cmd": 30, "dma": 20, "cmd_burst": 8, "pte": 5, "events": 5, "recover": 5,
                "step": 5, "ats": 3, "s2_unmap": 2, "reassign": 2})
SMMU = Bias({"dma": 20, "vste": 15, "cmd": 15, "cd": 10, "pte": 10, "mmio_write": 8, "ats": 5,
             "mem": 5, "cmd_burst": 3, "step": 3, "events": 3, "recover": 3, "s2_unmap": 2,
             "s2_map": 2, "deassign": 1, "assign": 1, "destroy": 1, "create": 1, "burst": 1})
VIRTIO = Bias({"viommu_map": 15, "viommu_unmap": 12, "dma": 15, "viommu_req": 12,
               "viommu_attach": 8, "viommu_config": 3, "s2_unmap": 4, "reassign": 4,
               "events": 3, "s2_map": 2, "assign": 2, "deassign": 2, "destroy": 1,
               "create": 1, "step": 1})
BIASES = {"system": SYSTEM, "vste": VSTE, "command": COMMAND, "smmu": SMMU,
          "virtio-iommu": VIRTIO}


# ------------------------------------------------------------ layout words
def _raw_max(f: Field) -> int:
    return (1 << f.width) - 1


def _set(word: int, f: Field, raw: int) -> int:
    return deposit(word, f.hi, f.lo, raw & _raw_max(f))


def _address(f: Field, addr: int) -> int:
    """The raw bits an address field holds for `addr` (truncated to the field)."""
    return (addr >> f.addr_lo) & _raw_max(f)


def _reserved_encodings(f: Field, rng: random.Random) -> list[int]:
    if not f.values:
        return []
    top = _raw_max(f)
    if top < 64:
        return [v for v in range(top + 1) if v not in f.values]
    picks = {rng.randrange(top + 1) for _ in range(8)}
    return [v for v in picks if v not in f.values]


def _hinted(f: Field, hints: Hints) -> list[int]:
    """Raw values of a field a person would try first, by the field's name."""
    name = f.name
    if f.addr_lo is not None:
        return [_address(f, a) for a in (*hints.ipas, *hints.pas, *hints.iovas, 0,
                                          *(a for _, a in hints.aliases))]
    if name in ("SID", "STAG"):
        return list(hints.vsids)
    if name in ("VMID", "S2VMID"):
        return [*hints.vmids, 0]
    if name == "ASID":
        return [*hints.asids, 0]
    if name == "SSID":
        return [0, 1]
    if name in ("NUM", "SCALE"):  # range invalidations: one page, or the widest
        return [0, (1 << f.width) - 1]
    if name == "OP":
        return [op.value for op in Opcode]
    # virtio-iommu requests (byte-struct fields: no addr_lo)
    if name == "phys_start":
        return [*hints.ipas, *hints.pas, GUEST_RAM]
    if name in ("virt_start", "virt_end"):
        return [*hints.iovas, *(a + PAGE_SIZE - 1 for a in hints.iovas)]
    if name == "domain":
        return [1, 2, 3, 0]
    if name == "endpoint":
        return list(hints.vsids)
    if f.values:
        return list(f.values)
    return []


def mutate_field(layout: Layout, word: int, rng: random.Random, hints: Hints | None = None,
                 name: str | None = None) -> tuple[int, str | None]:
    """`word` with ONE field of `layout` changed (returns the new word and the
    field's name), or, with probability 1/10, with one reserved bit toggled
    (the name is then None); `name` picks the field.  Candidates: 0, 1, the
    maximum and one less, a reserved encoding, a hinted value, a random value;
    a single-bit field (an enable) is flipped.  The result always differs."""
    hints = hints or Hints()
    if layout.reserved_mask and name is None and rng.random() < 0.1:
        bits = [i for i in range(layout.width) if layout.reserved_mask >> i & 1]
        return word ^ (1 << rng.choice(bits)), None
    f = layout[name] if name else _pick_field(layout, rng)
    old, top = extract(word, f.hi, f.lo), _raw_max(f)
    if f.width == 1:
        return _set(word, f, old ^ 1), f.name
    kind = rng.random()
    if kind < 0.35:
        candidates = [0, 1, top, top - 1]
    elif kind < 0.5:
        candidates = _reserved_encodings(f, rng)
    elif kind < 0.8:
        candidates = _hinted(f, hints)
    else:
        candidates = [rng.randrange(top + 1), old ^ (1 << rng.randrange(f.width))]
    candidates = [c for c in candidates if c != old and 0 <= c <= top]
    new = rng.choice(candidates) if candidates else old ^ (1 << rng.randrange(f.width))
    return _set(word, f, new), f.name


POINTERS = 0.25  # share of field choices that go to a layout's address fields


@functools.cache
def _pointer_fields(layout: Layout) -> tuple[Field, ...]:  # layouts are module constants
    return tuple(f for f in layout if f.addr_lo is not None)


def _pick_field(layout: Layout, rng: random.Random) -> Field:
    """A field to mutate: a pointer (an address field) a quarter of the time, for
    they are few among many flags and where confused-address bugs live."""
    pointers = _pointer_fields(layout)
    if pointers and rng.random() < POINTERS:
        return rng.choice(pointers)
    return rng.choice(list(layout))


def command_layout(word: int) -> Layout:
    """The layout of a command word: by its opcode byte (CMD_ANY when unknown)."""
    return COMMANDS.get(word & 0xFF, CMD_ANY)


def word_layout(op: Op, operand: Operand, value: int | bytes) -> Layout | None:
    """The layout a raw or integer operand is a word of, if any."""
    name = op.spec.name
    if operand.name == "ste":
        return STE
    if operand.name == "cd":
        return CD
    if operand.name == "cmd":
        return command_layout(int.from_bytes(value, "little"))
    if operand.name in ("desc", "data"):
        return S1_DESC
    if name == "mmio_write" and operand.name == "value":
        return REGISTERS[op.reg % len(REGISTERS)].layout
    if operand.name == "req":
        return REQUESTS.get(value[0], REQUESTS[ReqType.MAP])
    return None


# ------------------------------------------------------------ generators
class Generator:
    """Meaningful operations and layout words, built field by field."""

    def __init__(self, rng: random.Random, hints: Hints, bias: Bias, aim: Aim | None = None):
        self.rng, self.h, self.bias = rng, hints, bias
        self.aim = aim if aim is not None else Aim(hints.aliases)

    def _pick(self, values, fresh: Callable[[], int] | None = None, p_fresh: float = 0.1):
        if fresh is not None and (not values or self.rng.random() < p_fresh):
            return fresh()
        return self.rng.choice(values)

    def _fields(self, layout: Layout, word: int = 0, **values: int) -> int:
        """Set fields by name; an address field takes an address."""
        for name, value in values.items():
            f = layout[name]
            word = _set(word, f, _address(f, value) if f.addr_lo is not None else value)
        return word

    def _scramble(self, layout: Layout, word: int, p: float = 0.2) -> int:
        """Now and then, a few other fields changed as a fuzzer would."""
        while self.rng.random() < p:
            word, _ = mutate_field(layout, word, self.rng, self.h)
        return word

    def ipa(self) -> int:
        return self._pick(self.h.ipas, lambda: GUEST_RAM + self.rng.randrange(256) * PAGE_SIZE)

    def pointer(self) -> int:
        """A guest's pointer in a vSTE or CD: an IPA where a structure lives, and
        now and then an address that is someone's memory as a PA (`Aim`), which only
        a walk that skips stage 2 would reach."""
        if self.rng.random() < 0.1 and (aimed := self.aim.pick(self.rng)) is not None:
            return aimed
        return self.ipa()

    def guest(self) -> int:
        return self._pick(self.h.guests, lambda: self.rng.randrange(GUEST_SLOTS), 0.05)

    def vsid(self) -> int:
        return self._pick(self.h.vsids, lambda: self.rng.randrange(256), 0.15)

    def ste(self) -> int:
        r = self.rng
        config = r.choices([Config.S1_TRANS, Config.ABORT, Config.BYPASS, Config.S2_TRANS,
                            Config.NESTED, r.choice((1, 2, 3))], [6, 1, 1, 1, 1, 1])[0]
        word = self._fields(STE, V=int(r.random() < 0.95), CONFIG=int(config))
        if config in (Config.S1_TRANS, Config.NESTED) or r.random() < 0.2:
            word = self._fields(
                STE, word, S1CONTEXTPTR=self.pointer(), S1CIR=1, S1COR=1, S1CSH=3,
                S1CDMAX=0 if r.random() < 0.7 else r.randrange(21),
                S1FMT=0 if r.random() < 0.8 else r.randrange(4),
                S1DSS=r.randrange(4) if r.random() < 0.3 else 0)
        if r.random() < 0.3:
            word = self._fields(STE, word, EATS=r.randrange(4))
        if config in (Config.S2_TRANS, Config.NESTED) or r.random() < 0.2:
            word = self._fields(  # a guest has no business here: the vSMMU must not care
                STE, word, S2VMID=r.choice(self.h.vmids), S2TTB=self.pointer(), S2T0SZ=24,
                S2SL0=1, S2PS=r.randrange(8), S2AA64=1, S2R=r.randrange(2))
        return self._scramble(STE, word)

    def cd(self) -> int:
        r = self.rng
        asid = self._pick(self.h.asids, lambda: r.randrange(1 << 16))
        word = self._fields(
            CD, V=int(r.random() < 0.95), ASID=asid, TTB0=self.pointer(),
            T0SZ=r.choice((24, 25, 16, r.randrange(64))),
            TG0=0 if r.random() < 0.8 else r.randrange(4),
            IPS=r.choice((2, 3, 4, 5, r.randrange(8))), IR0=1, OR0=1, SH0=3, EPD1=1,
            R=int(r.random() < 0.9), A=1, AA64=int(r.random() < 0.95), MAIR=DEFAULT_MAIR)
        return self._scramble(CD, word)

    def desc(self) -> int:
        r = self.rng
        out = self._pick([*self.h.ipas, *(GUEST_RAM + p * PAGE_SIZE for p in self.h.pages)],
                         lambda: r.randrange(1 << 36) & -PAGE_SIZE, 0.2)
        word = self._fields(S1_DESC, VALID=int(r.random() < 0.9), TYPE=int(r.random() < 0.9),
                            AF=int(r.random() < 0.9), SH=3, AP=r.randrange(4), OA=out)
        return self._scramble(S1_DESC, word)

    def command(self) -> int:
        r = self.rng
        if r.random() < 0.03:
            return self._fields(CMD_ANY, OP=r.randrange(256)) | r.getrandbits(120) << 8
        op = r.choice(self.bias.opcodes or tuple(Opcode))
        layout = COMMANDS[op]
        word = op.value
        for f in layout:
            if f.name == "OP" or (f.name == "SSEC" and r.random() < 0.95):
                continue
            hinted = _hinted(f, self.h)
            if f.name == "MSIADDR":
                hinted = [_address(f, MSI_WINDOW[0]), 0, *hinted]
            elif f.name == "RANGE":
                hinted = [0, 31, 1]
            raw = r.choice(hinted) if hinted and r.random() < 0.8 else (
                r.randrange(_raw_max(f) + 1) if r.random() < 0.3 else 0)
            word = _set(word, f, raw)
        return self._scramble(layout, word, 0.1)

    def register_value(self, reg_index: int) -> int:
        r, reg = self.rng, REGISTERS[reg_index % len(REGISTERS)]
        word = 0
        for f in reg.layout:
            hinted = _hinted(f, self.h)
            if f.name == "LOG2SIZE":  # small ones mostly; the largest (19) and beyond
                hinted = [r.randrange(12), r.randrange(12), 19, _raw_max(f)]
            elif f.width == 1:
                hinted = [int(r.random() < 0.7)]
            elif f.name in ("WR", "RD"):  # near 0, or at a power of two: a wrap bit
                bit = r.randrange(20)
                hinted = [r.randrange(64), r.randrange(64), 1 << bit, (1 << bit) - 1]
            if hinted and r.random() < 0.8:
                word = _set(word, f, r.choice(hinted))
            elif r.random() < 0.3:
                word = _set(word, f, r.randrange(_raw_max(f) + 1))
        return word

    def flags(self) -> int:
        r = self.rng
        bits = ((W, 0.5), (X, 0.1), (PRIV, 0.1), (SSV, 0.15), (TRANSLATED, 0.1), (ATOMIC, 0.03))
        return sum(b for b, p in bits if r.random() < p)

    def iova(self) -> int:
        r = self.rng
        base = r.choice(self.h.iovas)
        page = base + PAGE_SIZE * r.randrange(DMA_BUF // PAGE_SIZE)
        near = [base, page, base + r.randrange(DMA_BUF)]
        if r.random() < 0.05 and (aimed := self.aim.pick(r)) is not None:
            return aimed  # someone's memory, if the SMMU let the IOVA through as a PA
        return self._pick(near, lambda: r.getrandbits(48), 0.1)

    def viommu_request(self) -> bytes:
        """A virtio-iommu request with meaningful fields (malformed later, by field)."""
        r, h = self.rng, self.h
        domain, endpoint = r.choice((1, 1, 2, r.randrange(256))), r.choice(h.vsids)
        iova = self.iova() & -PAGE_SIZE
        end = iova + PAGE_SIZE * r.choice((1, 1, 2, 4, r.randrange(1, 64))) - 1
        kind = r.choice(list(ReqType))
        if kind == ReqType.ATTACH:
            return attach_req(domain, endpoint, r.choice((0, 0, ATTACH_F_BYPASS)))
        if kind == ReqType.DETACH:
            return detach_req(domain, endpoint)
        if kind == ReqType.MAP:
            gpa = GUEST_RAM + PAGE_SIZE * self._pick(h.dma_pages or h.pages,
                                                      lambda: r.randrange(256))
            return map_req(domain, iova, end, gpa, r.choice((3, 3, 1, 2, r.randrange(8))))
        if kind == ReqType.UNMAP:
            return unmap_req(domain, iova, end)
        return probe_req(endpoint)

    def operand(self, op_name: str, operand: Operand, args: dict) -> int | bytes:
        """A fresh, meaningful value for one operand of an operation."""
        r, name = self.rng, operand.name
        if name == "ste":
            return STE.to_bytes(self.ste())
        if name == "cd":
            return CD.to_bytes(self.cd())
        if name == "cmd":
            return self.command().to_bytes(16, "little")
        if name == "req":
            return self.viommu_request().ljust(operand.width, b"\0")[: operand.width]
        if name == "data":
            word = self.desc() if r.random() < 0.5 else r.getrandbits(64)
            return word.to_bytes(8, "little")
        if name in ("guest", "dst"):
            value = self.guest()
            if name == "dst" and len(self.h.guests) > 1 and value == args.get("guest"):
                value = r.choice([g for g in self.h.guests if g != value])
        elif name == "smmu":
            value = r.randrange(max(self.h.smmus, 1))
        elif name == "device":
            value = r.randrange(max(self.h.devices, 1))
        elif name == "reg":  # mostly the ones a write changes; sometimes a read-only one
            value = r.choice(WRITABLE) if r.random() < 0.9 else r.randrange(len(REGISTERS))
        elif name == "value":
            value = self.register_value(args.get("reg", 0))
        elif name == "vsid":
            value = self.vsid()
        elif name == "ssid":
            value = r.choice((0, 0, 0, 1, r.randrange(256)))
        elif name == "iova":
            value = self.iova()
        elif name == "desc":
            value = self.desc()
        elif name == "flags":
            value = self.flags()
        elif name == "offset":
            value = self.ipa() - GUEST_RAM + 8 * r.randrange(8)
        elif name == "page":  # pages devices DMA to are the ones a stale TLB entry reaches
            pages = self.h.dma_pages if self.h.dma_pages and r.random() < 0.5 else self.h.pages
            value = self._pick(pages, lambda: r.randrange(256))
        elif name == "count" and op_name == "cmd_burst":
            value = r.choices((r.randrange(4), r.randrange(300), r.randrange(1 << 12)),
                              (60, 35, 5))[0]  # past the vSMMU's per-trap budget, rarely huge
        elif name == "count" and op_name == "burst":  # mostly past a 256-entry queue
            value = r.choices((r.randrange(8), 255 + r.randrange(64), r.randrange(1024)),
                              (30, 60, 10))[0]
        elif name == "count":  # step: time is cheap to ask for and dear to run
            value = r.choice((0, 0, 1, 2, r.randrange(16)))
        elif name == "domain":  # virtio-iommu: the few a guest uses, sometimes any
            value = r.choice((1, 1, 2, 3, 0, r.randrange(256)))
        elif name == "pages":
            value = r.choice((0, 0, 1, 3, r.randrange(256)))
        elif name == "len":  # the whole request, mostly
            req = args.get("req", b"")
            whole = size_of(REQUESTS.get(req[0], REQUESTS[ReqType.MAP])) if req else 72
            value = r.choice((whole, whole, whole - 1, r.randrange(73)))
        elif name == "in_len":  # the tail; PROBE's properties and tail; anything
            value = r.choice((4, 4, 516, r.randrange(600)))
        elif name == "features":  # keep the driver's, or renegotiate some
            value = r.choice((0, 0, 0x80 | r.randrange(128)))
        else:
            value = r.randrange(min(operand.limit or 256, 256))
        return _fit(operand, value)

    def op(self, name: str | None = None, before: Sequence[Op] = ()) -> Op:
        """A new operation (`name`, or one drawn by the bias) to insert after the
        operations `before`."""
        if name is None:
            names = list(self.bias.ops)
            name = self.rng.choices(names, [self.bias.ops[n] for n in names])[0]
        code = OP_BY_NAME[name]
        args: dict[str, int | bytes] = {}
        for operand in OPS[code].operands:
            args[operand.name] = self.operand(name, operand, args)
        if self.rng.random() < AIMED.get(name, 0):
            args = self.aimed(name, args, before)
        return Op(code, tuple(args.values()))

    def relocation(self) -> list[Op]:
        """A guest's vSMMU structure moved to an address aimed at a crossing not yet
        reached (`Aim`): disable it, write its base, enable everything again."""
        r, cr0 = self.rng, REGISTERS[_REG_INDEX["CR0"]].layout
        base = r.choice(sorted(RELOCATABLE))
        on = cr0.encode(SMMUEN=1, EVENTQEN=1, CMDQEN=1)
        layout = REGISTERS[_REG_INDEX[base]].layout
        addr = self.aim.pick(r)
        value = layout.encode(ADDR=self.ipa() if addr is None else addr,
                              **({} if base == "STRTAB_BASE" else {"LOG2SIZE": 4}))
        guest, smmu, write = self.guest(), r.randrange(max(self.h.smmus, 1)), OP_BY_NAME[
            "mmio_write"]
        return [Op(write, (guest, smmu, _REG_INDEX[reg], v)) for reg, v in (
            ("CR0", cr0.put(on, RELOCATABLE[base], 0)), (base, value), ("CR0", on))]

    def aimed(self, name: str, args: dict, before: Sequence[Op]) -> dict:
        """`args` of an operation that takes a resource (a page DMA reached, a
        mapping), re-aimed at one the operations `before` made or used."""
        args = dict(args)
        if name in ("s2_unmap", "reassign"):
            args.update(self._dma_target(before))
            others = [g for g in self.h.guests if g != args["guest"]]
            if name == "reassign" and args["dst"] == args["guest"] and others:
                args["dst"] = self.rng.choice(others)
        elif name in ("destroy", "deassign"):  # tear down what a device just cached
            args.update(self._dma_owner(before, name == "destroy"))
        elif name == "viommu_unmap":
            args.update(self._mapped_range(before))
        elif name == "viommu_map":
            args.update(self._next_to_mapping(before))
        return args

    def _mappings(self, before: Sequence[Op]) -> tuple[list[tuple[int, int, int, int]],
                                                       tuple[int, int, int, int] | None]:
        """The mappings the boot made and the program's MAPs before this point, as
        (guest slot, domain, first IOVA, last IOVA), and one of them to aim at: the
        program's own half the time (they are what it is exploring)."""
        made = [(op.guest, op.domain, op.iova, op.iova + (op.pages + 1) * PAGE_SIZE - 1)
                for op in before if op.spec.name == "viommu_map"]
        every = [*self.h.mappings, *made]
        if not every:
            return [], None
        return every, self.rng.choice(made if made and self.rng.random() < 0.5 else every)

    def _mapped_range(self, before: Sequence[Op]) -> dict[str, int]:
        """Mappings are resources: an UNMAP from the edge of one mapping to the edge
        of another in its domain (or itself), or a page either side, so that it
        removes one or several whole, reaches past them, or would split one (RANGE:
        nothing may change)."""
        r, (maps, aim) = self.rng, self._mappings(before)
        if aim is None:
            return {}
        guest, domain, first, last = aim
        other = r.choice([m for m in maps if m[:2] == (guest, domain)])
        start = min(first, other[2]) + r.choice((0, 0, -PAGE_SIZE, PAGE_SIZE))
        end = max(last, other[3]) + r.choice((0, 0, -PAGE_SIZE, PAGE_SIZE))
        return {"guest": guest, "domain": domain, "iova": start & U64_MAX,
                "pages": (max(end + 1 - start, PAGE_SIZE) // PAGE_SIZE - 1) & 0xFFFF}

    def _next_to_mapping(self, before: Sequence[Op]) -> dict[str, int]:
        """A MAP right before or right after a mapping, in its domain: neighbours
        are what UNMAP's split rule is about."""
        r, (_, aim) = self.rng, self._mappings(before)
        if aim is None:
            return {}
        guest, domain, first, last = aim
        pages = r.choice((0, 0, 1, 3))
        iova = last + 1 if r.random() < 0.5 else first - (pages + 1) * PAGE_SIZE
        return {"guest": guest, "domain": domain, "iova": iova & U64_MAX, "pages": pages}

    def _dma_target(self, before: Sequence[Op]) -> dict[str, int]:
        """Pages are resources: the guest and RAM page an earlier DMA reached through
        its device's boot buffer, which a stale translation would still reach."""
        buffers = {device: (guest, page) for device, guest, page in self.h.buffers}
        reached = []
        for op in before:
            device = op.device % max(self.h.devices, 1) if op.spec.name == "dma" else None
            if device in buffers:
                offset = op.iova - DMA_IOVA
                if 0 <= offset < DMA_BUF:
                    guest, page = buffers[device]
                    reached.append({"guest": guest, "page": page + offset // PAGE_SIZE})
        return self.rng.choice(reached) if reached else {}


    def _dma_owner(self, before: Sequence[Op], guest: bool) -> dict[str, int]:
        """The device an earlier DMA came from (`guest`: the slot of the guest it was
        assigned to at boot), whose translations the SMMUs may still cache."""
        slots = {device: slot for device, slot, _ in self.h.buffers}
        used = [op.device % max(self.h.devices, 1) for op in before if op.spec.name == "dma"]
        if guest:
            used = [slots[d] for d in used if d in slots]
        return {("guest" if guest else "device"): self.rng.choice(used)} if used else {}


def _fit(operand: Operand, value: int) -> int:
    value &= (1 << (8 * operand.width)) - 1
    return value % operand.limit if operand.limit else value


# ------------------------------------------------------------ the mutator
def _python_byte_mutate(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """A small libFuzzer-like byte mutator (flip, set, insert, erase, copy)."""
    out = bytearray(data)
    kind = rng.randrange(5) if out else 2
    if kind == 0:
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 2:
        i = rng.randrange(len(out) + 1)
        out[i:i] = rng.randbytes(rng.randrange(1, 9))
    elif kind == 3:
        i = rng.randrange(len(out))
        del out[i : i + rng.randrange(1, 9)]
    else:
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[j:j] = out[i : i + rng.randrange(1, 17)]
    return bytes(out[:max_size])


@dataclass
class Mutator:
    hints: Hints = field(default_factory=Hints)
    bias: Bias = SYSTEM
    byte_mutate: ByteMutate | None = None  # e.g. atheris.Mutate; None: seeded, in Python
    aim: Aim | None = None  # the crossings still to reach (None: all, from the hints)

    def __post_init__(self):
        if self.aim is None:
            self.aim = Aim(self.hints.aliases)

    # -- libFuzzer entry points ------------------------------------------
    def mutate(self, data: bytes, max_size: int, seed: int) -> bytes:
        """LLVMFuzzerCustomMutator: a new input of at most `max_size` bytes."""
        rng = random.Random(seed)
        ops = decode(data)
        canonical = encode(ops)
        p_bytes = BYTE_LEVEL_GARBAGE if data and canonical != data else BYTE_LEVEL
        if rng.random() < p_bytes:
            return self._bytes(data, max_size, rng)
        gen = Generator(rng, self.hints, self.bias, self.aim)
        for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
            ops = self._mutate_program(ops, gen)
        return _fitted(ops, max_size, rng)

    def crossover(self, data1: bytes, data2: bytes, max_out_size: int, seed: int) -> bytes:
        """LLVMFuzzerCustomCrossOver: a splice.  A non-empty prefix of the first
        program (the state it builds), a `step` so its queues settle, then a
        non-empty suffix of the second; on average no longer than its parents,
        so programs do not double with each generation."""
        rng = random.Random(seed)
        first, second = decode(data1), decode(data2)
        if not first or not second:
            return _fitted(first or second, max_out_size, rng)
        head = first[: rng.randint(1, len(first))]
        tail = second[rng.randrange(len(second)):]
        while len(head) + len(tail) > 2 and (
                len(head) + len(tail) >= MAX_OPS
                or len(encode([*head, SEPARATOR, *tail])) > max_out_size):
            if len(head) >= len(tail):  # shorten the longer side
                head = head[:-1]
            else:
                tail = tail[:-1]
        return _fitted([*head, SEPARATOR, *tail], max_out_size, rng)

    # -- program-level mutations -----------------------------------------
    def _mutate_program(self, ops: list[Op], gen: Generator) -> list[Op]:
        r = gen.rng
        ops = list(ops)
        if not ops:
            return [gen.op()]
        kind = r.choices(("insert", "delete", "duplicate", "swap", "operand"),
                         (30, 10, 8, 7, 45))[0]
        i = r.randrange(len(ops))
        if kind == "insert":
            at = r.randrange(len(ops) + 1)
            if "mmio_write" in self.bias.ops and r.random() < RELOCATE:
                ops[at:at] = gen.relocation()
            else:
                ops.insert(at, gen.op(before=ops[:at]))
        elif kind == "delete":
            del ops[i]
        elif kind == "duplicate":
            ops.insert(r.randrange(len(ops) + 1), ops[i])
        elif kind == "swap" and len(ops) > 1:
            i = min(i, len(ops) - 2)
            ops[i], ops[i + 1] = ops[i + 1], ops[i]
        else:
            ops[i] = self.mutate_operand(ops[i], gen, before=ops[:i])
        return ops

    def mutate_operand(self, op: Op, gen: Generator, before: Sequence[Op] = ()) -> Op:
        """One operand of `op` changed: a layout word by one field, a number to a
        boundary, a hinted value, a nearby value or a fresh meaningful one; or the
        resource `op` takes re-aimed at one the operations `before` made or used."""
        r = gen.rng
        if r.random() < AIMED.get(op.spec.name, 0) / 2:
            return Op(op.code, tuple(gen.aimed(op.spec.name, _args(op), before).values()))
        operands = op.spec.operands
        index = r.randrange(len(operands))
        operand, value = operands[index], op.args[index]
        layout = word_layout(op, operand, value)
        if operand.raw:
            word = int.from_bytes(value, "little")
            if layout is not None and r.random() < 0.85:
                word, _ = mutate_field(layout, word, r, self.hints)
                new: int | bytes = word.to_bytes(operand.width, "little")
            else:
                new = gen.operand(op.spec.name, operand, _args(op))
        elif layout is not None and r.random() < 0.7:
            word, _ = mutate_field(layout, value, r, self.hints)
            new = _fit(operand, word)
        else:
            new = _mutate_number(operand, value, gen, _args(op), op.spec.name)
        args = list(op.args)
        args[index] = new
        return Op(op.code, tuple(args))

    def _bytes(self, data: bytes, max_size: int, rng: random.Random) -> bytes:
        """A byte-level mutation, canonicalized: the same program (decoding is
        total), without the ignored bytes that would hide it from the structure
        mutations next time."""
        if self.byte_mutate is not None:
            out = self.byte_mutate(data, max_size)
        else:
            out = _python_byte_mutate(data, max_size, rng)
        return _fitted(decode(out), max_size, rng)


def _args(op: Op) -> dict:
    return {o.name: v for o, v in zip(op.spec.operands, op.args, strict=True)}


def _mutate_number(operand: Operand, value: int, gen: Generator, args: dict,
                   op_name: str) -> int:
    r = gen.rng
    top = (operand.limit or 1 << (8 * operand.width)) - 1
    for _ in range(4):
        kind = r.random()
        if kind < 0.4:
            new = gen.operand(op_name, operand, args)
        elif kind < 0.6:
            new = r.choice((0, 1, top, top - 1))
        elif kind < 0.8:
            new = value + r.choice((-1, 1)) * r.randrange(1, 17)
        else:
            new = value ^ (1 << r.randrange(8 * operand.width))
        new = _fit(operand, new)
        if new != value:
            return new
    return value


def _fitted(ops: list[Op], max_size: int, rng: random.Random) -> bytes:
    """Canonical bytes of at most MAX_OPS operations and `max_size` bytes: random
    operations are dropped until it fits."""
    ops = list(ops[:MAX_OPS])
    size = len(encode(ops))
    while ops and size > max_size:
        victim = ops.pop(rng.randrange(len(ops)))
        size -= 2 + victim.spec.size
    return encode(ops)


# Module-level entry points (the system target's bias, default hints), for
# `atheris.Setup(..., custom_mutator=custom_mutator, custom_crossover=custom_crossover)`.
_DEFAULT = Mutator()


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    return _DEFAULT.mutate(data, max_size, seed)


def custom_crossover(data1: bytes, data2: bytes, max_out_size: int, seed: int) -> bytes:
    return _DEFAULT.crossover(data1, data2, max_out_size, seed)
