"""Fuzz programs: total decoding, canonical bytes, text that round-trips, and the
runner's determinism and isolation between runs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.program import (
    MAX_OPS,
    OP_BY_NAME,
    OPS,
    ProgramError,
    decode,
    encode,
    load,
    parse,
    to_text,
)
from fuzz.runner import DMA_IOVA, Runner


@given(st.binary(max_size=2048))
def test_every_byte_string_is_a_program_and_round_trips(data):
    ops = decode(data)
    canonical = encode(ops)
    assert decode(canonical) == ops
    assert encode(parse(to_text(ops))) == canonical


def test_decoding_is_bounded():
    assert len(decode(b"\x13\x00" * 10_000)) == MAX_OPS  # `step` ops: 2 bytes each


def test_hand_written_bytes():
    # dma (opcode 7): device 0, iova 0x10000010, size 3 (4 bytes), flags 1 (write), ssid 0
    data = bytes([7, 12, 0]) + (0x1000_0010).to_bytes(8, "little") + bytes([3, 1, 0])
    [op] = decode(data)
    assert op.text() == "dma device=0x0 iova=0x10000010 size=0x3 flags=0x1 ssid=0x0"
    assert encode([op]) == data
    # a truncated payload reads as zeros; the opcode is taken modulo the op count
    [op] = decode(bytes([len(OPS) + 7, 12, 1]))
    assert (op.spec.name, op.device, op.iova) == ("dma", 1, 0)


@pytest.mark.parametrize("text,message", [
    ("frobnicate guest=0x0", "unknown operation"),
    ("step", "needs count="),
    ("step count=0x1 count=0x2", "once as name=value"),
    ("step count=0x10", "outside"),
    ("step count=zz", "count="),
    ("step count=0x1 extra=0x1", "no operand"),
    ("vste guest=0x0 smmu=0x0 vsid=0x0 ste=00", "1 bytes, expected 64"),
])
def test_parse_errors_name_the_line(text, message):
    with pytest.raises(ProgramError) as e:
        parse("# a comment\n\n" + text)
    assert str(e.value).startswith("line 3:") and message in str(e.value)


@pytest.fixture(scope="module")
def runner():
    return Runner()


def test_a_dma_program_runs_clean_and_runs_are_independent(runner):
    program = parse(f"dma device=0x0 iova={DMA_IOVA:#x} size=0x7 flags=0x1 ssid=0x0\n"
                    "s2_unmap guest=0x0 page=0x0\n"
                    f"dma device=0x0 iova={DMA_IOVA + 0x100000:#x} size=0x3 flags=0x0 ssid=0x0\n")
    first, second = runner.run(program), runner.run(program)
    assert first.ok and second.ok and first.ops == second.ops == 3
    assert first.coverage == second.coverage
    assert "smmu.event:F_TRANSLATION" in first.coverage  # the unmapped IOVA faulted


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=300))
def test_random_programs_find_nothing_on_the_correct_model(runner, data):
    result = runner.run(decode(data))
    assert result.ok, (result.violation, result.traceback)


def test_op_names_are_stable():
    # Saved corpora and crash files depend on these opcodes: append, never reorder.
    assert [OP_BY_NAME[n] for n in ("mmio_write", "vste", "dma", "step")] == [0, 2, 7, 19]


# ------------------------------------------------------------ program files
DMA_TEXT = "dma device=0x0 iova=0x10000010 size=0x3 flags=0x1 ssid=0x0"


@pytest.mark.parametrize("name, content", [
    ("em-dash in a comment", "# retry \u2014 after the unmap\n" + DMA_TEXT + "\n"),
    ("byte-order mark", "\ufeff" + DMA_TEXT + "\n"),
    ("CRLF line ends", "# reproducer\r\n" + DMA_TEXT + "\r\n"),
    ("accents in a comment", DMA_TEXT + "  # d\u00e9j\u00e0 vu\n"),
])
def test_program_text_is_recognised_whatever_its_comments_hold(tmp_path, name, content):
    path = tmp_path / "prog.txt"
    path.write_bytes(content.encode("utf-8"))
    assert [op.text() for op in load(str(path))] == [DMA_TEXT]


def test_a_file_with_control_bytes_is_a_fuzz_input(tmp_path):
    data = bytes([7, 12, 0]) + (0x1000_0010).to_bytes(8, "little") + bytes([3, 1, 0])
    path = tmp_path / "crash-1"
    path.write_bytes(data)
    assert [op.text() for op in load(str(path))] == [DMA_TEXT]


@pytest.mark.parametrize("content, message", [
    # Latin-1 'e acute' in a comment on line 2: text, but not UTF-8
    (b"# x\n# caf\xe9\n" + DMA_TEXT.encode(), "line 2: byte 0xe9 is not UTF-8 text"),
    (b"dma device=0x0 bogus=1\n", "line 1: dma needs iova="),
])
def test_text_that_is_not_a_program_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "prog.txt"
    path.write_bytes(content)
    with pytest.raises(ProgramError) as e:
        load(str(path))
    assert message in str(e.value) and "pass --bytes" in str(e.value)
    assert "\n" not in str(e.value)
    assert load(str(path), raw=True) == decode(content)  # marked raw: its bytes
