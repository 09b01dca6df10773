"""Hypothesis profiles: `dev` locally, Hypothesis's own `ci` when CI is set, `nightly` on demand.

Pick one explicitly with VSMMU_HYPOTHESIS_PROFILE=dev|ci|nightly.
"""

import os

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

# Parent on "default" so neither profile inherits the auto-loaded `ci` settings.
_base = settings.get_profile("default")
settings.register_profile("dev", parent=_base, max_examples=100)
settings.register_profile(
    "nightly",
    parent=_base,
    max_examples=10_000,
    database=DirectoryBasedExampleDatabase(".hypothesis/nightly"),
    deadline=None,
)

_profile = os.environ.get("VSMMU_HYPOTHESIS_PROFILE")
if _profile:
    settings.load_profile(_profile)
elif not os.environ.get("CI"):
    settings.load_profile("dev")
