"""What a campaign reports: its findings, the coverage it reached, the summary.

`CampaignResult` is the promise to scripts: `as_dict()` is the `--json` shape of
`vsmmu fuzz` (keys are added, never renamed or removed), `format_result` the text.
The coverage groups are event IDs, command opcodes (physical and guest), STE
configs, fault classes and command errors, against layouts.Event / Op / Config.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vsmmu.arch.faults import RECORD_CONTROLLED, WALK_EVENTS
from vsmmu.arch.layouts import CmdError, Config, Event, FaultClass
from vsmmu.arch.layouts import Op as Opcode
from vsmmu.arch.virtio_layouts import REQ_TYPE_NAMES, Status
from vsmmu.platform import DEFAULT_DESIGN

from . import crossings, exits
from .crossings import PREFIX as CROSSINGS
from .targets import ALL

MAX_SIDECAR_BYTES = 1 << 20  # ours are a few hundred bytes
SLOW_SECONDS = 10  # an input slower than this is reported (libFuzzer -report_slow_units)

@dataclass
class Finding:
    invariant: str
    signature: str
    artifact: str
    step: int | None = None
    witness: dict[str, Any] = field(default_factory=dict)
    target: str = "system"
    new: bool = True  # found by this campaign (False: reported from an earlier one's sidecar)
    duplicates: int = 0  # more artifacts with the same signature
    found_after: float | None = None  # seconds into the campaign (new findings)
    design: str = DEFAULT_DESIGN  # the vSMMU design it was found on (vsmmu/hyp/designs/)

    def sidecar(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "signature": self.signature, "step": self.step,
                "witness": self.witness, "target": self.target, "design": self.design}

    @classmethod
    def from_sidecar(cls, data: bytes, artifact: str) -> Finding | None:
        """An earlier campaign's finding from its sidecar (untrusted: someone else's
        file); None when it is not one this tool wrote, and the artifact is then
        classified again."""
        if len(data) > MAX_SIDECAR_BYTES:
            return None
        try:
            d = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
            return None
        if not isinstance(d, dict):
            return None
        invariant, signature = d.get("invariant"), d.get("signature")
        step, witness, target = d.get("step"), d.get("witness") or {}, d.get("target", "?")
        design = d.get("design", DEFAULT_DESIGN)  # sidecars written before designs: ours
        if not (isinstance(invariant, str) and isinstance(signature, str)
                and isinstance(target, str) and isinstance(witness, dict)
                and isinstance(design, str) and (step is None or type(step) is int)):
            return None
        return cls(invariant, signature, artifact, step, witness, target, new=False,
                   design=design)

    def as_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "signature": self.signature,
                "artifact": self.artifact, "step": self.step, "new": self.new,
                "duplicates": self.duplicates,
                "found_after": None if self.found_after is None else round(self.found_after, 1),
                "design": self.design}


# What the model never produces, by design (README, "SMMUv3 model coverage"): left
# out of the totals, so that "all" means all a campaign can reach.
NOT_MODELLED = {Event.E_PAGE_REQUEST.name: "no PRI queue, IDR0.PRI=0"}


def _group_universes() -> dict[str, tuple[str, list[str]]]:
    events = [e.name for e in Event if e.name not in NOT_MODELLED]
    ops = [op.name for op in Opcode]
    # Stage-1 faults are about the input (CLASS=IN) but for an external abort on a
    # stage-1 table fetch (TT); stage-2 faults of a nested walk are classed by the
    # access stage 2 translated: the CD fetch, a stage-1 table fetch, or the input.
    faults = [f"{e.name} S1 CLASS=IN" for e in sorted(RECORD_CONTROLLED)]
    faults += [f"{Event.F_WALK_EABT.name} S1 CLASS=TT"]
    faults += [f"{e.name} S2 CLASS={c.name}" for e in sorted(WALK_EVENTS) for c in FaultClass]
    cerrors = [e.name for e in CmdError if e]
    return {
        "events (physical)": ("smmu.event:", events),
        "events (guest)": ("vsmmu.event:", events),
        "commands (physical)": ("smmu.cmd:", ops),
        "commands (guest)": ("vsmmu.cmd:", ops),
        "STE configs": ("smmu.ste:", [c.name for c in Config]),
        "fault classes (physical)": ("smmu.fault:", faults),
        "fault classes (guest)": ("vsmmu.fault:", faults),
        "command errors (physical)": ("smmu.cerror:", cerrors),
        "command errors (guest)": ("vsmmu.cerror:", cerrors),
        "virtio-iommu requests": ("viommu.request:", [*REQ_TYPE_NAMES.values(), "UNKNOWN"]),
        "virtio-iommu status": ("viommu.status:", [s.name for s in Status] + ["UNWRITTEN"]),
        # fuzz/crossings.py: whose memory a guest's address, taken as a PA, would reach
        "boundary crossings": (CROSSINGS, crossings.universe()),
    }


GROUPS = _group_universes()


def groups_of(target: str) -> list[str]:
    """The groups a target can reach: the physical SMMU's always; the guests'
    vSMMUs' on the system targets; the virtio-iommu devices' on virtio-iommu; all
    of them on all targets."""
    guest = {"smmu": (), "virtio-iommu": ("viommu.", CROSSINGS),
             ALL: ("vsmmu.", "viommu.", CROSSINGS)}.get(target, ("vsmmu.", CROSSINGS))
    return [g for g, (prefix, _) in GROUPS.items() if prefix.startswith(("smmu.", *guest))]


def coverage_table(reached: Iterable[str]) -> dict[str, list[str]]:
    """The reached names of each group, in the group's order."""
    reached = set(reached)
    return {group: [name for name in names if prefix + name in reached]
            for group, (prefix, names) in GROUPS.items()}


