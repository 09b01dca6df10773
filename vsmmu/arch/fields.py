"""Declarative bit layouts: the machinery behind every SMMUv3 structure.

A `Layout` is a named list of `Field`s over a word of `width` bits (a 512-bit
STE, a 128-bit command, a 32-bit register).  The same layout object encodes
and decodes concrete Python integers *and* builds Z3 bit-vector terms, so the
model, the mutators and the proofs all read one table (see `layouts.py` for
the tables themselves).

A field may be an *address field*: its bits hold address bits
[addr_lo + width - 1 : addr_lo].  Such a field decodes to a byte address and
encodes from one, so that no caller shifts bits by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


def is_symbolic(x: Any) -> bool:
    """True for Z3 terms; concrete values are plain ints."""
    return not isinstance(x, int)


def _z3():
    import z3  # deferred: the concrete model must not pay z3's import cost

    return z3


def extract(word: Any, hi: int, lo: int) -> Any:
    """Bits [hi:lo] of `word`, as an int or a Z3 bit-vector of hi-lo+1 bits."""
    if is_symbolic(word):
        return _z3().Extract(hi, lo, word)
    return (word >> lo) & ((1 << (hi - lo + 1)) - 1)


def deposit(word: Any, hi: int, lo: int, value: Any) -> Any:
    """`word` with bits [hi:lo] replaced by `value` (truncated to the field)."""
    width = hi - lo + 1
    if is_symbolic(word):
        z3 = _z3()
        size = word.size()
        if not is_symbolic(value):
            value = z3.BitVecVal(value & ((1 << width) - 1), width)
        elif value.size() != width:
            value = z3.Extract(width - 1, 0, z3.ZeroExt(max(0, width - value.size()), value))
        parts = []
        if hi < size - 1:
            parts.append(z3.Extract(size - 1, hi + 1, word))
        parts.append(value)
        if lo > 0:
            parts.append(z3.Extract(lo - 1, 0, word))
        return z3.Concat(*parts) if len(parts) > 1 else parts[0]
    if is_symbolic(value):
        raise TypeError("a symbolic value needs a symbolic word: use Layout.put")
    mask = ((1 << width) - 1) << lo
    return (word & ~mask) | ((value << lo) & mask)


@dataclass(frozen=True)
class Field:
    """Bits [hi:lo] of a word.  `values` names the architected encodings;
    any other value of an enumerated field is reserved."""

    name: str
    hi: int
    lo: int
    addr_lo: int | None = None
    values: Mapping[int, str] = field(default_factory=dict)
    doc: str = ""

    # Derived once per field (cached_property writes the instance's __dict__, which a
    # frozen dataclass allows): the concrete model asks for them on every access.
    @cached_property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @cached_property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lo

    @cached_property
    def max(self) -> int:
        """Largest value the field holds (an address for address fields)."""
        raw = (1 << self.width) - 1
        return raw << self.addr_lo if self.addr_lo is not None else raw

    def get(self, word: Any) -> Any:
        if type(word) is int:  # the concrete model's path, inlined: the hottest call there is
            raw = (word >> self.lo) & ((1 << (self.hi - self.lo + 1)) - 1)
            return raw if self.addr_lo is None else raw << self.addr_lo
        raw = extract(word, self.hi, self.lo)
        if self.addr_lo is None:
            return raw
        if is_symbolic(raw):
            z3 = _z3()
            return z3.Concat(raw, z3.BitVecVal(0, self.addr_lo)) if self.addr_lo else raw
        return raw << self.addr_lo

    def put(self, word: Any, value: Any) -> Any:
        if type(word) is int and type(value) is int:  # the concrete model's path, inlined
            if self.addr_lo is not None:
                value >>= self.addr_lo
            return (word & ~self.mask) | ((value << self.lo) & self.mask)
        if self.addr_lo is not None:
            value = extract(value, self.addr_lo + self.width - 1, self.addr_lo) if is_symbolic(
                value
            ) else value >> self.addr_lo
        return deposit(word, self.hi, self.lo, value)

    def fits(self, value: int) -> bool:
        """Whether `value` is representable (addresses: aligned and in range)."""
        if self.addr_lo is not None:
            return value & ((1 << self.addr_lo) - 1) == 0 and 0 <= value <= self.max
        return 0 <= value <= self.max

    def reserved_value(self, value: int) -> bool:
        return bool(self.values) and value not in self.values


class Decoded(dict):
    """A decoded word: field name -> value, also readable as attributes."""

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class LayoutError(ValueError):
    """An encode request that the layout cannot represent (a caller bug)."""


class Layout:
    """A named word of `width` bits made of named fields."""

    def __init__(self, name: str, width: int, fields: Iterable[Field], *, overlaps: bool = False):
        self.name = name
        self.width = width
        self.fields: dict[str, Field] = {}
        covered = 0
        for f in fields:
            if f.name in self.fields:
                raise LayoutError(f"{name}: field {f.name} declared twice")
            if not 0 <= f.lo <= f.hi < width:
                raise LayoutError(f"{name}.{f.name}: bits [{f.hi}:{f.lo}] outside {width} bits")
            if covered & f.mask and not overlaps:
                raise LayoutError(f"{name}.{f.name} overlaps another field")
            covered |= f.mask
            self.fields[f.name] = f
        self.defined_mask = covered
        self.reserved_mask = ((1 << width) - 1) & ~covered
        # decode's concrete path: (name, lo, ones, addr_lo) per field, read without a call
        self._plan = tuple((f.name, f.lo, (1 << f.width) - 1, f.addr_lo or 0)
                           for f in self.fields.values())

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __iter__(self):
        return iter(self.fields.values())

    def __repr__(self) -> str:
        return f"Layout({self.name}, {self.width} bits, {len(self.fields)} fields)"

    def get(self, word: Any, name: str) -> Any:
        return self.fields[name].get(word)

    def put(self, word: Any, name: str, value: Any) -> Any:
        if is_symbolic(value) and not is_symbolic(word):
            word = _z3().BitVecVal(word, self.width)
        return self.fields[name].put(word, value)

    def decode(self, word: int) -> Decoded:
        if type(word) is int:
            return Decoded([(name, ((word >> lo) & ones) << addr_lo)
                            for name, lo, ones, addr_lo in self._plan])
        return Decoded((f.name, f.get(word)) for f in self.fields.values())

    def encode(self, base: int = 0, **values: int) -> int:
        """Build a word from field values, checking each fits its field."""
        word = base
        for name, value in values.items():
            f = self.fields.get(name)
            if f is None:
                raise LayoutError(f"{self.name} has no field {name}")
            if not f.fits(value):
                raise LayoutError(f"{self.name}.{name}: {value:#x} does not fit [{f.hi}:{f.lo}]")
            word = f.put(word, value)
        return word

    def reserved_bits(self, word: int) -> int:
        """The bits of `word` set outside every architected field."""
        return word & self.reserved_mask

    def bad_values(self, word: int) -> list[str]:
        """Names of enumerated fields holding a reserved encoding."""
        return [f.name for f in self.fields.values() if f.reserved_value(f.get(word))]

    def to_bytes(self, word: int) -> bytes:
        return word.to_bytes(self.width // 8, "little")

    def from_bytes(self, data: bytes) -> int:
        if len(data) != self.width // 8:
            raise LayoutError(f"{self.name} is {self.width // 8} bytes, got {len(data)}")
        return int.from_bytes(data, "little")

    def symbolic(self, name: str):
        """A fresh Z3 bit-vector variable shaped like this layout."""
        return _z3().BitVec(name, self.width)

    def format(self, word: int) -> str:
        """Non-zero fields as `NAME=value` text, for logs and triage."""
        parts = []
        for f in self.fields.values():
            v = f.get(word)
            if v:
                label = f.values.get(v)
                parts.append(f"{f.name}={v:#x}" + (f"({label})" if label else ""))
        rsv = self.reserved_bits(word)
        if rsv:
            parts.append(f"RES0={rsv:#x}")
        return f"{self.name}[{' '.join(parts)}]"
