"""JUnit XML of proofs and replays, for CI dashboards that read test reports.

One <testsuite> of <testcase>s: `vsmmu prove` a case per proof and subject,
`vsmmu check` a case per program.  A violated proof, a proof Z3 could not
decide (unknown is never a pass) or an invariant a program breaks is a
<failure> whose message is the one-line verdict and whose text the witness.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    classname: str
    name: str
    seconds: float
    failure: tuple[str, str, str] | None = None  # (type, message, text)


def suite(name: str, cases: list[Case]) -> str:
    failures = sum(c.failure is not None for c in cases)
    root = ET.Element("testsuites", tests=str(len(cases)), failures=str(failures))
    s = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)),
                      failures=str(failures), errors="0", skipped="0",
                      time=f"{sum(c.seconds for c in cases):.3f}")
    for c in cases:
        case = ET.SubElement(s, "testcase", classname=c.classname, name=c.name,
                             time=f"{c.seconds:.3f}")
        if c.failure is not None:
            kind, message, text = c.failure
            ET.SubElement(case, "failure", type=kind, message=message).text = text
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
