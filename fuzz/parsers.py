"""Fuzz targets for the tool's own parsers of untrusted files.

Users hand each other crash files, program texts, platform files and sidecars;
each parser must answer any bytes with a value or its own one-line error, never
another exception, and what it accepts must round-trip.  Each target is a
libFuzzer TestOneInput (fuzz/harnesses/parse_*_fuzzer.py) that raises on a
broken contract; the test suite runs each for a bounded number of inputs.
"""

from __future__ import annotations

from collections.abc import Callable

from vsmmu.hyp.capacity import check_bootable
from vsmmu.platform import PlatformError, dump_platform, platform_from_bytes, platform_from_dict

from .program import MAX_BYTES, ProgramError, decode, encode, parse, read_program, to_text
from .results import Finding


def program_file(data: bytes) -> None:
    """`vsmmu check FILE`'s reading of a file: ops or a one-line ProgramError."""
    try:
        ops = read_program(data[: 64 * MAX_BYTES + 1])
    except ProgramError as e:
        assert "\n" not in str(e), "a program error spans lines"
        return
    canonical = encode(ops)
    assert decode(canonical) == ops and encode(parse(to_text(ops))) == canonical


def program_bytes(data: bytes) -> None:
    """Decoding is total, and a decoded program round-trips through bytes and text."""
    ops = decode(data)
    canonical = encode(ops)
    assert decode(canonical) == ops and encode(parse(to_text(ops))) == canonical


def _platform(fmt: str) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        """A platform file: a Platform or a one-line PlatformError; what loads dumps
        and loads back the same, and is bootable or says why in one line."""
        try:
            platform = platform_from_bytes(data, fmt)
        except PlatformError as e:
            assert "\n" not in str(e), "a platform error spans lines"
            return
        assert platform_from_dict(dump_platform(platform)) == platform
        try:
            check_bootable(platform)
        except PlatformError as e:
            assert "\n" not in str(e), "a capacity error spans lines"

    return target


def sidecar(data: bytes) -> None:
    """An artifact's sidecar: a well-typed Finding, or None (classified again)."""
    finding = Finding.from_sidecar(data, "crash-x")
    if finding is not None:
        assert isinstance(finding.signature, str) and isinstance(finding.witness, dict)
        hash(finding.signature)  # findings are deduplicated by signature


TARGETS: dict[str, Callable[[bytes], None]] = {
    "program_file": program_file,
    "program_bytes": program_bytes,
    "platform_json": _platform("JSON"),
    "platform_toml": _platform("TOML"),
    "sidecar": sidecar,
}
