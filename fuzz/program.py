"""Fuzz programs: what a fuzz input means.

A program is a list of operations on the whole system: guest register
accesses on a vSMMU, typed guest-memory writes at the structures the vSMMU
and SMMU will read (a vSTE, a CD, a page-table entry, a command), command
pushes, device DMA and ATS, hypervisor actions, event service, time.

Bytes: each operation is `opcode:u8 length:u8 payload[length]`.  Decoding is
total — every byte string is a program: the opcode is taken modulo the number
of operations, a short payload reads as zeros, extra payload bytes are
ignored, and operands are reduced into meaningful ranges (resources such as
guests and devices are indexes, resolved when the operation runs).  A
decoded program re-encodes to canonical bytes, prints as text (one operation
a line, `name field=value ...`), and parses back from that text to the same
canonical bytes.

Untrusted input: at most `MAX_BYTES` are read and `MAX_OPS` operations kept;
text is parsed as data (no eval), with one-line errors naming the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

MAX_BYTES = 1 << 16
MAX_OPS = 256
GUEST_SLOTS = 4  # guests are g0..g3 by slot; a slot may be empty at run time


class ProgramError(ValueError):
    """A program text that cannot be parsed (the message names the line)."""


class Operand(NamedTuple):
    name: str
    width: int  # bytes in the encoding
    limit: int | None = None  # value taken modulo this (None: the full width)
    raw: bool = False  # shown as a hex byte string, not a number


def _u(name: str, width: int, limit: int | None = None) -> Operand:
    return Operand(name, width, limit)


def _raw(name: str, width: int) -> Operand:
    return Operand(name, width, raw=True)


GUEST = _u("guest", 1, GUEST_SLOTS)
SMMU = _u("smmu", 1)  # index into the platform's SMMUs, resolved at run time
DEVICE = _u("device", 1)  # index into the platform's devices


@dataclass(frozen=True)
class OpSpec:
    name: str
    operands: tuple[Operand, ...]
    doc: str

    @property
    def size(self) -> int:
        return sum(o.width for o in self.operands)


# The operations, in opcode order (append only: opcodes are part of saved corpora).
OPS: tuple[OpSpec, ...] = (
    OpSpec("mmio_write", (GUEST, SMMU, _u("reg", 1), _u("value", 8)),
           "guest writes a register of its vSMMU for that SMMU"),
    OpSpec("mmio_read", (GUEST, SMMU, _u("reg", 1)), "guest reads a vSMMU register"),
    OpSpec("vste", (GUEST, SMMU, _u("vsid", 1), _raw("ste", 64)),
           "guest writes a vSTE into its stream table, then CFGI_STE"),
    OpSpec("cd", (GUEST, DEVICE, _u("ssid", 1), _raw("cd", 64)),
           "guest writes the CD of one of its devices, then CFGI_CD"),
    OpSpec("pte", (GUEST, DEVICE, _u("iova", 4), _u("level", 1, 4), _u("desc", 8)),
           "guest writes the stage-1 descriptor its device's walk of iova reads at level"),
    OpSpec("cmd", (GUEST, SMMU, _raw("cmd", 16)), "guest pushes one command, rings PROD"),
    OpSpec("cmd_burst", (GUEST, SMMU, _u("count", 2, 1 << 12), _raw("cmd", 16)),
           "guest pushes count copies of a command at once"),
    OpSpec("dma", (DEVICE, _u("iova", 8), _u("size", 1), _u("flags", 1), _u("ssid", 1)),
           "a device transaction; flags: 1 write, 2 exec, 4 priv, 8 ssid valid, "
           "16 translated, 32 atomic"),
    OpSpec("ats", (DEVICE, _u("iova", 8), _u("flags", 1), _u("ssid", 1)),
           "a device's ATS translation request; flags as for dma"),
    OpSpec("mem", (GUEST, _u("offset", 4), _raw("data", 8)),
           "guest writes raw bytes into its RAM"),
    OpSpec("assign", (DEVICE, GUEST), "hypervisor assigns a device to a guest"),
    OpSpec("deassign", (DEVICE,), "hypervisor takes a device back (quarantine)"),
    OpSpec("s2_unmap", (GUEST, _u("page", 2)), "hypervisor unmaps one page of guest RAM"),
    OpSpec("s2_map", (GUEST, _u("page", 2)), "hypervisor backs one page of guest RAM"),
    OpSpec("reassign", (GUEST, _u("page", 2), _u("dst", 1, GUEST_SLOTS), _u("dst_page", 2)),
           "hypervisor balloons a page from one guest to another"),
    OpSpec("destroy", (GUEST,), "hypervisor destroys a guest"),
    OpSpec("create", (GUEST,), "hypervisor creates a guest in an empty slot"),
    OpSpec("events", (GUEST, SMMU), "guest driver drains its vSMMU event queue"),
    OpSpec("recover", (GUEST, SMMU), "guest driver acknowledges a command-queue error"),
    OpSpec("step", (_u("count", 1, 16),), "time passes: queues make progress"),
    # virtio-iommu guests (no-ops for a guest with vSMMUs)
    OpSpec("viommu_req", (GUEST, _raw("req", 72), _u("len", 1, 73), _u("in_len", 2)),
           "guest sends the first len bytes of req as a virtio-iommu request, with an "
           "in_len-byte device-writable buffer"),
    OpSpec("viommu_map", (GUEST, _u("domain", 1), _u("iova", 8), _u("pages", 1), _u("page", 2),
                          _u("flags", 1, 8)),
           "guest maps pages+1 pages at iova to its RAM page `page` (flags: 1 read, "
           "2 write, 4 MMIO)"),
    OpSpec("viommu_unmap", (GUEST, _u("domain", 1), _u("iova", 8), _u("pages", 2)),
           "guest unmaps pages+1 pages at iova"),
    OpSpec("viommu_attach", (GUEST, DEVICE, _u("domain", 1), _u("flags", 1, 4)),
           "guest attaches a device's endpoint to a domain (flags: 1 bypass domain, "
           "2 detach instead)"),
    OpSpec("viommu_config", (GUEST, _u("bypass", 1, 2), _u("features", 1)),
           "guest writes config bypass; features bit 7: renegotiate bits 0-6 first"),
    OpSpec("burst", (DEVICE, _u("iova", 8), _u("count", 2, 1024)),
           "device issues count+1 reads a page apart, faster than the event handler "
           "runs (a fault storm)"),
)
OP_BY_NAME = {spec.name: i for i, spec in enumerate(OPS)}


@dataclass(frozen=True)
class Op:
    code: int  # index into OPS
    args: tuple[int | bytes, ...]

    @property
    def spec(self) -> OpSpec:
        return OPS[self.code]

    def __getattr__(self, name: str):
        for operand, value in zip(OPS[self.code].operands, self.args, strict=True):
            if operand.name == name:
                return value
        raise AttributeError(name)

    def text(self) -> str:
        parts = [self.spec.name]
        for operand, value in zip(self.spec.operands, self.args, strict=True):
            parts.append(f"{operand.name}={value.hex() if operand.raw else hex(value)}")
        return " ".join(parts)


def _reduce(operand: Operand, value: int) -> int:
    return value % operand.limit if operand.limit else value


def _decode_op(code: int, payload: bytes) -> Op:
    spec = OPS[code]
    payload = payload.ljust(spec.size, b"\0")
    args, pos = [], 0
    for operand in spec.operands:
        chunk = payload[pos : pos + operand.width]
        pos += operand.width
        args.append(chunk if operand.raw else _reduce(operand, int.from_bytes(chunk, "little")))
    return Op(code, tuple(args))


def decode(data: bytes) -> list[Op]:
    """Every byte string is a program."""
    data = data[:MAX_BYTES]
    ops, pos = [], 0
    while pos < len(data) and len(ops) < MAX_OPS:
        code = data[pos] % len(OPS)
        length = data[pos + 1] if pos + 1 < len(data) else 0
        ops.append(_decode_op(code, data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    return ops


def encode(ops: list[Op]) -> bytes:
    """Canonical bytes: decode(encode(p)) == p."""
    out = bytearray()
    for op in ops:
        out += bytes((op.code, op.spec.size))
        for operand, value in zip(op.spec.operands, op.args, strict=True):
            out += value if operand.raw else value.to_bytes(operand.width, "little")
    return bytes(out)


def to_text(ops: list[Op]) -> str:
    return "".join(op.text() + "\n" for op in ops)


def parse(text: str) -> list[Op]:
    """The inverse of `to_text` (comments after '#' and blank lines are ignored)."""
    if len(text) > 64 * MAX_BYTES:
        raise ProgramError(f"program text over {64 * MAX_BYTES} characters")
    ops = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if len(ops) == MAX_OPS:
            raise ProgramError(f"line {lineno}: more than {MAX_OPS} operations")
        ops.append(_parse_op(lineno, line))
    return ops


def _parse_op(lineno: int, line: str) -> Op:
    name, *fields = line.split()
    if name not in OP_BY_NAME:
        raise ProgramError(f"line {lineno}: unknown operation {name[:40]!r}")
    code = OP_BY_NAME[name]
    given = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or key in given:
            raise ProgramError(f"line {lineno}: expected each operand once as name=value, "
                               f"got {field[:40]!r}")
        given[key] = value
    args = []
    for operand in OPS[code].operands:
        if operand.name not in given:
            raise ProgramError(f"line {lineno}: {name} needs {operand.name}=")
        args.append(_parse_value(lineno, operand, given.pop(operand.name)))
    if given:
        raise ProgramError(f"line {lineno}: {name} has no operand {next(iter(given))[:40]!r}")
    return Op(code, tuple(args))


def _parse_value(lineno: int, operand: Operand, text: str) -> int | bytes:
    try:
        if operand.raw:
            value = bytes.fromhex(text)
            if len(value) != operand.width:
                raise ValueError(f"{len(value)} bytes, expected {operand.width}")
            return value
        number = int(text, 0)
    except ValueError as e:
        raise ProgramError(f"line {lineno}: {operand.name}={text[:40]!r}: {e}") from None
    top = operand.limit or 1 << (8 * operand.width)
    if not 0 <= number < top:
        raise ProgramError(f"line {lineno}: {operand.name}={text[:40]} outside 0..{top - 1:#x}")
    return number


# Bytes no text file holds (NUL and the other C0 controls but tab, LF and CR; DEL).
# Fuzz inputs are full of them (every operation's length byte is small).
_CONTROL = (frozenset(range(0x20)) - {0x09, 0x0A, 0x0D}) | {0x7F}
_BOM = b"\xef\xbb\xbf"
_RAW_HINT = "for the bytes of a fuzz input, pass --bytes"


def load(path: str, *, raw: bool | None = None) -> list[Op]:
    """A program file.  `raw` True: the bytes of a fuzz input; False: program text;
    None: by its content.  A file with a control byte (NUL, ...) is a fuzz input's
    bytes; any other is program text, UTF-8 (a byte-order mark, CRLF line ends and
    any character in a comment are fine).  Text that is not UTF-8 or does not parse
    is an error naming the line, never silently taken for bytes: a fuzz input that
    happens to hold no control byte is marked raw explicitly (`--bytes`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * MAX_BYTES + 1)
    except OSError as e:
        raise ProgramError(f"{path}: {e.strerror or e}") from None
    return read_program(data, raw=raw, where=path)


def op_lines(data: bytes) -> list[int] | None:
    """The line number of each operation of program text (reports point at the
    operation that failed); None for a fuzz input's bytes."""
    if not data or not _CONTROL.isdisjoint(data):
        return None
    text = data.removeprefix(_BOM).decode("utf-8", errors="replace")
    return [n for n, line in enumerate(text.splitlines(), 1) if line.split("#", 1)[0].strip()]


def read_program(data: bytes, *, raw: bool | None = None, where: str = "program") -> list[Op]:
    """The program in a file's bytes, as `load` reads it (`where` names the file in
    errors)."""
    path = where
    if raw is None:
        raw = not data or not _CONTROL.isdisjoint(data)
    if raw:
        return decode(data)
    try:
        text = data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ProgramError(f"{path}: line {line}: byte {data[e.start]:#04x} is not UTF-8 "
                           f"text ({_RAW_HINT})") from None
    try:
        return parse(text)
    except ProgramError as e:
        raise ProgramError(f"{path}: {e} ({_RAW_HINT})") from None
