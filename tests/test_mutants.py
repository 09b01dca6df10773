"""`vsmmu bench mutants`: the slips it makes, the sample it draws, what it reports."""

from __future__ import annotations

import argparse
import ast

from fuzz.bench import mutants
from fuzz.bench.mutants import FILES, ROOT, mutant, points

SOURCE = '''from __future__ import annotations


def f(a: int | None, b) -> int | None:
    """Docstring: 7 is not a constant here."""
    if a == b and not a:
        g(1)
    return a + 2
'''


def test_each_slip_by_hand():
    # Breadth first (ast.walk): the `and` (the if's test), the call g(1) (its body),
    # the `+`, the `==`, the `not`, then 2 and 1 each one up and one down; the
    # annotations and the docstring are never touched.
    expected = [
        ("boolean", "if a == b or not a:"),
        ("call-removed", "        pass\n"),
        ("arithmetic", "return a - 2"),
        ("compare", "if a != b and (not a):"),
        ("not-dropped", "if a == b and a:"),
        ("constant+1", "return a + 3"),
        ("constant-1", "return a + 1"),
        ("constant+1", "g(2)"),
        ("constant-1", "g(0)"),
    ]
    found = [op for (_, op, _) in mutants._slips(ast.parse(SOURCE))]
    assert found == [op for op, _ in expected]
    for i, (_, text) in enumerate(expected):
        changed = mutant(SOURCE, i)
        assert text in changed, (i, changed)
        assert "int | None" in changed and "7 is not" in changed  # annotations, docstring


def test_points_are_a_fixed_population_and_every_mutant_parses():
    population = points()
    assert population == points()  # the same order every time
    assert {p.file for p in population} == set(FILES)
    assert all(p.before != p.after for p in population)
    sources = {f: (ROOT / f).read_text(encoding="utf-8") for f in FILES}
    for p in population[::37]:  # a spread of them: each parses and differs
        changed = mutant(sources[p.file], p.index)
        assert ast.unparse(ast.parse(changed)) != ast.unparse(ast.parse(sources[p.file]))


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    mutants.add_arguments(parser)
    return parser.parse_args([f"--{k}={v}" if v is not True else f"--{k}"
                              for k, v in kw.items()])


def test_the_same_seed_draws_the_same_sample(capsys):
    assert mutants.main(_args(sample=5, seed=3, list=True)) == 0
    first = capsys.readouterr().out
    mutants.main(_args(sample=5, seed=3, list=True))
    assert capsys.readouterr().out == first and len(first.splitlines()) == 5
    mutants.main(_args(sample=5, seed=4, list=True))
    assert capsys.readouterr().out != first


def test_a_design_runs_the_campaign_and_the_proofs_on_its_model(monkeypatch):
    calls = []

    def cli(work, env, args, timeout):
        calls.append(args)
        return 0, ""  # a clean campaign, then clean proofs: survived

    monkeypatch.setattr(mutants, "_cli", cli)
    result = mutants.run(points()[0], budget=1, design="xen-v3")
    assert result.outcome == "survived"
    assert [a[0] for a in calls] == ["fuzz", "prove"]
    assert all(a[-2:] == ["--design", "xen-v3"] for a in calls)


def test_a_mutant_that_breaks_start_up_is_told_apart_from_a_kill():
    """The check that a guest's name is free, turned round: no guest boots.  The
    campaign cannot run at all, which says nothing about what campaigns find."""
    [point] = [p for p in points() if p.before == "spec.name in self.guests"]
    result = mutants.run(point, budget=2)
    assert (result.outcome, result.by) == ("boot", None)
    assert (ROOT / point.file).read_text(encoding="utf-8").count("spec.name in self.guests")


def test_summary_text():
    summary = {"population": 728, "sample": 2, "seed": 0, "budget_s": 60.0,
               "target": "system", "killed": 1,
               "boot": 0, "survived": 1, "kill_rate": 0.5,
               "mutants": [{"file": "f.py", "line": 3, "operator": "compare",
                            "before": "a == b", "after": "a != b", "outcome": "killed",
                            "by": "s2-containment", "seconds": 9.0},
                           {"file": "f.py", "line": 9, "operator": "constant+1",
                            "before": "1", "after": "2", "outcome": "survived", "by": None,
                            "seconds": 61.0}]}
    text = mutants.format_text(summary)
    assert "60 s system campaign + proofs each" in text
    assert "killed 1, survived 1, broke start-up 0; kill rate 50%" in text
    assert "killed    f.py:3  compare: a == b  ->  a != b  [s2-containment]" in text
    assert text.rstrip().endswith("survived  f.py:9  constant+1: 1  ->  2")
