"""Option values every `vsmmu` command reads the same way.

Each type raises `argparse.ArgumentTypeError` with a sentence (argparse would
otherwise name the function: "invalid _positive_int value").  Infinite and NaN
times are refused: a campaign of `--time inf` has no end to print.
"""

from __future__ import annotations

import argparse
import math

from vsmmu.hyp.designs import DEFAULT, PROFILES

from .targets import ALL, TARGETS


def count(text: str) -> int:
    """A whole number >= 1."""
    return _integer(text, 1, "a whole number of 1 or more")


def count_or_zero(text: str) -> int:
    """A whole number >= 0."""
    return _integer(text, 0, "a whole number of 0 or more")


def seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text[:40]}")
    return value


def seconds_or_zero(text: str) -> float:
    """A finite number of seconds >= 0."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text[:40]}")
    return value


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text[:40]}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text[:40]}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text[:40]}")
    return value


def add_platform(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument("--platform", metavar="FILE", help="platform file (.toml/.json); "
                        "default: the embedded fuzzing platform" + what)


def add_design(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--design", choices=tuple(PROFILES), default=None,
                        help="the vSMMU design under test (default: the platform's, else "
                        f"{DEFAULT}; `vsmmu designs` lists them)")


def add_target(parser: argparse.ArgumentParser, what: str, default: str = "system") -> None:
    """--target; `default` ALL also offers every target in turn."""
    choices = (ALL, *TARGETS) if default == ALL else TARGETS
    parser.add_argument("--target", choices=choices, default=default,
                        help=f"the fuzz target {what} (default {default}; virtio-iommu: its "
                        "platform of virtio-iommu guests, unless --platform is given; smmu: "
                        "the physical SMMU alone)")


def add_sarif(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sarif", metavar="FILE", help="also write the findings as a SARIF "
                        "2.1.0 log (for code scanning)")


def add_junit(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--junit", metavar="FILE", help=f"also write a JUnit XML report: {what}")