@dataclass
class CampaignResult:
    target: str
    execs: int
    seconds: float
    findings: list[Finding]
    coverage: dict[str, list[str]]
    corpus: int = 0  # inputs in the working corpus at the end
    replayed: int = 0  # corpus and seed inputs replayed for the coverage table
    cov: int = 0  # libFuzzer's cov: (the largest a worker reported)
    restarts: int = 0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)
    # Artifacts libFuzzer wrote whose replay is clean: not findings (no invariant failed
    # when replayed), reported so that nothing is hidden either.
    unreproduced: list[str] = field(default_factory=list)
    corpus_dir: str = ""  # where the corpus and the artifacts are (and stay)
    artifacts_dir: str = ""
    slow_inputs: list[str] = field(default_factory=list)  # libFuzzer's slow-unit-* files
    # --target all: each target's own result (its findings are in `findings` too)
    parts: list[CampaignResult] = field(default_factory=list)
    # {"t", "target", "execs" (the campaign's so far), "cov", "corpus" (the target's)}
    # once a second: what `--report` plots; not in `--json`
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def execs_per_sec(self) -> float:
        return self.execs / self.seconds if self.seconds > 0 else 0.0

    def share(self) -> dict[str, Any]:
        """This target's part of a campaign, as `targets` in `--json` lists it."""
        return {"execs": self.execs, "execs_per_sec": round(self.execs_per_sec, 1),
                "seconds": round(self.seconds, 2), "corpus": self.corpus, "cov": self.cov,
                "restarts": self.restarts, "findings": len(self.findings),
                "corpus_dir": self.corpus_dir}

    @property
    def exit_code(self) -> int:
        """130 interrupted, 2 an error (an output that cannot be written, a harness that
        cannot run), 1 findings, 0 clean."""
        if self.interrupted:
            return exits.INTERRUPTED
        if self.errors:
            return exits.USAGE
        return exits.FINDINGS if self.findings else exits.CLEAN

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "execs": self.execs,
            "execs_per_sec": round(self.execs_per_sec, 1), "seconds": round(self.seconds, 2),
            "corpus": self.corpus, "cov": self.cov, "restarts": self.restarts,
            "interrupted": self.interrupted,
            "findings": [f.as_dict() for f in self.findings],
            "coverage": self.coverage,
            "coverage_totals": {g: len(names) for g, (_, names) in GROUPS.items()},
            "coverage_replayed": self.replayed,
            "errors": self.errors,
            "unreproduced": self.unreproduced,
            "coverage_groups": groups_of(self.target),
            "corpus_dir": self.corpus_dir, "artifacts_dir": self.artifacts_dir,
            "slow_inputs": self.slow_inputs,
            "targets": {r.target: r.share() for r in self.parts or [self]},
        }


