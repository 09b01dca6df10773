"""Circular-queue index arithmetic shared by the command and event queues.

A PROD/CONS pointer holds an index in bits [log2size-1:0] and a wrap bit at
[log2size]; higher bits are ignored.  Equal index and wrap: empty.  Equal
index, different wrap: full.  The guest-facing vSMMU queues use the same
class, so the arithmetic is written once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueGeometry:
    base: int  # byte address of entry 0, aligned to the queue size
    log2size: int
    entry_size: int  # bytes: 16 for commands, 32 for events

    @classmethod
    def from_base_reg(cls, addr: int, log2size: int, max_log2: int, entry_size: int):
        """Decode *_BASE: LOG2SIZE is clamped to the implemented maximum, and
        address bits below the queue size are ignored (treated as zero)."""
        log2 = min(log2size, max_log2)
        size = max(entry_size << log2, 32)
        return cls(addr & ~(size - 1), log2, entry_size)

    @property
    def entries(self) -> int:
        return 1 << self.log2size

    @property
    def ptr_mask(self) -> int:
        """Index plus wrap bit."""
        return (2 << self.log2size) - 1

    def index(self, ptr: int) -> int:
        return ptr & (self.entries - 1)

    def wrap(self, ptr: int) -> int:
        return (ptr >> self.log2size) & 1

    def addr(self, ptr: int) -> int:
        return self.base + self.index(ptr) * self.entry_size

    def empty(self, prod: int, cons: int) -> bool:
        return (prod & self.ptr_mask) == (cons & self.ptr_mask)

    def full(self, prod: int, cons: int) -> bool:
        return self.index(prod) == self.index(cons) and self.wrap(prod) != self.wrap(cons)

    def inc(self, ptr: int) -> int:
        return (ptr + 1) & self.ptr_mask

    def used(self, prod: int, cons: int) -> int:
        """Entries between CONS and PROD (modulo the doubled index space)."""
        return ((prod & self.ptr_mask) - (cons & self.ptr_mask)) & self.ptr_mask
