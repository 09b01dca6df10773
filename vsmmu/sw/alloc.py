"""Memory for tables and queues: a bump allocator and the memory port.

The driver and the page-table builder never touch `PhysMem` (or a guest's
memory) directly: they see a *memory port* with `read(addr, size)` and
`write(addr, data)` and take addresses from an `Allocator`.  The allocator
only hands out addresses; whoever uses a block zeroes it through the port,
because for a guest the port is guest-IPA memory the allocator cannot see.
"""

from __future__ import annotations

from typing import Protocol


class MemPort(Protocol):
    """Byte-addressed memory: `PhysMem`, or a guest's IPA space."""

    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


def read_u64(mem: MemPort, addr: int) -> int:
    return int.from_bytes(mem.read(addr, 8), "little")


def write_u64(mem: MemPort, addr: int, value: int) -> None:
    mem.write(addr, value.to_bytes(8, "little"))


def zero(mem: MemPort, addr: int, size: int) -> None:
    mem.write(addr, bytes(size))


class OutOfMemory(Exception):
    """The allocator's region cannot satisfy a request."""


class Quota:
    """A share of an allocator: blocks come from `parent` and are counted here, and
    past `limit` bytes a request is refused, so one user of a shared allocator
    cannot exhaust it for the others."""

    def __init__(self, parent: Allocator, limit: int):
        self.parent, self.limit, self.used = parent, limit, 0

    def alloc(self, size: int, align: int = 8) -> int:
        if self.used + size > self.limit:
            raise OutOfMemory(f"quota of {self.limit:#x} bytes: {self.used:#x} used, "
                              f"{size:#x} more asked for")
        addr = self.parent.alloc(size, align)
        self.used += size
        return addr


class Allocator:
    """Hands out aligned blocks of [base, base+size) in increasing order; never frees."""

    def __init__(self, base: int, size: int):
        if base < 0 or size <= 0:
            raise ValueError(f"bad allocator region {base:#x}+{size:#x}")
        self.base = base
        self.end = base + size
        self.next = base

    def alloc(self, size: int, align: int = 8) -> int:
        if size <= 0 or align <= 0 or align & (align - 1):
            raise ValueError(f"bad allocation: size {size:#x}, align {align:#x}")
        addr = (self.next + align - 1) & -align
        if addr + size > self.end:
            raise OutOfMemory(
                f"cannot allocate {size:#x} bytes aligned to {align:#x}: "
                f"{self.end - self.next:#x} of [{self.base:#x}, {self.end:#x}) left"
            )
        self.next = addr + size
        return addr

    @property
    def free(self) -> int:
        return self.end - self.next
