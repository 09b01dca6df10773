"""The default campaign, every target in turn (fuzz/all_targets.py): how it shares the
time, how it folds the targets' findings into one table, and one real run."""

from __future__ import annotations

import json

import pytest
from test_fuzzing import STALE_TLB

from fuzz.all_targets import MIN_SLICE, ROUND, SHARES, AllTargets, _merge, run_all
from fuzz.campaign import CampaignOptions
from fuzz.program import encode, parse
from fuzz.results import GROUPS, CampaignResult, Finding, format_result
from fuzz.targets import ALL, TARGETS


def _plan(tmp_path, **o) -> list[tuple[str, float | None, int | None]]:
    runner = AllTargets(CampaignOptions(target=ALL, corpus=str(tmp_path),
                                        artifacts=str(tmp_path / "a"), **o))
    return [(target, c["time"], c["runs"]) for target, c in runner._slices()]


def test_a_minute_is_one_round_shared_by_the_shares(tmp_path):
    plan = _plan(tmp_path, time=60)
    assert [t for t, _, _ in plan] == list(SHARES) and set(SHARES) == set(TARGETS)
    # two shares of six for the system harness, one for each other
    assert [round(s, 6) for _, s, _ in plan] == [20.0, 10.0, 10.0, 10.0, 10.0]


def test_a_long_campaign_gives_every_target_a_turn_each_round(tmp_path):
    plan = _plan(tmp_path, time=2.5 * ROUND)  # three equal rounds
    assert [t for t, _, _ in plan] == list(SHARES) * 3
    assert sum(s for _, s, _ in plan) == pytest.approx(2.5 * ROUND)
    assert max(s for _, s, _ in plan) == pytest.approx(2.5 * ROUND / 3 * 2 / 6)


def test_a_short_campaign_still_runs_every_target(tmp_path):
    plan = _plan(tmp_path, time=5)
    assert [t for t, _, _ in plan] == list(SHARES)
    assert all(s >= MIN_SLICE for _, s, _ in plan)


def test_runs_are_split_by_the_shares(tmp_path):
    plan = _plan(tmp_path, runs=60)
    assert plan == [("system", None, 20), ("vste", None, 10), ("command", None, 10),
                    ("virtio-iommu", None, 10), ("smmu", None, 10)]


def _f(sig: str, target: str, new: bool = True, after: float | None = None,
       duplicates: int = 0) -> Finding:
    return Finding("inv", sig, f"crash-{target}-{sig}", target=target, new=new,
                   found_after=after, duplicates=duplicates)


def _part(target: str, *findings: Finding) -> CampaignResult:
    return CampaignResult(target, 1, 1.0, list(findings), {})


def test_one_finding_per_signature_the_earliest_finders():
    merged = _merge([_part("system", _f("a", "system", after=30.0), _f("b", "system", False)),
                     _part("vste", _f("a", "vste", after=12.0, duplicates=2))])
    by_sig = {f.signature: f for f in merged}
    assert set(by_sig) == {"a", "b"}
    a = by_sig["a"]
    assert (a.target, a.found_after, a.duplicates) == ("vste", 12.0, 3)  # its 2 + system's 1
    assert not by_sig["b"].new


def test_a_targets_rounds_keep_when_a_finding_was_first_made(tmp_path):
    runner = AllTargets(CampaignOptions(target=ALL, corpus=str(tmp_path),
                                        artifacts=str(tmp_path / "a")))
    first = _part("vste", _f("a", "vste", after=5.0))
    later = _part("vste", _f("a", "vste", new=False, duplicates=1), _f("b", "vste", after=2.0))
    part = runner._part("vste", [(100.0, first), (400.0, later)])
    by_sig = {f.signature: f for f in part.findings}
    assert (by_sig["a"].new, by_sig["a"].found_after, by_sig["a"].duplicates) == (True, 105.0, 1)
    assert by_sig["b"].found_after == 402.0
    assert (part.execs, part.seconds) == (2, 2.0)


def test_every_target_runs_and_one_table_reports_them(tmp_path):
    seeds = tmp_path / "seeds"
    for target in TARGETS:
        (seeds / target).mkdir(parents=True)
    # a bug each of two harnesses finds in its seeds
    (seeds / "system" / "seed-stale-tlb").write_bytes(encode(parse(STALE_TLB)))
    (seeds / "smmu" / "seed-past-table").write_bytes(encode(parse(
        "dma device=0x6 iova=0x0 size=0x3 flags=0x0 ssid=0x0")))
    (tmp_path / "corpus").mkdir()
    result = run_all(CampaignOptions(
        target=ALL, runs=12, seed=1, z3=False, corpus=str(tmp_path / "corpus"),
        artifacts=str(tmp_path / "artifacts"), seeds=str(seeds),
        plant="forgotten-tlbi,stream-table-unbounded", coverage_budget=30))
    assert result.errors == [] and not result.interrupted and result.exit_code == 1
    assert [p.target for p in result.parts] == list(SHARES)
    assert all(p.execs > 0 for p in result.parts)
    assert result.execs == sum(p.execs for p in result.parts)
    found = {f.signature.split(":")[0]: f.target for f in result.findings}
    assert found == {"tlb-containment": "system", "stream-bounds": "smmu"}
    assert all(f.new and f.found_after is not None for f in result.findings)
    out = json.loads(json.dumps(result.as_dict()))
    assert out["target"] == ALL and list(out["targets"]) == list(SHARES)
    assert out["targets"]["smmu"]["findings"] == 1 and out["targets"]["vste"]["findings"] == 0
    assert out["coverage_groups"] == list(GROUPS)
    # the union of the targets' replays: the smmu seed's event, the system seed's commands
    assert "C_BAD_STREAMID" in out["coverage"]["events (physical)"]
    assert out["coverage"]["commands (guest)"]
    text = format_result(result)
    assert "[smmu] stream-bounds" in text and "[system] tlb-containment" in text
    assert all(f"\n  {t:12} " in text for t in TARGETS)
    for target in TARGETS:
        assert (tmp_path / "corpus" / target).is_dir()