def format_result(r: CampaignResult) -> str:
    lines = [f"vsmmu fuzz {r.target}: {r.seconds:.1f} s, {r.execs:,} execs "
             f"({r.execs_per_sec:,.0f}/s), corpus {r.corpus}, cov {r.cov}"
             + (f", {r.restarts} restarts" if r.restarts else "")
             + (" (interrupted)" if r.interrupted else "")]
    for p in r.parts:
        lines.append(f"  {p.target:12} {p.seconds:6.1f} s {p.execs:9,} execs "
                     f"({p.execs_per_sec:,.0f}/s), corpus {p.corpus}, cov {p.cov}, "
                     f"findings {len(p.findings)}")
    lines += [f"  corpus in {r.corpus_dir}, artifacts in {r.artifacts_dir} (kept: a campaign "
              "resumes)",
              "  cov: libFuzzer's count of code edges covered (model, harness and checks)"
              + ("; summed over the targets' harnesses" if r.parts else "")]
    if r.findings:
        lines.append(f"findings: {len(r.findings)} unique")
        for f in r.findings:
            when = f"new after {f.found_after:.0f} s" if f.found_after is not None else (
                "new" if f.new else "known")
            more = f" (+{f.duplicates} more)" if f.duplicates else ""
            where = f"[{f.target}] " if r.parts else ""
            lines.append(f"  {where}{f.signature}  [{when}]  {f.artifact}{more}")
        target = "T" if r.parts else r.target
        lines.append(f"  next: vsmmu triage --target {target} FILE... groups, minimizes and "
                     "writes regression tests (--emit-test DIR)"
                     + ("; T: the finding's target, in brackets" if r.parts else ""))
    else:
        lines.append("findings: none")
    if r.slow_inputs:
        lines.append(f"slow inputs: {len(r.slow_inputs)} took over {SLOW_SECONDS} s each, e.g. "
                     f"{r.slow_inputs[-1]} (vsmmu check --bytes FILE shows where the time goes)")
    if r.unreproduced:
        lines.append(f"unreproduced: {len(r.unreproduced)} artifact(s) libFuzzer wrote whose "
                     f"replay is clean, e.g. {r.unreproduced[0]}")
    lines.append(f"coverage (replay of {r.replayed} corpus inputs), reached/total:")
    shown = groups_of(r.target)
    width = max(map(len, shown))
    for group in shown:
        names = GROUPS[group][1]
        got = r.coverage.get(group, [])
        missing = [n for n in names if n not in got]
        head = f"  {group:{width}}  {len(got):2}/{len(names):<2}  "
        if not missing:
            words = ["all"]
        elif len(got) < len(missing):
            words = ["reached:", *got] if got else ["none"]
        else:
            words = ["missing:", *missing]
        line = head
        for word in words:
            if len(line) + len(word) > 100 and line.strip():
                lines.append(line.rstrip())
                line = " " * len(head)
            line += word + " "
        lines.append(line.rstrip())
    lines.append("  not modelled, so not counted: " + "; ".join(
        f"{name} ({why})" for name, why in NOT_MODELLED.items()))
    return "\n".join(lines)
