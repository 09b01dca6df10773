"""SARIF 2.1.0 (OASIS, errata 01) logs of what the commands found, for code scanning.

One rule per invariant or architectural oracle (properties/violations.py), or
per proof; one result per deduplicated finding, its message the signature and
the witness, its location the program file (the line of the operation that
broke the invariant when the file is program text) and, for a crash, the
model's function where it happened.  `partialFingerprints` carries a hash of
the signature, so that code scanning recognises a finding across runs; on a
design other than ours the hash is of "design/signature" (the same program
breaking two designs is two findings), and the result's properties name it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from properties.violations import INVARIANTS, NO_CRASH, ORACLES, STATEMENTS
from vsmmu.platform import DEFAULT_DESIGN

from .program import MAX_BYTES, op_lines

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT = "vsmmuSignature/v1"


def invariant_rules() -> list[dict[str, Any]]:
    return [{"id": name, "shortDescription": {"text": STATEMENTS[name]},
             "defaultConfiguration": {"level": "error"}} for name in (*INVARIANTS, *ORACLES)]


def location(uri: str, line: int | None = None, frame: str | None = None) -> dict[str, Any]:
    """Where a finding is: a file (and a line in it), and the function it was in."""
    physical: dict[str, Any] = {"artifactLocation": {"uri": Path(uri).as_posix()}}
    if line is not None:
        physical["region"] = {"startLine": line}
    loc: dict[str, Any] = {"physicalLocation": physical}
    if frame:
        loc["logicalLocations"] = [{"fullyQualifiedName": frame, "kind": "function"}]
    return loc


def result(rule_id: str, rules: Sequence[dict[str, Any]], message: str,
           locations: Iterable[dict[str, Any]], signature: str,
           level: str = "error", design: str = DEFAULT_DESIGN) -> dict[str, Any]:
    index = next(i for i, r in enumerate(rules) if r["id"] == rule_id)
    out: dict[str, Any] = {"ruleId": rule_id, "ruleIndex": index, "level": level,
                           "message": {"text": message}, "locations": list(locations)}
    if design != DEFAULT_DESIGN:
        signature = f"{design}/{signature}"
        out["properties"] = {"design": design}
    out["partialFingerprints"] = {
        FINGERPRINT: hashlib.sha256(signature.encode()).hexdigest()[:32]}
    return out


def log(rules: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], *,
        version: str) -> dict[str, Any]:
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "vsmmu", "version": version, "rules": list(rules)}},
        "results": list(results)}]}


def witness_text(signature: str, step: int | None, witness: dict[str, Any]) -> str:
    where = "" if step is None else f" at step {step}"
    detail = ", ".join(f"{k}={v}" for k, v in witness.items())
    return f"{signature}{where}" + (f": {detail}" if detail else "")


def finding(rules: Sequence[dict[str, Any]], invariant: str, signature: str,
            step: int | None, witness: dict[str, Any], files: Iterable[str],
            design: str = DEFAULT_DESIGN) -> dict[str, Any]:
    """A result for one finding, located in each file that shows it (the line of the
    failing operation in program text) and, for a crash, at the model's function
    that raised (the innermost frame its signature names)."""
    parts = signature.split(":")
    frame = parts[2].split(">")[0] if (parts[0] == NO_CRASH and len(parts) == 3
                                        and parts[2] != "?") else None
    locations = []
    for file in files:
        try:
            lines = op_lines(Path(file).read_bytes()[: 64 * MAX_BYTES])
        except OSError:
            lines = None
        line = lines[step] if lines is not None and step is not None and step < len(lines) \
            else None
        locations.append(location(file, line, frame))
    return result(invariant if any(r["id"] == invariant for r in rules) else NO_CRASH, rules,
                  witness_text(signature, step, witness), locations, signature, design=design)
