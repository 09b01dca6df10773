"""Fuzzing: op-program format, harnesses, mutators, campaign runner, triage, benchmarks."""

from importlib import metadata


def version() -> str:
    """The installed vsmmu's version (what --version and reports say)."""
    try:
        return metadata.version("vsmmu")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
