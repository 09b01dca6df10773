"""The fuzz targets, and what each one's programs run on.

Every command that runs programs (fuzz, check, triage, the benchmarks) takes
its runner from here, so that a target means the same thing everywhere.
"""

from __future__ import annotations

from .physical import PhysicalRunner
from .runner import Runner, platform_for

TARGETS = ("system", "vste", "command", "smmu", "virtio-iommu")
ALL = "all"  # `vsmmu fuzz`'s default: every target in turn (fuzz/all_targets.py)


def runner_for(target: str, platform: str | None = None, *, monitor: bool = True,
               z3: bool = True, design: str | None = None) -> Runner | PhysicalRunner:
    """The runner of `target`'s programs.  `platform`: a platform file (raises
    PlatformError when it is bad); the smmu target's rig takes the features of its
    first SMMU (and has no vSMMU, so no design), the others run on the whole
    platform, under `design` when given (vsmmu/hyp/designs/)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    if target == "smmu":
        features = platform_for(target, platform).smmus[0].features if platform else None
        return PhysicalRunner(features)
    return Runner(platform_for(target, platform, design), monitor=monitor, z3=z3)
