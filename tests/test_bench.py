"""`vsmmu bench bugs`: the run plan, finding detection, the summary and its JSON
shape, the text table, option errors, and one real run of each fuzzer on a bug
every fuzzer finds in seconds (no timing assertions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fuzz.bench import bugs as bench
from fuzz.bench import execs
from fuzz.bench.bugs import Trial, finding, format_text, plan, run_trial, summarize
from fuzz.bench.plants import PLANTS
from fuzz.cli import main as cli


def test_plan_runs_every_bug_seed_and_fuzzer_then_the_correct_model_per_target():
    runs = plan(["nsnh-all-global", "s2aa64-assert"], bench.FUZZERS, 2)
    assert len(runs) == 2 * 2 * 3 + 2 * 2
    assert ("hypothesis", "s2aa64-assert", "smmu", 2) in runs
    assert [r for r in runs if r[1] is None] == [
        ("ours", None, "command", 1), ("ours", None, "command", 2),
        ("ours", None, "smmu", 1), ("ours", None, "smmu", 2)]


def test_runs_find_the_checkout_and_the_harness_scripts(tmp_path):
    """The benchmark's processes import this checkout and run scripts that exist,
    wherever its own module sits (it moved into fuzz/bench/ once)."""
    root = Path(__file__).resolve().parents[1]
    env = bench.environment("ours", None, z3=False)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(root)
    assert not env.get("VSMMU_FUZZ_DESIGN")
    design = bench.environment("ours", "nsnh-all-global", z3=False, design="pkvm")
    assert design["VSMMU_FUZZ_DESIGN"] == "pkvm"  # the harness's Settings.from_env
    for fuzzer in ("ours", "atheris-plain"):
        script = Path(bench.command(fuzzer, "system", 1, tmp_path / "corpus")[1])
        assert script.is_file() and script.parent == root / "fuzz" / "harnesses"
    assert execs.HARNESSES == root / "fuzz" / "harnesses"


def test_findings_are_read_from_libfuzzer_and_hypothesis_output():
    assert finding("FindingError: tlb-containment:iotlb\n") == (None, "tlb-containment:iotlb")
    assert finding("FOUND 1.250 cmd-confinement:TLBI_NSNH_ALL\n") == (
        1.25, "cmd-confinement:TLBI_NSNH_ALL")
    assert finding("#1024 pulse cov: 12 ft: 34 corp: 5/100b exec/s: 99\n") is None


def _trials() -> list[Trial]:
    bug = "nsnh-all-global"
    return [
        Trial("ours", bug, "command", 1, 2.0, "cmd-confinement", "cmd-confinement:X"),
        Trial("ours", bug, "command", 2, 4.0, "cmd-confinement", "cmd-confinement:X"),
        Trial("ours", bug, "command", 3, 9.0, "cmd-confinement", "cmd-confinement:X"),
        Trial("hypothesis", bug, "command", 1, 1.0, "cmd-confinement", "cmd-confinement:X"),
        Trial("hypothesis", bug, "command", 2),
        Trial("hypothesis", bug, "command", 3),
        Trial("ours", None, "command", 1),
        Trial("ours", None, "command", 2, 5.0, "no-crash", "no-crash:Boom"),
    ]


def test_summary_has_the_promised_shape_and_counts_misses_as_never():
    out = summarize(_trials(), seeds=3, budget=30.0)
    assert set(out) >= {"bugs", "baselines", "correct_model_findings"}
    assert out["bugs"] == [{"name": "nsnh-all-global", "class": 3, "found": 3, "seeds": 3,
                            "median_s": 4.0, "max_s": 9.0, "invariant": "cmd-confinement"}]
    # one of three: the median is a miss, so is the max
    assert out["baselines"] == {"hypothesis": [
        {"name": "nsnh-all-global", "class": 3, "found": 1, "seeds": 3, "median_s": None,
         "max_s": None, "invariant": "cmd-confinement"}]}
    assert out["correct_model_findings"] == 1
    json.dumps(out)  # plain data


def test_text_table_shows_each_fuzzer_side_by_side():
    text = format_text(summarize(_trials(), seeds=3, budget=30.0))
    assert "ours found/med/max" in text and "hypothesis found/med/max" in text
    assert "3/3 4.0 9.0" in text and "1/3 - -" in text
    assert "correct model: 1 findings" in text


@pytest.mark.parametrize("argv, message", [
    (["--bugs", "nope"], "unknown planted bug 'nope'"),
    (["--fuzzers", "hypothesis"], "must include ours"),
])
def test_bad_options_get_one_line_and_status_2(argv, message, capsys):
    assert cli(["bench", "bugs", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_budget_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["bench", "bugs", "--budget", "0"])
    assert e.value.code == 2


@pytest.mark.parametrize("fuzzer", bench.FUZZERS)
def test_each_fuzzer_finds_an_easy_plant_and_reports_its_invariant(fuzzer):
    """A guest's TLBI_NSNH_ALL forwarded as a global flush: one command away."""
    assert PLANTS["nsnh-all-global"].target == "command"
    trial = run_trial(fuzzer, "nsnh-all-global", "command", 1, 120.0, z3=False)
    assert trial.seconds is not None, trial
    assert trial.invariant == "cmd-confinement"
    assert trial.signature.startswith("cmd-confinement:")


def test_plot_draws_a_png_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bugs.png"
    bench.plot(summarize(_trials(), seeds=3, budget=30.0), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overall_comparison_counts_every_bug_and_every_miss():
    """Budget 30 s, 3 seeds.  Ours: 2, 4, 9 s; PAR-2 mean (2+4+9)/3 = 5.0 s; area
    (28+26+21)/30/3 = 0.833.  Hypothesis: 1 s and two misses at 2 x 30 s: (1+60+60)/3 =
    40.33 s; area 29/30/3 = 0.322.  PAR-2 ratio 40.33/5 = x8.1, where the found-by-both
    ratio only sees hypothesis's one lucky 1 s run."""
    out = summarize(_trials(), seeds=3, budget=30.0)
    assert out["overall"]["ours"] == {"par2_s": {"nsnh-all-global": 5.0}, "found_area": 0.833}
    assert out["overall"]["hypothesis"] == {"par2_s": {"nsnh-all-global": 40.33},
                                            "found_area": 0.322}
    text = format_text(out)
    assert "PAR-2 time x8.1 ours" in text and "found-over-time area 0.322 vs ours 0.833" in text
