"""vSMMU designs under test: each a `Design` (the policy the mechanism runs, in
../transfer.py) with a name, a summary and a table of its choices, each
citing the public source it comes from, or saying that the source is silent and
what we chose.

`vsmmu designs` prints the tables; `--design NAME` (or `design = "NAME"` in a
platform file) runs a campaign, a check or the proofs on that design, and every
invariant is stated in the same words for every design.
"""

from __future__ import annotations

from ...platform import DEFAULT_DESIGN
from . import pkvm, reference, xen_v3
from .profile import Choice, Profile

__all__ = ["DEFAULT", "PROFILES", "Choice", "Profile", "profile"]

PROFILES: dict[str, Profile] = {
    p.name: p for p in (reference.PROFILE, xen_v3.PROFILE, pkvm.PROFILE)}
DEFAULT = DEFAULT_DESIGN  # the platform's default: ours


def profile(name: str) -> Profile:
    """The profile called `name`; ValueError (one line, naming the known ones) if none."""
    if name not in PROFILES:
        raise ValueError(f"unknown design {name!r} (known: {', '.join(PROFILES)})")
    return PROFILES[name]
