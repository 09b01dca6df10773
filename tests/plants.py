"""Bugs planted at run time, for tests that check a campaign finds them.

Never part of the model: a harness enters one only when VSMMU_FUZZ_PLANT names
it (fuzz/harness.py), and a campaign only when its `plant` option does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from vsmmu.hypervisor import Hypervisor


@contextmanager
def forgotten_tlbi() -> Iterator[None]:
    """The hypervisor forgets the TLB invalidation when it reassigns a page to
    another guest: a cached translation keeps reaching the page's new owner."""
    reassign = Hypervisor.reassign_page

    def reassign_without_tlbi(self, *args, **kwargs):
        with mock.patch.object(Hypervisor, "_invalidate_s2", lambda *a, **k: None):
            return reassign(self, *args, **kwargs)

    with mock.patch.object(Hypervisor, "reassign_page", reassign_without_tlbi):
        yield
