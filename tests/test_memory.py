"""Tests for vsmmu.hw.memory: ownership, scrubbing, bus errors, observers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmmu.hw.memory import FREE, HYP, PAGE_SIZE, BusError, PhysMem


@pytest.fixture
def mem() -> PhysMem:
    m = PhysMem(pa_bits=48)
    m.add(0x4000_0000, 0x3000, HYP)  # 3 pages
    m.add(0x5000_0000, 0x2000, "g1")
    m.add(0x6000_0000, 0x1000)  # FREE
    return m


def test_page_size():
    assert PAGE_SIZE == 4096


def test_ownership(mem):
    assert mem.owner(0x4000_0000) == HYP
    assert mem.owner(0x4000_2FFF) == HYP
    assert mem.owner(0x4000_3000) is None
    assert mem.owner(0x5000_1ABC) == "g1"
    assert mem.owner(0x6000_0000) == FREE
    assert mem.is_backed(0x6000_0FFF)
    assert not mem.is_backed(0x6000_1000)


def test_pages_of(mem):
    assert mem.pages_of(HYP) == [0x4000_0000, 0x4000_1000, 0x4000_2000]
    assert mem.pages_of("g1") == [0x5000_0000, 0x5000_1000]
    assert mem.pages_of(FREE) == [0x6000_0000]
    assert mem.pages_of("nobody") == []
    mem.set_owner(0x4000_1000, PAGE_SIZE, "g1")
    assert mem.pages_of("g1") == [0x4000_1000, 0x5000_0000, 0x5000_1000]
    assert mem.pages_of(HYP) == [0x4000_0000, 0x4000_2000]


def test_add_rejects_unaligned_and_out_of_range():
    m = PhysMem(pa_bits=32)
    with pytest.raises(ValueError):
        m.add(0x1001, 0x1000)
    with pytest.raises(ValueError):
        m.add(0x1000, 0x800)
    with pytest.raises(ValueError):
        m.add(0x1000, 0)
    with pytest.raises(ValueError):
        m.add(0xFFFF_F000, 0x2000)  # past 2^32
    m.add(0xFFFF_F000, 0x1000)  # the last page is fine


def test_set_owner_scrubs(mem):
    mem.write(0x5000_0010, b"guest secret")
    mem.set_owner(0x5000_0000, PAGE_SIZE, "g2")
    assert mem.owner(0x5000_0000) == "g2"
    assert mem.read(0x5000_0000, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_set_owner_without_scrub_keeps_data(mem):
    mem.write(0x5000_0010, b"keep")
    mem.set_owner(0x5000_0000, PAGE_SIZE, HYP, scrub=False)
    assert mem.owner(0x5000_0000) == HYP
    assert mem.read(0x5000_0010, 4) == b"keep"


def test_set_owner_covers_partial_pages(mem):
    # An unaligned range covers every page it touches.
    mem.set_owner(0x5000_0FFF, 2, "g3")
    assert mem.pages_of("g3") == [0x5000_0000, 0x5000_1000]


def test_set_owner_unbacked_raises(mem):
    with pytest.raises(ValueError):
        mem.set_owner(0x7000_0000, PAGE_SIZE, "g1")


def test_read_write_round_trip(mem):
    mem.write(0x4000_0FFC, b"\x01\x02\x03\x04\x05\x06\x07\x08")  # spans two pages
    assert mem.read(0x4000_0FFC, 8) == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert mem.read_int(0x4000_0FFC, 8) == 0x0807060504030201  # little-endian
    mem.write_int(0x4000_2000, 0x4130000B, 4)
    assert mem.read(0x4000_2000, 4) == bytes.fromhex("0b003041")


def test_bus_error_unbacked(mem):
    with pytest.raises(BusError) as e:
        mem.read(0x7000_0000, 8)
    assert (e.value.pa, e.value.size, e.value.write) == (0x7000_0000, 8, False)
    with pytest.raises(BusError) as e:
        mem.write(0x7000_0000, b"x")
    assert e.value.write is True
    assert "write of 1 B at 0x70000000" in str(e.value)


def test_bus_error_beyond_pa_bits():
    m = PhysMem(pa_bits=32)
    m.add(0xFFFF_F000, 0x1000)
    assert m.read(0xFFFF_FFF8, 8) == bytes(8)
    with pytest.raises(BusError):
        m.read(0xFFFF_FFFC, 8)  # crosses 2^32
    with pytest.raises(BusError):
        m.read(1 << 32, 4)
    with pytest.raises(BusError):
        m.read(1 << 40, 4)
    with pytest.raises(BusError):
        m.read(-8, 4)


def test_write_spanning_into_unbacked_page_is_atomic(mem):
    # 0x4000_2000 is the last backed HYP page; 0x4000_3000 is not backed.
    mem.write(0x4000_2FF8, b"A" * 8)
    with pytest.raises(BusError):
        mem.write(0x4000_2FFC, b"B" * 8)
    assert mem.read(0x4000_2FF8, 8) == b"A" * 8  # first page untouched


def test_remove_unbacks(mem):
    mem.remove(0x5000_0000, PAGE_SIZE)
    assert mem.owner(0x5000_0000) is None
    assert mem.owner(0x5000_1000) == "g1"
    with pytest.raises(BusError):
        mem.read(0x5000_0000, 4)


def test_observers_see_every_access(mem):
    seen = []
    mem.observers.append(lambda *a: seen.append(a))
    dev = ("dev", 8)
    mem.write(0x5000_0000, b"abcd", dev)
    mem.read(0x5000_0000, 2, "smmu")
    mem.read_int(0x4000_0000, 8)
    mem.write_int(0x4000_0008, 1, 8, "hyp-writer")
    assert seen == [
        ("w", 0x5000_0000, 4, dev),
        ("r", 0x5000_0000, 2, "smmu"),
        ("r", 0x4000_0000, 8, None),
        ("w", 0x4000_0008, 8, "hyp-writer"),
    ]


def test_peek_reads_what_read_does_unseen(mem):
    seen = []
    mem.observers.append(lambda *a: seen.append(a))
    mem.write(0x5000_0ffe, b"abcd")  # across two pages
    assert mem.peek(0x5000_0ffe, 4) == b"abcd" and mem.peek(0x5000_1000, 2) == b"cd"
    with pytest.raises(BusError):
        mem.peek(0x5000_1ffe, 4)  # runs into an unbacked page
    with pytest.raises(BusError):
        mem.read(0x5000_1ffe, 4)
    assert seen == [("w", 0x5000_0ffe, 4, None)]  # neither peek nor the failed read


def test_sparse_memory_is_cheap():
    # 48-bit space, pages far apart: only backed pages cost memory.
    m = PhysMem(pa_bits=48)
    m.add(0, PAGE_SIZE, "a")
    m.add((1 << 48) - PAGE_SIZE, PAGE_SIZE, "b")
    assert m.pages_of("b") == [(1 << 48) - PAGE_SIZE]
    assert m.read((1 << 48) - 4, 4) == bytes(4)


_OWNERS = (HYP, FREE, "g1", "g2")
_ACTIONS = st.lists(st.tuples(st.sampled_from(("add", "remove", "set_owner", "checkpoint",
                                               "rollback", "write", "read")),
                              st.integers(0, 7), st.integers(1, 3), st.sampled_from(_OWNERS)),
                    max_size=30)


@given(_ACTIONS)
def test_pages_of_agrees_with_every_pages_owner_through_a_rollback(actions):
    """pages_of reads an index kept beside the page->owner map: whatever happens,
    it says what asking every page would (and one-page reads match byte reads)."""
    m = PhysMem(pa_bits=32)
    m.add(0, 2 * PAGE_SIZE, "g1")
    for action, page, pages, owner in actions:
        pa, size = page * PAGE_SIZE, pages * PAGE_SIZE
        if action == "add":
            m.add(pa, size, owner)
        elif action == "remove":
            m.remove(pa, size)
        elif action == "set_owner":
            with contextlib.suppress(ValueError):
                m.set_owner(pa, size, owner)
        elif action == "checkpoint":
            m.checkpoint()
        elif action == "rollback" and m._journal is not None:
            m.rollback()
        elif action == "write":
            with contextlib.suppress(BusError):
                m.write(pa + 4, bytes(range(page, page + 16)))
        else:
            with contextlib.suppress(BusError):
                assert m.read(pa + 8, 8) == b"".join(m.read(pa + 8 + i, 1) for i in range(8))
    for owner in _OWNERS:
        assert m.pages_of(owner) == [p * PAGE_SIZE for p in range(11)
                                     if m.owner(p * PAGE_SIZE) == owner]
