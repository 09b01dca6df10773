"""`vsmmu fuzz --report DIR` (fuzz/report.py): a real campaign's page and figures, the
minimized programs replayed, and the page rendered by a headless browser."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_fuzzing import STALE_TLB

from fuzz import exits, fuzz_command
from fuzz.campaign import CampaignOptions, run_campaign
from fuzz.harness import planted
from fuzz.program import encode, parse
from fuzz.report import write
from fuzz.runner import Runner

PLANT = "forgotten-tlbi"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("campaign")
    for d in ("corpus", "artifacts", "seeds"):
        (tmp / d).mkdir()
    (tmp / "seeds" / "seed-stale-tlb").write_bytes(encode(parse(STALE_TLB)))
    result = run_campaign(CampaignOptions(
        runs=200, seed=1, z3=False, corpus=str(tmp / "corpus"),
        artifacts=str(tmp / "artifacts"), seeds=str(tmp / "seeds"), plant=PLANT,
        coverage_budget=20))
    assert result.findings and result.timeline
    assert write(result, tmp / "report", plant=PLANT) is None
    return tmp / "report", json.loads((tmp / "report" / "report.json").read_text())


def test_the_figures_and_each_finding_with_its_minimized_program(report):
    directory, data = report
    assert data["result"]["target"] == "system" and data["result"]["findings"]
    samples = data["timeline"]
    assert samples and all({"t", "target", "execs", "cov", "corpus"} <= set(s) for s in samples)
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    [finding] = data["findings"]
    assert finding["signature"] == "tlb-containment:iotlb"
    assert finding["check"] == f"vsmmu check --target system {finding['artifact']}"
    small = parse(finding["minimized"]["ops"])
    assert finding["minimized"]["complete"] and len(small) <= len(parse(STALE_TLB))
    with planted(PLANT):  # the minimized program still shows the bug...
        assert Runner(z3=False).run(small).violation.invariant == "tlb-containment"
    assert Runner(z3=False).run(small).ok  # ...which is the plant's


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.seen: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append(tag)
        if tag != "meta":  # the one void element the page uses
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):  # <line ... />, inside SVG
        self.seen.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (self.open[-3:], tag)
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_is_self_contained_and_balanced(report):
    directory, data = report
    page = (directory / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    tags.close()
    assert tags.open == [] and tags.seen.count("svg") == 4  # execs, cov, corpus, findings
    assert not {"script", "img", "link", "iframe"} & set(tags.seen)  # nothing to fetch
    text = "".join(tags.text)
    assert "tlb-containment:iotlb" in text and data["findings"][0]["check"] in text
    assert "commands (guest)" in text and "boundary crossings" in text


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium to render the page")
def test_a_headless_browser_renders_it(report, tmp_path):
    directory, _ = report
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1000,1600", f"--screenshot={shot}",
                    (directory / "report.html").as_uri()], capture_output=True, timeout=120,
                   check=True)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # text and plots, not blank


def test_an_unwritable_report_directory_stops_before_fuzzing(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    fuzz_command.add_arguments(parser)
    args = parser.parse_args(["--target", "system", "--runs", "5", "--corpus", str(tmp_path),
                              "--artifacts", str(tmp_path), "--report", "/proc/self/report"])
    assert fuzz_command.main(args) == exits.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--report directory /proc/self/report" in err
    assert not any(tmp_path.iterdir())  # nothing fuzzed
