"""Invariant names (stable: they appear in crash signatures) and the violation error."""

from __future__ import annotations

from typing import Any

NO_CROSS_GUEST_DMA = "no-cross-guest-dma"
S2_AUTHORITY = "s2-authority"
S2_CONTAINMENT = "s2-containment"
TLB_CONTAINMENT = "tlb-containment"
CMD_CONFINEMENT = "cmd-confinement"
EVENT_CONFINEMENT = "event-confinement"
HYP_WRITE_CONFINEMENT = "hyp-write-confinement"
HYP_READ_CONFINEMENT = "hyp-read-confinement"
MSI_CONFINEMENT = "msi-confinement"
UNMAP_COMPLETION = "unmap-completion"  # virtio-iommu
REQUEST_ATOMICITY = "request-atomicity"  # virtio-iommu
NO_CRASH = "no-crash"
# The physical SMMU against the architecture (the `smmu` target; properties/architecture.py).
FAULT_REPORTING = "fault-reporting"
STREAM_BOUNDS = "stream-bounds"
QUEUE_PROTOCOL = "queue-protocol"

INVARIANTS = (
    NO_CROSS_GUEST_DMA, S2_AUTHORITY, S2_CONTAINMENT, TLB_CONTAINMENT, CMD_CONFINEMENT,
    EVENT_CONFINEMENT, HYP_WRITE_CONFINEMENT, HYP_READ_CONFINEMENT, MSI_CONFINEMENT,
    UNMAP_COMPLETION, REQUEST_ATOMICITY, NO_CRASH,
)


class Violation(Exception):
    """An isolation invariant failed: its name, the step, and a concrete witness."""

    def __init__(self, invariant: str, witness: dict[str, Any], step: int | None = None):
        self.invariant = invariant
        self.witness = witness
        self.step = step  # the runner sets it once it knows which operation failed
        super().__init__(invariant)

    def __str__(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        detail = ", ".join(f"{k}={_show(v)}" for k, v in self.witness.items())
        return f"{self.invariant}{where}: {detail}"

    def __repr__(self) -> str:
        return f"Violation({str(self)!r})"

    def as_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "step": self.step,
                "witness": {k: _show(v) for k, v in self.witness.items()}}


def _show(v: Any) -> Any:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else v
