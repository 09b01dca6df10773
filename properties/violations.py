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
BOUNDED_TRAP_WORK = "bounded-trap-work"  # availability
NO_SILENT_EVENT_LOSS = "no-silent-event-loss"  # availability
CMDQ_ISOLATION = "cmdq-isolation"  # availability
BOUNDED_HOST_MEMORY = "bounded-host-memory"  # availability
# The physical SMMU against the architecture (the `smmu` target; properties/architecture.py).
FAULT_REPORTING = "fault-reporting"
STREAM_BOUNDS = "stream-bounds"
QUEUE_PROTOCOL = "queue-protocol"

INVARIANTS = (
    NO_CROSS_GUEST_DMA, S2_AUTHORITY, S2_CONTAINMENT, TLB_CONTAINMENT, CMD_CONFINEMENT,
    EVENT_CONFINEMENT, HYP_WRITE_CONFINEMENT, HYP_READ_CONFINEMENT, MSI_CONFINEMENT,
    UNMAP_COMPLETION, REQUEST_ATOMICITY, NO_CRASH, BOUNDED_TRAP_WORK, NO_SILENT_EVENT_LOSS,
    CMDQ_ISOLATION, BOUNDED_HOST_MEMORY,
)
ORACLES = (FAULT_REPORTING, STREAM_BOUNDS, QUEUE_PROTOCOL)

# What each name promises, in one line (reports: the rule text of a SARIF log).
STATEMENTS = {
    NO_CROSS_GUEST_DMA: "every DMA of a guest's stream touches only the guest's pages or its "
                        "MSI doorbell",
    S2_AUTHORITY: "every live physical STE of a guest stream is abort, stage-2 only or nested "
                  "with the hypervisor's stage 2 and the guest's VMID",
    S2_CONTAINMENT: "for all IPAs, a guest's stage-2 output lies in the guest's pages",
    TLB_CONTAINMENT: "no cached translation or configuration lets a guest's stream reach "
                     "memory outside the guest",
    CMD_CONFINEMENT: "a physical command issued for a guest affects only its StreamIDs and "
                     "VMID",
    EVENT_CONFINEMENT: "a guest's event queue receives only records about its streams, with "
                       "vSIDs and no host or other-guest address",
    HYP_WRITE_CONFINEMENT: "what the hypervisor or SMMU writes for a guest lands only in the "
                           "guest's memory, after stage 2",
    HYP_READ_CONFINEMENT: "what the hypervisor or SMMU reads for a guest comes only from the "
                          "guest's memory, after stage 2",
    MSI_CONFINEMENT: "MSIs from a guest's devices reach only its doorbell with its device IDs",
    UNMAP_COMPLETION: "after a virtio-iommu UNMAP completes, nothing of its range stays "
                      "reachable",
    REQUEST_ATOMICITY: "a virtio-iommu request answered with an error changed nothing",
    NO_CRASH: "malformed input never raises an unexpected exception, hangs or exhausts memory",
    BOUNDED_TRAP_WORK: "one guest trap (or continuation) makes the hypervisor do work "
                       "bounded independently of every guest-controlled size",
    NO_SILENT_EVENT_LOSS: "every event about a guest's stream reaches its event queue, "
                          "or the guest is told that events were lost",
    BOUNDED_HOST_MEMORY: "the hypervisor memory a guest's requests make it hold stays "
                         "within a per-guest limit it declares, whatever the guest does",
    CMDQ_ISOLATION: "no guest's action stops a physical command queue (a command error "
                    "there halts it for every guest and the hypervisor)",
    FAULT_REPORTING: "a recordable fault is recorded (and one CD.R=0 or STE.S2R=0 suppresses "
                     "is not)",
    STREAM_BOUNDS: "a StreamID beyond the stream table ends in C_BAD_STREAMID",
    QUEUE_PROTOCOL: "illegal commands stop the command queue, which then stays put; no queue "
                    "is overrun",
}


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
