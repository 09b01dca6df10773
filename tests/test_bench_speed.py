"""`vsmmu bench speed`: the JSON shape scripts rely on and the text tables.
Shapes and signs only: timings are never asserted."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from fuzz.bench import speed as bench_speed

TARGETS = ("system", "smmu")
MODES = ["off", "concrete", "concrete+z3"]


@pytest.fixture(scope="module")
def result():
    return bench_speed.measure(quick=True, targets=TARGETS)


def positive(x) -> bool:
    return isinstance(x, float) and x > 0


def test_shape(result):
    assert list(result) == ["harness", "translate", "z3_state_check", "proofs",
                            "monitor_step", "machine", "design", "reset", "jobs"]
    assert result["design"] == "vsmmu"
    assert json.loads(json.dumps(result)) == result

    assert [(r["target"], r["mode"]) for r in result["harness"]] == [
        (t, m) for t in TARGETS for m in MODES]
    for r in result["harness"]:
        assert set(r) == {"target", "mode", "execs_per_s", "plain_execs_per_s"}
        assert r["execs_per_s"] is None  # quick: no libFuzzer run
        assert positive(r["plain_execs_per_s"])

    assert [t["case"] for t in result["translate"]] == [
        "tlb-hit", "s1-4level-walk", "nested-walk"]
    for t in result["translate"]:
        assert set(t) == {"case", "per_s", "us", "ratio_to_hit"}
        assert all(positive(t[k]) for k in ("per_s", "us", "ratio_to_hit"))
    assert result["translate"][0]["ratio_to_hit"] == 1.0

    assert [z["mappings"] for z in result["z3_state_check"]] == [16, 128, 512]
    assert all(set(z) == {"mappings", "ms", "incremental_ms"} and positive(z["ms"])
               and positive(z["incremental_ms"]) for z in result["z3_state_check"])

    assert result["proofs"]
    for p in result["proofs"]:
        assert set(p) == {"property", "subject", "result", "ms"}
        assert p["result"] == "proved", p
        assert positive(p["ms"])
    assert {"event-confinement", "s2-authority", "cmd-confinement"} <= {
        p["property"] for p in result["proofs"]}

    assert [s["mode"] for s in result["monitor_step"]] == MODES
    for s in result["monitor_step"]:
        assert set(s) == {"mode", "us", "ratio"}
        assert positive(s["us"]) and positive(s["ratio"])
    assert result["monitor_step"][0]["ratio"] == 1.0

    machine = result["machine"]
    assert machine["python"].startswith("3.") and machine["cpus"] >= 1

    assert [r["target"] for r in result["reset"]] == list(TARGETS)
    for r in result["reset"]:
        assert set(r) == {"target", "objects", "memory_us", "deepcopy_us", "restore_us",
                          "ratio"}
        assert isinstance(r["objects"], int) and r["objects"] > 0
        assert all(positive(r[k]) for k in ("memory_us", "deepcopy_us", "restore_us",
                                             "ratio"))
    assert result["jobs"] is None  # quick: no campaigns


def test_format_text(result):
    text = bench_speed.format_text(result)
    for title in ("fuzz harness throughput", "translations", "invariant monitor",
                  "Z3 state check", "reset between runs", "universal proofs"):
        assert title in text
    for word in ("system", "smmu", "plain", "tlb-hit", "nested-walk", "concrete+z3",
                 "512", "s2-authority", "proved"):
        assert word in text
    assert "libFuzzer" not in text.split("translations")[0]  # not measured: no row


def test_format_text_with_libfuzzer_figures(result):
    rows = [dict(r, execs_per_s=r["plain_execs_per_s"] / 3) for r in result["harness"]]
    jobs = {"target": "system", "seconds": 30, "one_job": 1000, "two_jobs": 1900,
            "ratio": 1.9}
    text = bench_speed.format_text(dict(result, harness=rows, jobs=jobs))
    assert text.count("libFuzzer") == len(TARGETS) + 1  # and the campaign's title
    assert "campaign executions in 30 s (system" in text
    assert ["2", "1,900", "1.90"] in [line.split() for line in text.splitlines()]


def test_main_json_is_clean_stdout(monkeypatch, capsys, result):
    monkeypatch.setattr(bench_speed, "measure", lambda *, quick, progress, design: (
        progress("something"), result)[1])
    parser = argparse.ArgumentParser()
    bench_speed.add_arguments(parser)
    assert bench_speed.main(parser.parse_args(["--json", "--quick"])) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == result
    assert "something" in err
    assert bench_speed.main(parser.parse_args([])) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == bench_speed.format_text(result)


def test_soak_reads_the_corpus_and_puts_first_and_last_minute_side_by_side(tmp_path):
    from fuzz.bench import soak
    from fuzz.program import encode, parse

    one = "step count=0x1"
    (tmp_path / "a").write_bytes(encode(parse(one)))
    (tmp_path / "b").write_bytes(encode(parse("\n".join([one] * 3))))
    n, mean_bytes, mean_ops = soak._corpus_shape(tmp_path)
    assert (n, mean_ops) == (2, 2.0) and mean_bytes == len(encode(parse(one))) * 2
    text = soak.format_text([soak.Minute(1, 40.0, 100.0, 10, 300.0, 20.0),
                             soak.Minute(2, 20.0, 150.0, 30, 600.0, 40.0)])
    assert "execs/s 40 -> 20 (x0.50), RSS 100 -> 150 MiB (x1.50)" in text
    assert "mean ops per input 20 -> 40" in text
    assert soak._tree_rss_kib(os.getpid()) > 0


def test_harness_rows_on_another_design(monkeypatch):
    seen = []
    real = bench_speed.execs.make_runner

    def spy(target, settings):
        seen.append(settings.design)
        return real(target, settings)

    monkeypatch.setattr(bench_speed.execs, "make_runner", spy)
    result = bench_speed.execs.measure(("system",), inputs=4, repeat=1, instrumented=False,
                                       design="xen-v3")
    assert seen and set(seen) == {"xen-v3"}
    assert len(result) == 3 and all(r["plain_execs_per_s"] > 0 for r in result)
